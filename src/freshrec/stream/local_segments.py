"""Integrity of the local log's segments: torn tails, corruption, quarantine and repair. The record
format and the kernels that walk it are `freshrec.stream.local_frames` (its names are importable
from here too).

Torn or corrupt. What follows a segment's valid records, up to the end of its file, is a `Tail`:

- "torn": an incomplete last record - fewer than 10 bytes of header, or a header whose length
  (a possible one, 2..2^30) runs past the end of the file - and no complete valid record starts
  at any byte after it. A writer killed mid-append leaves exactly this: `flush()` returns only
  after every byte of a record is written and fsynced, so such a record was never acknowledged.
  The next writer cuts it. (The one damage it cannot tell apart: a flip in the length field of
  the very last record that makes it run past the end; that record is cut.)
- "unreadable": a complete record that fails its checksum, an impossible length or key length
  (e.g. the zeros a power loss can leave), with no complete valid record after it. It may have
  been acknowledged, so the next writer moves its bytes aside into a quarantine file (see
  below), never deletes them, and goes on at its offset.
- "corrupt": bad bytes followed by a complete valid record somewhere after them (found by trying
  every byte position: `find_record`). Never cut: readers and writers raise `CorruptLogError`
  with the file, the byte offset and the reason; `repair_partition` moves the bad span aside.

A sealed segment (one a later segment follows) was fsynced whole before the next was created,
so any bytes after its valid records are corrupt, whatever they look like.

Quarantine. `repair_partition` cuts each bad span out of its segment, keeps its bytes in
`<first>-<end>.quarantine` (20-digit offsets: the span held offsets first..end-1) next to the
segments, with a `.json` note (segment, byte range, reason), and moves the valid records after
it into a new segment named by their first offset, so every kept record keeps its offset and
offsets first..end-1 become a hole that readers step over. How many records a span held is
exact in a sealed segment (the next segment's name says where its records end); in the active
segment it is estimated from the span's record headers (exact for any damage inside one record,
e.g. one flipped byte). A writer's moved-aside unreadable tail goes to `<first>-tail-<n>.quarantine`
and makes no hole (nothing after it had an offset).
"""

from __future__ import annotations

import json
import os
import re
import uuid
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
from numba import njit

from freshrec.errors import CorruptLogError, LogError
from freshrec.stream.local_frames import (
    _LEN_CRC,
    _SCAN_CHUNK,
    _U16,
    HEADER_BYTES,
    INDEX_STRIDE,
    MAX_KEY_BYTES,
    MAX_RECORD_BYTES,
    NO_KEY,
    STATUS_BAD,
    STATUS_END,
    STATUS_LIMIT,
    SegmentIndex,
    _crc32,
    _u32,
    encode,
    encode_many,
    frame_ends,
    frames_chain,
    fsync_dir,
    fsync_or_error,
    scan,
    seal_frame,
    seal_frames,
    segment_bases,
    segment_path,
    walk,
    write_json_atomic,
)

__all__ = [
    "BadSpan",
    "HEADER_BYTES",
    "INDEX_STRIDE",
    "MAX_KEY_BYTES",
    "MAX_RECORD_BYTES",
    "Moved",
    "NO_BUDGET",
    "NO_KEY",
    "Run",
    "STATUS_BAD",
    "STATUS_END",
    "STATUS_LIMIT",
    "SegmentCheck",
    "SegmentIndex",
    "Tail",
    "bad_reason",
    "check_segment",
    "classify_tail",
    "corrupt_error",
    "encode",
    "encode_many",
    "find_record",
    "frame_ends",
    "frames_chain",
    "fsync_dir",
    "fsync_or_error",
    "interrupted_repair",
    "quarantine_ranges",
    "quarantine_tail",
    "repair_partition",
    "scan",
    "seal_frame",
    "seal_frames",
    "segment_bases",
    "segment_path",
    "step_over_holes",
    "walk",
    "write_json_atomic",
]

# ---------------------------------------------------------------------------------------------
# torn tails, corruption, quarantine (see the module docstring)

NO_BUDGET = 1 << 62
_FOUND, _OUTSIDE, _SPENT, _NONE = 0, 1, 2, 3
_PLAN = "repair.plan.json"
_HOLE = re.compile(r"^(\d{20})-(\d{20})\.quarantine$")


@njit(nogil=True, cache=True)
def _resync(buf: np.ndarray, lo: int, hi: int, file_left: int, budget: int) -> tuple:
    """The first q in [lo, hi) where `buf` holds a possible record header (length 2..2^30, key
    length within it) whose record ends within `file_left` bytes of buf's start and, when it
    ends inside buf, passes its CRC. Returns (q, code, budget left): code 0 found, 1 a candidate
    that ends past buf (the caller checks it), 2 the budget (bytes of CRC) ran out at q, 3 none.
    The caller keeps hi <= len(buf) - 9, so every header tried lies inside buf."""
    for q in range(lo, hi):
        length = _u32(buf, q)
        if length < 2 or length > 1 << 30:
            continue
        end = q + 8 + length
        if end > file_left:
            continue
        keylen = np.int64(buf[q + 8]) | (np.int64(buf[q + 9]) << 8)
        if keylen != 0xFFFF and keylen + 2 > length:
            continue
        if budget < length:
            return q, 2, budget
        budget -= length
        if end > buf.shape[0]:
            return q, 1, budget
        if _crc32(buf, q + 8, end) == _u32(buf, q + 4):
            return q, 0, budget
    return -1, 3, budget


def bad_reason(fd: int, pos: int, size: int) -> tuple[str, bool]:
    """Why the bytes at `pos` of an open segment (of `size` bytes) are no valid record, and whether
    they are an incomplete one (it would end past the file); ("", False) when they are a valid
    record. The checks and their order are `scan`'s."""
    left = size - pos
    if left < HEADER_BYTES:
        return f"partial record header ({left} of {HEADER_BYTES} bytes) at the end of the file", True
    head = os.pread(fd, HEADER_BYTES, pos)
    if len(head) < HEADER_BYTES:
        return "the file ended while it was read", True
    length, crc = _LEN_CRC.unpack_from(head)
    keylen = _U16.unpack_from(head, 8)[0]
    if length < 2 or length > MAX_RECORD_BYTES:
        return f"impossible record length {length}", False
    if 8 + length > left:
        return f"a record of {length} bytes runs past the end of the file ({left - 8} bytes left)", True
    if keylen != NO_KEY and keylen + 2 > length:
        return f"key length {keylen} exceeds the record's {length} bytes", False
    actual = zlib.crc32(os.pread(fd, length, pos + 8))
    if actual != crc:
        return f"checksum mismatch (stored {crc:08x}, computed {actual:08x})", False
    return "", False


def find_record(fd: int, start: int, size: int, budget: int = NO_BUDGET) -> int:
    """The first byte q >= `start` of an open segment (of `size` bytes) at which a complete, valid
    record starts; -1 when there is none; -2 when `budget` bytes of checksums did not decide."""
    pos = start
    while size - pos >= HEADER_BYTES:
        want = min(_SCAN_CHUNK, size - pos)
        data = os.pread(fd, want, pos)
        hi = len(data) - HEADER_BYTES + 1
        if hi <= 0:
            return -1
        buf = np.frombuffer(data, dtype=np.uint8)
        lo = 0
        while True:
            q, code, budget = _resync(buf, lo, hi, size - pos, budget)
            if code == _FOUND:
                return pos + q
            if code == _SPENT:
                return -2
            if code == _NONE:
                break
            if not bad_reason(fd, pos + q, size)[0]:  # a candidate that ends past this read
                return pos + q
            lo = q + 1
        if len(data) < want:
            return -1
        pos += hi
    return -1


@dataclass(frozen=True, slots=True)
class Tail:
    """What follows the valid records of a segment: bytes [start, size) of its file.

    kind: "none" (no bytes), "torn", "unreadable" or "corrupt" (see the module docstring),
    "undecided" (finding out whether a valid record follows would cost more than the budget:
    treat it as corrupt, never cut it) or "valid" (a valid record starts at `start` after all:
    the file changed while it was read). reason: what is wrong at `start`. resume: for
    "corrupt", the byte at which the next valid record starts.
    """

    kind: str
    start: int
    size: int
    reason: str = ""
    resume: int = -1


def classify_tail(fd: int, start: int, size: int, budget: int | None = None) -> Tail:
    """The `Tail` from byte `start` (the end of the valid records) of an open segment of `size`
    bytes. `budget`: bytes of checksums to spend looking for a valid record after `start`
    (default 64 per byte of the tail + 64 MiB: cheap unless the tail is megabytes of binary)."""
    if start >= size:
        return Tail("none", start, size)
    reason, incomplete = bad_reason(fd, start, size)
    if not reason:
        return Tail("valid", start, size)
    if budget is None:
        budget = 64 * (size - start) + (64 << 20)
    q = find_record(fd, start + 1, size, budget)
    if q >= 0:
        return Tail("corrupt", start, size, f"{reason}, and a valid record follows at byte {q}", q)
    if q == -2:
        return Tail("undecided", start, size, f"{reason}; could not tell whether valid records follow")
    return Tail("torn" if incomplete else "unreadable", start, size, reason)


def _span_records(fd: int, start: int, end: int) -> int:
    """How many records the bad bytes [start, end) most likely held: the number of possible
    record headers chained from `start` when the chain lands exactly on `end` (damage inside
    records leaves their headers intact), else 1 (a damaged header: one record)."""
    data = os.pread(fd, end - start, start)
    x = n = 0
    while x + HEADER_BYTES <= len(data):
        length = _LEN_CRC.unpack_from(data, x)[0]
        if not 2 <= length <= MAX_RECORD_BYTES:
            return 1
        x += 8 + length
        n += 1
        if x == len(data):
            return n
    return 1


class Run(NamedTuple):
    """Consecutive valid records of a segment: bytes [start, end), offsets first..first+records-1."""

    start: int
    end: int
    first: int
    records: int


@dataclass(frozen=True, slots=True)
class BadSpan:
    """Bytes [start, end) of a segment that are no valid records where valid records must be. They
    held offsets first..first+count-1: `exact` when the next segment's name pins the count (one
    span in a sealed segment), else estimated (`_span_records`)."""

    start: int
    end: int
    first: int
    count: int
    exact: bool
    reason: str


@dataclass(frozen=True, slots=True)
class SegmentCheck:
    """One segment walked whole: `records` valid records (in `runs`) in a file of `size` bytes,
    the bad spans between them, and the active segment's torn or unreadable `tail` (the next
    writer's to cut). `problem`: offsets that cannot be lined up with the next segment."""

    path: Path
    base: int
    sealed: bool
    records: int
    size: int
    runs: tuple[Run, ...]
    spans: tuple[BadSpan, ...]
    tail: Tail | None
    problem: str = ""

    @property
    def ok(self) -> bool:
        return not self.spans and not self.problem and (self.tail is None or self.tail.kind == "torn")


def quarantine_ranges(pdir: Path) -> list[tuple[int, int]]:
    """The offset ranges [first, end) of a partition's quarantined bad spans (its holes), sorted."""
    try:
        names = os.listdir(pdir)
    except FileNotFoundError:
        return []
    out = []
    for n in names:
        m = _HOLE.match(n)
        if m and int(m[1]) < int(m[2]):
            out.append((int(m[1]), int(m[2])))
    return sorted(out)


def step_over_holes(holes: list[tuple[int, int]], offset: int) -> int:
    """`offset`, or when it lies in a hole, the first offset after the holes chained from it."""
    moved = True
    while moved:
        moved = False
        for a, b in holes:
            if a <= offset < b:
                offset, moved = b, True
    return offset


def _hole_chain_start(holes: list[tuple[int, int]], end: int, lo: int) -> int:
    """The first offset of the holes chained back from `end` (not below `lo`); `end` when none."""
    starts = {b: a for a, b in holes}
    while end in starts and starts[end] >= lo:
        end = starts[end]
    return end


def check_segment(pdir: Path, base: int, next_base: int | None,
                  holes: list[tuple[int, int]] | None = None) -> SegmentCheck:
    """Walk segment `base` of partition folder `pdir` whole (every CRC), find each bad span and
    the offsets it held. `next_base`: the next segment's base (None: this is the active one)."""
    path = segment_path(pdir, base)
    holes = quarantine_ranges(pdir) if holes is None else holes
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        found: list[tuple[int, int, int]] = []  # valid runs: (start byte, end byte, records)
        bad: list[tuple[int, int, str]] = []  # bad spans: (start byte, end byte, reason)
        tail = None
        pos = 0
        while True:
            n, end, _, _ = walk(fd, pos, NO_BUDGET)
            found.append((pos, end, n))
            if end >= size:
                break
            t = classify_tail(fd, end, size, NO_BUDGET)
            assert t.kind != "valid", "walk and bad_reason agree on what a valid record is"
            if t.kind == "corrupt":
                bad.append((end, t.resume, t.reason))
                pos = t.resume
                continue
            if next_base is not None:  # sealed: whatever follows its valid records is corrupt
                bad.append((end, size, t.reason))
            else:
                tail = t
            break
        valid = sum(n for _, _, n in found)
        counts = [_span_records(fd, s, e) for s, e, _ in bad]
        problem = ""
        exact = False
        if next_base is not None:
            missing = _hole_chain_start(holes, next_base, base) - base - valid
            if bad and missing >= len(bad):
                if missing - sum(counts[:-1]) < 1:  # estimates too high: one record each but the last
                    counts = [1] * len(bad)
                counts[-1] = missing - sum(counts[:-1])  # the last span takes what the others leave
                exact = len(bad) == 1
            elif bad or missing:
                problem = (f"{valid} valid records and {len(bad)} bad spans, but the next segment "
                           f"starts at offset {next_base}, {missing} offsets after them")
        runs: list[Run] = []
        spans: list[BadSpan] = []
        off = base
        for i, (s, e, n) in enumerate(found):
            runs.append(Run(s, e, off, n))
            off += n
            if i < len(bad):
                spans.append(BadSpan(bad[i][0], bad[i][1], off, counts[i], exact, bad[i][2]))
                off += counts[i]
        return SegmentCheck(path, base, next_base is not None, valid, size, tuple(runs), tuple(spans),
                            tail, problem)
    finally:
        os.close(fd)


@dataclass(frozen=True, slots=True)
class Moved:
    """A bad span cut out of `segment` into the `quarantine` file (its bytes, unchanged)."""

    segment: Path
    span: BadSpan
    quarantine: Path


def _copy_range(fd: int, start: int, end: int, dest: Path) -> None:
    """Write bytes [start, end) of open file `fd` to a new file `dest`, fsynced."""
    out = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        pos = start
        while pos < end:
            data = os.pread(fd, min(_SCAN_CHUNK, end - pos), pos)
            if not data:
                msg = f"{dest}: the source ended at byte {pos}, before {end}"
                raise LogError(msg)
            view = memoryview(data)
            while view:
                view = view[os.write(out, view):]
            pos += len(data)
        os.fsync(out)
    finally:
        os.close(out)


def _write_note(dest: Path, doc: dict) -> None:
    with open(dest, "x", encoding="utf-8") as f:
        json.dump(doc, f, indent=1)
        f.flush()
        os.fsync(f.fileno())


def quarantine_tail(pdir: Path, fd: int, base: int, tail: Tail, first: int) -> Path:
    """Copy an unreadable tail of segment `base` (open as `fd`) into `<first>-tail-<n>.quarantine`
    with its note, durably; the caller then cuts the segment at `tail.start`."""
    n = 1
    while (pdir / f"{first:020d}-tail-{n}.quarantine").exists():
        n += 1
    dest = pdir / f"{first:020d}-tail-{n}.quarantine"
    tmp = pdir / f".{dest.name}.{uuid.uuid4().hex[:8]}.tmp"
    _copy_range(fd, tail.start, tail.size, tmp)
    note = {"segment": segment_path(pdir, base).name, "start": tail.start, "end": tail.size,
            "bytes": tail.size - tail.start, "offsets": [first, first], "reason": tail.reason,
            "by": "an unreadable last record, moved aside before appending"}
    _write_note(pdir / f".{dest.name}.json.tmp", note)
    os.replace(pdir / f".{dest.name}.json.tmp", pdir / f"{dest.name}.json")
    os.replace(tmp, dest)
    fsync_dir(pdir)
    return dest


def interrupted_repair(pdir: Path) -> bool:
    """Whether a repair of this partition was interrupted (`repair_partition` finishes it)."""
    return (pdir / _PLAN).exists()


def _finish_repair(pdir: Path) -> None:
    """Carry out a written repair plan (idempotent): move the new files into place, then cut the
    segment. Every file the plan names was fsynced before the plan was written."""
    plan = json.loads((pdir / _PLAN).read_text())
    for tmp, final in plan["renames"]:
        if (pdir / tmp).exists():
            os.replace(pdir / tmp, pdir / final)
    fsync_dir(pdir)
    fd = os.open(pdir / plan["segment"], os.O_RDWR)
    try:
        if os.fstat(fd).st_size > plan["truncate"]:
            os.ftruncate(fd, plan["truncate"])
        os.fsync(fd)
    finally:
        os.close(fd)
    (pdir / _PLAN).unlink()
    fsync_dir(pdir)


def _split(pdir: Path, chk: SegmentCheck) -> list[Moved]:
    """Cut `chk`'s bad spans out of its segment (see the module docstring), crash-safely: copies
    first, then a plan, then renames and the cut (`_finish_repair`)."""
    tag = uuid.uuid4().hex[:8]
    renames: list[tuple[str, str]] = []
    moved: list[Moved] = []
    fd = os.open(chk.path, os.O_RDONLY)
    try:
        for span in chk.spans:
            name = f"{span.first:020d}-{span.first + span.count:020d}.quarantine"
            if (pdir / name).exists():
                msg = f"cannot repair {chk.path}: {pdir / name} already exists"
                raise LogError(msg)
            _copy_range(fd, span.start, span.end, pdir / f".{name}.{tag}.tmp")
            note = {"segment": chk.path.name, "start": span.start, "end": span.end,
                    "bytes": span.end - span.start, "offsets": [span.first, span.first + span.count],
                    "offsets_exact": span.exact, "reason": span.reason, "by": "freshrec log repair"}
            _write_note(pdir / f".{name}.json.{tag}.tmp", note)
            renames += [(f".{name}.{tag}.tmp", name), (f".{name}.json.{tag}.tmp", f"{name}.json")]
            moved.append(Moved(chk.path, span, pdir / name))
        for i, run in enumerate(chk.runs[1:]):  # the records after span i
            end = chk.spans[i + 1].start if i + 1 < len(chk.spans) else chk.size
            name = segment_path(pdir, run.first).name
            if (pdir / name).exists():
                msg = f"cannot repair {chk.path}: {pdir / name} already exists"
                raise LogError(msg)
            _copy_range(fd, run.start, end, pdir / f".{name}.{tag}.tmp")
            renames.append((f".{name}.{tag}.tmp", name))
    finally:
        os.close(fd)
    write_json_atomic(pdir / _PLAN, {"segment": chk.path.name, "truncate": chk.spans[0].start,
                                     "renames": renames})
    _finish_repair(pdir)
    return moved


def repair_partition(pdir: Path) -> list[Moved]:
    """Move every bad span of partition folder `pdir` aside (see the module docstring), and an
    unreadable tail of its active segment (count 0: it had no offset), and return what was
    moved; a torn tail is left to the next writer. Checks every segment first and changes
    nothing when one cannot be repaired (raises `LogError`). The caller holds the writer lock."""
    if interrupted_repair(pdir):
        _finish_repair(pdir)
    for n in os.listdir(pdir):  # copies of a repair that stopped before its plan was written
        if n.startswith(".") and n.endswith(".tmp") and (".seg." in n or ".quarantine" in n):
            (pdir / n).unlink()
    bases = segment_bases(pdir)
    holes = quarantine_ranges(pdir)
    checks = [check_segment(pdir, b, bases[i + 1] if i + 1 < len(bases) else None, holes)
              for i, b in enumerate(bases)]
    for chk in checks:
        if chk.problem:
            msg = f"cannot repair {chk.path}: {chk.problem}"
            raise LogError(msg)
    moved: list[Moved] = []
    for chk in checks:
        if chk.spans:
            moved += _split(pdir, chk)
    if bases:  # an unreadable tail of the active segment: aside, as the next writer would do
        base = segment_bases(pdir)[-1]
        chk = check_segment(pdir, base, None, quarantine_ranges(pdir))
        if chk.tail is not None and chk.tail.kind == "unreadable":
            fd = os.open(chk.path, os.O_RDWR)
            try:
                first = base + chk.records
                dest = quarantine_tail(pdir, fd, base, chk.tail, first)
                os.ftruncate(fd, chk.tail.start)
                os.fsync(fd)
            finally:
                os.close(fd)
            span = BadSpan(chk.tail.start, chk.tail.size, first, 0, True, chk.tail.reason)
            moved.append(Moved(chk.path, span, dest))
    return moved


def corrupt_error(log: str, path: Path, fd: int, pos: int, size: int) -> CorruptLogError:
    """The error for bad bytes at `pos` of a sealed segment `path` (open as `fd`, `size` bytes)."""
    reason = bad_reason(fd, pos, size)[0] or "bytes after the valid records"
    return CorruptLogError(str(path), pos, f"{reason} (in a sealed segment)", log=log)

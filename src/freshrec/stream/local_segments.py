"""The local log's on-disk record format and the numba kernels that walk it.

A segment file is a run of records, each framed as (little-endian)

    [u32 length][u32 crc32][u16 keylen][key][value]

where length = 2 + len(key) + len(value) and the crc32 (zlib) covers those `length` bytes;
keylen 0xFFFF stands for "no key" (so a key holds at most 65534 bytes). Worked example:
key b"u1", value b"hi" -> 06000000 | crc32(b"\\x02\\x00u1hi") | 0200 | 7531 | 6869 (14 bytes).

A walk stops at the first byte that does not start a complete, valid record: the end of the
valid records, which `SegmentIndex` remembers with a sparse offset -> byte position index.

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
import struct
import uuid
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
from numba import njit

from freshrec.errors import CorruptLogError, LogError

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

HEADER_BYTES = 10  # u32 length + u32 crc + u16 keylen
NO_KEY = 0xFFFF
MAX_KEY_BYTES = NO_KEY - 1
MAX_RECORD_BYTES = 1 << 30
STATUS_END, STATUS_LIMIT, STATUS_BAD = 0, 1, 2
_SCAN_CHUNK = 8 << 20
INDEX_STRIDE = 1024  # a sparse index notes every 1024th record's position
_LEN_CRC = struct.Struct("<II")
_U16 = struct.Struct("<H")
_NO_KEY_BYTES = _U16.pack(NO_KEY)
_NO_KEY_CRC = zlib.crc32(_NO_KEY_BYTES)
_EMPTY_OUT = np.empty((0, 3), dtype=np.int64)


def _crc_tables() -> np.ndarray:
    """The slicing-by-8 tables of the CRC-32 zlib uses (reflected polynomial 0xEDB88320), flat
    uint32 (8 * 256,): entries 0..255 are the classic byte table; block k (256k..256k+255)
    advances a byte's contribution past k more bytes."""
    table = np.zeros((8, 256), dtype=np.int64)
    for n in range(256):
        c = n
        for _ in range(8):
            c = (0xEDB88320 ^ (c >> 1)) if c & 1 else (c >> 1)
        table[0, n] = c
    for k in range(1, 8):
        for n in range(256):
            table[k, n] = (table[k - 1, n] >> 8) ^ table[0, table[k - 1, n] & 0xFF]
    return table.astype(np.uint32).ravel()


_CRC_TABLES = _crc_tables()
_U32_FF, _U32_ALL = np.uint32(0xFF), np.uint32(0xFFFFFFFF)
_S8, _S16, _S24 = np.uint32(8), np.uint32(16), np.uint32(24)


@njit(nogil=True, cache=True)
def _crc32(buf: np.ndarray, start: int, end: int) -> int:
    """zlib.crc32 of buf[start:end] (uint8 array), 8 bytes a step (slicing-by-8)."""
    t = _CRC_TABLES
    c = _U32_ALL
    i = start
    while i + 8 <= end:
        a = c ^ (np.uint32(buf[i]) | (np.uint32(buf[i + 1]) << _S8) | (np.uint32(buf[i + 2]) << _S16)
                 | (np.uint32(buf[i + 3]) << _S24))
        c = (t[1792 + (a & _U32_FF)] ^ t[1536 + ((a >> _S8) & _U32_FF)]
             ^ t[1280 + ((a >> _S16) & _U32_FF)] ^ t[1024 + (a >> _S24)]
             ^ t[768 + buf[i + 4]] ^ t[512 + buf[i + 5]] ^ t[256 + buf[i + 6]] ^ t[buf[i + 7]])
        i += 8
    while i < end:
        c = t[(c ^ buf[i]) & _U32_FF] ^ (c >> _S8)
        i += 1
    return int(c ^ _U32_ALL)


@njit(nogil=True, cache=True)
def _u32(buf: np.ndarray, pos: int) -> int:
    return int(
        np.int64(buf[pos])
        | (np.int64(buf[pos + 1]) << 8)
        | (np.int64(buf[pos + 2]) << 16)
        | (np.int64(buf[pos + 3]) << 24)
    )


@njit(nogil=True, cache=True)
def scan(buf: np.ndarray, start: int, max_records: int, verify: bool, out: np.ndarray,
          first: int, stride: int) -> tuple:
    """Walk records in `buf` (uint8) from byte `start`; returns (n, end, status, m).

    n valid records were found; `end` is the byte after the last of them; status says why the
    walk stopped: 0 out of bytes (what is left, if anything, is an incomplete record), 1 reached
    `max_records`, 2 the bytes at `end` are no valid record (length, keylen or CRC). Records
    are numbered from `first`; each one whose number is a multiple of `stride` is noted in
    out[m] = (start byte, keylen or -1 for no key, end byte) while rows last; m rows were filled.
    Example: stride 1 notes every record (reading); stride 1024 builds a sparse index.
    """
    size = buf.shape[0]
    cap = out.shape[0]
    pos = start
    n = 0
    m = 0
    while n < max_records:
        if pos + 10 > size:
            return n, pos, 0, m
        length = _u32(buf, pos)
        if length < 2 or length > 1 << 30:
            return n, pos, 2, m
        end = pos + 8 + length
        if end > size:
            return n, pos, 0, m
        keylen = np.int64(buf[pos + 8]) | (np.int64(buf[pos + 9]) << 8)
        if keylen != 0xFFFF and keylen + 2 > length:
            return n, pos, 2, m
        if verify and _crc32(buf, pos + 8, end) != _u32(buf, pos + 4):
            return n, pos, 2, m
        if (first + n) % stride == 0 and m < cap:
            out[m, 0] = pos
            out[m, 1] = -1 if keylen == 0xFFFF else keylen
            out[m, 2] = end
            m += 1
        n += 1
        pos = end
    return n, pos, 1, m


def walk(fd: int, start: int, limit: int, first: int = 0) -> tuple[int, int, int, list[int]]:
    """Walk up to `limit` valid records of an open segment from byte `start` (record number
    `first`): (n, end, status, marks), marks = start bytes of the records numbered k * INDEX_STRIDE."""
    total, pos, size = 0, start, _SCAN_CHUNK
    marks: list[int] = []
    while True:
        data = os.pread(fd, size, pos)
        if not data:
            return total, pos, STATUS_END, marks
        out = np.empty((len(data) // (10 * INDEX_STRIDE) + 2, 3), dtype=np.int64)
        n, end, status, m = scan(np.frombuffer(data, dtype=np.uint8), 0, limit - total, True, out,
                                  first + total, INDEX_STRIDE)
        marks.extend((out[:m, 0] + pos).tolist())
        total += n
        pos += end
        if status != STATUS_END or len(data) < size:
            return total, pos, status, marks
        size = _SCAN_CHUNK
        if n == 0:  # one record larger than the chunk: read it whole, if it is all there
            need = 8 + struct.unpack_from("<I", data, end)[0]
            if pos + need > os.fstat(fd).st_size:
                return total, pos, STATUS_END, marks
            size = max(size, need)


@dataclass(slots=True)
class SegmentIndex:
    """What is known of one segment: its first `n` records are valid and end at byte `end`;
    marks[i] is the start byte of record i * INDEX_STRIDE. Only grows (a torn tail is never in it)."""

    n: int = 0
    end: int = 0
    marks: list[int] = field(default_factory=list)

    def extend(self, fd: int, upto: int | None = None) -> None:
        """Scan on until `upto` records are known (default: to the end of the valid records)."""
        if upto is not None and self.n >= upto:
            return
        limit = (1 << 62) if upto is None else upto - self.n
        n, end, _, marks = walk(fd, self.end, limit, self.n)
        self.marks.extend(marks)
        self.n += n
        self.end = end

    def position(self, fd: int, k: int) -> int:
        """Start byte of record k (< n, or == n for the end)."""
        if k == self.n:
            return self.end
        i = k // INDEX_STRIDE
        n, end, _, _ = walk(fd, self.marks[i], k - i * INDEX_STRIDE, i * INDEX_STRIDE)
        assert n == k - i * INDEX_STRIDE, "indexed records must still be valid"
        return end


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json_atomic(path: Path, obj: object) -> None:
    """Write `obj` as JSON to `path` via temp file + fsync + rename + fsync of the folder."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def fsync_or_error(fd: int) -> OSError | None:
    try:
        os.fsync(fd)
    except OSError as e:
        return e
    return None


def segment_bases(pdir: Path) -> list[int]:
    try:
        names = os.listdir(pdir)
    except FileNotFoundError:
        return []
    return sorted(int(n[:-4]) for n in names if n.endswith(".seg") and n[:-4].isdigit())


def segment_path(pdir: Path, base: int) -> Path:
    return pdir / f"{base:020d}.seg"


def encode(value: bytes, key: bytes | None = None) -> bytes:
    """One framed record; raises LogError when the key or the record is too long."""
    if type(value) is not bytes:
        value = bytes(value)
    if key is None:
        return b"".join((_LEN_CRC.pack(2 + len(value), zlib.crc32(value, _NO_KEY_CRC)), _NO_KEY_BYTES, value))
    if type(key) is not bytes:
        key = bytes(key)
    if len(key) > MAX_KEY_BYTES:
        msg = f"key of {len(key)} bytes; at most {MAX_KEY_BYTES}"
        raise LogError(msg)
    length = 2 + len(key) + len(value)
    if length > MAX_RECORD_BYTES:
        msg = f"record of {length} bytes; at most {MAX_RECORD_BYTES}"
        raise LogError(msg)
    kb = _U16.pack(len(key))
    crc = zlib.crc32(value, zlib.crc32(key, zlib.crc32(kb)))
    return b"".join((_LEN_CRC.pack(length, crc), kb, key, value))


def encode_many(records: list[tuple[bytes | None, bytes]]) -> list[bytes]:
    """`encode(value, key)` of each (key, value), in order; raises LogError (and frames none)
    when a key or a record is too long."""
    out: list[bytes] = []
    add = out.append
    crc32, pack, u16 = zlib.crc32, _LEN_CRC.pack, _U16.pack
    for key, value in records:
        if type(key) is bytes and type(value) is bytes and len(key) <= MAX_KEY_BYTES \
                and len(value) <= MAX_RECORD_BYTES - 2 - MAX_KEY_BYTES:
            kb = u16(len(key)) + key
            add(b"".join((pack(len(kb) + len(value), crc32(value, crc32(kb))), kb, value)))
        else:
            add(encode(value, key))
    return out


def frame_ends(key_lens: np.ndarray, value_lens: np.ndarray) -> np.ndarray:
    """Where each frame of a block ends (int64 (n,)) when records with these key and value lengths
    (key length -1: no key) are framed one after the other from byte 0: record i's key starts at
    `ends[i - 1] + HEADER_BYTES` (0 for i = 0) and its value right after the key. Raises LogError
    when a key or a record is too long. Example: keys [2, -1], values [2, 3] -> [14, 27]."""
    klen = np.asarray(key_lens, dtype=np.int64)
    vlen = np.asarray(value_lens, dtype=np.int64)
    if len(klen) and int(klen.max()) > MAX_KEY_BYTES:
        msg = f"key of {int(klen.max())} bytes; at most {MAX_KEY_BYTES}"
        raise LogError(msg)
    length = 2 + np.maximum(klen, 0) + vlen
    if len(length) and int(length.max()) > MAX_RECORD_BYTES:
        msg = f"record of {int(length.max())} bytes; at most {MAX_RECORD_BYTES}"
        raise LogError(msg)
    return np.cumsum(length + 8)


@njit(nogil=True, cache=True, inline="always")
def seal_frame(buf: np.ndarray, start: int, end: int, key_len: int) -> None:
    """Fill in the header of the frame buf[start:end] (key and value in place after it): length,
    key length (-1: NO_KEY) and the crc32 of the record."""
    length = end - start - 8
    kl = NO_KEY if key_len < 0 else key_len
    buf[start + 8] = kl & 0xFF
    buf[start + 9] = kl >> 8
    crc = _crc32(buf, start + 8, end)
    for j in range(4):
        buf[start + j] = (length >> (8 * j)) & 0xFF
        buf[start + 4 + j] = (crc >> (8 * j)) & 0xFF


@njit(nogil=True, cache=True)
def seal_frames(buf: np.ndarray, ends: np.ndarray, key_lens: np.ndarray) -> None:
    """Fill in each frame's header in `buf` (uint8, keys and values already in place where
    `frame_ends` put them): length, key length (-1: NO_KEY) and the crc32 of the record, so that
    buf[:ends[-1]] is the bytes `encode` gives for each record, one after the other."""
    start = 0
    for i in range(ends.shape[0]):
        seal_frame(buf, start, ends[i], key_lens[i])
        start = ends[i]


@njit(nogil=True, cache=True)
def frames_chain(buf: np.ndarray, ends: np.ndarray) -> int:
    """How many of the frames buf[ends[i - 1]:ends[i]] (from 0) are walkable records in a row: a
    possible length that ends exactly at ends[i] and a key length within it (checksums are not
    verified); == len(ends) when all are."""
    start = 0
    for i in range(ends.shape[0]):
        end = ends[i]
        if end - start < HEADER_BYTES or end > buf.shape[0]:
            return i
        length = _u32(buf, start)
        keylen = np.int64(buf[start + 8]) | (np.int64(buf[start + 9]) << 8)
        if length > MAX_RECORD_BYTES or start + 8 + length != end:
            return i
        if keylen != NO_KEY and keylen + 2 > length:
            return i
        start = end
    return ends.shape[0]


# ---------------------------------------------------------------------------------------------
# integrity: torn tails, corruption, quarantine (see the module docstring)

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

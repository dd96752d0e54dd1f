"""Consumers of the local log (`LocalLog.consumer`): each reads an explicit set of partitions from
its group's committed positions, as `Record`s or as `RecordBlock`s (the bytes as read and the value
spans), and commits positions durably in `consumers/<group>.json`. Layout and guarantees: the
`freshrec.stream.local_log` docstring.
"""

from __future__ import annotations

import bisect
import contextlib
import fcntl
import hashlib
import json
import os
import struct
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote

import numpy as np

from freshrec.errors import CorruptLogError, LogError, OffsetOutOfRange
from freshrec.stream.local_segments import (
    HEADER_BYTES,
    STATUS_END,
    STATUS_LIMIT,
    corrupt_error,
    quarantine_ranges,
    scan,
    segment_bases,
    segment_path,
    step_over_holes,
    write_json_atomic,
)
from freshrec.stream.log import Record, RecordBlock, at_end_of

if TYPE_CHECKING:
    from freshrec.stream.local_log import LocalLog

__all__ = ["LocalConsumer", "RecordBlock", "group_file", "read_positions"]


def group_file(folder: Path, group: str) -> Path:
    """The file of `group`'s committed positions in the log folder `folder`."""
    if not group or len(group) > 200:
        msg = f"consumer group {group!r} must be 1-200 characters"
        raise LogError(msg)
    safe = quote(group, safe="-_").replace(".", "%2E")  # unambiguous, no path tricks
    if len(safe) > 180:
        safe = f"{safe[:120]}~{hashlib.sha256(group.encode()).hexdigest()[:40]}"
    return folder / "consumers" / f"{safe}.json"


def read_positions(file: Path, group: str) -> dict[int, int]:
    """The positions committed in a group's file ({} when it has none)."""
    try:
        doc = json.loads(file.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        msg = f"consumer group {group!r}: cannot read {file}: {e}"
        raise LogError(msg) from e
    return {int(p): int(o) for p, o in doc.get("positions", {}).items()}


@dataclass(slots=True)
class _PartReader:
    offset: int  # next record to return
    located: bool = False
    fd: int | None = None
    base: int = 0  # first offset of the open segment
    pos: int = 0  # byte position of `offset` in the open segment
    avg: float = 128.0  # bytes per record seen so far (sizes the reads)
    checked: tuple[int, int] = (-1, -1)  # (pos, file size) whose bytes after pos were last classified


class LocalConsumer:
    """A consumer of a `LocalLog` over an explicit set of partitions. Not thread-safe."""

    def __init__(self, log: LocalLog, group: str, partitions: list[int]) -> None:
        self._file = group_file(log.path, group)
        for p in partitions:
            if not 0 <= p < log.partitions:
                msg = f"log {log.name!r} has {log.partitions} partitions; no partition {p}"
                raise LogError(msg)
        self._log = log
        self.group = group
        committed = self._read_committed()
        self._parts = {p: _PartReader(offset=committed.get(p, 0)) for p in partitions}
        self._order = list(partitions)
        self._turn = 0
        self._closed = False

    # -- positions ----------------------------------------------------------------------------

    def _read_committed(self) -> dict[int, int]:
        return read_positions(self._file, self.group)

    def commit(self, positions: Mapping[int, int] | None = None) -> None:
        """Durably store `positions` (default: the current ones) for the group; other partitions'
        committed positions (e.g. from other consumers of the group) are kept."""
        new = dict(self.position() if positions is None else positions)
        lock_path = self._file.with_suffix(".lock")
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            merged = self._read_committed()
            merged.update({int(p): int(o) for p, o in new.items()})
            doc = {"group": self.group, "positions": {str(p): o for p, o in sorted(merged.items())}}
            write_json_atomic(self._file, doc)
        except OSError as e:
            msg = f"consumer group {self.group!r}: cannot write {self._file}: {e}"
            raise LogError(msg) from e
        finally:
            os.close(fd)  # releases the flock

    def committed(self) -> dict[int, int]:
        c = self._read_committed()
        return {p: c.get(p, 0) for p in self._parts}

    def position(self) -> dict[int, int]:
        return {p: r.offset for p, r in self._parts.items()}

    def at_end(self) -> bool:
        return at_end_of(self.position(), self._log.end_offsets())

    def seek(self, partition: int, offset: int) -> None:
        """Move `partition` to `offset`; raises OffsetOutOfRange beyond the records on disk."""
        r = self._parts.get(partition)
        if r is None:
            msg = f"consumer of {self._log.name!r}: partition {partition} is not assigned"
            raise LogError(msg)
        self._close_segment(r)
        r.offset, r.located = int(offset), False
        self._locate(partition, r)

    def _close_segment(self, r: _PartReader) -> None:
        if r.fd is not None:
            os.close(r.fd)
            r.fd = None

    def _locate(self, p: int, r: _PartReader) -> None:
        """Open the segment holding r.offset and find its byte position."""
        if r.offset < 0:
            msg = f"log {self._log.name!r} partition {p}: offset {r.offset} < 0"
            raise OffsetOutOfRange(msg)
        pdir = self._log.path / f"p{p}"
        bases = segment_bases(pdir)
        if not bases:
            if r.offset != 0:
                msg = f"log {self._log.name!r} partition {p}: offset {r.offset} beyond the end (0)"
                raise OffsetOutOfRange(msg)
            r.located = True  # no segment yet: _read opens it once it appears
            return
        base = bases[bisect.bisect_right(bases, r.offset) - 1] if r.offset >= bases[0] else bases[0]
        if r.offset < base:
            if step_over_holes(quarantine_ranges(pdir), r.offset) >= base:  # quarantined offsets
                r.offset = base
                return self._locate(p, r)
            msg = f"log {self._log.name!r} partition {p}: offset {r.offset} is before the first segment"
            raise OffsetOutOfRange(msg)
        fd = os.open(segment_path(pdir, base), os.O_RDONLY)
        idx = self._log._segment_index(p, base, fd, r.offset - base)
        if idx.n < r.offset - base:
            try:
                after = step_over_holes(quarantine_ranges(pdir), r.offset)
                if after != r.offset:  # a quarantined offset: start at the first one after it
                    r.offset = after
                    return self._locate(p, r)
                size = os.fstat(fd).st_size
                if size > idx.end and base != bases[-1]:
                    raise corrupt_error(self._log.name, segment_path(pdir, base), fd, idx.end, size)
                err = self._log._tail_error(p, base, fd, idx.end) if size > idx.end else None
                if err is not None:
                    raise err
            finally:
                os.close(fd)
            msg = f"log {self._log.name!r} partition {p}: offset {r.offset} beyond the end ({base + idx.n})"
            raise OffsetOutOfRange(msg)
        end = idx.position(fd, r.offset - base)
        r.fd, r.base, r.pos, r.located = fd, base, end, True

    # -- reading ------------------------------------------------------------------------------

    def poll(self, max_records: int = 1000, timeout_s: float = 0.0) -> list[Record]:
        """Up to `max_records` records from the current positions, partitions taking turns;
        waits up to `timeout_s` (sleeping in `poll_step_s` steps) for at least one."""
        return self._poll(max_records, timeout_s, False)

    def poll_blocks(self, max_records: int = 1000, timeout_s: float = 0.0) -> list[RecordBlock]:
        """Like `poll`, but the records come as `RecordBlock`s (the bytes as read, value spans)
        instead of one `Record` each: the cheap form for a reader that decodes a whole poll."""
        return self._poll(max_records, timeout_s, True)

    def _poll(self, max_records: int, timeout_s: float, blocks: bool) -> list:
        if self._closed:
            msg = f"consumer of {self._log.name!r} is closed"
            raise LogError(msg)
        deadline = time.monotonic() + timeout_s
        step = self._log.config.poll_step_s
        while True:
            out: list = []
            got = 0
            k = len(self._order)
            for i in range(k):
                p = self._order[(self._turn + i) % k]
                try:
                    got += self._read(p, self._parts[p], max_records - got, out, blocks)
                except CorruptLogError:
                    if out:  # hand over what was read before it; this partition stays at the bad
                        self._turn = (self._turn + i) % k  # record and goes first in the next
                        return out  # poll, which raises again
                    raise
                if got >= max_records:
                    break
            self._turn = (self._turn + 1) % max(k, 1)
            left = deadline - time.monotonic()
            if out or left <= 0:
                return out
            time.sleep(min(step, left))

    def _read(self, p: int, r: _PartReader, want: int, out: list, blocks: bool) -> int:
        """Append up to `want` records of partition `p` to `out` (as `Record`s, or as
        `RecordBlock`s when `blocks`); returns how many."""
        if not r.located:
            self._locate(p, r)
        pdir = self._log.path / f"p{p}"
        if r.fd is None:
            if not segment_bases(pdir):
                return 0
            self._locate(p, r)
        fd = r.fd
        assert fd is not None, "located with a segment present"
        size = 0
        sealed = False  # saw a later segment: this one is complete on disk
        later: list[int] = []
        got = 0
        while want > 0:
            cap = min(want, 1 << 16)
            size = max(size, min(max(int(r.avg * cap * 1.1) + 64, 4096), 16 << 20))
            data = os.pread(fd, size, r.pos)
            rows = np.empty((cap, 3), dtype=np.int64)
            n, end, status, _ = scan(np.frombuffer(data, dtype=np.uint8), 0, cap, True, rows, 0, 1)
            if n:
                off = r.offset
                if blocks:
                    spans = np.empty((n, 2), dtype=np.int64)
                    # value start = frame start + header + key length (0 for no key); end = frame end
                    np.add(rows[:n, 0] + HEADER_BYTES, np.maximum(rows[:n, 1], 0), out=spans[:, 0])
                    spans[:, 1] = rows[:n, 2]
                    out.append(RecordBlock(p, off, data, spans))
                    off += n
                else:
                    for s, kl, e in rows[:n].tolist():
                        if kl < 0:
                            out.append(Record(p, off, None, data[s + HEADER_BYTES : e]))
                        else:
                            v = s + HEADER_BYTES + kl
                            out.append(Record(p, off, data[s + HEADER_BYTES : v], data[v:e]))
                        off += 1
                r.offset, r.pos, want, got = off, r.pos + end, want - n, got + n
                r.avg = 0.8 * r.avg + 0.2 * (end / n)
            if status == STATUS_LIMIT:
                continue
            if status == STATUS_END and len(data) == size:  # there may be more bytes than we read
                if n:
                    size = 0
                    continue
                need = 8 + struct.unpack_from("<I", data, 0)[0]  # one record larger than the read
                if r.pos + need <= os.fstat(fd).st_size:
                    size = need
                    continue
            # the readable bytes end here (EOF, or an incomplete or bad record)
            if not sealed:
                later = [b for b in segment_bases(pdir) if b > r.base]
                if not later:
                    # active segment: an incomplete or torn tail is waited on, never returned;
                    # bytes after it that hold a valid record are corruption (once per file size)
                    if len(data) > end:
                        seen = (r.pos, os.fstat(fd).st_size)
                        if r.checked != seen:
                            err = self._log._tail_error(p, r.base, fd, r.pos)
                            if err is not None:
                                raise err  # not noted as checked: every poll raises it again
                            r.checked = seen
                    return got
                sealed = True  # the writer wrote all of this segment before creating the next one:
                size = 0  # look once more, then move on
                continue
            file_size = os.fstat(fd).st_size
            if file_size != r.pos:
                raise corrupt_error(self._log.name, segment_path(pdir, r.base), fd, r.pos, file_size)
            if later[0] != r.offset:
                if step_over_holes(quarantine_ranges(pdir), r.offset) != later[0]:
                    msg = (f"log {self._log.name!r} partition {p}: segment {r.base} ends at offset "
                           f"{r.offset} but the next segment starts at {later[0]}")
                    raise LogError(msg)
                r.offset = later[0]  # the offsets between are quarantined (`LocalLog.repair`)
            self._close_segment(r)
            fd = r.fd = os.open(segment_path(pdir, later[0]), os.O_RDONLY)
            r.base, r.pos, size, sealed = later[0], 0, 0, False
        return got

    def close(self) -> None:
        self._closed = True
        for r in self._parts.values():
            self._close_segment(r)

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()

"""The embedded log: partitioned, crash-safe record files in a folder; no server.

Layout of a log `name` under a backend root:

    root/name/meta.json              {"format": 1, "partitions": N}   (written once, atomically)
    root/name/writer.lock            advisory flock held by the one writer (holds its pid)
    root/name/p<i>/<base>.seg        segments of partition i; <base> = offset of its first record,
                                     20 digits; a segment rolls at `LocalLogConfig.segment_bytes`
    root/name/consumers/<group>.json committed positions {"group": g, "positions": {"0": 12, ...}}
    root/name/p<i>/<first>-<end>.quarantine   bytes a repair moved aside (offsets first..end-1), + .json
    root/name/retention.json         the retention policy, when one is registered (`LocalLog.retain`)

A segment is a run of CRC-framed records (format: `freshrec.stream.local_frames`; the
consumers are `freshrec.stream.local_consumer`, retention `freshrec.stream.local_retention`,
their names importable from here).
Each partition's offsets are dense from 0, except for the holes a repair leaves (the offsets of
quarantined records; readers step over them); a sparse in-memory index per segment (built by
scanning on first use, then extended) makes `seek` and opening cheap.

Contract:
- One writer per log at a time (any process): the first `append` takes the writer lock, or raises
  `LogError` naming the holder's pid. Readers take no lock; any number of consumers, in any
  processes, each with its own group positions.
- Appends are buffered in memory and written out when `buffer_bytes` pile up or on `flush()`;
  `flush()` writes and fsyncs, so after it returns a kill -9 (or power loss) of the writer loses
  none of those records. Readers in other processes see a record once it is written out (at
  the latest after `flush()`).
- Nothing is cut that could be a record (the rules: `freshrec.stream.local_segments`). A writer
  killed mid-append leaves a torn tail (an incomplete last record); readers never return it and
  the next writer cuts it when it takes the lock. A complete but unreadable last record is moved
  aside into a quarantine file by that writer, not deleted.
- Bad bytes with valid records after them in the active segment, and any bad bytes in a sealed
  segment (one that a later segment follows), raise `CorruptLogError` (file, byte offset,
  reason) from `poll`, `poll_blocks`, `seek`, `end_offsets` and from the first `append` (which
  cuts nothing then). Readers never stop at corruption without a word. `check()` reports every
  segment; `repair()` (`freshrec log repair`) moves each bad span aside and keeps every valid
  record at its offset.
- Retention (`retain`, off unless registered) deletes only whole sealed segments, oldest first,
  by size and age, and never one holding a record at or after the lowest committed position of
  a group registered for it. A reader of an unregistered group may find its records gone
  (`OffsetOutOfRange`); a snapshot that must replay from an offset commits it under a group.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import threading
import uuid
import weakref
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from freshrec.errors import CorruptLogError, LogError
from freshrec.stream.local_consumer import LocalConsumer, RecordBlock
from freshrec.stream.local_retention import Retaining, Retention, SegmentInfo, plan_retention
from freshrec.stream.local_segments import (
    Moved,
    SegmentCheck,
    SegmentIndex,
    check_segment,
    classify_tail,
    encode,
    encode_many,
    frames_chain,
    fsync_dir,
    fsync_or_error,
    interrupted_repair,
    quarantine_ranges,
    quarantine_tail,
    repair_partition,
    segment_bases,
    segment_path,
)
from freshrec.stream.log import partition_for

__all__ = [
    "LocalBackend",
    "LocalConsumer",
    "LocalLog",
    "LocalLogConfig",
    "RecordBlock",
    "Retention",
    "SegmentInfo",
    "plan_retention",
]

FORMAT_VERSION = 1
# ---------------------------------------------------------------------------------------------
# files


@dataclass(frozen=True, kw_only=True)
class LocalLogConfig:
    """Tuning of the local log.

    segment_bytes: a partition's segment rolls once it holds this many bytes.
    buffer_bytes: appended bytes (per partition) kept in memory before being written out.
    poll_step_s: how long `poll` sleeps between looks at the files while it waits.
    """

    segment_bytes: int = 64 << 20
    buffer_bytes: int = 1 << 20
    poll_step_s: float = 0.003

    def validate(self) -> None:
        if self.segment_bytes < 1024:
            msg = f"segment_bytes must be >= 1024, got {self.segment_bytes}"
            raise LogError(msg)
        if self.buffer_bytes < 0:
            msg = f"buffer_bytes must be >= 0, got {self.buffer_bytes}"
            raise LogError(msg)
        if not 0 < self.poll_step_s <= 1:
            msg = f"poll_step_s must be in (0, 1], got {self.poll_step_s}"
            raise LogError(msg)


def _check_name(kind: str, name: str) -> None:
    ok = name and len(name) <= 200 and name[0] not in ".-"
    if not ok or any(not (c.isascii() and (c.isalnum() or c in "._-")) for c in name):
        msg = f"{kind} name {name!r} must be 1-200 characters of [A-Za-z0-9._-], not starting with . or -"
        raise LogError(msg)


@dataclass(slots=True)
class _PartWriter:
    fd: int
    base: int  # offset of the active segment's first record
    size: int  # bytes in the active segment's file
    next_offset: int
    buf: list[bytes]
    buf_bytes: int = 0
    dirty: bool = False  # written but not fsynced


class LocalLog(Retaining):
    """A log in `root/name` (see the module docstring for layout and guarantees). Thread-safe."""

    def __init__(self, root: str | os.PathLike[str], name: str, *, partitions: int = 1,
                 config: LocalLogConfig | None = None) -> None:
        _check_name("log", name)
        self.config = config or LocalLogConfig()
        self.config.validate()
        if partitions < 1:
            msg = f"log {name!r}: partitions must be >= 1, got {partitions}"
            raise LogError(msg)
        self.name = name
        self.path = Path(root) / name
        self._partitions = self._open_meta(partitions)
        for p in range(self._partitions):
            (self.path / f"p{p}").mkdir(exist_ok=True)
        (self.path / "consumers").mkdir(exist_ok=True)
        self._lock = threading.Lock()
        self._lock_fd: int | None = None
        self._writers: list[_PartWriter] | None = None
        self._broken: str | None = None
        self._counter = 0
        self._closed = False
        self._consumers: weakref.WeakSet[LocalConsumer] = weakref.WeakSet()
        self._pool: ThreadPoolExecutor | None = None
        self._index: dict[tuple[int, int], SegmentIndex] = {}  # (partition, segment base) -> index
        self._index_lock = threading.Lock()

    def _open_meta(self, partitions: int) -> int:
        meta = self.path / "meta.json"
        try:
            if not meta.exists():
                self.path.mkdir(parents=True, exist_ok=True)
                tmp = self.path / f".meta.{uuid.uuid4().hex}.tmp"
                tmp.write_text(json.dumps({"format": FORMAT_VERSION, "partitions": partitions}))
                with open(tmp, "rb") as f:
                    os.fsync(f.fileno())
                with contextlib.suppress(FileExistsError):  # another process created it first
                    os.link(tmp, meta)
                tmp.unlink()
                fsync_dir(self.path)
                fsync_dir(self.path.parent)
            doc = json.loads(meta.read_text())
        except (OSError, ValueError) as e:
            msg = f"log {self.name!r}: cannot open {meta}: {e}"
            raise LogError(msg) from e
        if doc.get("format") != FORMAT_VERSION or not isinstance(doc.get("partitions"), int):
            msg = f"log {self.name!r}: {meta} is not a freshrec local log meta file (format {FORMAT_VERSION})"
            raise LogError(msg)
        return int(doc["partitions"])

    def _segment_index(self, p: int, base: int, fd: int, upto: int | None = None) -> SegmentIndex:
        """The index of segment `base` of partition `p` (open as `fd`), scanned to `upto` records
        (default: all valid ones). Shared by this log's writer and consumers."""
        with self._index_lock:
            idx = self._index.get((p, base))
            if idx is None:
                idx = self._index[(p, base)] = SegmentIndex()
            idx.extend(fd, upto)
            return idx

    @property
    def partitions(self) -> int:
        """Number of partitions; an existing log keeps the count it was created with."""
        return self._partitions

    def _tail_error(self, p: int, base: int, fd: int, start: int) -> CorruptLogError | None:
        """The error for what follows the valid records (ending at byte `start`) of the active
        segment `base` of partition `p`, open as `fd`, when it is corruption; None when it is
        nothing, a torn or unreadable tail, or changed while it was read. A verdict of corrupt
        is taken only when a second look agrees (a new writer may cut a torn tail and append
        between two reads)."""
        tail = None
        for _ in range(2):
            tail = classify_tail(fd, start, os.fstat(fd).st_size)
            if tail.kind != "corrupt":
                return None
        assert tail is not None
        path = segment_path(self.path / f"p{p}", base)
        return CorruptLogError(str(path), start, tail.reason, log=self.name)

    def check(self) -> dict[int, list[SegmentCheck]]:
        """Per partition, every segment walked whole, every checksum verified (`check_segment`).
        Reads only; with a writer at work the active segment's end may show as a torn tail."""
        out: dict[int, list[SegmentCheck]] = {}
        try:
            for p in range(self._partitions):
                pdir = self.path / f"p{p}"
                bases, holes = segment_bases(pdir), quarantine_ranges(pdir)
                out[p] = [check_segment(pdir, b, bases[i + 1] if i + 1 < len(bases) else None, holes)
                          for i, b in enumerate(bases)]
        except OSError as e:
            msg = f"log {self.name!r}: cannot read {self.path}: {e}"
            raise LogError(msg) from e
        return out

    def repair(self) -> list[Moved]:
        """Move every bad span of every partition aside into a quarantine file, keeping every
        valid record at its offset (`freshrec.stream.local_segments.repair_partition`); returns
        what was moved. Takes the writer lock (raises `LogError` while a writer holds it); stop
        the log's readers first (one reading a segment as it is split may raise)."""
        with self._lock:
            if self._writers is not None:
                msg = f"log {self.name!r}: this object has appended; repair from a fresh one"
                raise LogError(msg)
            fd = self._take_writer_lock()
            try:
                moved: list[Moved] = []
                for p in range(self._partitions):
                    moved += repair_partition(self.path / f"p{p}")
                return moved
            except OSError as e:
                msg = f"log {self.name!r}: repair of {self.path} failed: {e}"
                raise LogError(msg) from e
            finally:
                os.close(fd)  # releases the flock
                with self._index_lock:
                    self._index.clear()

    # -- writing ------------------------------------------------------------------------------

    def _take_writer_lock(self) -> int:
        """Take the writer lock (raises LogError naming the holder's pid); returns its fd."""
        lock_path = self.path / "writer.lock"
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                msg = (f"log {self.name!r} at {self.path} already has a writer (pid {holder}); "
                       "one writer at a time")
                raise LogError(msg) from e
            raise
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError as e:
            os.close(fd)
            msg = f"log {self.name!r}: cannot write {lock_path}: {e}"
            raise LogError(msg) from e
        return fd

    def _open_writer(self) -> list[_PartWriter]:
        """Take the writer lock, cut torn tails (or raise CorruptLogError, cutting nothing), and
        set up each partition's active segment."""
        fd = self._take_writer_lock()
        writers: list[_PartWriter] = []
        try:
            for p in range(self._partitions):
                pdir = self.path / f"p{p}"
                if interrupted_repair(pdir):
                    msg = (f"log {self.name!r}: a repair of {pdir} was interrupted; "
                           "`freshrec log repair` finishes it")
                    raise LogError(msg)
                bases = segment_bases(pdir)
                base = bases[-1] if bases else 0
                sfd = os.open(segment_path(pdir, base), os.O_RDWR | os.O_CREAT, 0o644)
                writers.append(_PartWriter(fd=sfd, base=base, size=0, next_offset=base, buf=[]))
                idx = self._segment_index(p, base, sfd)
                size = os.fstat(sfd).st_size
                if size != idx.end:
                    self._cut_tail(p, base, sfd, idx)
                if not bases:
                    fsync_dir(pdir)
                writers[-1].size, writers[-1].next_offset = idx.end, base + idx.n
            fsync_dir(self.path)  # the partition and consumer folders' entries are durable too
        except BaseException as e:
            for w in writers:
                os.close(w.fd)
            os.close(fd)
            if isinstance(e, OSError):
                msg = f"log {self.name!r}: cannot open {self.path} for writing: {e}"
                raise LogError(msg) from e
            raise
        self._lock_fd = fd
        return writers

    def _cut_tail(self, p: int, base: int, fd: int, idx: SegmentIndex) -> None:
        """Cut what follows the valid records of the active segment when it is a torn tail, or
        an unreadable one after moving its bytes aside; raise CorruptLogError otherwise."""
        pdir = self.path / f"p{p}"
        tail = classify_tail(fd, idx.end, os.fstat(fd).st_size)
        assert tail.kind not in ("none", "valid"), "the index runs to the end of the valid records"
        if tail.kind in ("corrupt", "undecided"):
            raise CorruptLogError(str(segment_path(pdir, base)), idx.end, tail.reason, log=self.name)
        if tail.kind == "unreadable":
            quarantine_tail(pdir, fd, base, tail, base + idx.n)
        os.ftruncate(fd, idx.end)
        os.fsync(fd)

    def _write_out(self, w: _PartWriter) -> None:
        if not w.buf:
            return
        data = w.buf[0] if len(w.buf) == 1 else b"".join(w.buf)
        w.buf.clear()
        w.buf_bytes = 0
        self._pwrite(w, data)

    def _pwrite(self, w: _PartWriter, data: bytes | memoryview) -> None:
        """Write `data` at the end of the active segment (not fsynced: `w.dirty`)."""
        try:
            view = memoryview(data)
            while view:
                k = os.pwrite(w.fd, view, w.size)
                w.size += k
                view = view[k:]
        except OSError as e:
            self._broken = f"a write failed: {e}"
            msg = f"log {self.name!r}: writing {self.path} failed: {e}; reopen the log to recover"
            raise LogError(msg) from e
        w.dirty = True

    def _sync(self, w: _PartWriter) -> None:
        self._write_out(w)
        if w.dirty:
            try:
                os.fsync(w.fd)
            except OSError as e:
                self._broken = f"fsync failed: {e}"
                msg = f"log {self.name!r}: fsync of {self.path} failed: {e}; reopen the log to recover"
                raise LogError(msg) from e
            w.dirty = False

    def _roll(self, p: int, w: _PartWriter) -> None:
        """Seal the active segment (all bytes written and fsynced), then start the next one."""
        self._sync(w)
        os.close(w.fd)
        pdir = self.path / f"p{p}"
        w.fd = os.open(segment_path(pdir, w.next_offset), os.O_RDWR | os.O_CREAT, 0o644)
        fsync_dir(pdir)
        w.base, w.size = w.next_offset, 0
        if (self.path / "retention.json").exists():
            with contextlib.suppress(LogError):  # not deleting loses nothing; the next roll retries
                self.apply_retention()

    def _writable(self) -> list[_PartWriter]:
        """The partition writers (opened on first use); raises when the log is closed or broken.
        Call with the lock held."""
        if self._closed:
            msg = f"log {self.name!r} is closed"
            raise LogError(msg)
        if self._broken:
            msg = f"log {self.name!r} is unusable ({self._broken}); reopen it to recover"
            raise LogError(msg)
        if self._writers is None:
            self._writers = self._open_writer()
        return self._writers

    def append(self, value: bytes, key: bytes | None = None) -> tuple[int, int]:
        """Queue one record; returns its (partition, offset). Durable after `flush()`."""
        try:
            frame = encode(value, key)
        except LogError as e:
            msg = f"log {self.name!r}: {e}"
            raise LogError(msg) from e
        with self._lock:
            p = partition_for(key, self._partitions, self._counter)
            return p, self._queue(self._writable(), p, frame)

    def _queue(self, ws: list[_PartWriter], p: int, frame: bytes) -> int:
        """Queue one framed record on partition p (rolling the segment when it would overflow);
        returns its offset. Call with the lock held."""
        self._counter += 1
        w = ws[p]
        n = len(frame)
        if w.size + w.buf_bytes + n > self.config.segment_bytes and w.size + w.buf_bytes > 0:
            self._roll(p, w)
        w.buf.append(frame)
        w.buf_bytes += n
        offset = w.next_offset
        w.next_offset += 1
        if w.buf_bytes >= self.config.buffer_bytes:
            self._write_out(w)
        return offset

    def append_many(self, records: list[tuple[bytes | None, bytes]]) -> None:
        """Queue (key, value) records, in order, as `append` would one by one (under one lock, with
        the framing done up front: when one record cannot be framed, none is queued). Durable
        after `flush()`."""
        try:
            frames = encode_many(records)
        except LogError as e:
            msg = f"log {self.name!r}: {e}"
            raise LogError(msg) from e
        seg_bytes, buf_bytes = self.config.segment_bytes, self.config.buffer_bytes
        with self._lock:
            ws = self._writable()
            parts = self._partitions
            if parts == 1:  # one partition: the whole batch at once when it fits the active segment
                w = ws[0]
                n = sum(map(len, frames))
                if w.size + w.buf_bytes + n <= seg_bytes:
                    self._counter += len(frames)
                    w.buf.extend(frames)
                    w.buf_bytes += n
                    w.next_offset += len(frames)
                    if w.buf_bytes >= buf_bytes:
                        self._write_out(w)
                    return
            for (key, _), frame in zip(records, frames, strict=True):
                self._queue(ws, partition_for(key, parts, self._counter), frame)

    def append_frames(self, frames: np.ndarray | bytes, ends: np.ndarray, *, partition: int = 0) -> None:
        """Queue a block of records already framed (`local_frames.frame_ends` and `seal_frames`,
        or `encode`) on `partition`, in order: record i is frames[ends[i - 1]:ends[i]] (from 0 for
        i = 0). The same as `append_many` of those records on that partition, byte for byte (the
        same segment rolls), in a few writes. The frames' lengths must chain to `ends` (checked;
        LogError otherwise, and nothing is queued); their checksums are the caller's. Durable
        after `flush()`."""
        if not 0 <= partition < self._partitions:
            msg = f"log {self.name!r} has {self._partitions} partitions; no partition {partition}"
            raise LogError(msg)
        ends = np.asarray(ends, dtype=np.int64)
        buf = np.frombuffer(frames, dtype=np.uint8) if isinstance(frames, bytes) else frames
        buf = np.ascontiguousarray(buf)
        n = len(ends)
        if n == 0:
            return
        got = frames_chain(buf, ends)
        if got != n:
            msg = f"log {self.name!r}: a block of {n} frames does not chain to its ends (record {got})"
            raise LogError(msg)
        view = buf.data
        seg_bytes, buf_bytes = self.config.segment_bytes, self.config.buffer_bytes
        with self._lock:
            w = self._writable()[partition]
            i, at = 0, 0
            while i < n:
                used = w.size + w.buf_bytes
                j = int(np.searchsorted(ends, at + seg_bytes - used, side="right"))  # frames that fit
                if j <= i:
                    if used > 0:  # the next frame does not fit: a new segment, as `_queue` does
                        self._roll(partition, w)
                        continue
                    j = i + 1  # an empty segment takes one frame, whatever its size
                chunk, size = view[at : int(ends[j - 1])], int(ends[j - 1]) - at
                if w.buf_bytes + size < buf_bytes:  # small: buffered like `append_many`'s frames
                    w.buf.append(bytes(chunk))
                    w.buf_bytes += size
                else:
                    self._write_out(w)
                    self._pwrite(w, chunk)
                self._counter += j - i
                w.next_offset += j - i
                i, at = j, int(ends[j - 1])

    def flush(self) -> None:
        """Write out and fsync everything appended so far."""
        with self._lock:
            if self._broken:
                msg = f"log {self.name!r} is unusable ({self._broken}); reopen it to recover"
                raise LogError(msg)
            ws = self._writers or []
            for w in ws:
                self._write_out(w)
            dirty = [w for w in ws if w.dirty]
            if len(dirty) > 1:  # fsync the partitions' files in parallel (os.fsync releases the GIL)
                if self._pool is None:
                    self._pool = ThreadPoolExecutor(max_workers=min(8, self._partitions),
                                                    thread_name_prefix=f"fsync-{self.name}")
                errors = [e for e in self._pool.map(fsync_or_error, [w.fd for w in dirty]) if e]
                if errors:
                    self._broken = f"fsync failed: {errors[0]}"
                    msg = f"log {self.name!r}: fsync in {self.path} failed: {errors[0]}; reopen the log"
                    raise LogError(msg)
                for w in dirty:
                    w.dirty = False
            for w in dirty:
                self._sync(w)

    # -- reading ------------------------------------------------------------------------------

    def end_offsets(self) -> list[int]:
        """Per partition, the offset the next record gets: the writer's count (buffered included),
        or in a process that has not appended, the number of valid records on disk."""
        with self._lock:
            if self._writers is not None:
                return [w.next_offset for w in self._writers]
        return [self._disk_end(p) for p in range(self._partitions)]

    def _disk_end(self, p: int) -> int:
        pdir = self.path / f"p{p}"
        bases = segment_bases(pdir)
        if not bases:
            return 0
        try:
            fd = os.open(segment_path(pdir, bases[-1]), os.O_RDONLY)
        except FileNotFoundError:
            return 0
        try:
            idx = self._segment_index(p, bases[-1], fd)
            if os.fstat(fd).st_size > idx.end:
                err = self._tail_error(p, bases[-1], fd, idx.end)
                if err is not None:
                    raise err
            return bases[-1] + idx.n
        finally:
            os.close(fd)

    def consumer(self, group: str, *, partitions: Sequence[int] | None = None) -> LocalConsumer:
        """A consumer in `group` over `partitions` (default all), at the group's committed positions."""
        parts = list(range(self._partitions)) if partitions is None else [int(p) for p in partitions]
        c = LocalConsumer(self, group, parts)
        self._consumers.add(c)
        return c

    def close(self) -> None:
        """Flush, release the writer lock and close this log's consumers. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                if self._writers is not None and not self._broken:
                    for w in self._writers:
                        self._sync(w)
            finally:
                for w in self._writers or ():
                    os.close(w.fd)
                self._writers = None
                if self._lock_fd is not None:
                    os.close(self._lock_fd)  # releases the flock
                    self._lock_fd = None
                if self._pool is not None:
                    self._pool.shutdown()
                    self._pool = None
        for c in list(self._consumers):
            c.close()


class LocalBackend:
    """Logs as folders under `root` (created when absent); `log()` returns one object per name."""

    def __init__(self, root: str | os.PathLike[str], *, config: LocalLogConfig | None = None) -> None:
        self.root = Path(root)
        self.config = config or LocalLogConfig()
        self.config.validate()
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            msg = f"cannot create log root {self.root}: {e}"
            raise LogError(msg) from e
        self._logs: dict[str, LocalLog] = {}
        self._lock = threading.Lock()

    def log(self, name: str, *, partitions: int = 1) -> LocalLog:
        """Open (creating when absent, with `partitions`) the log `name`."""
        with self._lock:
            log = self._logs.get(name)
            if log is None or log._closed:
                log = self._logs[name] = LocalLog(self.root, name, partitions=partitions, config=self.config)
            return log

    def close(self) -> None:
        with self._lock:
            logs, self._logs = list(self._logs.values()), {}
        for log in logs:
            log.close()

"""Log writes of worker processes, appended by their supervisor: one writer per log, N servers.

A local log takes one writer process at a time (`freshrec.stream.local_log`), and N server
processes each have impressions and actions to log. So a worker hands its records to the
supervisor over a Unix socket (one per worker, `socket.socketpair`), and the supervisor, which
owns the real logs, appends them in arrival order. Nothing is lost that a worker wrote to its
socket: the bytes stay readable after the worker dies, and the supervisor appends them.

Frames, worker -> supervisor (little-endian):

    op u8 | log u8 | key length i32 (-1: no key) | value length u32 | key | value
    op "A": append the record to log number `log`
    op "B": append a block of records already framed as the local log frames them
            (`LocalLog.append_frames`): the key length field holds the partition, the value is
            u32 n | n x i64 frame ends | the frames; one message for all the impressions a
            worker's features logger wrote at once, not one per record
    op "F": flush log `log`; the supervisor answers b"K" once `Log.flush` returned (the records
            before it are durable), or b"E" + u32 length + message when it failed
    op "R": the worker is serving (no payload)

`ForwardedLog` is the worker's side (a `Log` that only appends and flushes); `LogPump` is the
supervisor's (one thread per worker). A block goes to the supervisor's log by `append_frames`
when it has one (the local log: the frames are written as they came, after their lengths are
checked to chain), else record by record (Kafka).
"""

from __future__ import annotations

import contextlib
import logging
import socket
import struct
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from freshrec.errors import LogError
from freshrec.stream.local_frames import HEADER_BYTES, scan

__all__ = ["ForwardedLog", "LogLink", "LogPump"]

log = logging.getLogger(__name__)

_HEAD = struct.Struct("<BBiI")
_COUNT = struct.Struct("<I")
APPEND, BLOCK, FLUSH, READY = ord("A"), ord("B"), ord("F"), ord("R")


class LogLink:
    """The worker's end of its socket, shared by its logs (thread-safe)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._rfile = sock.makefile("rb")
        self._lock = threading.Lock()

    def _send(self, op: int, log_id: int, key_field: int, key: bytes, *value: bytes) -> None:
        """One frame: the head (the value's length: of the `value` parts), `key`, the value."""
        head = _HEAD.pack(op, log_id, key_field, sum(map(len, value)))
        with self._lock:
            self.sock.sendall(b"".join((head, key, *value)))

    def send(self, op: int, log_id: int, value: bytes = b"", key: bytes | None = None) -> None:
        self._send(op, log_id, -1 if key is None else len(key), key or b"", value)

    def send_block(self, log_id: int, partition: int, frames: np.ndarray, ends: np.ndarray) -> None:
        n = int(ends.shape[0])
        size = int(ends[-1]) if n else 0
        ends_le = np.ascontiguousarray(ends, dtype="<i8").tobytes()
        self._send(BLOCK, log_id, int(partition), b"", _COUNT.pack(n), ends_le, frames[:size].tobytes())

    def flush(self, log_id: int) -> None:
        with self._lock:
            self.sock.sendall(_HEAD.pack(FLUSH, log_id, -1, 0))
            reply = self._rfile.read(1)
            if reply == b"K":
                return
            if reply == b"E":
                (n,) = struct.unpack("<I", self._rfile.read(4))
                msg = self._rfile.read(n).decode(errors="replace")
            else:
                msg = "the supervisor closed the log link"
        raise LogError(msg)


class ForwardedLog:
    """A `Log` whose appends go to the supervisor's log number `log_id` (module docstring)."""

    def __init__(self, link: LogLink, log_id: int, *, name: str, partitions: int = 1) -> None:
        self.link = link
        self.log_id = int(log_id)
        self.name = name
        self._partitions = int(partitions)

    @property
    def partitions(self) -> int:
        return self._partitions

    @contextlib.contextmanager
    def _link_used(self) -> Iterator[None]:
        """A failure of the link is this log's LogError."""
        try:
            yield
        except OSError as e:
            msg = f"log {self.name}: the supervisor's link failed ({e})"
            raise LogError(msg) from e

    def append(self, value: bytes, key: bytes | None = None) -> tuple[int, int] | None:
        with self._link_used():
            self.link.send(APPEND, self.log_id, value, key)
        return None  # the offset is the supervisor's to know

    def append_frames(self, frames: np.ndarray | bytes, ends: np.ndarray, *, partition: int = 0) -> None:
        """A block of framed records (as `LocalLog.append_frames` takes it), in one message."""
        buf = np.frombuffer(frames, dtype=np.uint8) if isinstance(frames, bytes) else frames
        with self._link_used():
            self.link.send_block(self.log_id, partition, buf, np.asarray(ends, dtype=np.int64))

    def flush(self) -> None:
        with self._link_used():
            self.link.flush(self.log_id)

    def end_offsets(self) -> list[int]:
        msg = f"log {self.name}: a worker's log only appends (read it from the log's backend)"
        raise LogError(msg)

    def consumer(self, group: str, *, partitions: Sequence[int] | None = None) -> Any:
        return self.end_offsets()

    def close(self) -> None:
        pass  # the link outlives the logs; it closes with the process


class LogPump:
    """The supervisor's end of one worker's socket: a thread appending its records to `logs`
    (index = log number; each log guarded by its lock in `locks`). `on_ready` runs on op "R"."""

    def __init__(
        self,
        sock: socket.socket,
        logs: Sequence[Any],
        locks: Sequence[threading.Lock],
        *,
        on_ready: Callable[[], None],
    ) -> None:
        self.sock = sock
        self.logs = logs
        self.locks = locks
        self.on_ready = on_ready
        self.appended = 0
        self.errors = 0
        self._error: str | None = None
        self._thread = threading.Thread(target=self._run, name="freshrec-log-pump", daemon=True)

    def start(self) -> LogPump:
        self._thread.start()
        return self

    def _run(self) -> None:
        rfile = self.sock.makefile("rb")
        try:
            while True:
                head = rfile.read(_HEAD.size)
                if len(head) < _HEAD.size:
                    return  # the worker closed its end (exited)
                op, lid, klen, vlen = _HEAD.unpack(head)
                key = rfile.read(klen) if klen >= 0 and op != BLOCK else None
                value = rfile.read(vlen) if vlen else b""
                if op == BLOCK:
                    self._append_block(lid, klen, value)
                elif op == READY:
                    self.on_ready()
                elif op == APPEND:
                    self._append(lid, value, key)
                elif op == FLUSH:
                    self._flush(lid)
        except OSError as e:
            log.warning("log link of a worker failed: %s", e)
        finally:
            rfile.close()

    def _append(self, lid: int, value: bytes, key: bytes | None) -> None:
        try:
            with self.locks[lid]:
                self.logs[lid].append(value, key=key)
            self.appended += 1
        except Exception as e:  # reported to the worker on its next flush
            self.errors += 1
            self._error = f"{type(e).__name__}: {e}"

    def _append_block(self, lid: int, partition: int, body: bytes) -> None:
        try:
            (n,) = _COUNT.unpack_from(body, 0)
            ends = np.frombuffer(body, dtype="<i8", count=n, offset=_COUNT.size).astype(np.int64)
            frames = np.frombuffer(body, dtype=np.uint8, offset=_COUNT.size + 8 * n)
            target = self.logs[lid]
            with self.locks[lid]:
                if hasattr(target, "append_frames"):
                    target.append_frames(frames, ends, partition=partition)  # checks the chain
                else:
                    for key, value in split_frames(frames, ends):
                        target.append(value, key=key)
            self.appended += n
        except Exception as e:  # reported to the worker on its next flush
            self.errors += 1
            self._error = f"{type(e).__name__}: {e}"

    def _flush(self, lid: int) -> None:
        err = self._error
        self._error = None
        if err is None:
            try:
                with self.locks[lid]:
                    self.logs[lid].flush()
            except Exception as e:
                err = f"{type(e).__name__}: {e}"
        if err is None:
            self.sock.sendall(b"K")
        else:
            msg = err.encode()[:4000]
            self.sock.sendall(b"E" + struct.pack("<I", len(msg)) + msg)

    def join(self, timeout_s: float = 10.0) -> None:
        self._thread.join(timeout_s)


def split_frames(frames: np.ndarray, ends: np.ndarray) -> list[tuple[bytes | None, bytes]]:
    """The (key, value) of each framed record of a block (record i: frames[ends[i - 1]:ends[i]]),
    walked and checksummed as the local log reads its segments (`local_frames.scan`); LogError
    unless the block is whole records that end at `ends`."""
    n = int(ends.shape[0])
    rows = np.empty((n, 3), dtype=np.int64)
    got, _, _, _ = scan(frames, 0, n, True, rows, 0, 1)
    if got != n or not np.array_equal(rows[:, 2], ends):
        msg = f"a block of {n} frames is not {n} whole records ending where it says (record {got})"
        raise LogError(msg)
    data = frames.tobytes()
    out: list[tuple[bytes | None, bytes]] = []
    for start, klen, end in rows.tolist():
        at = start + HEADER_BYTES
        out.append((None, data[at:end]) if klen < 0 else (data[at : at + klen], data[at + klen : end]))
    return out

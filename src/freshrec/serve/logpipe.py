"""Log writes of worker processes, appended by their supervisor: one writer per log, N servers.

A local log takes one writer process at a time (`freshrec.stream.local_log`), and N server
processes each have impressions and actions to log. So a worker hands its records to the
supervisor over a Unix socket (one per worker, `socket.socketpair`), and the supervisor, which
owns the real logs, appends them in arrival order. Nothing is lost that a worker wrote to its
socket: the bytes stay readable after the worker dies, and the supervisor appends them.

Frames, worker -> supervisor (little-endian):

    op u8 | log u8 | key length i32 (-1: no key) | value length u32 | key | value
    op "A": append the record to log number `log`
    op "F": flush log `log`; the supervisor answers b"K" once `Log.flush` returned (the records
            before it are durable), or b"E" + u32 length + message when it failed
    op "R": the worker is serving (no payload)

`ForwardedLog` is the worker's side (a `Log` that only appends and flushes); `LogPump` is the
supervisor's (one thread per worker).
"""

from __future__ import annotations

import logging
import socket
import struct
import threading
from collections.abc import Callable, Sequence
from typing import Any

from freshrec.errors import LogError

__all__ = ["ForwardedLog", "LogLink", "LogPump"]

log = logging.getLogger(__name__)

_HEAD = struct.Struct("<BBiI")
APPEND, FLUSH, READY = ord("A"), ord("F"), ord("R")


class LogLink:
    """The worker's end of its socket, shared by its logs (thread-safe)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._rfile = sock.makefile("rb")
        self._lock = threading.Lock()

    def send(self, op: int, log_id: int, value: bytes = b"", key: bytes | None = None) -> None:
        head = _HEAD.pack(op, log_id, -1 if key is None else len(key), len(value))
        with self._lock:
            self.sock.sendall(b"".join((head, key or b"", value)))

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

    def append(self, value: bytes, key: bytes | None = None) -> tuple[int, int] | None:
        try:
            self.link.send(APPEND, self.log_id, value, key)
        except OSError as e:
            msg = f"log {self.name}: the supervisor's link failed ({e})"
            raise LogError(msg) from e
        return None  # the offset is the supervisor's to know

    def flush(self) -> None:
        try:
            self.link.flush(self.log_id)
        except OSError as e:
            msg = f"log {self.name}: the supervisor's link failed ({e})"
            raise LogError(msg) from e

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
                key = rfile.read(klen) if klen >= 0 else None
                value = rfile.read(vlen) if vlen else b""
                if op == READY:
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

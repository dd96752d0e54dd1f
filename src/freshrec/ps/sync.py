"""Touched-key sync: the training PS publishes deltas to the parameter log; replicas follow it.

    training PS ──publish_once()──► parameter log ──SyncSubscriber (thread)──► ServingReplica
       take_touched() per table       Delta frames (one table, <= max_frame_bytes each)
       dense weights (slower)         DenseUpdate frames

`SyncPublisher.publish_once(now)` takes, for every table, the rows touched since the previous
publish (`take_touched()`: ids + embeddings, no optimizer state) and the ids evicted since, and
appends them as `Delta`s (`freshrec.ps.delta`), keyed by table name (so one table's deltas stay in
order on one partition), split into frames of at most `max_frame_bytes` (default 1,000,000 bytes:
under Kafka's default `message.max.bytes` of 1,048,588, far under the local log's 1 GiB; raise it
with the broker's limit). The dense weights go as a
`DenseUpdate` on the first publish and then whenever `dense_interval_s` has passed (split by tensor
into several frames of one version when large; the replica swaps only once it holds them all).
Then the log is flushed: a publish is durable when `publish_once` returns. Every publish gets the
next `version`; all its frames carry it, and `ts` = the PS's `data_time` (the newest data time it
trained on; 0.0 when unknown). A frame of n rows of dim d costs n * (8 + 4 d) bytes
(n * (8 + 2 d) with `fp16=True`) plus 8 bytes of deleted id each and a ~130-byte header.

Snapshots and the log agree through `SyncPublisher.snapshot(path)` / `snapshot_state()`: under the
publish lock it flushes, reads the log's end offsets and takes the PS state with
`positions["params"] = offsets` and `positions["params_version"]`. Every frame after those offsets
was taken after the snapshot, so a replica that loads the snapshot and replays the log from there
ends EXACTLY where a replica that followed the log from offset 0 does (tests/test_ps_sync.py).

`SyncSubscriber` polls the log in a background thread and applies every frame to a replica, then
commits its position under its group. It starts at explicit offsets (from a snapshot) when given,
else at the group's committed position.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from freshrec.errors import ConfigError, EventError
from freshrec.ps.delta import Delta, DenseUpdate, decode, encode
from freshrec.stream.log import Log

__all__ = ["DENSE_KEY", "PublishReport", "SyncPublisher", "SyncSubscriber", "split_delta"]

log = logging.getLogger(__name__)

DENSE_KEY = b"__dense__"
_HEADER_ALLOWANCE = 4096  # bytes kept free in a frame for the JSON header


@dataclass(frozen=True, kw_only=True)
class PublishReport:
    """What one `publish_once` sent.

    rows / deleted: per table, rows upserted and ids deleted; bytes: encoded bytes appended (all
    frames, headers included); payload_bytes: the ids*(8+4*dim) + deleted*8 part alone.
    """

    version: int
    rows: dict[str, int] = field(default_factory=dict)
    deleted: dict[str, int] = field(default_factory=dict)
    frames: int = 0
    bytes: int = 0
    payload_bytes: int = 0
    dense: bool = False
    dense_bytes: int = 0

    @property
    def touched(self) -> int:
        return sum(self.rows.values())


def split_delta(delta: Delta, max_frame_bytes: int) -> list[Delta]:
    """`delta` as deltas of the same table and version whose payload fits `max_frame_bytes`.

    Rows are split first, then the deleted ids; frames are disjoint, so applying them in any
    order has the effect of the whole. Always at least one frame.
    """
    budget = max_frame_bytes - _HEADER_ALLOWANCE
    row_bytes = 8 + delta.embeddings.dtype.itemsize * (delta.embeddings.shape[1] if delta.ids.size else 0)
    if budget < max(row_bytes, 8):
        msg = f"max_frame_bytes {max_frame_bytes} cannot hold one row of {row_bytes} bytes"
        raise ConfigError(msg)
    if delta.nbytes <= budget:
        return [delta]
    out: list[Delta] = []
    per = budget // row_bytes
    n = delta.ids.shape[0]
    for a in range(0, n, per):
        out.append(
            Delta(
                table=delta.table,
                version=delta.version,
                ids=delta.ids[a : a + per],
                embeddings=delta.embeddings[a : a + per],
                deleted=np.empty(0, np.int64),
                ts=delta.ts,
            )
        )
    per_d = budget // 8
    empty = delta.embeddings[:0]
    for a in range(0, delta.deleted.shape[0], per_d):
        out.append(
            Delta(
                table=delta.table,
                version=delta.version,
                ids=np.empty(0, np.int64),
                embeddings=empty,
                deleted=delta.deleted[a : a + per_d],
                ts=delta.ts,
            )
        )
    return out


def _split_dense(upd: DenseUpdate, max_frame_bytes: int) -> list[DenseUpdate]:
    budget = max_frame_bytes - _HEADER_ALLOWANCE
    groups: list[dict[str, np.ndarray]] = [{}]
    size = 0
    for k in sorted(upd.tensors):
        a = upd.tensors[k]
        if groups[-1] and size + a.nbytes > budget:
            groups.append({})
            size = 0
        groups[-1][k] = a
        size += a.nbytes
    return [DenseUpdate(version=upd.version, tensors=g, ts=upd.ts) for g in groups]


class _PS(Protocol):
    @property
    def tables(self) -> Mapping[str, Any]: ...

    @property
    def data_time(self) -> float | None: ...

    def dense_state(self) -> dict[str, np.ndarray]: ...

    def state(self, positions: Mapping[str, Any] | None = None) -> tuple[dict, dict[str, np.ndarray]]: ...


class SyncPublisher:
    """Publishes a training PS's touched rows (every `interval_s`) and dense weights (every
    `dense_interval_s`) to `param_log`. See the module docstring.

    Args:
        ps: a TrainingPS (anything with `tables`, `dense_state()`, `data_time`, `save`).
        param_log: the parameter log.
        interval_s / dense_interval_s: cadences of `run` (clock seconds).
        fp16: send embeddings as float16 (half the bytes; serving sees rounded values).
        max_frame_bytes: the largest frame appended.
        clock: seconds (monotonic is fine); only `run` and the dense cadence read it.
        sleep: how `run` waits (default: `stop_event.wait`).
        start_version: the version of the previous publish (from a snapshot's positions).
    """

    def __init__(
        self,
        ps: _PS,
        param_log: Log,
        *,
        interval_s: float = 10.0,
        dense_interval_s: float = 600.0,
        fp16: bool = False,
        max_frame_bytes: int = 1_000_000,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] | None = None,
        start_version: int = 0,
    ) -> None:
        if not interval_s > 0 or not dense_interval_s > 0:
            msg = f"sync intervals must be > 0, got {interval_s} and {dense_interval_s}"
            raise ConfigError(msg)
        self.ps = ps
        self.log = param_log
        self.interval_s = float(interval_s)
        self.dense_interval_s = float(dense_interval_s)
        self.fp16 = bool(fp16)
        self.max_frame_bytes = int(max_frame_bytes)
        self.clock = clock
        self.sleep = sleep
        self.version = int(start_version)
        self._last_dense: float | None = None
        self._lock = threading.Lock()
        self.reports: list[PublishReport] = []  # the last 1000 publishes
        self.total_bytes = 0

    def _append(self, msg: Delta | DenseUpdate, key: bytes) -> int:
        buf = encode(msg)
        self.log.append(buf, key=key)
        return len(buf)

    def publish_once(self, now: float | None = None, *, dense: bool | None = None) -> PublishReport:
        """Publish what changed since the last call; `now` (clock seconds) drives the dense cadence.

        dense: force (True) or suppress (False) the dense weights; default: by the cadence.
        """
        now = self.clock() if now is None else float(now)
        with self._lock:
            self.version += 1
            v = self.version
            ts = self.ps.data_time if self.ps.data_time is not None else 0.0  # 0: data time unknown
            rows: dict[str, int] = {}
            deleted: dict[str, int] = {}
            frames = nbytes = payload = 0
            for name, table in self.ps.tables.items():
                t = table.take_touched()
                if t.ids.shape[0] == 0 and t.evicted.shape[0] == 0:
                    continue
                emb = t.embeddings.astype(np.float16) if self.fp16 else t.embeddings
                d = Delta(table=name, version=v, ids=t.ids, embeddings=emb, deleted=t.evicted, ts=ts)
                rows[name], deleted[name] = int(t.ids.shape[0]), int(t.evicted.shape[0])
                payload += d.nbytes
                for part in split_delta(d, self.max_frame_bytes):
                    nbytes += self._append(part, name.encode())
                    frames += 1
            send_dense = (
                dense
                if dense is not None
                else (self._last_dense is None or now - self._last_dense >= self.dense_interval_s)
            )
            dense_bytes = 0
            if send_dense:
                upd = DenseUpdate(version=v, tensors=self.ps.dense_state(), ts=ts)
                for dpart in _split_dense(upd, self.max_frame_bytes):
                    dense_bytes += self._append(dpart, DENSE_KEY)
                    frames += 1
                self._last_dense = now
            if frames:
                self.log.flush()
            rep = PublishReport(
                version=v,
                rows=rows,
                deleted=deleted,
                frames=frames,
                bytes=nbytes + dense_bytes,
                payload_bytes=payload,
                dense=bool(send_dense),
                dense_bytes=dense_bytes,
            )
            self.total_bytes += rep.bytes
            self.reports.append(rep)
            del self.reports[:-1000]
            return rep

    def run(self, stop: threading.Event) -> None:
        """Publish every `interval_s` until `stop` is set (then publish once more)."""
        wait = self.sleep if self.sleep is not None else stop.wait
        next_at = self.clock()
        while not stop.is_set():
            self.publish_once()
            next_at += self.interval_s
            delay = next_at - self.clock()
            if delay < 0:  # fell behind: do not burst to catch up
                next_at = self.clock()
                delay = 0.0
            wait(delay)
        self.publish_once()

    def start(self) -> tuple[threading.Thread, threading.Event]:
        """`run` in a daemon thread; returns (thread, stop event)."""
        stop = threading.Event()
        th = threading.Thread(target=self.run, args=(stop,), name="freshrec-sync-publisher", daemon=True)
        th.start()
        return th, stop

    def snapshot_state(
        self, positions: Mapping[str, Any] | None = None
    ) -> tuple[dict, dict[str, np.ndarray]]:
        """`ps.state(positions)` taken under the publish lock, with `positions["params"]` = the
        parameter log's end offsets (after a flush) and `positions["params_version"]` = the last
        version published: what a `SnapshotStore.save(step, kind=SNAPSHOT_KIND, ...)` should get."""
        with self._lock:
            self.log.flush()
            pos = dict(positions or {})
            pos["params"] = [int(x) for x in self.log.end_offsets()]
            pos["params_version"] = self.version
            return self.ps.state(pos)

    def snapshot(self, path: str | Path, positions: Mapping[str, Any] | None = None) -> Path:
        """Save `snapshot_state(positions)` as a snapshot directory at `path` (atomic)."""
        from freshrec.checkpoint.format import write_snapshot
        from freshrec.ps.training import SNAPSHOT_KIND

        meta, arrays = self.snapshot_state(positions)
        return write_snapshot(path, kind=SNAPSHOT_KIND, meta=meta, arrays=arrays)


class _Replica(Protocol):
    def apply(self, msg: Delta | DenseUpdate) -> None: ...


class SyncSubscriber:
    """Follows the parameter log and applies every frame to `replica` (see the module docstring).

    Args:
        replica: a ServingReplica (anything with `apply(msg)`).
        param_log: the parameter log.
        group: consumer group whose position is committed after each applied batch.
        start: per-partition offsets to start at (e.g. a snapshot's `positions["params"]`);
            default: the group's committed positions.
        max_records / poll_timeout_s: one poll's batch size and wait.
        idle_s: how long the following thread (`start`) sleeps after a poll that found nothing:
            the tens of milliseconds this adds to a delta's way into serving (against a sync
            interval of seconds) save the thread from waking hundreds of times a second (and
            taking the GIL from the requests) while idle. A wake costs more than its work
            (`freshrec bench wakes`, the project's 2-core VM: an empty poll of a local log takes
            13 us of CPU back to back and 239 us after a 10 ms sleep), so an idle follower used
            11.4 ms of CPU a second at 20 ms and 4.5 ms at 50 ms.
    """

    def __init__(
        self,
        replica: _Replica,
        param_log: Log,
        *,
        group: str = "serving",
        start: Sequence[int] | Mapping[int, int] | None = None,
        max_records: int = 64,
        poll_timeout_s: float = 0.0,
        idle_s: float = 0.05,
    ) -> None:
        self.replica = replica
        self.log = param_log
        self.group = group
        self.max_records = int(max_records)
        self.poll_timeout_s = float(poll_timeout_s)
        self.idle_s = float(idle_s)
        self.consumer = param_log.consumer(group)
        if start is not None:
            items = start.items() if isinstance(start, Mapping) else enumerate(start)
            for p, off in items:
                self.consumer.seek(int(p), int(off))
        self.frames_applied = 0
        self.bad_frames = 0
        self.last_error: str | None = None
        self.cpu_s = 0.0  # CPU time the following thread spent polling and applying (time.thread_time)
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    @property
    def version(self) -> int:
        """Highest parameter version applied to the replica."""
        return int(getattr(self.replica, "version", 0))

    @property
    def data_ts(self) -> float | None:
        """Data time of the newest frame applied."""
        return getattr(self.replica, "data_ts", None)

    @property
    def last_apply_wall(self) -> float | None:
        """Wall-clock time of the last apply (the replica's clock)."""
        return getattr(self.replica, "last_apply_wall", None)

    def poll_once(self, timeout_s: float | None = None) -> int:
        """Read and apply one batch of frames; commit; return how many were read."""
        t = self.poll_timeout_s if timeout_s is None else timeout_s
        recs = self.consumer.poll(self.max_records, t)
        for r in recs:
            try:
                self.replica.apply(decode(r.value))
            except (EventError, ConfigError, ValueError) as e:  # undecodable, or wrong shape for this model
                self.bad_frames += 1
                self.last_error = f"partition {r.partition} offset {r.offset}: {e}"
                log.warning("skipping bad parameter frame at %s", self.last_error)
                continue
            self.frames_applied += 1
        if recs:
            self.consumer.commit()
        return len(recs)

    def catch_up(self, max_batches: int = 1_000_000) -> int:
        """Apply frames until the log has nothing more right now; returns frames read."""
        total = 0
        for _ in range(max_batches):
            n = self.poll_once(0.0)
            total += n
            if n == 0:
                break
        return total

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                busy_from = time.thread_time()
                n = self.poll_once()
                self.cpu_s += time.thread_time() - busy_from
                if n == 0 and self.idle_s > 0:
                    self._stop.wait(self.idle_s)
            except Exception as e:  # keep serving on a transient log error; report it
                self.last_error = repr(e)
                log.exception("parameter log subscriber error")
                self._stop.wait(0.5)

    def start(self) -> SyncSubscriber:
        """Follow the log in a daemon thread."""
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="freshrec-sync-subscriber", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None

    def close(self) -> None:
        self.stop()
        self.consumer.close()

    def position(self) -> dict[int, int]:
        return self.consumer.position()

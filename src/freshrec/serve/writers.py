"""Background log writers of the model server: what was served (features) and what users did (actions).

Each writer is one thread that owns one log: requests hand it plain data (`submit`, which never
blocks), the thread encodes and appends it, and flushes the log every `flush_interval_s` when
something was appended, on `flush()` and on `close()`. Nothing else touches the log, so it needs
no locking of its own, and a request pays for no encoding or I/O.

Durability: a submitted record is durable once the next flush returns (`Log.flush`: fsynced, or
acknowledged by Kafka), i.e. at most about `flush_interval_s` after it was submitted, and at
shutdown (`close()`, run by the app's lifespan on SIGINT/SIGTERM). A crash (kill -9, power loss)
loses what was submitted since the last flush. A write that fails is logged and counted
(`errors`, `last_error`); the records of that call are lost (for the features logger: of the
requests written together).

The features logger wakes at most every `linger_s` (50 ms) and writes all the requests queued
by then at once: on a one-partition local log, as one block of frames made by numba kernels
(`impression_block`, `LocalLog.append_frames`), the same bytes as record by record. Its cost is
mostly per wake, not per record: a thread that slept runs its first work on cold caches
(`freshrec bench wakes`, the project's 2-core VM: one request's impression frames take 49 us of
CPU back to back, 127 us after a 1 ms sleep, 398 us after 10 ms), so waking 20 times a second
instead of 100 cut the logger's CPU per request from 0.112 to 0.071 ms (100 impressions a
request, 800 requests/s, 5 interleaved rounds). `flush()` and `close()` cut a linger short.

Keys: every record is keyed by its own request_id ("<request>:<position>" for an impression, the
impression's id for an action), so an impression and its actions land in the same partition
number of their logs (docs/wire-format.md).
"""

from __future__ import annotations

import itertools
import json
import logging
import queue
import threading
import time
from typing import Any

import numpy as np

from freshrec.serve.metrics import ServeMetrics
from freshrec.stream.events import ActionEvent, FeatureEvent, encode_action, encode_feature
from freshrec.stream.log import Log

__all__ = ["ActionLogger", "FeatureLogger", "feature_records", "impression_block", "impression_frames"]

log = logging.getLogger(__name__)

_dump = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode


def feature_records(
    rid: str,
    user_id: int,
    items: list[int],
    sparse: dict[str, list[int]],
    dense: dict[str, float],
    ts: float,
    item_sparse: dict[int, dict[str, list[int]]] | None = None,
    item_dense: dict[int, dict[str, float]] | None = None,
) -> list[bytes]:
    """`encode_feature` bytes of the impressions of one ranked request, candidate at position i
    getting request_id "<rid>:<i>". Byte-identical to `encode_feature(FeatureEvent(...))` (tested);
    the parts shared by all candidates are encoded once (about 5x faster for 100 candidates)."""
    head = ('{"request_id":' + _dump(rid)[:-1]).encode()  # '{"request_id":"rid' (quote left open)
    mid = f',"user_id":{int(user_id)},"item_id":'.encode()
    tail = f',"sparse":{_dump(sparse)},"dense":{_dump(dense)},"ts":{_dump(ts)}}}'.encode()
    out = []
    for pos, iid in enumerate(items):
        own_s = item_sparse.get(iid) if item_sparse is not None else None
        own_d = item_dense.get(iid) if item_dense is not None else None
        if own_s or own_d:
            ev = FeatureEvent(
                request_id=f"{rid}:{pos}",
                user_id=int(user_id),
                item_id=int(iid),
                sparse={**sparse, **own_s} if own_s else sparse,
                dense={**dense, **own_d} if own_d else dense,
                ts=ts,
            )
            out.append(encode_feature(ev))
        else:
            out.append(b'%s:%d"%s%d%s' % (head, pos, mid, iid, tail))
    return out


def impression_frames(
    rid: str,
    user_id: int,
    items: list[int],
    sparse: dict[str, list[int]],
    dense: dict[str, float],
    ts: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The impressions of one ranked request as a block of frames (`impression_block`)."""
    return impression_block([(rid, user_id, items, sparse, dense, ts)])


def impression_block(
    requests: list[tuple[str, int, list[int], dict[str, list[int]], dict[str, float], float]],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The impressions of ranked requests ((rid, user_id, items, sparse, dense, ts) each, no
    candidate with features of its own), in order, as a block of local-log frames, headers not
    yet sealed: (buf uint8, ends int64 (n,), key lengths int64 (n,)); the frame of request r's
    candidate i holds key "<rid>:<i>" and `feature_records`' record i (the bytes
    `encode_feature` gives, tested). `local_frames.seal_frames(buf, ends, key_lens)` fills in
    the headers; the kernels and the layout of their input are `freshrec.stream._feature_kernels`."""
    from freshrec.stream._feature_kernels import impression_lengths, write_impressions

    parts: list[bytes] = []
    for rid, user_id, _, sparse, dense, ts in requests:
        parts += (
            rid.encode(),
            ('{"request_id":' + _dump(rid)[:-1]).encode(),  # '{"request_id":"rid' (quote left open)
            b',"user_id":%d,"item_id":' % int(user_id),
            f',"sparse":{_dump(sparse)},"dense":{_dump(dense)},"ts":{_dump(ts)}}}'.encode(),
        )
    part_ends = np.cumsum(np.fromiter(map(len, parts), dtype=np.int64, count=len(parts)))
    joined = np.frombuffer(b"".join(parts), dtype=np.uint8)
    counts = np.fromiter((len(r[2]) for r in requests), dtype=np.int64, count=len(requests))
    ids = np.fromiter(itertools.chain.from_iterable(r[2] for r in requests), dtype=np.int64)
    item_ends = np.cumsum(counts)
    klen, vlen = impression_lengths(part_ends, ids, item_ends)
    ends = np.cumsum(klen + vlen + _FRAME_HEADER)
    buf = np.empty(int(ends[-1]) if len(ends) else 0, dtype=np.uint8)
    write_impressions(buf, ends, joined, part_ends, ids, item_ends)
    return buf, ends, klen


_FRAME_HEADER = 10  # the local log's [u32 length][u32 crc32][u16 keylen]


_BATCH = 256  # items written in one go at most


class _LogWriter:
    """The writer thread (see the module docstring); subclasses say how an item is written.

    max_pending: items queued at most (0: unbounded); `submit` returns False past it.
    """

    what = "records"
    linger_s = 0.0  # after waking for an item, wait this long for more (one write for several)

    def __init__(
        self,
        target: Log,
        *,
        flush_interval_s: float = 1.0,
        max_pending: int = 0,
        metrics: ServeMetrics | None = None,
    ) -> None:
        self.log = target
        self.flush_interval_s = float(flush_interval_s)
        self.metrics = metrics
        self._q: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=max_pending)
        self._dirty = False
        self.logged = 0
        self.errors = 0
        self.last_error: str | None = None
        self._failed_at = -float("inf")
        self._hurry = threading.Event()  # set by flush() and close(): stop lingering
        self.cpu_s = 0.0  # CPU time the thread spent encoding and writing (time.thread_time)
        if metrics is not None:
            metrics.count_cpu_of(f"{self.what}_log", self)
        self._thread = threading.Thread(target=self._run, name=f"freshrec-{self.what}-logger", daemon=True)
        self._thread.start()

    def _write(self, item: Any) -> int:
        """Append one item's records; returns how many."""
        raise NotImplementedError

    def _put(self, item: Any) -> bool:
        try:
            self._q.put_nowait(("item", item))
        except queue.Full:
            return False
        return True

    def failing(self, within_s: float) -> str | None:
        """The last error when a write failed less than `within_s` seconds ago, else None."""
        return self.last_error if time.monotonic() - self._failed_at < within_s else None

    def _flush(self) -> None:
        if self._dirty:
            self._dirty = False
            self.log.flush()

    def _write_many(self, items: list[Any]) -> int:
        """Append the records of several items, in order; returns how many."""
        return sum(self._write(item) for item in items)

    def _take(self, kind: str, arg: Any) -> tuple[list[Any], str, Any]:
        """The items queued from (kind, arg) on, at most `_BATCH`, and the message after them
        (an "item" when the batch is full: the first of the next batch)."""
        batch: list[Any] = []
        while kind == "item" and len(batch) < _BATCH:
            batch.append(arg)
            try:
                kind, arg = self._q.get_nowait()
            except queue.Empty:
                kind, arg = "tick", None
        return batch, kind, arg

    def _run(self) -> None:
        next_flush = time.monotonic() + self.flush_interval_s
        carry: tuple[str, Any] | None = None  # the first item of the next batch
        while True:
            if carry is not None:
                (kind, arg), carry = carry, None
            else:
                try:
                    kind, arg = self._q.get(timeout=max(0.0, next_flush - time.monotonic()))
                except queue.Empty:
                    kind, arg = "tick", None
                if kind == "item" and self.linger_s > 0:
                    self._hurry.wait(self.linger_s)  # let more requests' items come: one block for all
                    self._hurry.clear()
            busy_from = time.thread_time()
            batch, kind, arg = self._take(kind, arg)
            if kind == "item":
                carry, kind, arg = (kind, arg), "tick", None
            try:
                if batch:
                    self.logged += self._write_many(batch)
                    self._dirty = True
                if kind in ("flush", "stop"):
                    self._flush()
                if time.monotonic() >= next_flush:
                    self._flush()
                    next_flush = time.monotonic() + self.flush_interval_s
            except Exception as e:
                self.errors += 1
                self.last_error = f"{type(e).__name__}: {e}"
                self._failed_at = time.monotonic()
                if self.metrics is not None:
                    self.metrics.log_errors.labels(self.what).inc()
                log.exception("%s logging failed", self.what)
            finally:
                self.cpu_s += time.thread_time() - busy_from
                if kind == "flush":
                    arg.set()
            if kind == "stop":
                return

    def flush(self, timeout_s: float = 30.0) -> bool:
        """Wait until everything submitted so far is appended and the log flushed; False on timeout."""
        done = threading.Event()
        try:
            self._q.put(("flush", done), timeout=timeout_s)
        except queue.Full:
            return False
        self._hurry.set()  # after the put: the writer, lingering or not, finds the message queued
        return done.wait(timeout_s)

    def close(self) -> None:
        """Flush and stop the thread."""
        if self._thread.is_alive():
            self._q.put(("stop", None))
            self._hurry.set()
            self._thread.join(30.0)


class FeatureLogger(_LogWriter):
    """Encodes served impressions as FeatureEvents (`feature_records`) and appends them to the
    features log, each keyed by its request_id. Unbounded: impressions come no faster than scoring."""

    what = "features"
    linger_s = 0.05  # (module docstring: fewer wakes, less CPU; impressions are durable at the flush)

    def __init__(
        self,
        features_log: Log,
        *,
        flush_interval_s: float = 1.0,
        metrics: ServeMetrics | None = None,
        linger_s: float | None = None,
    ) -> None:
        if linger_s is not None:  # before the thread starts: it reads the linger on each wake
            self.linger_s = float(linger_s)
        super().__init__(features_log, flush_interval_s=flush_interval_s, metrics=metrics)

    def submit(self, item: tuple) -> None:
        """(request_id, user_id, item_ids, sparse, dense, item_sparse, item_dense, ts) of one request."""
        self._put(item)

    def _write_many(self, items: list[tuple]) -> int:
        frames = getattr(self.log, "append_frames", None)  # the Log protocol's block fast path
        own = any(it[5] is not None or it[6] is not None for it in items)  # candidates' own features
        if frames is None or self.log.partitions != 1 or own:
            return super()._write_many(items)
        # all the requests' records, keys and frames written by numba kernels, in one block: this
        # thread holds the GIL a few microseconds per request, not for each record
        from freshrec.stream.local_frames import seal_frames

        buf, ends, key_lens = impression_block([(it[0], it[1], it[2], it[3], it[4], it[7]) for it in items])
        if len(ends):
            seal_frames(buf, ends, key_lens)
            frames(buf, ends, partition=0)
        if self.metrics is not None:
            self.metrics.features_logged.inc(len(ends))
        return len(ends)

    def _write(self, item: tuple) -> int:
        rid, user_id, items, sparse, dense, isparse, idense, ts = item
        self._append_each(rid, user_id, items, sparse, dense, isparse, idense, ts)
        if self.metrics is not None:
            self.metrics.features_logged.inc(len(items))
        return len(items)

    def _append_each(self, rid: str, user_id: int, items: list[int], *rest: Any) -> None:
        sparse, dense, isparse, idense, ts = rest
        values = feature_records(rid, user_id, items, sparse, dense, ts, isparse, idense)
        prefix = rid.encode()
        keys = [b"%b:%d" % (prefix, pos) for pos in range(len(values))]
        many = getattr(self.log, "append_many", None)  # the Log protocol's optional fast path
        if many is not None:  # the local log frames a whole request's impressions at once
            many(list(zip(keys, values, strict=True)))
        else:
            for key, value in zip(keys, values, strict=True):
                self.log.append(value, key=key)


class ActionLogger(_LogWriter):
    """Appends user actions (`ActionEvent`s, `encode_action`) to the actions log, each keyed by its
    request_id. Bounded: `submit` refuses a batch (returns False) while `max_pending` batches wait."""

    what = "actions"

    def __init__(
        self,
        actions_log: Log,
        *,
        flush_interval_s: float = 1.0,
        max_pending: int = 1024,
        metrics: ServeMetrics | None = None,
    ) -> None:
        super().__init__(
            actions_log, flush_interval_s=flush_interval_s, max_pending=max_pending, metrics=metrics
        )

    def submit(self, actions: list[ActionEvent]) -> bool:
        """Queue one request's actions; False when the queue is full (nothing queued)."""
        return self._put(actions)

    def _write(self, actions: list[ActionEvent]) -> int:
        for a in actions:
            self.log.append(encode_action(a), key=a.request_id.encode())
        if self.metrics is not None:
            self.metrics.actions_logged.inc(len(actions))
        return len(actions)

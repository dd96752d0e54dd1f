"""Where the online loop's batches come from: polled in the loop's own thread, or prepared ahead.

`OnlineTrainer.run` takes one item after another from a source and trains it:

    Prepared(batch, examples, positions, bad)   a batch ready for `TrainingPS.train_step`
                                                (batch None when every record was bad)
    Idle(at_end)                                a poll brought nothing; at_end: the consumer's
                                                positions reached the log's end offsets

`SerialSource` polls, decodes and assembles in the calling thread when asked (`OnlineConfig.prefetch
= 0`). `Prefetcher` does the same in a background thread, up to `depth` batches ahead, while the
calling thread trains: decoding runs in a numba kernel (`nogil=True`, `decode_dataset`), the
dense step in torch kernels and the sparse step in numba kernels, which all release the GIL, so
the two overlap on two cores (polling the log and the hooks are Python and hold it). Preparing
a batch reads no parameter, so the batches, their order and what
they train are the same as with `SerialSource`.

Both hand back what they prepared and did not deliver (`close()` puts it in `trainer._ready`), so
a later `run` on the same consumer goes on from where the trained positions are.
"""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from freshrec.train.online import OnlineTrainer

__all__ = ["Idle", "Prefetcher", "Prepared", "SerialSource"]


@dataclass(slots=True)
class Prepared:
    """A batch ready to train: `batch` (None when all `bad` records were bad), the number of
    decoded `examples`, the log `positions` right after its records, and its bad record count."""

    batch: Any
    examples: int
    positions: dict[int, int]
    bad: int


@dataclass(slots=True)
class Idle:
    """A poll brought nothing; `at_end`: the consumer had reached the log's end offsets."""

    at_end: bool


@dataclass(slots=True)
class _Failed:
    error: BaseException


class SerialSource:
    """Polls and prepares the next batch in the calling thread (no overlap)."""

    def __init__(self, trainer: OnlineTrainer, consumer: Any, *, until_idle: bool) -> None:
        self.trainer = trainer
        self.consumer = consumer
        self.until_idle = until_idle
        self.lock = threading.Lock()  # nobody else polls: kept for the same interface

    def next(self) -> Prepared | Idle | None:
        tr = self.trainer
        if tr._ready:
            return tr._ready.pop(0)
        examples, bad, positions = tr.poll_batch(self.consumer)
        if not examples and not bad:
            return Idle(at_end=self.until_idle and self.consumer.at_end())
        t0 = time.perf_counter()
        item = tr.prepare(examples, positions=positions, bad=bad)
        tr._seconds += time.perf_counter() - t0  # the loop's own time: assembly and steps
        return item

    def close(self) -> None:
        pass


class Prefetcher:
    """Prepares up to `depth` batches ahead in a background thread (module docstring).

    The thread is the only one that polls `consumer` while it runs; the training thread takes
    `lock` for anything else it does with the consumer (commits)."""

    def __init__(self, trainer: OnlineTrainer, consumer: Any, *, depth: int, until_idle: bool) -> None:
        self.trainer = trainer
        self.consumer = consumer
        self.until_idle = until_idle
        self.lock = threading.Lock()
        self._q: queue.Queue[Prepared | Idle | _Failed] = queue.Queue(maxsize=max(1, depth))
        self._stop = threading.Event()
        self._late: Prepared | None = None  # prepared when closed, before it could be queued
        # positions after the newest batch prepared (what the next poll continues from)
        ahead = trainer._ready[-1].positions if trainer._ready else trainer.positions
        self._ahead = dict(ahead)
        self._thread = threading.Thread(target=self._run, name="freshrec-prefetch", daemon=True)
        self._thread.start()

    def _put(self, item: Prepared | Idle | _Failed) -> bool:
        while not self._stop.is_set():
            try:
                self._q.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        tr = self.trainer
        stop_at = tr.config.stop_at
        try:
            while not self._stop.is_set():
                if stop_at is not None and sum(self._ahead.values()) >= stop_at:
                    return
                with self.lock:
                    examples, bad, positions = tr.poll_batch(self.consumer, ahead=self._ahead)
                    at_end = (not examples and not bad) and self.until_idle and self.consumer.at_end()
                if not examples and not bad:
                    if not self.until_idle:
                        continue  # the poll waited poll_timeout_s; the training thread polls `stop`
                    self._put(Idle(at_end=at_end))
                    if at_end:
                        return  # drained: the training thread trains any remainder and stops
                    time.sleep(0.05)
                    continue
                item = tr.prepare(examples, positions=positions, bad=bad)
                self._ahead = dict(positions)
                if not self._put(item):
                    self._late = item  # closed while waiting for room: handed back by close()
                    return
        except BaseException as e:  # handed to the training thread, which raises it
            self._put(_Failed(e))

    def next(self, timeout_s: float = 0.1) -> Prepared | Idle | None:
        """The next item, or None when none came within `timeout_s` (the caller checks `stop`)."""
        tr = self.trainer
        if tr._ready:  # left by an earlier run: they come first (the thread polls after them)
            return tr._ready.pop(0)
        t0 = time.perf_counter()
        try:
            item = self._q.get(timeout=timeout_s)
        except queue.Empty:
            item = None
        if isinstance(item, Prepared):  # the loop's own time: waiting for batches and steps
            tr._seconds += tr._time("wait", t0)
        if isinstance(item, _Failed):
            raise item.error
        return item

    def close(self) -> None:
        """Stop the thread; batches prepared and not taken go back to `trainer._ready`, in order."""
        self._stop.set()
        left: list[Prepared] = []
        while self._thread.is_alive() or not self._q.empty():
            try:
                item = self._q.get(timeout=0.05)
            except queue.Empty:
                continue
            if isinstance(item, Prepared):
                left.append(item)
        self._thread.join()
        late = [self._late] if self._late is not None else []
        self.trainer._ready = self.trainer._ready + left + late

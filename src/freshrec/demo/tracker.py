"""Follow one click through the loop: when was it joined, trained on, and served?

    page ─POST /v1/actions─► actions log ─► joiner ─► examples log ─► trainer ─► publisher ─► replica
                                                    joined          trained              served

`ClickTracker` watches the examples log (its own consumer, keys only: every example is keyed by
its impression's request_id) for the request ids that start with a prefix (the demo page's),
and the trainer's batches (a hook: the examples-log positions after each batch and the
publisher's version then). A click's example is

- *joined* when the tracker reads it in the examples log (the joiner emits a positive at once:
  the demo's joiner runs with `emit_early_positives`), or when it was trained if that was
  earlier (the tracker reads the log a tick at a time, the trainer may take it first);
- *trained* when a trainer batch ends past its offset (the batch's positions > its offset);
- *served* when the replica has applied version v + 1, v being the publisher's version when that
  batch ended: the rows the batch changed go out in the publish running then or the next one,
  never later, so the replica that applied v + 1 scores with them. (It can be one sync late when
  the batch ended during a publish that still took its rows; it is never early.)

Times are seconds on `now` (monotonic) from when a request id was first asked about
(`status`), which the page does right after its POST /v1/actions returned (a stage reached
before that reads 0). `poll` reads the log and moves the stages on, `status` moves the trained
and served stages on; the demo's loop calls `poll` every tick, the trainer's thread calls
`on_batch`, the HTTP server's thread calls `status`: one lock keeps them apart.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from freshrec.stream.log import Consumer

__all__ = ["ClickTracker"]


@dataclass(slots=True)
class _Click:
    """One followed request id; stage times on the tracker's clock."""

    asked: float
    partition: int = -1
    offset: int = -1
    joined: float | None = None
    trained: float | None = None
    needs_version: int | None = None
    served: float | None = None


@dataclass(frozen=True, slots=True)
class _Batch:
    """A trained batch: when it ended, the examples-log positions after it, the publisher's version."""

    at: float
    positions: dict[int, int]
    version: int


class ClickTracker:
    """See the module docstring.

    Args:
        examples: a consumer of the examples log, at the position to watch from (its end, say).
        published_version: the publisher's version now (read after each trainer batch).
        served_version: the replica's version now.
        prefix: only request ids that start with it are followed.
        keep: how many of those examples (and of trainer batches) are remembered.
        now: monotonic seconds.
    """

    def __init__(
        self,
        examples: Consumer,
        *,
        published_version: Callable[[], int],
        served_version: Callable[[], int],
        prefix: str = "page-",
        keep: int = 2000,
        now: Callable[[], float] = time.monotonic,
    ) -> None:
        self.examples = examples
        self.published_version = published_version
        self.served_version = served_version
        self.prefix = prefix.encode()
        self.keep = int(keep)
        self.now = now
        self._lock = threading.Lock()
        self._seen: collections.OrderedDict[str, tuple[int, int, float]] = collections.OrderedDict()
        self._batches: collections.deque[_Batch] = collections.deque(maxlen=self.keep)
        self._clicks: collections.OrderedDict[str, _Click] = collections.OrderedDict()

    # ---- inputs --------------------------------------------------------------------------------
    def on_batch(self, trainer: Any, info: Any) -> None:
        """Trainer hook (`trainer.add_hook(tracker.on_batch)`): remember the batch's end."""
        batch = _Batch(self.now(), dict(info.positions), int(self.published_version()))
        with self._lock:
            self._batches.append(batch)

    def poll(self, max_records: int = 10_000) -> int:
        """Read what the examples log has now (keys only); move every followed click on.
        Returns the records read."""
        records = self.examples.poll(max_records, timeout_s=0.0)
        t = self.now()
        with self._lock:
            for r in records:
                if r.key is not None and r.key.startswith(self.prefix):
                    self._seen[r.key.decode("utf-8", "replace")] = (r.partition, r.offset, t)
            while len(self._seen) > self.keep:
                self._seen.popitem(last=False)
            served = self.served_version()
            for rid, c in self._clicks.items():
                self._advance(rid, c, served, t)
        return len(records)

    def _advance(self, rid: str, c: _Click, served: int, t: float) -> None:
        if c.joined is None and rid in self._seen:
            c.partition, c.offset, c.joined = self._seen[rid]
        if c.joined is not None and c.trained is None:
            for b in self._batches:
                if b.positions.get(c.partition, 0) > c.offset:
                    c.trained, c.needs_version = b.at, b.version + 1
                    c.joined = min(c.joined, b.at)  # the log was read after the trainer took it
                    break
        if c.needs_version is not None and c.served is None and served >= c.needs_version:
            c.served = t

    # ---- output --------------------------------------------------------------------------------
    def status(self, request_id: str) -> dict[str, Any]:
        """Where the click on `request_id` ("<rid>:<position>") stands: for each stage, seconds
        since the first `status` call about it, or None while not reached. The first call starts
        following it (at most `keep` are followed; the oldest are forgotten)."""
        t = self.now()
        with self._lock:
            c = self._clicks.get(request_id)
            if c is None:
                c = self._clicks[request_id] = _Click(asked=t)
                while len(self._clicks) > self.keep:
                    self._clicks.popitem(last=False)
            self._advance(request_id, c, self.served_version(), t)  # trained and served move on here too

            def since(x: float | None) -> float | None:
                return None if x is None else round(max(0.0, x - c.asked), 4)

            return {
                "request_id": request_id,
                "joined_s": since(c.joined),
                "trained_s": since(c.trained),
                "served_s": since(c.served),
                "needs_version": c.needs_version,
                "served_version": int(self.served_version()),
                "waited_s": round(t - c.asked, 4),
            }

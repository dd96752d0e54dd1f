"""The joiner reads "drained" from offsets (`Consumer.at_end`), not from an empty poll.

Polls come back empty with records still ahead: the first poll of a Kafka consumer often does,
and every poll does while a broker is away. Here the inputs' polls come back empty now and then
and all at once for a long stretch (an outage, in memory): the joiner neither stops early under
`until_idle` nor lets the watermark run ahead of the unread records, so its output equals the
oracle's. (The same against a real broker that is stopped and killed: tests/test_kafka_outage.py.)
"""

from __future__ import annotations

from freshrec.stream.joiner import JOIN_TABLES, Joiner, JoinerConfig
from freshrec.stream.log import MemoryBackend, MemoryLog
from freshrec.stream.store import MemoryStore
from test_joiner import LATENESS, WINDOWS, read_examples, reference, simulate, write


class Blackout:
    """Which polls come back empty: every third one of each consumer, and every poll of every
    consumer from the 30th to the 150th poll overall."""

    def __init__(self) -> None:
        self.polls = 0
        self.empty = 0

    def hides(self, own_polls: int) -> bool:
        self.polls += 1
        hide = own_polls % 3 == 0 or 30 <= self.polls < 150
        self.empty += hide
        return hide


class FlakyLog:
    """A `MemoryLog` whose consumers' polls come back empty as `Blackout` says."""

    def __init__(self, log: MemoryLog, blackout: Blackout) -> None:
        self._log = log
        self._blackout = blackout
        self.name = log.name

    @property
    def partitions(self) -> int:
        return self._log.partitions

    def end_offsets(self) -> list[int]:
        return self._log.end_offsets()

    def consumer(self, group: str, *, partitions=None) -> FlakyConsumer:
        return FlakyConsumer(self._log.consumer(group, partitions=partitions), self._blackout)


class FlakyConsumer:
    def __init__(self, consumer, blackout: Blackout) -> None:
        self._c = consumer
        self._blackout = blackout
        self._polls = 0

    def poll(self, max_records: int = 1000, timeout_s: float = 0.0) -> list:
        self._polls += 1
        return [] if self._blackout.hides(self._polls) else self._c.poll(max_records, timeout_s)

    def poll_blocks(self, max_records: int = 1000, timeout_s: float = 0.0) -> list:
        self._polls += 1
        return [] if self._blackout.hides(self._polls) else self._c.poll_blocks(max_records, timeout_s)

    def __getattr__(self, name: str):  # commit, committed, position, seek, at_end, close
        return getattr(self._c, name)


def test_empty_polls_do_not_end_the_run_or_move_the_watermark() -> None:
    feats, acts = simulate(600, seed=3)
    backend = MemoryBackend()
    write(backend, "features", feats, 2)
    write(backend, "actions", acts, 2)
    blackout = Blackout()
    cfg = JoinerConfig(windows=WINDOWS, allowed_lateness_s=LATENESS, early_action_ttl_s=30.0,
                       poll_records=40, batch_records=200)
    j = Joiner(config=cfg, features=FlakyLog(backend.log("features"), blackout),
               actions=FlakyLog(backend.log("actions"), blackout),
               examples=backend.log("examples", partitions=2), dead_letters=backend.log("dead"),
               store=MemoryStore(JOIN_TABLES))
    j.run(until_idle=True, sleep=lambda _s: None)
    assert read_examples(backend.log("examples")) == reference(feats, acts)
    assert blackout.polls > 150 and blackout.empty > 100 and j.drained()

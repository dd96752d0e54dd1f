"""The log seam: durable, partitioned, append-only record logs with consumer positions.

Every stream in freshrec (features, actions, examples, parameter deltas, dead letters) is a
`Log`. Three implementations share this interface and one contract test suite:

- `MemoryLog` (this module): the in-process twin, for unit tests. Not durable.
- `LocalLog` (`freshrec.stream.local_log`): the embedded default; files in a folder,
  crash-safe, readable by any process on the machine. No server.
- `KafkaLog` (`freshrec.stream.kafka_log`): the same over Kafka (confluent-kafka).

Offsets are per partition and start at 0; a consumer's *position* is the offset of the next
record it will read, and `commit()` stores that position durably under the consumer's group name,
so that a restarted consumer of the same group resumes there. Records with the same key always
land in the same partition (`partition_for`), so order per key is kept.
"""

from __future__ import annotations

import threading
import time
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

from freshrec.errors import LogError

__all__ = [
    "Consumer",
    "Log",
    "LogBackend",
    "MemoryBackend",
    "MemoryLog",
    "Record",
    "RecordBlock",
    "at_end_of",
    "blocks_of",
    "partition_for",
]


@dataclass(frozen=True, slots=True)
class Record:
    """One record read from a log."""

    partition: int
    offset: int
    key: bytes | None
    value: bytes


@dataclass(frozen=True, slots=True)
class RecordBlock:
    """Consecutive records of one partition, as read: record i has offset `offset + i` and value
    `data[spans[i, 0]:spans[i, 1]]` (spans: (n, 2) int64). Keys are not carried.

    Example: two records b"ab" and b"c" at offsets 7, 8 could come as
    RecordBlock(partition=0, offset=7, data=<frames>, spans=[[10, 12], [22, 23]]).
    """

    partition: int
    offset: int
    data: bytes
    spans: np.ndarray

    def __len__(self) -> int:
        return len(self.spans)

    def values(self) -> list[bytes]:
        """The records' values, in order (one bytes object each: the slow form)."""
        d = self.data
        return [d[s:e] for s, e in self.spans.tolist()]

    def records(self) -> list[Record]:
        """The block as `Record`s (key None: blocks carry no keys)."""
        p, o = self.partition, self.offset
        return [Record(p, o + i, None, v) for i, v in enumerate(self.values())]


def blocks_of(records: Sequence[Record]) -> list[RecordBlock]:
    """`records` (as `poll` returns them) as `RecordBlock`s: one per run of records of one
    partition with consecutive offsets, in the same order, values joined into one buffer.

    The default `Consumer.poll_blocks` of a backend that reads record by record (memory, Kafka):
    it yields exactly the records, positions and errors of `poll`, since it is `poll`.

        blocks_of([Record(0, 7, None, b"ab"), Record(0, 8, None, b"c"), Record(1, 0, None, b"")])
        -> [RecordBlock(0, 7, b"abc", [[0, 2], [2, 3]]), RecordBlock(1, 0, b"", [[0, 0]])]
    """
    out: list[RecordBlock] = []
    i, n = 0, len(records)
    while i < n:
        first = records[i]
        j = i + 1
        while j < n and records[j].partition == first.partition and records[j].offset == first.offset + j - i:
            j += 1
        values = [r.value for r in records[i:j]]
        spans = np.empty((j - i, 2), np.int64)
        np.cumsum(np.fromiter(map(len, values), np.int64, j - i), out=spans[:, 1])
        spans[0, 0] = 0
        spans[1:, 0] = spans[:-1, 1]
        out.append(RecordBlock(first.partition, first.offset, b"".join(values), spans))
        i = j
    return out


def partition_for(key: bytes | None, partitions: int, counter: int = 0) -> int:
    """The partition a record goes to: crc32 of the key, or `counter` round-robin when keyless.

    The same function is used by every implementation, so a key maps to the same partition on
    the local log and on Kafka.
    """
    if partitions == 1:
        return 0
    if key is None:
        return counter % partitions
    return zlib.crc32(key) % partitions


def at_end_of(positions: Mapping[int, int], ends: Sequence[int]) -> bool:
    """Whether every position has reached its partition's end offset: what `Consumer.at_end`
    means, given the consumer's `position()` and its log's `end_offsets()`."""
    return all(pos >= ends[p] for p, pos in positions.items())


@runtime_checkable
class Consumer(Protocol):
    """A reader of one log with a position per partition, committed under a group name.

    `poll` returns one `Record` per record; `poll_blocks` the same records as `RecordBlock`s
    (bytes + value spans, no object per record), for readers that decode a whole poll at once
    (the online trainer, the joiner). The local log reads blocks natively, straight from its
    segment files; the other backends return `blocks_of(self.poll(...))`.
    """

    def poll(self, max_records: int = 1000, timeout_s: float = 0.0) -> list[Record]:
        """Up to `max_records` records from the current positions; waits up to `timeout_s` for one."""
        ...

    def poll_blocks(self, max_records: int = 1000, timeout_s: float = 0.0) -> list[RecordBlock]:
        """`poll` as blocks: the same records in the same order, positions moved and errors
        raised as `poll` would (keys are not carried)."""
        ...

    def commit(self, positions: Mapping[int, int] | None = None) -> None:
        """Durably store positions (default: the current ones) for this consumer's group."""
        ...

    def committed(self) -> dict[int, int]:
        """The committed position of each assigned partition (0 when never committed)."""
        ...

    def position(self) -> dict[int, int]:
        """The offset of the next record `poll` returns, per assigned partition."""
        ...

    def seek(self, partition: int, offset: int) -> None:
        """Move the position of `partition` to `offset`."""
        ...

    def at_end(self) -> bool:
        """True when every assigned partition has been read to the log's end, by offsets:
        `position()` against the log's `end_offsets()` (`at_end_of`), as of the call.

        This, not an empty poll, is what "drained" means: a poll can come back empty with records
        still ahead (the first poll of a Kafka consumer often does; so does every poll while a
        broker is away).
        """
        ...

    def close(self) -> None: ...


@runtime_checkable
class Log(Protocol):
    """An append-only, partitioned log of byte records.

    Optional fast paths: a log may also offer `append_many(records)` ((key, value) pairs), one
    call that frames a whole batch, and `append_frames(buf, ends, partition=p)`, a block of
    records already in its on-disk frames (the local log offers both); writers use them when
    present and `append` per record otherwise.
    """

    name: str

    @property
    def partitions(self) -> int: ...

    def append(self, value: bytes, key: bytes | None = None) -> tuple[int, int] | None:
        """Queue one record; returns (partition, offset) when known at once, else None.

        The record is durable only after `flush()` returns.
        """
        ...

    def flush(self) -> None:
        """Return when every record appended so far is durable (fsynced, or acknowledged by Kafka)."""
        ...

    def end_offsets(self) -> list[int]:
        """Per partition, the offset the next appended record will get (= number of records)."""
        ...

    def consumer(self, group: str, *, partitions: Sequence[int] | None = None) -> Consumer:
        """A consumer in `group` over `partitions` (default: all), starting at the committed positions."""
        ...

    def close(self) -> None: ...


@runtime_checkable
class LogBackend(Protocol):
    """Where logs live: opens (creating when absent) a log by name."""

    def log(self, name: str, *, partitions: int = 1) -> Log: ...

    def close(self) -> None: ...


class MemoryLog:
    """In-process twin of `Log`: lists in memory, not durable. Thread-safe."""

    def __init__(self, name: str, *, partitions: int = 1) -> None:
        if partitions < 1:
            msg = f"log {name!r}: partitions must be >= 1, got {partitions}"
            raise LogError(msg)
        self.name = name
        self._parts: list[list[Record]] = [[] for _ in range(partitions)]
        self._committed: dict[str, dict[int, int]] = {}
        self._cond = threading.Condition()
        self._counter = 0
        self._closed = False

    @property
    def partitions(self) -> int:
        return len(self._parts)

    def append(self, value: bytes, key: bytes | None = None) -> tuple[int, int]:
        with self._cond:
            if self._closed:
                msg = f"log {self.name!r} is closed"
                raise LogError(msg)
            p = partition_for(key, len(self._parts), self._counter)
            self._counter += 1
            part = self._parts[p]
            part.append(Record(p, len(part), key, bytes(value)))
            self._cond.notify_all()
            return p, len(part) - 1

    def flush(self) -> None:
        return None

    def end_offsets(self) -> list[int]:
        with self._cond:
            return [len(p) for p in self._parts]

    def consumer(self, group: str, *, partitions: Sequence[int] | None = None) -> MemoryConsumer:
        parts = list(range(self.partitions)) if partitions is None else list(partitions)
        return MemoryConsumer(self, group, parts)

    def close(self) -> None:
        self._closed = True


class MemoryConsumer:
    """Consumer of a `MemoryLog`."""

    def __init__(self, log: MemoryLog, group: str, partitions: list[int]) -> None:
        self._log = log
        self.group = group
        committed = log._committed.setdefault(group, {})
        self._pos = {p: committed.get(p, 0) for p in partitions}

    def poll(self, max_records: int = 1000, timeout_s: float = 0.0) -> list[Record]:
        deadline = time.monotonic() + timeout_s
        with self._log._cond:
            while True:
                out: list[Record] = []
                for p, pos in self._pos.items():
                    part = self._log._parts[p]
                    take = part[pos : pos + max_records - len(out)]
                    out.extend(take)
                    self._pos[p] = pos + len(take)
                    if len(out) >= max_records:
                        break
                if out:
                    return out
                left = deadline - time.monotonic()
                if left <= 0:
                    return out
                self._log._cond.wait(left)

    def poll_blocks(self, max_records: int = 1000, timeout_s: float = 0.0) -> list[RecordBlock]:
        return blocks_of(self.poll(max_records, timeout_s))

    def commit(self, positions: Mapping[int, int] | None = None) -> None:
        with self._log._cond:
            self._log._committed[self.group].update(dict(positions) if positions else self._pos)

    def committed(self) -> dict[int, int]:
        with self._log._cond:
            c = self._log._committed[self.group]
            return {p: c.get(p, 0) for p in self._pos}

    def position(self) -> dict[int, int]:
        return dict(self._pos)

    def seek(self, partition: int, offset: int) -> None:
        self._pos[partition] = offset

    def at_end(self) -> bool:
        return at_end_of(self._pos, self._log.end_offsets())

    def close(self) -> None:
        return None


class MemoryBackend:
    """In-process twin of a log backend: named `MemoryLog`s."""

    def __init__(self) -> None:
        self._logs: dict[str, MemoryLog] = {}
        self._lock = threading.Lock()

    def log(self, name: str, *, partitions: int = 1) -> MemoryLog:
        with self._lock:
            if name not in self._logs:
                self._logs[name] = MemoryLog(name, partitions=partitions)
            return self._logs[name]

    def close(self) -> None:
        for log in self._logs.values():
            log.close()

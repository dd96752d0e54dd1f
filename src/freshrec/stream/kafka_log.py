"""The log seam over Kafka (confluent-kafka / librdkafka), with the local log's semantics.

A log `name` is the topic `<topic_prefix><name>` (created when absent, replication 1).

- `append` produces to an explicit partition, `partition_for(key, n, counter)`, so a key lands
  in the same partition on Kafka as on the local log. The producer is idempotent with acks=all,
  so offsets are dense per partition and a retried send is never duplicated.
- `flush()` waits for every delivery report and raises `LogError` if any send failed.
- A consumer is assigned its partitions explicitly (no group rebalancing), starts at the
  group's committed offsets (0 when none), never auto-commits, and `commit()` stores positions
  synchronously: the same model as `LocalConsumer`. `at_end()` compares its positions with the
  partitions' high watermarks (never an empty poll: the first poll after an assign is often empty).
"""

from __future__ import annotations

import threading
import time
import uuid
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from confluent_kafka import (
    Consumer,
    KafkaError,
    KafkaException,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, NewTopic

from freshrec.errors import LogError, OffsetOutOfRange
from freshrec.stream.log import Record, partition_for

__all__ = ["KafkaBackend", "KafkaConsumer", "KafkaLog", "KafkaLogConfig"]

T = TypeVar("T")


@dataclass(frozen=True, kw_only=True)
class KafkaLogConfig:
    """Client settings. `timeout_s` bounds every blocking admin/metadata/commit call."""

    linger_ms: float = 5.0
    timeout_s: float = 30.0
    fetch_wait_max_ms: int = 20

    def validate(self) -> None:
        if self.linger_ms < 0 or self.timeout_s <= 0 or self.fetch_wait_max_ms < 0:
            msg = f"invalid Kafka log config {self}"
            raise LogError(msg)


def _check_name(kind: str, name: str) -> None:
    if not name or len(name) > 200 or any(not (c.isascii() and (c.isalnum() or c in "._-")) for c in name):
        msg = f"{kind} name {name!r} must be 1-200 characters of [A-Za-z0-9._-]"
        raise LogError(msg)


_TRANSIENT = (
    KafkaError.NOT_COORDINATOR,
    KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
    KafkaError.COORDINATOR_NOT_AVAILABLE,
    KafkaError._WAIT_COORD,
    KafkaError.UNKNOWN_TOPIC_OR_PART,  # a new topic's metadata is still spreading
    KafkaError.LEADER_NOT_AVAILABLE,
    KafkaError.NOT_LEADER_FOR_PARTITION,
    KafkaError._UNKNOWN_PARTITION,
    KafkaError._UNKNOWN_TOPIC,
    KafkaError._TRANSPORT,
)


def _retrying(what: str, call: Callable[[], T], timeout_s: float) -> T:
    """`call()`, retried for up to `timeout_s` while it fails with a transient Kafka error
    (a coordinator moving or loading, metadata of a new topic not yet everywhere)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return call()
        except KafkaException as e:
            err = e.args[0] if e.args and isinstance(e.args[0], KafkaError) else None
            transient = err is not None and (bool(err.retriable()) or err.code() in _TRANSIENT)
            if not transient or time.monotonic() > deadline:
                msg = f"{what} failed: {e}"
                raise LogError(msg) from e
            time.sleep(0.05)


def _common(bootstrap: str) -> dict[str, Any]:
    return {"bootstrap.servers": bootstrap, "broker.address.family": "v4", "socket.nagle.disable": True}


class KafkaBackend:
    """Logs as Kafka topics on the cluster at `bootstrap` ("host:port[,host:port]")."""

    def __init__(self, bootstrap: str, *, topic_prefix: str = "freshrec.",
                 config: KafkaLogConfig | None = None) -> None:
        if topic_prefix:
            _check_name("topic prefix", topic_prefix)
        self.bootstrap = bootstrap
        self.topic_prefix = topic_prefix
        self.config = config or KafkaLogConfig()
        self.config.validate()
        # never let a metadata lookup auto-create a topic (with the broker's default partitions)
        self._admin: AdminClient | None = AdminClient(
            _common(bootstrap) | {"allow.auto.create.topics": False}
        )
        self._logs: dict[str, KafkaLog] = {}
        self._lock = threading.Lock()

    def _admin_client(self) -> AdminClient:
        if self._admin is None:
            msg = f"Kafka backend at {self.bootstrap} is closed"
            raise LogError(msg)
        return self._admin

    def _partition_count(self, topic: str) -> int | None:
        """Partitions of `topic` once every partition has a leader; None when the topic is absent."""
        md = _retrying(f"Kafka at {self.bootstrap}: reading metadata of {topic!r}",
                       lambda: self._admin_client().list_topics(topic, timeout=self.config.timeout_s),
                       self.config.timeout_s)
        t = md.topics.get(topic)
        if t is None or t.error is not None and t.error.code() == KafkaError.UNKNOWN_TOPIC_OR_PART:
            return None
        if t.error is not None or not t.partitions or any(p.leader < 0 for p in t.partitions.values()):
            return -1  # exists but not ready yet
        return len(t.partitions)

    def _ensure_topic(self, topic: str, partitions: int) -> int:
        deadline = time.monotonic() + self.config.timeout_s
        created = False
        while True:
            n = self._partition_count(topic)
            if n is not None and n > 0:
                return n
            if n is None and not created:
                fut = self._admin_client().create_topics([NewTopic(topic, partitions, 1)],
                                                operation_timeout=self.config.timeout_s)[topic]
                try:
                    fut.result()
                except KafkaException as e:
                    if e.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                        msg = f"Kafka at {self.bootstrap}: cannot create topic {topic!r}: {e}"
                        raise LogError(msg) from e
                created = True
            if time.monotonic() > deadline:
                msg = f"Kafka at {self.bootstrap}: topic {topic!r} not ready within {self.config.timeout_s}s"
                raise LogError(msg)
            time.sleep(0.05)

    def log(self, name: str, *, partitions: int = 1) -> KafkaLog:
        """Open (creating the topic when absent, with `partitions`) the log `name`.

        An existing topic keeps its partition count."""
        _check_name("log", name)
        if partitions < 1:
            msg = f"log {name!r}: partitions must be >= 1, got {partitions}"
            raise LogError(msg)
        with self._lock:
            if self._admin is None:
                msg = f"Kafka backend at {self.bootstrap} is closed: cannot open log {name!r}"
                raise LogError(msg)
            log = self._logs.get(name)
            if log is None or log._closed:
                topic = self.topic_prefix + name
                n = self._ensure_topic(topic, partitions)
                log = self._logs[name] = KafkaLog(self, name, topic, n)
            return log

    def close(self) -> None:
        """Close every log opened here and release the admin client (librdkafka frees its
        connections when the last reference goes). The backend cannot open logs afterwards."""
        with self._lock:
            logs, self._logs = list(self._logs.values()), {}
            self._admin = None  # also marks the backend closed
        for log in logs:
            log.close()


class KafkaLog:
    """One topic as a `Log`. append/flush are thread-safe."""

    def __init__(self, backend: KafkaBackend, name: str, topic: str, partitions: int) -> None:
        self.name = name
        self.topic = topic
        self._backend = backend
        self._partitions = partitions
        self._producer: Producer | None = None
        self._meta: Consumer | None = None
        self._lock = threading.Lock()
        self._errors: list[str] = []
        self._counter = 0
        self._closed = False
        self._consumers: weakref.WeakSet[KafkaConsumer] = weakref.WeakSet()

    @property
    def partitions(self) -> int:
        return self._partitions

    def _on_delivery(self, err: KafkaError | None, msg: object) -> None:
        if err is not None:
            self._errors.append(str(err))

    def _make_producer(self) -> Producer:
        conf = _common(self._backend.bootstrap) | {
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": self._backend.config.linger_ms,
            "delivery.report.only.error": True,
            "on_delivery": self._on_delivery,
            "queue.buffering.max.messages": 1_000_000,
        }
        return Producer(conf)

    def append(self, value: bytes, key: bytes | None = None) -> None:
        """Queue one record (offset known only after delivery: returns None). Durable after `flush()`."""
        with self._lock:
            if self._closed:
                msg = f"log {self.name!r} is closed"
                raise LogError(msg)
            if self._producer is None:
                self._producer = self._make_producer()
            p = partition_for(key, self._partitions, self._counter)
            self._counter += 1
            while True:
                try:
                    self._producer.produce(self.topic, value, key, partition=p)
                    break
                except BufferError:  # local queue full: serve delivery reports, then retry
                    self._producer.poll(0.05)
                except KafkaException as e:
                    msg = f"log {self.name!r}: producing to {self.topic!r} failed: {e}"
                    raise LogError(msg) from e
            if self._counter % 1000 == 0:
                self._producer.poll(0)
        return None

    def flush(self) -> None:
        """Return when every appended record is acknowledged by the broker (acks=all); LogError on failure."""
        with self._lock:
            if self._producer is None:
                return
            left = self._producer.flush(self._backend.config.timeout_s)
            errors, self._errors = self._errors, []
        if errors:
            msg = f"log {self.name!r}: {len(errors)} record(s) to {self.topic!r} failed: {errors[0]}"
            raise LogError(msg)
        if left:
            msg = f"log {self.name!r}: {left} record(s) to {self.topic!r} unacknowledged after flush timeout"
            raise LogError(msg)

    def _watermarks(self, p: int) -> tuple[int, int]:
        with self._lock:
            if self._meta is None:
                conf = _common(self._backend.bootstrap) | {"group.id": f"freshrec-meta-{uuid.uuid4().hex}",
                                                           "enable.auto.commit": False}
                self._meta = Consumer(conf)
            meta = self._meta
        timeout = self._backend.config.timeout_s
        lo, hi = _retrying(f"log {self.name!r}: reading the offsets of {self.topic!r}[{p}]",
                           lambda: meta.get_watermark_offsets(TopicPartition(self.topic, p),
                                                              timeout=timeout, cached=False), timeout)
        return int(lo), int(hi)

    def end_offsets(self) -> list[int]:
        """Per partition, the high watermark (acknowledged records)."""
        return [self._watermarks(p)[1] for p in range(self._partitions)]

    def consumer(self, group: str, *, partitions: Sequence[int] | None = None) -> KafkaConsumer:
        parts = list(range(self._partitions)) if partitions is None else [int(p) for p in partitions]
        for p in parts:
            if not 0 <= p < self._partitions:
                msg = f"log {self.name!r} has {self._partitions} partitions; no partition {p}"
                raise LogError(msg)
        c = KafkaConsumer(self, group, parts)
        self._consumers.add(c)
        return c

    def close(self) -> None:
        """Flush pending records and close the clients, this log's consumers included. Idempotent."""
        if self._closed:
            return
        try:
            self.flush()
        finally:
            self._closed = True
            for c in list(self._consumers):
                c.close()
            with self._lock:
                if self._meta is not None:
                    self._meta.close()
                    self._meta = None
                self._producer = None  # librdkafka destroys it with the last reference


class KafkaConsumer:
    """A consumer of a `KafkaLog` with an explicit partition assignment. Not thread-safe."""

    def __init__(self, log: KafkaLog, group: str, partitions: list[int]) -> None:
        if not group:
            msg = "consumer group must be a non-empty string"
            raise LogError(msg)
        self._log = log
        self.group = group
        self._timeout = log._backend.config.timeout_s
        conf = _common(log._backend.bootstrap) | {
            "group.id": group,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
            "fetch.wait.max.ms": log._backend.config.fetch_wait_max_ms,
            "enable.partition.eof": False,
        }
        self._parts = partitions
        # The start positions come from a short-lived consumer of the same group: a consumer that
        # queries its group coordinator right before its first fetch starts fetching ~1 s late
        # (librdkafka), and the admin API's offset lookup can crash the process on a fresh
        # cluster (librdkafka admin OffsetFetch on NOT_COORDINATOR; confluent-kafka-python #1982).
        probe = Consumer(conf)
        try:
            self._pos = self._committed_via(probe)
        finally:
            probe.close()
        self._c = Consumer(conf)
        self._assign()
        self._closed = False

    def _tps(self, positions: Mapping[int, int] | None = None) -> list[TopicPartition]:
        if positions is None:
            return [TopicPartition(self._log.topic, p) for p in self._parts]
        return [TopicPartition(self._log.topic, p, int(o)) for p, o in positions.items()]

    def _assign(self) -> None:
        try:
            self._c.assign(self._tps(self._pos))
        except KafkaException as e:
            msg = f"consumer {self.group!r} of {self._log.topic!r}: assign failed: {e}"
            raise LogError(msg) from e

    def poll(self, max_records: int = 1000, timeout_s: float = 0.0) -> list[Record]:
        """Up to `max_records` records; waits up to `timeout_s` for the first one."""
        if self._closed:
            msg = f"consumer of {self._log.name!r} is closed"
            raise LogError(msg)
        out: list[Record] = []
        deadline = time.monotonic() + timeout_s
        msgs = self._c.consume(max_records, 0)
        while not msgs:
            left = deadline - time.monotonic()
            if left <= 0:
                return out
            first = self._c.poll(min(left, 0.5))
            if first is not None:
                msgs = [first, *self._c.consume(max_records - 1, 0)] if max_records > 1 else [first]
        for m in msgs:
            err = m.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    continue
                msg = f"consumer {self.group!r} of {self._log.topic!r}: {err}"
                raise LogError(msg)
            p, off = m.partition(), m.offset()
            assert p is not None and off is not None, "a fetched message has a partition and offset"
            if off < self._pos.get(p, 0):
                continue  # fetched before a seek: stale
            self._pos[p] = off + 1
            out.append(Record(p, off, m.key(), m.value() or b""))
        return out

    def commit(self, positions: Mapping[int, int] | None = None) -> None:
        """Synchronously store `positions` (default: current) as the group's committed offsets."""
        tps = self._tps(self.position() if positions is None else positions)
        _retrying(f"consumer {self.group!r} of {self._log.topic!r}: commit",
                  lambda: self._c.commit(offsets=tps, asynchronous=False), self._timeout)

    def committed(self) -> dict[int, int]:
        return self._committed_via(self._c)

    def _committed_via(self, c: Consumer) -> dict[int, int]:
        tps = _retrying(f"consumer {self.group!r} of {self._log.topic!r}: reading committed offsets",
                        lambda: c.committed(self._tps(), timeout=self._timeout), self._timeout)
        return {tp.partition: (tp.offset if tp.offset >= 0 else 0) for tp in tps}  # OFFSET_INVALID: none

    def position(self) -> dict[int, int]:
        return dict(self._pos)

    def seek(self, partition: int, offset: int) -> None:
        """Move `partition` to `offset`; OffsetOutOfRange outside [low watermark, high watermark]."""
        if partition not in self._pos:
            msg = f"consumer of {self._log.name!r}: partition {partition} is not assigned"
            raise LogError(msg)
        lo, hi = self._log._watermarks(partition)
        if not lo <= offset <= hi:
            msg = f"log {self._log.name!r} partition {partition}: offset {offset} outside [{lo}, {hi}]"
            raise OffsetOutOfRange(msg)
        self._pos[partition] = int(offset)
        self._assign()

    def at_end(self) -> bool:
        """True when every assigned partition's position has reached its high watermark.

        Free when the last fetch already showed records ahead (librdkafka keeps the high
        watermark of each fetch response); else asks the broker, one round trip per partition."""
        if self._closed:
            msg = f"consumer of {self._log.name!r} is closed"
            raise LogError(msg)
        for p, pos in self._pos.items():
            try:
                _, hi = self._c.get_watermark_offsets(TopicPartition(self._log.topic, p), cached=True)
            except KafkaException:
                continue  # nothing fetched yet: ask the broker below
            if hi > pos:
                return False
        return all(pos >= self._log._watermarks(p)[1] for p, pos in self._pos.items())

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._c.close()

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

Broker outages (a stop, a crash, a restart) are ridden out, not raised: every client of a backend
reports to one `freshrec.stream._kafka_link.Link`, which announces an outage and its end in one
log line each (logger `freshrec.stream.kafka`) and bounds the wait (`KafkaLogConfig.outage_timeout_s`,
then `LogError` naming the broker and the error that began the outage). The producer keeps what it
accepted and resends it when the broker is back (idempotent: once); consumers resume at their
positions; offset-lookup, admin and consumer clients that stay broken after the broker is back are
replaced by new ones. librdkafka's own log lines go to the logger `freshrec.stream.kafka.librdkafka`,
each kind at most once a minute (`LibrdkafkaLog`).
"""

from __future__ import annotations

import math
import threading
import time
import uuid
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from confluent_kafka import (
    Consumer,
    KafkaError,
    KafkaException,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, NewTopic

from freshrec.errors import LogError, OffsetOutOfRange
from freshrec.stream._kafka_link import GRACE_S, LibrdkafkaLog, Link, transient
from freshrec.stream.log import Record, RecordBlock, blocks_of, partition_for

__all__ = ["KafkaBackend", "KafkaConsumer", "KafkaLog", "KafkaLogConfig"]

_MAX_MESSAGE_TIMEOUT_MS = 2**31 - 1  # librdkafka's largest message.timeout.ms (~24.8 days)


@dataclass(frozen=True, kw_only=True)
class KafkaLogConfig:
    """Client settings.

    Attributes:
        linger_ms: how long the producer gathers records into one request.
        timeout_s: bounds one attempt of a blocking admin/metadata/offsets/commit call, and how
            long a broker that never answered is waited for (a wrong address fails this fast).
        fetch_wait_max_ms: how long the broker holds a fetch that has no records yet.
        outage_timeout_s: how long a call waits out an outage of a broker that answered before
            (stopped, killed, restarting) before it raises `LogError`; `math.inf`: forever.
            The bound is per outage: once spent, calls fail at once until the broker is back.
    """

    linger_ms: float = 5.0
    timeout_s: float = 30.0
    fetch_wait_max_ms: int = 20
    outage_timeout_s: float = 300.0

    def validate(self) -> None:
        if (self.linger_ms < 0 or not 0 < self.timeout_s < math.inf or self.fetch_wait_max_ms < 0
                or not self.outage_timeout_s > 0):
            msg = f"invalid Kafka log config {self}"
            raise LogError(msg)

    def message_timeout_ms(self) -> int:
        """The producer's message.timeout.ms: a record outlives the longest outage waited out
        (0, librdkafka's "forever", when that is forever)."""
        if math.isinf(self.outage_timeout_s):
            return 0
        return int(min(_MAX_MESSAGE_TIMEOUT_MS, (self.outage_timeout_s + 2 * self.timeout_s) * 1000))


def _check_name(kind: str, name: str) -> None:
    if not name or len(name) > 200 or any(not (c.isascii() and (c.isalnum() or c in "._-")) for c in name):
        msg = f"{kind} name {name!r} must be 1-200 characters of [A-Za-z0-9._-]"
        raise LogError(msg)


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
        self._rdkafka_log = LibrdkafkaLog()
        self.link = Link(bootstrap, outage_timeout_s=self.config.outage_timeout_s,
                         timeout_s=self.config.timeout_s, probe=self._probe)
        self._admin: AdminClient | None = self._new_admin()
        self._probe_fails = 0
        self._logs: dict[str, KafkaLog] = {}
        self._lock = threading.Lock()

    def client_config(self) -> dict[str, Any]:
        """The settings every client of this backend shares: the address, IPv4, no Nagle, its
        librdkafka log lines through `LibrdkafkaLog`, its client-level errors to the link."""
        return {"bootstrap.servers": self.bootstrap, "broker.address.family": "v4",
                "socket.nagle.disable": True, "logger": self._rdkafka_log, "error_cb": self.link.on_error}

    def _new_admin(self) -> AdminClient:
        # never let a metadata lookup auto-create a topic (with the broker's default partitions)
        return AdminClient(self.client_config() | {"allow.auto.create.topics": False})

    def _admin_client(self) -> AdminClient:
        if self._admin is None:
            msg = f"Kafka backend at {self.bootstrap} is closed"
            raise LogError(msg)
        return self._admin

    def _renew_admin(self) -> None:
        """Replace the admin client (one can stay broken after an outage while a new one works)."""
        if self._admin is not None:
            self._admin = self._new_admin()

    def _probe(self, timeout_s: float) -> None:
        """One metadata request (the link's probe); every third failure in a row renews the client."""
        admin = self._admin_client()
        try:
            admin.list_topics(timeout=timeout_s)
        except KafkaException:
            self._probe_fails += 1
            if self._probe_fails % 3 == 0:
                self._renew_admin()
            raise
        finally:
            admin.poll(0)  # serve its log lines and error callbacks
        self._probe_fails = 0

    def _partition_count(self, topic: str) -> int | None:
        """Partitions of `topic` once every partition has a leader; None when the topic is absent."""
        def attempt(timeout_s: float) -> Any:
            admin = self._admin_client()
            try:
                return admin.list_topics(topic, timeout=timeout_s)
            finally:
                admin.poll(0)

        md = self.link.call(f"Kafka at {self.bootstrap}: reading metadata of {topic!r}", attempt,
                            rebuild=self._renew_admin, rebuild_after=3)
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
        try:
            for log in logs:
                log.close()
        finally:
            with self._lock:
                self._admin = None  # also marks the backend closed
            self.link.close()


class KafkaLog:
    """One topic as a `Log`. append/flush are thread-safe."""

    def __init__(self, backend: KafkaBackend, name: str, topic: str, partitions: int) -> None:
        self.name = name
        self.topic = topic
        self._backend = backend
        self._partitions = partitions
        self._producer: Producer | None = None
        self._meta: Consumer | None = None
        self._meta_lock = threading.Lock()
        self._lock = threading.Lock()
        self._errors: list[str] = []
        self._fatal: str | None = None
        self._counter = 0
        self._closed = False
        self._consumers: weakref.WeakSet[KafkaConsumer] = weakref.WeakSet()

    @property
    def partitions(self) -> int:
        return self._partitions

    def _on_delivery(self, err: KafkaError | None, msg: object) -> None:
        if err is not None:
            self._errors.append(str(err))

    def _on_error(self, err: KafkaError) -> None:
        if err.fatal():  # the idempotent producer cannot go on: its queued records fail
            self._fatal = str(err)
        self._backend.link.on_error(err)

    def _make_producer(self) -> Producer:
        cfg = self._backend.config
        conf = self._backend.client_config() | {
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": cfg.linger_ms,
            "delivery.report.only.error": True,
            "on_delivery": self._on_delivery,
            "error_cb": self._on_error,
            "queue.buffering.max.messages": 1_000_000,
            "message.timeout.ms": cfg.message_timeout_ms(),
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
                except BufferError:  # local queue full (a slow or absent broker): serve reports, retry
                    self._producer.poll(0.05)
                    self._backend.link.check(f"log {self.name!r}: producing to {self.topic!r}")
                except KafkaException as e:
                    msg = f"log {self.name!r}: producing to {self.topic!r} failed: {e}"
                    raise LogError(msg) from e
            if self._counter % 1000 == 0:
                self._producer.poll(0)
        return None

    def flush(self) -> None:
        """Return when every appended record is acknowledged by the broker (acks=all).

        Waits out a broker outage (`KafkaLogConfig.outage_timeout_s`): the producer keeps the
        records and resends them when the broker is back (idempotent: each is written once).
        Raises LogError when a record failed, or is still unacknowledged when the wait ends.
        """
        link = self._backend.link
        timeout_s = self._backend.config.timeout_s
        with self._lock:
            producer = self._producer
            if producer is None:
                return
            pending = len(producer)
            start = time.monotonic()
            left = producer.flush(min(1.0, timeout_s))
            while left and not self._errors:
                what = f"log {self.name!r}: {left} record(s) to {self.topic!r} unacknowledged"
                now = time.monotonic()
                if now - start < timeout_s:  # a broker acks in ms: is the cluster there at all?
                    link.suspect(f"records to {self.topic!r} unacknowledged")
                    link.check(what)
                else:  # it answers but does not take them: an outage all the same
                    link.failing(f"records to {self.topic!r} unacknowledged for {timeout_s:g} s", start)
                if now >= link.deadline(start):
                    raise link.error(what, link.cause or "no acknowledgement", start)
                left = producer.flush(min(1.0, timeout_s))
            errors, self._errors = self._errors, []
            if self._fatal is not None:  # reported below; later appends get a new producer
                errors.insert(0, self._fatal)
                self._fatal, self._producer = None, None
        if errors:
            msg = f"log {self.name!r}: {len(errors)} record(s) to {self.topic!r} failed: {errors[0]}"
            raise LogError(msg)
        if pending:
            link.ok()

    def _meta_client(self) -> Consumer:
        if self._meta is None:
            conf = self._backend.client_config() | {"group.id": f"freshrec-meta-{uuid.uuid4().hex}",
                                                    "enable.auto.commit": False}
            self._meta = Consumer(conf)
        return self._meta

    def _renew_meta(self) -> None:
        """Drop the offset-lookup client: after an outage one can keep failing ("unknown
        partition") while a new one answers at once."""
        with self._meta_lock:
            if self._meta is not None:
                self._meta.close()
                self._meta = None

    def _watermarks(self, p: int) -> tuple[int, int]:
        """(low, high) watermark of partition `p`, from the broker (one round trip)."""
        tp = TopicPartition(self.topic, p)

        def attempt(timeout_s: float) -> tuple[int, int]:
            with self._meta_lock:
                if self._closed:
                    msg = f"log {self.name!r} is closed"
                    raise LogError(msg)
                meta = self._meta_client()
                try:
                    return meta.get_watermark_offsets(tp, timeout=timeout_s, cached=False)
                finally:
                    meta.poll(0)  # serve its log lines and error callbacks

        lo, hi = self._backend.link.call(f"log {self.name!r}: reading the offsets of {self.topic!r}[{p}]",
                                         attempt, rebuild=self._renew_meta)
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
            self._renew_meta()
            with self._lock:
                self._producer = None  # librdkafka destroys it with the last reference


class KafkaConsumer:
    """A consumer of a `KafkaLog` with an explicit partition assignment. Not thread-safe."""

    def __init__(self, log: KafkaLog, group: str, partitions: list[int]) -> None:
        if not group:
            msg = "consumer group must be a non-empty string"
            raise LogError(msg)
        self._log = log
        self.group = group
        self._link = log._backend.link
        self._what = f"consumer {group!r} of {log.topic!r}"
        conf = log._backend.client_config() | {
            "group.id": group,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
            "fetch.wait.max.ms": log._backend.config.fetch_wait_max_ms,
            "enable.partition.eof": False,
        }
        self._conf = conf
        self._parts = partitions
        self._fetch_errors_since: float | None = None
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

    def _renew(self) -> None:
        """Replace the client with a new one assigned at the positions (a client can stay broken
        after an outage; the records it fetched ahead are fetched again)."""
        old, self._c = self._c, Consumer(self._conf)
        self._assign()
        old.close()

    def _fetch_error(self, err: KafkaError) -> None:
        """A transient error in place of records (the broker away or recovering): wait it out,
        and renew the client when it persists while the cluster answers."""
        now = time.monotonic()
        self._link.suspect(str(err))
        if self._fetch_errors_since is None:
            self._fetch_errors_since = now
        elif now - self._fetch_errors_since >= 2 * GRACE_S and not self._link.down:
            self._fetch_errors_since = None
            self._renew()

    def poll(self, max_records: int = 1000, timeout_s: float = 0.0) -> list[Record]:
        """Up to `max_records` records; waits up to `timeout_s` for the first one.

        During a broker outage polls return nothing (and the consumer resumes at its positions
        when the broker is back); LogError once the outage outlasts `outage_timeout_s`."""
        if self._closed:
            msg = f"consumer of {self._log.name!r} is closed"
            raise LogError(msg)
        if self._link.alarm is not None:
            self._link.check(self._what)
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
                if transient(err):
                    self._fetch_error(err)
                    continue
                msg = f"{self._what}: {err}"
                raise LogError(msg)
            p, off = m.partition(), m.offset()
            assert p is not None and off is not None, "a fetched message has a partition and offset"
            if off < self._pos.get(p, 0):
                continue  # fetched before a seek: stale
            self._pos[p] = off + 1
            out.append(Record(p, off, m.key(), m.value() or b""))
        if out and self._fetch_errors_since is not None:
            self._fetch_errors_since = None
        return out

    def poll_blocks(self, max_records: int = 1000, timeout_s: float = 0.0) -> list[RecordBlock]:
        """`poll` as blocks (`blocks_of`): the same records, positions and errors."""
        return blocks_of(self.poll(max_records, timeout_s))

    def commit(self, positions: Mapping[int, int] | None = None) -> None:
        """Synchronously store `positions` (default: current) as the group's committed offsets.

        Waits out a broker outage (a commit is not begun while the broker is known away: it would
        block in librdkafka until the coordinator is back)."""
        tps = self._tps(self.position() if positions is None else positions)
        what = f"{self._what}: commit"
        self._link.wait_up(what)

        def attempt(_timeout_s: float) -> object:
            with self._link.blocking(what):
                return self._c.commit(offsets=tps, asynchronous=False)

        self._link.call(what, attempt, rebuild=self._renew, rebuild_after=3)

    def committed(self) -> dict[int, int]:
        return self._committed_via(None)

    def _committed_via(self, probe: Consumer | None) -> dict[int, int]:
        """The group's committed offsets, read through `probe` (default: this consumer's client)."""
        def attempt(timeout_s: float) -> list[TopicPartition]:
            return (probe or self._c).committed(self._tps(), timeout=timeout_s)

        tps = self._link.call(f"{self._what}: reading committed offsets", attempt,
                              rebuild=None if probe is not None else self._renew, rebuild_after=3)
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
        watermark of each fetch response); else asks the broker, one round trip per partition
        (and waits out an outage like every call)."""
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

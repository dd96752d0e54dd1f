"""The Kafka log's outage logic (`freshrec.stream._kafka_link`) on a fake clock, without a broker:
when an outage is announced and ended, how long calls wait, what they raise, how clients are
renewed, and how librdkafka's lines are thinned. The same logic against a real broker that is
stopped and killed: tests/test_kafka_outage.py."""

from __future__ import annotations

import logging
import time

import pytest
from confluent_kafka import KafkaError, KafkaException

from freshrec.errors import LogError
from freshrec.stream._kafka_link import GRACE_S, LibrdkafkaLog, Link, transient

DOWN = KafkaException(KafkaError(KafkaError._TRANSPORT, "Local: Broker transport failure"))


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t

    def sleep(self, s: float) -> None:
        self.t += s


def _link(clock: Clock, *, outage_timeout_s: float = 60.0, probe=None) -> Link:
    def no_probe(_timeout_s: float) -> None:
        raise DOWN

    return Link("127.0.0.1:9", outage_timeout_s=outage_timeout_s, timeout_s=5.0, probe=probe or no_probe,
                clock=clock, sleep=clock.sleep, wall=lambda: 0.0)


def _fails_until(clock: Clock, t_ok: float, err: KafkaException = DOWN):
    calls = []

    def attempt(timeout_s: float) -> str:
        calls.append(timeout_s)
        clock.t += 0.01
        if clock.t < t_ok:
            raise err
        return "done"

    return attempt, calls


def _lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "freshrec.stream.kafka"]


def test_an_outage_is_waited_out_and_announced_once_each_way(caplog) -> None:
    caplog.set_level(logging.WARNING, logger="freshrec.stream.kafka")
    clock = Clock()
    link = _link(clock)
    assert link.call("ok", lambda _t: 1) == 1 and link.reached
    attempt, calls = _fails_until(clock, clock.t + 0.5 * GRACE_S)  # a blip: retried, not announced
    assert link.call("blip", attempt) == "done" and _lines(caplog) == []
    attempt, calls = _fails_until(clock, clock.t + 20.0)
    assert link.call("commit", attempt) == "done"
    lines = _lines(caplog)
    assert len(lines) == 2, lines
    assert lines[0].startswith("kafka 127.0.0.1:9 unavailable since")
    assert "(Local: Broker transport failure); waiting up to 60 s" in lines[0]
    assert lines[1].startswith("kafka 127.0.0.1:9 available again after 2") and not link.down
    assert 10 < len(calls) < 40  # backoff: pauses grow to a second
    assert max(calls) <= 5.0  # no attempt waits longer than timeout_s


def test_the_wait_is_bounded_per_outage_and_the_error_names_broker_and_cause() -> None:
    clock = Clock()
    link = _link(clock, outage_timeout_s=30.0)
    link.call("first", lambda _t: None)
    attempt, _ = _fails_until(clock, float("inf"))
    t0 = clock.t
    with pytest.raises(LogError) as e:
        link.call("log 'examples': reading offsets", attempt)
    assert 30.0 <= clock.t - t0 < 32.0
    msg = str(e.value)
    assert msg.startswith("log 'examples': reading offsets: kafka 127.0.0.1:9 unavailable for 30")
    assert "outage_timeout_s" in msg and "Broker transport failure" in msg
    t1 = clock.t  # the same outage: the next call gives up at once
    with pytest.raises(LogError, match="unavailable for 3"):
        link.call("commit", attempt)
    assert clock.t - t1 < 1.0


def test_a_broker_never_reached_is_waited_for_timeout_s_only() -> None:
    clock = Clock()
    link = _link(clock, outage_timeout_s=300.0)
    attempt, _ = _fails_until(clock, float("inf"))
    with pytest.raises(LogError, match="the broker never answered"):
        link.call("open", attempt)
    assert clock.t - 1000.0 < 6.0


def test_non_transient_errors_raise_at_once_and_stuck_clients_are_renewed() -> None:
    clock = Clock()
    link = _link(clock)
    bad = KafkaException(KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED, "denied"))
    attempt, calls = _fails_until(clock, float("inf"), bad)
    with pytest.raises(LogError, match="denied"):
        link.call("read", attempt)
    assert len(calls) == 1
    renewed = []
    stuck = KafkaException(KafkaError(KafkaError._UNKNOWN_PARTITION, "Local: Unknown partition"))
    attempt, calls = _fails_until(clock, clock.t + 3.0, stuck)
    assert link.call("read", attempt, rebuild=lambda: renewed.append(clock.t), rebuild_after=2) == "done"
    assert len(renewed) == (len(calls) - 1) // 2  # every second failure; the last call succeeded
    assert transient(stuck) and not transient(bad)
    assert not transient(KafkaError(KafkaError._TRANSPORT, "x", fatal=True))


def test_check_probes_a_suspected_cluster_and_bounds_a_silent_outage(caplog) -> None:
    caplog.set_level(logging.WARNING, logger="freshrec.stream.kafka")
    clock = Clock()
    up = {"at": float("inf")}
    probes = []

    def probe(_timeout_s: float) -> None:
        probes.append(clock.t)
        if clock.t < up["at"]:
            raise DOWN

    link = _link(clock, outage_timeout_s=10.0, probe=probe)
    link.call("first", lambda _t: None)
    link.check("poll")
    assert probes == []  # all is well: no probe
    link.on_error(KafkaError(KafkaError._ALL_BROKERS_DOWN, "1/1 brokers are down"))
    for _ in range(40):  # a consumer polling every 0.1 s through the outage
        link.check("poll")
        clock.sleep(0.1)
    assert link.down and 3 <= len(probes) <= 5  # at most one probe a second
    up["at"] = clock.t + 2.0
    while link.down:
        link.check("poll")
        clock.sleep(0.1)
    lines = _lines(caplog)
    assert len(lines) == 2 and "unavailable since" in lines[0] and "available again" in lines[1]
    link.suspect("records unacknowledged")
    up["at"] = float("inf")
    with pytest.raises(LogError, match="poll: kafka 127.0.0.1:9 unavailable for 1"):
        while True:
            link.check("poll")
            clock.sleep(0.1)


def test_a_call_blocked_in_librdkafka_is_announced_by_the_watchdog(caplog) -> None:
    caplog.set_level(logging.WARNING, logger="freshrec.stream.kafka")

    def probe(_timeout_s: float) -> None:
        raise DOWN

    link = Link("127.0.0.1:9", outage_timeout_s=60.0, timeout_s=5.0, probe=probe)
    try:
        with link.blocking("commit"):
            time.sleep(GRACE_S + 0.3)
        assert link.down and "unavailable since" in _lines(caplog)[0]
    finally:
        link.close()


def test_librdkafka_lines_of_one_kind_are_logged_once_a_minute(caplog) -> None:
    caplog.set_level(logging.INFO, logger="freshrec.stream.kafka.librdkafka")
    clock = Clock()
    log = LibrdkafkaLog(clock=clock)
    for i in range(200):  # ~64 a second from several clients, as in an outage
        client = f"rdkafka#consumer-{i % 4}"
        log.log(logging.ERROR, "%s [%s] %s", "FAIL", client,
                f"[thrd:127.0.0.1:9/bootstrap]: 127.0.0.1:9/bootstrap: Connect to ipv4#127.0.0.1:9 failed: "
                f"Connection refused (after {i % 3}ms in state CONNECT)")
        log.log(logging.INFO, "%s [%s] %s", "FAIL", client, "127.0.0.1:9/1: Disconnected (after 5ms)")
        clock.sleep(1 / 64)
    got = [r.getMessage() for r in caplog.records]
    assert len(got) == 2 and "Connection refused" in got[0] and "Disconnected" in got[1]
    clock.sleep(60.0)
    log.log(logging.ERROR, "%s [%s] %s", "FAIL", "rdkafka#producer-9",
            "x: Connection refused (after 0ms in state CONNECT)")
    assert "and 199 more like it in the last 6" in caplog.records[-1].getMessage()

"""Kafka broker outages: a broker stopped (clean shutdown) or killed (kill -9), then started
again on the same port with its data. The log's producer and consumer in this process and the
`freshrec join` process ride both out: they wait, say so in one line each way, and resume;
nothing is lost or duplicated (the joiner's output equals the oracle's, as an uninterrupted
run's does in tests/test_joiner.py).

The module runs its own broker (the session's broker is shared by the other Kafka tests and
must not go away under them).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import kafka_broker
from freshrec.stream.backends import open_backend
from freshrec.stream.log import Record
from test_joiner import LATENESS, read_examples, reference, simulate

pytestmark = pytest.mark.kafka

OUTAGE_S = 3.0  # seconds the broker stays down (after its shutdown, before its restart)


@pytest.fixture(scope="module")
def broker() -> Iterator[kafka_broker.Broker]:
    reason = kafka_broker.unavailable_reason()
    if reason is not None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{reason} (CI=true: the Kafka tests must run in CI)", pytrace=False)
        pytest.skip(reason)
    b = kafka_broker.start()
    yield b
    b.stop()


def _url(broker: kafka_broker.Broker, tag: str) -> str:
    return f"kafka://{broker.bootstrap}?prefix=outage-{tag}-{uuid.uuid4().hex[:8]}.&outage_timeout=120"


def _link_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "freshrec.stream.kafka"]


def test_producer_and_consumer_in_process_ride_out_a_stop_and_a_kill(broker, caplog) -> None:
    caplog.set_level(logging.WARNING, logger="freshrec.stream")
    backend = open_backend(_url(broker, "inproc"))
    log = backend.log("events", partitions=2)
    sent: list[bytes] = []

    def append(n: int) -> None:
        for _ in range(n):
            v = b"v%05d" % len(sent)
            log.append(v, key=v)
            sent.append(v)

    append(300)
    log.flush()
    c = log.consumer("reader")
    got: list[Record] = []
    while len(got) < 100:
        got.extend(c.poll(50, timeout_s=1.0))
    try:
        for fault in ("stop", "kill"):
            append(200)  # queued before the fault, maybe not yet sent
            failures: list[BaseException] = []

            def flush_and_read(failures: list[BaseException] = failures) -> None:
                """What a role does through the outage."""
                try:
                    append(100)  # accepted while the broker is going or gone
                    log.flush()  # waits for the broker, then every record is acknowledged
                    deadline = time.monotonic() + 60
                    while len(got) < len(sent) and time.monotonic() < deadline:
                        got.extend(c.poll(1000, timeout_s=0.5))
                    c.commit()
                except BaseException as e:  # reported on the test's thread
                    failures.append(e)

            worker = threading.Thread(target=flush_and_read)
            if fault == "stop":
                broker.stop(keep_data=True)
                worker.start()
            else:
                worker.start()
                broker.kill()
            time.sleep(OUTAGE_S)
            broker.restart()
            worker.join(90)
            assert not worker.is_alive() and not failures, failures
        # every record exactly once, in order per partition, and the ends agree
        values = [r.value for r in got]
        assert sorted(values) == sorted(sent) and len(set(values)) == len(values)
        for p in (0, 1):
            offs = [r.offset for r in got if r.partition == p]
            assert offs == list(range(len(offs)))
        assert c.at_end() and sum(log.end_offsets()) == len(sent)
        assert c.committed() == c.position()
    finally:
        c.close()
        backend.close()
    lines = _link_lines(caplog)
    assert sum("unavailable since" in x for x in lines) >= 2, lines
    assert sum("available again after" in x for x in lines) >= 2, lines
    assert len(lines) <= 8, lines  # one line per state change, not a flood


def _phases(feats: list[bytes], acts: list[bytes], n: int) -> list[tuple[list[bytes], list[bytes]]]:
    """The inputs cut at n-1 data times: every record of a later phase is too recent to be late
    for the watermark an earlier phase leaves (all of a phase's ts < cut <= later arrivals)."""
    def ts_of(b: bytes) -> float | None:
        try:
            return float(json.loads(b)["ts"])
        except (ValueError, KeyError, TypeError):
            return None  # garbage (a dead letter to be)

    ts = sorted(t for t in map(ts_of, feats) if t is not None)
    cuts = [ts[len(ts) * k // n] for k in range(1, n)] + [float("inf")]

    def first_at(records: list[bytes], cut: float) -> int:
        return next((i for i, b in enumerate(records) if (ts_of(b) or -1.0) >= cut), len(records))

    out, f0, a0 = [], 0, 0
    for cut in cuts:
        f1, a1 = max(f0, first_at(feats, cut)), max(a0, first_at(acts, cut))
        out.append((feats[f0:f1], acts[a0:a1]))
        f0, a0 = f1, a1
    assert sum(len(f) for f, _ in out) == len(feats) and sum(len(a) for _, a in out) == len(acts)
    return out


def _write(backend, records: list[bytes], name: str) -> None:
    log = backend.log(name, partitions=2)
    for b in records:
        try:
            key = json.loads(b)["request_id"].encode()
        except (ValueError, KeyError):
            key = None
        log.append(b, key=key)
    log.flush()


def _wait(cond: Callable[[], bool], timeout_s: float, what: str, proc: subprocess.Popen, err: Path) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert proc.poll() is None, f"joiner exited ({proc.returncode}) {what}:\n{err.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"timed out {what}:\n{err.read_text()[-3000:]}"
        time.sleep(0.05)


def test_joiner_process_rides_out_a_stop_and_a_kill(broker, tmp_path) -> None:
    feats, acts = simulate(900, seed=11)
    phases = _phases(feats, acts, 3)
    want = reference(feats, acts)
    url = _url(broker, "join")
    cmd = [sys.executable, "-m", "freshrec.cli", "join", "--log", url, "--store", str(tmp_path / "state"),
           "--windows", "click=600,like=259200", "--lateness", str(LATENESS), "--early-ttl", "30",
           "--batch", "50", "--poll", "20", "--map-size-gb", "0.0625", "--partitions", "2",
           "--stats-every", "0.000001"]
    out, err = tmp_path / "stdout.txt", tmp_path / "stderr.txt"
    backend = open_backend(url)  # the test's writer: rides out the outages as well
    proc = None
    try:
        examples = backend.log("examples", partitions=2)
        _write(backend, phases[0][0], "features")
        _write(backend, phases[0][1], "actions")
        with out.open("wb") as o, err.open("wb") as e:
            proc = subprocess.Popen(cmd, stdout=o, stderr=e, env=dict(os.environ, PYTHONUNBUFFERED="1"))

        def lines() -> int:
            return out.read_bytes().count(b"\n")

        for fault, (f, a) in zip(("stop", "kill"), phases[1:], strict=True):
            seen = lines()
            _wait(lambda s=seen: lines() >= s + 3, 60, "before the outage", proc, err)  # at work
            # The outage begins with input the joiner has not read: frozen, it misses the next
            # phase's records while the broker still has them; it wakes after a clean stop, or
            # just before a kill -9 (then it is reading them when the broker dies).
            proc.send_signal(signal.SIGSTOP)
            _write(backend, f, "features")
            _write(backend, a, "actions")
            if fault == "stop":
                broker.stop(keep_data=True)
                proc.send_signal(signal.SIGCONT)
            else:
                proc.send_signal(signal.SIGCONT)
                broker.kill()
            time.sleep(OUTAGE_S)
            broker.restart()  # on this thread: the broker dies with the thread that started it
        total = sum(want.values())
        _wait(lambda: sum(examples.end_offsets()) >= total, 90, "catching up", proc, err)
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(60)
        stderr = err.read_text()
        assert rc == 0, stderr[-3000:]
        assert read_examples(examples) == want  # no example lost, none twice
    finally:
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGCONT)
            proc.kill()
        backend.close()
    assert stderr.count("unavailable since") >= 2 and stderr.count("available again after") >= 2, stderr
    assert len(stderr.splitlines()) < 20, stderr  # one line per state change, not ~64 a second


def test_joiner_process_gives_up_past_outage_timeout_with_one_line(broker, tmp_path) -> None:
    url = _url(broker, "giveup").replace("outage_timeout=120", "outage_timeout=2")
    backend = open_backend(url)
    _write(backend, [], "features")
    _write(backend, [], "actions")
    backend.close()
    cmd = [sys.executable, "-m", "freshrec.cli", "join", "--log", url, "--store", str(tmp_path / "state"),
           "--map-size-gb", "0.0625", "--partitions", "2", "--stats-every", "0"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(3.0)  # it is up and polling
        assert proc.poll() is None, proc.communicate()
        broker.stop(keep_data=True)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
        if not broker.running():
            broker.restart()
    assert proc.returncode == 3, stderr
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("freshrec join: ") and f"kafka {broker.bootstrap} unavailable for" in last, stderr
    assert "limit 2 s: outage_timeout_s" in last and "Traceback" not in stderr, stderr

"""One contract for the log seam, run on every implementation (memory twin, LocalLog, KafkaLog).

Checks are parametrized implementation x check, in river's `checks/` style. Checks about
durability and other processes run on the durable implementations only (local, kafka). Kafka
checks run against a real broker (`kafka_bootstrap` in conftest.py) and are marked `kafka`.
LocalLog-only checks (torn tails, segments, the writer lock) close the file.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from freshrec.errors import ConfigError, LogError, OffsetOutOfRange
from freshrec.stream.backends import open_backend
from freshrec.stream.log import Consumer, Log, LogBackend, MemoryBackend, Record, partition_for

IMPLS = ["memory", "local", pytest.param("kafka", marks=pytest.mark.kafka)]
DURABLE = ["local", pytest.param("kafka", marks=pytest.mark.kafka)]  # durable, shared between processes
WAIT_S = 30.0  # upper bound for anything to show up (a Kafka fetch after assign takes ~100 ms)


@dataclass
class Impl:
    """One implementation under test: `url` opens the same logs from a new backend or process."""

    kind: str
    url: str
    backend: LogBackend
    opened: list[LogBackend] = field(default_factory=list)

    @property
    def durable(self) -> bool:
        return self.kind != "memory"

    def reopen(self) -> LogBackend:
        """A fresh backend on the same storage (memory: the same backend)."""
        if not self.durable:
            return self.backend
        b = open_backend(self.url)
        self.opened.append(b)
        return b


@pytest.fixture(params=IMPLS)
def impl(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Impl]:
    kind = request.param
    if kind == "kafka":
        bootstrap = request.getfixturevalue("kafka_bootstrap")
        url = f"kafka://{bootstrap}?prefix=test-{uuid.uuid4().hex[:12]}."
    elif kind == "local":
        url = f"local://{tmp_path / 'logs'}"
    else:
        url = "memory://"
    backend = open_backend(url)
    it = Impl(kind, url, backend, [backend])
    yield it
    for b in reversed(it.opened):
        b.close()


def drain(consumer: Consumer, n: int, *, wait_s: float = WAIT_S) -> list[Record]:
    """Poll until `n` records arrived (or `wait_s` passed); returns what arrived."""
    out: list[Record] = []
    deadline = time.monotonic() + wait_s
    while len(out) < n and time.monotonic() < deadline:
        out.extend(consumer.poll(max(1, min(1000, n - len(out))), timeout_s=0.5))
    return out


def by_partition(records: list[Record]) -> dict[int, list[Record]]:
    out: dict[int, list[Record]] = {}
    for r in records:
        out.setdefault(r.partition, []).append(r)
    return out


def fill(log: Log, n: int, *, keyed_every: int = 1) -> list[tuple[int, bytes | None, bytes]]:
    """Append n records (keys k0..k6, keyless every `keyed_every`-th when > 1) and flush.

    Returns the expected (partition, key, value) of each, in append order."""
    expected = []
    for i in range(n):
        key = None if keyed_every > 1 and i % keyed_every == 0 else b"k%d" % (i % 7)
        value = b"v%06d" % i
        got = log.append(value, key)
        p = partition_for(key, log.partitions, i)
        expected.append((p, key, value))
        if got is not None:  # memory and local know the offset at once; Kafka does not
            assert got[0] == p
    log.flush()
    return expected


def run_py(code: str, *args: str, timeout: float = 120.0) -> str:
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, f"subprocess failed:\n{out.stderr[-3000:]}"
    return out.stdout


# ---------------------------------------------------------------------------------------------
# the contract


def test_implements_the_protocols(impl: Impl) -> None:
    log = impl.backend.log("proto", partitions=2)
    c = log.consumer("g")
    assert isinstance(impl.backend, LogBackend)
    assert isinstance(log, Log)
    assert isinstance(c, Consumer)
    assert log.name == "proto"
    assert log.partitions == 2
    c.close()


def test_append_flush_read_back_in_order(impl: Impl) -> None:
    log = impl.backend.log("events", partitions=3)
    expected = fill(log, 300, keyed_every=5)
    c = log.consumer("reader")
    got = drain(c, 300)
    assert len(got) == 300
    parts = by_partition(got)
    for p in range(3):
        want = [(k, v) for (q, k, v) in expected if q == p]
        assert [(r.key, r.value) for r in parts.get(p, [])] == want
        assert [r.offset for r in parts.get(p, [])] == list(range(len(want)))
    assert c.poll(100, timeout_s=0.2) == []
    assert c.position() == {p: len(parts.get(p, [])) for p in range(3)}


def test_keys_map_to_the_same_partition_everywhere(impl: Impl) -> None:
    log = impl.backend.log("keyed", partitions=4)
    keys = [b"user-%d" % i for i in range(40)]
    for i, k in enumerate(keys):
        log.append(b"x%d" % i, k)
        log.append(b"y%d" % i)  # keyless: round-robin on the log's append counter
    log.flush()
    got = drain(log.consumer("g"), 80)
    assert len(got) == 80
    for r in got:
        if r.key is not None:
            assert r.partition == partition_for(r.key, 4)
        else:
            i = int(r.value[1:])
            assert r.partition == partition_for(None, 4, 2 * i + 1)


def test_keys_and_values_round_trip(impl: Impl) -> None:
    log = impl.backend.log("shapes", partitions=1)
    cases = [(None, b""), (b"k", b""), (b"\x00\xff", b"\x00" * 7), (b"K" * 1000, os.urandom(100_000)),
             (None, os.urandom(3))]
    for key, value in cases:
        log.append(value, key)
    log.flush()
    got = drain(log.consumer("g"), len(cases))
    assert [(r.key, r.value) for r in got] == cases


def test_consumer_groups_have_independent_positions(impl: Impl) -> None:
    log = impl.backend.log("shared", partitions=2)
    fill(log, 100)
    a = log.consumer("group-a")
    assert len(drain(a, 100)) == 100
    a.commit()
    b = log.consumer("group-b")
    assert b.committed() == {0: 0, 1: 0}
    got_b = drain(b, 40)
    assert len(got_b) == 40
    b.commit()
    assert sum(a.committed().values()) == 100
    assert sum(b.committed().values()) == 40
    a2 = log.consumer("group-a")
    assert a2.position() == a.position()
    assert a2.poll(10, timeout_s=0.2) == []


def test_commit_then_new_consumer_resumes_at_committed_position(impl: Impl) -> None:
    log = impl.backend.log("resume", partitions=1)
    fill(log, 100)
    c = log.consumer("trainer")
    first = drain(c, 30)
    assert [r.offset for r in first] == list(range(30))
    c.commit()
    assert c.committed() == {0: 30}
    c.close()
    c2 = impl.reopen().log("resume").consumer("trainer")
    assert c2.committed() == {0: 30}
    assert c2.position() == {0: 30}
    assert [r.offset for r in drain(c2, 70)] == list(range(30, 100))
    c2.commit({0: 50})  # explicit positions
    c2.close()
    c3 = impl.reopen().log("resume").consumer("trainer")
    assert c3.committed() == {0: 50}
    assert drain(c3, 1)[0].offset == 50


def test_consumer_over_some_partitions(impl: Impl) -> None:
    log = impl.backend.log("split", partitions=3)
    expected = fill(log, 90)
    c = log.consumer("one", partitions=[1])
    want = [v for (p, _k, v) in expected if p == 1]
    got = drain(c, len(want))
    assert [r.value for r in got] == want
    assert {r.partition for r in got} == {1}
    assert c.poll(10, timeout_s=0.2) == []
    assert list(c.position()) == [1]


def test_seek(impl: Impl) -> None:
    log = impl.backend.log("seekable", partitions=1)
    fill(log, 50)
    c = log.consumer("g")
    c.seek(0, 10)
    assert c.position() == {0: 10}
    assert [r.offset for r in drain(c, 5)] == [10, 11, 12, 13, 14]
    c.seek(0, 0)
    assert [r.value for r in drain(c, 3)] == [b"v000000", b"v000001", b"v000002"]
    c.seek(0, 50)
    assert c.poll(10, timeout_s=0.2) == []


@pytest.mark.parametrize("impl", DURABLE, indirect=True)
def test_seek_out_of_range_is_refused(impl: Impl) -> None:
    log = impl.backend.log("short", partitions=1)
    fill(log, 5)
    c = log.consumer("g")
    with pytest.raises(OffsetOutOfRange):
        c.seek(0, 6)


def test_poll_times_out_empty_and_wakes_when_a_record_arrives(impl: Impl) -> None:
    log = impl.backend.log("live", partitions=1)
    c = log.consumer("g")
    assert c.poll(10, timeout_s=0.3) == []

    def later() -> None:
        time.sleep(0.3)
        log.append(b"hello", b"k")
        log.flush()

    t = threading.Thread(target=later)
    t0 = time.monotonic()
    t.start()
    got = c.poll(10, timeout_s=WAIT_S)
    elapsed = time.monotonic() - t0
    t.join()
    assert [r.value for r in got] == [b"hello"]
    assert elapsed < WAIT_S / 2  # it returned on arrival, not at the timeout


def test_end_offsets(impl: Impl) -> None:
    log = impl.backend.log("ends", partitions=3)
    assert log.end_offsets() == [0, 0, 0]
    expected = fill(log, 61, keyed_every=3)
    want = [sum(1 for (p, _k, _v) in expected if p == q) for q in range(3)]
    assert log.end_offsets() == want
    if impl.durable:  # another backend on the same storage agrees
        assert impl.reopen().log("ends").end_offsets() == want


def test_at_end_is_by_offsets_not_by_an_empty_poll(impl: Impl) -> None:
    log = impl.backend.log("at-end", partitions=2)
    c = log.consumer("g")
    assert c.at_end()  # an empty log
    fill(log, 20)
    assert not c.at_end()  # records ahead, none polled yet (a first Kafka poll is often empty)
    got = drain(c, 20)
    assert len(got) == 20 and c.at_end()
    log.append(b"one more", b"k0")
    log.flush()
    assert not c.at_end()
    assert len(drain(c, 1)) == 1 and c.at_end()
    p = got[0].partition
    c.seek(p, 0)
    assert not c.at_end()
    mine = log.consumer("h", partitions=[p])  # only the consumer's own partitions count
    drain(mine, log.end_offsets()[p])
    assert mine.at_end()
    for x in (c, mine):
        x.close()


# ---------------------------------------------------------------------------------------------
# other processes, crashes

READER = """
import json, sys, time
from freshrec.stream.backends import open_backend
url, name, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
c = open_backend(url).log(name).consumer("other-process")
out, deadline = [], time.monotonic() + 60
while len(out) < n and time.monotonic() < deadline:
    out += c.poll(1000, timeout_s=0.5)
c.commit()
print(json.dumps([[r.partition, r.offset, r.key.hex() if r.key is not None else None, r.value.hex()]
                  for r in out]))
"""


@pytest.mark.parametrize("impl", DURABLE, indirect=True)
def test_reader_in_another_process_sees_flushed_records(impl: Impl) -> None:
    log = impl.backend.log("xproc", partitions=2)
    first = fill(log, 150)
    proc = subprocess.Popen([sys.executable, "-c", READER, impl.url, "xproc", "250"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(0.5)  # the reader is tailing: these arrive while it runs
    second = []
    for i in range(150, 250):
        key = b"k%d" % (i % 7)
        log.append(b"v%06d" % i, key)
        second.append((partition_for(key, 2), key, b"v%06d" % i))
    log.flush()
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-3000:]
    rows = json.loads(out)
    assert len(rows) == 250
    for p in range(2):
        want = [v for (q, _k, v) in first + second if q == p]
        got = [bytes.fromhex(v) for (q, _o, _k, v) in rows if q == p]
        assert got == want
    c = log.consumer("other-process")  # the other process committed its positions
    assert sum(c.committed().values()) == 250
    assert c.poll(10, timeout_s=0.2) == []


WRITER = """
import sys
from freshrec.stream.backends import open_backend
url, name = sys.argv[1], sys.argv[2]
if len(sys.argv) > 3:  # local log with tiny buffers and segments: kills land inside writes and rolls
    from freshrec.stream.local_log import LocalBackend, LocalLogConfig
    backend = LocalBackend(url[len("local://"):], config=LocalLogConfig(segment_bytes=8192, buffer_bytes=300))
else:
    backend = open_backend(url)
log = backend.log(name, partitions=2)
i = 0
while True:
    for _ in range(50):
        log.append(b"%08d" % i + b"." * 92, b"k%d" % (i % 7))
        i += 1
    log.flush()
    print(i, flush=True)
"""


@pytest.mark.parametrize("impl", DURABLE, indirect=True)
def test_writer_killed_mid_stream_loses_nothing_flushed(impl: Impl) -> None:
    kill_writer_and_check(impl.url, impl.reopen())


def test_local_writer_killed_with_tiny_buffers_and_segments(tmp_path: Path) -> None:
    url = f"local://{tmp_path}"
    backend = open_backend(url)
    try:
        kill_writer_and_check(url, backend, small=True)
    finally:
        backend.close()


def kill_writer_and_check(url: str, backend: LogBackend, *, small: bool = False) -> None:
    """Kill -9 a writer that appends and flushes in a loop, then check `backend` holds every record
    it reported flushed, in order, uncorrupted, and takes new appends."""
    rng = random.Random()
    target = rng.randrange(300, 1500)
    proc = subprocess.Popen([sys.executable, "-c", WRITER, url, "crash", *(["small"] if small else [])],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    reported = 0
    for line in proc.stdout:
        reported = int(line)
        if reported >= target:
            break
    assert reported >= target, proc.stderr.read() if proc.stderr else ""
    time.sleep(rng.uniform(0, 0.02))  # land somewhere inside an append or a flush
    os.kill(proc.pid, signal.SIGKILL)
    rest, _ = proc.communicate(timeout=30)
    reported = max([reported, *(int(x) for x in rest.split())])

    log = backend.log("crash", partitions=2)
    ends = log.end_offsets()
    assert sum(ends) >= reported
    got = drain(log.consumer("check"), sum(ends))
    assert len(got) == sum(ends)
    seen = []
    for p, recs in by_partition(got).items():
        assert [r.offset for r in recs] == list(range(len(recs)))
        nums = [int(r.value[:8]) for r in recs]
        assert nums == sorted(nums)  # order within a partition kept
        for r, i in zip(recs, nums, strict=True):
            assert r.value == b"%08d" % i + b"." * 92
            assert r.key == b"k%d" % (i % 7)
            assert p == partition_for(r.key, 2)
        seen += nums
    assert len(seen) == len(set(seen))  # nothing duplicated
    assert set(range(reported)) <= set(seen)  # nothing reported flushed is lost

    log.append(b"after the crash", b"k0")  # the log takes new appends (the dead writer's lock is gone)
    log.flush()
    p = partition_for(b"k0", 2)
    c = log.consumer("after", partitions=[p])
    c.seek(p, ends[p])
    assert [(r.offset, r.value) for r in drain(c, 1)] == [(ends[p], b"after the crash")]


SLOW_READER = """
import json, sys, time
from freshrec.stream.backends import open_backend
url, name = sys.argv[1], sys.argv[2]
c = open_backend(url).log(name).consumer("slow")
while True:
    if c.poll(40, timeout_s=0.5):
        c.commit()
        print(json.dumps(c.position()), flush=True)
    time.sleep(0.002)
"""


@pytest.mark.parametrize("impl", DURABLE, indirect=True)
def test_reader_killed_after_commit_resumes_at_committed_position(impl: Impl) -> None:
    log = impl.backend.log("work", partitions=2)
    fill(log, 1000)
    ends = log.end_offsets()
    target = random.randrange(100, 700)
    proc = subprocess.Popen([sys.executable, "-c", SLOW_READER, impl.url, "work"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    last: dict[int, int] = {}
    for line in proc.stdout:
        last = {int(p): o for p, o in json.loads(line).items()}
        if sum(last.values()) >= target:
            break
    assert sum(last.values()) >= target, proc.stderr.read() if proc.stderr else ""
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=30)

    c = impl.reopen().log("work").consumer("slow")
    committed = c.committed()
    assert all(committed[p] >= last.get(p, 0) for p in range(2))  # no printed commit was lost
    assert c.position() == committed
    rest = drain(c, sum(ends) - sum(committed.values()))
    for p, recs in by_partition(rest).items():
        assert [r.offset for r in recs] == list(range(committed[p], ends[p]))
    assert len(rest) == sum(ends) - sum(committed.values())
    assert c.poll(10, timeout_s=0.2) == []


# ---------------------------------------------------------------------------------------------
# open_backend


def test_open_backend_urls(tmp_path: Path) -> None:
    from freshrec.stream.kafka_log import KafkaBackend
    from freshrec.stream.local_log import LocalBackend

    assert isinstance(open_backend("memory://"), MemoryBackend)
    b = open_backend(f"local://{tmp_path / 'a'}")
    assert isinstance(b, LocalBackend) and b.root == tmp_path / "a"
    b = open_backend(str(tmp_path / "b"))
    assert isinstance(b, LocalBackend) and b.root == tmp_path / "b"
    k = open_backend("kafka://127.0.0.1:1?prefix=pre.")
    assert isinstance(k, KafkaBackend) and k.bootstrap == "127.0.0.1:1" and k.topic_prefix == "pre."
    assert open_backend("kafka://127.0.0.1:1").topic_prefix == "freshrec."
    assert open_backend("kafka://127.0.0.1:1").config.outage_timeout_s == 300.0
    k = open_backend("kafka://127.0.0.1:1?prefix=p.&outage_timeout=inf")
    assert k.topic_prefix == "p." and k.config.outage_timeout_s == float("inf")
    assert open_backend("kafka://127.0.0.1:1?outage_timeout=7.5").config.outage_timeout_s == 7.5
    for bad in ["", "ftp://x", "kafka://", "kafka://h:1?nope=1", "local://host/path", "memory://x",
                "kafka://h:1?outage_timeout=0", "kafka://h:1?outage_timeout=soon", "kafka://h:1?outage_timeout=nan"]:
        with pytest.raises(ConfigError):
            open_backend(bad)


def test_kafka_unreachable_broker_is_a_clear_log_error() -> None:
    from freshrec.stream.kafka_log import KafkaBackend, KafkaLogConfig

    backend = KafkaBackend("127.0.0.1:1", config=KafkaLogConfig(timeout_s=0.5))
    with pytest.raises(LogError, match="127.0.0.1:1"):
        backend.log("nowhere")


# ---------------------------------------------------------------------------------------------
# LocalLog specifics: files, torn tails, segments, the writer lock


def _segments(root: Path, name: str, p: int = 0) -> list[Path]:
    return sorted((root / name / f"p{p}").glob("*.seg"))


@pytest.mark.parametrize("garbage", ["partial-header", "partial-body", "bad-crc", "zeros", "huge-length"])
def test_local_torn_tail_is_ignored_then_truncated(tmp_path: Path, garbage: str) -> None:
    from freshrec.stream.local_log import LocalBackend

    b = LocalBackend(tmp_path)
    log = b.log("torn")
    fill(log, 10)
    b.close()
    seg = _segments(tmp_path, "torn")[-1]
    good_size = seg.stat().st_size
    frame = bytes(seg.read_bytes()[:good_size // 10])  # a copy of one valid 14..16-byte record
    tail = {
        "partial-header": frame[:6],
        "partial-body": frame[:-3],
        "bad-crc": frame[:4] + bytes([frame[4] ^ 0xFF]) + frame[5:],
        "zeros": b"\x00" * 64,
        "huge-length": (500 << 20).to_bytes(4, "little") + frame[4:],
    }[garbage]
    with open(seg, "ab") as f:
        f.write(tail)

    reader = LocalBackend(tmp_path).log("torn")  # a reader never returns the garbage
    assert reader.end_offsets() == [10]
    c = reader.consumer("g")
    assert [r.value for r in drain(c, 10)] == [b"v%06d" % i for i in range(10)]
    assert c.poll(10, timeout_s=0.1) == []

    writer_b = LocalBackend(tmp_path)
    writer = writer_b.log("torn")
    assert writer.append(b"fresh", b"k") == (0, 10)  # the writer truncates the tail, then appends
    writer.flush()
    assert seg.stat().st_size == good_size + 10 + 1 + 5
    assert [(r.offset, r.value) for r in drain(c, 1)] == [(10, b"fresh")]
    writer_b.close()


def test_local_segments_roll_seek_and_reopen(tmp_path: Path) -> None:
    from freshrec.stream.local_log import LocalBackend, LocalLogConfig

    cfg = LocalLogConfig(segment_bytes=4096, buffer_bytes=512)
    b = LocalBackend(tmp_path, config=cfg)
    log = b.log("rolling", partitions=2)
    expected = fill(log, 1500)
    assert len(_segments(tmp_path, "rolling", 0)) > 2
    c = log.consumer("g")
    got = drain(c, 1500)
    for p in range(2):
        assert [r.value for r in got if r.partition == p] == [v for (q, _k, v) in expected if q == p]
    n0 = log.end_offsets()[0]
    c.seek(0, n0 - 3)  # into the last segment
    c.seek(0, 123)  # back into an early one
    assert [r.offset for r in drain(c, 3)] == [123, 124, 125]
    b.close()

    b2 = LocalBackend(tmp_path, config=cfg)
    log2 = b2.log("rolling")
    assert log2.partitions == 2
    assert log2.end_offsets()[0] == n0
    assert log2.append(b"more", b"k0")[1] == log2.end_offsets()[partition_for(b"k0", 2)] - 1
    log2.flush()
    b2.close()


def test_local_seek_uses_the_sparse_index(tmp_path: Path) -> None:
    from freshrec.stream.local_log import LocalBackend
    from freshrec.stream.local_segments import INDEX_STRIDE

    log = LocalBackend(tmp_path).log("big")
    n = 3 * INDEX_STRIDE + 17
    fill(log, n)
    c = LocalBackend(tmp_path).log("big").consumer("g")  # another backend: builds its own index
    for target in [n, INDEX_STRIDE, 2 * INDEX_STRIDE - 1, 0, 3 * INDEX_STRIDE + 5, n - 1]:
        c.seek(0, target)
        want = [b"v%06d" % i for i in range(target, min(target + 3, n))]
        assert [r.value for r in c.poll(3)] == want
    with pytest.raises(OffsetOutOfRange):
        c.seek(0, n + 1)
    with pytest.raises(OffsetOutOfRange):
        c.seek(0, -1)


def test_local_corruption_inside_a_sealed_segment_is_an_error(tmp_path: Path) -> None:
    from freshrec.stream.local_log import LocalBackend, LocalLogConfig

    b = LocalBackend(tmp_path, config=LocalLogConfig(segment_bytes=2048))
    fill(b.log("bad"), 500)
    b.close()
    first = _segments(tmp_path, "bad")[0]
    data = bytearray(first.read_bytes())
    data[len(data) // 2] ^= 0xFF
    first.write_bytes(bytes(data))
    c = LocalBackend(tmp_path).log("bad").consumer("g")
    with pytest.raises(LogError, match="corrupt"):
        drain(c, 500)


def test_local_one_writer_at_a_time(tmp_path: Path) -> None:
    from freshrec.stream.local_log import LocalBackend

    a = LocalBackend(tmp_path).log("solo")
    a.append(b"a")
    other = LocalBackend(tmp_path).log("solo")
    with pytest.raises(LogError, match="already has a writer"):
        other.append(b"b")
    code = "from freshrec.stream.backends import open_backend; import sys\n" \
           "log = open_backend(sys.argv[1]).log('solo')\n" \
           "try:\n    log.append(b'c')\nexcept Exception as e:\n    print(type(e).__name__, e)\n"
    assert run_py(code, f"local://{tmp_path}").startswith("LogError")
    assert [r.value for r in drain(other.consumer("g"), 1, wait_s=0.5)] == []  # a: not flushed yet
    a.close()  # flushes and releases the lock
    assert other.append(b"b") == (0, 1)
    other.flush()
    assert [r.value for r in drain(other.consumer("g"), 2)] == [b"a", b"b"]


def test_local_commits_of_one_group_merge_across_consumers(tmp_path: Path) -> None:
    from freshrec.stream.local_log import LocalBackend

    log = LocalBackend(tmp_path).log("merge", partitions=2)
    fill(log, 40)
    c0 = log.consumer("g", partitions=[0])
    c1 = log.consumer("g", partitions=[1])
    drain(c0, 3)
    drain(c1, 5)
    c0.commit({0: 3})
    c1.commit({1: 5})
    assert log.consumer("g").committed() == {0: 3, 1: 5}


def test_local_bad_names_are_refused(tmp_path: Path) -> None:
    from freshrec.stream.local_log import LocalBackend

    b = LocalBackend(tmp_path)
    for bad in ["", "../up", "a/b", "sp ace", ".hidden"]:
        with pytest.raises(LogError):
            b.log(bad)
    log = b.log("ok")
    with pytest.raises(LogError):
        log.consumer("")
    assert log.consumer("a/b/../c").committed() == {0: 0}  # odd group names are escaped, not refused
    with pytest.raises(LogError):
        log.consumer("g", partitions=[3])

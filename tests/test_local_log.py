"""The local log's batch forms: `poll_blocks` reads what `poll` reads, `append_many` writes what
`append` writes, byte for byte."""

from __future__ import annotations

import random

import pytest

from freshrec.errors import LogError
from freshrec.stream.local_log import LocalBackend, LocalLogConfig, RecordBlock
from freshrec.stream.local_segments import MAX_KEY_BYTES, encode, encode_many


def _records(n: int, seed: int) -> list[tuple[bytes | None, bytes]]:
    rng = random.Random(seed)
    out: list[tuple[bytes | None, bytes]] = []
    for i in range(n):
        key = None if rng.random() < 0.3 else f"k{rng.randrange(50)}".encode()
        out.append((key, bytes(rng.randrange(256) for _ in range(rng.randrange(0, 300))) + b"%d" % i))
    return out


def _all_files(root) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.seg"))}


def test_encode_many_equals_encode():
    recs = _records(300, 1) + [(b"", b""), (None, b""), (b"k" * MAX_KEY_BYTES, b"v")]
    assert encode_many(recs) == [encode(v, k) for k, v in recs]
    with pytest.raises(LogError):
        encode_many([(b"k", b"v"), (b"k" * (MAX_KEY_BYTES + 1), b"v")])


@pytest.mark.parametrize("partitions", [1, 3])
def test_append_many_writes_what_append_writes(tmp_path, partitions):
    cfg = LocalLogConfig(segment_bytes=4096, buffer_bytes=1000)  # rolls and write-outs inside a call
    recs = _records(500, 2)
    a = LocalBackend(tmp_path / "a", config=cfg).log("x", partitions=partitions)
    b = LocalBackend(tmp_path / "b", config=cfg).log("x", partitions=partitions)
    for key, value in recs:
        a.append(value, key=key)
    for i in range(0, len(recs), 77):
        b.append_many(recs[i : i + 77])
    assert a.end_offsets() == b.end_offsets()
    a.flush()
    b.flush()
    assert _all_files(tmp_path / "a" / "x") == _all_files(tmp_path / "b" / "x")
    with pytest.raises(LogError):
        b.append_many([(b"k", b"v"), (b"k" * (MAX_KEY_BYTES + 1), b"v")])
    assert a.end_offsets() == b.end_offsets()  # nothing of a refused batch was queued
    a.close()
    b.close()


@pytest.mark.parametrize("max_records", [1, 7, 1000])
def test_poll_blocks_reads_what_poll_reads(tmp_path, max_records):
    cfg = LocalLogConfig(segment_bytes=2048)
    log = LocalBackend(tmp_path, config=cfg).log("x", partitions=2)
    recs = _records(400, 3)
    log.append_many(recs)
    log.flush()
    want = [(r.partition, r.offset, r.value) for r in log.consumer("a").poll(10**6)]
    c = log.consumer("b")
    got = []
    while True:
        blocks = c.poll_blocks(max_records)
        if not blocks:
            break
        assert sum(len(b.spans) for b in blocks) <= max_records
        for b in blocks:
            assert isinstance(b, RecordBlock) and b.spans.shape == (len(b.spans), 2)
            got += [(b.partition, b.offset + i, b.data[s:e]) for i, (s, e) in enumerate(b.spans.tolist())]
    assert sorted(got) == sorted(want) and len(got) == len(recs)
    assert c.position() == dict(enumerate(log.end_offsets()))
    # a block poll after a seek starts there, and one past the end is empty
    c.seek(1, 3)
    c.seek(0, log.end_offsets()[0])
    (b,) = c.poll_blocks(1)
    assert (b.partition, b.offset) == (1, 3)
    log.close()

"""The block poll (`Consumer.poll_blocks`) reads what `poll` reads: the same records, values and
positions, the same errors at the same record, on every backend, across segment boundaries,
quarantined offsets, damaged records, torn tails and partitions; and the online loop, which
trains from it, ends with the very parameters of the `poll` path."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch

from freshrec.errors import CorruptLogError
from freshrec.model import FeatureSpec, SlotSpec
from freshrec.stream.events import Example, encode_example, encode_examples
from freshrec.stream.local_log import LocalBackend, LocalLogConfig
from freshrec.stream.log import MemoryLog, Record, RecordBlock, blocks_of, partition_for
from freshrec.table import Adagrad
from freshrec.train.examples import ExampleSchema, decode_blocks, decode_dataset
from freshrec.train.online import OnlineConfig, OnlineTrainer

CFG = LocalLogConfig(segment_bytes=4096)
SCHEMA = ExampleSchema(slots=("user_id", "item_id"), dense=("x",), label="click")
GARBAGE = [b"", b"not json", b'{"request_id": 3}', b"\xff\xfe"]


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _values(n: int, seed: int) -> list[tuple[bytes, bytes]]:
    """(key, value) of n records: examples (some in batch form), a few garbage values among them."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        ex = Example(request_id=f"r{i}", user_id=rng.randrange(200), item_id=rng.randrange(2**63),
                     sparse={}, dense={"x": rng.random()}, labels={"click": float(rng.random() < 0.4)},
                     sample_rate=1.0, ts=1e9 + i)
        if rng.random() < 0.03:
            value = rng.choice(GARBAGE)
        elif rng.random() < 0.05:
            ex2 = Example(request_id=f"r{i}b", user_id=1, item_id=2, sparse={}, dense={}, labels={},
                          sample_rate=1.0, ts=1e9 + i)
            value = encode_examples([ex, ex2])
        else:
            value = encode_example(ex)
        out.append((f"r{i}".encode(), value))
    return out


def _outcome(consumer, max_records: int, *, blocks: bool):
    """One poll as comparable data: ("ok", [(partition, offset, value)], position) or
    ("error", type, path, byte offset, position)."""
    try:
        if blocks:
            got = consumer.poll_blocks(max_records)
            assert all(isinstance(b, RecordBlock) and b.spans.dtype == np.int64 for b in got)
            recs = [(b.partition, b.offset + i, v) for b in got for i, v in enumerate(b.values())]
        else:
            recs = [(r.partition, r.offset, r.value) for r in consumer.poll(max_records)]
    except CorruptLogError as e:
        return ("error", type(e), e.path, e.offset, consumer.position())
    return ("ok", recs, consumer.position())


def _lockstep(log, sizes: list[int]) -> list:
    """Poll two fresh consumers in lockstep, one with `poll`, one with `poll_blocks`, until drained
    or stuck at an error (three in a row); assert every outcome is the same; return them."""
    a, b = log.consumer("by-record"), log.consumer("by-block")
    seen: list = []
    for k in range(10_000):
        m = sizes[k % len(sizes)]
        want, got = _outcome(a, m, blocks=False), _outcome(b, m, blocks=True)
        assert got == want, f"poll {k} (max_records {m})"
        seen.append(want)
        if want[0] == "ok" and not want[1] and a.at_end():
            break
        if len(seen) >= 3 and all(o[0] == "error" for o in seen[-3:]):
            break
    else:
        raise AssertionError("neither drained nor stuck")
    a.close()
    b.close()
    return seen


def _segments(root: Path, p: int) -> list[Path]:
    return sorted((root / "ex" / f"p{p}").glob("*.seg"))


def _frames(path: Path) -> list[tuple[int, int]]:
    data, out, pos = path.read_bytes(), [], 0
    while pos < len(data):
        end = pos + 8 + int.from_bytes(data[pos : pos + 4], "little")
        out.append((pos, end))
        pos = end
    return out


def _flip(path: Path, start: int, end: int, rng: random.Random) -> None:
    data = bytearray(path.read_bytes())
    data[rng.randrange(start, end)] ^= rng.randrange(1, 256)
    path.write_bytes(bytes(data))


def _damaged_log(root: Path, *, repair: bool) -> tuple[list[tuple[bytes, bytes]], set[tuple[int, int]]]:
    """Log "ex" of 3 partitions over many segments, with damaged records in sealed segments of
    partitions 0 and 1 (moved aside by `repair` when asked) and a torn tail on partition 2."""
    recs = _values(1500, seed=4)
    b = LocalBackend(root, config=CFG)
    b.log("ex", partitions=3).append_many(recs)
    b.close()
    rng = random.Random(7)
    hit = set()
    for p in (0, 1):
        segs = _segments(root, p)
        assert len(segs) >= 5
        for seg in (segs[1], segs[3]):
            k = rng.randrange(len(_frames(seg)))
            _flip(seg, *_frames(seg)[k], rng)
            hit.add((p, int(seg.stem) + k))
    last = _segments(root, 2)[-1]
    start, end = _frames(last)[-1]
    with open(last, "r+b") as f:
        f.truncate(rng.randrange(start + 1, end))  # a writer killed mid-record
    if repair:
        log = LocalBackend(root, config=CFG).log("ex", partitions=3)
        moved = log.repair()
        assert {(int(m.segment.parent.name[1:]), m.span.first) for m in moved} == hit
        log.close()
    return recs, hit


@pytest.mark.parametrize("sizes", [[1], [7, 64], [1000], [4096, 3]])
def test_block_poll_over_quarantined_offsets_segments_partitions_and_a_torn_tail(tmp_path, sizes):
    recs, lost = _damaged_log(tmp_path, repair=True)
    log = LocalBackend(tmp_path, config=CFG).log("ex", partitions=3)
    seen = _lockstep(log, sizes)
    read = [r for o in seen if o[0] == "ok" for r in o[1]]
    assert all(o[0] == "ok" for o in seen)
    assert {(p, off) for p, off, _ in read}.isdisjoint(lost)
    assert len(read) == len(recs) - len(lost) - 1  # all but the quarantined and the torn last one
    for p in range(3):
        want = [v for k, v in recs if partition_for(k, 3) == p]
        want = [v for o, v in enumerate(want[: -1 if p == 2 else None]) if (p, o) not in lost]
        assert [v for q, _, v in sorted(read) if q == p] == want, p
    log.close()


@pytest.mark.parametrize("sizes", [[1], [50], [10_000]])
def test_block_poll_refuses_a_damaged_record_as_poll_does(tmp_path, sizes):
    _recs, lost = _damaged_log(tmp_path, repair=False)
    log = LocalBackend(tmp_path, config=CFG).log("ex", partitions=3)
    seen = _lockstep(log, sizes)
    errors = [o for o in seen if o[0] == "error"]
    assert errors, "a damaged record was read past"
    first_bad = {p: min(o for q, o in lost if q == p) for p in (0, 1)}
    for _, kind, path, _byte, pos in errors:
        assert kind is CorruptLogError and path
        p = int(Path(path).parent.name[1:])
        assert pos[p] == first_bad[p]  # stopped at the bad record, every time
    log.close()


def test_block_poll_of_the_memory_log_groups_poll_records():
    log = MemoryLog("ex", partitions=3)
    recs = _values(700, seed=1)
    for key, value in recs:
        log.append(value, key=key)
    seen = _lockstep(log, [1, 33, 500])
    assert sum(len(o[1]) for o in seen) == len(recs)


def test_blocks_of_splits_at_partition_changes_and_offset_gaps():
    records = [Record(0, 7, b"k", b"ab"), Record(0, 8, None, b"c"), Record(1, 0, None, b""),
               Record(1, 2, None, b"xyz"), Record(0, 9, None, b"d")]
    blocks = blocks_of(records)
    assert [(b.partition, b.offset, len(b)) for b in blocks] == [(0, 7, 2), (1, 0, 1), (1, 2, 1), (0, 9, 1)]
    assert [r for b in blocks for r in b.records()] == [Record(r.partition, r.offset, None, r.value)
                                                         for r in records]
    assert blocks_of([]) == []


def test_decode_blocks_equals_decode_dataset_with_bad_records_at_their_positions(tmp_path):
    recs = _values(900, seed=2)
    log = LocalBackend(tmp_path, config=CFG).log("ex", partitions=2)
    log.append_many(recs)
    log.flush()
    records = log.consumer("r").poll(10_000)
    blocks = log.consumer("b").poll_blocks(10_000)
    assert len(blocks) > 2  # several blocks (segments, partitions): the joined-buffer path
    want, want_bad = decode_dataset(records, SCHEMA)
    got, got_bad = decode_blocks(blocks, SCHEMA)
    assert want_bad and [(r.partition, r.offset, r.value, why) for r, why in got_bad] == \
        [(r.partition, r.offset, r.value, why) for r, why in want_bad]
    assert len(got) == len(want) > 900
    for k in ("user_id", "item_id"):
        assert got.sparse[k].tobytes() == want.sparse[k].tobytes()
    for a, b in ((got.dense, want.dense), (got.label, want.label), (got.ts, want.ts)):
        assert a.tobytes() == b.tobytes()
    one, one_bad = decode_blocks(blocks[:1], SCHEMA)  # a single block: its bytes as read
    ref, ref_bad = decode_dataset(blocks[0].records(), SCHEMA)
    assert one.sparse["item_id"].tobytes() == ref.sparse["item_id"].tobytes() and one_bad == ref_bad


def _state(tr: OnlineTrainer) -> dict[str, bytes]:
    out = {k: v.tobytes() for k, v in tr.dense_state().items()}
    for slot, t in tr.tables.items():
        arr = t.state()[1]
        o = np.argsort(arr["ids"])
        out[f"{slot}.ids"], out[f"{slot}.rows"] = arr["ids"][o].tobytes(), arr["rows"][o].tobytes()
    return out


@pytest.mark.parametrize("prefetch", [0, 2])
def test_the_loop_trains_the_same_parameters_from_blocks_as_from_poll(tmp_path, prefetch):
    _damaged_log(tmp_path, repair=True)
    spec = FeatureSpec(slots=(SlotSpec(name="user_id"), SlotSpec(name="item_id")), dense_dim=1, dim=4,
                       optimizer=Adagrad(lr=0.05))
    log = LocalBackend(tmp_path, config=CFG).log("ex", partitions=3)

    def train(columnar: bool) -> OnlineTrainer:
        config = OnlineConfig(batch_size=100, columnar=columnar, whole_batches=True, prefetch=prefetch)
        tr = OnlineTrainer.from_spec(spec, config, hidden=(8,), seed=1, dense=("x",))
        tr.run(log.consumer(f"t-{columnar}-{prefetch}"), until_idle=True)
        return tr

    blocks, records = train(True), train(False)
    assert blocks.step == records.step > 10
    assert blocks.positions == records.positions
    assert blocks.ps.bad_records == records.ps.bad_records > 0
    assert _state(blocks) == _state(records)
    log.close()

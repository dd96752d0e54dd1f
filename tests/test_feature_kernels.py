"""The impressions kernel writes exactly `encode_feature`'s bytes and the writer's keys."""

from __future__ import annotations

import json

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from freshrec.serve.writers import feature_records, impression_frames
from freshrec.stream.events import FeatureEvent, encode_feature

I64 = st.integers(-(2**63), 2**63 - 1)
NAMES = st.text(min_size=1, max_size=12)
FLOATS = st.floats(allow_nan=False, allow_infinity=False, width=64)


def _unframe(buf: bytes, ends: list[int], key_lens: list[int]) -> list[tuple[bytes, bytes]]:
    out, start = [], 0
    for end, kl in zip(ends, key_lens, strict=True):
        body = buf[start + 10 : end]
        out.append((body[:kl], body[kl:]))
        start = end
    return out


@settings(max_examples=150, deadline=None)
@given(
    rid=st.text(min_size=1, max_size=40),
    user=I64,
    items=st.lists(I64, min_size=0, max_size=130),
    sparse=st.dictionaries(NAMES, st.lists(I64, max_size=4), max_size=3),
    dense=st.dictionaries(NAMES, FLOATS, max_size=3),
    ts=st.floats(min_value=0, max_value=1e11, exclude_max=True),
)
def test_impression_frames_hold_encode_features_bytes_and_the_keys(rid, user, items, sparse, dense, ts):
    block = impression_frames(rid, user, items, sparse, dense, ts)
    assert block is not None
    buf, ends, key_lens = block
    got = _unframe(buf.tobytes(), ends.tolist(), key_lens.tolist())
    want = [
        (f"{rid}:{i}".encode(), encode_feature(FeatureEvent(f"{rid}:{i}", user, iid, sparse, dense, ts)))
        for i, iid in enumerate(items)
    ]
    assert got == want
    assert [v for _, v in got] == feature_records(rid, user, items, sparse, dense, ts)


def test_big_and_negative_ids_and_dense_floats_round_trip():
    items = [0, -1, 2**63 - 1, -(2**63), 10**17, -(10**18) + 7]
    dense = {"a": 0.1, "b": 1e-300, "c": -2.5e38, "d": 1.0}
    buf, ends, key_lens = impression_frames('r\u00e9"q', 2**63 - 1, items, {"s": [-(2**63), 5]}, dense, 1.5)
    recs = _unframe(buf.tobytes(), ends.tolist(), key_lens.tolist())
    for pos, (key, value) in enumerate(recs):
        ev = json.loads(value)
        assert key == f'r\u00e9"q:{pos}'.encode()
        assert ev["item_id"] == items[pos] and ev["dense"] == dense and ev["user_id"] == 2**63 - 1


def _segment_bytes(root) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file() and p.suffix == ".seg")


def test_the_features_logger_writes_the_same_log_by_blocks_as_record_by_record(tmp_path):
    """The block path (frames by the kernels, `append_frames`) and `append_many` leave the same
    bytes on disk, and the records decode to the impressions served."""
    from freshrec.serve.writers import FeatureLogger
    from freshrec.stream.events import decode_feature
    from freshrec.stream.local_log import LocalBackend

    rng = np.random.default_rng(0)
    served = [
        (f"r{k}", int(rng.integers(-(2**62), 2**62)), rng.integers(-(2**63), 2**63 - 1, n).tolist())
        for k, n in enumerate([1, 100, 7, 130, 3])
    ]
    sparse, dense = {"category": [3, -4]}, {"price": 0.1, "x": -2.5e-7}
    roots = []
    for block in (True, False):
        root = tmp_path / ("block" if block else "each")
        backend = LocalBackend(root)
        log = backend.log("features")
        writer = FeatureLogger(log)
        if block:
            assert log.partitions == 1 and callable(log.append_frames)  # the block path is taken
        else:  # the same logger without the block path: a log that only offers append_many
            writer.log = _WithoutFrames(log)
        for rid, user, items in served:
            writer.submit((rid, user, items, sparse, dense, None, None, 1700000000.25))
        writer.close()
        records = log.consumer("check").poll(10_000)
        events = [decode_feature(r.value) for r in records]
        assert [(e.request_id, e.user_id, e.item_id) for e in events] == [
            (f"{rid}:{i}", user, iid) for rid, user, items in served for i, iid in enumerate(items)
        ]
        assert all(e.sparse == sparse and e.dense == dense for e in events)
        backend.close()
        roots.append(root)
    assert _segment_bytes(roots[0]) == _segment_bytes(roots[1]) != b""


class _WithoutFrames:
    def __init__(self, log):
        self._log = log
        self.partitions = log.partitions
        self.append_many = log.append_many
        self.append = log.append
        self.flush = log.flush


def test_a_block_of_several_requests_is_each_requests_frames_in_order():
    from freshrec.serve.writers import impression_block

    reqs = [
        ("a", 1, [5, -12], {}, {}, 1.5),
        ("b\u00e9", -(2**63), [], {"s": [1]}, {"d": 0.3}, 2.0),
        ("c", 2**63 - 1, list(range(12)), {"s": [-1, 2]}, {}, 1e10),
    ]
    buf, ends, key_lens = impression_block(reqs)
    got = _unframe(buf.tobytes(), ends.tolist(), key_lens.tolist())
    want = [
        (f"{rid}:{i}".encode(), encode_feature(FeatureEvent(f"{rid}:{i}", user, iid, sp, de, ts)))
        for rid, user, items, sp, de, ts in reqs
        for i, iid in enumerate(items)
    ]
    assert got == want and len(got) == 14


class _CountingFrames(_WithoutFrames):
    """The local log, counting its block writes."""

    def __init__(self, log):
        super().__init__(log)
        self.blocks = 0

    def append_frames(self, frames, ends, *, partition=0):
        self.blocks += 1
        self._log.append_frames(frames, ends, partition=partition)


def test_the_features_logger_writes_a_lingers_requests_as_one_block_and_flush_cuts_the_linger_short(tmp_path):
    """Requests submitted while the writer lingers go to the log in one block write, and `flush()`
    does not wait out the linger: it returns once they are appended and flushed."""
    import time

    from freshrec.serve.writers import FeatureLogger
    from freshrec.stream.local_log import LocalBackend

    backend = LocalBackend(tmp_path)
    log = backend.log("features")
    writer = FeatureLogger(log, linger_s=60.0)  # longer than the test may take: only flush() ends it
    writer.log = counting = _CountingFrames(log)
    for k in range(3):
        writer.submit((f"r{k}", k, [10 * k, 10 * k + 1], {}, {}, None, None, 1.0))
        time.sleep(0.05)  # the writer woke for the first and lingers
    t0 = time.monotonic()
    assert writer.flush(timeout_s=30.0)
    assert time.monotonic() - t0 < 10.0
    assert counting.blocks == 1 and writer.logged == 6
    keys = [r.key for r in log.consumer("check").poll(100)]
    assert keys == [f"r{k}:{i}".encode() for k in range(3) for i in range(2)]
    writer.close()
    backend.close()

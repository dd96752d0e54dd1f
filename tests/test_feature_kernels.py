"""The impressions kernel writes exactly `encode_feature`'s bytes and the writer's keys."""

from __future__ import annotations

import json

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

"""ShardedTable behaves as one EmbeddingTable; deltas encode, decode and compact exactly."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from freshrec.errors import ConfigError, EventError
from freshrec.ps.delta import Delta, DenseUpdate, compact, decode, encode
from freshrec.ps.sharded import ShardedTable
from freshrec.table import Adagrad, EmbeddingTable, TableConfig


@pytest.mark.parametrize("shards", [1, 2, 3])
def test_sharded_table_equals_single_table(shards):
    cfg = TableConfig(name="u", dim=4, optimizer=Adagrad(lr=0.1), min_count=2, ttl_s=50.0)
    one, many = EmbeddingTable(cfg), ShardedTable(cfg, shards=shards)
    rng = np.random.default_rng(shards)
    for step in range(30):
        ids = rng.integers(-300, 300, 512)
        g = rng.normal(size=(512, 4)).astype(np.float32)
        one.apply_gradients(ids, g, now=float(step * 3))
        many.apply_gradients(ids, g, now=float(step * 3))
    assert one.evict_expired(120.0) == many.evict_expired(120.0)
    q = np.arange(-310, 310)
    np.testing.assert_array_equal(many.lookup(q), one.lookup(q))
    assert len(many) == len(one)
    a, b = one.take_touched(), many.take_touched()
    assert set(a.ids.tolist()) == set(b.ids.tolist())
    assert set(a.evicted.tolist()) == set(b.evicted.tolist())
    many.check_invariants()
    meta, arrays = many.state()
    back = ShardedTable.from_state(meta, arrays)
    np.testing.assert_array_equal(back.lookup(q), many.lookup(q))


@pytest.mark.parametrize("shards", [1, 3])
def test_capacity_is_the_whole_tables_across_its_shards(shards):
    cfg = TableConfig(name="u", dim=4, capacity=100)
    table = ShardedTable(cfg, shards=shards)
    assert sum(t.config.capacity for t in table.shards) == 100
    rng = np.random.default_rng(0)
    for step in range(20):
        table.apply_gradients(rng.integers(0, 10_000, 256), np.ones((256, 4), np.float32), now=float(step))
    assert len(table) <= 100 and len(table) >= 95  # every shard full, none past its share
    table.check_invariants()
    with pytest.raises(ConfigError, match="less than its 3 shards"):
        ShardedTable(TableConfig(name="u", dim=4, capacity=2), shards=3)


f32 = st.floats(-1e3, 1e3, width=32)


@settings(max_examples=50, deadline=None)
@given(n=st.integers(0, 20), dim=st.integers(1, 5), nd=st.integers(0, 5), half=st.booleans())
def test_delta_codec_round_trip(n, dim, nd, half):
    rng = np.random.default_rng(n * 31 + dim)
    ids = rng.integers(-(2**63), 2**63 - 1, n, dtype=np.int64)
    emb = rng.normal(size=(n, dim)).astype(np.float16 if half else np.float32)
    d = Delta(table="t", version=7, ids=ids, embeddings=emb, deleted=np.arange(nd, dtype=np.int64), ts=12.5)
    buf = encode(d)
    assert len(buf) <= n * (8 + (2 if half else 4) * dim) + nd * 8 + 200
    e = decode(buf)
    assert (e.table, e.version, e.ts) == ("t", 7, 12.5)
    np.testing.assert_array_equal(e.ids, ids)
    np.testing.assert_array_equal(e.embeddings, emb)
    np.testing.assert_array_equal(e.deleted, d.deleted)


def test_dense_codec_round_trip_and_malformed_frames_are_refused():
    u = DenseUpdate(version=3, tensors={"fc.weight": np.ones((2, 3), np.float32), "b": np.arange(4)}, ts=1.0)
    v = decode(encode(u))
    assert v.version == 3 and set(v.tensors) == {"fc.weight", "b"}
    np.testing.assert_array_equal(v.tensors["b"], np.arange(4))
    good = encode(Delta(table="t", version=1, ids=np.arange(3), embeddings=np.zeros((3, 2), np.float32)))
    for bad in (b"", b"XXXX\x00\x00\x00\x00", good[:-1], good + b"x", good[:8] + b"[" + good[9:]):
        with pytest.raises(EventError):
            decode(bad)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.lists(st.integers(0, 9), unique=True, max_size=6),
            st.lists(st.integers(0, 9), unique=True, max_size=4),
        ),
        min_size=1,
        max_size=6,
    )
)
def test_compact_has_the_effect_of_applying_in_order(ops):
    state: dict[int, float] = {}
    deltas = []
    for v, (ups, dels) in enumerate(ops):
        dels = [k for k in dels if k not in ups]
        emb = np.array([[float(v * 10 + k)] for k in ups], np.float32).reshape(len(ups), 1)
        deltas.append(
            Delta(
                table="t",
                version=v,
                ids=np.array(ups, np.int64),
                embeddings=emb,
                deleted=np.array(dels, np.int64),
            )
        )
        for k in ups:
            state[k] = float(v * 10 + k)
        for k in dels:
            state.pop(k, None)
    c = compact(deltas)
    replay: dict[int, float] = {}
    all_ids = {k for ups, dels in ops for k in ups + dels}
    for k, e in zip(c.ids.tolist(), c.embeddings[:, 0].tolist(), strict=True):
        replay[k] = e
    assert replay == state
    assert set(c.deleted.tolist()) == all_ids - set(state) & set(c.deleted.tolist())
    assert not set(c.deleted.tolist()) & set(state)

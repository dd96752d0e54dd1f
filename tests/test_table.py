"""The tables against the dict oracle (`freshrec.checks.oracle.DictTable`): random sequences of
lookup / update / remove / expire / take-touched / snapshot-restore, adversarial ids, and the
no-shared-row invariant at every step, for every in-process implementation; then EmbeddingTable's
own parts (index, row storage, filter, eviction order)."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from freshrec.checks.oracle import DIM, Op, oracle_config, run_ops
from freshrec.errors import ConfigError, CorruptSnapshotError
from freshrec.ps.sharded import ShardedTable
from freshrec.table import SGD, Adagrad, EmbeddingTable, Initializer, TableConfig
from freshrec.table import _index_kernels as K
from freshrec.table.index import CuckooIndex

I64_MIN, I64_MAX = -(2**63), 2**63 - 1


def _mix64_np(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.uint64)
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _bucket_zero_ids(n: int) -> np.ndarray:
    """Ids whose first hash puts them in bucket 0 for every index of up to 4096 buckets."""
    rng = np.random.default_rng(7)
    cand = rng.integers(I64_MIN, I64_MAX, size=8_000_000, dtype=np.int64, endpoint=True)
    h = _mix64_np(cand.view(np.uint64) ^ np.uint64(0x9E3779B97F4A7C15)) >> np.uint64(32)
    hits = cand[h < np.uint64(1 << 20)]
    assert hits.shape[0] >= n
    return hits[:n]


SAME_BUCKET = _bucket_zero_ids(40)
EXTREMES = [0, -1, 1, I64_MIN, I64_MAX, I64_MIN + 1, I64_MAX - 1]


def test_adversarial_ids_really_share_bucket_zero():
    for nb in (1, 7, 64, 4096):
        b = [K.buckets_of(int(k), np.uint64(nb))[0] for k in SAME_BUCKET[:10]]
        assert b == [0] * 10


ids_strategy = st.one_of(
    st.sampled_from(EXTREMES),
    st.integers(0, 30),  # sequential / small
    st.integers(-30, -1),  # negative
    st.sampled_from([int(x) for x in SAME_BUCKET]),  # all in one bucket under the first hash
    st.integers(I64_MIN, I64_MAX),
)


configs = st.builds(
    lambda min_count, ttl, cap, ev: oracle_config(min_count=min_count, ttl_s=ttl, capacity=cap, eviction=ev),
    st.sampled_from([1, 1, 2, 3]),
    st.sampled_from([None, 5.0, 20.0]),
    st.sampled_from([None, None, 6, 25]),
    st.sampled_from(["lru", "lfu"]),
)


IMPLEMENTATIONS = {
    "EmbeddingTable": (EmbeddingTable, EmbeddingTable.from_state),
    "ShardedTable-1": (lambda c: ShardedTable(c, shards=1), ShardedTable.from_state),
    "ShardedTable-3": (lambda c: ShardedTable(c, shards=3), ShardedTable.from_state),
}


def _op(data: st.DataObject) -> Op:
    kinds = ["update", "update", "update", "lookup", "expire", "remove", "take", "snapshot"]
    kind = data.draw(st.sampled_from(kinds))
    if kind == "update":
        ids = data.draw(st.lists(ids_strategy, min_size=1, max_size=25))
        row = st.lists(st.integers(-3, 3), min_size=DIM, max_size=DIM).map(tuple)
        grads = data.draw(st.lists(row, min_size=len(ids), max_size=len(ids)))
        return Op("update", tuple(ids), tuple(grads), data.draw(st.integers(0, 4)))
    if kind == "lookup":
        return Op("lookup", tuple(data.draw(st.lists(ids_strategy, max_size=25))))
    if kind == "expire":
        return Op("expire", dt=data.draw(st.integers(0, 30)))
    if kind == "remove":
        return Op("remove", tuple(data.draw(st.lists(ids_strategy, max_size=10))))
    return Op(kind)


# every in-process implementation of the table contract (the Ray one: tests/test_table_contract.py)
@pytest.mark.parametrize("impl", sorted(IMPLEMENTATIONS))
@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cfg=configs, data=st.data())
def test_table_matches_dict_oracle(impl: str, cfg: TableConfig, data: st.DataObject) -> None:
    # several shards cap and evict per shard, not over the whole table as the oracle does
    assume(cfg.capacity is None or impl != "ShardedTable-3")
    make, load = IMPLEMENTATIONS[impl]
    ops = [_op(data) for _ in range(data.draw(st.integers(1, 30), label="steps"))]
    run_ops(make(cfg), cfg, ops, lambda t: load(*t.state()))


def test_growth_keeps_every_id_and_no_shared_rows():
    rng = np.random.default_rng(1)
    ids = np.unique(rng.integers(I64_MIN, I64_MAX, 300_000, dtype=np.int64))
    ids = np.concatenate([ids, np.array(EXTREMES, np.int64), SAME_BUCKET, np.arange(-1000, 1000)])
    ids = np.unique(ids)
    table = EmbeddingTable(
        TableConfig(
            name="g", dim=2, optimizer=SGD(lr=1.0), initial_capacity=8, initializer=Initializer(kind="zeros")
        )
    )
    for chunk in np.array_split(rng.permutation(ids), 37):
        grads = np.repeat(chunk.astype(np.float32)[:, None] % 1000, 2, axis=1)
        table.apply_gradients(chunk, grads, now=0.0)
        table.check_invariants()
    assert len(table) == ids.shape[0]
    got = table.lookup(ids)
    np.testing.assert_array_equal(got[:, 0], -(ids.astype(np.float32) % 1000))
    assert table._index.rehashes >= 5


def test_index_rehash_on_failed_displacement_keeps_entries():
    ix = CuckooIndex(4, max_load=0.98)
    keys = SAME_BUCKET[:30]  # all collide in bucket 0 under the first hash
    ix.insert(keys, np.arange(30, dtype=np.int32))
    assert ix.find(keys).tolist() == list(range(30))
    assert ix.check() == 0


def test_index_upsert_finds_inserts_and_takes_free_rows_first():
    """One-pass find-or-insert against a dict, through failed chains (keys sharing bucket 0 under
    the first hash), load-threshold growth mid-batch and free-list rows."""
    ix = CuckooIndex(4, max_load=0.9)
    oracle: dict[int, int] = {}
    free = np.array([900, 901, 902], dtype=np.int32)
    n_free, high = 3, 0
    rng = np.random.default_rng(5)
    batches = [SAME_BUCKET[:40], np.arange(-20, 20), rng.integers(I64_MIN, I64_MAX, 500), SAME_BUCKET[20:]]
    for batch in batches:
        keys = np.unique(batch.astype(np.int64))
        rows, is_new, taken = ix.upsert(keys, free, n_free, high)
        want_new = [int(k) not in oracle for k in keys]
        assert is_new.tolist() == want_new
        assert taken == sum(want_new)
        fresh = [int(r) for r, nw in zip(rows, is_new, strict=True) if nw]
        from_free = free[max(n_free - taken, 0) : n_free][::-1].tolist()
        assert fresh == from_free + list(range(high, high + taken - len(from_free)))
        for k, r, nw in zip(keys.tolist(), rows.tolist(), is_new.tolist(), strict=True):
            if not nw:
                assert oracle[k] == r
            oracle[k] = r
        high += taken - len(from_free)
        n_free -= len(from_free)
        assert ix.check() == 0 and ix.size == len(oracle)
    assert ix.rehashes >= 2
    keys = np.array(list(oracle), dtype=np.int64)
    assert ix.find(keys).tolist() == list(oracle.values())
    assert len(set(oracle.values())) == len(oracle)


def test_index_grows_when_a_row_number_needs_more_bits_than_a_slot_has():
    ix = CuckooIndex(4)  # 8 buckets: a slot holds rows up to 1022
    assert ix.max_row < 5000
    keys = np.array([1, -1, I64_MIN, I64_MAX], np.int64)
    rows = np.array([0, 5000, 2**20, 7], np.int32)
    ix.insert(keys, rows)
    assert ix.max_row >= 2**20 and ix.find(keys).tolist() == rows.tolist()
    assert ix.check() == 0


def test_row_memory_is_committed_as_rows_are_handed_out():
    from freshrec.table.storage import RowStore

    rs = RowStore(16, chunk_bits=18)  # 16 MiB chunks of rows, 2 MiB of metadata
    assert rs.nbytes_rows == 0
    rs.allocate(10)
    assert rs.nbytes_rows == 2 << 20  # one 2 MiB granule, not the whole 16 MiB chunk
    rs.reserve(300_000)  # spans two chunks
    assert rs.committed >= 300_000 and len(rs.chunks) == 2
    assert rs.nbytes_rows == -(-rs.committed * 64 // (2 << 20)) * (2 << 20)
    rows = rs.allocate(300_000 - 10)
    assert rows.max() == 299_999 and len(rs.chunks) == 2
    rs.chunks[1][rows.max() - rs.chunk_rows] = 1.0  # the memory is there and writable


def test_counts_are_exact_past_the_count_byte_and_saturate_at_int32_max(tmp_path):
    """Counts of 255 and more live partly outside the row's count byte; they must stay exact
    through updates, LFU eviction, snapshots and row reuse."""
    cfg = TableConfig(name="c", dim=2, optimizer=SGD(), capacity=4, eviction="lfu", initial_capacity=4)
    t = EmbeddingTable(cfg)
    z = np.zeros((4, 2), np.float32)
    ids = np.array([10, 11, 12, 13], np.int64)
    t.apply_gradients(ids, z, now=0.0, counts=np.array([254, 255, 256, 1], np.int64))
    t.apply_gradients(ids, z, now=1.0, counts=np.array([1, 1, 70_000, 253], np.int64))
    assert t.row_state(ids)[2].tolist() == [255, 256, 70_256, 254]
    t.apply_gradients(ids[2:3], z[:1], now=2.0, counts=np.array([2**31], np.int64))
    assert t.row_state(ids[2:3])[2].tolist() == [2**31 - 1]  # saturates
    t2 = EmbeddingTable.from_state(*t.state())
    assert t2.row_state(ids)[2].tolist() == [255, 256, 2**31 - 1, 254]
    # LFU: a new id evicts the least counted (13: 254), not the one whose byte reads 255 (10)
    t.apply_gradients(np.array([14], np.int64), z[:1], now=3.0, counts=np.array([1], np.int64))
    assert t.contains(ids).tolist() == [True, True, True, False]
    # a freed row that comes back to another id starts from that id's count, not the old excess
    t.remove(ids[1:3])
    t.apply_gradients(np.array([20, 21], np.int64), z[:2], now=4.0, counts=np.array([3, 300], np.int64))
    assert t.row_state(np.array([20, 21], np.int64))[2].tolist() == [3, 300]
    assert len(t._rows.overflow) == 2  # ids 10 and 21: 255 and 300
    t.check_invariants()


@given(
    st.lists(st.tuples(st.integers(-3, 3), st.integers(0, 3)), min_size=1, max_size=60, unique=False),
    st.integers(1, 70),
)
@settings(max_examples=200, deadline=None)
def test_eviction_victims_equal_a_full_sort(pairs, n):
    """Capacity eviction picks victims by partition, not a sort; it must pick the same keys as
    sorting by (last_seen or count, the other, id), ties and int32 extremes included."""
    from freshrec.table.table import _smallest

    m = len(pairs)
    first = (np.array([p[0] for p in pairs], np.int64) * (2**31 - 1) // 3).astype(np.int32)  # int32 range
    second = np.array([p[1] for p in pairs], np.int32)
    keys = np.random.default_rng(m).permutation(np.arange(-m, m, 2, dtype=np.int64) * (2**60 // m))
    want = keys[np.lexsort((keys, second, first))[:n]]
    assert sorted(_smallest(keys, first, second, n).tolist()) == sorted(want.tolist())


def test_freed_rows_are_reused():
    t = EmbeddingTable(TableConfig(name="r", dim=2, optimizer=SGD(), ttl_s=1.0, initial_capacity=4))
    t.apply_gradients(np.arange(100), np.zeros((100, 2), np.float32), now=0.0)
    high = t._rows.high
    assert t.evict_expired(10.0) == 100
    t.apply_gradients(np.arange(100, 200), np.zeros((100, 2), np.float32), now=10.0)
    assert t._rows.high == high  # no new rows: freed ones came back
    t.check_invariants()


def test_initializer_is_a_pure_function_of_seed_and_id():
    cfg = TableConfig(
        name="i", dim=8, optimizer=SGD(lr=1e-9), initializer=Initializer(kind="normal", scale=1.0)
    )
    a, b = EmbeddingTable(cfg), EmbeddingTable(cfg)
    ids = np.arange(5000, dtype=np.int64)
    a.apply_gradients(ids, np.zeros((5000, 8), np.float32), now=0.0)
    b.apply_gradients(ids[::-1].copy(), np.zeros((5000, 8), np.float32), now=0.0)
    np.testing.assert_array_equal(a.lookup(ids), b.lookup(ids))
    v = a.lookup(ids).ravel()
    assert abs(v.mean()) < 0.02 and abs(v.std() - 1.0) < 0.02


def test_filter_admits_on_nth_occurrence_and_lookup_reads_zero_before():
    t = EmbeddingTable(
        TableConfig(
            name="f", dim=2, optimizer=SGD(lr=1.0), min_count=3, initializer=Initializer(kind="zeros")
        )
    )
    g = np.ones((1, 2), np.float32)
    for _ in range(2):
        t.apply_gradients(np.array([9]), g, now=0.0)
        assert len(t) == 0 and not t.lookup(np.array([9])).any()
    t.apply_gradients(np.array([9]), g, now=0.0)
    assert len(t) == 1
    np.testing.assert_array_equal(t.lookup(np.array([9])), -g)


def test_bad_input_gets_clear_errors():
    t = EmbeddingTable(TableConfig(name="e", dim=2))
    with pytest.raises(ConfigError, match="integers"):
        t.lookup(np.array([1.5]))
    with pytest.raises(ConfigError, match="shape"):
        t.apply_gradients(np.array([1, 2]), np.zeros((2, 3), np.float32), now=0.0)
    with pytest.raises(ConfigError, match="finite"):
        t.apply_gradients(np.array([1]), np.zeros((1, 2), np.float32), now=float("nan"))
    with pytest.raises(ConfigError, match="dim"):
        TableConfig(name="x", dim=0)


def test_save_load_round_trip_and_corrupt_files_are_refused(tmp_path):
    cfg = TableConfig(name="s", dim=4, optimizer=Adagrad(lr=0.1), min_count=2, ttl_s=100.0)
    t = EmbeddingTable(cfg)
    rng = np.random.default_rng(3)
    for step in range(20):
        ids = rng.integers(0, 500, 256)
        t.apply_gradients(ids, rng.normal(size=(256, 4)).astype(np.float32), now=float(step))
    t.save(tmp_path / "snap")
    u = EmbeddingTable.load(tmp_path / "snap")
    ids = np.arange(-5, 505)
    np.testing.assert_array_equal(u.lookup(ids), t.lookup(ids))
    for a, b in zip(u.row_state(ids), t.row_state(ids), strict=True):
        np.testing.assert_array_equal(a, b)
    # the same future: identical updates give identical rows (optimizer and filter state restored)
    for tab in (t, u):
        tab.apply_gradients(np.arange(600), np.ones((600, 4), np.float32), now=25.0)
    np.testing.assert_array_equal(u.lookup(np.arange(600)), t.lookup(np.arange(600)))
    # a flipped byte and a truncated file are refused, naming the file
    rows_file = next(p for p in (tmp_path / "snap").iterdir() if p.name.startswith("rows"))
    data = bytearray(rows_file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    rows_file.write_bytes(bytes(data))
    with pytest.raises(CorruptSnapshotError) as e:
        EmbeddingTable.load(tmp_path / "snap")
    assert rows_file.name in str(e.value)
    rows_file.write_bytes(bytes(data[:100]))
    with pytest.raises(CorruptSnapshotError, match="truncated"):
        EmbeddingTable.load(tmp_path / "snap")


def test_lookups_never_see_a_torn_row_while_updates_run():
    # Every update adds the same value to all dims of a row, so a row is torn iff its dims differ.
    t = EmbeddingTable(
        TableConfig(name="c", dim=64, optimizer=SGD(lr=1.0), initializer=Initializer(kind="zeros"))
    )
    ids = np.arange(20_000, dtype=np.int64)
    t.apply_gradients(ids, np.zeros((ids.shape[0], 64), np.float32), now=0.0)
    stop = threading.Event()
    torn: list[int] = []

    def reader() -> None:
        while not stop.is_set():
            v = t.lookup(ids)
            torn.append(int(np.count_nonzero(v.max(axis=1) != v.min(axis=1))))

    threads = [threading.Thread(target=reader) for _ in range(2)]
    for th in threads:
        th.start()
    rng = np.random.default_rng(0)
    for step in range(60):
        batch = rng.choice(ids, 5000, replace=False)
        g = np.repeat(rng.normal(size=(5000, 1)).astype(np.float32), 64, axis=1)
        t.apply_gradients(batch, g, now=float(step))
    stop.set()
    for th in threads:
        th.join()
    assert len(torn) > 0
    assert sum(torn) == 0


def test_change_channels_are_independent_and_incremental_snapshots_replay():
    cfg = TableConfig(name="inc", dim=3, optimizer=Adagrad(lr=0.1), ttl_s=5.0)
    t = EmbeddingTable(cfg)
    t.track("snapshot")
    rng = np.random.default_rng(5)
    t.apply_gradients(np.arange(50), rng.normal(size=(50, 3)).astype(np.float32), now=0.0)
    base_meta, base_arrays = t.state()
    t.take_changes("snapshot")  # a full snapshot resets the snapshot channel
    assert t.take_touched().ids.shape[0] == 50  # the sync channel still saw everything
    t.apply_gradients(np.arange(40, 60), rng.normal(size=(20, 3)).astype(np.float32), now=8.0)
    t.evict_expired(8.0)  # ids 0..39 expire
    assert set(t.take_touched().ids.tolist()) == set(range(40, 60))
    meta, arrays = t.take_changes("snapshot")
    assert set(arrays["ids"].tolist()) == set(range(40, 60))
    assert set(arrays["evicted"].tolist()) == set(range(40))
    restored = EmbeddingTable.from_state(base_meta, base_arrays)
    restored.apply_changes(meta, arrays)
    q = np.arange(-1, 70)
    for a, b in zip(restored.row_state(q), t.row_state(q), strict=True):
        np.testing.assert_array_equal(a, b)
    assert len(restored) == len(t) == 20
    restored.check_invariants()

"""ServingReplica: scoring, deltas and dense swaps while answering, feature mapping, corrections."""

from __future__ import annotations

import math
import threading

import numpy as np
import pytest
import torch

from freshrec.errors import ConfigError
from freshrec.model import FeatureSpec, SlotSpec
from freshrec.ps import MISSING_ID, Delta, DenseUpdate, RankQuery, ServingConfig, ServingReplica, TrainingPS

HIDDEN = (16, 8)


def make_spec(dense_dim: int = 2) -> FeatureSpec:
    return FeatureSpec(
        slots=(SlotSpec(name="user_id"), SlotSpec(name="item_id"), SlotSpec(name="tags", multi_valued=True)),
        dense_dim=dense_dim,
        dim=4,
    )


def loaded_replica(seed: int = 0, **cfg) -> ServingReplica:
    rng = np.random.default_rng(seed)
    rep = ServingReplica(make_spec(), hidden=HIDDEN, config=ServingConfig(**cfg))
    for name, n in (("user_id", 20), ("item_id", 50), ("tags", 10)):
        width = rep.tables[name].dim
        rep.apply(
            Delta(
                table=name,
                version=1,
                ids=np.arange(n, dtype=np.int64),
                embeddings=rng.normal(0, 0.5, (n, width)).astype(np.float32),
                ts=100.0,
            )
        )
    return rep


def dense_update(rep: ServingReplica, version: int, seed: int) -> DenseUpdate:
    g = np.random.default_rng(seed)
    return DenseUpdate(
        version=version,
        tensors={k: g.normal(0, 0.3, v.shape).astype(np.float32) for k, v in rep.model.state_dict().items()},
        ts=200.0,
    )


def test_rank_is_sorted_and_agrees_with_predict():
    rep = loaded_replica()
    cands = np.array([5, 1, 40, 7, 33, 2, 999], np.int64)  # 999: unknown item, reads zeros
    items, scores = rep.rank(3, cands, sparse={"tags": [1, 2]}, dense={"dense_0": 0.5})
    assert sorted(items.tolist()) == sorted(cands.tolist())
    assert np.all(np.diff(scores) <= 0) and np.all((scores > 0) & (scores < 1))
    probs = rep.predict(
        [
            {"user_id": 3, "item_id": int(i), "sparse": {"tags": [1, 2]}, "dense": {"dense_0": 0.5}}
            for i in cands
        ]
    )
    by_item = dict(zip(cands.tolist(), probs.tolist(), strict=True))
    np.testing.assert_allclose(scores, [by_item[i] for i in items.tolist()], rtol=1e-6)


def test_rank_many_scores_each_query_as_rank_tasks_does_alone():
    rep = loaded_replica()
    rep.apply(dense_update(rep, 2, 5))
    queries = [
        RankQuery(3, [5, 1, 40, 7], sparse={"tags": [1, 2]}, dense={"dense_0": 0.5}),
        RankQuery(4, []),  # no candidates: an empty answer, nothing scored for it
        RankQuery(9, np.array([2, 33, 999]), sparse={"tags": [4, 5, 6]}),  # a longer bag, an unknown item
        RankQuery(
            1,
            [8, 9],
            sparse={"tags": [3]},
            item_sparse=[{"tags": [7, 8]}, {}],  # the first candidate's own bag
            item_dense=[{}, {"dense_1": 2.0}],
        ),
    ]
    together = rep.rank_many(queries)
    context_only = rep.rank_many(queries[:3])  # no candidate with features of its own: built at once
    assert len(together) == len(queries)
    pairs = [*zip(queries, together, strict=True), *zip(queries[:3], context_only, strict=True)]
    for q, (items, blended, per_task) in pairs:
        kw = {"sparse": q.sparse, "dense": q.dense, "item_sparse": q.item_sparse, "item_dense": q.item_dense}
        alone = rep.rank_tasks(q.user_id, q.item_ids, **kw)
        assert items.tolist() == alone[0].tolist()
        np.testing.assert_allclose(blended, alone[1], rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(per_task, alone[2], rtol=1e-5, atol=1e-7)
    assert together[1][0].shape == (0,)
    # the bags were not mixed up: the query with its own per-candidate bag differs from one without
    plain = rep.rank_tasks(1, [8, 9], sparse={"tags": [3]})
    assert not np.allclose(np.sort(together[3][1]), np.sort(plain[1]))


def test_inputs_follow_the_documented_mapping():
    rep = loaded_replica()
    sp, de = rep.inputs(
        [7],
        [1, 2, 3],
        sparse={"tags": [4, 5]},
        dense={"dense_1": 2.0, "unused": 9.0},
        row_sparse=[{}, {"tags": [6]}, {"tags": []}],
        row_dense=[{}, {"dense_0": 1.0}, {}],
    )
    assert sp["user_id"].tolist() == [7, 7, 7] and sp["item_id"].tolist() == [1, 2, 3]
    flat, offsets = sp["tags"]
    assert flat.tolist() == [4, 5, 6] and offsets.tolist() == [0, 2, 3]  # third bag is empty
    assert de.tolist() == [[0.0, 2.0], [1.0, 2.0], [0.0, 2.0]]
    # a single-valued slot absent from the request reads MISSING_ID (zeros)
    spec = FeatureSpec(slots=(SlotSpec(name="item_id"), SlotSpec(name="city")), dim=4)
    rep2 = ServingReplica(spec, hidden=HIDDEN)
    sp2, de2 = rep2.inputs([1], [10, 11], sparse={})
    assert sp2["city"].tolist() == [MISSING_ID, MISSING_ID] and de2 is None
    sp3, _ = rep2.inputs([1], [10, 11], sparse={"city": [42, 43]})
    assert sp3["city"].tolist() == [42, 42]


def test_dense_swap_is_atomic_under_concurrent_scoring():
    rep = loaded_replica()
    a, b = dense_update(rep, 2, seed=1), dense_update(rep, 3, seed=2)
    rep.apply(a)
    sp, de = rep.inputs([1], np.arange(50))
    want_a = rep._probabilities(sp, de)
    rep.apply(b)
    want_b = rep._probabilities(sp, de)
    assert not np.allclose(want_a, want_b)
    stop = threading.Event()
    bad: list[np.ndarray] = []
    seen = {"a": 0, "b": 0}

    def score() -> None:
        while not stop.is_set():
            p = rep._probabilities(sp, de)
            if np.array_equal(p, want_a):
                seen["a"] += 1
            elif np.array_equal(p, want_b):
                seen["b"] += 1
            else:
                bad.append(p)

    threads = [threading.Thread(target=score) for _ in range(2)]
    for t in threads:
        t.start()
    for k in range(60):
        rep.apply(DenseUpdate(version=4 + k, tensors=(a if k % 2 == 0 else b).tensors, ts=0.0))
    stop.set()
    for t in threads:
        t.join()
    assert not bad, "a request saw a mix of two dense weight sets"
    assert seen["a"] + seen["b"] > 0
    assert rep.dense_version == 63 and rep.dense_applied == 62


def test_deltas_apply_while_answering_rows_never_torn():
    rep = ServingReplica(make_spec(0), hidden=HIDDEN)
    width = rep.tables["item_id"].dim
    ids = np.arange(2000, dtype=np.int64)
    stop = threading.Event()
    torn: list[int] = []

    def read() -> None:
        while not stop.is_set():
            rows = rep.lookup("item_id", ids)
            # every row is constant (all columns written by one delta)
            if not np.all(rows == rows[:, :1]):
                torn.append(1)

    th = threading.Thread(target=read)
    th.start()
    for v in range(1, 40):
        rep.apply(
            Delta(table="item_id", version=v, ids=ids, embeddings=np.full((2000, width), v, np.float32))
        )
    stop.set()
    th.join()
    assert not torn
    assert rep.version == 39 and rep.deltas_applied == 39 and rep.rows_applied == 39 * 2000
    np.testing.assert_array_equal(rep.lookup("item_id", [0, 1999])[:, 0], [39.0, 39.0])


def test_delete_and_unknown_table():
    rep = loaded_replica()
    rep.apply(
        Delta(
            table="item_id",
            version=5,
            ids=np.empty(0, np.int64),
            embeddings=np.empty((0, 5), np.float32),
            deleted=np.array([1, 2, 999]),
        )
    )
    assert rep.rows_deleted == 2 and len(rep.tables["item_id"]) == 48
    np.testing.assert_array_equal(rep.lookup("item_id", [1, 2]), np.zeros((2, 5), np.float32))
    rep.apply(Delta(table="nope", version=6, ids=np.array([1]), embeddings=np.ones((1, 5), np.float32)))
    assert rep.unknown_tables == 1 and rep.version == 5


def test_dense_update_in_several_frames_swaps_only_when_complete():
    rep = loaded_replica()
    upd = dense_update(rep, 7, seed=3)
    keys = sorted(upd.tensors)
    before = rep.model
    rep.apply(DenseUpdate(version=7, tensors={k: upd.tensors[k] for k in keys[:2]}))
    assert rep.model is before and rep.dense_version == 0
    rep.apply(DenseUpdate(version=7, tensors={k: upd.tensors[k] for k in keys[2:]}))
    assert rep.model is not before and rep.dense_version == 7
    for k in keys:
        np.testing.assert_array_equal(rep.model.state_dict()[k].numpy(), upd.tensors[k])


def test_sample_rate_correction_shifts_the_logit_by_log_r():
    plain = loaded_replica()
    corrected = loaded_replica(train_sample_rate=0.1)
    upd = dense_update(plain, 2, seed=4)
    plain.apply(upd)
    corrected.apply(upd)
    ex = [{"user_id": 1, "item_id": i} for i in range(10)]
    p, q = plain.predict(ex).astype(np.float64), corrected.predict(ex).astype(np.float64)
    shift = np.log(q / (1 - q)) - np.log(p / (1 - p))
    np.testing.assert_allclose(shift, math.log(0.1), atol=1e-4)
    with pytest.raises(ConfigError):
        ServingConfig(train_sample_rate=0.0)


def test_bootstrap_matches_the_training_ps():
    ps = TrainingPS(make_spec(), shards=2, hidden=HIDDEN)
    rng = np.random.default_rng(0)
    for i in range(3):
        n = 32
        sp = {
            "user_id": torch.from_numpy(rng.integers(0, 50, n)),
            "item_id": torch.from_numpy(rng.integers(0, 50, n)),
            "tags": (torch.from_numpy(rng.integers(0, 9, n)), torch.arange(n)),
        }
        ps.train_step(sp, torch.randn(n, 2), torch.from_numpy(rng.integers(0, 2, n)).float(), now=float(i))
    meta, arrays = ps.state({"params": [0], "params_version": 4})
    rep = ServingReplica.bootstrap(meta, arrays)
    assert rep.version == 4 and rep.positions["params"] == [0] and rep.data_ts == 2.0
    ps.model.eval()
    with torch.no_grad():
        want = torch.sigmoid(ps.model(sp, torch.ones(n, 2))).numpy()
    np.testing.assert_allclose(rep._probabilities(sp, torch.ones(n, 2)), want, rtol=1e-5, atol=1e-6)
    assert rep.table_sizes() == ps.table_sizes()

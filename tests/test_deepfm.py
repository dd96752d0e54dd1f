"""DeepFM: shapes, the FM identity, parameter split, loss offset, and learning on a synthetic task."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.testing import assert_close

from freshrec.model import DCN, DeepFM, FeatureSpec, HashedEmbedding, SlotSpec, SparseOptimizer
from freshrec.table import Adagrad, Initializer

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _spec(dense_dim: int = 2) -> FeatureSpec:
    return FeatureSpec(
        slots=(SlotSpec(name="user"), SlotSpec(name="item"), SlotSpec(name="tags", multi_valued=True)),
        dense_dim=dense_dim,
        dim=4,
        optimizer=Adagrad(lr=0.1),
    )


def _task(n: int, seed: int):
    """Clicks driven by a hidden user x item affinity, a tag effect and one dense feature."""
    rng = np.random.default_rng(seed)
    n_users, n_items = 50, 30
    au = np.random.default_rng(99).normal(size=(n_users, 3))
    ai = np.random.default_rng(98).normal(size=(n_items, 3))
    u = rng.integers(0, n_users, n)
    i = rng.integers(0, n_items, n)
    dense = rng.normal(size=(n, 2)).astype(np.float32)
    tags_per = rng.integers(0, 3, n)
    tags = rng.integers(0, 5, tags_per.sum())
    offsets = np.concatenate([[0], np.cumsum(tags_per)[:-1]])
    bag = np.repeat(np.arange(n), tags_per)  # which example each tag belongs to
    tag_effect = np.bincount(bag, weights=np.where(tags == 0, 1.5, 0.0), minlength=n)
    z = 2.0 * (au[u] * ai[i]).sum(1) + dense[:, 0] + tag_effect - 0.5
    y = (rng.random(n) < 1 / (1 + np.exp(-z))).astype(np.float32)
    sparse = {
        "user": torch.from_numpy(u),
        "item": torch.from_numpy(i + 1_000_000),
        "tags": (torch.from_numpy(tags), torch.from_numpy(offsets)),
    }
    return sparse, torch.from_numpy(dense), torch.from_numpy(y)


def _batches(sparse, dense, y, bs):
    n = y.shape[0]
    tags, offsets = sparse["tags"]
    ends = torch.cat([offsets[1:], torch.tensor([tags.shape[0]])])
    for a in range(0, n, bs):
        b = min(n, a + bs)
        lo, hi = int(offsets[a]), int(ends[b - 1])
        yield (
            {
                "user": sparse["user"][a:b],
                "item": sparse["item"][a:b],
                "tags": (tags[lo:hi], offsets[a:b] - lo),
            },
            dense[a:b],
            y[a:b],
        )


def _train(kind: str, epochs: int = 4):
    spec = _spec()
    buckets = {"user": 1 << 12, "item": 1 << 12, "tags": 64} if kind == "hashed" else None
    model = DeepFM.build(spec, kind, buckets=buckets, hidden=(16,), seed=0)
    dense_opt = torch.optim.Adam(model.dense_parameters(), lr=0.01)
    hashed = list(model.hashed_parameters())
    hashed_opt = torch.optim.Adagrad(hashed, lr=0.1) if hashed else None
    sparse_opt = SparseOptimizer(model)
    sparse, dense, y = _task(4000, seed=1)
    ev_sparse, ev_dense, ev_y = _task(2000, seed=2)
    losses = []
    for epoch in range(epochs):
        model.train()
        for s, d, lab in _batches(sparse, dense, y, 128):
            loss = DeepFM.loss(model(s, d), lab)
            loss.backward()
            dense_opt.step()
            if hashed_opt is not None:
                hashed_opt.step()
                hashed_opt.zero_grad()
            sparse_opt.step(now=float(epoch))
            dense_opt.zero_grad()
        model.eval()
        with torch.no_grad():
            losses.append(float(DeepFM.loss(model(ev_sparse, ev_dense), ev_y)))
    return model, losses


@pytest.mark.filterwarnings("ignore:Sparse invariant checks")
@pytest.mark.parametrize("kind", ["collisionless", "hashed"])
def test_deepfm_learns_a_synthetic_task(kind):
    model, losses = _train(kind)
    base = -(0.5 * math.log(0.5) * 2)  # log loss of a coin
    assert losses[-1] < losses[0] - 0.02, losses
    assert losses[-1] < base - 0.05, losses
    if kind == "collisionless":
        tables = {n: m.table for n, m in model.collisionless.items()}
        assert len(tables["user"]) == 50 and len(tables["item"]) == 30 and len(tables["tags"]) == 5
        assert tables["user"].dim == 5  # column 0 is the first-order weight


def test_fm_second_order_is_the_pairwise_sum_and_logit_shape():
    spec = _spec(dense_dim=0)
    model = DeepFM.build(spec, "hashed", buckets={"user": 97, "item": 89, "tags": 13}, hidden=())
    sparse = {
        "user": torch.tensor([1, 2]),
        "item": torch.tensor([3, 4]),
        "tags": (torch.tensor([5, 6, 7]), torch.tensor([0, 2])),
    }
    logit = model(sparse)
    assert logit.shape == (2,)
    with torch.no_grad():
        cols = [
            model.embeddings["user"](sparse["user"]),
            model.embeddings["item"](sparse["item"]),
            model.embeddings["tags"](*sparse["tags"]),
        ]
        X = torch.stack(cols, 1)
        V = X[..., 1:]
        pair = sum((V[:, a] * V[:, b]).sum(1) for a in range(3) for b in range(a + 1, 3))
        deep = model.dnn(V.reshape(2, -1)).squeeze(1)
        expected = model.bias + X[..., 0].sum(1) + pair + deep
    assert_close(logit.detach(), expected)


def test_parameter_split_and_loss_offset():
    spec = _spec()
    model = DeepFM.build(spec, "hashed", buckets={"user": 8, "item": 8, "tags": 8}, hidden=(4,))
    hashed = {id(p) for p in model.hashed_parameters()}
    dense = {id(p) for p in model.dense_parameters()}
    assert len(hashed) == 3 and not hashed & dense
    assert hashed | dense == {id(p) for p in model.parameters()}
    assert all(isinstance(m, HashedEmbedding) for m in model.embeddings.values())
    logit, y = torch.tensor([0.3, -1.0]), torch.tensor([1.0, 0.0])
    off = torch.tensor([0.7, 0.7])
    assert_close(DeepFM.loss(logit, y, off), DeepFM.loss(logit + off, y))
    collisionless = DeepFM.build(spec, "collisionless", hidden=(4,))
    assert list(collisionless.hashed_parameters()) == []
    # the dense part is seeded: two builds agree
    again = DeepFM.build(spec, "collisionless", hidden=(4,))
    assert_close(collisionless.dnn[0].weight, again.dnn[0].weight)


@pytest.mark.filterwarnings("ignore:Sparse invariant checks")
def test_collisionless_and_collision_free_hashed_deepfm_train_to_the_same_model():
    spec = FeatureSpec(
        slots=_spec().slots,
        dense_dim=2,
        dim=4,
        optimizer=Adagrad(lr=0.1),
        initializer=Initializer(kind="zeros"),
    )
    buckets = {"user": 1 << 21, "item": 1 << 21, "tags": 64}  # modulo on these ids: no two collide
    a = DeepFM.build(spec, "collisionless", hidden=(8,), seed=3)
    b = DeepFM.build(spec, "hashed", buckets=buckets, hash="modulo", hidden=(8,), seed=3)
    opts = []
    for m in (a, b):
        hashed = list(m.hashed_parameters())
        opts.append(
            (
                torch.optim.Adam(m.dense_parameters(), lr=0.01),
                torch.optim.Adagrad(hashed, lr=0.1) if hashed else None,
                SparseOptimizer(m),
            )
        )
    sparse, dense, y = _task(640, seed=5)
    for s, d, lab in _batches(sparse, dense, y, 64):
        for m, (dense_opt, hashed_opt, sparse_opt) in zip((a, b), opts, strict=True):
            DeepFM.loss(m(s, d), lab).backward()
            dense_opt.step()
            dense_opt.zero_grad()
            if hashed_opt is not None:
                hashed_opt.step()
                hashed_opt.zero_grad()
            sparse_opt.step(now=0.0)
    a.eval(), b.eval()
    with torch.no_grad():
        assert_close(a(sparse, dense), b(sparse, dense), rtol=1e-4, atol=1e-5)
    rows = a.embeddings["user"].table.lookup(np.arange(50, dtype=np.int64))
    assert np.abs(rows).sum() > 0
    assert_close(torch.from_numpy(rows), b.embeddings["user"].weight.detach()[:50], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kind", ["collisionless", "hashed"])
@pytest.mark.filterwarnings("ignore:Sparse invariant checks")
def test_dcn_shares_the_layers_and_learns(kind):
    spec = _spec()
    buckets = {"user": 1 << 12, "item": 1 << 12, "tags": 64} if kind == "hashed" else None
    model = DCN.build(spec, kind, buckets=buckets, cross_layers=2, hidden=(16,), seed=0)
    assert all(layer.dim == spec.dim for layer in model.embeddings.values())  # no first-order column
    dense_opt = torch.optim.Adam(model.dense_parameters(), lr=0.01)
    hashed = list(model.hashed_parameters())
    hashed_opt = torch.optim.Adagrad(hashed, lr=0.1) if hashed else None
    sparse_opt = SparseOptimizer(model)
    sparse, dense, y = _task(3000, seed=1)
    ev = _task(1500, seed=2)
    model.eval()
    with torch.no_grad():
        before = float(model.loss(model(ev[0], ev[1]), ev[2]))
    model.train()
    for _ in range(3):
        for s, d, lab in _batches(sparse, dense, y, 128):
            model.loss(model(s, d), lab).backward()
            dense_opt.step()
            dense_opt.zero_grad()
            if hashed_opt is not None:
                hashed_opt.step()
                hashed_opt.zero_grad()
            sparse_opt.step(now=0.0)
    model.eval()
    with torch.no_grad():
        after = float(model.loss(model(ev[0], ev[1]), ev[2]))
    assert after < before - 0.05, (before, after)

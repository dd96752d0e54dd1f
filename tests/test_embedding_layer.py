"""The PyTorch embedding layers: collisionless (table-backed) and hashed, against torch oracles."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.testing import assert_close

from freshrec.model import CollisionlessEmbedding, HashedEmbedding, SparseOptimizer
from freshrec.model.embedding import collision_rate, hash_ids, unique_inverse
from freshrec.table import SGD, Adagrad, Initializer, TableConfig

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _filled(dim: int, ids: np.ndarray, optimizer=None, kind: str = "normal") -> CollisionlessEmbedding:
    """A layer whose table already holds a row for each of `ids` (inserted with zero gradients)."""
    cfg = TableConfig(
        name="slot",
        dim=dim,
        optimizer=optimizer or SGD(lr=0.1),
        initializer=Initializer(kind=kind, scale=0.5),
    )
    emb = CollisionlessEmbedding(cfg)
    emb.table.apply_gradients(ids.astype(np.int64), np.zeros((len(ids), dim), np.float32), now=0.0)
    return emb


def test_step_changes_exactly_the_rows_in_the_batch_with_summed_gradients():
    all_ids = np.arange(20, dtype=np.int64)
    emb = _filled(3, all_ids)
    before = emb.table.lookup(all_ids).copy()
    assert np.abs(before).sum() > 0  # rows were initialised
    opt = SparseOptimizer(emb)
    batch = torch.tensor([3, 5, 5, 11])
    coef = torch.tensor([[1.0, 2.0, 3.0], [0.5, 0.5, 0.5], [1.0, -1.0, 0.0], [2.0, 0.0, -2.0]])
    (emb(batch) * coef).sum().backward()
    opt.step(now=10.0)
    after = emb.table.lookup(all_ids)
    changed = np.flatnonzero(np.any(after != before, axis=1))
    assert changed.tolist() == [3, 5, 11]
    expected = before.copy()
    expected[3] -= 0.1 * coef[0].numpy()
    expected[5] -= 0.1 * (coef[1] + coef[2]).numpy()  # one id twice in a batch: gradients summed
    expected[11] -= 0.1 * coef[3].numpy()
    assert_close(after, expected, rtol=1e-6, atol=1e-6)
    assert len(emb.table) == 20


def test_matches_nn_embedding_with_adagrad_when_no_ids_collide():
    torch.manual_seed(0)
    n_ids, dim, lr = 40, 4, 0.1
    cfg = TableConfig(name="s", dim=dim, optimizer=Adagrad(lr=lr), initializer=Initializer(kind="zeros"))
    emb = CollisionlessEmbedding(cfg)
    ref = nn.Embedding(n_ids, dim)
    nn.init.zeros_(ref.weight)
    head = nn.Linear(dim, 1)
    head_ref = nn.Linear(dim, 1)
    head_ref.load_state_dict(head.state_dict())
    target = torch.randn(n_ids)
    sparse_opt, dense_opt = SparseOptimizer(emb), torch.optim.SGD(head.parameters(), lr=0.05)
    ref_opt = torch.optim.Adagrad(list(ref.parameters()), lr=lr)
    ref_dense = torch.optim.SGD(head_ref.parameters(), lr=0.05)
    gen = torch.Generator().manual_seed(1)
    for step in range(30):
        ids = torch.randint(0, n_ids, (16,), generator=gen)
        loss = ((head(emb(ids)).squeeze(1) - target[ids]) ** 2).mean()
        loss.backward()
        dense_opt.step()
        sparse_opt.step(now=float(step))
        dense_opt.zero_grad()
        loss_ref = ((head_ref(ref(ids)).squeeze(1) - target[ids]) ** 2).mean()
        loss_ref.backward()
        ref_opt.step()
        ref_dense.step()
        ref_opt.zero_grad()
        ref_dense.zero_grad()
        assert_close(loss, loss_ref, rtol=1e-5, atol=1e-6)
    rows = torch.from_numpy(emb.table.lookup(np.arange(n_ids, dtype=np.int64)))
    assert rows.abs().sum() > 0
    assert_close(rows, ref.weight.detach(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mode", ["sum", "mean"])
def test_multi_valued_pooling_and_gradients_match_embedding_bag(mode):
    ids_all = np.arange(12, dtype=np.int64)
    emb = _filled(5, ids_all)
    ref = nn.EmbeddingBag(12, 5, mode=mode)
    with torch.no_grad():
        ref.weight.copy_(torch.from_numpy(emb.table.lookup(ids_all)))
    flat = torch.tensor([7, 3, 7, 9, 1, 1, 1, 0])
    offsets = torch.tensor([0, 1, 3, 3, 4])  # bags [7] [3 7] [] [9] [1 1 1 0]
    out = emb(flat, offsets, mode=mode)
    out_ref = ref(flat, offsets)
    assert out.shape == (5, 5)
    assert_close(out, out_ref)
    assert_close(out[2], torch.zeros(5))  # empty bag
    coef = torch.randn(5, 5, generator=torch.Generator().manual_seed(3))
    (out * coef).sum().backward()
    (out_ref * coef).sum().backward()
    SparseOptimizer(emb).step(now=1.0)
    torch.optim.SGD(ref.parameters(), lr=0.1).step()
    assert_close(torch.from_numpy(emb.table.lookup(ids_all)), ref.weight.detach(), rtol=1e-6, atol=1e-6)


def test_unknown_ids_read_zeros_and_are_never_inserted_by_a_forward():
    emb = _filled(4, np.array([1, 2, 3], dtype=np.int64))
    emb.eval()
    with torch.no_grad():
        out = emb(torch.tensor([2, 1000, 99999999999]))
    assert_close(out[1:], torch.zeros(2, 4))
    assert out[0].abs().sum() > 0
    assert len(emb.table) == 3
    emb.train()
    out = emb(torch.tensor([1000, 1001]))  # a training forward alone inserts nothing either
    assert len(emb.table) == 3
    out.sum().backward()
    SparseOptimizer(emb).step(now=5.0)  # the step admits them
    assert len(emb.table) == 5


def test_zero_grad_drops_pending_and_eval_forward_leaves_nothing_pending():
    emb = _filled(2, np.arange(4, dtype=np.int64))
    before = emb.table.lookup(np.arange(4, dtype=np.int64)).copy()
    opt = SparseOptimizer([nn.Sequential(emb)])
    assert opt.embeddings == [emb]
    emb(torch.tensor([0, 1])).sum().backward()
    opt.zero_grad()
    opt.step(now=1.0)
    emb.eval()
    out = emb(torch.tensor([2, 3]))
    assert not out.requires_grad  # eval mode: rows are read, no gradient is kept for a step
    opt.step(now=2.0)
    assert_close(emb.table.lookup(np.arange(4, dtype=np.int64)), before)


@pytest.mark.filterwarnings("ignore:Sparse invariant checks")
def test_hashed_embedding_same_api_and_collides_as_expected():
    h = HashedEmbedding(4, 3, hash="modulo", init_scale=0.5)
    out = h(torch.tensor([1, 5, 2]))
    assert out.shape == (3, 3)
    assert_close(out[0], out[1])  # 1 and 5 share bucket 1
    assert not torch.equal(out[0], out[2])
    bag = h(torch.tensor([1, 5, 2]), torch.tensor([0, 2]), mode="mean")
    assert_close(bag[0], out[0])
    assert collision_rate(np.arange(10), 4, "modulo") == 1.0
    assert collision_rate(np.arange(10), 10, "modulo") == 0.0
    assert collision_rate(np.array([0, 1, 2, 10, 10]), 10, "modulo") == pytest.approx(0.5)
    assert h.collision_rate(torch.tensor([0, 1, 2, 3])) == 0.0
    # sparse gradients + torch Adagrad: only the touched buckets move
    opt = torch.optim.Adagrad(h.parameters(), lr=0.1)
    w0 = h.weight.detach().clone()
    h(torch.tensor([1, 5])).sum().backward()
    assert h.weight.grad.is_sparse
    opt.step()
    moved = torch.nonzero((h.weight.detach() != w0).any(dim=1)).flatten().tolist()
    assert moved == [1]


def test_mixing_hash_collision_rate_matches_the_birthday_estimate():
    rng = np.random.default_rng(0)
    ids = rng.choice(1 << 40, size=50_000, replace=False).astype(np.int64)
    m = 500_000
    expected = 1 - (1 - 1 / m) ** (len(ids) - 1)  # P(another id lands in my bucket)
    assert collision_rate(ids, m, "mix") == pytest.approx(expected, abs=0.01)
    b = hash_ids(np.arange(1000), 1000, "mix")
    assert b.min() >= 0 and b.max() < 1000
    md5 = hash_ids(np.array([5, 5, 6]), 1 << 30, "md5")
    assert md5[0] == md5[1] != md5[2]


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.sampled_from([0, 1, -1, 7, 2**63 - 1, -(2**63), 12345678901234]) | st.integers(-(2**63), 2**63 - 1)
    )
)
def test_unique_inverse_matches_np_unique(values):
    ids = np.array(values, dtype=np.int64)
    uniq, inv, counts = unique_inverse(ids)
    assert np.array_equal(uniq[inv], ids)
    ref, ref_counts = np.unique(ids, return_counts=True)
    order = np.argsort(uniq)
    assert np.array_equal(uniq[order], ref) and np.array_equal(counts[order], ref_counts)


def test_a_layer_called_twice_gets_one_step_with_summed_gradients():
    ids_all = np.arange(6, dtype=np.int64)
    emb = _filled(2, ids_all, optimizer=Adagrad(lr=0.1))
    ref = nn.Embedding(6, 2)
    with torch.no_grad():
        ref.weight.copy_(torch.from_numpy(emb.table.lookup(ids_all)))
    a, b = torch.tensor([1, 2, 2]), torch.tensor([2, 4])
    (emb(a).sum() + 3 * emb(b).sum()).backward()
    SparseOptimizer(emb).step(now=1.0)
    (ref(a).sum() + 3 * ref(b).sum()).backward()
    torch.optim.Adagrad(ref.parameters(), lr=0.1).step()
    assert_close(torch.from_numpy(emb.table.lookup(ids_all)), ref.weight.detach())

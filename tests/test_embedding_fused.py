"""The fused embedding path (`embed_slots`: one leaf and one op for all single-valued collisionless
slots) against the per-slot path: same outputs, same table rows and dense weights after training,
bit for bit; and a user model calling its layers one by one still trains beside it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from freshrec.model import DIN, DeepFM, FeatureSpec, SlotSpec
from freshrec.model.contract import Batch
from freshrec.model.embedding import CollisionlessEmbedding, SparseOptimizer, embed_slots
from freshrec.ps.training import TrainingPS
from freshrec.table import Adagrad, Initializer

N_SINGLE = 26


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _spec(*, pooling: str = "sum") -> FeatureSpec:
    # the two bags sit among the single-valued slots, so the fused columns are put back in slot order
    slots = [SlotSpec(name=f"C{j}") for j in range(N_SINGLE)]
    slots.insert(3, SlotSpec(name="tags", multi_valued=True, pooling=pooling))  # type: ignore[arg-type]
    slots.append(SlotSpec(name="hist", multi_valued=True, pooling="mean"))
    return FeatureSpec(
        slots=tuple(slots),
        dense_dim=3,
        dim=8,
        optimizer=Adagrad(lr=0.1),
        initializer=Initializer(kind="normal", scale=0.05),
    )


def _batches(n_batches: int, bs: int, seed: int) -> list[Batch]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n_batches):
        sparse: dict = {}
        for j in range(N_SINGLE):
            vocab = 5 + 40 * j  # small and large vocabularies: repeats within and across batches
            sparse[f"C{j}"] = torch.from_numpy(rng.zipf(1.3, bs) % vocab + 1000 * j)
        for name in ("tags", "hist"):
            per = rng.integers(0, 4, bs)
            flat = rng.integers(0, 30, int(per.sum()))
            offsets = np.concatenate([[0], np.cumsum(per)[:-1]])
            sparse[name] = (torch.from_numpy(flat), torch.from_numpy(offsets))
        dense = torch.from_numpy(rng.normal(size=(bs, 3)).astype(np.float32))
        y = torch.from_numpy((rng.random(bs) < 0.3).astype(np.float32)).reshape(-1, 1)
        out.append(Batch(sparse=sparse, dense=dense, targets=y, offset=None, now=float(i)))
    return out


def _trained(model_path: str, fused: bool, batches: list[Batch], **kwargs) -> TrainingPS:
    ps = TrainingPS(_spec(), model=model_path, shards=1, seed=0, **kwargs)
    ps.model.fused_embedding = fused
    for b in batches:
        ps.train_step(b)
    return ps


def _assert_same_state(a: TrainingPS, b: TrainingPS) -> None:
    for name, ta in a.tables.items():
        tb = b.tables[name]
        ids_a, emb_a = ta.export()
        order_a = np.argsort(ids_a)
        ids_b, emb_b = tb.export()
        order_b = np.argsort(ids_b)
        np.testing.assert_array_equal(ids_a[order_a], ids_b[order_b], err_msg=name)
        full_a, _, count_a = ta.row_state(ids_a[order_a])  # rows and Adagrad state
        full_b, _, count_b = tb.row_state(ids_b[order_b])
        np.testing.assert_array_equal(full_a, full_b, err_msg=name)
        np.testing.assert_array_equal(count_a, count_b, err_msg=name)
    da, db = a.dense_state(), b.dense_state()
    assert da.keys() == db.keys()
    for k in da:
        np.testing.assert_array_equal(da[k], db[k], err_msg=k)


@pytest.mark.parametrize("model_path", ["deepfm", "dcn"])
def test_fused_path_trains_to_the_same_bits_as_per_slot(model_path):
    batches = _batches(6, 257, seed=1)
    fused = _trained(model_path, True, batches)
    per_slot = _trained(model_path, False, batches)
    assert fused.model.fused_embedding and not per_slot.model.fused_embedding
    assert sum(len(t) for t in fused.tables.values()) > 1000  # the steps did insert rows
    _assert_same_state(fused, per_slot)
    # and the trained models give the same outputs, both ways of embedding
    probe = _batches(1, 100, seed=2)[0]
    outs = []
    for ps in (fused, per_slot):
        ps.model.eval()
        with torch.no_grad():
            outs.append(ps.model(probe.sparse, probe.dense))
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=0)


def test_fused_embed_equals_stacked_layers_and_gradients():
    spec = _spec(pooling="mean")
    model = DeepFM.build(spec, seed=0)
    sparse = _batches(1, 64, seed=3)[0].sparse
    # give the tables rows first (a forward never inserts)
    opt = SparseOptimizer(model)
    model.train()
    model.embed(sparse).sum().backward()
    opt.step(now=0.0)
    layers = [model.embeddings[s.name] for s in spec.slots]
    inputs = [sparse[s.name] for s in spec.slots]
    modes = [s.pooling for s in spec.slots]
    X = embed_slots(layers, inputs, modes, fused=True)
    ref = torch.stack(
        [
            layer(x[0], x[1], mode=m) if isinstance(x, tuple) else layer(x)
            for layer, x, m in zip(layers, inputs, modes, strict=True)
        ],
        dim=1,
    )
    assert X.shape == (64, len(spec.slots), spec.dim + 1)
    assert X.abs().sum() > 0
    torch.testing.assert_close(X, ref, rtol=0, atol=0)
    g = torch.randn(X.shape, generator=torch.Generator().manual_seed(0))
    (X * g).sum().backward()
    (ref * g).sum().backward()
    # each layer holds two pending reads: the fused one (a range of the shared leaf), its own
    for layer in layers:
        assert isinstance(layer, CollisionlessEmbedding)
        fused_read, own = layer._pending
        assert own.leaf is not fused_read.leaf
        np.testing.assert_array_equal(fused_read.uniq, own.uniq)
        assert own.leaf.grad is not None and fused_read.leaf.grad is not None
        torch.testing.assert_close(
            fused_read.leaf.grad[fused_read.start : fused_read.stop], own.leaf.grad, rtol=0, atol=0
        )
    single = [f for f, s in enumerate(spec.slots) if not s.multi_valued]
    leaves = {id(layers[f]._pending[0].leaf) for f in single}
    assert len(leaves) == 1  # every single-valued slot read from the one leaf
    opt.zero_grad()


def test_din_fused_same_bits():
    spec = _spec()
    kw = {"history": "hist", "query": "C0", "seed": 0}
    states = []
    for fused in (True, False):
        model = DIN(spec, spec.build("collisionless"), **kw)
        model.fused_embedding = fused
        ps = TrainingPS.from_model(model)
        for b in _batches(4, 128, seed=4):
            ps.train_step(b)
        states.append(ps)
    _assert_same_state(*states)


def test_layers_called_one_by_one_still_train_the_same():
    """A user model that calls its `CollisionlessEmbedding`s itself trains like the fused path."""

    class ByHand(torch.nn.Module):
        def __init__(self, model: DeepFM) -> None:
            super().__init__()
            self.model = model

        def forward(self, sparse, dense=None):
            spec = self.model.spec
            cols = []
            for s in spec.slots:
                layer, x = self.model.embeddings[s.name], sparse[s.name]
                cols.append(layer(x[0], x[1], mode=s.pooling) if isinstance(x, tuple) else layer(x))
            X = torch.stack(cols, dim=1)
            return X.sum(dim=(1, 2))

    spec = _spec()
    results = []
    for by_hand in (True, False):
        model = DeepFM.build(spec, seed=0)
        net = ByHand(model) if by_hand else None
        opt = SparseOptimizer(model)
        for b in _batches(3, 200, seed=5):
            out = net(b.sparse) if net is not None else model.embed(b.sparse).sum(dim=(1, 2))
            (out * out).mean().backward()
            opt.step(now=b.now)
        results.append({n: t.export() for n, t in opt.tables.items()})
    for name in results[0]:
        (ia, ea), (ib, eb) = results[0][name], results[1][name]
        oa, ob = np.argsort(ia), np.argsort(ib)
        np.testing.assert_array_equal(ia[oa], ib[ob])
        np.testing.assert_array_equal(ea[oa], eb[ob])

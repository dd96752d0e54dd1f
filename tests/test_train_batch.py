"""Batch training: the loop learns, evaluation never writes, checkpoints round-trip, `freshrec train` runs."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch.testing import assert_close

from freshrec.cli import main as cli_main
from freshrec.data.dataset import Dataset, Ragged
from freshrec.train.batch import (
    TrainConfig,
    evaluate,
    iter_batches,
    load_checkpoint,
    load_train_test,
    save_checkpoint,
    train_model,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


needs_movielens = pytest.mark.shared_data("movielens-100k/u.data")


def _synthetic(n: int, seed: int, rate: float = 1.0) -> Dataset:
    """Clicks driven by a user x item affinity, a tag and a dense feature; ids are large int64 values."""
    rng = np.random.default_rng(seed)
    au = np.random.default_rng(7).normal(size=(40, 3))
    ai = np.random.default_rng(8).normal(size=(25, 3))
    u, i = rng.integers(0, 40, n), rng.integers(0, 25, n)
    dense = rng.normal(size=(n, 3)).astype(np.float32)
    lens = rng.integers(0, 3, n)
    tags = rng.integers(0, 4, lens.sum())
    bag = np.repeat(np.arange(n), lens)
    z = 2.0 * (au[u] * ai[i]).sum(1) + dense[:, 0] + np.bincount(bag, weights=(tags == 1) * 1.0, minlength=n)
    y = (rng.random(n) < 1 / (1 + np.exp(-z))).astype(np.float32)
    return Dataset.build(
        "synthetic",
        sparse={"user_id": u * 1_000_003 + 11, "item_id": -(i + 5) * 998_244_353},
        label=y,
        ts=np.arange(n, dtype=np.float64) + 1000.0 * seed,
        dense=dense,
        sample_rate=np.full(n, rate, np.float32),
        multi={"tags": Ragged(tags, np.concatenate([[0], np.cumsum(lens)]))},
    )


CFG = TrainConfig(epochs=3, batch_size=128, hidden=(16,), dim=4, sparse_lr=0.1, dense_lr=0.01)


def test_train_model_learns_and_reports_every_epoch():
    train, test = _synthetic(3000, 1), _synthetic(1500, 2)
    seen = []
    result = train_model(train, test, CFG, on_epoch=seen.append)
    assert [m.epoch for m in result.epochs] == [1, 2, 3] == [m.epoch for m in seen]
    assert all(m.examples == 3000 for m in result.epochs)
    assert result.final.auc > 0.7, result.epochs
    assert result.epochs[-1].train_loss < result.epochs[0].train_loss
    tables = {s: len(e.table) for s, e in result.model.collisionless.items()}
    assert tables == {"user_id": 40, "item_id": 25, "tags": 4}
    # evaluation reads the tables and never writes them, also with unseen ids
    unseen = _synthetic(200, 3)
    unseen = Dataset.build(
        "unseen",
        sparse={k: v + 17 for k, v in unseen.sparse.items()},
        label=unseen.label,
        dense=unseen.dense,
        multi=unseen.multi,
    )
    a, ll = evaluate(result.model, unseen)
    assert 0.0 <= a <= 1.0 and ll > 0
    assert {s: len(e.table) for s, e in result.model.collisionless.items()} == tables


@pytest.mark.filterwarnings("ignore:Sparse invariant checks")
def test_hashed_training_uses_the_same_loop():
    train, test = _synthetic(2000, 1), _synthetic(800, 2)
    cfg = TrainConfig(
        epochs=2,
        batch_size=128,
        hidden=(16,),
        dim=4,
        embedding="hashed",
        buckets={"user_id": 4096, "item_id": 4096, "tags": 64},
    )
    result = train_model(train, test, cfg)
    assert result.model.collisionless == {}
    assert result.final.auc > 0.6


def test_batches_carry_the_sampling_offset():
    data = _synthetic(300, 1, rate=0.25)
    b = next(iter_batches(data, 100))
    assert b.offset is not None
    assert_close(b.offset, torch.full((100,), -math.log(0.25)))
    assert b.now == float(data.ts[99])
    tags, offsets = b.sparse["tags"]
    assert offsets.shape == (100,) and int(offsets[0]) == 0
    assert next(iter_batches(_synthetic(300, 1), 100)).offset is None  # rate 1: no offset


def test_checkpoint_round_trip_gives_the_same_predictions(tmp_path):
    train, test = _synthetic(1500, 1), _synthetic(500, 2)
    cfg = TrainConfig(epochs=1, batch_size=128, hidden=(8,), dim=4)
    model = train_model(train, test, cfg).model
    save_checkpoint(model, tmp_path / "ckpt", {"note": "test"})
    manifest = json.loads((tmp_path / "ckpt" / "manifest.json").read_text())
    assert manifest["kind"] == "training" and manifest["meta"]["snapshot"] == "full"
    assert manifest["meta"]["model"]["path"] == "freshrec.model:DeepFM"
    assert "table.user_id.shard0.ids" in manifest["arrays"]
    loaded, meta = load_checkpoint(tmp_path / "ckpt")
    assert meta["note"] == "test"
    model.eval()
    b = next(iter_batches(test, 500))
    with torch.no_grad():
        assert_close(loaded(b.sparse, b.dense), model(b.sparse, b.dense))
    assert len(loaded.embeddings["item_id"].table) == len(model.embeddings["item_id"].table)


@needs_movielens
def test_movielens_split_is_past_then_future():
    train, test = load_train_test("movielens", limit=5000, test_fraction=0.2)
    assert len(train) == 4000 and len(test) == 1000
    assert train.ts.max() <= test.ts.min()


@needs_movielens
def test_freshrec_train_command_writes_a_checkpoint(tmp_path, capsys):
    out = tmp_path / "run"
    rc = cli_main(
        [
            "train",
            "--dataset",
            "movielens",
            "--limit",
            "4000",
            "--epochs",
            "1",
            "--batch-size",
            "512",
            "--hidden",
            "16",
            "--out",
            str(out),
            "--json",
        ]
    )
    assert rc == 0
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert 0.0 <= last["auc"] <= 1.0 and len(last["epochs"]) == 1
    model, meta = load_checkpoint(out)
    assert meta["dataset"] == "movielens" and meta["train_examples"] == 3200
    assert len(model.embeddings["user_id"].table) > 0


def test_dcn_checkpoint_round_trip(tmp_path):
    train, test = _synthetic(1000, 1), _synthetic(300, 2)
    cfg = TrainConfig(epochs=1, batch_size=128, hidden=(8,), dim=4, model="dcn", cross_layers=2)
    result = train_model(train, test, cfg)
    assert type(result.model).__name__ == "DCN" and 0.0 <= result.final.auc <= 1.0
    save_checkpoint(result.ps, tmp_path / "dcn")
    loaded, _ = load_checkpoint(tmp_path / "dcn")
    assert type(loaded).__name__ == "DCN" and loaded.cross_layers == 2
    result.model.eval()
    b = next(iter_batches(test, 300))
    with torch.no_grad():
        assert_close(loaded(b.sparse, b.dense), result.model(b.sparse, b.dense))


def test_evaluate_ranks_raw_logits_and_shifts_them_for_log_loss():
    from freshrec.train.metrics import auc, log_loss_from_logits

    train = _synthetic(800, 1)
    test = _synthetic(400, 2)
    rates = np.random.default_rng(0).choice([0.05, 0.5, 1.0], size=len(test)).astype(np.float32)
    test = Dataset.build(
        "rated", sparse=test.sparse, label=test.label, dense=test.dense, multi=test.multi, sample_rate=rates
    )
    model = train_model(train, None, TrainConfig(epochs=1, batch_size=128, hidden=(8,), dim=4)).model
    a, ll = evaluate(model, test)
    model.eval()
    b = next(iter_batches(test, 400))
    with torch.no_grad():
        z = model(b.sparse, b.dense).numpy()
    assert a == pytest.approx(auc(test.label, z))
    assert ll == pytest.approx(log_loss_from_logits(test.label, z - np.log(rates)), rel=1e-5)


def test_checkpoint_keeps_the_whole_feature_spec(tmp_path):
    from freshrec.model import DeepFM, FeatureSpec, SlotSpec
    from freshrec.table import FTRL, Initializer
    from freshrec.train.batch import load_checkpoint, save_checkpoint

    spec = FeatureSpec(
        slots=(SlotSpec(name="user_id", table={"min_count": 2}), SlotSpec(name="tags", multi_valued=True)),
        dense_dim=2,
        dim=4,
        optimizer=FTRL(alpha=0.1),
        initializer=Initializer(kind="uniform", scale=0.2),
        seed=3,
    )
    assert FeatureSpec.from_dict(spec.to_dict()) == spec
    model, _ = load_checkpoint(save_checkpoint(DeepFM.build(spec, hidden=(8,)), tmp_path / "ckpt"))
    assert model.spec == spec

"""Any model, several tasks, one snapshot: batch -> snapshot -> online -> sync -> serve, per model.

Every shipped model (DeepFM, DCN, DIN with a multi-valued history slot) and a model defined here
goes through the same loop in process (memory logs): batch training writes the one snapshot layout,
the online trainer starts from it, the publisher syncs touched rows and dense weights, a replica
follows the parameter log; after a final sync the served scores equal the trainer's, per task.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn
from torch.testing import assert_close

from freshrec.checkpoint.format import write_snapshot
from freshrec.checks import check_trained_equals_served, contract_dataset
from freshrec.data.dataset import Dataset
from freshrec.errors import ConfigError, SnapshotError
from freshrec.model import (
    Batch,
    DeepFM,
    FeatureSpec,
    ModelSpec,
    SlotModel,
    SlotSpec,
    Task,
    build_model,
    check_model,
    parse_tasks,
)
from freshrec.ps import ServingConfig, ServingReplica, TrainingPS
from freshrec.table import Adagrad
from freshrec.train.batch import TrainConfig, load_checkpoint, train_model


class PooledTower(SlotModel):
    """A model written against the contract alone: concatenated slot embeddings -> MLP -> T outputs."""

    def __init__(self, spec, embeddings, *, tasks=None, width=8, seed=0):
        super().__init__()
        k = self._set_embeddings(spec, embeddings, tasks)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.mlp = nn.Sequential(
                nn.Linear(len(spec.slots) * k + spec.dense_dim, width),
                nn.ReLU(),
                nn.Linear(width, len(self.tasks)),
            )

    def forward(self, sparse, dense=None):
        E = self.embed(sparse)  # (B, F, k)
        x = E.reshape(E.shape[0], -1)
        if dense is not None:
            x = torch.cat([x, dense], dim=1)
        return self.mlp(x)  # (B, T)


def data(n: int = 1500, seed: int = 0) -> Dataset:
    """Clicks and a watch-time value over user_id, item_id and a history bag (the checks' dataset)."""
    return contract_dataset(n, seed)


MODELS = [
    ("deepfm", {"hidden": [16]}),
    ("dcn", {"hidden": [16], "cross_layers": 1}),
    ("din", {"history": "history", "query": "item_id", "hidden": [16]}),
    ("test_model_contract:PooledTower", {"width": 8}),
]


@pytest.mark.parametrize("tasks", ["click", "click,watch:value:0.1"])
@pytest.mark.parametrize(("path", "kwargs"), MODELS, ids=[m[0].split(":")[-1] for m in MODELS])
def test_batch_snapshot_online_sync_serve_equals_trainer(tmp_path, path, kwargs, tasks, deterministic_torch):
    # the check a user runs on their own model (freshrec.checks), over every shipped model and one here
    figures = check_trained_equals_served(path, kwargs, tasks=tasks, workdir=tmp_path)
    assert figures["examples"] == 600 and figures["served_moved"] > 1e-4


def test_rank_orders_by_the_configured_blend_of_task_scores(deterministic_torch):
    past = data(800, 0)
    cfg = TrainConfig(epochs=1, batch_size=256, dim=4, hidden=(8,), tasks=parse_tasks("click,watch:value"))
    ps = train_model(past, None, cfg).ps
    assert ps is not None
    weights = {"click": 1.0, "watch": 0.05}
    rep = ServingReplica.from_ps(ps, config=ServingConfig(rank_weights=weights))
    items, blended, per_task = rep.rank_tasks(7, list(range(40)), sparse={"history": [1, 2]})
    want = per_task[:, 0] * 1.0 + per_task[:, 1] * 0.05
    np.testing.assert_allclose(blended, want, rtol=1e-5)
    assert np.all(np.diff(blended) <= 1e-7)  # best first
    assert np.all((per_task[:, 0] > 0) & (per_task[:, 0] < 1))  # click: a probability
    with pytest.raises(ConfigError, match="unknown tasks"):
        ServingReplica.from_ps(ps, config=ServingConfig(rank_weights={"like": 1.0}))


def test_check_model_and_build_model_refuse_what_breaks_the_contract():
    spec = FeatureSpec(slots=(SlotSpec(name="user_id"), SlotSpec(name="item_id")), dim=4)

    class WrongWidth(PooledTower):
        def forward(self, sparse, dense=None):
            return super().forward(sparse, dense)[:, :1].repeat(1, 3)  # 3 outputs for 2 tasks

    two = (Task(name="click"), Task(name="watch", kind="value"))
    m = WrongWidth(spec, spec.build(), tasks=two)
    b = Batch(
        sparse={"user_id": torch.tensor([1, 2]), "item_id": torch.tensor([3, 4])},
        dense=None,
        targets=torch.zeros(2, 2),
        offset=None,
        now=0.0,
    )
    with pytest.raises(ConfigError, match=r"expected \(B, 2\)"):
        check_model(m, b)
    check_model(build_model(ModelSpec("test_model_contract:PooledTower"), spec, tasks=two), b)

    class Listwise(PooledTower):
        def forward(self, sparse, dense=None):
            return torch.log_softmax(super().forward(sparse, dense), dim=0)  # a row's score needs the others'

    with pytest.raises(ConfigError, match="rule 7: rows are independent"):
        check_model(Listwise(spec, spec.build(), tasks=two), b)
    with pytest.raises(ConfigError, match="cannot be imported"):
        build_model(ModelSpec("no_such_module:Model"), spec)
    with pytest.raises(ConfigError, match="cannot be built with kwargs"):
        build_model(ModelSpec("deepfm", {"no_such_kwarg": 1}), spec)
    with pytest.raises(ConfigError, match="has no label 'rating'"):
        train_model(
            data(100), None, TrainConfig(epochs=1, dim=4, hidden=(4,), tasks=parse_tasks("rating:value"))
        )


def test_resuming_a_snapshot_of_another_model_is_refused(tmp_path):
    spec = FeatureSpec(
        slots=(SlotSpec(name="user_id"), SlotSpec(name="item_id")), dim=4, optimizer=Adagrad(lr=0.1)
    )
    a = TrainingPS(spec, model=ModelSpec("deepfm", {"hidden": [8]}), shards=1)
    a.save(tmp_path / "a")
    b = TrainingPS(spec, model=ModelSpec("dcn", {"hidden": [8]}), shards=1)
    from freshrec.checkpoint.format import read_snapshot

    meta, arrays = read_snapshot(tmp_path / "a")
    with pytest.raises(SnapshotError, match="model"):
        b.load_state(meta, arrays, source=str(tmp_path / "a"))


def test_a_0_1_batch_checkpoint_is_refused_with_how_to_upgrade_and_upgrades(tmp_path):
    """Writes the 0.1 layout (DIR/model + DIR/tables/<slot>) by hand, as that version did."""
    spec = FeatureSpec(slots=(SlotSpec(name="user_id"), SlotSpec(name="item_id")), dim=4)
    model = DeepFM.build(spec, hidden=(8,), seed=2)
    old = tmp_path / "old"
    ps = TrainingPS.from_model(model)
    ps.train_step(
        {"user_id": torch.tensor([1, 2, 3]), "item_id": torch.tensor([4, 5, 6])},
        None,
        torch.tensor([1.0, 0.0, 1.0]),
        now=10.0,
    )
    layers = {}
    for slot, layer in model.collisionless.items():
        layer.table.save(old / "tables" / slot)
        layers[slot] = {"kind": "collisionless", "table": f"tables/{slot}", "config": layer.config.to_dict()}
    meta = {"model": "DeepFM", "spec": spec.to_dict(), "hidden": [8], "dropout": 0.0, "cross_layers": 0,
            "layers": layers}  # fmt: skip
    arrays = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    write_snapshot(old / "model", kind="model", meta=meta, arrays=arrays)
    with pytest.raises(SnapshotError, match="freshrec snapshot upgrade"):
        ServingReplica.from_snapshot(old)
    from freshrec.ps.upgrade import upgrade_snapshot

    kind, new = upgrade_snapshot(old, tmp_path / "new")
    assert kind == "model"
    loaded, _ = load_checkpoint(new)
    req = {"user_id": torch.tensor([1, 2, 9]), "item_id": torch.tensor([4, 5, 6])}
    model.eval()
    with torch.no_grad():
        assert_close(loaded(req), model(req))


def test_models_experiment_short_form_reports_every_task_online_and_frozen(tmp_path):
    """`freshrec experiment models --quick` as a process: every model and task, both sides, a plot."""
    import os
    import subprocess
    import sys

    from freshrec.data.paths import dataset_path

    ml = dataset_path("movielens-100k")
    if not (ml / "u.data").is_file():
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(
                f"MovieLens 100K not found at {ml}: under CI the shared data must be there", pytrace=False
            )
        pytest.skip(f"MovieLens 100K not found at {ml} (set FRESHREC_DATA)")
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "freshrec.cli",
            "experiment",
            "models",
            "--quick",
            "--out",
            str(tmp_path),
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert [r["model"] for r in res["runs"]] == ["deepfm click", "deepfm click+rating", "din click+rating"]
    for r in res["runs"]:
        for side in ("online", "frozen"):
            assert 0.5 < r[side]["click"]["auc"] < 1.0, r
            if "rating" in r["tasks"]:
                assert 0.0 < r[side]["rating"]["rmse"] < 4.0, r
    assert res["runs"][2]["path"] == "freshrec.model:DIN"
    assert (tmp_path / "models.png").stat().st_size > 10_000


def test_http_rank_returns_every_task_score_and_ranks_by_the_blend(deterministic_torch):
    import httpx

    from freshrec.serve import ServerThread, create_app

    cfg = TrainConfig(epochs=1, batch_size=256, dim=4, hidden=(8,), tasks=parse_tasks("click,watch:value"))
    ps = train_model(data(800, 0), None, cfg).ps
    assert ps is not None
    rep = ServingReplica.from_ps(ps, config=ServingConfig(rank_weights={"click": 0.5, "watch": 0.01}))
    req = {"user_id": 7, "candidates": list(range(30)), "sparse": {"history": [1, 2]}, "top_k": 10}
    with ServerThread(create_app(rep)) as srv, httpx.Client(base_url=srv.url, timeout=10) as c:
        body = c.post("/v1/rank", json=req).json()
        one = c.post("/v1/rank", json={**req, "top_k": None}).json()
    items, blended, per_task = rep.rank_tasks(7, list(range(30)), sparse={"history": [1, 2]})
    assert [it["item_id"] for it in body["items"]] == items[:10].tolist()
    for it, b, row in zip(body["items"], blended[:10], per_task[:10], strict=True):
        assert it["score"] == pytest.approx(float(b), rel=1e-6)
        assert it["scores"] == pytest.approx({"click": float(row[0]), "watch": float(row[1])}, rel=1e-6)
        assert it["score"] == pytest.approx(
            0.5 * it["scores"]["click"] + 0.01 * it["scores"]["watch"], rel=1e-5
        )
    assert len(one["items"]) == 30

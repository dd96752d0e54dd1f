"""A model through the whole loop, as checks a user runs on their own model class in one line:

    from freshrec.checks import check_trained_equals_served
    check_trained_equals_served("mypkg.towers:MyModel", {"hidden": [16]}, tasks="click,watch:value:0.1")

`check_trained_equals_served` builds the model by the contract (`freshrec.model.contract`), checks it
(`check_model`), batch-trains it on a small synthetic dataset (slots `user_id`, `item_id` and the
multi-valued `history`; a click label and a `watch` value), writes the one snapshot layout and reads
it back (`check_snapshot_round_trip`), trains online from that snapshot over an in-memory examples
log while a `SyncPublisher` sends touched rows and dense weights through an in-memory parameter log
to a `ServingReplica` that started from the same snapshot; after the final sync, the served scores
of every task must equal the trainer's. Raises AssertionError (or the `FreshrecError` the model's
construction raised) naming what differed.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["check_snapshot_round_trip", "check_trained_equals_served", "contract_dataset"]


def contract_dataset(n: int = 1500, seed: int = 0) -> Any:
    """Clicks and a watch-time value that depend on (user, item) and on the user's history bag:
    slots `user_id` (120 ids), `item_id` (50), multi-valued `history`; labels `click`, `watch`."""
    from freshrec.data.dataset import Dataset, Ragged

    rng = np.random.default_rng(seed)
    u = rng.integers(0, 120, n)
    it = rng.integers(0, 50, n)
    lens = rng.integers(0, 4, n)
    offsets = np.zeros(n + 1, np.int64)
    np.cumsum(lens, out=offsets[1:])
    hist = rng.integers(0, 50, int(offsets[-1]))
    y = (((u + it) % 3 == 0) ^ (rng.random(n) < 0.1)).astype(np.float32)
    watch = (y * rng.uniform(5, 20, n) + rng.normal(0, 0.5, n)).astype(np.float32)
    return Dataset.build(
        "contract",
        sparse={"user_id": u, "item_id": it},
        multi={"history": Ragged(hist, offsets)},
        label=y,
        labels={"watch": watch},
        ts=np.sort(rng.uniform(1e9, 1e9 + 3600, n)),
    )


def _rows(ds: Any) -> list[dict[str, Any]]:
    """The serving requests of a contract dataset's examples."""
    from freshrec.train.examples import dataset_to_examples

    return [
        {"user_id": e.user_id, "item_id": e.item_id, "sparse": {"history": e.sparse["history"]}}
        for e in dataset_to_examples(ds, label="click")
    ]


def check_snapshot_round_trip(
    ps: Any, path: str | Path, *, rows: list[dict[str, Any]] | None = None
) -> Path:
    """Save the training PS `ps` to `path`, load it back, and check the copy: same model, tasks,
    step, table rows, dense weights, and (for `rows`, serving requests) the same served scores.
    Returns the snapshot folder."""
    from freshrec.ps import ServingReplica, TrainingPS

    snap = ps.save(path)
    back, _ = TrainingPS.load(snap)
    assert back.model_spec == ps.model_spec, f"model spec {back.model_spec} != {ps.model_spec}"
    assert back.tasks == ps.tasks and back.step == ps.step, "tasks or step changed through the snapshot"
    assert sorted(back.tables) == sorted(ps.tables), "tables changed through the snapshot"
    for name, table in ps.tables.items():
        ids, emb = table.export()
        copy = back.tables[name]
        np.testing.assert_array_equal(copy.lookup(ids), table.lookup(ids), err_msg=f"table {name}")
        assert len(copy) == len(table), f"table {name}: {len(copy)} rows, not {len(table)}"
    want, got = ps.dense_state(), back.dense_state()
    assert sorted(got) == sorted(want), "dense weights' names changed through the snapshot"
    for k in want:
        np.testing.assert_array_equal(got[k], want[k], err_msg=f"dense weight {k}")
    if rows:
        a = ServingReplica.from_ps(ps).predict_tasks(rows)
        b = ServingReplica.from_snapshot(snap).predict_tasks(rows)
        np.testing.assert_array_equal(b, a, err_msg="served scores of the snapshot")
    return snap


def check_trained_equals_served(
    model: str,
    kwargs: Mapping[str, Any] | None = None,
    *,
    tasks: str = "click",
    workdir: str | Path | None = None,
    past: Any = None,
    future: Any = None,
) -> dict[str, Any]:
    """The loop of the module docstring for the model named `model` (an import path or a short
    name) with JSON `kwargs`, for `tasks` (`freshrec.model.parse_tasks` syntax). `past` / `future`:
    datasets with the contract dataset's columns (default: `contract_dataset`). Snapshots go to
    `workdir` (default: a temporary folder). Returns a few figures of the run. Run it with torch in
    deterministic mode (one thread) for bit-exact comparisons; it compares to 1e-6 relative."""
    import torch
    from torch.testing import assert_close

    from freshrec.model import ModelSpec, check_model, parse_tasks
    from freshrec.ps import ServingReplica, SyncPublisher, SyncSubscriber
    from freshrec.stream.log import MemoryBackend
    from freshrec.train.batch import TrainConfig, iter_batches, save_checkpoint, train_model
    from freshrec.train.examples import dataset_to_examples, write_examples
    from freshrec.train.online import OnlineConfig, OnlineTrainer

    if not __debug__:
        from freshrec.errors import ConfigError

        msg = "freshrec.checks uses assert: run it without python -O"
        raise ConfigError(msg)
    past = contract_dataset(1500, 0) if past is None else past
    future = contract_dataset(600, 1) if future is None else future
    tmp = tempfile.TemporaryDirectory(prefix="freshrec-check-") if workdir is None else None
    root = Path(tmp.name if tmp is not None else workdir)  # type: ignore[arg-type]
    try:
        cfg = TrainConfig(
            epochs=1,
            batch_size=256,
            dim=4,
            model=model,
            model_kwargs=dict(kwargs or {}),
            tasks=parse_tasks(tasks),
        )
        result = train_model(past, future, cfg)
        ps = result.ps
        assert ps is not None, "train_model returned no training PS"
        check_model(result.model, next(iter_batches(future, 64, tasks=ps.tasks)))
        assert set(result.final.tasks) == {t.name for t in cfg.tasks}, "evaluation misses a task"
        rows = _rows(future)
        check_snapshot_round_trip(ps, root / "round-trip", rows=rows[:50])
        snap = save_checkpoint(ps, root / "batch")
        manifest = json.loads((snap / "manifest.json").read_text())
        assert manifest["meta"]["model"]["path"] == ModelSpec(model).path, "the snapshot names another model"
        assert [t["name"] for t in manifest["meta"]["tasks"]] == [t.name for t in cfg.tasks]

        trainer = OnlineTrainer.from_checkpoint(snap, OnlineConfig(batch_size=200))
        assert type(trainer.model) is type(result.model), "the snapshot rebuilt another model class"
        assert trainer.ps.tasks == cfg.tasks and trainer.step == ps.step
        backend = MemoryBackend()
        examples, params = backend.log("examples"), backend.log("params")
        pub = SyncPublisher(trainer, params)
        replica = ServingReplica.from_snapshot(snap)  # serving starts from the batch snapshot too
        sub = SyncSubscriber(replica, params, group="serving", start=[0])
        write_examples(examples, dataset_to_examples(future, label="click"))
        served_before = replica.predict_tasks(rows[:50])
        trainer.add_hook(lambda tr, info: pub.publish_once())
        consumer = examples.consumer("check")
        consumer.seek(0, 0)
        m = trainer.run(consumer, log=examples)
        assert m.examples_here == len(future), f"trained {m.examples_here} of {len(future)} examples"
        pub.publish_once(dense=True)  # the final sync
        sub.catch_up()
        got = replica.predict_tasks(rows[:50])
        want = ServingReplica.from_ps(trainer.ps).predict_tasks(rows[:50])
        assert got.shape == (50, len(cfg.tasks)), f"served shape {got.shape}"
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7, err_msg="served != trained (final sync)")
        moved = float(np.abs(got - served_before).max())
        assert moved > 1e-4, "online training did not change what is served"
        # and the trainer's own model agrees with the served first-task score
        trainer.model.eval()
        b = next(iter_batches(future, 50, tasks=trainer.ps.tasks))
        with torch.no_grad():
            out = trainer.model(b.sparse, b.dense)
        z = out if out.dim() == 1 else out[:, 0]
        first = torch.sigmoid(z) if cfg.tasks[0].kind == "binary" else z
        assert_close(first.float(), torch.from_numpy(got[:, 0]), rtol=1e-5, atol=1e-6)
        return {"examples": int(m.examples_here), "served_moved": moved, "step": int(trainer.step)}
    finally:
        if tmp is not None:
            tmp.cleanup()

"""Convert snapshots of the layouts freshrec 0.1 wrote into the one training-snapshot layout.

    kind "model"        a batch checkpoint folder: `DIR/model` (model meta + state dict) and
                        `DIR/tables/<slot>` (one table snapshot per collisionless slot)
    kind "training-ps"  a training-PS snapshot: sharded tables, DeepFM dense weights, Adam state

Both held a DeepFM (or, for "model", a DCN) with one binary task; the converted snapshot names the
same model by its import path, keeps every row, weight and (for "training-ps") the optimizer
state, step, data time and log positions. Online-trainer snapshots of 0.1 ("online-full" /
"online-incr") are not converted: restart that trainer from its batch snapshot instead.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from freshrec.checkpoint.format import MANIFEST_NAME, read_manifest, read_snapshot, strip_prefix
from freshrec.checkpoint.torch_state import optimizer_from_arrays
from freshrec.errors import SnapshotError
from freshrec.model import CollisionlessEmbedding, FeatureSpec, HashedEmbedding, ModelSpec, build_model
from freshrec.ps.sharded import ShardedTable
from freshrec.ps.training import TrainingPS
from freshrec.table import EmbeddingTable, TableConfig

__all__ = ["upgrade_snapshot"]


def _from_model_checkpoint(path: Path) -> TrainingPS:
    meta, arrays = read_snapshot(path / "model", kind="model")
    spec = FeatureSpec.from_dict(meta["spec"])
    layers: dict[str, nn.Module] = {}
    for slot, lm in meta["layers"].items():
        if lm["kind"] == "hashed":
            layers[slot] = HashedEmbedding.from_description(lm, name=slot)
        else:
            table = EmbeddingTable.load(path / lm["table"])
            layers[slot] = CollisionlessEmbedding(TableConfig.from_dict(lm["config"]), table=table)
    kwargs: dict = {"hidden": list(meta["hidden"]), "dropout": float(meta.get("dropout", 0.0))}
    name = "DCN" if meta["model"] == "DCN" else "DeepFM"
    if name == "DCN":
        kwargs["cross_layers"] = int(meta["cross_layers"])
    model = build_model(ModelSpec(f"freshrec.model:{name}", kwargs), spec, layers=layers)
    model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in arrays.items()})
    return TrainingPS.from_model(model)


def _from_training_ps(path: Path) -> tuple[TrainingPS, dict]:
    meta, arrays = read_snapshot(path, kind="training-ps")
    spec = FeatureSpec.from_dict(meta["spec"])
    tables = {
        name: ShardedTable.from_state(tm, strip_prefix(f"table.{name}", arrays), source=str(path))
        for name, tm in meta["tables"].items()
    }
    ps = TrainingPS(
        spec,
        shards=int(meta["shards"]),
        hidden=tuple(meta["hidden"]),
        seed=int(meta["seed"]),
        dense_lr=float(meta["dense_lr"]),
        tables=tables,
    )
    ps.load_dense(strip_prefix("dense", arrays))
    optimizer_from_arrays(ps.dense_opt, meta["dense_opt"], arrays, "opt")
    ps.step = int(meta["step"])
    ps.data_time = meta.get("data_time")
    return ps, dict(meta.get("positions", {}))


def upgrade_snapshot(old: str | Path, new: str | Path) -> tuple[str, Path]:
    """Write at `new` the current-layout snapshot of the 0.1 snapshot at `old`; returns (old kind,
    new path). SnapshotError naming `old` when it is of another kind."""
    old = Path(old)
    if (old / "model" / MANIFEST_NAME).is_file():
        kind = str(read_manifest(old / "model").get("kind"))
    elif (old / MANIFEST_NAME).is_file():
        kind = str(read_manifest(old).get("kind"))
    else:
        msg = f"{old}: no snapshot manifest there"
        raise SnapshotError(msg)
    if kind == "model":
        return kind, _from_model_checkpoint(old).save(new, extra={"upgraded_from": str(old)})
    if kind == "training-ps":
        ps, positions = _from_training_ps(old)
        return kind, ps.save(new, positions, extra={"upgraded_from": str(old)})
    if kind in ("training", "training-incremental"):
        msg = f"{old}: already in the current layout (kind {kind!r})"
        raise SnapshotError(msg)
    msg = (
        f"{old}: kind {kind!r} cannot be converted (online snapshots of freshrec 0.1: restart the trainer "
        "from its batch snapshot)"
    )
    raise SnapshotError(msg)

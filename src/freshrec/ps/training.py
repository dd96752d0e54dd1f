"""`TrainingPS`: the training parameter server, i.e. the model's tables and dense weights in one place.

The PS owns, for a `FeatureSpec`:

- one `ShardedTable` per slot (`tables[slot]`; N in-process shards, a hash of the id picks the
  shard), each `spec.dim + 1` wide (DeepFM keeps the first-order weight in column 0) and trained by
  its own per-row optimizer (the spec's);
- the dense weights: every parameter of a `DeepFM` (`model`) whose `CollisionlessEmbedding` layers
  are built with `table=tables[slot]`, so training through the model updates the PS directly;
- the dense optimizer (Adam), a `step` counter and `data_time` (the latest `now` trained on).

A training step (`train_step`) is `freshrec.train.step.train_step`, the same step the online
trainer takes:

    logit = ps.model(sparse, dense)                               # (B,)
    loss = BCE(logit - log(sample_rate), label)                   # sampling correction, see stream.sampling
    loss.backward(); ps.dense_opt.step() (under ps.dense_lock); ps.sparse_opt.step(now)

Snapshots are plain data (`state()` -> (JSON meta, arrays)), written with `freshrec.checkpoint.format`
under kind "training-ps"; array names are prefixed:

    table.<slot>.shard<k>.<name>   each shard's `EmbeddingTable.state()` arrays (ids, rows, ...)
    dense.<param>                  the dense weights (`dense_state()`), e.g. dense.dnn.0.weight
    opt.<index>.<key>              the Adam state of dense parameter <index> (step, exp_avg, ...)

and meta holds the spec, the DNN widths, the shard count, `step`, `data_time`, the dense optimizer's
param groups and the caller's `positions` (e.g. examples-log and parameter-log offsets the snapshot
reflects). `TrainingPS.from_state(meta, arrays)` rebuilds an identical PS.

Thread safety: tables have their own locks. The dense weights change only inside `dense_lock`;
`dense_state()` copies them under the same lock, so a publisher in another thread never reads a
half-stepped set.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from freshrec.checkpoint.format import read_snapshot, strip_prefix, with_prefix, write_snapshot
from freshrec.checkpoint.torch_state import optimizer_from_arrays, optimizer_to_arrays
from freshrec.errors import ConfigError, SnapshotError
from freshrec.model import CollisionlessEmbedding, DeepFM, FeatureSpec, SparseOptimizer
from freshrec.ps.sharded import ShardedTable
from freshrec.table import EmbeddingTable
from freshrec.train.step import train_step

__all__ = ["SNAPSHOT_KIND", "TrainingPS", "training_ps_state"]

SNAPSHOT_KIND = "training-ps"


def training_ps_state(
    *,
    spec: FeatureSpec,
    hidden: Sequence[int],
    seed: int,
    dense_lr: float,
    shards: int,
    step: int,
    data_time: float | None,
    positions: Mapping[str, Any] | None,
    tables: Mapping[str, ShardedTable | EmbeddingTable],
    dense: Mapping[str, np.ndarray],
    opt_meta: Mapping[str, Any],
    opt_arrays: Mapping[str, np.ndarray],
) -> tuple[dict, dict[str, np.ndarray]]:
    """The training-PS snapshot layout (module docstring) from its parts; an EmbeddingTable counts
    as a one-shard table. `TrainingPS.state` and `OnlineTrainer.state` both write it."""
    meta: dict[str, Any] = {
        "spec": spec.to_dict(),
        "hidden": list(hidden),
        "seed": int(seed),
        "dense_lr": float(dense_lr),
        "shards": int(shards),
        "step": int(step),
        "data_time": data_time,
        "positions": dict(positions or {}),
        "tables": {},
        "dense_opt": dict(opt_meta),
    }
    arrays: dict[str, np.ndarray] = {}
    for name, t in tables.items():
        if isinstance(t, EmbeddingTable):
            t = ShardedTable(t.config, tables=[t], pool=None)
        tm, ta = t.state()
        meta["tables"][name] = tm
        arrays.update(with_prefix(f"table.{name}", ta))
    arrays.update(with_prefix("dense", dense))
    arrays.update(opt_arrays)
    return meta, arrays


def _hidden_of(model: DeepFM) -> tuple[int, ...]:
    return tuple(m.out_features for m in model.dnn if isinstance(m, nn.Linear))[:-1]


class TrainingPS:
    """Tables (ShardedTable per slot) + dense weights of a DeepFM; see the module docstring.

    Args:
        spec: the model's slots and dense width; table configs come from `spec.table_config(slot,
            extra_columns=1)`.
        shards: in-process shards per table.
        hidden: DNN widths of the DeepFM.
        seed: seed of the dense weights' initialization.
        dense_lr: Adam learning rate of the dense weights.
        tables: existing tables by slot (e.g. restored); default: new empty ShardedTables.
    """

    def __init__(
        self,
        spec: FeatureSpec,
        *,
        shards: int = 4,
        hidden: Sequence[int] = (256, 128),
        seed: int = 0,
        dense_lr: float = 1e-3,
        tables: Mapping[str, ShardedTable | EmbeddingTable] | None = None,
    ) -> None:
        if shards < 1:
            msg = f"TrainingPS: shards must be >= 1, got {shards}"
            raise ConfigError(msg)
        self.spec = spec
        self.hidden = tuple(int(h) for h in hidden)
        self.seed = int(seed)
        self.dense_lr = float(dense_lr)
        if tables is None:
            tables = {
                n: ShardedTable(spec.table_config(n, extra_columns=1), shards=shards) for n in spec.names
            }
        if set(tables) != set(spec.names):
            msg = f"TrainingPS: tables {sorted(tables)} do not match slots {sorted(spec.names)}"
            raise ConfigError(msg)
        self.tables: dict[str, ShardedTable | EmbeddingTable] = {n: tables[n] for n in spec.names}
        self.n_shards = shards
        layers = nn.ModuleDict(
            {  # a ShardedTable has the EmbeddingTable interface the layer uses
                n: CollisionlessEmbedding(self.tables[n].config, table=self.tables[n])  # type: ignore[arg-type]
                for n in spec.names
            }
        )
        self.model = DeepFM(spec, layers, hidden=self.hidden, seed=self.seed)
        self.dense_opt = torch.optim.Adam(self.model.dense_parameters(), lr=self.dense_lr)
        self.sparse_opt = SparseOptimizer(self.model)
        self.dense_lock = threading.Lock()
        self.step = 0
        self.data_time: float | None = None

    @classmethod
    def from_model(cls, model: DeepFM, *, dense_lr: float = 1e-3, seed: int = 0) -> TrainingPS:
        """A PS over an existing collisionless DeepFM (e.g. after batch training): its tables are
        used as they are (not copied; an EmbeddingTable counts as one shard) and its dense weights
        are copied into the PS's model. The dense optimizer starts fresh."""
        layers = model.collisionless
        if set(layers) != set(model.spec.names):
            msg = "TrainingPS.from_model needs a DeepFM whose every slot is collisionless"
            raise ConfigError(msg)
        tables = {n: layer.table for n, layer in layers.items()}
        shards = {len(t.shards) if isinstance(t, ShardedTable) else 1 for t in tables.values()}
        ps = cls(
            model.spec,
            shards=max(shards),
            hidden=_hidden_of(model),
            seed=seed,
            dense_lr=dense_lr,
            tables=tables,
        )
        ps.load_dense({k: v.detach().cpu().numpy() for k, v in model.state_dict().items()})
        return ps

    # ---- training ------------------------------------------------------------------------------
    def train_step(
        self,
        sparse: Mapping[str, Any],
        dense: torch.Tensor | None,
        label: torch.Tensor,
        *,
        now: float,
        sample_rate: torch.Tensor | float | None = None,
    ) -> float:
        """One step on a batch (DeepFM input layout); returns the loss. `now`: data time (s)."""
        offset = None
        if sample_rate is not None:
            offset = -torch.log(torch.as_tensor(sample_rate, dtype=torch.float32)).expand(label.shape[0])
        _, loss = train_step(
            self.model,
            sparse,
            dense,
            label,
            now=now,
            offset=offset,
            dense_opt=self.dense_opt,
            dense_lock=self.dense_lock,
            sparse_opt=self.sparse_opt,
        )
        self.step += 1
        self.data_time = now if self.data_time is None else max(self.data_time, float(now))
        return float(loss)

    # ---- dense weights -------------------------------------------------------------------------
    def dense_state(self) -> dict[str, np.ndarray]:
        """A copy of the dense weights: state-dict name -> array (no embedding rows)."""
        with self.dense_lock:
            return {k: v.detach().cpu().numpy().copy() for k, v in self.model.state_dict().items()}

    def load_dense(self, tensors: Mapping[str, np.ndarray]) -> None:
        """Set the dense weights from `dense_state()`-shaped arrays (all names must be present)."""
        sd = {k: torch.from_numpy(np.array(v)) for k, v in tensors.items()}
        with self.dense_lock:
            self.model.load_state_dict(sd, strict=True)

    # ---- snapshot ------------------------------------------------------------------------------
    def state(self, positions: Mapping[str, Any] | None = None) -> tuple[dict, dict[str, np.ndarray]]:
        """The whole PS as (JSON meta, arrays); `positions` is stored as given (JSON data)."""
        with self.dense_lock:
            dense = {k: v.detach().cpu().numpy().copy() for k, v in self.model.state_dict().items()}
            opt_meta, opt_arrays = optimizer_to_arrays(self.dense_opt, "opt")
        return training_ps_state(
            spec=self.spec,
            hidden=self.hidden,
            seed=self.seed,
            dense_lr=self.dense_lr,
            shards=self.n_shards,
            step=self.step,
            data_time=self.data_time,
            positions=positions,
            tables=self.tables,
            dense=dense,
            opt_meta=opt_meta,
            opt_arrays=opt_arrays,
        )

    @classmethod
    def from_state(
        cls, meta: Mapping[str, Any], arrays: Mapping[str, np.ndarray], *, source: str = "<state>"
    ) -> TrainingPS:
        """Inverse of `state()`; raises SnapshotError naming `source` when the parts disagree."""
        try:
            spec = FeatureSpec.from_dict(meta["spec"])
            tables = {
                name: ShardedTable.from_state(tm, strip_prefix(f"table.{name}", arrays), source=source)
                for name, tm in meta["tables"].items()
            }
            ps = cls(
                spec,
                shards=int(meta["shards"]),
                hidden=tuple(meta["hidden"]),
                seed=int(meta["seed"]),
                dense_lr=float(meta["dense_lr"]),
                tables=tables,
            )
            ps.load_dense(strip_prefix("dense", arrays))
            optimizer_from_arrays(ps.dense_opt, meta["dense_opt"], arrays, "opt")
        except (KeyError, TypeError, ValueError, RuntimeError, ConfigError) as e:
            msg = f"{source}: not a usable training-PS snapshot ({e!r})"
            raise SnapshotError(msg) from e
        ps.step = int(meta["step"])
        dt = meta.get("data_time")
        ps.data_time = None if dt is None or not math.isfinite(float(dt)) else float(dt)
        return ps

    def save(self, path: str | Path, positions: Mapping[str, Any] | None = None) -> Path:
        """Write `state(positions)` as a snapshot directory at `path` (atomic)."""
        meta, arrays = self.state(positions)
        return write_snapshot(path, kind=SNAPSHOT_KIND, meta=meta, arrays=arrays)

    @classmethod
    def load(cls, path: str | Path) -> tuple[TrainingPS, dict[str, Any]]:
        """(ps, positions) from a snapshot written by `save`."""
        meta, arrays = read_snapshot(path, kind=SNAPSHOT_KIND)
        return cls.from_state(meta, arrays, source=str(path)), dict(meta.get("positions", {}))

    # ---- inspection ----------------------------------------------------------------------------
    def table_sizes(self) -> dict[str, int]:
        return {n: len(t) for n, t in self.tables.items()}

"""`TrainingPS`: the one owner of training state, and the one snapshot layout every role reads.

A `TrainingPS` holds, for any model that follows `freshrec.model.contract`:

- the model (`model`), rebuilt anywhere from its `ModelSpec` (import path + kwargs), its
  `FeatureSpec` and its tasks;
- one table per collisionless slot (`tables[slot]`): an `EmbeddingTable`, or a `ShardedTable` of N
  in-process shards (a hash of the id picks the shard), trained by its own per-row optimizer;
- the dense optimizer (Adam over every parameter but hashed rows), the hashed rows' optimizer
  (Adagrad, when the model has hashed slots) and the `SparseOptimizer` of the tables;
- progress: `step`, `examples`, `data_time` (the newest data time trained on), `positions` (the
  examples log's partition -> next offset after the last batch trained) and the progressive
  validation window of every task (predictions made before the model saw the batch).

Batch training (`freshrec.train.batch`), the online loop (`freshrec.train.online`) and the
benchmarks all train through `train_step`, the one training step:

    out = outputs_2d(model(batch.sparse, batch.dense), T)              # (B, T)
    loss = sum_t w_t * loss_t(out[:, t], batch.targets[:, t])          # freshrec.model.task_losses
    loss.backward()
    dense_opt.step() under dense_lock     # a publisher in another thread never copies half-stepped weights
    hashed_opt.step()                     # rows of hashed embeddings, if any
    sparse_opt.step(now=batch.now)        # per-row optimizers of the collisionless tables

The snapshot layout (`state()` / `from_state()`; files by `freshrec.checkpoint.format`). Manifest
kind "training" (full) or "training-incremental"; meta:

    {"layout": "freshrec-training", "layout_version": 1, "snapshot": "full" | "incremental",
     "model": {"path": "freshrec.model:DeepFM", "kwargs": {...}}, "features": FeatureSpec.to_dict(),
     "tasks": [Task.to_dict(), ...],
     "embeddings": {slot: {"kind": "collisionless"} | {"kind": "hashed", ...}},
     "tables": {slot: ShardedTable.state() meta (full) or take_changes meta (incremental)},
     "optim": {"dense_lr", "hashed_lr"}, "dense_opt": ..., "hashed_opt": ... | null,
     "step", "examples", "bad_records", "loss_sum", "data_time",
     "positions": {"trained": {"0": 1234}, "params": [..], "params_version": 7, ...},
     "windows": {task: n}, "extra": {...caller's JSON...}}

and arrays `table.<slot>.shard<k>.<name>` (a plain table is one shard), `dense.<param>` (the whole
`state_dict()`), `opt.dense.*`, `opt.hashed.*`, `window.<task>.scores|labels`. A full snapshot is
the whole state; an incremental one holds the rows changed since the previous snapshot of its chain
(the "snapshot" change channel of every table) plus everything that is not rows (it is small).
`freshrec.checkpoint.periodic` chains them; `load_training_snapshot` reads a snapshot folder, a
snapshot store or a periodic root alike, and refuses older layouts with how to convert them.

Thread safety: tables have their own locks; the dense weights change only inside `dense_lock`, and
`dense_state()` copies them under it.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from freshrec.checkpoint.format import MANIFEST_NAME, read_manifest, strip_prefix, with_prefix, write_snapshot
from freshrec.checkpoint.torch_state import optimizer_from_arrays, optimizer_to_arrays
from freshrec.errors import ConfigError, SnapshotError
from freshrec.model import (
    Batch,
    CollisionlessEmbedding,
    FeatureSpec,
    HashedEmbedding,
    ModelSpec,
    SparseOptimizer,
    Task,
    build_model,
)
from freshrec.model.contract import DEFAULT_TASKS, extra_columns_of, outputs_2d, task_losses
from freshrec.ps.sharded import ShardedTable
from freshrec.table import EmbeddingTable, TableConfig

__all__ = [
    "LAYOUT",
    "LAYOUT_VERSION",
    "SNAPSHOT_KIND",
    "SNAPSHOT_KIND_INCREMENTAL",
    "ScoreWindow",
    "StepResult",
    "TrainingPS",
    "check_layout",
    "load_training_snapshot",
    "model_spec_of",
    "resolve_snapshot",
]

SNAPSHOT_KIND = "training"
SNAPSHOT_KIND_INCREMENTAL = "training-incremental"
LAYOUT = "freshrec-training"
LAYOUT_VERSION = 1

# manifest kinds of the layouts this one replaced, with how to get a current snapshot from them
_OLD_KINDS = {
    "model": "a batch checkpoint of freshrec 0.1 (model/ + tables/ folders)",
    "training-ps": "a training-PS snapshot of freshrec 0.1",
    "online-full": "an online-trainer snapshot of freshrec 0.1",
    "online-incr": "an online-trainer snapshot of freshrec 0.1",
}
_CONVERT = (
    "convert it with `freshrec snapshot upgrade OLD NEW` (kinds 'model' and 'training-ps'), "
    "or write a new one by rerunning the command that made it (`freshrec train ... --out DIR`, "
    "`freshrec train online ... --snapshots DIR`)"
)

Table = EmbeddingTable | ShardedTable


def check_layout(manifest: Mapping[str, Any], source: str) -> None:
    """Raise SnapshotError (with how to convert) unless `manifest` is of the current layout."""
    kind = manifest.get("kind")
    if kind in _OLD_KINDS:
        msg = f"{source}: {_OLD_KINDS[kind]} (kind {kind!r}), not the current snapshot layout; {_CONVERT}"
        raise SnapshotError(msg)
    meta = manifest.get("meta", {})
    if kind not in (SNAPSHOT_KIND, SNAPSHOT_KIND_INCREMENTAL) or meta.get("layout") != LAYOUT:
        msg = f"{source}: not a freshrec training snapshot (kind {kind!r})"
        raise SnapshotError(msg)
    if int(meta.get("layout_version", 0)) > LAYOUT_VERSION:
        msg = (
            f"{source}: layout version {meta.get('layout_version')} is newer than this freshrec reads "
            f"({LAYOUT_VERSION}); upgrade freshrec"
        )
        raise SnapshotError(msg)


def model_spec_of(model: nn.Module) -> ModelSpec:
    """The `ModelSpec` that rebuilds `model`: the one `build_model` recorded, else the class's
    import path with its `model_kwargs()`; ConfigError when neither is known."""
    spec = getattr(model, "model_spec", None)
    if isinstance(spec, ModelSpec):
        return spec
    kwargs = getattr(model, "model_kwargs", None)
    if callable(kwargs):
        cls = type(model)
        return ModelSpec(f"{cls.__module__}:{cls.__qualname__}", kwargs())
    msg = f"{type(model).__name__}: unknown model spec; build it with freshrec.model.build_model"
    raise ConfigError(msg)


class ScoreWindow:
    """The last `size` (output, target) pairs of one task, for running metrics (plain arrays)."""

    def __init__(self, size: int) -> None:
        self.scores = np.zeros(size, np.float64)
        self.labels = np.zeros(size, np.float32)
        self.n = 0  # total pushed

    def push(self, scores: np.ndarray, labels: np.ndarray) -> None:
        size = self.scores.shape[0]
        for a in range(0, scores.shape[0], size):
            s, y = scores[a : a + size], labels[a : a + size]
            idx = (self.n + np.arange(s.shape[0])) % size
            self.scores[idx], self.labels[idx] = s, y
            self.n += s.shape[0]

    def filled(self) -> tuple[np.ndarray, np.ndarray]:
        k = min(self.n, self.scores.shape[0])
        return self.scores[:k], self.labels[:k]


@dataclass(frozen=True)
class StepResult:
    """One training step: outputs (B, T) made before the update (detached), total and per-task loss."""

    outputs: torch.Tensor
    loss: float
    task_losses: tuple[float, ...]


def _layer_meta(layer: nn.Module) -> dict[str, Any]:
    if isinstance(layer, HashedEmbedding):
        return layer.describe()
    if isinstance(layer, CollisionlessEmbedding):
        return {"kind": "collisionless"}
    msg = f"embedding layer {type(layer).__name__} is neither collisionless nor hashed"
    raise ConfigError(msg)


def _table_state(t: Table) -> tuple[dict, dict[str, np.ndarray]]:
    if isinstance(t, EmbeddingTable):
        t = ShardedTable(t.config, tables=[t], pool=None)
    return t.state()


def _table_from_state(meta: Mapping[str, Any], arrays: Mapping[str, np.ndarray], source: str) -> Table:
    t = ShardedTable.from_state(dict(meta), dict(arrays), source=source)
    return t.shards[0] if len(t.shards) == 1 else t


class TrainingPS:
    """Model + tables + dense weights + optimizers + progress; see the module docstring.

    Args:
        spec: the model's slots and dense width.
        model: the model class (`ModelSpec`, or an import path / short name); default DeepFM with
            `hidden` and `seed` as its kwargs.
        tasks: the model's tasks (default: one binary "click").
        shards: in-process shards per collisionless table (1: a plain EmbeddingTable).
        dense_lr / hashed_lr: Adam rate of the dense weights, Adagrad rate of hashed rows.
        tables: existing tables by slot (e.g. restored); default: new empty ones.
        embedding / buckets / hash: "hashed" builds hashed layers (`buckets` per slot) instead.
        window: examples kept per task for progressive-validation metrics.
    """

    def __init__(
        self,
        spec: FeatureSpec,
        *,
        model: ModelSpec | str | None = None,
        tasks: Sequence[Task] | None = None,
        shards: int = 4,
        hidden: Sequence[int] = (256, 128),
        seed: int = 0,
        dense_lr: float = 1e-3,
        hashed_lr: float = 0.05,
        tables: Mapping[str, Table] | None = None,
        embedding: Literal["collisionless", "hashed"] = "collisionless",
        buckets: Mapping[str, int] | None = None,
        hash: str = "mix",
        window: int = 100_000,
        layers: Mapping[str, nn.Module] | None = None,
    ) -> None:
        if shards < 1:
            msg = f"TrainingPS: shards must be >= 1, got {shards}"
            raise ConfigError(msg)
        if isinstance(model, str):
            model = ModelSpec(model)
        model_spec = model or ModelSpec("freshrec.model:DeepFM", {"hidden": list(hidden), "seed": int(seed)})
        tasks = tuple(tasks) if tasks else DEFAULT_TASKS
        if layers is None and embedding == "collisionless":
            extra = extra_columns_of(model_spec.resolve())
            if tables is None:
                tables = {n: self._new_table(spec, n, extra, shards) for n in spec.names}
            if set(tables) != set(spec.names):
                msg = f"TrainingPS: tables {sorted(tables)} do not match slots {sorted(spec.names)}"
                raise ConfigError(msg)
            layers = {n: CollisionlessEmbedding(tables[n].config, table=tables[n]) for n in spec.names}  # type: ignore[arg-type]
        built = build_model(
            model_spec, spec, tasks=tasks, embedding=embedding, buckets=buckets, hash=hash, layers=layers
        )
        self._setup(built, model_spec, dense_lr=dense_lr, hashed_lr=hashed_lr, window=window, seed=seed)
        self.n_shards = shards

    @staticmethod
    def _new_table(spec: FeatureSpec, name: str, extra: int, shards: int) -> Table:
        cfg = spec.table_config(name, extra_columns=extra)
        return EmbeddingTable(cfg) if shards == 1 else ShardedTable(cfg, shards=shards)

    def _setup(
        self,
        model: nn.Module,
        model_spec: ModelSpec,
        *,
        dense_lr: float,
        hashed_lr: float,
        window: int,
        seed: int,
    ) -> None:
        self.model: Any = model
        # the training step's randomness (dropout): the PS's own, never the process-wide torch RNG
        self.rng = torch.Generator().manual_seed(int(seed))
        self.model_spec = model_spec
        self.spec: FeatureSpec = model.spec  # type: ignore[assignment]
        self.tasks: tuple[Task, ...] = tuple(model.tasks)  # type: ignore[arg-type]
        self.dense_lr = float(dense_lr)
        self.hashed_lr = float(hashed_lr)
        model.train()
        hashed = [m.weight for m in model.modules() if isinstance(m, HashedEmbedding)]
        skip = {id(p) for p in hashed}
        self.dense_opt = torch.optim.Adam(
            [p for p in model.parameters() if id(p) not in skip], lr=self.dense_lr
        )
        self.hashed_opt = torch.optim.Adagrad(hashed, lr=self.hashed_lr) if hashed else None
        self.sparse_opt = SparseOptimizer(model)
        self.dense_lock = threading.Lock()
        self.step = 0
        self.examples = 0
        self.bad_records = 0
        self.loss_sum = 0.0
        self.data_time: float | None = None
        self.positions: dict[int, int] = {}
        self.windows = {t.name: ScoreWindow(window) for t in self.tasks}
        self.n_shards = 1

    def reset_windows(self) -> None:
        """Empty the progressive-validation windows (a new phase of training starts: e.g. online
        training from a batch snapshot, whose windows hold the batch epochs' outputs)."""
        self.windows = {k: ScoreWindow(w.scores.shape[0]) for k, w in self.windows.items()}

    @classmethod
    def from_model(
        cls,
        model: nn.Module,
        *,
        model_spec: ModelSpec | None = None,
        dense_lr: float = 1e-3,
        hashed_lr: float = 0.05,
        seed: int = 0,
        window: int = 100_000,
    ) -> TrainingPS:
        """A PS over an existing model (its tables and weights used as they are, not copied).

        The optimizers start fresh. `model_spec` defaults to what `model_spec_of(model)` finds."""
        ps = cls.__new__(cls)
        ps._setup(
            model,
            model_spec or model_spec_of(model),
            dense_lr=dense_lr,
            hashed_lr=hashed_lr,
            window=window,
            seed=seed,
        )
        shards = {len(t.shards) if isinstance(t, ShardedTable) else 1 for t in ps.tables.values()}
        ps.n_shards = max(shards) if shards else 1
        return ps

    # ---- properties ----------------------------------------------------------------------------
    @property
    def tables(self) -> dict[str, Any]:
        """slot -> table of every collisionless layer (EmbeddingTable or ShardedTable)."""
        return {n: m.table for n, m in self.model.embeddings.items() if isinstance(m, CollisionlessEmbedding)}

    def table_sizes(self) -> dict[str, int]:
        return {n: len(t) for n, t in self.tables.items()}

    # ---- training ------------------------------------------------------------------------------
    def train_step(
        self,
        batch: Batch | Mapping[str, Any],
        *args: Any,
        timings: dict[str, float] | None = None,
        **kwargs: Any,
    ) -> Any:
        """One step on a `Batch` (module docstring); returns a `StepResult`, and records the
        pre-update outputs in the progressive-validation windows. `timings` (optional) accumulates
        the seconds of each phase ("forward", "backward", "dense step", "sparse step").

        The older form `train_step(sparse, dense, label, *, now, sample_rate=None)` (one binary
        task) returns the loss as a float."""
        if not isinstance(batch, Batch):
            return self._train_step_arrays(batch, *args, **kwargs)
        clock = time.perf_counter
        t0 = clock()
        model = self.model
        model.train()
        # torch layers (dropout) draw from the process-wide RNG only: run the forward pass on the
        # PS's own generator's state, leaving the process's RNG as it was
        with torch.random.fork_rng(devices=[]):
            torch.set_rng_state(self.rng.get_state())
            out = outputs_2d(model(batch.sparse, batch.dense), len(self.tasks))  # (B, T)
            self.rng.set_state(torch.get_rng_state())
        loss, parts = task_losses(out, batch, self.tasks)
        t1 = clock()
        loss.backward()
        t2 = clock()
        with self.dense_lock:
            self.dense_opt.step()
        self.dense_opt.zero_grad(set_to_none=True)
        t3 = clock()
        if self.hashed_opt is not None:
            self.hashed_opt.step()
            self.hashed_opt.zero_grad(set_to_none=True)
        self.sparse_opt.step(now=batch.now)
        t4 = clock()
        if timings is not None:
            for k, dt in zip(
                ("forward", "backward", "dense step", "sparse step"),
                (t1 - t0, t2 - t1, t3 - t2, t4 - t3),
                strict=True,
            ):
                timings[k] = timings.get(k, 0.0) + dt
        outputs = out.detach()
        value = float(loss.detach())
        self._record(outputs, batch, value)
        return StepResult(outputs, value, tuple(float(p.detach()) for p in parts))

    def _train_step_arrays(
        self,
        sparse: Mapping[str, Any],
        dense: torch.Tensor | None,
        label: torch.Tensor,
        *,
        now: float,
        sample_rate: torch.Tensor | float | None = None,
    ) -> float:
        offset = weight = None
        if sample_rate is not None:
            r = torch.as_tensor(sample_rate, dtype=torch.float32).expand(label.shape[0])
            offset, weight = -torch.log(r), 1.0 / r
        targets = label.to(torch.float32).reshape(-1, 1).expand(-1, len(self.tasks))
        b = Batch(
            sparse=dict(sparse), dense=dense, targets=targets, offset=offset, now=float(now), weight=weight
        )
        return self.train_step(b).loss

    def _record(self, outputs: torch.Tensor, batch: Batch, loss: float) -> None:
        n = len(batch)
        self.step += 1
        self.examples += n
        self.loss_sum += loss * n
        self.data_time = float(batch.now) if self.data_time is None else max(self.data_time, float(batch.now))
        off = batch.offset
        for t, task in enumerate(self.tasks):
            z = outputs[:, t]
            if task.kind == "binary" and off is not None:
                z = z + off  # the logit on the data's own sampling, as the loss saw it
            self.windows[task.name].push(z.numpy().astype(np.float64), batch.targets[:, t].numpy())

    # ---- dense weights -------------------------------------------------------------------------
    def dense_state(self) -> dict[str, np.ndarray]:
        """A copy of the dense weights: state-dict name -> array (no table rows)."""
        with self.dense_lock:
            return {k: v.detach().cpu().numpy().copy() for k, v in self.model.state_dict().items()}

    def load_dense(self, tensors: Mapping[str, np.ndarray]) -> None:
        """Set the dense weights from `dense_state()`-shaped arrays (all names must be present)."""
        sd = {k: torch.from_numpy(np.array(v)) for k, v in tensors.items()}
        with self.dense_lock:
            self.model.load_state_dict(sd, strict=True)

    # ---- snapshot ------------------------------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        """What rebuilds the model: model spec, feature spec, tasks, embedding kinds (JSON)."""
        return {
            "model": self.model_spec.to_dict(),
            "features": self.spec.to_dict(),
            "tasks": [t.to_dict() for t in self.tasks],
            "embeddings": {n: _layer_meta(m) for n, m in self.model.embeddings.items()},
        }

    def state(
        self,
        positions: Mapping[str, Any] | None = None,
        *,
        extra: Mapping[str, Any] | None = None,
        changes: str | None = None,
        drain: str | None = None,
    ) -> tuple[dict, dict[str, np.ndarray]]:
        """The PS as (JSON meta, arrays) in the snapshot layout (module docstring).

        positions: JSON stored under meta["positions"] next to "trained" (the examples-log
        positions after the last batch trained, `self.positions`).
        changes: write an incremental snapshot of the rows changed on this change channel since
        its last take. drain: for a full snapshot, drain this change channel first (so the next
        incremental starts from here)."""
        meta: dict[str, Any] = {
            "layout": LAYOUT,
            "layout_version": LAYOUT_VERSION,
            "snapshot": "full" if changes is None else "incremental",
            **self.describe(),
            "tables": {},
            "optim": {"dense_lr": self.dense_lr, "hashed_lr": self.hashed_lr},
            "step": int(self.step),
            "examples": int(self.examples),
            "bad_records": int(self.bad_records),
            "loss_sum": float(self.loss_sum),
            "data_time": self.data_time,
            "positions": {
                **dict(positions or {}),
                "trained": {str(p): int(o) for p, o in self.positions.items()},
            },
            "windows": {k: int(w.n) for k, w in self.windows.items()},
            "extra": dict(extra or {}),
        }
        arrays: dict[str, np.ndarray] = {}
        for name, t in self.tables.items():
            if changes is not None:
                tm, ta = t.take_changes(changes)
            else:
                if drain is not None:
                    t.take_touched(drain)
                tm, ta = _table_state(t)
            meta["tables"][name] = tm
            arrays.update(with_prefix(f"table.{name}", ta))
        with self.dense_lock:
            arrays.update(
                with_prefix(
                    "dense", {k: v.detach().cpu().numpy().copy() for k, v in self.model.state_dict().items()}
                )
            )
            meta["dense_opt"], oa = optimizer_to_arrays(self.dense_opt, "opt.dense")
            arrays.update(oa)
        meta["hashed_opt"] = None
        if self.hashed_opt is not None:
            meta["hashed_opt"], ha = optimizer_to_arrays(self.hashed_opt, "opt.hashed")
            arrays.update(ha)
        for k, w in self.windows.items():
            arrays[f"window.{k}.scores"] = w.scores.copy()
            arrays[f"window.{k}.labels"] = w.labels.copy()
        return meta, arrays

    def check_same_model(self, meta: Mapping[str, Any], source: str) -> None:
        """SnapshotError naming `source` unless its model, features and tasks are this PS's."""
        mine = self.describe()
        for key in ("model", "features", "tasks"):
            if meta.get(key) != mine[key]:
                msg = (
                    f"{source}: the snapshot's {key} ({meta.get(key)!r}) differ from this trainer's "
                    f"({mine[key]!r}); start from a snapshot of the same model or start a new one"
                )
                raise SnapshotError(msg)

    def load_state(
        self,
        meta: Mapping[str, Any],
        arrays: Mapping[str, np.ndarray],
        *,
        source: str = "<state>",
        tables: bool = True,
    ) -> None:
        """Restore this PS in place from `state()` output of the same model (SnapshotError naming
        `source` otherwise): tables (when `tables`, from a full snapshot), dense weights, optimizer
        states, progress, positions and windows."""
        self.check_same_model(meta, source)
        try:
            if tables:
                if meta.get("snapshot") != "full":
                    msg = f"{source}: an incremental snapshot cannot start a restore"
                    raise SnapshotError(msg)
                layers = self.model.embeddings
                for name, tm in meta["tables"].items():
                    layer = layers[name]
                    layer.table = _table_from_state(tm, strip_prefix(f"table.{name}", arrays), source)
            self._load_rest(meta, arrays)
        except (KeyError, TypeError, ValueError, RuntimeError) as e:
            msg = f"{source}: not a usable training snapshot ({e!r})"
            raise SnapshotError(msg) from e

    def _load_rest(self, meta: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> None:
        self.load_dense(strip_prefix("dense", arrays))
        optimizer_from_arrays(self.dense_opt, meta["dense_opt"], arrays, "opt.dense")
        if self.hashed_opt is not None and meta.get("hashed_opt"):
            optimizer_from_arrays(self.hashed_opt, meta["hashed_opt"], arrays, "opt.hashed")
        self.step = int(meta["step"])
        self.examples = int(meta.get("examples", 0))
        self.bad_records = int(meta.get("bad_records", 0))
        self.loss_sum = float(meta.get("loss_sum", 0.0))
        dt = meta.get("data_time")
        self.data_time = None if dt is None or not math.isfinite(float(dt)) else float(dt)
        pos = dict(meta.get("positions", {})).get("trained", {})
        self.positions = {int(p): int(o) for p, o in pos.items()}
        for k, w in self.windows.items():
            s = arrays.get(f"window.{k}.scores")
            if s is not None and s.shape == w.scores.shape:
                w.scores[:] = s
                w.labels[:] = arrays[f"window.{k}.labels"]
                w.n = int(meta.get("windows", {}).get(k, 0))
        self.model.train()
        self.sparse_opt.zero_grad()

    def apply_changes(
        self, meta: Mapping[str, Any], arrays: Mapping[str, np.ndarray], *, source: str = "<state>"
    ) -> None:
        """Apply an incremental snapshot on top of the restored state (rows, then everything else)."""
        self.check_same_model(meta, source)
        tables = self.tables
        if set(meta["tables"]) != set(tables):
            msg = f"{source}: tables {sorted(meta['tables'])} do not match the model's {sorted(tables)}"
            raise SnapshotError(msg)
        try:
            for name, tm in meta["tables"].items():
                tables[name].apply_changes(tm, strip_prefix(f"table.{name}", arrays))
            self._load_rest(meta, arrays)
        except (KeyError, TypeError, ValueError, RuntimeError) as e:
            msg = f"{source}: not a usable incremental snapshot ({e!r})"
            raise SnapshotError(msg) from e

    @classmethod
    def _rebuild(
        cls, meta: Mapping[str, Any], table: Callable[[str, Mapping[str, Any]], Table], source: str
    ) -> TrainingPS:
        """A PS of the model `meta` describes (model spec, features, tasks, embedding kinds,
        optimizer rates), each collisionless slot over `table(slot, table meta)`; hashed slots
        start at zeros (their rows are dense weights, loaded with them)."""
        try:
            spec = FeatureSpec.from_dict(meta["features"])
            model_spec = ModelSpec.from_dict(meta["model"])
            tasks = tuple(Task.from_dict(t) for t in meta["tasks"])
            layers: dict[str, nn.Module] = {}
            shards = 1
            for name, lm in meta["embeddings"].items():
                if lm["kind"] == "hashed":
                    layers[name] = HashedEmbedding.from_description(lm, name=name)
                    continue
                t = table(name, meta["tables"][name])
                shards = max(shards, len(t.shards) if isinstance(t, ShardedTable) else 1)
                layers[name] = CollisionlessEmbedding(t.config, table=t)  # type: ignore[arg-type]
            optim = meta.get("optim", {})
            model = build_model(model_spec, spec, tasks=tasks, layers=layers)
        except (KeyError, TypeError, ValueError, ConfigError) as e:
            msg = f"{source}: not a usable training snapshot ({e})"
            raise SnapshotError(msg) from e
        ps = cls.from_model(
            model,
            model_spec=model_spec,
            dense_lr=float(optim.get("dense_lr", 1e-3)),
            hashed_lr=float(optim.get("hashed_lr", 0.05)),
        )
        ps.n_shards = shards
        return ps

    @classmethod
    def from_state(
        cls, meta: Mapping[str, Any], arrays: Mapping[str, np.ndarray], *, source: str = "<state>"
    ) -> TrainingPS:
        """A PS rebuilt from a full `state()`: the model from its spec, the tables from their rows."""
        ps = cls._rebuild(
            meta,
            lambda name, tm: _table_from_state(tm, strip_prefix(f"table.{name}", arrays), source),
            source,
        )
        try:
            ps._load_rest(meta, arrays)
        except (KeyError, TypeError, ValueError, RuntimeError) as e:
            msg = f"{source}: not a usable training snapshot ({e!r})"
            raise SnapshotError(msg) from e
        return ps

    def save(
        self,
        path: str | Path,
        positions: Mapping[str, Any] | None = None,
        *,
        extra: Mapping[str, Any] | None = None,
    ) -> Path:
        """Write a full snapshot folder at `path` (atomic, checksummed)."""
        meta, arrays = self.state(positions, extra=extra)
        return write_snapshot(path, kind=SNAPSHOT_KIND, meta=meta, arrays=arrays)

    @classmethod
    def empty_like(cls, meta: Mapping[str, Any], *, source: str = "<state>") -> TrainingPS:
        """A PS of the model a snapshot's meta describes, with new empty tables of the snapshot's
        configs and shard counts (what `recover` restores into)."""

        def empty(name: str, tm: Mapping[str, Any]) -> Table:
            cfg = TableConfig.from_dict(tm["config"])
            n = len(tm.get("shards", [None]))
            return EmbeddingTable(cfg) if n == 1 else ShardedTable(cfg, shards=n)

        return cls._rebuild(meta, empty, source)

    @classmethod
    def load(cls, path: str | Path) -> tuple[TrainingPS, dict[str, Any]]:
        """(ps, positions) from any snapshot a command wrote: a snapshot folder, a snapshot store
        or a periodic-snapshot root (its newest full snapshot plus incrementals)."""
        ps, meta = load_training_snapshot(path)
        return ps, dict(meta.get("positions", {}))


def resolve_snapshot(path: str | Path) -> tuple[str, Path]:
    """What kind of snapshot location `path` is: ("dir", the folder), ("store", its newest
    snapshot) or ("chain", the periodic root). SnapshotError naming the path otherwise, with how to
    convert an older layout."""
    from freshrec.checkpoint.periodic import chain_root
    from freshrec.checkpoint.store import SnapshotStore

    p = Path(path)
    if is_snapshot_dir(p):
        check_layout(read_manifest(p), str(p))
        return "dir", p
    if (p / "model" / MANIFEST_NAME).is_file():
        check_layout(read_manifest(p / "model"), str(p / "model"))
    if chain_root(p):
        return "chain", p
    if p.is_dir():
        latest = (
            SnapshotStore(p).latest_path() if any(c.name.startswith("step-") for c in p.iterdir()) else None
        )
        if latest is not None:
            check_layout(read_manifest(latest), str(latest))
            return "store", latest
    msg = (
        f"{p}: no snapshot there (expected a snapshot folder with {MANIFEST_NAME}, a snapshot store "
        "or a periodic-snapshot folder written by `freshrec train` / `freshrec train online`)"
    )
    raise SnapshotError(msg)


def load_training_snapshot(path: str | Path) -> tuple[TrainingPS, dict[str, Any]]:
    """(ps, meta of the newest snapshot applied) from a snapshot folder, a snapshot store or a
    periodic root (newest readable full snapshot + its incrementals, read only: nothing is moved)."""
    from freshrec.checkpoint.format import read_snapshot
    from freshrec.checkpoint.periodic import _full_store, recover

    where, p = resolve_snapshot(path)
    if where != "chain":
        meta, arrays = read_snapshot(p, kind=SNAPSHOT_KIND)
        return TrainingPS.from_state(meta, arrays, source=str(p)), meta
    fulls = _full_store(p, keep=1 << 30)
    steps = fulls.steps()
    if not steps:
        msg = f"{p}: the periodic-snapshot folder holds no full snapshot yet"
        raise SnapshotError(msg)
    manifest = read_manifest(fulls.path_for(steps[-1]))
    check_layout(manifest, str(fulls.path_for(steps[-1])))
    ps = TrainingPS.empty_like(manifest["meta"], source=str(p))
    info = recover(p, ps, quarantine=False)
    assert info is not None
    meta = dict(manifest["meta"])
    meta["positions"] = info.log_positions
    meta["step"] = info.step
    return ps, meta


def is_snapshot_dir(path: Path) -> bool:
    return (Path(path) / MANIFEST_NAME).is_file()


def read_kind(path: Path) -> str | None:
    """The manifest kind of the snapshot folder `path` (None when there is none)."""
    if not is_snapshot_dir(path):
        return None
    return str(read_manifest(path).get("kind"))

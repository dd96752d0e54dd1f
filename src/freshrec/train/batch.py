"""Batch training of any model on a columnar dataset: epochs over the past, evaluation on the future.

A dataset here is anything columnar with these attributes (what `freshrec.data` loaders return):

    sparse:      dict slot -> int64 (n,)        one id per example and slot
    multi:       dict slot -> Ragged (optional)  bags of ids: values int64, offsets int64 (n + 1,)
    dense:       float32 (n, k)                  k may be 0
    label:       float32 (n,)                    0/1, the label named `label_name` ("click")
    labels:      dict name -> float32 (n,)       further labels (optional), e.g. "rating"
    ts:          float64 (n,)                    data time, seconds
    sample_rate: float32 (n,) or None            negatives of the stream were kept at this rate

`train_model(train, test, config)` builds the model `config.model` names (an import path or a
short name, with `config.model_kwargs`, over `config.tasks`), wraps it in a `TrainingPS` (the one
owner of training state) and runs `config.epochs` epochs over `train` in mini-batches (shuffled each
epoch by `config.seed`) through `TrainingPS.train_step`, the step online training takes too; after
each epoch it evaluates every task on `test`. Binary tasks train with BCE on `logit - log(r)`, so
the model's own logit estimates the true, unsampled log-odds (`freshrec.stream.sampling`).
Evaluation: AUC ranks the model's own logits; log loss is measured against the test set as
sampled, i.e. on `logit - log(r)`; value tasks report RMSE. Both embedding kinds train their rows
with Adagrad at `config.sparse_lr`; the dense part uses Adam at `config.dense_lr`.

`save_checkpoint(result.ps, path, meta)` writes the one snapshot layout (`freshrec.ps.training`) at
`path`: what `freshrec train online --init`, `freshrec serve --snapshot` and `load_checkpoint` read.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import torch
from tqdm import tqdm

from freshrec.errors import ConfigError
from freshrec.model import Batch, FeatureSpec, ModelSpec, SlotModel, SlotSpec, Task, parse_tasks
from freshrec.model import build_model as build_contract_model
from freshrec.model.contract import DEFAULT_TASKS, outputs_2d
from freshrec.ps.training import TrainingPS
from freshrec.table import Adagrad, Initializer
from freshrec.train.metrics import auc, log_loss_from_logits

__all__ = [
    "DATASETS",
    "Batch",
    "ColumnarData",
    "EpochMetrics",
    "TrainConfig",
    "TrainResult",
    "build_model",
    "config_dict",
    "evaluate",
    "evaluate_tasks",
    "iter_batches",
    "model_spec_for",
    "load_checkpoint",
    "load_train_test",
    "metrics_table",
    "save_checkpoint",
    "spec_for",
    "time_split",
    "train_model",
]


class ColumnarData(Protocol):
    @property
    def sparse(self) -> Mapping[str, np.ndarray]: ...

    @property
    def dense(self) -> np.ndarray: ...

    @property
    def label(self) -> np.ndarray: ...

    @property
    def ts(self) -> np.ndarray: ...

    def __len__(self) -> int: ...


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Hyper-parameters of one batch training run (both embedding kinds read the same ones).

    model: an import path ("mypkg.towers:MyModel") or a short name ("deepfm", "dcn", "din");
    model_kwargs: its keyword arguments. For the shipped models `hidden`, `cross_layers` (DCN) and
    `seed` fill in the kwargs not given. tasks: the model's tasks (default: one binary "click").
    """

    epochs: int = 5
    batch_size: int = 1024
    eval_batch_size: int = 16384
    dim: int = 16
    model: str = "deepfm"
    model_kwargs: Mapping[str, Any] = field(default_factory=dict)
    tasks: tuple[Task, ...] = DEFAULT_TASKS
    hidden: tuple[int, ...] = (256, 128)
    cross_layers: int = 3  # DCN only
    dense_lr: float = 1e-3
    sparse_lr: float = 0.05
    init_scale: float = 0.01
    embedding: Literal["collisionless", "hashed"] = "collisionless"
    buckets: Mapping[str, int] | None = None  # per slot, for embedding="hashed"
    hash: Literal["mix", "modulo", "md5"] = "mix"
    seed: int = 0
    shuffle: bool = True
    sampling_correction: bool = True
    progress: bool = False
    table_overrides: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # slot -> TableConfig

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1:
            msg = f"epochs and batch_size must be >= 1, got {self.epochs}, {self.batch_size}"
            raise ConfigError(msg)
        if self.embedding == "hashed" and not self.buckets:
            msg = "embedding='hashed' needs buckets per slot"
            raise ConfigError(msg)
        if isinstance(self.tasks, str):
            object.__setattr__(self, "tasks", parse_tasks(self.tasks))


def model_spec_for(config: TrainConfig) -> ModelSpec:
    """The `ModelSpec` a config names; the shipped models take hidden / cross_layers / seed from it."""
    spec = ModelSpec(config.model, dict(config.model_kwargs))
    kwargs = dict(spec.kwargs)
    if spec.path in ("freshrec.model:DeepFM", "freshrec.model:DCN", "freshrec.model:DIN"):
        kwargs.setdefault("hidden", list(config.hidden))
        kwargs.setdefault("seed", config.seed)
        if spec.path == "freshrec.model:DCN":
            kwargs.setdefault("cross_layers", config.cross_layers)
    return ModelSpec(spec.path, kwargs)


@dataclass(frozen=True, kw_only=True)
class EpochMetrics:
    """What one epoch gave: mean training loss, the first task's AUC and log loss on the test set,
    every task's test metrics (`tasks`: name -> {"auc", "log_loss"} or {"rmse"}), throughput."""

    epoch: int
    train_loss: float
    auc: float
    log_loss: float
    examples: int
    seconds: float
    tasks: Mapping[str, Mapping[str, float]] = field(default_factory=dict)

    @property
    def examples_per_s(self) -> float:
        return self.examples / self.seconds if self.seconds > 0 else float("nan")


@dataclass
class TrainResult:
    model: SlotModel
    epochs: list[EpochMetrics]
    config: TrainConfig
    ps: TrainingPS | None = None

    @property
    def final(self) -> EpochMetrics:
        return self.epochs[-1]


def spec_for(data: ColumnarData, config: TrainConfig) -> FeatureSpec:
    """The FeatureSpec of a dataset's columns (slots in the dataset's order) under `config`."""
    slots = tuple(SlotSpec(name=s, table=dict(config.table_overrides.get(s, {}))) for s in data.sparse)
    slots += tuple(
        SlotSpec(name=s, multi_valued=True, table=dict(config.table_overrides.get(s, {})))
        for s in getattr(data, "multi", {})
    )
    dense = np.asarray(data.dense)
    return FeatureSpec(
        slots=slots,
        dense_dim=int(dense.shape[1]) if dense.ndim == 2 else 0,
        dim=config.dim,
        optimizer=Adagrad(lr=config.sparse_lr),
        initializer=Initializer(kind="normal", scale=config.init_scale),
        seed=config.seed,
    )


def _sample_rate(data: Any) -> np.ndarray | None:
    r = getattr(data, "sample_rate", None)
    if r is None:
        return None
    r = np.asarray(r, dtype=np.float32)
    if r.ndim == 0:
        r = np.full(len(data.label), float(r), dtype=np.float32)
    return r if np.any(r < 1.0) else None


def _targets(data: Any, tasks: Sequence[Task]) -> np.ndarray:
    """(n, T) float32: each task's target column (module docstring of freshrec.model.contract)."""
    cols = []
    for t in tasks:
        if hasattr(data, "target"):
            cols.append(np.asarray(data.target(t.target, binary=t.kind == "binary"), np.float32))
        elif t is tasks[0]:
            cols.append(np.asarray(data.label, np.float32))
        else:
            msg = f"the data has no label {t.target!r} for task {t.name!r}"
            raise ConfigError(msg)
    return np.stack(cols, axis=1) if cols else np.zeros((len(data.label), 0), np.float32)


def iter_batches(
    data: ColumnarData,
    batch_size: int,
    *,
    tasks: Sequence[Task] | None = None,
    shuffle: bool = False,
    seed: int = 0,
    correction: bool = True,
) -> Iterator[Batch]:
    """Mini-batches of `data` as tensors (zero-copy slices when not shuffled), with the targets of
    `tasks` (default: the binary label as one "click" task)."""
    tasks = tuple(tasks) if tasks else DEFAULT_TASKS
    n = len(data.label)
    order = np.random.default_rng(seed).permutation(n) if shuffle else None
    dense = np.asarray(data.dense, dtype=np.float32)
    has_dense = dense.ndim == 2 and dense.shape[1] > 0
    rate = _sample_rate(data) if correction else None
    targets = _targets(data, tasks)  # (n, T)
    ts = np.asarray(data.ts, dtype=np.float64)
    multi = getattr(data, "multi", {})
    for a in range(0, n, batch_size):
        sel: slice | np.ndarray = slice(a, min(n, a + batch_size))
        if order is not None:
            sel = order[sel]
        sparse: dict[str, Any] = {
            s: torch.from_numpy(np.ascontiguousarray(col[sel], dtype=np.int64))
            for s, col in data.sparse.items()
        }
        for s, ragged in multi.items():
            part = ragged.take(sel)
            sparse[s] = (torch.from_numpy(part.values), torch.from_numpy(part.offsets[:-1]))
        r = None if rate is None else rate[sel]
        yield Batch(
            sparse=sparse,
            dense=torch.from_numpy(np.ascontiguousarray(dense[sel])) if has_dense else None,
            targets=torch.from_numpy(np.ascontiguousarray(targets[sel])),
            offset=None if r is None else torch.from_numpy(-np.log(r)),
            now=float(ts[sel].max()) if ts.size else 0.0,
            weight=None if r is None else torch.from_numpy(1.0 / r),
        )


def evaluate_tasks(
    model: SlotModel, data: ColumnarData, *, batch_size: int = 16384
) -> dict[str, dict[str, float]]:
    """Every task's test metrics: binary tasks {"auc", "log_loss"}, value tasks {"rmse"}.

    AUC ranks the model's own logits (what serving ranks by; with sampling correction in training
    they estimate the full stream's log-odds). Log loss compares the data's labels as sampled with
    the logit shifted to the data's sampling, `logit - log(sample_rate)`. Runs in eval mode under
    no_grad: tables are read, never written (unknown ids read zeros).
    """
    tasks = tuple(getattr(model, "tasks", DEFAULT_TASKS))
    was_training = model.training
    model.eval()
    raw, shifted, targets = [], [], []
    with torch.no_grad():
        for b in iter_batches(data, batch_size, tasks=tasks, correction=True):
            z = outputs_2d(model(b.sparse, b.dense), len(tasks))  # (B, T)
            raw.append(z.numpy())
            shifted.append((z if b.offset is None else z + b.offset.unsqueeze(1)).numpy())
            targets.append(b.targets.numpy())
    model.train(was_training)
    out: dict[str, dict[str, float]] = {}
    if not raw:
        return {t.name: {"auc": math.nan, "log_loss": math.nan} for t in tasks}
    Z, S, Y = np.concatenate(raw), np.concatenate(shifted), np.concatenate(targets)
    for i, t in enumerate(tasks):
        if t.kind == "binary":
            out[t.name] = {"auc": auc(Y[:, i], Z[:, i]), "log_loss": log_loss_from_logits(Y[:, i], S[:, i])}
        else:
            out[t.name] = {"rmse": float(np.sqrt(np.mean((Z[:, i] - Y[:, i]) ** 2)))}
    return out


def evaluate(model: SlotModel, data: ColumnarData, *, batch_size: int = 16384) -> tuple[float, float]:
    """(AUC, log loss) of the model's first task on `data` (see `evaluate_tasks`)."""
    m = next(iter(evaluate_tasks(model, data, batch_size=batch_size).values()))
    return m.get("auc", math.nan), m.get("log_loss", math.nan)


def build_model(spec: FeatureSpec, config: TrainConfig) -> SlotModel:
    """The model `config.model` names, with embedding layers of kind `config.embedding`."""
    return build_contract_model(  # type: ignore[return-value]
        model_spec_for(config),
        spec,
        tasks=config.tasks,
        embedding=config.embedding,
        buckets=config.buckets,
        hash=config.hash,
    )


def train_model(
    train: ColumnarData,
    test: ColumnarData | None,
    config: TrainConfig,
    *,
    model: SlotModel | None = None,
    ps: TrainingPS | None = None,
    on_epoch: Callable[[EpochMetrics], None] | None = None,
) -> TrainResult:
    """Train `ps` (default: a TrainingPS over `model`, default a new `config.model`) on `train`,
    evaluating every task on `test` after each epoch.

    Returns the model, the PS and one `EpochMetrics` per epoch (NaN metrics without a test set).
    """
    if ps is None:
        if model is None:
            model = build_model(spec_for(train, config), config)
        ps = TrainingPS.from_model(model, dense_lr=config.dense_lr, hashed_lr=config.sparse_lr)
    model = ps.model
    ps.rng.manual_seed(config.seed)
    history: list[EpochMetrics] = []
    n = len(train.label)
    for epoch in range(1, config.epochs + 1):
        t0 = time.perf_counter()
        total, seen = 0.0, 0
        batches = iter_batches(
            train,
            config.batch_size,
            tasks=ps.tasks,
            shuffle=config.shuffle,
            seed=config.seed * 1000 + epoch,
            correction=config.sampling_correction,
        )
        bar = tqdm(
            batches,
            total=math.ceil(n / config.batch_size),
            desc=f"epoch {epoch}/{config.epochs}",
            unit="batch",
            disable=not config.progress,
            leave=False,
        )
        for b in bar:
            res = ps.train_step(b)
            bs = len(b)
            total += res.loss * bs
            seen += bs
        seconds = time.perf_counter() - t0
        per_task: dict[str, dict[str, float]] = {}
        a, ll = math.nan, math.nan
        if test is not None:
            per_task = evaluate_tasks(model, test, batch_size=config.eval_batch_size)
            first = per_task[ps.tasks[0].name]
            a, ll = first.get("auc", math.nan), first.get("log_loss", math.nan)
        m = EpochMetrics(
            epoch=epoch,
            train_loss=total / max(seen, 1),
            auc=a,
            log_loss=ll,
            examples=seen,
            seconds=seconds,
            tasks=per_task,
        )
        history.append(m)
        if on_epoch is not None:
            on_epoch(m)
    return TrainResult(model=model, epochs=history, config=config, ps=ps)


def save_checkpoint(
    model: SlotModel | TrainingPS, path: str | Path, meta: Mapping[str, Any] | None = None
) -> Path:
    """Write a training snapshot folder at `path` (the one layout, `freshrec.ps.training`) of a
    training PS (with its optimizer state) or of a bare model (fresh optimizers); `meta` is stored as
    the snapshot's `extra`. `load_checkpoint`, `TrainingPS.load`, `freshrec train online --init`
    and `freshrec serve --snapshot` read it."""
    ps = model if isinstance(model, TrainingPS) else TrainingPS.from_model(model)
    return ps.save(path, extra=dict(meta or {}))


def load_checkpoint(path: str | Path) -> tuple[SlotModel, dict[str, Any]]:
    """(model, extra meta) of a snapshot written by `save_checkpoint` (or any training snapshot);
    the model is in eval mode.

    Raises `freshrec.errors.CorruptSnapshotError` naming the file on a damaged snapshot, and
    `SnapshotError` on another layout (with how to convert it)."""
    from freshrec.ps.training import load_training_snapshot

    ps, snap_meta = load_training_snapshot(path)
    meta = dict(snap_meta.get("extra", {}))
    ps.model.eval()
    return ps.model, meta


def metrics_table(history: Sequence[EpochMetrics]) -> str:
    """A readable table of per-epoch metrics."""
    lines = [f"{'epoch':>5} {'train loss':>10} {'test AUC':>9} {'test logloss':>12} {'ex/s':>9}"]
    for m in history:
        lines.append(
            f"{m.epoch:>5} {m.train_loss:>10.4f} {m.auc:>9.4f} {m.log_loss:>12.4f} {m.examples_per_s:>9.0f}"
        )
    return "\n".join(lines)


def config_dict(config: TrainConfig) -> dict[str, Any]:
    d = asdict(config)
    d["buckets"] = dict(config.buckets) if config.buckets else None
    d["table_overrides"] = {k: dict(v) for k, v in config.table_overrides.items()}
    d["model_kwargs"] = dict(config.model_kwargs)
    d["tasks"] = [t.to_dict() for t in config.tasks]
    return d


DATASETS = ("movielens", "globo", "criteo")


def time_split(data: Any, test_fraction: float) -> tuple[Any, Any]:
    """(past, future): the first 1 - test_fraction of rows in time order, and the rest."""
    if not 0.0 < test_fraction < 1.0:
        msg = f"test_fraction must be in (0, 1), got {test_fraction}"
        raise ConfigError(msg)
    data = data.sorted_by_time()
    cut = int(round(len(data) * (1.0 - test_fraction)))
    return data.take(slice(0, cut)), data.take(slice(cut, len(data)))


def load_train_test(
    dataset: str,
    path: str | Path | None = None,
    *,
    test_fraction: float = 0.2,
    limit: int | None = None,
) -> tuple[Any, Any]:
    """Load a named dataset (`movielens`, `globo`, `criteo`) and split it by time into (train, test).

    path: the dataset folder or file (default: the shared data folder's copy). Criteo folders with
    `train.csv` and `test.csv` use those files as they are (the rows hold no time); any other input is
    split by time, the last `test_fraction` of rows being the future. `limit` keeps the first rows.
    """
    from freshrec.data.paths import dataset_path

    if dataset == "movielens":
        from freshrec.data.movielens import load_movielens

        p = Path(path) if path else dataset_path("movielens-100k")
        return time_split(load_movielens(p, side_info=True, limit=limit), test_fraction)
    if dataset == "criteo":
        from freshrec.data.criteo import load_criteo

        p = Path(path) if path else dataset_path("criteo-sample")
        if p.is_dir() and (p / "train.csv").is_file() and (p / "test.csv").is_file():
            return load_criteo(p / "train.csv", limit=limit), load_criteo(p / "test.csv")
        return time_split(load_criteo(p, limit=limit), test_fraction)
    if dataset == "globo":
        from freshrec.data.globo import load_globo

        p = Path(path) if path else dataset_path("globo")
        return time_split(load_globo(p, limit=limit), test_fraction)
    msg = f"unknown dataset {dataset!r}; expected one of {DATASETS}"
    raise ConfigError(msg)

"""Batch training of a DeepFM (or DCN) on a columnar dataset: epochs over the past, evaluation on the future.

A dataset here is anything columnar with these attributes (what `freshrec.data` loaders return):

    sparse:      dict slot -> int64 (n,)        one id per example and slot
    multi:       dict slot -> Ragged (optional)  bags of ids: values int64, offsets int64 (n + 1,)
    dense:       float32 (n, k)                  k may be 0
    label:       float32 (n,)                    0/1
    ts:          float64 (n,)                    data time, seconds
    sample_rate: float32 (n,) or None            negatives of the stream were kept at this rate

`train_model(train, test, config)` builds the model from `config` (or takes one), runs
`config.epochs` epochs over `train` in mini-batches (shuffled each epoch by `config.seed`), and
after each epoch evaluates AUC and log loss on `test`. One step:

    logit = model(sparse, dense)                                  # (B,)
    loss = BCE(logit - log(sample_rate), label)                   # the sampling correction
    loss.backward(); dense_opt.step(); hashed_opt.step(); sparse_opt.step(now=max ts of the batch)

so the model's own logit estimates the true, unsampled log-odds (`freshrec.stream.sampling`).
Evaluation: AUC ranks the model's own logits; log loss is measured against the test set as
sampled, i.e. on `logit - log(r)`. Both embedding kinds train their rows with Adagrad at
`config.sparse_lr` (the tables' own optimizer, or `torch.optim.Adagrad` on sparse gradients for the
hashed layers); the dense part uses Adam at `config.dense_lr`.

`save_checkpoint(model, path, meta)` writes `path/model` (a `freshrec.checkpoint.format` snapshot of
kind "model": every tensor of the state dict by name, the spec and training meta) and one table
snapshot per collisionless slot at `path/tables/<slot>` (`EmbeddingTable.save`).
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

from freshrec.model import (
    DCN,
    CollisionlessEmbedding,
    DeepFM,
    FeatureSpec,
    HashedEmbedding,
    SlotModel,
    SlotSpec,
    SparseOptimizer,
)
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
    "iter_batches",
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
    """Hyper-parameters of one batch training run (both embedding kinds read the same ones)."""

    epochs: int = 5
    batch_size: int = 1024
    eval_batch_size: int = 16384
    dim: int = 16
    model: Literal["deepfm", "dcn"] = "deepfm"
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
            raise ValueError(msg)
        if self.embedding == "hashed" and not self.buckets:
            msg = "embedding='hashed' needs buckets per slot"
            raise ValueError(msg)


@dataclass(frozen=True, kw_only=True)
class EpochMetrics:
    """What one epoch gave: mean training loss, AUC and log loss on the test set, throughput."""

    epoch: int
    train_loss: float
    auc: float
    log_loss: float
    examples: int
    seconds: float

    @property
    def examples_per_s(self) -> float:
        return self.examples / self.seconds if self.seconds > 0 else float("nan")


@dataclass
class TrainResult:
    model: SlotModel
    epochs: list[EpochMetrics]
    config: TrainConfig

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


@dataclass(frozen=True)
class Batch:
    sparse: dict[str, torch.Tensor | tuple[torch.Tensor, torch.Tensor]]  # multi: (values, offsets (B,))
    dense: torch.Tensor | None
    label: torch.Tensor
    offset: torch.Tensor | None  # -log(sample_rate), added to the logit in the loss
    now: float


def _sample_rate(data: Any) -> np.ndarray | None:
    r = getattr(data, "sample_rate", None)
    if r is None:
        return None
    r = np.asarray(r, dtype=np.float32)
    if r.ndim == 0:
        r = np.full(len(data.label), float(r), dtype=np.float32)
    return r if np.any(r < 1.0) else None


def iter_batches(
    data: ColumnarData,
    batch_size: int,
    *,
    shuffle: bool = False,
    seed: int = 0,
    correction: bool = True,
) -> Iterator[Batch]:
    """Mini-batches of `data` as tensors (zero-copy slices when not shuffled)."""
    n = len(data.label)
    order = np.random.default_rng(seed).permutation(n) if shuffle else None
    dense = np.asarray(data.dense, dtype=np.float32)
    has_dense = dense.ndim == 2 and dense.shape[1] > 0
    rate = _sample_rate(data) if correction else None
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
        yield Batch(
            sparse=sparse,
            dense=torch.from_numpy(np.ascontiguousarray(dense[sel])) if has_dense else None,
            label=torch.from_numpy(np.ascontiguousarray(data.label[sel], dtype=np.float32)),
            offset=None if rate is None else torch.from_numpy(-np.log(rate[sel])),
            now=float(ts[sel].max()) if ts.size else 0.0,
        )


def evaluate(model: SlotModel, data: ColumnarData, *, batch_size: int = 16384) -> tuple[float, float]:
    """(AUC, log loss) of `model` on `data`.

    AUC ranks the model's own logits (what serving ranks by; with sampling correction in training
    they estimate the full stream's log-odds). Log loss compares the data's labels as sampled with
    the logit shifted to the data's sampling, `logit - log(sample_rate)`. Runs in eval mode under
    no_grad: tables are read, never written (unknown ids read zeros).
    """
    was_training = model.training
    model.eval()
    raw, shifted, labels = [], [], []
    with torch.no_grad():
        for b in iter_batches(data, batch_size, correction=True):
            z = model(b.sparse, b.dense)  # (B,)
            raw.append(z.numpy())
            shifted.append((z if b.offset is None else z + b.offset).numpy())
            labels.append(b.label.numpy())
    model.train(was_training)
    if not raw:
        return float("nan"), float("nan")
    y = np.concatenate(labels)
    return auc(y, np.concatenate(raw)), log_loss_from_logits(y, np.concatenate(shifted))


def build_model(spec: FeatureSpec, config: TrainConfig) -> SlotModel:
    """The model `config.model` names, with embedding layers of kind `config.embedding`."""
    if config.model == "dcn":
        return DCN.build(
            spec,
            config.embedding,
            buckets=config.buckets,
            hash=config.hash,
            cross_layers=config.cross_layers,
            hidden=config.hidden,
            seed=config.seed,
        )
    return DeepFM.build(
        spec,
        config.embedding,
        buckets=config.buckets,
        hash=config.hash,
        hidden=config.hidden,
        seed=config.seed,
    )


def train_model(
    train: ColumnarData,
    test: ColumnarData | None,
    config: TrainConfig,
    *,
    model: SlotModel | None = None,
    on_epoch: Callable[[EpochMetrics], None] | None = None,
) -> TrainResult:
    """Train `model` (default: a new `config.model`) on `train`, evaluating on `test` after each epoch.

    Returns the model and one `EpochMetrics` per epoch (AUC / log loss NaN without a test set).
    """
    if model is None:
        model = build_model(spec_for(train, config), config)
    dense_opt = torch.optim.Adam(model.dense_parameters(), lr=config.dense_lr)
    hashed = list(model.hashed_parameters())
    hashed_opt = torch.optim.Adagrad(hashed, lr=config.sparse_lr) if hashed else None
    sparse_opt = SparseOptimizer(model)
    torch.manual_seed(config.seed)
    history: list[EpochMetrics] = []
    n = len(train.label)
    for epoch in range(1, config.epochs + 1):
        model.train()
        t0 = time.perf_counter()
        total, seen = 0.0, 0
        batches = iter_batches(
            train,
            config.batch_size,
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
            loss = model.loss(model(b.sparse, b.dense), b.label, b.offset)
            loss.backward()
            dense_opt.step()
            if hashed_opt is not None:
                hashed_opt.step()
                hashed_opt.zero_grad(set_to_none=True)
            sparse_opt.step(now=b.now)
            dense_opt.zero_grad(set_to_none=True)
            bs = b.label.shape[0]
            total += float(loss.detach()) * bs
            seen += bs
        seconds = time.perf_counter() - t0
        a, ll = math.nan, math.nan
        if test is not None:
            a, ll = evaluate(model, test, batch_size=config.eval_batch_size)
        m = EpochMetrics(
            epoch=epoch, train_loss=total / max(seen, 1), auc=a, log_loss=ll, examples=seen, seconds=seconds
        )
        history.append(m)
        if on_epoch is not None:
            on_epoch(m)
    return TrainResult(model=model, epochs=history, config=config)


def _layers_meta(model: SlotModel) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for slot, layer in model.embeddings.items():
        if isinstance(layer, HashedEmbedding):
            out[slot] = {
                "kind": "hashed",
                "num_buckets": layer.num_buckets,
                "dim": layer.dim,
                "hash": layer.hash,
                "hash_seed": layer.hash_seed,
            }
        elif isinstance(layer, CollisionlessEmbedding):
            out[slot] = {"kind": "collisionless", "table": f"tables/{slot}", "config": layer.config.to_dict()}
    return out


def save_checkpoint(model: SlotModel, path: str | Path, meta: Mapping[str, Any] | None = None) -> Path:
    """Write a model checkpoint folder; `load_checkpoint(path)` rebuilds the same model.

    Layout: `path/model` is a snapshot (`freshrec.checkpoint.format`, kind "model") holding every
    tensor of the state dict under its name (hashed tables included) and, as meta, the spec, the
    DNN widths, each slot's layer (collisionless: its table config; hashed: buckets and hash) and
    the caller's `meta`; `path/tables/<slot>` is the `EmbeddingTable.save` snapshot of each
    collisionless slot.
    """
    from freshrec.checkpoint.format import write_snapshot

    path = Path(path)
    arrays = {name: t.detach().cpu().numpy() for name, t in model.state_dict().items()}
    full_meta = {
        "model": type(model).__name__,
        "spec": model.spec.to_dict(),
        "hidden": list(getattr(model, "hidden", ())),
        "dropout": float(getattr(model, "dropout", 0.0)),
        "cross_layers": int(getattr(model, "cross_layers", 0)),
        "layers": _layers_meta(model),
        **dict(meta or {}),
    }
    for slot, emb in model.collisionless.items():
        emb.table.save(path / "tables" / slot)
    write_snapshot(path / "model", kind="model", meta=full_meta, arrays=arrays)
    return path


def load_checkpoint(path: str | Path) -> tuple[SlotModel, dict[str, Any]]:
    """(model, meta) from a folder written by `save_checkpoint`; the model is in eval mode.

    Raises `freshrec.errors.CorruptSnapshotError` (from the snapshot reader) on a damaged file.
    """
    from freshrec.checkpoint.format import read_snapshot
    from freshrec.table import EmbeddingTable, TableConfig

    path = Path(path)
    meta, arrays = read_snapshot(path / "model", kind="model")
    spec = FeatureSpec.from_dict(meta["spec"])
    layers: dict[str, torch.nn.Module] = {}
    for slot, lm in meta["layers"].items():
        if lm["kind"] == "hashed":
            layers[slot] = HashedEmbedding(
                lm["num_buckets"],
                lm["dim"],
                hash=lm["hash"],
                hash_seed=lm["hash_seed"],
                init="zeros",
                name=slot,
            )
        else:
            table = EmbeddingTable.load(path / lm["table"])
            layers[slot] = CollisionlessEmbedding(TableConfig.from_dict(lm["config"]), table=table)
    embs = torch.nn.ModuleDict(layers)
    hidden, dropout = tuple(meta["hidden"]), float(meta.get("dropout", 0.0))
    model: SlotModel
    if meta["model"] == "DCN":
        model = DCN(spec, embs, cross_layers=meta["cross_layers"], hidden=hidden, dropout=dropout)
    else:
        model = DeepFM(spec, embs, hidden=hidden, dropout=dropout)
    model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in arrays.items()})
    model.eval()
    return model, meta


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
    return d


DATASETS = ("movielens", "globo", "criteo")


def time_split(data: Any, test_fraction: float) -> tuple[Any, Any]:
    """(past, future): the first 1 - test_fraction of rows in time order, and the rest."""
    if not 0.0 < test_fraction < 1.0:
        msg = f"test_fraction must be in (0, 1), got {test_fraction}"
        raise ValueError(msg)
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
    raise ValueError(msg)

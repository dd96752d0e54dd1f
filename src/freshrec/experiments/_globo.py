"""What the Globo experiments share: the time split and the batch model that online training
starts from (the Monolith hand-off: batch-train on the past, then stream the rest)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol


class BatchStart(Protocol):
    """The fields of an experiment config that the batch phase reads."""

    @property
    def limit(self) -> int | None: ...

    @property
    def k(self) -> int: ...

    @property
    def train_frac(self) -> float: ...

    @property
    def epochs(self) -> int: ...

    @property
    def batch_size(self) -> int: ...

    @property
    def dim(self) -> int: ...

    @property
    def hidden(self) -> tuple[int, ...]: ...

    @property
    def dense_lr(self) -> float: ...

    @property
    def sparse_lr(self) -> float: ...


def load_split(config: BatchStart, path: str | Path | None) -> tuple[Any, Any, Any]:
    """(all examples, the past, the rest) of the Globo clicks, split in data time."""
    from freshrec.data.globo import load_globo
    from freshrec.data.paths import dataset_path
    from freshrec.data.splits import split_by_time

    ds: Any = load_globo(Path(path) if path else dataset_path("globo"), k=config.k, limit=config.limit)
    past, rest = split_by_time(ds, train_frac=config.train_frac)
    return ds, past, rest


def train_batch_model(config: BatchStart, past: Any, *, seed: int, out: Path) -> tuple[Any, Path]:
    """Batch-train a DeepFM on `past` (one pass, in time order) and save its checkpoint at `out`;
    returns (model, checkpoint path)."""
    from freshrec.train.batch import TrainConfig, build_model, save_checkpoint, spec_for, train_model

    tc = TrainConfig(
        epochs=config.epochs,
        batch_size=config.batch_size,
        dim=config.dim,
        hidden=config.hidden,
        dense_lr=config.dense_lr,
        sparse_lr=config.sparse_lr,
        seed=seed,
        shuffle=False,
    )
    model = build_model(spec_for(past, tc), tc)
    train_model(past, None, tc, model=model)
    return model, save_checkpoint(model, out, {"seed": seed})

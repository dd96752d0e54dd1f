"""Online training: consume the examples log in mini-batches with the same model code as batch training.

`OnlineTrainer` holds a DeepFM (collisionless tables, or hashed ones), a `SparseOptimizer` for the
tables, `torch.optim.Adam` for the dense part (and Adagrad for hashed rows) — exactly the optimizers
and the step of `freshrec.train.batch.train_model`. It starts from a batch checkpoint (the hand-off:
`OnlineTrainer.from_checkpoint(path)` loads the tables and dense weights `freshrec train` wrote) or
from scratch (`from_spec`). One step on a mini-batch of examples:

    ds = examples_to_dataset(examples, schema)                 # freshrec.train.examples
    b = next(iter_batches(ds, len(ds), correction=...))        # the batch trainer's tensors
    logit = model(b.sparse, b.dense)                            # (B,) predictions BEFORE this step
    loss = BCE(logit + b.offset, label); loss.backward()        # offset = -log(sample_rate)
    dense_opt.step(); sparse_opt.step(now=b.now)                # now = the batch's max example ts

Progressive validation: the logits of that forward pass were made before the model saw the batch, so
their running AUC (over the last `auc_window` examples) and cumulative log loss measure the model on
unseen data, for free.

After each batch, in order: expiry (`table.evict_expired(data_time)` every `evict_every` batches),
then the hooks (`add_hook(fn)`, called `fn(trainer, info)`: the sync publisher, the periodic
snapshotter, progress printing; an exception from a hook stops `run`), then a commit of the
consumer's positions every `commit_every` batches (for monitoring only).

Commit protocol. `trainer.positions` is the examples-log position (partition -> next offset) right
after the last batch trained; a snapshot stores it with the parameters (`freshrec.checkpoint.periodic`).
Recovery restores the snapshot and `seek`s the consumer to the stored positions, so every example
after the snapshot is trained exactly once more, and none before it twice. The log's committed
positions are never read for that. A batch is whatever `poll` returns from the stored positions, so
with a single-partition examples log a replay rebuilds the very same batches (with several
partitions the records are the same but `poll`'s partition turns may group them differently).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from freshrec.checkpoint.torch_state import optimizer_from_arrays, optimizer_to_arrays
from freshrec.model import DeepFM, FeatureSpec, SlotModel, SparseOptimizer
from freshrec.train.batch import Batch, iter_batches
from freshrec.train.examples import ExampleSchema, decode_records, examples_to_dataset
from freshrec.train.metrics import auc
from freshrec.train.step import train_step

__all__ = [
    "BatchInfo",
    "OnlineConfig",
    "OnlineMetrics",
    "OnlineTrainer",
]

Hook = Callable[["OnlineTrainer", "BatchInfo"], object]


@dataclass(frozen=True, kw_only=True)
class OnlineConfig:
    """Knobs of online training.

    batch_size: examples per mini-batch (a poll returns at most this many records).
    dense_lr / hashed_lr: Adam learning rate of the dense part; Adagrad rate of hashed rows (tables
        train with their own optimizer, from their TableConfig).
    sampling_correction: add -log(sample_rate) to the logit in the loss (as batch training does).
    evict_every: run `evict_expired(data_time)` on every table each N batches (0: never).
    commit_every: commit consumer positions each N batches, for monitoring (0: never).
    poll_timeout_s: how long a poll waits for the first record of a batch.
    auc_window: progressive-validation AUC over the last N predictions.
    """

    batch_size: int = 1024
    dense_lr: float = 1e-3
    hashed_lr: float = 0.05
    sampling_correction: bool = True
    evict_every: int = 0
    commit_every: int = 10
    poll_timeout_s: float = 0.0
    auc_window: int = 20_000

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.auc_window < 1 or self.evict_every < 0 or self.commit_every < 0:
            msg = f"OnlineConfig: batch_size, auc_window >= 1 and evict_every, commit_every >= 0: {self}"
            raise ValueError(msg)


@dataclass(frozen=True)
class BatchInfo:
    """One trained batch: step number (1-based), examples, mean loss, data time, log positions after it."""

    step: int
    examples: int
    loss: float
    now: float
    positions: dict[int, int]
    bad_records: int


@dataclass(frozen=True)
class OnlineMetrics:
    """Progress so far: totals, throughput, progressive-validation AUC / log loss, table sizes."""

    batches: int
    examples: int
    bad_records: int
    seconds: float
    auc: float
    log_loss: float
    data_time: float | None
    table_rows: dict[str, int]

    @property
    def examples_per_s(self) -> float:
        return self.examples / self.seconds if self.seconds > 0 else float("nan")

    def line(self) -> str:
        rows = " ".join(f"{k}={v}" for k, v in self.table_rows.items())
        return (
            f"step {self.batches} examples {self.examples} ({self.examples_per_s:,.0f}/s) "
            f"pv-AUC {self.auc:.4f} logloss {self.log_loss:.4f} rows: {rows}"
        )


# ---------------------------------------------------------------------------------------------------
# torch optimizer state <-> plain arrays + JSON (no pickle)


class _Window:
    """The last `size` (score, label) pairs, for a running AUC."""

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

    def auc(self) -> float:
        k = min(self.n, self.scores.shape[0])
        return auc(self.labels[:k], self.scores[:k]) if k else float("nan")


class OnlineTrainer:
    """Trains a DeepFM from a stream of examples; see the module docstring for the step and protocol."""

    def __init__(
        self, model: SlotModel, config: OnlineConfig, *, schema: ExampleSchema | None = None
    ) -> None:
        self.model = model
        self.config = config
        self.schema = schema or ExampleSchema.for_spec(model.spec)
        model.train()
        self.dense_opt = torch.optim.Adam(model.dense_parameters(), lr=config.dense_lr)
        hashed = list(model.hashed_parameters())
        self.hashed_opt = torch.optim.Adagrad(hashed, lr=config.hashed_lr) if hashed else None
        self.sparse_opt = SparseOptimizer(model)
        self.hooks: list[Hook] = []
        self.dense_lock = threading.Lock()  # dense weights change / are copied only under it
        # progress (all restored from snapshots)
        self.step = 0
        self.examples = 0
        self.bad_records = 0
        self.data_time: float | None = None  # the latest `now` trained on
        self.positions: dict[int, int] = {}
        self.loss_sum = 0.0
        self._window = _Window(config.auc_window)
        self._seconds = 0.0

    # -- construction ------------------------------------------------------------------------------
    @classmethod
    def from_checkpoint(
        cls,
        path: str | Path,
        config: OnlineConfig,
        *,
        dense: Sequence[str] | None = None,
        label: str = "click",
    ) -> OnlineTrainer:
        """The hand-off: tables and dense weights of a `freshrec train` checkpoint folder.

        The dense optimizer starts fresh (batch checkpoints do not hold its state).
        """
        from freshrec.train.batch import load_checkpoint

        model, _meta = load_checkpoint(path)
        return cls(model, config, schema=ExampleSchema.for_spec(model.spec, dense=dense, label=label))

    @classmethod
    def from_spec(
        cls,
        spec: FeatureSpec,
        config: OnlineConfig,
        *,
        hidden: Sequence[int] = (256, 128),
        seed: int = 0,
        dense: Sequence[str] | None = None,
        label: str = "click",
    ) -> OnlineTrainer:
        """From scratch: a fresh collisionless DeepFM over `spec`."""
        model = DeepFM.build(spec, "collisionless", hidden=tuple(hidden), seed=seed)
        return cls(model, config, schema=ExampleSchema.for_spec(spec, dense=dense, label=label))

    def add_hook(self, fn: Hook) -> None:
        """Call `fn(trainer, info)` after every batch (after expiry, before the commit)."""
        self.hooks.append(fn)

    # -- training ----------------------------------------------------------------------------------
    @property
    def tables(self) -> dict:
        """slot -> EmbeddingTable of every collisionless layer."""
        return {slot: emb.table for slot, emb in self.model.collisionless.items()}

    def train_step(self, b: Batch) -> float:
        """One optimizer step on a batch (`freshrec.train.batch.Batch`); returns its mean loss.

        Records the batch's pre-update predictions for progressive validation.
        """
        logit, loss = train_step(
            self.model,
            b.sparse,
            b.dense,
            b.label,
            now=b.now,
            offset=b.offset,
            dense_opt=self.dense_opt,
            dense_lock=self.dense_lock,
            sparse_opt=self.sparse_opt,
            hashed_opt=self.hashed_opt,
        )
        with torch.no_grad():
            z = logit if b.offset is None else logit + b.offset
        self._window.push(z.numpy().astype(np.float64), b.label.numpy())
        n = int(b.label.shape[0])
        value = float(loss)
        self.loss_sum += value * n
        self.examples += n
        self.data_time = float(b.now) if self.data_time is None else max(self.data_time, float(b.now))
        return value

    def _after_batch(self, info: BatchInfo) -> None:
        every = self.config.evict_every
        if every and self.step % every == 0 and self.data_time is not None:
            for table in self.tables.values():
                table.evict_expired(self.data_time)
        for hook in self.hooks:
            hook(self, info)

    def train_examples(self, examples: Sequence, *, positions: Mapping[int, int] | None = None, bad: int = 0):
        """Train one mini-batch of decoded `Example`s; `positions` = log positions right after them.

        Returns the `BatchInfo` (None when `examples` is empty: positions still advance).
        """
        if positions is not None:
            self.positions = {int(p): int(o) for p, o in positions.items()}
        self.bad_records += bad
        if not examples:
            return None
        t0 = time.perf_counter()
        ds: Any = examples_to_dataset(examples, self.schema)
        b = next(iter_batches(ds, len(ds), correction=self.config.sampling_correction))
        loss = self.train_step(b)
        self.step += 1
        self._seconds += time.perf_counter() - t0
        info = BatchInfo(self.step, len(examples), loss, float(b.now), dict(self.positions), bad)
        self._after_batch(info)
        return info

    def train_dataset(self, ds: Any, *, batch_size: int | None = None) -> list[BatchInfo]:
        """Train on a columnar dataset in row order (no log): the same step as `run`, for
        experiments that stream a file. Positions are left as they are."""
        out = []
        for b in iter_batches(
            ds, batch_size or self.config.batch_size, correction=self.config.sampling_correction
        ):
            t0 = time.perf_counter()
            loss = self.train_step(b)
            self.step += 1
            self._seconds += time.perf_counter() - t0
            info = BatchInfo(self.step, int(b.label.shape[0]), loss, float(b.now), dict(self.positions), 0)
            self._after_batch(info)
            out.append(info)
        return out

    def poll_batch(self, consumer) -> tuple[list, int, dict[int, int]]:
        """(examples, bad record count, positions after them): up to `batch_size` records from `consumer`."""
        want = self.config.batch_size
        records: list = []
        timeout = self.config.poll_timeout_s
        while len(records) < want:
            got = consumer.poll(max_records=want - len(records), timeout_s=timeout if not records else 0.0)
            if not got:
                break
            records.extend(got)
        examples, bad = decode_records(records)
        return examples, len(bad), consumer.position() if records else dict(self.positions)

    def seek(self, consumer) -> None:
        """Move `consumer` to the trainer's positions (after a restore)."""
        for p, off in self.positions.items():
            consumer.seek(int(p), int(off))

    def run(
        self,
        consumer,
        *,
        max_batches: int | None = None,
        until_idle: bool = True,
        stop: Callable[[], bool] | None = None,
    ) -> OnlineMetrics:
        """Train batch after batch from `consumer` (already at the trainer's positions: see `seek`).

        Stops after `max_batches`, when a poll finds nothing and `until_idle`, or when `stop()` is
        true. Exceptions from hooks propagate (the last snapshot is the recovery point).
        """
        done = 0
        while max_batches is None or done < max_batches:
            if stop is not None and stop():
                break
            examples, bad, positions = self.poll_batch(consumer)
            if not examples and not bad:
                if until_idle:
                    break
                continue
            info = self.train_examples(examples, positions=positions, bad=bad)
            if info is None:
                continue
            done += 1
            every = self.config.commit_every
            if every and self.step % every == 0:
                consumer.commit(self.positions)
        if self.positions and self.config.commit_every:
            consumer.commit(self.positions)
        return self.metrics()

    # -- metrics -----------------------------------------------------------------------------------
    def metrics(self) -> OnlineMetrics:
        return OnlineMetrics(
            batches=self.step,
            examples=self.examples,
            bad_records=self.bad_records,
            seconds=self._seconds,
            auc=self._window.auc(),
            log_loss=self.loss_sum / self.examples if self.examples else float("nan"),
            data_time=self.data_time,
            table_rows={slot: len(t) for slot, t in self.tables.items()},
        )

    # -- state (tables are snapshotted by freshrec.checkpoint.periodic) -----------------------------
    def dense_state(self) -> dict[str, np.ndarray]:
        """A copy of the dense weights (state-dict name -> array), taken under `dense_lock`: what a
        `freshrec.ps.sync.SyncPublisher` publishes (the trainer quacks like a training PS)."""
        with self.dense_lock:
            return {k: v.detach().cpu().numpy().copy() for k, v in self.model.state_dict().items()}

    def trainer_state(self) -> tuple[dict, dict[str, np.ndarray]]:
        """(meta, arrays) of everything but the tables: dense weights (hashed rows included),
        optimizer states, progress counters, log positions, the progressive-validation window."""
        arrays = {f"model.{k}": v for k, v in self.dense_state().items()}
        dmeta, darr = optimizer_to_arrays(self.dense_opt, "opt.dense")
        arrays |= darr
        meta: dict[str, Any] = {
            "step": self.step,
            "examples": self.examples,
            "bad_records": self.bad_records,
            "data_time": self.data_time,
            "positions": {str(p): o for p, o in self.positions.items()},
            "loss_sum": self.loss_sum,
            "window_n": self._window.n,
            "opt_dense": dmeta,
            "config": asdict(self.config),
            "schema": self.schema.to_dict(),
        }
        if self.hashed_opt is not None:
            hmeta, harr = optimizer_to_arrays(self.hashed_opt, "opt.hashed")
            meta["opt_hashed"] = hmeta
            arrays |= harr
        arrays["rng.torch"] = torch.get_rng_state().numpy().copy()  # dropout, if the model has any
        arrays["window.scores"] = self._window.scores.copy()
        arrays["window.labels"] = self._window.labels.copy()
        return meta, arrays

    def state(self, positions: Mapping[str, Any] | None = None) -> tuple[dict, dict[str, np.ndarray]]:
        """The trainer as a TRAINING-PS state (`freshrec.ps.training.TrainingPS.state` layout, one shard
        per table), so `SyncPublisher.snapshot_state` / `snapshot` of this trainer give a snapshot that
        `ServingReplica.from_snapshot` and `TrainingPS.from_state` read. DeepFM with collisionless
        tables only (raises ConfigError otherwise). For recovery of the trainer itself use
        `freshrec.checkpoint.periodic` (it also keeps the progress counters and change channels)."""
        from torch import nn

        from freshrec.errors import ConfigError
        from freshrec.ps.training import training_ps_state

        if not isinstance(self.model, DeepFM) or len(self.tables) != len(self.model.spec.slots):
            msg = "OnlineTrainer.state: only a DeepFM with collisionless tables maps to a training-PS state"
            raise ConfigError(msg)
        hidden = [m.out_features for m in self.model.dnn if isinstance(m, nn.Linear)][:-1]
        opt_meta, opt_arrays = optimizer_to_arrays(self.dense_opt, "opt")
        return training_ps_state(
            spec=self.model.spec,
            hidden=hidden,
            seed=0,
            dense_lr=self.config.dense_lr,
            shards=1,
            step=self.step,
            data_time=self.data_time,
            positions=positions,
            tables=self.tables,
            dense=self.dense_state(),
            opt_meta=opt_meta,
            opt_arrays=opt_arrays,
        )

    def load_trainer_state(self, meta: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> None:
        """Inverse of `trainer_state` (the model must have the same architecture)."""
        sd = {
            k[len("model.") :]: torch.from_numpy(np.array(v))
            for k, v in arrays.items()
            if k.startswith("model.")
        }
        with self.dense_lock:
            self.model.load_state_dict(sd)
        optimizer_from_arrays(self.dense_opt, meta["opt_dense"], arrays, "opt.dense")
        if self.hashed_opt is not None and "opt_hashed" in meta:
            optimizer_from_arrays(self.hashed_opt, meta["opt_hashed"], arrays, "opt.hashed")
        self.step = int(meta["step"])
        self.examples = int(meta["examples"])
        self.bad_records = int(meta.get("bad_records", 0))
        dt = meta.get("data_time")
        self.data_time = None if dt is None else float(dt)
        self.positions = {int(p): int(o) for p, o in meta["positions"].items()}
        self.loss_sum = float(meta.get("loss_sum", 0.0))
        if "window.scores" in arrays and arrays["window.scores"].shape == self._window.scores.shape:
            self._window.scores[:] = arrays["window.scores"]
            self._window.labels[:] = arrays["window.labels"]
            self._window.n = int(meta.get("window_n", 0))
        if "rng.torch" in arrays:
            torch.set_rng_state(torch.from_numpy(np.array(arrays["rng.torch"])))
        self.model.train()
        self.sparse_opt.zero_grad()

"""Online training: consume the examples log in mini-batches through the one training step.

`OnlineTrainer` is the online loop around a `freshrec.ps.training.TrainingPS`, the one owner of the
training state (model, tables, dense weights, both optimizers, progress, positions), so batch
training, online training and the PS shards train exactly alike. It starts from a snapshot (the
hand-off: `OnlineTrainer.from_checkpoint(path)` reads any snapshot `freshrec train` or a previous
online run wrote) or from scratch (`from_spec`, any model of `freshrec.model.contract`). One step on
a mini-batch of polled records:

    ds, bad = decode_blocks(consumer.poll_blocks(n), schema)  # freshrec.train.examples: columns
    b = next(iter_batches(ds, len(ds), tasks=ps.tasks))        # the batch trainer's tensors
    ps.train_step(b)                                           # outputs BEFORE the update, recorded

The loop polls blocks (`Consumer.poll_blocks`: the local log hands over the bytes it read, CRCs
checked, with value spans; other backends group `poll`'s records), and `decode_blocks` turns the
canonical records of a poll into columns in one numba pass (no Python object per record or
example); `OnlineConfig(columnar=False)` takes the reference path instead, `poll`, then one
`Example` per record (`decode_records`, then `examples_to_dataset`): the same dataset, batches and
trained parameters, several times slower.

Progressive validation: the outputs of that forward pass were made before the model saw the batch,
so every task's running metric over the last `auc_window` examples (AUC for binary tasks, RMSE for
value tasks) and the cumulative loss measure the model on unseen data, for free.

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

Drained means the consumer's positions reached the log's end offsets (`Consumer.at_end()`), never
an empty poll: the first poll of a Kafka consumer is often empty.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from freshrec.data.dataset import Dataset
from freshrec.errors import ConfigError, LogError
from freshrec.model import FeatureSpec, ModelSpec, Task
from freshrec.ps.training import TrainingPS
from freshrec.stream.log import RecordBlock
from freshrec.train.batch import Batch, iter_batches
from freshrec.train.examples import (
    ExampleSchema,
    decode_blocks,
    decode_dataset,
    decode_records,
    examples_to_dataset,
)
from freshrec.train.metrics import auc
from freshrec.train.prefetch import Idle, Prefetcher, Prepared, SerialSource

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
    whole_batches: train batches of exactly `batch_size` records, waiting for more when a poll
        returns fewer, so that batch boundaries are offsets k * batch_size of a one-partition log
        and a replay after a crash repeats them: training is a function of the log alone (the
        remainder at the end is one short batch, when the log is drained or at `stop_at`).
    stop_at: stop once the trained positions add up to this many records (None: never); the
        batch before it is cut to end there.
    prefetch: batches prepared ahead by a background thread in `run` (poll, decode, batch
        assembly of the next batches while the current one trains; 0: all in the calling thread).
        Exact: the same batches, trained in the same order on the same parameters as with 0
        (preparing a batch reads no parameter); only when they are built changes.
    columnar: decode polled records straight to columns (`decode_dataset`, a numba pass over
        the canonical records); False: one `Example` object per record first (the reference
        path: same batches, slower).
    """

    batch_size: int = 1024
    dense_lr: float = 1e-3
    hashed_lr: float = 0.05
    sampling_correction: bool = True
    evict_every: int = 0
    commit_every: int = 10
    poll_timeout_s: float = 0.0
    auc_window: int = 20_000
    whole_batches: bool = False
    stop_at: int | None = None
    prefetch: int = 0
    columnar: bool = True

    def __post_init__(self) -> None:
        checks = (
            ("batch_size", 1), ("auc_window", 1), ("evict_every", 0), ("commit_every", 0), ("prefetch", 0)
        )
        for name, low in checks:
            value = getattr(self, name)
            if value < low:
                msg = f"OnlineConfig.{name} = {value!r}: must be >= {low}"
                raise ConfigError(msg)
        if self.stop_at is not None and self.stop_at < 0:
            msg = f"OnlineConfig.stop_at = {self.stop_at!r}: must be >= 0"
            raise ConfigError(msg)


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
    """Progress so far: totals, throughput, progressive-validation metrics, table sizes.

    auc / log_loss: the first task's (binary); tasks: every task's metric, name -> {"auc"} for
    binary tasks or {"rmse"} for value tasks, over the last `auc_window` examples."""

    batches: int
    examples: int
    bad_records: int
    seconds: float
    auc: float
    log_loss: float
    data_time: float | None
    table_rows: dict[str, int]
    tasks: dict[str, dict[str, float]] = field(default_factory=dict)
    examples_here: int = 0  # trained by this trainer object (examples also counts what its snapshot had)

    @property
    def examples_per_s(self) -> float:
        return self.examples_here / self.seconds if self.seconds > 0 else float("nan")

    def line(self) -> str:
        rows = " ".join(f"{k}={v}" for k, v in self.table_rows.items())
        per = ""
        if len(self.tasks) > 1:
            per = " " + " ".join(
                f"{k}:" + ",".join(f"{m}={v:.4f}" for m, v in d.items()) for k, d in self.tasks.items()
            )
        return (
            f"step {self.batches} examples {self.examples} ({self.examples_per_s:,.0f}/s) "
            f"pv-AUC {self.auc:.4f} logloss {self.log_loss:.4f}{per} rows: {rows}"
        )


def _check_schema(schema: ExampleSchema, tasks: Sequence[Task]) -> None:
    have = {schema.label, *schema.labels}
    missing = [t.target for t in tasks if t.target not in have]
    if missing:
        msg = f"the example schema reads labels {sorted(have)}; tasks need {missing} too"
        raise ConfigError(msg)


class OnlineTrainer:
    """Trains a `TrainingPS` from a stream of examples; see the module docstring for the step and protocol.

    Args:
        model: a TrainingPS, or a model (wrapped in a TrainingPS with fresh optimizers).
        config: OnlineConfig.
        schema: what the model reads from an example (default: the PS's slots, dense_0.., and the
            labels of its tasks).
    """

    def __init__(
        self, model: Any, config: OnlineConfig, *, schema: ExampleSchema | None = None
    ) -> None:
        self.ps = (
            model
            if isinstance(model, TrainingPS)
            else TrainingPS.from_model(
                model, dense_lr=config.dense_lr, hashed_lr=config.hashed_lr, window=config.auc_window
            )
        )
        self.config = config
        self.schema = schema or ExampleSchema.for_tasks(self.ps.spec, self.ps.tasks)
        _check_schema(self.schema, self.ps.tasks)
        self.hooks: list[Hook] = []
        self._seconds = 0.0
        self._examples_here = 0
        self._pending: list = []  # records polled for a whole batch that is not complete yet
        self._ready: list[Prepared] = []  # batches prepared ahead and not trained yet (next run first)
        # seconds per stage of the loop: poll, decode, assemble (batch tensors), step, hooks
        # (publishing, snapshots), wait (for a batch prepared ahead); see `OnlineConfig.prefetch`
        self.timings: dict[str, float] = {}

    # -- construction ------------------------------------------------------------------------------
    @classmethod
    def from_checkpoint(
        cls,
        path: str | Path,
        config: OnlineConfig,
        *,
        dense: Sequence[str] | None = None,
        label: str | None = None,
    ) -> OnlineTrainer:
        """The hand-off: the whole training state of any snapshot a command wrote (a `freshrec train`
        snapshot folder, or an online run's snapshots: its newest state), model rebuilt from it.

        `label` renames the first task's label (default: the tasks' own)."""
        ps, _ = TrainingPS.load(path)
        tasks = list(ps.tasks)
        schema = ExampleSchema.for_tasks(ps.spec, tasks, dense=dense, label=label)
        return cls(ps, config, schema=schema)

    @classmethod
    def from_spec(
        cls,
        spec: FeatureSpec,
        config: OnlineConfig,
        *,
        model: ModelSpec | str | None = None,
        tasks: Sequence[Task] | None = None,
        hidden: Sequence[int] = (256, 128),
        seed: int = 0,
        dense: Sequence[str] | None = None,
        label: str | None = None,
        shards: int = 1,
    ) -> OnlineTrainer:
        """From scratch: a fresh model over `spec` (default a DeepFM with `hidden`, `seed`)."""
        if tasks is None and label is not None:
            tasks = (Task(name=label),)
        ps = TrainingPS(
            spec,
            model=model,
            tasks=tasks,
            shards=shards,
            hidden=hidden,
            seed=seed,
            dense_lr=config.dense_lr,
            hashed_lr=config.hashed_lr,
            window=config.auc_window,
        )
        return cls(ps, config, schema=ExampleSchema.for_tasks(spec, ps.tasks, dense=dense))

    def add_hook(self, fn: Hook) -> None:
        """Call `fn(trainer, info)` after every batch (after expiry, before the commit)."""
        self.hooks.append(fn)

    # -- the training state (owned by the PS) ------------------------------------------------------
    @property
    def model(self) -> Any:
        return self.ps.model

    @property
    def tables(self) -> dict:
        """slot -> table of every collisionless layer."""
        return self.ps.tables

    @property
    def step(self) -> int:
        return self.ps.step

    @property
    def examples(self) -> int:
        return self.ps.examples

    @property
    def data_time(self) -> float | None:
        return self.ps.data_time

    @property
    def positions(self) -> dict[int, int]:
        return self.ps.positions

    @positions.setter
    def positions(self, value: Mapping[int, int]) -> None:
        self.ps.positions = {int(p): int(o) for p, o in value.items()}

    @property
    def dense_lock(self) -> threading.Lock:
        return self.ps.dense_lock

    def dense_state(self) -> dict[str, np.ndarray]:
        """A copy of the dense weights (what a `SyncPublisher` publishes)."""
        return self.ps.dense_state()

    def state(self, positions: Mapping[str, Any] | None = None) -> tuple[dict, dict[str, np.ndarray]]:
        """The whole training state in the one snapshot layout (`TrainingPS.state`)."""
        return self.ps.state(positions)

    # -- training ----------------------------------------------------------------------------------
    def train_step(self, b: Batch) -> float:
        """One optimizer step on a batch; returns its mean loss (pre-update outputs are recorded)."""
        return self.ps.train_step(b, timings=self.timings).loss

    def _after_batch(self, info: BatchInfo) -> None:
        every = self.config.evict_every
        if every and self.step % every == 0 and self.data_time is not None:
            for table in self.tables.values():
                table.evict_expired(self.data_time)
        for hook in self.hooks:
            hook(self, info)

    def prepare(
        self, examples: Sequence | Dataset, *, positions: Mapping[int, int], bad: int = 0
    ) -> Prepared:
        """Decoded examples (`Example`s, or their `Dataset` as `decode_dataset` gives it) -> the
        batch `train_prepared` trains (reads no parameter: any thread)."""
        batch = None
        if len(examples):
            t0 = time.perf_counter()
            ds: Any = (
                examples if isinstance(examples, Dataset) else examples_to_dataset(examples, self.schema)
            )
            batch = next(
                iter_batches(ds, len(ds), tasks=self.ps.tasks, correction=self.config.sampling_correction)
            )
            self._time("assemble", t0)
        return Prepared(batch, len(examples), dict(positions), bad)

    def train_prepared(self, p: Prepared) -> BatchInfo | None:
        """Train a prepared batch and run the after-batch work (module docstring); positions move
        to `p.positions`. Returns the `BatchInfo` (None when the batch held no example)."""
        self.positions = p.positions
        self.ps.bad_records += p.bad
        if p.batch is None:
            return None
        b = p.batch
        t0 = time.perf_counter()
        loss = self.train_step(b)
        self._seconds += self._time("step", t0)
        self._examples_here += len(b)
        info = BatchInfo(self.step, p.examples, loss, float(b.now), dict(self.positions), p.bad)
        t1 = time.perf_counter()
        self._after_batch(info)
        self._time("hooks", t1)
        return info

    def _time(self, stage: str, t0: float) -> float:
        dt = time.perf_counter() - t0
        self.timings[stage] = self.timings.get(stage, 0.0) + dt
        return dt

    def train_examples(
        self,
        examples: Sequence | Dataset,
        *,
        positions: Mapping[int, int] | None = None,
        bad: int = 0,
    ) -> BatchInfo | None:
        """Train one mini-batch of decoded `Example`s (or their `Dataset`); `positions` = log
        positions right after them.

        Returns the `BatchInfo` (None when `examples` is empty: positions still advance).
        """
        t0 = time.perf_counter()
        p = self.prepare(examples, positions=self.positions if positions is None else positions, bad=bad)
        self._seconds += time.perf_counter() - t0
        return self.train_prepared(p)

    def train_dataset(self, ds: Any, *, batch_size: int | None = None) -> list[BatchInfo]:
        """Train on a columnar dataset in row order (no log): the same step as `run`, for
        experiments that stream a file. Positions are left as they are."""
        out = []
        for b in iter_batches(
            ds,
            batch_size or self.config.batch_size,
            tasks=self.ps.tasks,
            correction=self.config.sampling_correction,
        ):
            t0 = time.perf_counter()
            loss = self.train_step(b)
            self._seconds += time.perf_counter() - t0
            self._examples_here += len(b)
            info = BatchInfo(self.step, len(b), loss, float(b.now), dict(self.positions), 0)
            self._after_batch(info)
            out.append(info)
        return out

    def poll_batch(
        self, consumer, *, ahead: Mapping[int, int] | None = None
    ) -> tuple[Sequence | Dataset, int, dict[int, int]]:
        """(examples, bad record count, positions after them): up to `batch_size` records from
        `consumer` (exactly that many, or none yet, with `whole_batches`; fewer before `stop_at`),
        decoded by `decode` (a `Dataset`, or a list of `Example`s with `columnar=False`).

        `ahead`: the positions the consumer is at when batches are polled ahead of training
        (default: the trained positions)."""
        base = dict(self.positions) if ahead is None else dict(ahead)
        want = self.config.batch_size
        if self.config.stop_at is not None:
            want = max(0, min(want, self.config.stop_at - int(sum(base.values()))))
        records: list = self._pending  # Records, or RecordBlocks on the columnar path
        self._pending = []
        timeout = self.config.poll_timeout_s
        columnar = self.config.columnar
        poll = consumer.poll_blocks if columnar else consumer.poll
        have = sum(map(len, records)) if columnar else len(records)
        t0 = time.perf_counter()
        while have < want:
            got = poll(max_records=want - have, timeout_s=timeout if not have else 0.0)
            if not got:
                break
            records.extend(got)
            have += sum(map(len, got)) if columnar else len(got)
        self._time("poll", t0)
        if self.config.whole_batches and 0 < have < want:
            self._pending = records  # the batch is not whole yet: wait for the rest (run() trains
            # the remainder once the log is drained)
            return [], 0, base
        t1 = time.perf_counter()
        examples, bad = self.decode(records)
        self._time("decode", t1)
        return examples, bad, consumer.position() if records else base

    def decode(self, records: Sequence) -> tuple[Sequence | Dataset, int]:
        """(examples, bad record count) of polled records (`Record`s, or `RecordBlock`s as
        `poll_blocks` returns them): their `Dataset` (`decode_blocks` / `decode_dataset`), or
        with `columnar=False` their `Example`s. Bad records are counted, never raised."""
        if not records:
            return [], 0
        if isinstance(records[0], RecordBlock):
            if not self.config.columnar:
                records = [r for b in records for r in b.records()]
            else:
                ds, bad = decode_blocks(records, self.schema)
                return ds, len(bad)
        if self.config.columnar:
            ds, bad = decode_dataset(records, self.schema)
            return ds, len(bad)
        examples, bads = decode_records(records)
        return examples, len(bads)

    def trained_records(self) -> int:
        """Records of the examples log trained (or skipped as bad) so far: the positions' sum."""
        return int(sum(self.positions.values()))

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
        log=None,
        idle_timeout_s: float = 300.0,
    ) -> OnlineMetrics:
        """Train batch after batch from `consumer` (already at the trainer's positions: see `seek`).

        Stops after `max_batches`, when `stop()` is true, or, with `until_idle`, once the log is
        drained: when `consumer.at_end()` (its positions reached the log's end offsets; polls that
        come back empty before that, e.g. a first Kafka poll or a broker outage, are retried for up
        to `idle_timeout_s` without progress, then LogError). `log` (optional) names the end
        offsets in that error. Exceptions from hooks propagate (the last snapshot is the recovery
        point).
        """
        done = 0
        idle_since: float | None = None
        depth = self.config.prefetch
        source: SerialSource | Prefetcher = (
            Prefetcher(self, consumer, depth=depth, until_idle=until_idle)
            if depth
            else SerialSource(self, consumer, until_idle=until_idle)
        )
        try:
            while max_batches is None or done < max_batches:
                if stop is not None and stop():
                    break
                if self.config.stop_at is not None and self.trained_records() >= self.config.stop_at:
                    break
                item = source.next()
                if item is None:
                    continue
                if isinstance(item, Idle):
                    if until_idle:
                        if item.at_end:
                            source.close()
                            if self._pending:  # whole_batches: the remainder, one short batch
                                rest, self._pending = self._pending, []
                                examples, bad_count = self.decode(rest)
                                self.train_examples(examples, positions=consumer.position(), bad=bad_count)
                            break
                        idle_since = idle_since or time.monotonic()
                        if time.monotonic() - idle_since > idle_timeout_s:
                            ends = f" (end offsets {log.end_offsets()})" if log is not None else ""
                            msg = (
                                f"the examples log has records past position {consumer.position()}{ends} "
                                f"but none arrived for {idle_timeout_s:g} s"
                            )
                            raise LogError(msg)
                        if depth == 0:
                            time.sleep(0.05)
                    continue
                idle_since = None
                info = self.train_prepared(item)
                if info is None:
                    continue
                done += 1
                every = self.config.commit_every
                if every and self.step % every == 0:
                    with source.lock:
                        consumer.commit(self.positions)
        finally:
            source.close()
        if self.positions and self.config.commit_every:
            consumer.commit(self.positions)
        return self.metrics()

    # -- metrics -----------------------------------------------------------------------------------
    def task_metrics(self) -> dict[str, dict[str, float]]:
        """Every task's progressive-validation metric over the window (module docstring)."""
        out: dict[str, dict[str, float]] = {}
        for t in self.ps.tasks:
            scores, labels = self.ps.windows[t.name].filled()
            if t.kind == "binary":
                out[t.name] = {"auc": auc(labels, scores) if scores.size else float("nan")}
            else:
                rmse = float(np.sqrt(np.mean((scores - labels) ** 2))) if scores.size else float("nan")
                out[t.name] = {"rmse": rmse}
        return out

    def metrics(self) -> OnlineMetrics:
        per = self.task_metrics()
        first = per[self.ps.tasks[0].name]
        return OnlineMetrics(
            batches=self.step,
            examples=self.examples,
            bad_records=self.ps.bad_records,
            seconds=self._seconds,
            auc=first.get("auc", float("nan")),
            log_loss=self.ps.loss_sum / self.examples if self.examples else float("nan"),
            data_time=self.data_time,
            table_rows={slot: len(t) for slot, t in self.tables.items()},
            tasks=per,
            examples_here=self._examples_here,
        )

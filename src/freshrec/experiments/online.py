"""Experiment: online training vs batch training on a stream (Monolith, section 4.3 / Algorithm 1 / Table 2).

The paper batch-trains a model on the first days of data, then walks through the rest in shards:
sync the serving model with the training model, evaluate the serving model on shard i, train the
training model on shard i; the batch-only model is evaluated on the same shards. Shorter sync
intervals keep the served model fresher (the paper: online ahead of batch by 0.24-0.37 AUC points,
more for shorter intervals). This module runs that on the Globo.com clicks stream:

1. Load Globo (clicks + k sampled negatives, `freshrec.data.globo`), the first `limit` clicks.
2. Batch-train a DeepFM (collisionless tables) on the first `train_frac` of the rows in time order,
   `epochs` pass(es) in time order, and write its checkpoint (the hand-off).
3. For each sync interval (data time: 5 h, 1 h, 30 min, 5 min): cut the rest into consecutive
   windows of that length (`freshrec.data.splits.time_windows`). An `OnlineTrainer` starts from the
   batch checkpoint; a `ServingReplica` starts as a copy of it. For window i: the `SyncPublisher`
   publishes the rows touched since the previous sync and the dense weights to a parameter log, a
   `SyncSubscriber` applies them to the replica (the real sync path); the replica is evaluated on
   window i (AUC); then the trainer trains on window i (the same step as `freshrec train online`).
   The batch model is evaluated on the same windows.
4. Report the mean over windows of the per-window AUC, per interval, as mean ± std over seeds, for
   online and batch (a table like the paper's Table 2), and plot AUC over time.

Evaluation uses the stream's sampled negatives with the log-odds offset (`evaluate` in
`freshrec.train.batch`); AUC is what is compared. The outcome is a measurement, reported as it comes.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["OnlineExperimentConfig", "OnlineReport", "run_online_experiment"]

HELP = "online vs batch training on the Globo stream at several sync intervals (the paper's Table 2)"
EXAMPLE = "freshrec experiment online --quick --json"
TORCH_THREADS = 1

PAPER_INTERVALS = (5 * 3600.0, 3600.0, 1800.0)  # Monolith Table 2
DEFAULT_INTERVALS = (*PAPER_INTERVALS, 300.0)


@dataclass(frozen=True, kw_only=True)
class OnlineExperimentConfig:
    """What to run. limit: Globo clicks used (None: all 3M); train_frac: share of rows (time order)
    for batch training; intervals_s: sync intervals in data-time seconds; seeds: model seeds."""

    limit: int | None = 200_000
    k: int = 4
    train_frac: float = 0.5
    intervals_s: tuple[float, ...] = DEFAULT_INTERVALS
    seeds: tuple[int, ...] = (0, 1, 2)
    epochs: int = 1
    batch_size: int = 1024
    dim: int = 16
    hidden: tuple[int, ...] = (256, 128)
    dense_lr: float = 1e-3
    sparse_lr: float = 0.05
    min_window: int = 200  # windows with fewer examples (or one class) are left out of the means


QUICK = OnlineExperimentConfig(limit=20_000, intervals_s=(3600.0, 1800.0), seeds=(0,), hidden=(64, 32))


def _label(s: float) -> str:
    if s >= 3600 and s % 3600 == 0:
        return f"{int(s // 3600)} h"
    if s >= 60 and s % 60 == 0:
        return f"{int(s // 60)} min"
    return f"{s:g} s"


@dataclass
class OnlineReport:
    """Per interval and seed: per-window AUC of the online (synced replica) and batch models."""

    dataset: str
    config: OnlineExperimentConfig
    train_examples: int
    online_examples: int
    sync: str
    start_ts: float
    # interval -> seed -> window AUCs (NaN where left out)
    online: dict[float, list[list[float]]] = field(default_factory=dict)
    batch: dict[float, list[list[float]]] = field(default_factory=dict)
    window_sizes: dict[float, list[int]] = field(default_factory=dict)
    # AUC over the whole stream at once (all windows pooled), per seed: comparable across intervals
    online_pooled: dict[float, list[float]] = field(default_factory=dict)
    batch_pooled: list[float] = field(default_factory=list)
    sync_max_abs_diff: float = 0.0  # replica vs training model predictions right after a sync
    seconds: float = 0.0
    plot_path: str | None = None

    def means(self, kind: str, interval: float) -> np.ndarray:
        """Per seed, the mean over windows of the per-window AUC."""
        runs = getattr(self, kind)[interval]
        return np.array([np.nanmean(r) if np.isfinite(r).any() else math.nan for r in runs])

    @staticmethod
    def _ms(a: np.ndarray) -> tuple[float, float]:
        return float(np.mean(a)), float(np.std(a, ddof=1)) if a.shape[0] > 1 else 0.0

    def table(self) -> str:
        c = self.config
        lines = [
            f"online vs batch training on {self.dataset}: {self.train_examples:,} batch-training examples, "
            f"{self.online_examples:,} streamed; {len(c.seeds)} seed(s); sync: {self.sync}",
            "",
            f"{'sync interval':>13} {'windows':>7} {'online AUC':>17} {'batch AUC':>17} "
            f"{'online - batch':>15}",
        ]
        for s in c.intervals_s:
            om, os_ = self._ms(self.means("online", s))
            bm, bs = self._ms(self.means("batch", s))
            n = sum(1 for x in self.online[s][0] if np.isfinite(x))
            lines.append(
                f"{_label(s):>13} {n:>7} {om:>10.4f} ± {os_:.4f} {bm:>10.4f} ± {bs:.4f} "
                f"{100 * (om - bm):>+11.2f} pts"
            )
        lines += [
            "",
            "paper (Table 2): online ahead of batch by 0.24-0.37 AUC points; shorter intervals better",
        ]
        return "\n".join(lines)

    def summary(self) -> dict[str, Any]:
        out = []
        for s in self.config.intervals_s:
            o, b = self.means("online", s), self.means("batch", s)
            out.append(
                {
                    "interval_s": s,
                    "windows": len(self.online[s][0]),
                    "online_auc": float(np.mean(o)),
                    "online_std": self._ms(o)[1],
                    "batch_auc": float(np.mean(b)),
                    "batch_std": self._ms(b)[1],
                    "online_auc_by_seed": o.tolist(),
                    "batch_auc_by_seed": b.tolist(),
                    "online_pooled_auc": float(np.mean(self.online_pooled[s])),
                    "batch_pooled_auc": float(np.mean(self.batch_pooled)),
                }
            )
        c = self.config
        return {
            "experiment": "online",
            "dataset": self.dataset,
            "limit": c.limit,
            "train_frac": c.train_frac,
            "seeds": list(c.seeds),
            "epochs": c.epochs,
            "train_examples": self.train_examples,
            "online_examples": self.online_examples,
            "sync": self.sync,
            "sync_max_abs_diff": self.sync_max_abs_diff,
            "seconds": self.seconds,
            "plot": self.plot_path,
            "intervals": out,
        }

    def plot(self, path: str | Path) -> Path:
        """AUC over data time per interval (seed 0): online solid, batch dashed."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        ints = self.config.intervals_s
        fig, axes = plt.subplots(len(ints), 1, figsize=(9, 2.6 * len(ints)), sharex=True, squeeze=False)
        for ax, s in zip(axes[:, 0], ints, strict=True):
            o, b = np.asarray(self.online[s][0]), np.asarray(self.batch[s][0])
            x = (np.arange(len(o)) + 0.5) * s / 3600.0  # window centre, hours after the batch data
            ax.plot(x, o, "-", lw=1.2, label="online (synced replica)")
            ax.plot(x, b, "--", lw=1.2, label="batch only")
            ax.set_ylabel("AUC")
            ax.set_title(f"sync every {_label(s)}", fontsize=9)
            ax.grid(alpha=0.3)
        axes[0, 0].legend(fontsize=8)
        axes[-1, 0].set_xlabel("hours of stream after batch training (data time)")
        fig.suptitle(f"online vs batch training on {self.dataset}", fontsize=10)
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        self.plot_path = str(path)
        return path


def _scores(model, ds, batch_size: int = 16384) -> np.ndarray:
    """The model's logits on `ds` shifted by the stream's log-odds offset (as `evaluate` scores)."""
    import torch

    from freshrec.train.batch import iter_batches

    model.eval()
    out = []
    with torch.no_grad():
        for b in iter_batches(ds, batch_size, correction=True):
            z = model(b.sparse, b.dense)
            out.append((z if b.offset is None else z + b.offset).numpy())
    return np.concatenate(out) if out else np.empty(0, np.float32)


def _window_aucs(labels: np.ndarray, scores: np.ndarray, bounds: Sequence[int], min_n: int) -> list[float]:
    from freshrec.train.metrics import auc

    out = []
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        out.append(auc(labels[a:b], scores[a:b]) if b - a >= min_n else math.nan)
    return out


def _bounds(ts: np.ndarray, start: float, width: float) -> list[int]:
    count = max(int(np.floor((ts[-1] - start) / width)) + 1, 1)
    edges = start + width * np.arange(count + 1)
    return [int(x) for x in np.searchsorted(ts, edges, side="left")]


def run_online_experiment(
    config: OnlineExperimentConfig,
    *,
    path: str | Path | None = None,
    log: Callable[[str], None] = lambda s: None,
    workdir: str | Path | None = None,
) -> OnlineReport:
    """Run the experiment (see the module docstring) and return its report."""
    from freshrec.experiments._globo import load_split, train_batch_model
    from freshrec.ps.serving import ServingReplica
    from freshrec.ps.sync import SyncPublisher, SyncSubscriber
    from freshrec.stream.log import MemoryLog
    from freshrec.train.metrics import auc
    from freshrec.train.online import OnlineConfig, OnlineTrainer

    t_start = time.perf_counter()
    ds, past, rest = load_split(config, path)
    log(
        f"globo: {len(ds):,} examples; batch training on {len(past):,}, streaming {len(rest):,} "
        f"({(rest.ts[-1] - rest.ts[0]) / 3600:.1f} h of data time)"
    )
    report = OnlineReport(
        dataset="globo",
        config=config,
        train_examples=len(past),
        online_examples=len(rest),
        sync="SyncPublisher -> parameter log (MemoryLog) -> SyncSubscriber -> ServingReplica",
        start_ts=float(rest.ts[0]),
    )
    labels = rest.label
    bounds = {s: _bounds(rest.ts, float(rest.ts[0]), s) for s in config.intervals_s}
    for s in config.intervals_s:
        report.online[s], report.batch[s] = [], []
        report.window_sizes[s] = list(np.diff(bounds[s]).tolist())
    tmp = tempfile.TemporaryDirectory(dir=workdir) if workdir is None else None
    root = Path(tmp.name if tmp else workdir)  # type: ignore[arg-type]
    max_diff = 0.0
    try:
        for seed in config.seeds:
            t0 = time.perf_counter()
            model, ckpt = train_batch_model(config, past, seed=seed, out=root / f"batch-seed{seed}")
            batch_scores = _scores(model, rest)
            log(f"seed {seed}: batch model trained in {time.perf_counter() - t0:.0f} s")
            report.batch_pooled.append(auc(labels, batch_scores))
            for s in config.intervals_s:
                report.batch[s].append(_window_aucs(labels, batch_scores, bounds[s], config.min_window))
            del model
            for s in config.intervals_s:
                t0 = time.perf_counter()
                trainer = OnlineTrainer.from_checkpoint(
                    ckpt, OnlineConfig(batch_size=config.batch_size, dense_lr=config.dense_lr)
                )
                # the serving replica starts as a copy of the batch model (bootstrap), then follows deltas
                replica = ServingReplica(trainer.ps.spec, model=trainer.ps.model_spec, tasks=trainer.ps.tasks)
                for slot, table in trainer.tables.items():
                    ids, emb = table.export()
                    replica.tables[slot].reserve(ids.shape[0])
                    replica.tables[slot].assign(ids, emb)
                    table.take_touched()  # the replica has everything up to here
                replica.load_dense(trainer.dense_state())
                params = MemoryLog("params")
                publisher = SyncPublisher(trainer, params)
                subscriber = SyncSubscriber(replica, params, poll_timeout_s=0.0, max_records=1024)
                online_scores = np.empty(len(rest), np.float32)
                b = bounds[s]
                for i in range(len(b) - 1):
                    lo, hi = b[i], b[i + 1]
                    publisher.publish_once(dense=True)  # sync: touched rows + dense weights
                    subscriber.catch_up()
                    if hi == lo:
                        continue
                    window = rest.take(slice(lo, hi))
                    online_scores[lo:hi] = _scores(replica.model, window)
                    if i == 1:  # the sync path must reproduce the training model exactly
                        direct = _scores(trainer.model, window)
                        max_diff = max(max_diff, float(np.max(np.abs(direct - online_scores[lo:hi]))))
                    trainer.train_dataset(window)
                aucs = _window_aucs(labels, online_scores, b, config.min_window)
                report.online[s].append(aucs)
                report.online_pooled.setdefault(s, []).append(auc(labels, online_scores))
                o, bb = np.nanmean(aucs), np.nanmean(report.batch[s][-1])
                log(
                    f"seed {seed}, sync every {_label(s)}: {len(b) - 1} windows, online AUC {o:.4f}, "
                    f"batch AUC {bb:.4f} ({100 * (o - bb):+.2f} pts) in {time.perf_counter() - t0:.0f} s"
                )
                del trainer, replica
    finally:
        if tmp is not None:
            tmp.cleanup()
    report.sync_max_abs_diff = max_diff
    report.seconds = time.perf_counter() - t_start
    return report


# ---- command ------------------------------------------------------------------------------------


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", default=None, help="Globo folder or clicks.csv.gz (default: shared data)")
    parser.add_argument("--quick", action="store_true", help="20k clicks, 2 intervals, 1 seed (for CI)")
    parser.add_argument("--limit", type=int, default=-1, help="Globo clicks to use (0: all 3M)")
    parser.add_argument("--seeds", type=int, default=None, help="number of seeds (0..N-1)")
    parser.add_argument(
        "--intervals",
        default=None,
        help="sync intervals in seconds, comma separated (default 18000,3600,1800,300)",
    )
    parser.add_argument("--train-frac", type=float, default=None, help="share of rows for batch training")
    parser.add_argument("--epochs", type=int, default=None, help="batch-training passes")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--hidden", default=None, help="DNN widths, comma separated")
    parser.add_argument("--out", default="runs/online", help="folder for the plot and JSON")
    parser.add_argument("--json", action="store_true", help="print one JSON object last")


def main(args: argparse.Namespace) -> int:
    from freshrec.errors import ConfigError

    base = QUICK if args.quick else OnlineExperimentConfig()
    over: dict[str, Any] = {}
    if args.limit != -1:
        over["limit"] = None if args.limit == 0 else args.limit
    if args.seeds:
        over["seeds"] = tuple(range(args.seeds))
    if args.intervals:
        over["intervals_s"] = tuple(float(x) for x in args.intervals.split(",") if x.strip())
    if args.train_frac is not None:
        over["train_frac"] = args.train_frac
    if args.epochs is not None:
        over["epochs"] = args.epochs
    if args.batch_size is not None:
        over["batch_size"] = args.batch_size
    if args.hidden:
        over["hidden"] = tuple(int(h) for h in args.hidden.split(",") if h.strip())
    from dataclasses import replace

    config = replace(base, **over)
    say = lambda s: print(s, file=sys.stderr if args.json else sys.stdout, flush=True)  # noqa: E731
    try:
        report = run_online_experiment(config, path=args.data, log=say)
    except (FileNotFoundError, ConfigError) as e:
        print(f"freshrec experiment online: cannot load Globo: {e}", file=sys.stderr)
        return 2
    out = Path(args.out)
    tag = "globo-quick" if args.quick else "globo"
    png = report.plot(out / f"online-{tag}.png")
    (out / f"online-{tag}.json").write_text(json.dumps(report.summary(), indent=1) + "\n")
    print(report.table())
    print(f"\nplot: {png}\nresults: {out / f'online-{tag}.json'}  ({report.seconds:.0f} s)")
    if args.json:
        print(json.dumps(report.summary()))
    return 0

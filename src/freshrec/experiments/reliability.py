"""Experiment: what a parameter-server failure costs, with and without log replay (Monolith, section 4.4).

Monolith snapshots its training PS once a day and, when a PS shard fails, restores that shard from
the last snapshot: the updates since are lost, which the paper argues costs little AUC. freshrec
recovers from the snapshot AND replays the examples log from the positions stored in it, so nothing
is lost. This measures both on the Globo.com clicks stream:

1. Load Globo (clicks + k sampled negatives), batch-train a DeepFM (collisionless tables) on the first
   `train_frac` of the rows in time order: the hand-off checkpoint (as `freshrec experiment online`).
2. An `OnlineTrainer` trains on the rest of the stream in mini-batches of `batch_size` rows (the
   stream's row index is its examples-log position), with progressive evaluation: every batch is
   scored by the current model before the model trains on it. That is the no-failure run.
3. Snapshots: every `H` hours of data time (H in `intervals_h`, e.g. 1, 6, 24) a full snapshot
   (`freshrec.checkpoint.periodic.save_full`, with the position it was taken at) would be written at
   the first batch boundary past each multiple of H; the hand-off itself is the snapshot at
   position 0. Recovery only ever reads the LAST snapshot before the failure, so for each H only
   that one is written to disk (the others would not change anything).
4. Failure: at the batch boundary `fail_at` of the way into the stream, ONE sparse PS shard fails:
   the rows of every embedding table whose id has `freshrec.ps.sharded.shard_of(id, n_shards) ==
   shard` (the dense weights live elsewhere, as in Monolith, and are not lost). Recovery:
   - no replay (Monolith): the shard's rows are replaced by the snapshot's rows of that shard (rows
     created since the snapshot disappear; rows updated since go back to their snapshot values with
     their optimizer state); training goes on from the failure point;
   - replay (freshrec): the training state is restored from the snapshot and the examples log is
     replayed from the snapshot's position up to the failure point, with the same batch boundaries.
     Training is deterministic (one torch thread, deterministic kernels: the command sets them), so
     this reproduces the state at the failure exactly: every shard's rows and the dense weights.
     (For the failed shard alone that is the shard's snapshot + the replayed updates of its rows;
     the other shards and the dense part come out identical to what they were.)
     `replay_max_abs_diff` reports the check.
5. AUC (progressive, pooled) on the rest of the stream after the failure, for: no failure, failure +
   no replay, failure + replay; `auc_drop_* = auc_no_failure - auc_*`. The replay drop is 0 by
   construction (it is an invariant of the design, not a finding); the no-replay drop is the
   measurement.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["ReliabilityConfig", "ReliabilityReport", "run_reliability_experiment"]

HELP = "PS shard failure: recover from 1/6/24 h snapshots without (Monolith) and with log replay; AUC drop"
EXAMPLE = "freshrec experiment reliability --quick --json"
TORCH_DETERMINISTIC = True  # the replay's exact equality (freshrec.cli sets it)


@dataclass(frozen=True, kw_only=True)
class ReliabilityConfig:
    """limit: Globo clicks used; train_frac: rows (time order) for batch training; fail_at: where in
    the stream (share of its rows) the shard fails; n_shards / shard: which shard fails."""

    limit: int | None = 1_000_000
    k: int = 4
    train_frac: float = 0.3
    fail_at: float = 0.75
    intervals_h: tuple[float, ...] = (1.0, 6.0, 24.0)
    n_shards: int = 4
    shard: int = 0
    seed: int = 0
    epochs: int = 1
    batch_size: int = 1024
    dim: int = 16
    hidden: tuple[int, ...] = (256, 128)
    dense_lr: float = 1e-3
    sparse_lr: float = 0.05


QUICK = ReliabilityConfig(limit=20_000, train_frac=0.5, fail_at=0.6, hidden=(64, 32))


@dataclass
class ReliabilityReport:
    config: ReliabilityConfig
    train_examples: int
    stream_examples: int
    stream_hours: float
    fail_position: int
    fail_hours: float  # data time of the failure, hours after the stream's start
    auc_no_failure: float
    # per interval: dicts with snapshot position/age, lost rows, AUCs
    intervals: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    plot_path: str | None = None
    curves: dict[str, np.ndarray] = field(default_factory=dict)  # name -> rolling AUC after the failure

    def table(self) -> str:
        c = self.config
        lines = [
            f"PS shard failure on globo: shard {c.shard} of {c.n_shards} fails "
            f"{self.fail_hours:.1f} h into a {self.stream_hours:.1f} h stream "
            f"({self.train_examples:,} batch-training examples, {self.stream_examples:,} streamed); "
            f"AUC on the {self.stream_examples - self.fail_position:,} examples after the failure",
            f"no failure: AUC {self.auc_no_failure:.5f}",
            "",
            f"{'snapshots every':>15} {'snapshot age':>12} {'rows lost/rolled back':>22} "
            f"{'AUC drop, no replay':>20} {'AUC drop, replay':>17}",
        ]
        for r in self.intervals:
            lines.append(
                f"{r['snapshot_every_h']:>13g} h {r['snapshot_age_h']:>10.2f} h "
                f"{r['rows_lost']:>10,}/{r['rows_rolled_back']:<11,} "
                f"{r['auc_drop_no_replay']:>+20.5f} {r['auc_drop_replay']:>+17.2e}"
            )
        diffs = ", ".join(f"{r['replay_max_abs_diff']:.1e}" for r in self.intervals)
        lines += ["", f"drop = AUC(no failure) - AUC(after recovery); replay restores the state exactly "
                      f"(max |diff| {diffs})"]
        return "\n".join(lines)

    def summary(self) -> dict[str, Any]:
        c = self.config
        return {
            "experiment": "reliability",
            "dataset": "globo",
            "limit": c.limit,
            "failure": f"sparse PS shard {c.shard} of {c.n_shards} (all tables); dense weights kept",
            "fail_position": self.fail_position,
            "fail_hours": self.fail_hours,
            "stream_hours": self.stream_hours,
            "train_examples": self.train_examples,
            "stream_examples": self.stream_examples,
            "auc_no_failure": self.auc_no_failure,
            "seconds": self.seconds,
            "plot": self.plot_path,
            "intervals": self.intervals,
        }

    def plot(self, path: str | Path) -> Path:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4))
        hs = [r["snapshot_every_h"] for r in self.intervals]
        x = np.arange(len(hs))
        ax1.bar(x - 0.2, [r["auc_drop_no_replay"] for r in self.intervals], 0.4, label="no replay (Monolith)")
        ax1.bar(x + 0.2, [r["auc_drop_replay"] for r in self.intervals], 0.4, label="snapshot + replay")
        ax1.set_xticks(x, [f"{h:g} h" for h in hs])
        ax1.set_xlabel("snapshot interval (data time)")
        ax1.set_ylabel("AUC drop after the failure")
        ax1.axhline(0, color="k", lw=0.6)
        ax1.legend(fontsize=8)
        ax1.grid(alpha=0.3, axis="y")
        for name, curve in self.curves.items():
            ax2.plot(np.arange(len(curve)), curve, lw=1.0, label=name)
        ax2.set_xlabel("batches after the failure")
        ax2.set_ylabel("rolling AUC (20 batches)")
        ax2.legend(fontsize=7)
        ax2.grid(alpha=0.3)
        fig.suptitle(f"PS shard failure on globo ({self.fail_hours:.1f} h into the stream)", fontsize=10)
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        self.plot_path = str(path)
        return path


def _train_scored(trainer, ds, lo: int, hi: int, batch: int, scores: np.ndarray | None) -> None:
    """Train rows [lo, hi) in batches of `batch` (boundaries lo, lo+batch, ...); with `scores`, score
    each batch with the current model first (progressive evaluation) into scores[row - offset]."""
    import torch

    from freshrec.train.batch import iter_batches

    for a in range(lo, hi, batch):
        b = min(a + batch, hi)
        part = ds.take(slice(a, b))
        if scores is not None:
            trainer.model.eval()
            with torch.no_grad():
                for bb in iter_batches(part, b - a, correction=True):
                    z = trainer.model(bb.sparse, bb.dense)
                    z = z if bb.offset is None else z + bb.offset
                    scores[a:b] = z.numpy()
            trainer.model.train()
        trainer.train_dataset(part, batch_size=b - a)
        trainer.positions = {0: b}


def _snapshot_positions(ts: np.ndarray, batch: int, hours: float, until: int) -> int:
    """The position of the last snapshot at or before `until` when one is taken at the first batch
    boundary past every multiple of `hours` of data time (position 0: the hand-off)."""
    t0, width = float(ts[0]), hours * 3600.0
    last, bucket = 0, 0
    for r in range(batch, until + 1, batch):
        k = int((float(ts[r - 1]) - t0) // width)
        if k > bucket:
            last, bucket = r, k
    return last


def _snapshot_rows(table: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """ids, rows, last_seen, count of one table's arrays in a training snapshot: a plain table's,
    or every shard's of a sharded one (`shard<k>.<name>`), concatenated."""
    from freshrec.checkpoint.format import strip_prefix

    if "ids" in table:
        parts = [table]
    else:
        parts = []
        while f"shard{len(parts)}.ids" in table:
            parts.append(strip_prefix(f"shard{len(parts)}", table))
    return {k: np.concatenate([p[k] for p in parts]) for k in ("ids", "rows", "last_seen", "count")}


def _fail_shard(trainer, snapshot: Path, n_shards: int, shard: int) -> tuple[int, int]:
    """Monolith's recovery of a failed shard: its rows as of `snapshot`. Returns (rows lost: created
    since the snapshot, rows rolled back: present in both)."""
    from freshrec.checkpoint.format import read_snapshot, strip_prefix
    from freshrec.checkpoint.periodic import KIND_FULL
    from freshrec.ps.sharded import shard_of

    _, arrays = read_snapshot(snapshot, kind=KIND_FULL)
    lost = rolled = 0
    for slot, table in trainer.tables.items():
        ids, _ = table.export()
        now_ids = ids[shard_of(ids, n_shards) == shard]
        snap = _snapshot_rows(strip_prefix(f"table.{slot}", arrays))
        mask = shard_of(snap["ids"], n_shards) == shard
        back = snap["ids"][mask]
        rolled += int(np.isin(now_ids, back).sum())
        lost += int((~np.isin(now_ids, back)).sum())
        table.remove(now_ids)
        table.apply_changes(
            {},
            {
                "ids": back,
                "rows": snap["rows"][mask],
                "last_seen": snap["last_seen"][mask],
                "count": snap["count"][mask],
                "evicted": np.empty(0, np.int64),
            },
        )
    return lost, rolled


def _max_diff(a, b) -> float:
    out = 0.0
    for slot, ta in a.tables.items():
        ia, ea = ta.export()
        ib, eb = b.tables[slot].export()
        if ia.shape != ib.shape or not np.array_equal(np.sort(ia), np.sort(ib)):
            return math.inf
        oa, ob = np.argsort(ia), np.argsort(ib)
        if ea.size:
            out = max(out, float(np.max(np.abs(ea[oa] - eb[ob]))))
    da, db = a.dense_state(), b.dense_state()
    for k in da:
        out = max(out, float(np.max(np.abs(da[k] - db[k]))) if da[k].size else 0.0)
    return out


def _rolling(labels: np.ndarray, scores: np.ndarray, batch: int, span: int = 20) -> np.ndarray:
    from freshrec.train.metrics import auc

    n = labels.shape[0] // batch
    out = []
    for i in range(n):
        a = max(0, i - span + 1) * batch
        b = (i + 1) * batch
        out.append(auc(labels[a:b], scores[a:b]))
    return np.asarray(out)


def run_reliability_experiment(
    config: ReliabilityConfig,
    *,
    path: str | Path | None = None,
    log: Callable[[str], None] = lambda s: None,
    workdir: str | Path | None = None,
) -> ReliabilityReport:
    """Run the experiment (see the module docstring) and return its report.

    The zero difference with replay needs deterministic torch (one thread, deterministic
    algorithms): `freshrec experiment reliability` sets it (TORCH_DETERMINISTIC); a caller of this
    function sets it itself (`torch.use_deterministic_algorithms(True)`, `torch.set_num_threads(1)`).
    """
    from freshrec.checkpoint.periodic import load_full, save_full
    from freshrec.experiments._globo import load_split, train_batch_model
    from freshrec.train.metrics import auc
    from freshrec.train.online import OnlineConfig, OnlineTrainer

    t_start = time.perf_counter()
    tmp = tempfile.TemporaryDirectory() if workdir is None else None
    root = Path(tmp.name if tmp else workdir)  # type: ignore[arg-type]
    try:
        ds, past, rest = load_split(config, path)
        B = config.batch_size
        n = len(rest)
        fail = max(B, int(n * config.fail_at) // B * B)
        t0 = float(rest.ts[0])
        log(f"globo: {len(ds):,} examples; batch training on {len(past):,}, streaming {n:,} "
            f"({(rest.ts[-1] - t0) / 3600:.1f} h); shard fails at position {fail:,} "
            f"({(rest.ts[fail - 1] - t0) / 3600:.1f} h)")
        model, ckpt = train_batch_model(config, past, seed=config.seed, out=root / "batch")
        del model
        oc = OnlineConfig(batch_size=B, dense_lr=config.dense_lr)

        def fresh():
            return OnlineTrainer.from_checkpoint(ckpt, oc)

        snaps = {h: _snapshot_positions(rest.ts, B, h, fail) for h in config.intervals_h}
        wanted = {p: root / f"snap-{p:012d}" for p in set(snaps.values())}
        labels = rest.label[fail:]

        # the no-failure run: train to the failure point (writing the needed snapshots), then on
        t1 = time.perf_counter()
        base = fresh()
        base.positions = {0: 0}
        at = 0
        for p in sorted(wanted):
            _train_scored(base, rest, at, p, B, None)
            save_full(base, wanted[p], extra={"position": p})
            at = p
        _train_scored(base, rest, at, fail, B, None)
        save_full(base, root / "at-failure", extra={"position": fail})
        scores = np.empty(n, np.float32)
        _train_scored(base, rest, fail, n, B, scores)
        auc0 = auc(labels, scores[fail:])
        curves = {"no failure": _rolling(labels, scores[fail:], B)}
        log(f"no failure: AUC after the failure point {auc0:.5f} ({time.perf_counter() - t1:.0f} s)")
        del base

        report = ReliabilityReport(
            config=config, train_examples=len(past), stream_examples=n,
            stream_hours=float(rest.ts[-1] - t0) / 3600, fail_position=fail,
            fail_hours=float(rest.ts[fail - 1] - t0) / 3600, auc_no_failure=auc0,
        )
        for h in config.intervals_h:
            t1 = time.perf_counter()
            p = snaps[h]
            snap_path = wanted[p]
            age = float(rest.ts[fail - 1] - (rest.ts[p - 1] if p else t0)) / 3600
            # Monolith: the shard comes back as of its snapshot; training goes on
            tr = fresh()
            load_full(tr, root / "at-failure")
            lost, rolled = _fail_shard(tr, snap_path, config.n_shards, config.shard)
            s_nr = np.empty(n, np.float32)
            _train_scored(tr, rest, fail, n, B, s_nr)
            auc_nr = auc(labels, s_nr[fail:])
            del tr
            # freshrec: snapshot + replay of the examples log from the snapshot's position
            tr = fresh()
            extra = load_full(tr, snap_path)
            _train_scored(tr, rest, int(extra["position"]), fail, B, None)
            ref = fresh()
            load_full(ref, root / "at-failure")
            diff = _max_diff(tr, ref)
            del ref
            s_r = np.empty(n, np.float32)
            _train_scored(tr, rest, fail, n, B, s_r)
            auc_r = auc(labels, s_r[fail:])
            del tr
            curves[f"{h:g} h, no replay"] = _rolling(labels, s_nr[fail:], B)
            row = {
                "snapshot_every_h": h,
                "snapshot_position": p,
                "snapshot_age_h": age,
                "rows_lost": lost,
                "rows_rolled_back": rolled,
                "auc_no_failure": auc0,
                "auc_no_replay": auc_nr,
                "auc_replay": auc_r,
                "auc_drop_no_replay": auc0 - auc_nr,
                "auc_drop_replay": auc0 - auc_r,
                "replay_max_abs_diff": diff,
            }
            report.intervals.append(row)
            log(f"snapshots every {h:g} h (last {age:.2f} h before the failure): drop without replay "
                f"{row['auc_drop_no_replay']:+.5f}, with replay {row['auc_drop_replay']:+.2e} "
                f"(state diff {diff:.1e}; {lost:,} rows lost, {rolled:,} rolled back; "
                f"{time.perf_counter() - t1:.0f} s)")
        report.curves = curves
        report.seconds = time.perf_counter() - t_start
        return report
    finally:
        if tmp is not None:
            tmp.cleanup()


# ---- command ------------------------------------------------------------------------------------


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", default=None, help="Globo folder or clicks.csv.gz (default: shared data)")
    parser.add_argument("--quick", action="store_true", help="20k clicks, small model (for CI, < 60 s)")
    parser.add_argument("--limit", type=int, default=-1, help="Globo clicks to use (0: all 3M)")
    parser.add_argument("--intervals", default=None, help="snapshot intervals in hours (default 1,6,24)")
    parser.add_argument("--fail-at", type=float, default=None, help="share of the stream before the failure")
    parser.add_argument("--shards", type=int, default=None, help="number of PS shards (one fails)")
    parser.add_argument("--train-frac", type=float, default=None, help="share of rows for batch training")
    parser.add_argument("--out", default="runs/reliability", help="folder for the plot and JSON")
    parser.add_argument("--json", action="store_true", help="print one JSON object last")


def main(args: argparse.Namespace) -> int:
    from freshrec.errors import ConfigError

    config = QUICK if args.quick else ReliabilityConfig()
    over: dict[str, Any] = {}
    if args.limit != -1:
        over["limit"] = None if args.limit == 0 else args.limit
    if args.intervals:
        over["intervals_h"] = tuple(float(x) for x in args.intervals.split(",") if x.strip())
    if args.fail_at is not None:
        over["fail_at"] = args.fail_at
    if args.shards is not None:
        over["n_shards"] = args.shards
    if args.train_frac is not None:
        over["train_frac"] = args.train_frac
    config = replace(config, **over)
    say = lambda s: print(s, file=sys.stderr if args.json else sys.stdout, flush=True)  # noqa: E731
    try:
        report = run_reliability_experiment(config, path=args.data, log=say)
    except (FileNotFoundError, ConfigError) as e:
        print(f"freshrec experiment reliability: cannot load Globo: {e}", file=sys.stderr)
        return 2
    out = Path(args.out)
    tag = "globo-quick" if args.quick else "globo"
    png = report.plot(out / f"reliability-{tag}.png")
    (out / f"reliability-{tag}.json").write_text(json.dumps(report.summary(), indent=1) + "\n")
    print(report.table())
    print(f"\nplot: {png}\nresults: {out / f'reliability-{tag}.json'}  ({report.seconds:.0f} s)")
    if args.json:
        print(json.dumps(report.summary()))
    return 0

"""Experiment: does a collisionless embedding table beat a hashed one? (Monolith, section 4.2 / Table 1.)

The paper measures that hashing ids into fixed-size tables makes 7.73% of user ids and 2.86% of
item ids share a row with another id, and shows that a DeepFM trained without collisions reaches a
better AUC. This experiment rebuilds that comparison on a real dataset (Globo news clicks or
MovieLens ratings), time-ordered: train on the past, evaluate AUC on the future.

1. Load the dataset and split it by time (the last 20% of rows is the test set).
2. On the dataset's real ids, search the bucket count of each hashed table so that the measured
   collision rate matches the paper's: `user_id` -> 7.73%, `item_id` -> 2.86% (bisection over the
   bucket count, then the closest of the neighbouring counts). Other slots get tables big enough
   for zero collisions, so only user and item ids collide.
3. Train the same DeepFM (same data order, seeds, initializer scale, Adagrad learning rate) with
   collisionless tables and with hashed tables, `epochs` epochs, for each seed; record test AUC
   after every epoch.
4. Print a table (mean and std over seeds per epoch), save a plot of the curves and a JSON file.

The outcome is a measurement, reported as it comes; nothing here asserts which side wins.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from freshrec.errors import ConfigError

if TYPE_CHECKING:
    from freshrec.model.embedding import HashKind

__all__ = [
    "PAPER_RATES",
    "CollisionReport",
    "buckets_for_rate",
    "run_collision",
]

HELP = "collisionless vs hashed embeddings at the paper's collision rates (AUC per epoch, plot)"
EXAMPLE = "freshrec experiment collision --dataset movielens --quick --json"
TORCH_THREADS = 1

PAPER_RATES = {"user_id": 0.0773, "item_id": 0.0286}  # Monolith Table 1
CONTROL = "hashed, 0 collisions"
_CONTROL_MAX_BUCKETS = 1 << 24

# (rows limit, epochs, seeds, hidden, batch size) of the full and quick forms per dataset
_FULL: dict[str, dict[str, Any]] = {
    "movielens": {"limit": None, "epochs": 5, "seeds": (0, 1, 2), "hidden": (256, 128), "batch_size": 256},
    "globo": {"limit": 200_000, "epochs": 5, "seeds": (0, 1, 2), "hidden": (256, 128), "batch_size": 1024},
}
_QUICK: dict[str, dict[str, Any]] = {
    "movielens": {"limit": 20_000, "epochs": 2, "seeds": (0,), "hidden": (32, 16), "batch_size": 512},
    "globo": {"limit": 5_000, "epochs": 2, "seeds": (0,), "hidden": (32, 16), "batch_size": 512},
}


def buckets_for_rate(
    ids: np.ndarray, target: float, *, hash: HashKind = "mix", seed: int = 0, neighbours: int = 16
) -> tuple[int, float]:
    """(bucket count, measured rate): the table size whose collision rate on `ids` is nearest `target`.

    Bisection over the bucket count (the rate falls as the table grows, up to hashing noise),
    then the count within `neighbours` of the crossing whose measured rate is closest.
    `target` = 0 gives the smallest power-of-two count (>= n) with no collision found by doubling.
    """
    from freshrec.model.embedding import collision_rate  # torch: imported only when used

    uniq = np.unique(np.asarray(ids, dtype=np.int64))
    n = uniq.shape[0]
    if n < 2:
        return max(n, 1), 0.0
    if target <= 0:
        m = 1 << max(10, math.ceil(math.log2(n)) + 6)
        while collision_rate(uniq, m, hash, seed) > 0 and m < (1 << 40):
            m *= 2
        return m, collision_rate(uniq, m, hash, seed)
    lo, hi = 1, max(2, n)
    while collision_rate(uniq, hi, hash, seed) > target and hi < (1 << 40):
        lo, hi = hi, hi * 2
    # invariant: rate(lo) > target >= rate(hi)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if collision_rate(uniq, mid, hash, seed) > target:
            lo = mid
        else:
            hi = mid
    best, best_rate = hi, collision_rate(uniq, hi, hash, seed)
    for m in range(max(1, hi - neighbours), hi + neighbours + 1):
        r = collision_rate(uniq, m, hash, seed)
        if abs(r - target) < abs(best_rate - target):
            best, best_rate = m, r
    return best, best_rate


@dataclass
class CollisionReport:
    """Per-epoch test AUC of both sides for every seed, and what the hashed tables looked like."""

    dataset: str
    train_examples: int
    test_examples: int
    epochs: int
    seeds: tuple[int, ...]
    buckets: dict[str, int]
    distinct_ids: dict[str, int]
    rates: dict[str, float]  # measured collision rate per slot
    auc: dict[str, list[list[float]]] = field(default_factory=dict)  # kind -> [seed][epoch]
    log_loss: dict[str, list[list[float]]] = field(default_factory=dict)
    control_buckets: dict[str, int] | None = None  # the no-collision hashed arm, when run
    plot_path: str | None = None

    def mean_std(self, kind: str, what: str = "auc") -> tuple[np.ndarray, np.ndarray]:
        a = np.asarray(getattr(self, what)[kind], dtype=np.float64)  # (seeds, epochs)
        return a.mean(axis=0), (a.std(axis=0, ddof=1) if a.shape[0] > 1 else np.zeros(a.shape[1]))

    def table(self) -> str:
        cm, cs = self.mean_std("collisionless")
        hm, hs = self.mean_std("hashed")
        lines = [
            f"collision experiment on {self.dataset}: {self.train_examples:,} train / "
            f"{self.test_examples:,} test examples, {len(self.seeds)} seed(s)",
            "",
            f"{'slot':<14} {'distinct ids':>12} {'buckets':>10} {'collision rate':>15} {'paper':>7}",
        ]
        for slot in self.buckets:
            paper = f"{PAPER_RATES[slot]:.2%}" if slot in PAPER_RATES else "-"
            lines.append(
                f"{slot:<14} {self.distinct_ids[slot]:>12,} {self.buckets[slot]:>10,} "
                f"{self.rates[slot]:>15.2%} {paper:>7}"
            )
        control = CONTROL in self.auc
        head = f"{'epoch':>5} {'collisionless AUC':>20} {'hashed AUC':>20} {'difference':>11}"
        lines += ["", head + (f" {'hashed, 0 collisions':>21}" if control else "")]
        xm, xs = self.mean_std(CONTROL) if control else (cm, cs)
        for e in range(self.epochs):
            row = (
                f"{e + 1:>5} {cm[e]:>12.4f} ± {cs[e]:.4f} {hm[e]:>12.4f} ± {hs[e]:.4f} "
                f"{cm[e] - hm[e]:>+11.4f}"
            )
            lines.append(row + (f" {xm[e]:>12.4f} ± {xs[e]:.4f}" if control else ""))
        if control:
            lines.append(
                f"(control: hashed tables big enough that no two ids collide: {self.control_buckets})"
            )
        return "\n".join(lines)

    def summary(self) -> dict[str, Any]:
        cm, cs = self.mean_std("collisionless")
        hm, hs = self.mean_std("hashed")
        return {
            "dataset": self.dataset,
            "collisionless_auc": float(cm[-1]),
            "hashed_auc": float(hm[-1]),
            "collisionless_auc_std": float(cs[-1]),
            "hashed_auc_std": float(hs[-1]),
            "user_collision_rate": self.rates.get("user_id"),
            "item_collision_rate": self.rates.get("item_id"),
            "buckets": self.buckets,
            "distinct_ids": self.distinct_ids,
            "epochs": self.epochs,
            "seeds": list(self.seeds),
            "train_examples": self.train_examples,
            "test_examples": self.test_examples,
            "control_auc": float(self.mean_std(CONTROL)[0][-1]) if CONTROL in self.auc else None,
            "auc_per_epoch": {k: [list(map(float, r)) for r in v] for k, v in self.auc.items()},
            "plot": self.plot_path,
        }

    def plot(self, path: str | Path) -> Path:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        x = np.arange(1, self.epochs + 1)
        fig, ax = plt.subplots(figsize=(6, 4))
        for kind, color in (("collisionless", "tab:blue"), ("hashed", "tab:red"), (CONTROL, "tab:gray")):
            if kind not in self.auc:
                continue
            m, s = self.mean_std(kind)
            label = (
                kind
                if kind != "hashed"
                else (
                    f"hashed (users {self.rates.get('user_id', 0):.2%}, "
                    f"items {self.rates.get('item_id', 0):.2%} collide)"
                )
            )
            ax.plot(x, m, marker="o", color=color, label=label)
            ax.fill_between(x, m - s, m + s, color=color, alpha=0.2)
        ax.set_xlabel("epoch")
        ax.set_ylabel("test AUC (future)")
        ax.set_xticks(x)
        ax.set_title(f"{self.dataset}: collisionless vs hashed embeddings, {len(self.seeds)} seed(s)")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)
        self.plot_path = str(path)
        return path


def run_collision(
    dataset: str,
    path: str | Path | None = None,
    *,
    quick: bool = False,
    epochs: int | None = None,
    seeds: tuple[int, ...] | None = None,
    limit: int | None = -1,
    hash: HashKind = "mix",
    dim: int = 16,
    sparse_lr: float = 0.05,
    progress: bool = False,
    control: bool = False,
    log: Any = None,
) -> CollisionReport:
    """Run the comparison (see the module docstring); `limit=-1` means the form's default row limit.

    control: also train a third arm, hashed tables sized so that NO two ids collide (skipped, with
    a message, when that needs more than 2**24 buckets in a slot): it separates the effect of
    collisions from other differences between the two layers (unseen ids reading zeros, say).
    """
    from freshrec.train.batch import EpochMetrics, TrainConfig, load_train_test, train_model

    if dataset not in _FULL:
        msg = f"collision experiment runs on {sorted(_FULL)}, not {dataset!r}"
        raise ConfigError(msg)
    form = dict((_QUICK if quick else _FULL)[dataset])
    if limit != -1:
        form["limit"] = limit
    epochs = epochs or form["epochs"]
    seeds = tuple(seeds) if seeds else form["seeds"]
    say = log or (lambda *_: None)
    train, test = load_train_test(dataset, path, limit=form["limit"])
    slots = [*train.sparse, *getattr(train, "multi", {})]
    buckets: dict[str, int] = {}
    rates: dict[str, float] = {}
    distinct: dict[str, int] = {}
    all_ids: dict[str, np.ndarray] = {}
    for slot in slots:
        if slot in train.sparse:
            ids = np.concatenate([train.sparse[slot], test.sparse[slot]])
        else:
            ids = np.concatenate([train.multi[slot].values, test.multi[slot].values])
        all_ids[slot] = ids
        distinct[slot] = int(np.unique(ids).shape[0])
        buckets[slot], rates[slot] = buckets_for_rate(ids, PAPER_RATES.get(slot, 0.0), hash=hash)
    say("hashed tables: " + ", ".join(f"{s} {buckets[s]:,} buckets ({rates[s]:.2%})" for s in slots))
    arms: dict[str, dict[str, int] | None] = {"collisionless": None, "hashed": buckets}
    control_buckets: dict[str, int] | None = None
    if control:
        control_buckets = {slot: buckets_for_rate(all_ids[slot], 0.0, hash=hash)[0] for slot in slots}
        if max(control_buckets.values()) > _CONTROL_MAX_BUCKETS:
            say(f"control arm skipped: zero collisions would need {max(control_buckets.values()):,} buckets")
            control_buckets = None
        else:
            arms[CONTROL] = control_buckets
    report = CollisionReport(
        dataset=dataset,
        train_examples=len(train),
        test_examples=len(test),
        epochs=epochs,
        seeds=seeds,
        buckets=buckets,
        distinct_ids=distinct,
        rates=rates,
        auc={k: [] for k in arms},
        log_loss={k: [] for k in arms},
        control_buckets=control_buckets,
    )
    for seed in seeds:
        for kind, arm_buckets in arms.items():
            cfg = TrainConfig(
                epochs=epochs,
                batch_size=form["batch_size"],
                dim=dim,
                hidden=form["hidden"],
                sparse_lr=sparse_lr,
                embedding="collisionless" if arm_buckets is None else "hashed",
                buckets=arm_buckets,
                hash=hash,
                seed=seed,
                progress=progress,
            )

            def show(m: EpochMetrics, k: str = kind, s: int = seed) -> None:
                say(f"seed {s} {k:<20} epoch {m.epoch}: AUC {m.auc:.4f}")

            result = train_model(train, test, cfg, on_epoch=show)
            report.auc[kind].append([m.auc for m in result.epochs])
            report.log_loss[kind].append([m.log_loss for m in result.epochs])
    return report


# ---- command ------------------------------------------------------------------------------------


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", choices=sorted(_FULL), default="movielens")
    parser.add_argument(
        "--data", default=None, help="dataset folder or file (default: the shared data folder)"
    )
    parser.add_argument("--quick", action="store_true", help="small slice, 2 epochs, 1 seed (for CI)")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--seeds", type=int, default=None, help="number of seeds (0..N-1)")
    parser.add_argument("--limit", type=int, default=-1, help="rows (globo: clicks) to use; 0 = all")
    parser.add_argument("--hash", choices=("mix", "md5", "modulo"), default="mix")
    parser.add_argument("--out", default="runs/collision", help="folder for the plot and JSON")
    parser.add_argument("--progress", action="store_true", help="progress bars per epoch")
    parser.add_argument(
        "--control",
        action="store_true",
        help="add a hashed arm with no collisions at all (small vocabularies)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object last")


def main(args: argparse.Namespace) -> int:
    limit = None if args.limit == 0 else args.limit
    try:
        report = run_collision(
            args.dataset,
            args.data,
            quick=args.quick,
            epochs=args.epochs,
            seeds=tuple(range(args.seeds)) if args.seeds else None,
            limit=limit,
            hash=args.hash,
            progress=args.progress,
            control=args.control,
            log=lambda s: print(s, file=sys.stderr if args.json else sys.stdout, flush=True),
        )
    except (FileNotFoundError, ModuleNotFoundError) as e:
        print(f"freshrec experiment collision: cannot load {args.dataset}: {e}", file=sys.stderr)
        return 2
    out = Path(args.out)
    tag = f"{args.dataset}{'-quick' if args.quick else ''}"
    png = report.plot(out / f"collision-{tag}.png")
    (out / f"collision-{tag}.json").write_text(json.dumps(report.summary(), indent=1) + "\n")
    print(report.table())
    print(f"\nplot: {png}\nresults: {out / f'collision-{tag}.json'}")
    if args.json:
        print(json.dumps(report.summary()))
    return 0

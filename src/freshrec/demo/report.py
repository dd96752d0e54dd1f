"""The demo's running measurements, its summary table and its plots."""

from __future__ import annotations

import collections
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from freshrec.train.metrics import auc

__all__ = ["DemoTrace", "RollingAUC", "Sample", "plot", "summary"]


class RollingAUC:
    """AUC of scores against labels over the last `window` impressions."""

    def __init__(self, window: int = 5000) -> None:
        self.scores: collections.deque[float] = collections.deque(maxlen=window)
        self.labels: collections.deque[float] = collections.deque(maxlen=window)

    def push(self, scores: np.ndarray, labels: np.ndarray) -> None:
        self.scores.extend(np.asarray(scores, dtype=float).tolist())
        self.labels.extend(np.asarray(labels, dtype=float).tolist())

    def value(self) -> float:
        y = np.asarray(self.labels)
        if y.size < 50 or y.min() == y.max():
            return float("nan")
        return float(auc(y, np.asarray(self.scores)))


@dataclass
class Sample:
    """One row of the demo's time series."""

    wall_s: float
    data_ts: float
    impressions: int
    clicks: int
    events_per_s: float
    auc_online: float
    auc_frozen: float
    freshness_p50_s: float
    freshness_p99_s: float
    rows: dict[str, int]
    evictions: int
    examples: int
    model_version: int


@dataclass
class DemoTrace:
    """Everything the demo measured: the time series, per-impression scores and freshness."""

    samples: list[Sample] = field(default_factory=list)
    freshness_s: list[float] = field(default_factory=list)
    online_scores: list[np.ndarray] = field(default_factory=list)
    frozen_scores: list[np.ndarray] = field(default_factory=list)
    labels: list[np.ndarray] = field(default_factory=list)
    wall: list[float] = field(default_factory=list)

    def add_impressions(
        self, wall_s: float, online: np.ndarray, frozen: np.ndarray, labels: np.ndarray
    ) -> None:
        self.online_scores.append(np.asarray(online, float))
        self.frozen_scores.append(np.asarray(frozen, float))
        self.labels.append(np.asarray(labels, float))
        self.wall.append(wall_s)

    def auc_tail(self, frac: float = 0.33) -> tuple[float, float, int]:
        """(online AUC, frozen AUC, impressions) over the last `frac` of the impressions."""
        if not self.labels:
            return float("nan"), float("nan"), 0
        y = np.concatenate(self.labels)
        on = np.concatenate(self.online_scores)
        fr = np.concatenate(self.frozen_scores)
        k = int(len(y) * (1 - frac))
        y, on, fr = y[k:], on[k:], fr[k:]
        if y.size == 0 or y.min() == y.max():
            return float("nan"), float("nan"), int(y.size)
        return float(auc(y, on)), float(auc(y, fr)), int(y.size)


def _pct(x: list[float], q: float) -> float:
    return float(np.percentile(x, q)) if x else float("nan")


def summary(trace: DemoTrace) -> dict:
    """The numbers the demo ends with (also its --json output)."""
    on, fr, n = trace.auc_tail()
    last = trace.samples[-1] if trace.samples else None
    return {
        "impressions": int(sum(len(y) for y in trace.labels)),
        "clicks": int(sum(float(y.sum()) for y in trace.labels)),
        "online_auc_last_third": on,
        "frozen_auc_last_third": fr,
        "impressions_last_third": n,
        "freshness_p50_s": _pct(trace.freshness_s, 50),
        "freshness_p99_s": _pct(trace.freshness_s, 99),
        "freshness_samples": len(trace.freshness_s),
        "rows": last.rows if last else {},
        "evictions": last.evictions if last else 0,
        "examples": last.examples if last else 0,
        "model_version": last.model_version if last else 0,
    }


def render(s: dict) -> str:
    def f(x: float, fmt: str = "{:.4f}") -> str:
        return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else fmt.format(x)

    rows = [
        ("impressions served / clicks", f"{s['impressions']:,} / {s['clicks']:,}"),
        ("training examples joined", f"{s['examples']:,}"),
        ("AUC, last third: online model", f(s["online_auc_last_third"])),
        ("AUC, last third: frozen batch model", f(s["frozen_auc_last_third"])),
        (
            "freshness p50 / p99 (s)",
            f"{f(s['freshness_p50_s'], '{:.2f}')} / {f(s['freshness_p99_s'], '{:.2f}')}",
        ),
        ("table rows", ", ".join(f"{k}={v:,}" for k, v in s["rows"].items())),
        ("rows evicted (expiry)", f"{s['evictions']:,}"),
        ("model version served", f"{s['model_version']}"),
    ]
    w = max(len(a) for a, _ in rows)
    return "\n".join(f"  {a:<{w}}  {b}" for a, b in rows)


def plot(trace: DemoTrace, out_dir: Path) -> list[Path]:
    """Three PNGs: AUC over time (online vs frozen), freshness distribution, table sizes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    t = [s.wall_s for s in trace.samples]

    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(t, [s.auc_online for s in trace.samples], label="online (freshrec)")
    ax.plot(t, [s.auc_frozen for s in trace.samples], label="frozen batch model")
    ax.set_xlabel("wall time (s)")
    ax.set_ylabel("AUC of served predictions (rolling)")
    ax.set_title("Learning in real time")
    ax.legend()
    ax.grid(alpha=0.3)
    p = out_dir / "auc_over_time.png"
    fig.tight_layout()
    fig.savefig(p, dpi=110)
    plt.close(fig)
    paths.append(p)

    fig, ax = plt.subplots(figsize=(7, 4))
    if trace.freshness_s:
        ax.hist(trace.freshness_s, bins=40)
    ax.set_xlabel("seconds from a click entering the actions log to serving reflecting it")
    ax.set_ylabel("clicks")
    ax.set_title("Freshness")
    p = out_dir / "freshness.png"
    fig.tight_layout()
    fig.savefig(p, dpi=110)
    plt.close(fig)
    paths.append(p)

    fig, ax = plt.subplots(figsize=(7, 4))
    names = sorted({k for s in trace.samples for k in s.rows})
    for k in names:
        ax.plot(t, [s.rows.get(k, 0) for s in trace.samples], label=f"rows: {k}")
    ax.plot(t, [s.evictions for s in trace.samples], "--", label="evicted (expiry)")
    ax.set_xlabel("wall time (s)")
    ax.set_ylabel("rows")
    ax.set_title("Training tables: growth, frequency filter and expiry")
    ax.legend()
    ax.grid(alpha=0.3)
    p = out_dir / "table_sizes.png"
    fig.tight_layout()
    fig.savefig(p, dpi=110)
    plt.close(fig)
    paths.append(p)
    return paths

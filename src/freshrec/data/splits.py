"""Time-ordered splits: train on the past, evaluate on the future, never the other way round.

Every split here returns parts whose times do not overlap: for consecutive parts a, b,
`a.ts.max() <= b.ts.min()`. Rows with the same timestamp (a click and its sampled negatives)
are never cut apart except by `split_by_order`, which cuts by row position (for data without a
time column, such as Criteo, where row order is time order). Inputs need not be sorted; the parts
come back sorted by time (stable).
"""

from __future__ import annotations

import numpy as np

from freshrec.data.dataset import Dataset
from freshrec.errors import ConfigError

__all__ = ["split_by_order", "split_by_time", "time_shards", "time_windows"]


def _check_frac(frac: float) -> None:
    if not 0.0 <= frac <= 1.0:
        msg = f"train_frac {frac} must be in [0, 1]"
        raise ConfigError(msg)


def split_by_time(
    ds: Dataset, *, train_frac: float | None = None, cutoff_ts: float | None = None
) -> tuple[Dataset, Dataset]:
    """(train, test): train = rows with ts < cutoff, test = rows with ts >= cutoff.

    Give exactly one of `cutoff_ts` (seconds) or `train_frac`; with `train_frac` the cutoff is the
    ts of the row at position floor(n * train_frac) in time order, so train holds about that
    share (less when rows tie on that ts: ties all go to test).
    """
    if (train_frac is None) == (cutoff_ts is None):
        msg = "split_by_time: give exactly one of train_frac or cutoff_ts"
        raise ConfigError(msg)
    ds = ds.sorted_by_time()
    n = len(ds)
    if train_frac is not None:
        _check_frac(train_frac)
        at = int(np.floor(n * train_frac))
        if at >= n:
            return ds, ds.take(slice(n, n))
        cutoff_ts = float(ds.ts[at])
    assert cutoff_ts is not None
    cut = int(np.searchsorted(ds.ts, float(cutoff_ts), side="left"))
    return ds.take(slice(0, cut)), ds.take(slice(cut, n))


def split_by_order(ds: Dataset, train_frac: float) -> tuple[Dataset, Dataset]:
    """(first floor(n * train_frac) rows, the rest), in row order: for data whose row order is time order."""
    _check_frac(train_frac)
    cut = int(np.floor(len(ds) * train_frac))
    return ds.take(slice(0, cut)), ds.take(slice(cut, len(ds)))


def time_shards(ds: Dataset, n: int) -> list[Dataset]:
    """`n` consecutive shards in time order, of about equal row counts (ties on a ts stay together).

    Shards can be empty when many rows share a timestamp; concatenated they are `ds` sorted by time.
    """
    if n < 1:
        msg = f"time_shards: n={n} must be >= 1"
        raise ConfigError(msg)
    ds = ds.sorted_by_time()
    total = len(ds)
    bounds = [0]
    for s in range(1, n):
        at = min(total * s // n, total)
        cut = int(np.searchsorted(ds.ts, ds.ts[at], side="left")) if at < total else total
        bounds.append(max(cut, bounds[-1]))
    bounds.append(total)
    return [ds.take(slice(a, b)) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def time_windows(ds: Dataset, width_s: float, *, start_ts: float | None = None) -> list[Dataset]:
    """Consecutive windows [start + j * width, start + (j + 1) * width) covering the data (empty ones kept).

    `start_ts` defaults to the first row's ts. Rows before `start_ts` are dropped.
    """
    if width_s <= 0:
        msg = f"time_windows: width_s={width_s} must be > 0"
        raise ConfigError(msg)
    ds = ds.sorted_by_time()
    if len(ds) == 0:
        return []
    start = float(ds.ts[0]) if start_ts is None else float(start_ts)
    count = max(int(np.floor((ds.ts[-1] - start) / width_s)) + 1, 1)
    edges = start + width_s * np.arange(count + 1)
    cuts = np.searchsorted(ds.ts, edges, side="left")
    return [ds.take(slice(int(a), int(b))) for a, b in zip(cuts[:-1], cuts[1:], strict=True)]

"""Globo.com news clicks (Moreira et al., DLRS 2018) with negatives sampled from the recent past.

The log holds clicks only. Every click becomes a positive (label 1), followed by up to `k`
negatives (label 0) for the same request context (user, device, region, ... and time), whose
articles are drawn from the clicks of the trailing `window_s` seconds, proportionally to their
click counts there (uniform over those clicks), never from the future and never the clicked
article; the k articles of one click are distinct.

Candidate set and sampling rate. At click i (time t), the candidate negatives are the distinct
articles clicked in [t - window_s, t] before click i (in time order) other than the clicked
one; call their number m. If g <= k negatives were drawn, the click's rate is `r = g / m`: the
share of the candidate non-clicked impressions kept at this click. EVERY example of the click,
the positive included, carries `sample_rate = r`, as in `freshrec.stream.sampling`: the log-odds
correction `logit - log(r)` is a function of the request, and an offset that differed between
a click's positive and its negatives would leak the label. A click with no candidates (the
very first ones) gets no negatives and r = 1. With popularity-weighted draws a popular article
is kept more often than r and a rare one less often: r is the average over the candidates,
which is what a per-request correction can use.

Slots: `user_id`, `item_id` (click_article_id), `environment`, `device_group`, `os`, `country`,
`region`, `referrer_type` (raw values). ts = click_timestamp / 1000 (seconds). Rows are sorted by
time; a click's negatives follow its positive and share its ts.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
from numba import njit

from freshrec.data.dataset import Dataset
from freshrec.errors import ConfigError, DataError

__all__ = ["CONTEXT_SLOTS", "load_globo", "sample_trailing_negatives"]

# slot name -> column of clicks.csv
CONTEXT_SLOTS = {
    "user_id": "user_id",
    "environment": "click_environment",
    "device_group": "click_deviceGroup",
    "os": "click_os",
    "country": "click_country",
    "region": "click_region",
    "referrer_type": "click_referrer_type",
}
_COLUMNS = ["session_start", "click_article_id", "click_timestamp", *CONTEXT_SLOTS.values()]
_HOUR_MS = 3_600_000


@njit(nogil=True, cache=True)
def _sample_kernel(ts, item, n_items, window, k, seed, max_tries):  # pragma: no cover - compiled
    """ts int64 (n,) sorted; item int64 (n,) dense in [0, n_items). Returns (src, neg_item, click_rate)."""
    np.random.seed(seed)
    n = len(ts)
    counts = np.zeros(n_items, np.int64)
    src = np.empty(n * k, np.int64)
    neg = np.empty(n * k, np.int64)
    rate = np.ones(n, np.float64)
    drawn = np.empty(max(k, 1), np.int64)
    m = 0
    distinct = 0
    lo = 0
    for i in range(n):
        # window = clicks lo..i-1, i.e. before click i with ts >= ts[i] - window
        while lo < i and ts[lo] < ts[i] - window:
            counts[item[lo]] -= 1
            if counts[item[lo]] == 0:
                distinct -= 1
            lo += 1
        width = i - lo
        cand = distinct - (1 if counts[item[i]] > 0 else 0)
        if width > 0 and cand > 0 and k > 0:
            want = min(k, cand)
            got = 0
            tries = 0
            while got < want and tries < max_tries:
                tries += 1
                it = item[lo + np.random.randint(0, width)]
                if it == item[i]:
                    continue
                dup = False
                for g in range(got):
                    if drawn[g] == it:
                        dup = True
                        break
                if not dup:
                    drawn[got] = it
                    got += 1
            rate[i] = got / cand
            for g in range(got):
                src[m] = i
                neg[m] = drawn[g]
                m += 1
        counts[item[i]] += 1
        if counts[item[i]] == 1:
            distinct += 1
    return src[:m], neg[:m], rate


def sample_trailing_negatives(
    ts_ms: np.ndarray,
    item: np.ndarray,
    *,
    k: int,
    window_s: float,
    seed: int = 0,
    max_tries: int | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Draw negatives for time-sorted clicks (see the module docstring for the rule and the rate).

    Args:
        ts_ms: int64 (n,) click times in milliseconds, non-decreasing.
        item: int64 (n,) clicked item ids (raw).
        k: negatives wanted per click.
        window_s: the trailing window in seconds.
        max_tries: draws allowed per click before giving up on distinct negatives (default 20 k).

    Returns:
        (src int64 (m,) index of the click each negative belongs to, ascending;
         item int64 (m,) raw ids of the negatives;
         rate float32 (n,) per click: g / m, the share of its candidate negatives kept (1 when none)).
    """
    ts_ms = np.ascontiguousarray(ts_ms, dtype=np.int64)
    if len(ts_ms) > 1 and np.any(ts_ms[1:] < ts_ms[:-1]):
        msg = "sample_trailing_negatives: clicks must be sorted by time"
        raise DataError(msg)
    uniq, dense = np.unique(np.asarray(item, dtype=np.int64), return_inverse=True)
    src, neg, rate = _sample_kernel(
        ts_ms,
        dense.astype(np.int64).reshape(-1),
        len(uniq),
        int(round(window_s * 1000)),
        int(k),
        int(seed),
        int(max_tries if max_tries is not None else 20 * max(k, 1)),
    )
    return src, uniq[neg], rate.astype(np.float32)


def _read_clicks(path: Path, limit: int | None) -> pa.Table:
    """All clicks, or (limit) the first `limit` in time order, reading only as much of the file as needed.

    With a limit the file is streamed and reading stops once every later row must be later than
    the limit-th click: that holds for the official layout (hourly files concatenated, so the hour
    of `session_start` never decreases down the file, and a click never precedes its session's
    start); the stream is checked for that order and read to the end where it does not hold.
    """
    convert = pacsv.ConvertOptions(include_columns=_COLUMNS, column_types={c: pa.int64() for c in _COLUMNS})
    if limit is None:
        return pacsv.read_csv(path, convert_options=convert)
    if limit == 0:
        return pacsv.open_csv(path, convert_options=convert).schema.empty_table()
    batches = []
    rows = 0
    ordered = True
    last_hour = -1
    cutoff = None
    with pacsv.open_csv(path, convert_options=convert) as reader:
        for batch in reader:
            batches.append(batch)
            rows += batch.num_rows
            hours = batch.column("session_start").to_numpy() // _HOUR_MS
            if len(hours):
                ordered = ordered and hours[0] >= last_hour and bool(np.all(hours[1:] >= hours[:-1]))
                last_hour = int(hours[-1])
            if ordered and rows >= limit:
                ts = np.concatenate([b.column("click_timestamp").to_numpy() for b in batches])
                cutoff = np.partition(ts, limit - 1)[limit - 1]
                if last_hour * _HOUR_MS > cutoff:
                    break  # every later row starts a session after the limit-th click
    return pa.Table.from_batches(batches, schema=reader.schema)


def load_globo(
    path: str | Path,
    *,
    k: int = 4,
    window_s: float = 3600.0,
    limit: int | None = None,
    seed: int = 0,
    name: str = "globo",
) -> Dataset:
    """Load Globo clicks (`clicks.csv.gz` or a folder holding it) with k sampled negatives per click.

    Args:
        k: negatives per click (0: clicks only).
        window_s: the trailing popularity window for negatives, in seconds (default one hour).
        limit: use only the first `limit` clicks in time order (for tests and quick runs).
        seed: the negative sampler's seed (same seed, same data -> same dataset).

    Returns:
        A time-sorted `Dataset` (see the module docstring): clicks and their negatives.
    """
    if k < 0 or window_s <= 0 or (limit is not None and limit < 0):
        msg = f"load_globo: need k >= 0, window_s > 0, limit >= 0 (got {k=}, {window_s=}, {limit=})"
        raise ConfigError(msg)
    path = Path(path)
    if path.is_dir():
        path = path / "clicks.csv.gz"
    table = _read_clicks(path, limit)
    ts_ms = table["click_timestamp"].to_numpy()
    order = np.argsort(ts_ms, kind="stable")
    if limit is not None:
        order = order[:limit]
    ts_ms = ts_ms[order]
    clicked = table["click_article_id"].to_numpy()[order]
    context = {slot: table[col].to_numpy()[order] for slot, col in CONTEXT_SLOTS.items()}
    src, neg_item, click_rate = sample_trailing_negatives(ts_ms, clicked, k=k, window_s=window_s, seed=seed)

    # interleave: click i's positive, then its negatives. Positive of click i goes to row
    # i + (negatives of clicks before i); its negatives right after it.
    n, m = len(ts_ms), len(src)
    neg_per_click = np.bincount(src, minlength=n)
    pos_row = np.arange(n) + np.concatenate([[0], np.cumsum(neg_per_click)[:-1]])
    neg_row = np.setdiff1d(np.arange(n + m), pos_row, assume_unique=True)  # ascending, grouped by src
    row_src = np.empty(n + m, np.int64)
    row_src[pos_row] = np.arange(n)
    row_src[neg_row] = src
    item = np.empty(n + m, np.int64)
    item[pos_row] = clicked
    item[neg_row] = neg_item
    label = np.zeros(n + m, np.float32)
    label[pos_row] = 1.0
    rate = click_rate[row_src]  # the click's rate on its positive and on its negatives
    sparse = {"user_id": context["user_id"][row_src], "item_id": item}
    sparse |= {slot: v[row_src] for slot, v in context.items() if slot != "user_id"}
    return Dataset.build(name, sparse=sparse, label=label, ts=ts_ms[row_src] / 1000.0, sample_rate=rate)

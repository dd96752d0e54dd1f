"""`freshrec bench filter`: memory and false admissions of the frequency filter on a real id stream.

The stream is the Globo.com click log (`globo/clicks.csv.gz`) replayed in time order, in batches of
`--batch` clicks; article ids and user ids are filtered separately. For each id kind, min_count
and filter (count-min sketches of several widths, depth 4, and the probabilistic filter), every
batch offers the filter the ids it has not admitted yet, with their counts in the batch, at the
batch's last click time. The baseline is an exact counter over the same two-generation window
(what a dict would give): an admission is false when the exact count of the id had not reached
min_count yet, and `missed` counts ids the exact counter admitted but the filter never did (0 for
count-min, which never under-counts). The exact counter's memory is estimated as a Python dict
{id: count} holding the peak number of ids live in the window (bytes per entry measured here).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import tracemalloc
from dataclasses import dataclass

import numpy as np

from freshrec.table.config import FilterConfig
from freshrec.table.filter import FrequencyFilter

__all__ = ["configure", "main", "run"]

HELP = "frequency filter: memory and false-admission rate of count-min / probabilistic on Globo ids"
EXAMPLE = "freshrec bench filter --quick --json"

_KINDS = {"article": "click_article_id", "user": "user_id"}


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="first 300k clicks only (< 1 min)")
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    parser.add_argument("--limit", type=int, default=None, help="use the first N clicks (time order)")
    parser.add_argument("--batch", type=int, default=10_000, help="clicks per batch (default 10000)")
    parser.add_argument("--window-s", type=float, default=86_400.0, help="filter window, data seconds")
    parser.add_argument("--widths", default="12,14,16,18", help="log2 of sketch widths (comma list)")
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--min-counts", default="2,5", help="comma list")
    parser.add_argument("--data", default=None, help="clicks.csv.gz (default: shared data folder)")


def _load_clicks(path: str, limit: int | None) -> dict[str, np.ndarray]:
    """Columns user_id, click_article_id, click_timestamp (ms) as int64, sorted by time (stable)."""
    import pyarrow.csv as pacsv

    cols = ["user_id", "click_article_id", "click_timestamp"]
    t = pacsv.read_csv(path, convert_options=pacsv.ConvertOptions(include_columns=cols))
    data = {c: t.column(c).to_numpy().astype(np.int64) for c in cols}
    order = np.argsort(data["click_timestamp"], kind="stable")
    if limit is not None:
        order = order[:limit]
    return {c: v[order] for c, v in data.items()}


def _dict_bytes_per_id(n: int = 200_000) -> float:
    """Measured bytes per entry of a Python dict {int id: int count} (ids > 2**20, counts small)."""
    ids = list(range(1 << 20, (1 << 20) + n))
    tracemalloc.start()
    d = {}
    for i in ids:
        d[i] = 3
    size, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    del d
    # the int keys already exist in `ids`; count them too, as a real dict would own them
    return size / n + sys.getsizeof(1 << 20)


class _ExactWindow:
    """Exact counts per dense id with the filter's generations (aligned to the first time seen)."""

    def __init__(self, n_ids: int, window_s: float) -> None:
        self.w = window_s
        self.start: float | None = None
        self.cur = np.zeros(n_ids, np.int64)
        self.prev = np.zeros(n_ids, np.int64)

    def advance(self, now: float) -> None:
        if self.start is None:
            self.start = now
            return
        elapsed = now - self.start
        if not elapsed >= self.w:
            return
        k = int(elapsed // self.w)
        if k == 1:
            self.cur, self.prev = self.prev, self.cur
            self.cur[:] = 0
        else:
            self.cur[:] = 0
            self.prev[:] = 0
        self.start += k * self.w

    def live(self) -> int:
        return int(np.count_nonzero(self.cur + self.prev))


@dataclass
class _Arm:
    name: str
    width: int | None
    filt: FrequencyFilter
    admitted: np.ndarray  # bool per dense id
    n_admitted: int = 0
    false: int = 0
    seconds: float = 0.0


def run(
    clicks: dict[str, np.ndarray],
    *,
    batch: int,
    window_s: float,
    widths: list[int],
    depth: int,
    min_counts: list[int],
    progress: bool = True,
) -> list[dict]:
    """Replay the clicks and return one row (a dict) per (id kind, min_count, filter)."""
    from tqdm import tqdm

    bytes_per_id = _dict_bytes_per_id()
    for kind in ("count_min", "probabilistic"):  # compile / load the kernels outside the timings
        FrequencyFilter(FilterConfig(kind=kind, width=8, depth=1), min_count=2).admit(
            np.arange(2), np.ones(2, np.int64), 0.0
        )
    ts = clicks["click_timestamp"]
    n = ts.shape[0]
    rows: list[dict] = []
    for kind, col in _KINDS.items():
        ids_all = clicks[col]
        n_ids = int(ids_all.max()) + 1
        for mc in min_counts:
            exact = _ExactWindow(n_ids, window_s)
            exact_admitted = np.zeros(n_ids, bool)
            arms = [
                _Arm(
                    f"count_min 2^{w.bit_length() - 1}",
                    w,
                    FrequencyFilter(
                        FilterConfig(kind="count_min", width=w, depth=depth, window_s=window_s),
                        min_count=mc,
                        seed=1,
                    ),
                    np.zeros(n_ids, bool),
                )
                for w in widths
            ]
            arms.append(
                _Arm(
                    "probabilistic",
                    None,
                    FrequencyFilter(
                        FilterConfig(kind="probabilistic", window_s=window_s), min_count=mc, seed=1
                    ),
                    np.zeros(n_ids, bool),
                )
            )
            peak_live = 0
            it = range(0, n, batch)
            for lo in tqdm(
                it, desc=f"{kind} min_count={mc}", disable=not progress, file=sys.stderr, leave=False
            ):
                b_ids, b_counts = np.unique(ids_all[lo : lo + batch], return_counts=True)
                now = float(ts[min(lo + batch, n) - 1]) / 1000.0
                exact.advance(now)
                exact.cur[b_ids] += b_counts
                true = exact.cur[b_ids] + exact.prev[b_ids]
                exact_admitted[b_ids[true >= mc]] = True
                peak_live = max(peak_live, exact.live())
                for arm in arms:
                    offer = ~arm.admitted[b_ids]
                    o_ids = b_ids[offer]
                    t0 = time.perf_counter()
                    ok = arm.filt.admit(o_ids, b_counts[offer], now)
                    arm.seconds += time.perf_counter() - t0
                    arm.admitted[o_ids[ok]] = True
                    arm.n_admitted += int(ok.sum())
                    arm.false += int((true[offer][ok] < mc).sum())
            n_exact = int(exact_admitted.sum())
            exact_bytes = int(peak_live * bytes_per_id)
            distinct = int(np.unique(ids_all).shape[0])
            rows.append(
                {
                    "ids": kind,
                    "filter": "exact (dict)",
                    "min_count": mc,
                    "width": None,
                    "nbytes": exact_bytes,
                    "distinct": distinct,
                    "peak_live": peak_live,
                    "admitted": n_exact,
                    "false_admits": 0,
                    "false_rate": 0.0,
                    "missed": 0,
                    "ms_per_batch": None,
                }
            )
            n_batches = -(-n // batch)
            for arm in arms:
                missed = int((exact_admitted & ~arm.admitted).sum())
                rows.append(
                    {
                        "ids": kind,
                        "filter": arm.name,
                        "min_count": mc,
                        "width": arm.width,
                        "nbytes": arm.filt.nbytes,
                        "distinct": distinct,
                        "peak_live": peak_live,
                        "admitted": arm.n_admitted,
                        "false_admits": arm.false,
                        "false_rate": arm.false / max(arm.n_admitted, 1),
                        "missed": missed,
                        "ms_per_batch": 1000.0 * arm.seconds / n_batches,
                    }
                )
    return rows


def _fmt_bytes(n: int) -> str:
    b = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if b < 1024 or unit == "GiB":
            return f"{b:.0f} {unit}" if unit == "B" else f"{b:.1f} {unit}"
        b /= 1024
    return str(b)


def _table(rows: list[dict]) -> str:
    head = (
        f"{'ids':<8}{'N':>3}  {'filter':<16}{'memory':>11}{'admitted':>10}{'false':>8}{'false %':>9}"
        f"{'missed':>8}{'ms/batch':>10}"
    )
    out = [head, "-" * len(head)]
    for r in rows:
        ms = "" if r["ms_per_batch"] is None else f"{r['ms_per_batch']:.2f}"
        out.append(
            f"{r['ids']:<8}{r['min_count']:>3}  {r['filter']:<16}{_fmt_bytes(r['nbytes']):>11}"
            f"{r['admitted']:>10}{r['false_admits']:>8}{100 * r['false_rate']:>8.2f}%{r['missed']:>8}{ms:>10}"
        )
    return "\n".join(out)


def main(args: argparse.Namespace) -> int:
    from freshrec.data.paths import dataset_path

    path = args.data or str(dataset_path("globo") / "clicks.csv.gz")
    try:
        open(path, "rb").close()
    except OSError as e:
        print(f"freshrec bench filter: cannot read the Globo clicks at {path}: {e}", file=sys.stderr)
        return 2
    limit = args.limit if args.limit is not None else (300_000 if args.quick else None)
    t0 = time.perf_counter()
    clicks = _load_clicks(path, limit)
    load_s = time.perf_counter() - t0
    widths = [1 << int(x) for x in args.widths.split(",") if x]
    min_counts = [int(x) for x in args.min_counts.split(",") if x]
    n = clicks["click_timestamp"].shape[0]
    span_h = (clicks["click_timestamp"][-1] - clicks["click_timestamp"][0]) / 3.6e6 if n else 0.0
    print(
        f"Globo clicks: {n:,} ({span_h:.1f} h of data time, loaded in {load_s:.1f} s); batch {args.batch}, "
        f"window {args.window_s:g} s, depth {args.depth}"
    )
    t1 = time.perf_counter()
    rows = run(
        clicks,
        batch=args.batch,
        window_s=args.window_s,
        widths=widths,
        depth=args.depth,
        min_counts=min_counts,
        progress=sys.stderr.isatty(),
    )
    print(_table(rows))
    print(
        "false % = admitted before the exact windowed count reached N, over admitted; missed = ids the exact"
        " counter admitted that the filter never did; exact memory = a Python dict at the peak number of"
        " ids live in the window."
    )
    print(f"replay took {time.perf_counter() - t1:.1f} s")
    if args.json:
        print(
            json.dumps(
                {
                    "bench": "filter",
                    "clicks": n,
                    "batch": args.batch,
                    "window_s": args.window_s,
                    "depth": args.depth,
                    "rows": rows,
                }
            )
        )
    return 0

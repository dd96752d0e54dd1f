"""`freshrec bench snapshot`: bytes and time of full vs incremental trainer snapshots, and recovery.

An `OnlineTrainer` (DeepFM, Adagrad tables, dim 16 + the first-order column) gets `--rows` ids in
its `user_id` table (filled through `apply_gradients`, i.e. real rows with optimizer state). Then:

1. a full snapshot (`PeriodicSnapshotter.snapshot(full=True)`): every row, optimizer state,
   last-seen, counts; this is the baseline;
2. for each touched fraction f: f * rows random ids get a training update, and an incremental
   snapshot writes only those rows (plus the dense state, which every snapshot carries);
3. recovery: a fresh trainer restores the full snapshot plus the incrementals (`recover`).

Everything goes through the real format (fsync'd files, sha256 per array), to `--dir` (default: a
temporary folder beside the system temp dir). Times are wall-clock on this machine, not asserted.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from freshrec.commands.options import at_least

__all__ = ["bench_snapshot", "configure", "main"]

HELP = "full vs incremental snapshot bytes/time of a multi-million-row trainer, and recovery time"
EXAMPLE = "freshrec bench snapshot --rows 4000000 --json"
TORCH_THREADS = 1


def bench_snapshot(
    rows: int = 4_000_000,
    touched: tuple[float, ...] = (0.001, 0.01, 0.1),
    *,
    directory: str | Path | None = None,
    dim: int = 16,
    log=lambda s: None,
) -> dict[str, Any]:
    """Run the benchmark (see the module docstring); returns a JSON-able dict of the figures."""

    from freshrec.checkpoint.periodic import PeriodicSnapshotter, SnapshotPolicy, recover
    from freshrec.model import FeatureSpec, SlotSpec
    from freshrec.table import Adagrad
    from freshrec.train.online import OnlineConfig, OnlineTrainer

    spec = FeatureSpec(
        slots=(SlotSpec(name="user_id"), SlotSpec(name="item_id")), dim=dim, optimizer=Adagrad(lr=0.05)
    )

    def make() -> OnlineTrainer:
        return OnlineTrainer.from_spec(spec, OnlineConfig(), hidden=(64, 32))

    tr = make()
    table = tr.tables["user_id"]
    table.reserve(rows)
    rng = np.random.default_rng(0)
    ids = rng.permutation(np.arange(1, rows + 1, dtype=np.int64) * 7919)
    t0 = time.perf_counter()
    chunk = 1 << 18
    width = table.dim
    for a in range(0, rows, chunk):
        part = ids[a : a + chunk]
        g = rng.normal(0, 0.01, (part.shape[0], width)).astype(np.float32)
        table.apply_gradients(part, g, now=1e9 + a)
    tr.tables["item_id"].apply_gradients(ids[:1000], np.zeros((1000, width), np.float32), now=1e9)
    log(
        f"filled {rows:,} rows (width {table.width} floats with Adagrad state) "
        f"in {time.perf_counter() - t0:.1f} s"
    )

    tmp = None
    if directory is None:
        tmp = tempfile.mkdtemp(prefix="freshrec-bench-snapshot-")
        root = Path(tmp)
    else:
        root = Path(directory)
        shutil.rmtree(root, ignore_errors=True)
    try:
        snap = PeriodicSnapshotter(root, SnapshotPolicy(every_batches=1, full_every=1000, keep=2))
        tr.ps.step = 1
        full = snap.snapshot(tr, full=True)
        log(f"full snapshot: {full.nbytes / 1e6:,.1f} MB in {full.seconds:.2f} s")
        results = []
        for f in touched:
            k = max(1, int(rows * f))
            sel = ids[rng.choice(rows, k, replace=False)]
            table.apply_gradients(sel, rng.normal(0, 0.01, (k, width)).astype(np.float32), now=2e9)
            tr.ps.step += 1
            inc = snap.snapshot(tr)
            assert inc.kind == "incremental"
            results.append(
                {
                    "touched_fraction": f,
                    "touched_rows": k,
                    "bytes": inc.nbytes,
                    "seconds": inc.seconds,
                    "bytes_vs_full": inc.nbytes / full.nbytes,
                    "time_vs_full": inc.seconds / full.seconds,
                }
            )
            log(
                f"incremental, {k:,} rows touched ({f:.1%}): {inc.nbytes / 1e6:,.2f} MB "
                f"in {inc.seconds:.3f} s"
            )
        fresh = make()
        t0 = time.perf_counter()
        info = recover(root, fresh)
        rec_s = time.perf_counter() - t0
        assert info is not None and len(fresh.tables["user_id"]) == rows
        probe = ids[:1000]
        same = bool(np.array_equal(fresh.tables["user_id"].lookup(probe), table.lookup(probe)))
        log(f"recovery (full + {len(info.incrementals)} incrementals): {rec_s:.2f} s, rows equal: {same}")
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    return {
        "bench": "snapshot",
        "rows": rows,
        "row_bytes": table.width * 4,
        "full": {"bytes": full.nbytes, "seconds": full.seconds, "mb_per_s": full.nbytes / 1e6 / full.seconds},
        "incremental": results,
        "recovery_seconds": rec_s,
        "recovered_equal": same,
    }


def table_text(r: dict[str, Any]) -> str:
    lines = [
        f"snapshot benchmark: {r['rows']:,} rows of {r['row_bytes']} bytes (embedding + Adagrad state)",
        "",
        f"{'snapshot':<26} {'MB':>10} {'seconds':>9} {'bytes vs full':>14} {'time vs full':>13}",
        f"{'full (baseline)':<26} {r['full']['bytes'] / 1e6:>10.1f} {r['full']['seconds']:>9.3f} "
        f"{1.0:>14.4f} {1.0:>13.4f}",
    ]
    for x in r["incremental"]:
        name = f"incremental {x['touched_fraction']:.1%} touched"
        lines.append(
            f"{name:<26} {x['bytes'] / 1e6:>10.2f} {x['seconds']:>9.3f} {x['bytes_vs_full']:>14.4f} "
            f"{x['time_vs_full']:>13.4f}"
        )
    lines.append(
        f"\nrecovery (full + incrementals): {r['recovery_seconds']:.2f} s; rows equal: {r['recovered_equal']}"
    )
    return "\n".join(lines)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rows", type=at_least(1), default=4_000_000, help="rows in the big table")
    parser.add_argument("--touched", default="0.001,0.01,0.1", help="touched fractions, comma separated")
    parser.add_argument("--dir", default=None, help="snapshot folder (default: a temporary one, removed)")
    parser.add_argument("--quick", action="store_true", help="200k rows")
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")


def main(args: argparse.Namespace) -> int:
    rows = 200_000 if args.quick else args.rows
    touched = tuple(float(x) for x in args.touched.split(",") if x.strip())
    say = lambda s: print(s, file=sys.stderr if args.json else sys.stdout, flush=True)  # noqa: E731
    r = bench_snapshot(rows, touched, directory=args.dir, log=say)
    print(table_text(r))
    if args.json:
        print(json.dumps(r))
    return 0

"""`freshrec bench import`: rows/s of `freshrec import` from CSV and from Parquet into the local log,
against pyarrow's own read of the same file, in the same run.

The file is an ad-impression table of shape (a) written here (`--rows`, seeded): a click label, a
time in seconds, 4 integer slots, 2 string slots (hashed), one dense column (log1p, standardized).
Each timing is the best of `--repeat` runs. The import is everything `freshrec import` does after
the process starts: read the file (pyarrow), ids and hashing, sort by time, encode the events, write
and fsync them into a fresh local log (features + actions), state file included. The baseline is
`pyarrow.csv.read_csv` / `pyarrow.parquet.read_table` of the same columns, with pyarrow's threads
and with one thread. The stages of the best import are shown: read + ids (the file read, hashing,
time sort), encode (the plan: the events' columns), write (framing every record straight from the
columns, crc32, writes and fsyncs). `import_rows_per_cpu_s` divides the rows by the CPU time the
process spent on the best import (all its threads): the rate on one core. `disk_write_floor_s`
is a second baseline in the same run: writing as many bytes as the import's log segments hold
into one file and fsyncing it, which no import can beat.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

__all__ = ["configure", "main", "run"]

HELP = "import: rows/s from CSV and Parquet into the local log vs pyarrow's read of the same file"
EXAMPLE = "freshrec bench import --rows 1000000 --json"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows of the generated file")
    parser.add_argument("--repeat", type=int, default=2, help="runs per timing (the best is kept)")
    parser.add_argument("--dir", default=None, help="work folder (default: a temporary one, removed)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    parser.add_argument("--threads", type=int, default=1, help="framing threads, as `freshrec import`")
    parser.add_argument("--quick", action="store_true", help="20,000 rows, one run each (a smoke test)")


def _write_files(folder: Path, rows: int, seed: int) -> tuple[Path, Path]:
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    t = np.sort(rng.integers(1_700_000_000, 1_700_000_000 + 7 * 86400, rows))
    table = pa.table(
        {
            "click": (rng.random(rows) < 0.2).astype(np.int64),
            "ts": t,
            "user": rng.integers(0, 2_000_000, rows),
            "item": rng.integers(0, 200_000, rows),
            "pos": rng.integers(0, 10, rows),
            "device": rng.integers(0, 5, rows),
            "site": pa.array([f"site-{x}" for x in rng.integers(0, 5000, rows)]),
            "campaign": pa.array([f"c{x:x}" for x in rng.integers(0, 20000, rows)]),
            "bid": rng.exponential(30.0, rows).round(3),
        }
    )
    csv, parquet = folder / "ads.csv", folder / "ads.parquet"
    pacsv.write_csv(table, csv)
    pq.write_table(table, parquet)
    return csv, parquet


def _schema(path: Path):
    from freshrec.data.schema import Schema

    slots = {
        "user_id": {"column": "user", "type": "int"},
        "item_id": {"column": "item", "type": "int"},
        "pos": {"type": "int"},
        "device": {"type": "int"},
        "site": {"type": "string"},
        "campaign": {"type": "string"},
        "bid": {"kind": "dense", "log1p": True, "standardize": True},
    }
    return Schema.from_dict(
        {
            "name": "bench",
            "files": [str(path)],
            "timestamp": "ts",
            "user": "user_id",
            "item": "item_id",
            "slots": slots,
            "labels": {"click": {"column": "click"}},
        }
    )


def _best(fn, repeat: int, cpu: list[float] | None = None) -> float:
    """The shortest wall time of `repeat` calls of `fn`; cpu[0] = that call's process CPU time."""
    best = float("inf")
    for _ in range(max(1, repeat)):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        wall, used = time.perf_counter() - t0, time.process_time() - c0
        if wall < best:
            best = wall
            if cpu is not None:
                cpu[:] = [used]
    return best


def _write_floor(folder: Path, nbytes: int, repeat: int) -> float:
    """Seconds to write `nbytes` into a fresh file (4 MiB writes from one buffer) and fsync it: what
    the disk alone costs for the bytes an import writes."""
    chunk = np.full(4 << 20, 0x61, np.uint8).data

    def write() -> None:
        path = folder / "floor.bin"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            done = 0
            while done < nbytes:
                done += os.write(fd, chunk[: min(len(chunk), nbytes - done)])
            os.fsync(fd)
        finally:
            os.close(fd)
            path.unlink()

    return _best(write, repeat)


def run(
    rows: int = 1_000_000, *, repeat: int = 2, folder: str | None = None, seed: int = 0, threads: int = 1
) -> dict:
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    from freshrec.data.schema_data import dense_stats, read_columns
    from freshrec.stream.importer import import_to_logs, plan_events
    from freshrec.stream.local_log import LocalBackend

    work = Path(folder) if folder else Path(tempfile.mkdtemp(prefix="freshrec-bench-import-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        csv, parquet = _write_files(work, rows, seed)
        cols_wanted = _schema(csv).columns()
        out: dict = {
            "rows": rows,
            "threads": threads,
            "cpus": os.cpu_count(),
            "load_avg": list(os.getloadavg()),
        }
        readers = {
            "csv": lambda p, threads: pacsv.read_csv(
                p,
                read_options=pacsv.ReadOptions(use_threads=threads),
                convert_options=pacsv.ConvertOptions(include_columns=cols_wanted),
            ),
            "parquet": lambda p, threads: pq.read_table(p, columns=cols_wanted, use_threads=threads),
        }
        for fmt, path in (("csv", csv), ("parquet", parquet)):
            read = readers[fmt]
            base_s = _best(lambda path=path, read=read: read(path, True), repeat)
            base1_s = _best(lambda path=path, read=read: read(path, False), repeat)
            events = [0]
            stages: dict[str, float] = {}

            def one(
                path: Path = path,
                fmt: str = fmt,
                events: list[int] = events,
                stages: dict[str, float] = stages,
            ) -> None:
                logs_dir = work / f"logs-{fmt}"
                shutil.rmtree(logs_dir, ignore_errors=True)
                t0 = time.perf_counter()
                schema = _schema(path)
                cols = read_columns(schema)
                schema = schema.with_types(cols.types)
                schema = schema.with_stats(dense_stats(schema, cols))
                t1 = time.perf_counter()
                plan = plan_events(schema, cols, fingerprint="bench")
                t2 = time.perf_counter()
                backend = LocalBackend(logs_dir)
                try:
                    logs = [backend.log(n) for n in ("features", "actions", "dead-letters")]
                    st = import_to_logs(
                        plan,
                        *logs,
                        state=logs_dir / "_import" / "bench.json",
                        flush_every=200_000,
                        threads=threads,
                    )
                    events[0] = st.written
                finally:
                    backend.close()
                t3 = time.perf_counter()
                if not stages or t3 - t0 < sum(stages.values()):
                    stages.update(read_s=t1 - t0, encode_s=t2 - t1, write_s=t3 - t2)

            cpu = [0.0]
            imp_s = _best(one, repeat, cpu)
            log_bytes = sum(f.stat().st_size for f in (work / f"logs-{fmt}").rglob("*.seg"))
            floor_s = _write_floor(work, log_bytes, repeat)
            out[fmt] = {
                "file_mb": round(path.stat().st_size / 2**20, 1),
                "pyarrow_read_rows_per_s": round(rows / base_s),
                "pyarrow_read_1_thread_rows_per_s": round(rows / base1_s),
                "import_rows_per_s": round(rows / imp_s),
                "events_per_s": round(events[0] / imp_s),
                "import_rows_per_cpu_s": round(rows / max(cpu[0], 1e-9)),
                "log_mb": round(log_bytes / 2**20, 1),
                "disk_write_floor_s": round(floor_s, 3),
                "ratio_to_disk_write": round(floor_s / imp_s, 4),
                "ratio_to_pyarrow_read": round(base_s / imp_s, 4),
                "ratio_to_pyarrow_read_1_thread": round(base1_s / imp_s, 4),
                "stages_s": {k: round(v, 3) for k, v in stages.items()},
            }
        out["load_avg_after"] = list(os.getloadavg())
        return out
    finally:
        if not folder:
            shutil.rmtree(work, ignore_errors=True)


def main(args: argparse.Namespace) -> int:
    if args.rows < 1 or args.repeat < 1 or args.threads < 1:
        print(
            f"freshrec bench import: --rows, --repeat and --threads must be >= 1 "
            f"(got {args.rows}, {args.repeat}, {args.threads})",
            file=sys.stderr,
        )
        return 2
    rows, repeat = (20_000, 1) if args.quick else (args.rows, args.repeat)
    out = run(rows, repeat=repeat, folder=args.dir, seed=args.seed, threads=args.threads)
    for fmt in ("csv", "parquet"):
        r = out[fmt]
        print(
            f"{fmt:>8}: import {r['import_rows_per_s']:>10,} rows/s ({r['events_per_s']:,} events/s, "
            f"{r['import_rows_per_cpu_s']:,} rows per CPU-s) | "
            f"pyarrow read {r['pyarrow_read_rows_per_s']:>12,} rows/s | "
            f"ratio {r['ratio_to_pyarrow_read']:.3f} (1 thread: {r['ratio_to_pyarrow_read_1_thread']:.3f}) | "
            f"writing its {r['log_mb']} MiB alone: {r['disk_write_floor_s']} s, "
            f"ratio {r['ratio_to_disk_write']:.3f} | "
            f"stages {r['stages_s']}",
            file=sys.stderr if args.json else sys.stdout,
        )
    if args.json:
        print(json.dumps(out))
    return 0

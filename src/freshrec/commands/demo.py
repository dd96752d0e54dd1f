"""`freshrec demo`: watch a recommender learn in real time (the whole loop, one process, no servers).

It prints the URL of its live page at start (`--no-ui`: none): a feed to click in as a user,
and the run's charts (`freshrec.demo.page`)."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

HELP = "run the whole loop on a simulated platform and watch it learn in real time"
EXAMPLE = "freshrec demo --minutes 2   (or: freshrec demo --data globo)"
TORCH_THREADS = 1


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--minutes", type=float, default=3.0, help="wall-clock length of the live part")
    parser.add_argument(
        "--speedup",
        type=float,
        default=None,
        help="data seconds per wall second (default 240 simulated, 30 with --data globo)",
    )
    parser.add_argument(
        "--data",
        choices=("synthetic", "globo"),
        default="synthetic",
        help="simulated platform (default) or the real Globo news stream, replayed",
    )
    parser.add_argument(
        "--globo-path",
        type=Path,
        default=None,
        help="Globo clicks.csv.gz (default ../shared/data/globo/clicks.csv.gz)",
    )
    parser.add_argument("--rps", type=float, default=40.0, help="ranking requests per wall second")
    parser.add_argument("--sync-interval", type=float, default=1.0, help="seconds between embedding syncs")
    parser.add_argument(
        "--out", type=Path, default=Path("runs/demo"), help="folder for state, logs and plots"
    )
    parser.add_argument(
        "--no-ui", action="store_true", help="do not serve the live page (its URL is printed at start)"
    )
    parser.add_argument(
        "--port", type=int, default=0, help="port of the model server and page (0: any free one)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print the summary as one JSON object last")


def main(args: argparse.Namespace) -> int:
    from freshrec.demo.loop import DemoConfig, run_demo
    from freshrec.demo.report import plot, render, summary

    speedup = args.speedup if args.speedup is not None else (30.0 if args.data == "globo" else 240.0)
    cfg = DemoConfig(
        minutes=args.minutes,
        speedup=speedup,
        requests_per_s=args.rps,
        sync_interval_s=args.sync_interval,
        out_dir=args.out,
        seed=args.seed,
        data=args.data,
        globo_path=args.globo_path,
        ui=not args.no_ui,
        port=args.port,
    )
    trace, stats = run_demo(cfg)
    s = summary(trace)
    s.update(stats)
    print("\nfreshrec demo — summary")
    print(render(s))
    for p in plot(trace, args.out):
        print(f"  plot: {p}")
    if args.json:
        print(json.dumps({k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in s.items()}))
    return 0

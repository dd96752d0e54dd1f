"""`freshrec replay globo`: write the Globo clicks into the features/actions logs as a live stream."""

from __future__ import annotations

import argparse
import json
import sys
import time

from freshrec.errors import FreshrecError

HELP = "replay the Globo clicks as served impressions + clicks into the features/actions logs"
EXAMPLE = "freshrec replay globo --log ./logs --limit 100000 --speedup 0"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--log", required=True, help="log backend: a folder (local log) or kafka://host:port")
    parser.add_argument("--data", default=None, help="clicks.csv.gz (default: the shared globo dataset)")
    parser.add_argument("--features", default="features", help="features log name")
    parser.add_argument("--actions", default="actions", help="actions log name")
    parser.add_argument("--partitions", type=int, default=1, help="partitions of logs this run creates")
    parser.add_argument("--limit", type=int, default=None, help="replay the first N clicks (time order)")
    parser.add_argument("--k", type=int, default=4, help="non-clicked articles served per click")
    parser.add_argument("--delay", type=float, default=1.0, help="seconds from impression to click")
    parser.add_argument("--speedup", type=float, default=0.0, help="data time / wall time (0: no pacing)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the negative draws")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def main(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from freshrec.data.paths import dataset_path
    from freshrec.stream.backends import open_backend
    from freshrec.stream.replay import globo_events, load_globo_clicks, replay_to_logs

    path = args.data or dataset_path("globo") / "clicks.csv.gz"
    try:
        clicks = load_globo_clicks(path, limit=args.limit)
        backend = open_backend(args.log)
        features = backend.log(args.features, partitions=args.partitions)
        actions = backend.log(args.actions, partitions=args.partitions)
    except FreshrecError as e:
        print(f"freshrec replay globo: {e}", file=sys.stderr)
        return 2
    total = len(clicks) * (args.k + 2)  # an upper bound: k + 1 impressions and 1 click per click
    bar = tqdm(total=total, unit="ev", disable=args.no_progress, file=sys.stderr)
    try:
        stats = replay_to_logs(
            globo_events(clicks, k=args.k, seed=args.seed, click_delay_s=args.delay),
            features,
            actions,
            speedup=args.speedup,
            clock=time.monotonic,
            sleep=time.sleep,
            flush_every=20_000,
            progress=bar.update,
        )
    finally:
        bar.close()
        backend.close()
    print(json.dumps({"clicks": len(clicks), "features": stats.features, "actions": stats.actions,
                      "first_ts": stats.first_ts, "last_ts": stats.last_ts}))
    return 0

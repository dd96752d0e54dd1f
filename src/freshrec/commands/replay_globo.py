"""`freshrec replay globo`: write the Globo clicks into the features/actions logs as a live stream.

It is `freshrec import` with the shipped schema `examples/globo.toml` (shape c, positives only:
each click serves `--k` more articles drawn from the trailing hour's clicks), so it is resumable and
never writes an event twice; `--k`, `--delay` and `--seed` set the schema's `negatives`, `delay_s`
and `seed`. The library generator `freshrec.stream.replay.globo_events` stays for in-process use.
"""

from __future__ import annotations

import argparse
import json
import sys

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
    parser.add_argument("--state", default=None, help="resume state file (default: LOG/_import/globo.json)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def main(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from freshrec.commands.import_events import run_import
    from freshrec.data.paths import dataset_path
    from freshrec.data.schema import shipped_schema

    path = args.data or dataset_path("globo") / "clicks.csv.gz"
    try:
        schema = shipped_schema("globo", path)
        imp = replace(schema.impressions, negatives=args.k, delay_s=args.delay, seed=args.seed)
        schema = replace(schema, impressions=imp)
    except FreshrecError as e:
        print(f"freshrec replay globo: {e}", file=sys.stderr)
        return 2
    code, summary = run_import(schema, args, command="freshrec replay globo")
    if summary is None:
        return code
    print(
        json.dumps(
            {
                "clicks": summary["clicks"],
                "features": summary["features_written"],
                "actions": summary["actions_written"],
                "already_written": summary["already_written"],
                "first_ts": summary["first_ts"],
                "last_ts": summary["last_ts"],
            }
        )
    )
    return code

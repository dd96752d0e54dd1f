"""`freshrec snapshot show|upgrade`: what a snapshot holds, and converting freshrec 0.1 snapshots.

freshrec snapshot show runs/train-globo          model, features, tasks, step, rows, positions
freshrec snapshot upgrade OLD NEW                a 0.1 batch checkpoint ("model") or training-PS
                                                 snapshot ("training-ps") -> the current layout
"""

from __future__ import annotations

import argparse
import json
import sys

HELP = "show a training snapshot, or upgrade a freshrec 0.1 snapshot to the current layout"
EXAMPLE = "freshrec snapshot upgrade runs/old-checkpoint runs/train-globo"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=("show", "upgrade"))
    parser.add_argument("path", help="the snapshot (folder, store or online snapshots folder)")
    parser.add_argument("new", nargs="?", default=None, help="upgrade: where to write the converted snapshot")


def main(args: argparse.Namespace) -> int:
    from freshrec.errors import FreshrecError

    try:
        if args.action == "upgrade":
            from freshrec.ps.upgrade import upgrade_snapshot

            if not args.new:
                print("freshrec snapshot upgrade: give OLD and NEW", file=sys.stderr)
                return 2
            kind, path = upgrade_snapshot(args.path, args.new)
            print(f"freshrec snapshot: {args.path} (kind {kind!r}) -> {path}")
            return 0
        from freshrec.ps.training import TrainingPS

        ps, positions = TrainingPS.load(args.path)
        d = ps.describe()
        print(
            json.dumps(
                {
                    "model": d["model"],
                    "tasks": d["tasks"],
                    "slots": [s["name"] for s in d["features"]["slots"]],
                    "step": ps.step,
                    "examples": ps.examples,
                    "data_time": ps.data_time,
                    "rows": ps.table_sizes(),
                    "positions": positions,
                }
            )
        )
        return 0
    except FreshrecError as e:
        print(f"freshrec snapshot: {e}", file=sys.stderr)
        return 2

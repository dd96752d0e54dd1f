"""`freshrec train online`: the online trainer as its own process, with periodic snapshots and recovery.

Reads an examples log (`--log` backend URL, `--topic` log name) in mini-batches, starting from any
snapshot a command wrote (`--init`: the hand-off from `freshrec train`, or another online run's
snapshots; the model is rebuilt from it) or from scratch (`--slots`, `--multi-slots`, `--model`,
`--model-kwargs`, `--tasks`: any model of `freshrec.model.contract`). With
`--snapshots DIR` it snapshots every `--snapshot-every` batches (every `--full-every`-th one full,
the others incremental) and, when DIR already holds snapshots, first recovers from them and seeks
the log to the positions they store: kill it at any moment and start it again with the same
arguments, and it ends with the same parameters as a run never interrupted (tests/test_recovery.py).
Without snapshots it starts at offset 0 of every partition (`--start committed` uses the group's
committed positions instead; positions are committed for monitoring either way).

SIGTERM or Ctrl-C stops it cleanly: the batch in hand is finished, the touched rows and the dense
weights are published once more and a final full snapshot is written (exit code 0).

With `--params URL` it also publishes the touched rows to the parameter log (`--params-log`) after
every batch (`freshrec.ps.sync.SyncPublisher`, from a hook placed before the snapshotter, so every
snapshot stores the parameter log's offsets and version that match its tables; the dense weights go
every `--dense-every` batches and once more, forced, at the end). With `--whole-batches` it trains
batches of exactly `--batch-size` records (waiting for the log to fill them while the joiner still
writes): fixed batch boundaries on a one-partition log, so a run killed and restarted any number of
times ends with the same parameters as one never interrupted (tests/test_chaos.py kills this loop).
`--stop-at N` exits once the first N records of the examples log are trained.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from pathlib import Path

from freshrec.commands.options import at_least

HELP = "online training from the examples log, with periodic full/incremental snapshots and recovery"
EXAMPLE = (
    "freshrec train online --log local:///tmp/freshrec-logs --init runs/train-globo "
    "--snapshots runs/online-snapshots --snapshot-every 100"
)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--log", required=True, help="log backend URL (local:///path, kafka://host:port)")
    parser.add_argument("--topic", default="examples", help="examples log name")
    parser.add_argument("--group", default="online-trainer", help="consumer group (for monitoring)")
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--init", help="a snapshot written by `freshrec train` (or by a previous online run)")
    src.add_argument("--slots", help="from scratch: comma-separated single-valued slots")
    parser.add_argument("--multi-slots", default="", help="from scratch: comma-separated multi-valued slots")
    parser.add_argument(
        "--model", default="deepfm", help="from scratch: deepfm, dcn, din or package.module:Class"
    )
    parser.add_argument("--model-kwargs", default="", help="from scratch: the model's kwargs, a JSON object")
    parser.add_argument(
        "--tasks", default=None, help="from scratch: tasks, e.g. click,watch:value (default: --label)"
    )
    parser.add_argument("--dense", default="", help="dense feature names, comma separated (in column order)")
    parser.add_argument(
        "--label", default=None, help="the action the first task learns (default: the task's own, click)"
    )
    parser.add_argument("--dim", type=int, default=16, help="embedding width (from scratch)")
    parser.add_argument("--hidden", default="256,128", help="DNN widths (from scratch)")
    parser.add_argument("--sparse-lr", type=float, default=0.05, help="Adagrad rate of the tables (scratch)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--dense-lr", type=float, default=1e-3)
    parser.add_argument("--evict-every", type=int, default=0, help="expire rows every N batches (0: never)")
    parser.add_argument("--snapshots", default=None, help="snapshot folder (recovers from it when not empty)")
    parser.add_argument("--snapshot-every", type=int, default=100, help="batches between snapshots")
    parser.add_argument("--full-every", type=int, default=10, help="every Nth snapshot is full")
    parser.add_argument("--keep", type=int, default=3, help="full snapshots kept")
    parser.add_argument(
        "--retain-mb", type=float, default=None,
        help="local log retention of the examples and parameter logs, MiB each (never past the "
        "oldest kept snapshot's replay floor)",
    )
    parser.add_argument("--retain-hours", type=float, default=None, help="local log retention by age, hours")
    parser.add_argument(
        "--no-fallback", action="store_true", help="refuse to recover past a corrupt snapshot"
    )
    parser.add_argument("--start", choices=("earliest", "committed"), default="earliest")
    parser.add_argument(
        "--follow", action="store_true", help="keep waiting for records (default: stop when idle)"
    )
    parser.add_argument("--max-batches", type=int, default=None)
    parser.add_argument("--progress-every", type=int, default=100, help="print progress every N batches")
    parser.add_argument("--deterministic", action="store_true", help="1 torch thread, deterministic kernels")
    parser.add_argument("--json", action="store_true", help="print one JSON object with the metrics last")
    parser.add_argument("--params", default=None, help="publish deltas to this parameter-log backend (URL)")
    parser.add_argument("--params-log", default="params", help="parameter log name")
    parser.add_argument("--dense-every", type=int, default=10, help="publish dense weights every N batches")
    parser.add_argument(
        "--prefetch",
        type=at_least(0),
        default=2 if (os.cpu_count() or 1) >= 2 else 0,
        help="batches polled, decoded and assembled ahead in a background thread while one trains "
        "(trains exactly the same; default 2 with two cores or more; 0: one thread)",
    )
    parser.add_argument(
        "--whole-batches",
        action="store_true",
        help="train batches of exactly --batch-size records (fixed boundaries: replays repeat them)",
    )
    parser.add_argument(
        "--stop-at",
        type=at_least(0),
        default=None,
        help="exit once the first N examples-log records are trained",
    )


def main(args: argparse.Namespace) -> int:
    from freshrec.checkpoint.periodic import SnapshotPolicy
    from freshrec.model import FeatureSpec, ModelSpec, SlotSpec, parse_tasks
    from freshrec.pipeline import Pipeline, PipelineConfig
    from freshrec.table import Adagrad
    from freshrec.train.online import OnlineConfig

    dense = [d for d in args.dense.split(",") if d.strip()]
    try:
        if args.init:  # the schema of the snapshot: checked against the config's, dense names from it
            from freshrec.train.schema_train import check_init_schema

            dense = dense or list(check_init_schema(args.config, args.init))
        config = OnlineConfig(
            batch_size=args.batch_size,
            dense_lr=args.dense_lr,
            evict_every=args.evict_every,
            poll_timeout_s=1.0 if args.follow else 0.2,
            whole_batches=args.whole_batches,
            prefetch=args.prefetch,
            stop_at=args.stop_at,
        )
        spec = mspec = tasks = None
        if not args.init:
            slots = tuple(SlotSpec(name=s.strip()) for s in args.slots.split(",") if s.strip())
            slots += tuple(
                SlotSpec(name=s.strip(), multi_valued=True) for s in args.multi_slots.split(",") if s.strip()
            )
            spec = FeatureSpec(
                slots=slots,
                dense_dim=len(dense),
                dim=args.dim,
                optimizer=Adagrad(lr=args.sparse_lr),
                seed=args.seed,
            )
            hidden = tuple(int(h) for h in args.hidden.split(",") if h.strip())
            mspec = ModelSpec.parse(args.model, args.model_kwargs)
            if mspec.path == "freshrec.model:DeepFM" and not mspec.kwargs:
                mspec = ModelSpec(mspec.path, {"hidden": list(hidden), "seed": args.seed})
            tasks = parse_tasks(args.tasks or args.label or "click")
        pipe = Pipeline(
            PipelineConfig(
                log=args.log,
                params_url=args.params,
                examples=args.topic,
                params=args.params_log,
                online=config,
                init=Path(args.init) if args.init else None,
                model=mspec,
                features_spec=spec,
                tasks=tasks,
                dense_names=tuple(dense) or None,
                snapshots=Path(args.snapshots) if args.snapshots else None,
                policy=SnapshotPolicy(
                    every_batches=args.snapshot_every, full_every=args.full_every, keep=args.keep
                ),
            )
        )
        trainer = pipe.trainer(fallback=not args.no_fallback)
        publisher = (
            pipe.publisher(trainer, every_batch=True, dense_every=args.dense_every) if args.params else None
        )
        if publisher is None:
            pipe.snapshots_hook(trainer)
        if args.retain_mb is not None or args.retain_hours is not None:
            pipe.retain(
                max_bytes=None if args.retain_mb is None else int(args.retain_mb * (1 << 20)),
                max_age_s=None if args.retain_hours is None else args.retain_hours * 3600.0,
            )
        snap, recovered = pipe.snapshotter, pipe.recovered
        log, consumer = pipe.examples_consumer(trainer, group=args.group, start=args.start)
        if recovered is not None:
            print(
                f"recovered step {recovered.step} from full {recovered.full_step} + "
                f"{len(recovered.incrementals)} incremental(s); positions {recovered.positions}",
                flush=True,
            )
            for path, reason in recovered.skipped:
                print(f"skipped {path}: {reason}", file=sys.stderr, flush=True)

        def progress(tr, info) -> None:
            if args.progress_every and info.step % args.progress_every == 0:
                print(tr.metrics().line(), flush=True)

        trainer.add_hook(progress)
        stop = threading.Event()  # SIGTERM / SIGINT: finish the batch, publish, snapshot, exit 0
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
        metrics = trainer.run(
            consumer, max_batches=args.max_batches, until_idle=not args.follow, log=log, stop=stop.is_set
        )
        if publisher is not None:
            publisher.publish_once(dense=True)
        last_step = snap.history[-1].step if snap is not None and snap.history else None
        if last_step is None and recovered is not None:
            last_step = recovered.step  # restarted after the last snapshot: nothing new to save
        if snap is not None and last_step != trainer.step and trainer.step:
            last = snap.snapshot(trainer, full=True)
            print(f"final snapshot: {last.path} ({last.nbytes} bytes)", flush=True)
        consumer.close()
        pipe.close()
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    print(metrics.line(), flush=True)
    if args.json:
        print(
            json.dumps(
                {
                    "batches": metrics.batches,
                    "examples": metrics.examples,
                    "examples_per_s": metrics.examples_per_s,
                    "auc": metrics.auc,
                    "log_loss": metrics.log_loss,
                    "tasks": metrics.tasks,
                    "table_rows": metrics.table_rows,
                    "positions": {str(p): o for p, o in trainer.positions.items()},
                    "step": trainer.step,
                    "params_version": publisher.version if publisher is not None else None,
                }
            )
        )
    return 0

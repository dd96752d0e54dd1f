"""`freshrec train`: batch-train any model on a dataset's past, evaluate on its future, write a snapshot.

The model is an import path or a short name (`--model deepfm|dcn|din|mypkg.towers:MyModel`) with
`--model-kwargs` (a JSON object), or `[model] path = "..."` and `[model.kwargs]` in the config file;
`--tasks click,rating:value` trains one head per task. The snapshot written at `--out` is the one
layout every command reads: `freshrec train online --init OUT`, `freshrec serve --snapshot OUT`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HELP = (
    "batch-train a model (DeepFM, DCN, DIN or your own) on a dataset's past, evaluate on its future, snapshot"
)
EXAMPLE = "freshrec train --dataset movielens --epochs 5 --out runs/train-movielens"
TORCH_THREADS = 1  # `--threads` wins


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dataset",
        choices=("movielens", "globo", "criteo"),
        default=None,
        help="a built-in loader; without it, the files of the config's [schema] table (--config FILE)",
    )
    parser.add_argument(
        "--data", default=None, help="dataset folder or file (default: the shared data folder)"
    )
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--out", default=None, help="checkpoint folder (default: runs/train-<dataset>)")
    parser.add_argument("--embedding", choices=("collisionless", "hashed"), default="collisionless")
    parser.add_argument(
        "--model", default="deepfm", help="model: deepfm, dcn, din, or an import path package.module:Class"
    )
    parser.add_argument("--model-kwargs", default="", help="keyword arguments of the model, a JSON object")
    parser.add_argument(
        "--tasks",
        default="click",
        help="tasks: name[=label][:kind[:weight]], comma separated, e.g. click,rating:value",
    )
    parser.add_argument(
        "--buckets", type=int, default=1 << 20, help="rows per slot of the hashed tables (--embedding hashed)"
    )
    parser.add_argument("--dim", type=int, default=16, help="embedding width")
    parser.add_argument("--hidden", default="256,128", help="DNN layer widths, comma separated")
    parser.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate of the dense part")
    parser.add_argument("--sparse-lr", type=float, default=0.05, help="Adagrad learning rate of embeddings")
    parser.add_argument(
        "--test-fraction", type=float, default=0.2, help="the last fraction of time is the test"
    )
    parser.add_argument("--limit", type=int, default=None, help="use only the first N rows")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads", type=int, default=1, help="torch intra-op threads (small models: 1 is fastest)"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--json", action="store_true", help="print one JSON object with the metrics last")


def main(args: argparse.Namespace) -> int:
    from freshrec.errors import FreshrecError
    from freshrec.model import ModelSpec, parse_tasks
    from freshrec.train.batch import (
        TrainConfig,
        config_dict,
        load_train_test,
        save_checkpoint,
        train_model,
    )

    schema = None
    try:
        if args.dataset is None:
            from freshrec.train.schema_train import load_train_test_schema

            train, test, schema = load_train_test_schema(
                args.config, args.data, test_fraction=args.test_fraction, limit=args.limit
            )
        else:
            train, test = load_train_test(
                args.dataset, args.data, test_fraction=args.test_fraction, limit=args.limit
            )
    except (FileNotFoundError, ValueError, ModuleNotFoundError, FreshrecError) as e:
        what = args.dataset or args.config
        print(f"freshrec train: {f'cannot load {what}: ' if what else ''}{e}", file=sys.stderr)
        return 2
    dataset_name = args.dataset or (schema.name if schema is not None else "schema")
    hidden = tuple(int(h) for h in args.hidden.split(",") if h.strip())
    buckets = None
    if args.embedding == "hashed":
        buckets = {s: args.buckets for s in (*train.sparse, *getattr(train, "multi", {}))}
    try:
        mspec = ModelSpec.parse(args.model, args.model_kwargs)
        config = TrainConfig(
            epochs=args.epochs,
            batch_size=args.batch_size,
            dim=args.dim,
            hidden=hidden,
            dense_lr=args.lr,
            sparse_lr=args.sparse_lr,
            embedding=args.embedding,
            model=mspec.path,
            model_kwargs=mspec.kwargs,
            tasks=parse_tasks(args.tasks),
            buckets=buckets,
            seed=args.seed,
            progress=not args.no_progress and not args.json,
        )
        for t in config.tasks:
            train.target(t.target, binary=t.kind == "binary")
    except FreshrecError as e:
        print(f"freshrec train: {e}", file=sys.stderr)
        return 2
    print(f"train: {train!r}\ntest:  {test!r}\nmodel: {args.model}, embedding: {args.embedding}", flush=True)
    print(f"{'epoch':>5} {'train loss':>10} {'test AUC':>9} {'test logloss':>12} {'ex/s':>9}", flush=True)

    def show(m) -> None:
        more = ""
        if len(m.tasks) > 1:
            more = "  " + " ".join(
                f"{k}:" + ",".join(f"{n}={v:.4f}" for n, v in d.items()) for k, d in m.tasks.items()
            )
        print(
            f"{m.epoch:>5} {m.train_loss:>10.4f} {m.auc:>9.4f} {m.log_loss:>12.4f} "
            f"{m.examples_per_s:>9.0f}{more}",
            flush=True,
        )

    try:
        result = train_model(train, test, config, on_epoch=show)
    except FreshrecError as e:
        print(f"freshrec train: {e}", file=sys.stderr)
        return 2
    out = Path(args.out or f"runs/train-{dataset_name}")
    meta = {
        "dataset": dataset_name,
        "train_examples": len(train),
        "test_examples": len(test),
        "config": config_dict(config),
        "epochs": [
            {
                "epoch": m.epoch,
                "train_loss": m.train_loss,
                "auc": m.auc,
                "log_loss": m.log_loss,
                "tasks": {k: dict(v) for k, v in m.tasks.items()},
            }
            for m in result.epochs
        ],
    }
    if schema is not None:
        meta["schema"] = schema.to_dict()  # read back by freshrec.ps.schema_check.snapshot_schema
    assert result.ps is not None
    save_checkpoint(result.ps, out, meta)
    print(f"snapshot: {out}")
    if args.json:
        f = result.final
        print(
            json.dumps(
                {
                    "dataset": dataset_name,
                    "embedding": args.embedding,
                    "auc": f.auc,
                    "log_loss": f.log_loss,
                    "tasks": {k: dict(v) for k, v in f.tasks.items()},
                    "model": result.ps.model_spec.to_dict(),
                    "epochs": meta["epochs"],
                    "checkpoint": str(out),
                    "snapshot": str(out),
                }
            )
        )
    return 0

"""Experiment: several models and tasks, online vs the frozen batch model, side by side in one run.

On MovieLens (ratings in time order, the user's recent positively rated items as the multi-valued
slot `history`, `freshrec.data.movielens.user_history`), for each model of the list:

1. batch-train it on the first `train_frac` of the ratings (`freshrec.train.batch.train_model`,
   the shipped step) and write its snapshot (the one layout);
2. a frozen copy (the snapshot, never updated) and an `OnlineTrainer` started from the same snapshot
   walk the rest in time order, batch by batch: both predict the batch first, then the trainer
   trains on it (progressive validation: every prediction is on data the model has not seen);
3. report, per task, the online and frozen metric over the whole stream: AUC for the binary task
   ("click" = rating >= 3.5), RMSE for the value task ("rating").

Models (default): DeepFM with the click task, DeepFM with click + rating, DIN (attention over the
history bag) with click + rating. The outcome is a measurement, reported as it comes.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["ModelsConfig", "batch_outputs", "run_models_experiment", "stream_metrics"]

HELP = "models and tasks (DeepFM, DeepFM click+rating, DIN over a history bag): online vs frozen, one run"
EXAMPLE = "freshrec experiment models --json"
TORCH_THREADS = 1

DEFAULT_RUNS: tuple[tuple[str, str, dict], ...] = (
    ("deepfm click", "click", {"path": "deepfm", "kwargs": {"hidden": [64, 32]}}),
    ("deepfm click+rating", "click,rating:value:0.1", {"path": "deepfm", "kwargs": {"hidden": [64, 32]}}),
    (
        "din click+rating",
        "click,rating:value:0.1",
        {"path": "din", "kwargs": {"history": "history", "query": "item_id", "hidden": [64, 32]}},
    ),
)


@dataclass(frozen=True, kw_only=True)
class ModelsConfig:
    """limit: ratings used (None: all); history: items in the history bag; train_frac: share of the
    ratings (time order) for batch training; batch_size: online batch; runs: (label, tasks, model)."""

    limit: int | None = None
    history: int = 10
    train_frac: float = 0.6
    epochs: int = 2
    dim: int = 16
    batch_size: int = 512
    seed: int = 0
    runs: tuple[tuple[str, str, dict], ...] = field(default=DEFAULT_RUNS)


QUICK = ModelsConfig(limit=12_000, epochs=1, dim=8, batch_size=256)


def batch_outputs(model, batch, n_tasks: int) -> np.ndarray:
    """(B, T) float64: the model's served outputs on `batch` (eval mode, no gradient)."""
    import torch

    from freshrec.model.contract import outputs_2d

    model.eval()
    with torch.no_grad():
        return outputs_2d(model(batch.sparse, batch.dense), n_tasks).numpy().astype(np.float64)


def stream_metrics(tasks, out: np.ndarray, y: np.ndarray) -> dict[str, dict[str, float]]:
    """Per task over a whole stream: {"auc"} for a binary task, {"rmse"} for a value task."""
    from freshrec.train.metrics import auc

    res = {}
    for t, task in enumerate(tasks):
        if task.kind == "binary":
            res[task.name] = {"auc": auc(y[:, t], out[:, t])}
        else:
            res[task.name] = {"rmse": float(np.sqrt(np.mean((out[:, t] - y[:, t]) ** 2)))}
    return res


def run_models_experiment(
    config: ModelsConfig, *, path: str | Path | None = None, log=print
) -> dict[str, Any]:
    """Run every model of `config.runs` (module docstring); returns {"runs": [...], "seconds"}."""
    from freshrec.data.movielens import load_movielens
    from freshrec.data.paths import dataset_path
    from freshrec.model import parse_tasks
    from freshrec.train.batch import TrainConfig, iter_batches, load_checkpoint, save_checkpoint, train_model
    from freshrec.train.online import OnlineConfig, OnlineTrainer

    t_start = time.perf_counter()
    ds = load_movielens(
        Path(path) if path else dataset_path("movielens-100k"),
        side_info=True,
        limit=config.limit,
        history=config.history,
    )
    cut = int(len(ds) * config.train_frac)
    past, stream = ds.take(slice(0, cut)), ds.take(slice(cut, len(ds)))
    log(f"[models] {ds!r}: batch on {len(past):,} ratings, online on the next {len(stream):,}")
    out: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="freshrec-models-") as tmp:
        for label, tasks_text, model in config.runs:
            t0 = time.perf_counter()
            tasks = parse_tasks(tasks_text)
            tc = TrainConfig(
                epochs=config.epochs,
                batch_size=1024,
                dim=config.dim,
                model=model["path"],
                model_kwargs=dict(model.get("kwargs", {}), seed=config.seed),
                tasks=tasks,
                seed=config.seed,
                shuffle=True,
            )
            res = train_model(past, None, tc)
            assert res.ps is not None
            snap = save_checkpoint(res.ps, Path(tmp) / label.replace(" ", "-"))
            frozen, _ = load_checkpoint(snap)
            trainer = OnlineTrainer.from_checkpoint(snap, OnlineConfig(batch_size=config.batch_size))
            on, fr, ys = [], [], []
            for b in iter_batches(stream, config.batch_size, tasks=tasks):
                fr.append(batch_outputs(frozen, b, len(tasks)))
                on.append(batch_outputs(trainer.model, b, len(tasks)))  # before the model sees the batch
                ys.append(b.targets.numpy().astype(np.float64))
                trainer.train_step(b)
            y = np.concatenate(ys)
            row = {
                "model": label,
                "path": res.ps.model_spec.path,
                "tasks": [t.name for t in tasks],
                "online": stream_metrics(tasks, np.concatenate(on), y),
                "frozen": stream_metrics(tasks, np.concatenate(fr), y),
                "seconds": time.perf_counter() - t0,
            }
            out.append(row)
            log(f"[models] {label}: online {row['online']} frozen {row['frozen']} ({row['seconds']:.0f} s)")
    return {
        "dataset": repr(ds),
        "batch_rows": len(past),
        "stream_rows": len(stream),
        "runs": out,
        "seconds": time.perf_counter() - t_start,
    }


def table(result: dict[str, Any]) -> str:
    lines = [f"{'model':<22} {'task':<8} {'metric':<6} {'online':>8} {'frozen':>8} {'online - frozen':>16}"]
    for r in result["runs"]:
        for task in r["tasks"]:
            for m, v in r["online"][task].items():
                f = r["frozen"][task][m]
                lines.append(f"{r['model']:<22} {task:<8} {m:<6} {v:>8.4f} {f:>8.4f} {v - f:>+16.4f}")
    return "\n".join(lines)


def plot(result: dict[str, Any], path: Path) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    rows = [
        (r["model"], t, m, r["online"][t][m], r["frozen"][t][m])
        for r in result["runs"]
        for t in r["tasks"]
        for m in r["online"][t]
    ]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, metric in zip(axes, ("auc", "rmse"), strict=True):
        sel = [r for r in rows if r[2] == metric]
        x = np.arange(len(sel))
        ax.bar(x - 0.2, [r[3] for r in sel], 0.4, label="online")
        ax.bar(x + 0.2, [r[4] for r in sel], 0.4, label="frozen batch")
        ax.set_xticks(x, [f"{r[0]}\n{r[1]}" for r in sel], fontsize=8)
        ax.set_title(f"{metric.upper()} on the stream ({'higher' if metric == 'auc' else 'lower'} is better)")
        if sel:
            lo = min(min(r[3], r[4]) for r in sel)
            hi = max(max(r[3], r[4]) for r in sel)
            ax.set_ylim(lo - 0.1 * (hi - lo + 1e-3), hi + 0.1 * (hi - lo + 1e-3))
        ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", default=None, help="MovieLens folder (default: the shared 100K)")
    parser.add_argument("--quick", action="store_true", help="12k ratings, 1 epoch (for CI)")
    parser.add_argument("--limit", type=int, default=None, help="ratings used (default: all)")
    parser.add_argument("--out", default="runs/models", help="folder for the plot and JSON")
    parser.add_argument("--json", action="store_true", help="print one JSON object last")


def main(args: argparse.Namespace) -> int:
    from freshrec.errors import FreshrecError

    config = QUICK if args.quick else ModelsConfig()
    if args.limit is not None:
        from dataclasses import replace

        config = replace(config, limit=args.limit)
    say = lambda s: print(s, file=sys.stderr if args.json else sys.stdout, flush=True)  # noqa: E731
    try:
        result = run_models_experiment(config, path=args.data, log=say)
    except (FileNotFoundError, FreshrecError) as e:
        print(f"freshrec experiment models: {e}", file=sys.stderr)
        return 2
    out = Path(args.out)
    png = plot(result, out / "models.png")
    out.mkdir(parents=True, exist_ok=True)
    (out / "models.json").write_text(json.dumps(result, indent=1) + "\n")
    print(table(result))
    print(f"\nplot: {png}\nresults: {out / 'models.json'}  ({result['seconds']:.0f} s)")
    if args.json:
        print(json.dumps(result))
    return 0

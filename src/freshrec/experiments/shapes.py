"""Experiment: the whole loop driven by one config file per shape of data, online vs frozen.

For each of the three shapes a schema understands (`docs/schema.md`), with the config shipped in
`examples/`:

- (a) rows with labels: MovieLens-100K ratings (`examples/movielens.toml`, click = rating >= 3.5,
  rating as a value task);
- (b) behaviour events: an e-commerce log of page views with carts, favourites and buys
  (`examples/shop-behaviour.toml`), written here from `freshrec.data.synthetic`'s drifting
  platform (a view per impression; a cart for a click, a buy after some carts, a favourite after
  some clicks), since no public behaviour log is in the shared data;
- (c) positives only: Globo news clicks (`examples/globo.toml`, negatives drawn from the items
  clicked in the trailing hour);

the data is cut in time order: the first `train_frac` for batch training, the rest for the
stream. Then the commands run as processes, each reading what the one before wrote:

    freshrec train  --config C --data BATCH --out snap
    freshrec import --config C --files STREAM --log logs --snapshot snap
    freshrec join   --config C --log logs --store joiner --until-idle

and over the examples log the joiner wrote, in log order, batch by batch: the frozen batch model
(the snapshot, never updated) and an `OnlineTrainer` started from the same snapshot both predict
the batch, then the trainer trains on it (progressive validation). Reported per shape and task:
examples joined, positives, AUC online and frozen. The outcome is a measurement, reported as it
comes.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["ShapesConfig", "run_shapes_experiment"]

HELP = "the loop from one config per data shape (rows, behaviour, positives): online vs frozen, one run"
EXAMPLE = "freshrec experiment shapes --json"
TORCH_THREADS = 1

SHAPES = ("movielens", "shop-behaviour", "globo")


@dataclass(frozen=True, kw_only=True)
class ShapesConfig:
    """rows: rows per shape (MovieLens ratings, synthetic views, Globo clicks; None: all of
    MovieLens, 200k views, 200k clicks); train_frac: share (time order) for batch training;
    epochs/dim/hidden: the batch model; batch_size: online batch."""

    rows: int | None = None
    train_frac: float = 0.6
    epochs: int = 2
    dim: int = 16
    hidden: str = "64,32"
    batch_size: int = 512
    shapes: tuple[str, ...] = SHAPES
    seed: int = 0


QUICK = ShapesConfig(rows=6000, epochs=1, dim=8, hidden="16,8", batch_size=256)


# ---- the data, cut in time order ------------------------------------------------------------------
def _cut(table: Any, ts: str, rows: int | None, frac: float) -> tuple[Any, Any]:
    import pyarrow.compute as pc

    table = table.take(pc.sort_indices(table, [(ts, "ascending")]))
    if rows is not None:
        table = table.slice(0, rows)
    k = int(table.num_rows * frac)
    return table.slice(0, k), table.slice(k)


def _movielens(folder: Path, data: Path, rows: int | None, frac: float) -> tuple[Path, Path]:
    import pyarrow as pa
    import pyarrow.csv as pacsv

    names = ["user", "item", "rating", "ts"]
    opts = pacsv.ReadOptions(column_names=names)
    table = pacsv.read_csv(
        data / "u.data", read_options=opts, parse_options=pacsv.ParseOptions(delimiter="\t")
    )
    batch, stream = _cut(table, "ts", rows, frac)
    out = []
    for name, part in (("batch", batch), ("stream", stream)):
        path = folder / f"{name}.tsv"
        wopts = pacsv.WriteOptions(include_header=False, delimiter="\t")
        pacsv.write_csv(pa.Table.from_batches(part.to_batches()), path, write_options=wopts)
        out.append(path)
    return out[0], out[1]


def _globo(folder: Path, data: Path, rows: int | None, frac: float) -> tuple[Path, Path]:
    import pyarrow as pa
    import pyarrow.csv as pacsv

    table = pacsv.read_csv(data / "clicks.csv.gz")
    batch, stream = _cut(table, "click_timestamp", rows or 200_000, frac)
    out = []
    for name, part in (("batch", batch), ("stream", stream)):
        path = folder / f"{name}.csv"
        pacsv.write_csv(pa.Table.from_batches(part.to_batches()), path)
        out.append(path)
    return out[0], out[1]


def _shop(folder: Path, rows: int | None, frac: float, seed: int) -> tuple[Path, Path]:
    """A behaviour log (user,item,category,behavior,ts; no header) from the drifting platform."""
    from freshrec.data.synthetic import SyntheticConfig, SyntheticPlatform

    n = rows or 200_000
    world = SyntheticPlatform(
        SyntheticConfig(
            n_users=2_000, n_items_start=300, new_items_per_hour=15, duration_s=3 * 86400, seed=seed
        )
    )
    ds = world.log(n, seed=seed)
    rng = np.random.default_rng(seed)
    users, items = ds.sparse["user_id"], ds.sparse["item_id"]
    ts, clicked = ds.ts.astype(np.int64), ds.label > 0
    lines: list[tuple[int, str]] = []
    for u, i, t, c in zip(users.tolist(), items.tolist(), ts.tolist(), clicked.tolist(), strict=True):
        cat = f"cat-{i % 23}"
        lines.append((t, f"{u},{i},{cat},pv,{t}"))
        if c:
            tc = t + int(rng.integers(5, 600))
            lines.append((tc, f"{u},{i},{cat},cart,{tc}"))
            if rng.random() < 0.4:
                tb = tc + int(rng.integers(60, 2400))
                lines.append((tb, f"{u},{i},{cat},buy,{tb}"))
            if rng.random() < 0.3:
                lines.append((t + 30, f"{u},{i},{cat},fav,{t + 30}"))
    lines.sort(key=lambda x: x[0])
    cut_ts = int(np.quantile(ts, frac))
    batch, stream = folder / "batch.csv", folder / "stream.csv"
    batch.write_text("".join(s + "\n" for t, s in lines if t < cut_ts))
    stream.write_text("".join(s + "\n" for t, s in lines if t >= cut_ts))
    return batch, stream


def _prepare(shape: str, folder: Path, config: ShapesConfig) -> tuple[Path, Path, list[str]]:
    """(batch file, stream file, extra `join` flags) of one shape."""
    from freshrec.data.paths import dataset_path

    folder.mkdir(parents=True, exist_ok=True)
    if shape == "movielens":
        b, s = _movielens(folder, dataset_path("movielens-100k"), config.rows, config.train_frac)
        return b, s, []
    if shape == "globo":
        return (*_globo(folder, dataset_path("globo"), config.rows, config.train_frac), [])
    if shape == "shop-behaviour":
        b, s = _shop(folder, config.rows, config.train_frac, config.seed)
        return b, s, ["--windows", "cart=3600,fav=3600,buy=3600"]
    msg = f"unknown shape {shape!r}; shapes: {', '.join(SHAPES)}"
    raise ValueError(msg)


# ---- the commands ---------------------------------------------------------------------------------
def _run(*args: str) -> dict[str, Any]:
    """Run `freshrec ARGS` as a process; its last stdout line as JSON ({} when it is not JSON)."""
    from freshrec.errors import FreshrecError

    res = subprocess.run([sys.executable, "-m", "freshrec", *args], capture_output=True, text=True)
    if res.returncode != 0:
        tail = (res.stderr.strip().splitlines() or ["(no output)"])[-1]
        msg = f"`freshrec {' '.join(args[:2])}` failed ({res.returncode}): {tail}"
        raise FreshrecError(msg)
    lines = res.stdout.strip().splitlines()
    try:
        return json.loads(lines[-1]) if lines else {}
    except json.JSONDecodeError:
        return {}


def _progressive(snap: Path, logs: Path, batch_size: int) -> tuple[dict, dict, dict]:
    """(online, frozen, counts) over the examples log, batch by batch (module docstring)."""
    from freshrec.experiments.models import batch_outputs, stream_metrics
    from freshrec.stream.local_log import LocalBackend
    from freshrec.train.batch import iter_batches, load_checkpoint
    from freshrec.train.examples import decode_records, examples_to_dataset
    from freshrec.train.online import OnlineConfig, OnlineTrainer
    from freshrec.train.schema_train import check_init_schema

    dense = check_init_schema(None, snap)
    frozen, _ = load_checkpoint(snap)
    trainer = OnlineTrainer.from_checkpoint(snap, OnlineConfig(batch_size=batch_size), dense=dense)
    backend = LocalBackend(logs)
    try:
        consumer = backend.log("examples").consumer("experiment")
        records = []
        while not consumer.at_end():
            records += consumer.poll(10_000)
        consumer.close()
    finally:
        backend.close()
    examples, bad = decode_records(records)
    ds = examples_to_dataset(examples, trainer.schema)
    tasks = trainer.ps.tasks
    on, fr, ys = [], [], []
    for b in iter_batches(ds, batch_size, tasks=tasks):
        fr.append(batch_outputs(frozen, b, len(tasks)))
        on.append(batch_outputs(trainer.model, b, len(tasks)))  # before the model sees the batch
        ys.append(b.targets.numpy().astype(np.float64))
        trainer.train_step(b)
    y = np.concatenate(ys)
    online, still = stream_metrics(tasks, np.concatenate(on), y), stream_metrics(tasks, np.concatenate(fr), y)
    counts = {
        "examples": len(examples),
        "bad": len(bad),
        "positives": {
            task.name: int((y[:, t] > 0).sum()) for t, task in enumerate(tasks) if task.kind == "binary"
        },
    }
    return online, still, counts


def run_shapes_experiment(config: ShapesConfig, *, log=print) -> dict[str, Any]:
    """Every shape of `config.shapes` (module docstring); returns {"shapes": [...], "seconds"}."""
    from freshrec.data.schema import EXAMPLES_DIR

    t_start = time.perf_counter()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="freshrec-shapes-") as tmp:
        for shape in config.shapes:
            t0 = time.perf_counter()
            work = Path(tmp) / shape
            cfg = str(EXAMPLES_DIR / f"{shape}.toml")
            batch, stream, join_flags = _prepare(shape, work / "data", config)
            snap, logs = work / "snap", work / "logs"
            log(f"[shapes] {shape}: batch training on {batch.name}, streaming {stream.name}")
            trained = _run(
                "train", "--config", cfg, "--data", str(batch), "--out", str(snap),
                "--epochs", str(config.epochs), "--dim", str(config.dim), "--hidden", config.hidden,
                "--seed", str(config.seed), "--no-progress", "--json",
            )  # fmt: skip
            imported = _run(
                "import", "--config", cfg, "--files", str(stream), "--log", str(logs),
                "--snapshot", str(snap), "--no-progress", "--json",
            )  # fmt: skip
            _run(
                "join", "--config", cfg, "--log", str(logs), "--store", str(work / "joiner"),
                "--until-idle", "--stats-every", "0", *join_flags,
            )  # fmt: skip
            online, frozen, counts = _progressive(snap, logs, config.batch_size)
            row = {
                "shape": shape,
                "config": f"examples/{shape}.toml",
                "batch_auc": trained.get("auc"),
                "impressions": imported.get("impressions"),
                "actions_written": imported.get("actions_written"),
                "rows_refused": imported.get("rows_refused"),
                **counts,
                "online": online,
                "frozen": frozen,
                "seconds": time.perf_counter() - t0,
            }
            rows.append(row)
            log(f"[shapes] {shape}: {counts['examples']:,} examples; online {online} frozen {frozen}"
                f" ({row['seconds']:.0f} s)")  # fmt: skip
    return {"config": config.__dict__ | {"shapes": list(config.shapes)}, "shapes": rows,
            "seconds": time.perf_counter() - t_start}  # fmt: skip


def table(result: dict[str, Any]) -> str:
    head = f"{'shape':<15} {'examples':>9} {'task':<8} {'metric':<6} {'online':>8} {'frozen':>8} {'diff':>8}"
    lines = [head]
    for r in result["shapes"]:
        for task, ms in r["online"].items():
            for m, v in ms.items():
                f = r["frozen"][task][m]
                name, n = r["shape"], r["examples"]
                lines.append(f"{name:<15} {n:>9,} {task:<8} {m:<6} {v:>8.4f} {f:>8.4f} {v - f:>+8.4f}")
    return "\n".join(lines)


def plot(result: dict[str, Any], path: Path) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    bars = [(r["shape"], t, ms["auc"], r["frozen"][t]["auc"]) for r in result["shapes"]
            for t, ms in r["online"].items() if "auc" in ms]  # fmt: skip
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(bars) + 2), 4))
    x = np.arange(len(bars))
    ax.bar(x - 0.2, [b[2] for b in bars], 0.4, label="online (from the batch snapshot)")
    ax.bar(x + 0.2, [b[3] for b in bars], 0.4, label="frozen batch model")
    ax.set_xticks(x, [f"{b[0]}\n{b[1]}" for b in bars], fontsize=8)
    ax.axhline(0.5, color="grey", lw=0.8, ls=":")
    lo = min([min(b[2], b[3]) for b in bars] + [0.5])
    ax.set_ylim(max(0.0, lo - 0.05), 1.0)
    ax.set_ylabel("AUC on the stream (progressive validation)")
    ax.set_title("One config per data shape: import -> join -> online vs frozen")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="6k rows per shape, 1 epoch (for CI)")
    parser.add_argument("--rows", type=int, default=None, help="rows per shape (default: see the docs)")
    parser.add_argument("--shapes", default=",".join(SHAPES), help=f"comma separated, of {', '.join(SHAPES)}")
    parser.add_argument("--out", default="runs/shapes", help="folder for the plot and JSON")
    parser.add_argument("--json", action="store_true", help="print one JSON object last")


def main(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from freshrec.errors import FreshrecError

    config = QUICK if args.quick else ShapesConfig()
    shapes = tuple(s.strip() for s in args.shapes.split(",") if s.strip())
    unknown = sorted(set(shapes) - set(SHAPES))
    if unknown or not shapes:
        print(
            f"freshrec experiment shapes: unknown shapes {unknown}; shapes: {', '.join(SHAPES)}",
            file=sys.stderr,
        )
        return 2
    config = replace(config, shapes=shapes)
    if args.rows is not None:
        config = replace(config, rows=args.rows)
    say = lambda s: print(s, file=sys.stderr if args.json else sys.stdout, flush=True)  # noqa: E731
    try:
        result = run_shapes_experiment(config, log=say)
    except (OSError, FreshrecError) as e:
        print(f"freshrec experiment shapes: {e}", file=sys.stderr)
        return 2
    out = Path(args.out)
    png = plot(result, out / "shapes.png")
    out.mkdir(parents=True, exist_ok=True)
    (out / "shapes.json").write_text(json.dumps(result, indent=1) + "\n")
    print(table(result))
    print(f"\nplot: {png}\nresults: {out / 'shapes.json'}  ({result['seconds']:.0f} s)")
    if args.json:
        print(json.dumps(result))
    return 0

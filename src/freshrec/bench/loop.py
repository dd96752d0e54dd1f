"""`freshrec bench loop`: examples/s the online loop consumes from the examples log, against the step.

What `freshrec train online` does per batch is timed as it ships, against the pure training step
(`TrainingPS.train_step`) on the same batches, in one run:

1. writes `--batches` (+ `--warmup`) batches of Criteo-shaped examples (the data of `bench train`:
   26 Zipf slots, 13 dense) to an examples log, one record per example as the joiner writes them
   (the local log; also a Kafka broker with `--kafka`);
2. **pure step**: decodes the log into batches beforehand (untimed) and times `train_step` alone;
3. **loop, serial**: a `Pipeline`'s trainer and its sync publisher (publishing after every batch,
   dense weights every 10, as `train online --params` runs), `OnlineTrainer.run` draining the log:
   poll, decode (one numba pass over the poll's records straight to columns), batch assembly,
   step, publish, all in one thread (`OnlineConfig.prefetch = 0`);
4. **loop, prefetch**: the same with `--prefetch` batches prepared ahead in a background thread
   while the current one trains (`train online --prefetch N`);
5. **loop, per-example decode**: the serial loop on the reference decoding path, one Python
   `Example` per record (`OnlineConfig.columnar = False`), the baseline of the columnar path.

Every side starts from the same fresh model (same seed) and trains the same batches in the same
order, so all end with the same parameters: the benchmark checks it (a digest of the whole
training state) and prints whether they match. `--rounds R` measures every side R times in turn
(one result per round: on a loaded machine, compare the ratios of one round). Prints examples/s
of each side, the ratios to the pure step, the gains of prefetching over the serial loop and of
columnar decoding over per-example decoding, the stage breakdown (seconds per stage) and the
load average; `--json` prints one JSON object last.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from freshrec.commands.options import at_least

HELP = "examples/s the online loop consumes from the examples log, against the pure step, same batches"
EXAMPLE = "freshrec bench loop --quick --json"
TORCH_THREADS = 1  # `--threads` wins

STAGES = ("poll", "decode", "assemble", "wait", "step", "hooks")
STEP_PARTS = ("forward", "backward", "dense step", "sparse step")


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--batch-size", type=at_least(1), default=4096)
    parser.add_argument("--batches", type=at_least(1), default=20, help="timed batches per side")
    parser.add_argument("--warmup", type=at_least(1), default=3, help="untimed batches per side first")
    parser.add_argument("--max-vocab", type=int, default=10_000_000, help="largest slot vocabulary")
    parser.add_argument("--zipf", type=float, default=1.1, help="Zipf exponent of id frequencies")
    parser.add_argument("--dim", type=at_least(1), default=16)
    parser.add_argument("--threads", type=at_least(1), default=1, help="torch intra-op threads")
    parser.add_argument("--prefetch", type=at_least(1), default=2, help="batches prepared ahead")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rounds", type=at_least(1), default=1, help="measure every side this many times")
    parser.add_argument("--kafka", action="store_true", help="also run the loop over a Kafka broker")
    parser.add_argument("--quick", action="store_true", help="a short run (batch 1024, 6 batches)")
    parser.add_argument("--json", action="store_true")


def _spec(args):
    from freshrec.bench.train import N_DENSE, N_SLOTS
    from freshrec.model import FeatureSpec, ModelSpec, SlotSpec
    from freshrec.table import Adagrad, Initializer

    spec = FeatureSpec(
        slots=tuple(SlotSpec(name=f"C{j + 1}", table={"initial_capacity": 1 << 16}) for j in range(N_SLOTS)),
        dense_dim=N_DENSE,
        dim=args.dim,
        optimizer=Adagrad(lr=0.05),
        initializer=Initializer(kind="normal", scale=0.01),
        seed=args.seed,
    )
    return spec, ModelSpec("freshrec.model:DeepFM", {"hidden": [256, 128], "seed": args.seed})


def _examples(args) -> list:
    """The examples of `bench train`'s synthetic batches, in order (ts = batch number)."""
    from freshrec.bench.train import N_DENSE, synthetic_batches
    from freshrec.stream.events import Example

    n = args.warmup + args.batches
    out = []
    names = [f"dense_{k}" for k in range(N_DENSE)]
    for b, (sparse, dense, label) in enumerate(
        synthetic_batches(n, args.batch_size, max_vocab=args.max_vocab, zipf=args.zipf, seed=args.seed)
    ):
        cols = {k: v.tolist() for k, v in sparse.items()}
        rows, labels = dense.tolist(), label.tolist()
        for i in range(len(labels)):
            out.append(
                Example(
                    request_id=f"b{b}:{i}",
                    user_id=cols["C1"][i],
                    item_id=cols["C2"][i],
                    sparse={k: [c[i]] for k, c in cols.items()},
                    dense=dict(zip(names, rows[i], strict=True)),
                    labels={"click": labels[i]},
                    sample_rate=1.0,
                    ts=float(b),
                )
            )
    return out


def _online_config(args, prefetch: int, *, columnar: bool = True):
    from freshrec.train.online import OnlineConfig

    return OnlineConfig(
        batch_size=args.batch_size, prefetch=prefetch, whole_batches=True, columnar=columnar
    )


def _digest(ps) -> str:
    """A digest of the trained state (tables, dense weights, optimizer states, step): all of
    `ps.state()` but the change trackers (what a publisher has taken differs by design)."""
    meta, arrays = ps.state()
    h = hashlib.sha256()
    for k in sorted(k for k in arrays if ".changes." not in k):
        h.update(k.encode())
        h.update(np.ascontiguousarray(arrays[k]).tobytes())
    h.update(json.dumps(meta.get("step"), sort_keys=True).encode())
    return h.hexdigest()[:16]


def _pure(args, url: str) -> dict[str, Any]:
    """The step alone over the log's batches, decoded and assembled beforehand."""
    from freshrec.pipeline import Pipeline, PipelineConfig
    from freshrec.ps.training import TrainingPS

    spec, mspec = _spec(args)
    config = _online_config(args, 0)
    pipe = Pipeline(PipelineConfig(log=url, features_spec=spec, model=mspec, online=config))
    trainer = pipe.trainer()
    log, consumer = pipe.examples_consumer(trainer)
    prepared = []
    while True:  # the loop's own poll + decode + assembly, untimed: the same batches
        examples, bad, positions = trainer.poll_batch(consumer)
        if not examples:
            if consumer.at_end():
                break
            continue
        prepared.append(trainer.prepare(examples, positions=positions, bad=bad))
    consumer.close()
    rates = {"dense_lr": config.dense_lr, "hashed_lr": config.hashed_lr}
    ps = TrainingPS(spec, model=mspec, shards=1, window=config.auc_window, **rates)
    for p in prepared[: args.warmup]:
        ps.train_step(p.batch)
    parts: dict[str, float] = {}
    t0 = time.perf_counter()
    n = 0
    for p in prepared[args.warmup :]:
        ps.train_step(p.batch, timings=parts)
        n += len(p.batch)
    dt = time.perf_counter() - t0
    out = {"examples_per_s": n / dt, "seconds": dt, "examples": n, "stages": {"step": dt, **parts}}
    out["digest"] = _digest(ps)
    pipe.close()
    return out


def _loop(args, url: str, prefetch: int, tag: str, *, columnar: bool = True) -> dict[str, Any]:
    """The shipped loop (`train online --params`): Pipeline trainer + publisher, run until drained."""
    from freshrec.pipeline import Pipeline, PipelineConfig

    spec, mspec = _spec(args)
    online = _online_config(args, prefetch, columnar=columnar)
    config = PipelineConfig(log=url, features_spec=spec, model=mspec, online=online, params=f"params-{tag}")
    pipe = Pipeline(config)
    trainer = pipe.trainer()
    publisher = pipe.publisher(trainer, every_batch=True, dense_every=10)
    log, consumer = pipe.examples_consumer(trainer, group=f"bench-{tag}")
    trainer.run(consumer, max_batches=args.warmup)
    trainer.timings.clear()
    n0 = trainer.examples
    t0 = time.perf_counter()
    trainer.run(consumer, until_idle=True, log=log)
    dt = time.perf_counter() - t0
    n = trainer.examples - n0
    stages = dict(trainer.timings)
    out = {
        "examples_per_s": n / dt,
        "seconds": dt,
        "examples": n,
        "stages": stages,
        "published_versions": publisher.version,
        "digest": _digest(trainer.ps),
    }
    consumer.close()
    pipe.close()
    return out


def _write_log(url: str, examples: list) -> float:
    from freshrec.pipeline import Pipeline, PipelineConfig
    from freshrec.train.examples import write_examples

    pipe = Pipeline(PipelineConfig(log=url))
    t0 = time.perf_counter()
    write_examples(pipe.log("examples"), examples)
    dt = time.perf_counter() - t0
    pipe.close()
    return dt


def _measure(args, url: str, backend: str) -> dict[str, Any]:
    print(f"  [{backend}] pure step ...", flush=True)
    pure = _pure(args, url)
    gc.collect()
    print(f"  [{backend}] loop, serial ...", flush=True)
    serial = _loop(args, url, 0, f"{backend}-serial")
    gc.collect()
    print(f"  [{backend}] loop, prefetch {args.prefetch} ...", flush=True)
    ahead = _loop(args, url, args.prefetch, f"{backend}-prefetch")
    gc.collect()
    print(f"  [{backend}] loop, serial, per-example decode ...", flush=True)
    ref = _loop(args, url, 0, f"{backend}-reference", columnar=False)
    gc.collect()
    p = pure["examples_per_s"]
    return {
        "backend": backend,
        "pure": pure,
        "serial": serial,
        "prefetch": ahead,
        "reference": ref,
        "serial_vs_pure": serial["examples_per_s"] / p,
        "prefetch_vs_pure": ahead["examples_per_s"] / p,
        "reference_vs_pure": ref["examples_per_s"] / p,
        "prefetch_gain": ahead["examples_per_s"] / serial["examples_per_s"],
        "columnar_gain": serial["examples_per_s"] / ref["examples_per_s"],
        "same_parameters": pure["digest"] == serial["digest"] == ahead["digest"] == ref["digest"],
    }


def _print(r: dict[str, Any], prefetch: int) -> None:
    sides = (
        ("pure step", r["pure"]),
        ("loop, serial", r["serial"]),
        (f"loop, prefetch {prefetch}", r["prefetch"]),
        ("loop, per-example", r["reference"]),
    )
    pure = r["pure"]["examples_per_s"]
    print(f"\n[{r['backend']}] {'side':<20} {'examples/s':>12} {'vs pure':>8}")
    for name, s in sides:
        print(f"[{r['backend']}] {name:<20} {s['examples_per_s']:>12,.0f} {s['examples_per_s'] / pure:>8.3f}")
    print(f"[{r['backend']}] prefetch gain over the serial loop: {r['prefetch_gain']:.3f}x")
    print(f"[{r['backend']}] columnar decode gain over per-example decode: {r['columnar_gain']:.3f}x")
    print(f"[{r['backend']}] same parameters on every side: {r['same_parameters']}")
    print(f"\n[{r['backend']}] seconds per stage {'pure':>10} {'serial':>10} {'prefetch':>10} {'per-ex':>10}")
    for k in (*STAGES, *STEP_PARTS):
        vals = [s["stages"].get(k) for _, s in sides]
        if all(v is None for v in vals):
            continue
        cells = "".join(f"{v:>10.3f}" if v is not None else f"{'-':>10}" for v in vals)
        label = {"hooks": "publish (hooks)", "assemble": "batch assembly"}.get(k, k)
        indent = "  " if k in STEP_PARTS else ""
        print(f"[{r['backend']}] {indent + label:<18}{cells}")


def main(args: argparse.Namespace) -> int:
    import torch

    if args.quick:
        args.batch_size, args.batches, args.warmup = 1024, 6, 2
        args.max_vocab = min(args.max_vocab, 100_000)
    load0 = os.getloadavg()
    print(
        f"bench loop: DeepFM, 26 slots (Zipf {args.zipf}, vocab up to {args.max_vocab:,}), 13 dense, "
        f"batch {args.batch_size}, {args.batches} timed batches after {args.warmup} warm-up, "
        f"prefetch {args.prefetch}; torch threads {torch.get_num_threads()}; load {load0[0]:.2f}",
        flush=True,
    )
    examples = _examples(args)
    results = []
    kafka_reason = None if args.kafka else "not asked (--kafka)"
    with tempfile.TemporaryDirectory(prefix="freshrec-bench-loop-") as tmp:
        url = str(Path(tmp) / "logs")
        wrote = _write_log(url, examples)
        print(f"  wrote {len(examples):,} examples to the local log in {wrote:.1f} s", flush=True)
        for _ in range(args.rounds):  # on a shared machine: ratios of each round, sides close in time
            results.append(_measure(args, url, "local"))
        if args.kafka:
            from freshrec.bench._kafka import start_broker, stop_broker

            print("starting a Kafka broker (scripts/kafka.sh start) ...", flush=True)
            bootstrap, kdir, kafka_reason = start_broker()
            if bootstrap is not None:
                try:
                    kurl = f"kafka://{bootstrap}?prefix=benchloop-{os.getpid()}-{int(time.time())}."
                    _write_log(kurl, examples)
                    results.append(_measure(args, kurl, "kafka"))
                except Exception as e:  # reported, the local figures still stand
                    kafka_reason = f"{type(e).__name__}: {e}"
                finally:
                    gc.collect()
                    if kdir:
                        stop_broker(kdir)
    del examples
    for r in results:
        _print(r, args.prefetch)
    if kafka_reason is not None:
        print(f"Kafka not measured: {kafka_reason}")
    load1 = os.getloadavg()
    print(f"load average before / after: {load0[0]:.2f} / {load1[0]:.2f}")
    if args.json:
        print(
            json.dumps(
                {
                    "batch_size": args.batch_size,
                    "batches": args.batches,
                    "prefetch": args.prefetch,
                    "threads": torch.get_num_threads(),
                    "load_before": load0[0],
                    "load_after": load1[0],
                    "results": results,
                    "kafka_reason": kafka_reason,
                }
            )
        )
    return 0

"""`freshrec bench train`: DeepFM training examples/s, collisionless tables vs hashed tables, one run.

Criteo-shaped synthetic data: 26 sparse slots and 13 dense features per example. Each slot draws
ids from a Zipf law (exponent `--zipf`) over its own vocabulary (sizes spread log-uniformly from
1e2 to `--max-vocab`, as Criteo's slots span a few values to millions), then scrambles them into
the full int64 space, so the ids look like hashed feature values and the tail keeps bringing new
ids. The same batches feed both models: DeepFM (dim 16, DNN 256-128) with one collisionless table
per slot (Adagrad in the table), and the same model with a `HashedEmbedding` per slot of
`--buckets` rows trained by `torch.optim.Adagrad` on sparse gradients. After `--warmup` batches, the
next `--batches` are timed for each side in turn (whole step: forward, backward, dense Adam step,
sparse step). Prints a table and the ratio collisionless / hashed; `--json` prints one JSON object
last.

`--against torchrec` compares instead the collisionless DeepFM with the same model over TorchRec's
fused static table (`freshrec.bench._torchrec`), in `--rounds` interleaved rounds, with the
versions printed; TorchRec lives in its own venv (`scripts/torchrec-venv.sh`), and without it the
command says so in one line and exits 0.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import numpy as np

from freshrec.commands.options import at_least

HELP = "training examples/s of DeepFM: collisionless tables vs hashed tables, side by side"
EXAMPLE = "freshrec bench train --batches 30 --json"
TORCH_THREADS = 1  # `--threads` wins

N_SLOTS, N_DENSE = 26, 13


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--batch-size", type=at_least(1), default=4096)
    parser.add_argument("--batches", type=at_least(1), default=30, help="timed batches per side")
    parser.add_argument("--warmup", type=int, default=5, help="untimed batches per side first")
    parser.add_argument("--buckets", type=int, default=1 << 18, help="rows per hashed table")
    parser.add_argument("--max-vocab", type=int, default=10_000_000, help="largest slot vocabulary")
    parser.add_argument("--zipf", type=float, default=1.1, help="Zipf exponent of id frequencies")
    parser.add_argument("--dim", type=at_least(1), default=16)
    parser.add_argument("--threads", type=at_least(1), default=1, help="torch intra-op threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--profile", action="store_true", help="print where each step spends its time")
    parser.add_argument(
        "--against",
        choices=("torchrec",),
        default=None,
        help="compare freshrec's collisionless DeepFM with the same model over TorchRec's fused static "
        "table instead of the hashed baseline (TorchRec's own venv: scripts/torchrec-venv.sh)",
    )
    parser.add_argument("--rounds", type=at_least(1), default=3, help="interleaved rounds with --against")
    parser.add_argument("--json", action="store_true")


def synthetic_batches(n_batches: int, batch_size: int, *, max_vocab: int, zipf: float, seed: int):
    """`n_batches` Criteo-shaped batches: (sparse {C1..C26: int64 (B,)}, dense (B, 13), label (B,))."""
    rng = np.random.default_rng(seed)
    vocab = np.exp(np.linspace(np.log(100), np.log(max_vocab), N_SLOTS)).astype(np.int64)
    rng.shuffle(vocab)
    salt = rng.integers(1, 1 << 62, N_SLOTS)
    n = n_batches * batch_size
    cols = {}
    for j in range(N_SLOTS):
        # Zipf ranks (1 = most frequent) folded into the slot's vocabulary, then scrambled
        ranks = (rng.zipf(zipf, n) - 1) % vocab[j]
        with np.errstate(over="ignore"):
            h = (ranks.astype(np.uint64) + np.uint64(salt[j])) * np.uint64(0x9E3779B97F4A7C15)
            h ^= h >> np.uint64(29)
        cols[f"C{j + 1}"] = h.view(np.int64)
    dense = rng.normal(size=(n, N_DENSE)).astype(np.float32)
    w = rng.normal(size=N_DENSE).astype(np.float32)
    label = (rng.random(n) < 1 / (1 + np.exp(-(dense @ w) * 0.5 + 1.5))).astype(np.float32)
    out = []
    for b in range(n_batches):
        sl = slice(b * batch_size, (b + 1) * batch_size)
        out.append(({k: v[sl] for k, v in cols.items()}, dense[sl], label[sl]))
    return out


def _spec(args):
    from freshrec.model import FeatureSpec, SlotSpec
    from freshrec.table import Adagrad, Initializer

    return FeatureSpec(
        slots=tuple(SlotSpec(name=f"C{j + 1}", table={"initial_capacity": 1 << 16}) for j in range(N_SLOTS)),
        dense_dim=N_DENSE,
        dim=args.dim,
        optimizer=Adagrad(lr=0.05),
        initializer=Initializer(kind="normal", scale=0.01),
        seed=args.seed,
    )


def _tensors(batches) -> list:
    import torch

    from freshrec.model import Batch

    return [
        Batch(
            sparse={k: torch.from_numpy(v) for k, v in s.items()},
            dense=torch.from_numpy(d),
            targets=torch.from_numpy(y).reshape(-1, 1),
            offset=None,
            now=float(i),
        )
        for i, (s, d, y) in enumerate(batches)
    ]


def _ps(kind: str, args):
    from freshrec.model import ModelSpec
    from freshrec.ps.training import TrainingPS

    spec = _spec(args)
    buckets = {s: args.buckets for s in spec.names} if kind == "hashed" else None
    # the shipped training state and step (freshrec.ps.training), as batch and online training use it
    ps = TrainingPS(
        spec,
        model=ModelSpec("freshrec.model:DeepFM", {"hidden": [256, 128], "seed": args.seed}),
        shards=1,
        embedding="hashed" if kind == "hashed" else "collisionless",
        buckets=buckets,
        dense_lr=1e-3,
        hashed_lr=0.05,
    )
    return ps


def _run_side(kind: str, batches, args, profile: dict | None = None) -> tuple[float, float, Any]:
    ps = _ps(kind, args)
    model = ps.model
    tensors = _tensors(batches)
    parts: dict[str, float] = {}
    clock = time.perf_counter
    for i in range(args.warmup):
        ps.train_step(tensors[i])
    t0 = clock()
    last = 0.0
    for i in range(args.warmup, args.warmup + args.batches):
        last = ps.train_step(tensors[i], timings=parts).loss
    dt = clock() - t0
    if profile is not None:
        profile.update(parts)
    return args.batches * args.batch_size / dt, last, model


def main(args: argparse.Namespace) -> int:
    import torch

    if args.against == "torchrec":
        from freshrec.bench._torchrec import available

        reason = available()
        if reason is not None:
            print(
                f"bench train --against torchrec: skipped, TorchRec is not importable here ({reason}); "
                "make its venv with `bash scripts/torchrec-venv.sh` and run "
                "`.venv-torchrec/bin/python -m freshrec.cli bench train --against torchrec`"
            )
            if args.json:
                print(json.dumps({"against": "torchrec", "skipped": reason}))
            return 0
    n = args.warmup + args.batches
    print(
        f"bench train: DeepFM, {N_SLOTS} sparse slots (Zipf {args.zipf}, vocab up to {args.max_vocab:,}), "
        f"{N_DENSE} dense, batch {args.batch_size}, {args.batches} timed batches after {args.warmup} "
        f"warm-up; hashed tables {args.buckets:,} rows; torch threads {torch.get_num_threads()}",
        flush=True,
    )
    batches = synthetic_batches(n, args.batch_size, max_vocab=args.max_vocab, zipf=args.zipf, seed=args.seed)
    if args.against == "torchrec":
        from freshrec.bench._torchrec import against_torchrec

        return against_torchrec(args, batches, _ps("collisionless", args), _tensors(batches))
    prof_c: dict = {}
    prof_h: dict = {}
    print("  running collisionless ...", flush=True)
    c_rate, c_loss, c_model = _run_side("collisionless", batches, args, prof_c)
    rows = sum(len(m.table) for m in c_model.collisionless.values())
    del c_model
    print("  running hashed ...", flush=True)
    h_rate, h_loss, _ = _run_side("hashed", batches, args, prof_h)
    ratio = c_rate / h_rate
    print(f"\n{'embedding':<15} {'examples/s':>12} {'last loss':>10}")
    print(f"{'collisionless':<15} {c_rate:>12,.0f} {c_loss:>10.4f}   ({rows:,} rows in {N_SLOTS} tables)")
    print(f"{'hashed':<15} {h_rate:>12,.0f} {h_loss:>10.4f}   ({N_SLOTS} x {args.buckets:,} rows)")
    print(f"ratio collisionless / hashed: {ratio:.3f}")
    if args.profile:
        print(f"\n{'seconds in':<12} {'collisionless':>14} {'hashed':>10}")
        for k in prof_c:
            print(f"{k:<12} {prof_c[k]:>14.3f} {prof_h[k]:>10.3f}")
    if args.json:
        print(
            json.dumps(
                {
                    "collisionless_examples_per_s": c_rate,
                    "hashed_examples_per_s": h_rate,
                    "ratio": ratio,
                    "batch_size": args.batch_size,
                    "batches": args.batches,
                    "slots": N_SLOTS,
                    "collisionless_rows": rows,
                    "hashed_buckets": args.buckets,
                    "threads": torch.get_num_threads(),
                }
            )
        )
    return 0

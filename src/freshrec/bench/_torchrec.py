"""The TorchRec side of `freshrec bench train --against torchrec`: the same DeepFM over a static fused table.

TorchRec is never a dependency of freshrec: it lives in its own venv (`scripts/torchrec-venv.sh`),
and `available()` says why it cannot be imported when it is not there.

The model is freshrec's `DeepFM` (the same dense part, the same seed) whose `embed` reads every
slot from one TorchRec `FusedEmbeddingBagCollection`: one table per slot of `buckets` rows (ids
taken modulo `buckets`, as a static table must), width dim + 1 (the FM weight column, as
freshrec's rows) padded to a multiple of 4 as fbgemm requires (20 for dim 16; the padding columns
are never read by the model), exact Adagrad fused into the backward pass (fbgemm's batched CPU kernels, the
optimizer freshrec's tables use), dense weights by Adam as in `TrainingPS.train_step`.

    ids per slot (B,) -> KeyedJaggedTensor(keys=C1..C26, values (26 * B,), lengths all 1)
    fused EBC -> KeyedTensor values (B, 26 * W) -> view (B, 26, W)[..., : dim + 1]  # DeepFM's X
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

__all__ = ["FusedSide", "against_torchrec", "available", "versions"]


def available() -> str | None:
    """None when TorchRec (with fbgemm) imports here, else the one-line reason."""
    try:
        import fbgemm_gpu  # noqa: F401
        import torchrec  # noqa: F401
        from torchrec.modules.fused_embedding_modules import FusedEmbeddingBagCollection  # noqa: F401
    except Exception as e:  # ImportError, or fbgemm's undefined symbols on a torch it was not built for
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        return f"{type(e).__name__}: {first[:200]}"
    return None


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    import torch

    out: dict[str, str] = {"torch": torch.__version__}
    for name in ("torchrec", "fbgemm-gpu-cpu", "fbgemm-gpu"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            continue
    return out


class FusedSide:
    """The DeepFM over TorchRec's fused table, trained one batch at a time (`step`)."""

    def __init__(self, spec: Any, *, buckets: int, hidden: list[int], seed: int, lr: float, dense_lr: float):
        import torch
        from torchrec.modules.embedding_configs import EmbeddingBagConfig, PoolingType
        from torchrec.modules.fused_embedding_modules import FusedEmbeddingBagCollection

        from freshrec.model import DeepFM

        self.names = list(spec.names)
        self.width = spec.dim + 1
        self.padded = -(-self.width // 4) * 4  # fbgemm's tables are a multiple of 4 wide
        self.buckets = int(buckets)
        tables = [
            EmbeddingBagConfig(
                name=f"t_{n}",
                embedding_dim=self.padded,
                num_embeddings=self.buckets,
                feature_names=[n],
                pooling=PoolingType.SUM,
            )
            for n in self.names
        ]
        ebc = FusedEmbeddingBagCollection(
            tables=tables,
            optimizer_type=torch.optim.Adagrad,
            optimizer_kwargs={"lr": lr},
            device=torch.device("cpu"),
        )
        side = self

        class _FusedDeepFM(DeepFM):
            def embed(self, sparse):  # (B, F, dim + 1) from one fused lookup
                return side._lookup(sparse)

        # the dense part exactly as freshrec builds it; its own embedding layers go unused (1 row)
        one_row = dict.fromkeys(self.names, 1)
        self.model = _FusedDeepFM.build(spec, "hashed", buckets=one_row, hidden=hidden, seed=seed)
        self.ebc = ebc
        dense = [p for n, p in self.model.named_parameters() if not n.startswith("embeddings.")]
        self.opt = torch.optim.Adam(dense, lr=dense_lr)
        self.model.train()

    def _lookup(self, sparse):
        import torch
        from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

        cols = [sparse[n] for n in self.names]
        B = cols[0].shape[0]
        values = torch.remainder(torch.cat(cols), self.buckets)  # (F * B,), slot-major
        kjt = KeyedJaggedTensor(
            keys=self.names, values=values, lengths=torch.ones(len(self.names) * B, dtype=torch.int32)
        )
        pooled = self.ebc(kjt).values().view(B, len(self.names), self.padded)  # (B, F, W)
        return pooled[..., : self.width]  # (B, F, dim + 1)

    def step(self, batch: Any) -> float:
        """One step: forward, BCE, backward (the fused Adagrad updates the table rows in it), Adam."""
        import torch.nn.functional as F

        logits = self.model(batch.sparse, batch.dense).reshape(-1)
        loss = F.binary_cross_entropy_with_logits(logits, batch.targets[:, 0])
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return float(loss.detach())


def against_torchrec(args: Any, batches: list, ps: Any, tensors: list) -> int:
    """freshrec's collisionless DeepFM (`ps`, the shipped `TrainingPS.train_step`) against the same
    DeepFM over TorchRec's fused table, on the same `tensors`: `--warmup` batches each, then the
    `--batches` timed ones split into `--rounds` rounds, each round timing freshrec then TorchRec."""
    import torch

    ver = versions()
    load0 = os.getloadavg()[0]
    print(
        f"bench train --against torchrec: DeepFM, {len(ps.spec.names)} slots, batch {args.batch_size}, "
        f"{args.batches} timed batches in {args.rounds} interleaved rounds after {args.warmup} warm-up; "
        f"TorchRec fused table {args.buckets:,} rows per slot; torch threads {torch.get_num_threads()}; "
        f"load {load0:.2f}",
        flush=True,
    )
    print("versions: " + ", ".join(f"{k} {v}" for k, v in ver.items()), flush=True)
    fused = FusedSide(
        ps.spec, buckets=args.buckets, hidden=[256, 128], seed=args.seed, lr=0.05, dense_lr=1e-3
    )
    for b in tensors[: args.warmup]:
        ps.train_step(b)
        fused.step(b)
    timed = tensors[args.warmup : args.warmup + args.batches]
    bounds = [round(i * len(timed) / args.rounds) for i in range(args.rounds + 1)]
    secs = {"freshrec": 0.0, "torchrec": 0.0}
    per_round = []
    loss = {"freshrec": float("nan"), "torchrec": float("nan")}
    for r in range(args.rounds):
        chunk = timed[bounds[r] : bounds[r + 1]]
        n = sum(len(b) for b in chunk)
        rates = {}
        for name in ("freshrec", "torchrec"):
            t0 = time.perf_counter()
            for b in chunk:
                loss[name] = ps.train_step(b).loss if name == "freshrec" else fused.step(b)
            dt = time.perf_counter() - t0
            secs[name] += dt
            rates[name] = n / dt
        per_round.append(rates["torchrec"] / rates["freshrec"])
    n_all = len(timed) * args.batch_size
    f_rate, t_rate = n_all / secs["freshrec"], n_all / secs["torchrec"]
    rows = sum(len(t) for t in ps.tables.values())
    load1 = os.getloadavg()[0]
    print(f"\n{'side':<34} {'examples/s':>12} {'last loss':>10}")
    print(f"{'freshrec collisionless':<34} {f_rate:>12,.0f} {loss['freshrec']:>10.4f}   ({rows:,} rows)")
    print(f"{'torchrec fused static table':<34} {t_rate:>12,.0f} {loss['torchrec']:>10.4f}")
    rounds = ", ".join(f"{x:.3f}" for x in per_round)
    print(f"ratio torchrec / freshrec: {t_rate / f_rate:.3f} (rounds: {rounds})")
    print(f"load average before / after: {load0:.2f} / {load1:.2f}")
    if args.json:
        print(
            json.dumps(
                {
                    "against": "torchrec",
                    "freshrec_examples_per_s": f_rate,
                    "torchrec_examples_per_s": t_rate,
                    "ratio": t_rate / f_rate,
                    "round_ratios": per_round,
                    "versions": ver,
                    "batch_size": args.batch_size,
                    "batches": args.batches,
                    "rounds": args.rounds,
                    "buckets": args.buckets,
                    "threads": torch.get_num_threads(),
                    "load_before": load0,
                    "load_after": load1,
                }
            )
        )
    return 0

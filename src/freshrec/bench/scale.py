"""`freshrec bench scale`: training throughput on in-process vs Ray PS shards, and a capacity table.

Throughput. A Criteo-shaped workload drives the table API directly: 26 sparse slots, one table per
slot (dim 16, Adagrad), batches of 4096 examples whose ids follow a Zipf law per slot (the ids of
`freshrec bench train`). Per batch and per slot a trainer does what a training step does to the
tables: dedup the slot's ids, `lookup` them, and `apply_gradients` random gradients with the
occurrence counts. Configurations, all in this one run:

    in-process   ShardedTable with 1 or 2 shards, 1 or 2 trainer threads
    ray          RayShardedTable on 1 or 2 shard-server actors, 1 or 2 trainer actors (processes)
    grouped      Ray, 2 shards, 1 worker: still one table per slot, but each batch's lookups (and
                 updates) of all 26 tables go in one call per server (`lookup_many`,
                 `apply_gradients_many`); its in-process baseline is the per-slot run
    fused        2 shards, 1 worker: one table for all slots (ids prefixed by slot), one call per batch;
                 grouped and fused show how much of the Ray cost is per call

Every worker trains on its own batches (seeded by worker number, the same for both sides).
`ray_hop_ratio` = in-process examples/s / Ray examples/s at 2 shards, 1 worker: what the hop to
another process costs. With the model code present (and without `--quick`), full DeepFM training
steps (forward, backward, dense Adam, sparse step; torch on 1 thread) are timed on 2 in-process
shards and on 2 Ray shards as well.

Capacity. Bytes per row are MEASURED: an `EmbeddingTable` is filled with `--capacity-ids` ids at dim
16 and 64, as a training table (Adagrad: embedding + accumulator + index + metadata) and as a
serving table (no optimizer state, rows set by `assign`); `nbytes() / len`. From those, the number of
shards (hosts of 64 and 256 GiB, 80% of it usable by the table) that hold 10^8, 10^9 and 10^10 ids.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import threading
import time
from typing import Any

import numpy as np

from freshrec.commands.options import at_least
from freshrec.ps.ray_ps import RAY_ENVIRONMENT
from freshrec.table import SGD, Adagrad, EmbeddingTable, TableConfig

__all__ = ["ScaleTrainer", "bytes_per_row", "capacity_rows", "configure", "main", "run_steps", "slot_batches"]

HELP = "scale-out: training examples/s with in-process vs Ray PS shards, Ray hop cost, capacity table"
EXAMPLE = "freshrec bench scale --quick --json"
TORCH_THREADS = 1  # as `freshrec bench train` by default: comparable, and leaves a core to the PS
ENVIRONMENT = RAY_ENVIRONMENT  # a loopback-only local Ray cluster (freshrec.ps.ray_ps)

N_SLOTS = 26


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--quick", action="store_true", help="few batches, no DeepFM, 200k-id capacity fill (< 1 min)"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    parser.add_argument("--batches", type=at_least(1), default=None,
                        help="timed batches per worker (default 30)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed batches per worker first")
    parser.add_argument("--batch-size", type=at_least(1), default=4096)
    parser.add_argument("--dim", type=at_least(1), default=16)
    parser.add_argument("--zipf", type=float, default=1.1, help="Zipf exponent of id frequencies")
    parser.add_argument("--max-vocab", type=int, default=10_000_000, help="largest slot vocabulary")
    parser.add_argument("--capacity-ids", type=int, default=None, help="ids per fill (default 1M)")
    parser.add_argument("--hosts-gib", default="64,256", help="host memory sizes, GiB (comma list)")
    parser.add_argument("--usable", type=float, default=0.8, help="fraction of a host the table may use")
    parser.add_argument("--no-ray", action="store_true", help="in-process configurations only")
    parser.add_argument("--no-deepfm", action="store_true", help="skip the DeepFM step")
    parser.add_argument("--address", default=None, help="an existing Ray cluster (default: start one)")
    parser.add_argument("--seed", type=int, default=0)


_T0 = time.perf_counter()


def _log(msg: str) -> None:
    """Progress on stderr, with seconds since the bench started."""
    print(f"[{time.perf_counter() - _T0:5.0f} s] {msg}", file=sys.stderr, flush=True)


# ---- workload ----------------------------------------------------------------------------------------


def slot_batches(
    n_batches: int, batch_size: int, *, max_vocab: int, zipf: float, seed: int
) -> list[list[np.ndarray]]:
    """`n_batches` batches, each a list of N_SLOTS int64 id arrays (batch_size,): the sparse part of
    `freshrec bench train`'s Criteo-shaped examples."""
    from freshrec.bench.train import synthetic_batches

    raw = synthetic_batches(n_batches, batch_size, max_vocab=max_vocab, zipf=zipf, seed=seed)
    return [[sparse[f"C{j + 1}"] for j in range(N_SLOTS)] for sparse, _, _ in raw]


def table_config(slot: str, dim: int) -> TableConfig:
    return TableConfig(name=slot, dim=dim, optimizer=Adagrad(lr=0.05), initial_capacity=1 << 16)


def _fuse(slots: list[np.ndarray]) -> np.ndarray:
    """The ids of all slots as one id space: slot j's ids with their top 5 bits replaced by j."""
    mask = np.int64((1 << 58) - 1)
    return np.concatenate([(ids & mask) | np.int64(j << 58) for j, ids in enumerate(slots)])


def run_steps(
    tables: list[Any], batches: list[list[np.ndarray]], *, dim: int, first: int = 0, grouped: bool = False
) -> int:
    """Per batch and slot: dedup, lookup, apply random gradients with counts; returns examples.

    One table per slot, or one table for all slots (`len(tables) == 1`: fused ids, one call each);
    `grouped`: all slots' lookups in one `lookup_many`, all updates in one `apply_gradients_many`.
    `first` numbers the batches (the data time `now` of batch b is first + b seconds).
    """
    from freshrec.ps.ray_ps import apply_gradients_many, lookup_many

    rng = np.random.default_rng(first)
    pool = (rng.standard_normal((N_SLOTS * 8192, dim)) * 0.01).astype(np.float32)
    for b, slots in enumerate(batches):
        now = float(first + b)
        work = [_fuse(slots)] if len(tables) == 1 else slots
        if grouped:
            uc = [np.unique(ids, return_counts=True) for ids in work]
            us = [u for u, _ in uc]
            lookup_many(tables, us)
            grads = [pool[: u.shape[0]] for u in us]
            apply_gradients_many(tables, us, grads, now=now, counts=[c for _, c in uc])
            continue
        for table, ids in zip(tables, work, strict=True):
            uniq, counts = np.unique(ids, return_counts=True)
            table.lookup(uniq)
            table.apply_gradients(uniq, pool[: uniq.shape[0]], now=now, counts=counts)
    return sum(slots[0].shape[0] for slots in batches)


class ScaleTrainer:
    """A trainer worker for the Ray configurations (run as an actor: a process of its own)."""

    def __init__(self) -> None:
        self._batches: list[list[np.ndarray]] = []
        self._tables: list[Any] = []
        self._dim = 16
        self._first = 0
        self._grouped = False

    def ready(self) -> bool:
        """True once the actor is up (its imports done)."""
        import freshrec.bench.train  # noqa: F401
        import freshrec.ps.ray_ps  # noqa: F401

        return True

    def prepare(self, tables: list[Any], params: dict, seed: int, warmup: int, grouped: bool = False) -> None:
        """Make this worker's batches and run `warmup` of them (untimed)."""
        n = params["batches"] + warmup
        self._batches = slot_batches(
            n, params["batch_size"], max_vocab=params["max_vocab"], zipf=params["zipf"], seed=seed
        )
        self._tables, self._dim, self._grouped = tables, params["dim"], grouped
        run_steps(tables, self._batches[:warmup], dim=self._dim, grouped=grouped)
        self._batches, self._first = self._batches[warmup:], warmup

    def run(self) -> tuple[int, float]:
        """(examples, seconds) of the timed batches."""
        t0 = time.perf_counter()
        n = run_steps(self._tables, self._batches, dim=self._dim, first=self._first, grouped=self._grouped)
        return n, time.perf_counter() - t0


# ---- in-process --------------------------------------------------------------------------------------


def _inproc(
    shards: int, workers: int, data: dict[int, list], args: argparse.Namespace, warmup: int, calls: str
) -> float:
    from freshrec.ps.sharded import ShardedTable

    names = ["fused"] if calls == "fused" else [f"C{j + 1}" for j in range(N_SLOTS)]
    tables = [ShardedTable(table_config(n, args.dim), shards=shards) for n in names]
    for w in range(workers):
        run_steps(tables, data[w][:warmup], dim=args.dim)
    done = [0] * workers
    start = threading.Barrier(workers + 1)

    def work(w: int) -> None:
        start.wait()
        done[w] = run_steps(tables, data[w][warmup:], dim=args.dim, first=warmup)

    threads = [threading.Thread(target=work, args=(w,)) for w in range(workers)]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    return sum(done) / (time.perf_counter() - t0)


def _lookup_latency_us(table: Any, ids: np.ndarray, reps: int) -> float:
    table.lookup(ids)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        table.lookup(ids)
        times.append(time.perf_counter() - t0)
    return float(np.median(times) * 1e6)


# ---- Ray ------------------------------------------------------------------------------------------------


_CONFIGS = [(1, 1, "per slot"), (1, 2, "per slot"), (2, 1, "per slot"), (2, 2, "per slot"), (2, 1, "fused")]


def _key(row: dict) -> str:
    """The config's key: "2x1" (shards x workers), "_fused" / "_grouped" appended for those calls."""
    suffix = "" if row["calls"] == "per slot" else f"_{row['calls']}"
    return f"{row['shards']}x{row['workers']}{suffix}"


def _params(args: argparse.Namespace) -> dict:
    keys = ("batches", "batch_size", "max_vocab", "zipf", "dim")
    return {k: getattr(args, k) for k in keys}


def _ray_part(args: argparse.Namespace, warmup: int, rows: list[dict], extra: dict) -> None:
    import ray

    from freshrec.ps.ray_ps import RayShardedTable, ShardOptions, start_local_cluster, start_servers

    t0 = time.perf_counter()
    if args.address:
        ray.init(address=args.address, log_to_driver=False)
    else:
        start_local_cluster(num_cpus=2)
    # 2 servers (a 1-shard table uses the first) and 2 trainers: 4 x 0.5 CPU on a 2-core host
    servers = start_servers(2, options=ShardOptions(num_cpus=0.5))
    trainer_cls: Any = ray.remote(ScaleTrainer)
    trainers: list[Any] = [trainer_cls.options(num_cpus=0.5).remote() for _ in range(2)]
    ray.get([a.ready.remote() for a in trainers])
    extra["ray_startup_s"] = time.perf_counter() - t0
    _log(f"  ray: cluster, 2 shard servers, 2 trainer actors up in {extra['ray_startup_s']:.1f} s")
    params = _params(args)
    try:
        for shards, workers, calls in _CONFIGS + [(2, 1, "grouped")]:
            tag = f"{shards}x{workers}{calls[0]}"
            names = ["fused"] if calls == "fused" else [f"C{j + 1}" for j in range(N_SLOTS)]
            tables = [
                RayShardedTable(table_config(f"{n}-{tag}", args.dim), servers=servers[:shards]) for n in names
            ]
            try:
                ray.get(
                    [
                        a.prepare.remote(tables, params, args.seed + w, warmup, calls == "grouped")
                        for w, a in enumerate(trainers[:workers])
                    ]
                )
                t1 = time.perf_counter()
                done = ray.get([a.run.remote() for a in trainers[:workers]])
                rate = sum(n for n, _ in done) / (time.perf_counter() - t1)
            finally:
                for t in tables:
                    t.close()
            rows.append(
                {"impl": "ray", "shards": shards, "workers": workers, "calls": calls, "examples_per_s": rate}
            )
            _log(f"  ray        shards={shards} workers={workers} {calls}: {rate:,.0f} ex/s")
        with RayShardedTable(table_config("latency", args.dim), servers=servers) as table:
            ids = np.unique(
                slot_batches(1, args.batch_size, max_vocab=args.max_vocab, zipf=args.zipf, seed=9)[0][0]
            )
            table.apply_gradients(ids, np.zeros((ids.shape[0], args.dim), np.float32), now=0.0)
            extra["lookup_latency_us"]["ray"] = _lookup_latency_us(table, ids, 30)
        if not args.no_deepfm:
            extra["deepfm"]["ray"] = _deepfm(
                args, lambda c: RayShardedTable(c, servers=servers), warmup=max(1, warmup)
            )
            _log(f"  deepfm on 2 Ray shards: {extra['deepfm']['ray']:,.0f} ex/s")
    finally:
        for a in trainers:
            ray.kill(a)
        ray.shutdown()


# ---- DeepFM step ------------------------------------------------------------------------------------


def _deepfm(args: argparse.Namespace, make_table: Any, *, warmup: int) -> float:
    """Examples/s of full DeepFM training steps with every slot's table made by `make_table`."""
    import torch
    from torch import nn

    from freshrec.bench.train import N_DENSE, synthetic_batches
    from freshrec.model import Batch, DeepFM, FeatureSpec, SlotSpec
    from freshrec.model.embedding import CollisionlessEmbedding
    from freshrec.ps.training import TrainingPS

    n = max(1, args.batches // 5)
    spec = FeatureSpec(
        slots=tuple(SlotSpec(name=f"C{j + 1}", table={"initial_capacity": 1 << 16}) for j in range(N_SLOTS)),
        dense_dim=N_DENSE,
        dim=args.dim,
        seed=args.seed,
    )
    tables = []
    layers = {}
    for name in spec.names:
        c = spec.table_config(name, extra_columns=1)
        tables.append(make_table(c))
        layers[name] = CollisionlessEmbedding(c, table=tables[-1])
    model = DeepFM(spec, nn.ModuleDict(layers), hidden=(256, 128), seed=args.seed)
    ps = TrainingPS.from_model(model)  # the shipped training state and step
    raw = synthetic_batches(
        warmup + n, args.batch_size, max_vocab=args.max_vocab, zipf=args.zipf, seed=args.seed
    )
    data = [
        Batch(
            sparse={k: torch.from_numpy(v) for k, v in s.items()},
            dense=torch.from_numpy(d),
            targets=torch.from_numpy(y).reshape(-1, 1),
            offset=None,
            now=float(i),
        )
        for i, (s, d, y) in enumerate(raw)
    ]
    t0 = 0.0
    try:
        for i, b in enumerate(data):
            if i == warmup:
                t0 = time.perf_counter()
            ps.train_step(b)
        return n * args.batch_size / (time.perf_counter() - t0)
    finally:
        for t in tables:
            if hasattr(t, "close"):
                t.close()


def _model_ready() -> bool:
    try:
        from freshrec.model import DeepFM, FeatureSpec, SparseOptimizer  # noqa: F401
    except ImportError:
        return False
    return True


# ---- capacity ---------------------------------------------------------------------------------------


def bytes_per_row(dim: int, role: str, n_ids: int, *, chunk: int = 200_000) -> float:
    """Measured `nbytes() / len` of a table holding `n_ids` ids at `dim`.

    role "training": Adagrad (embedding + accumulator), rows made by `apply_gradients`;
    role "serving": no optimizer state (SGD's width is 0), rows set by `assign`.
    """
    opt = Adagrad(lr=0.05) if role == "training" else SGD(lr=0.01)
    t = EmbeddingTable(TableConfig(name=f"cap{dim}{role}", dim=dim, optimizer=opt, initial_capacity=1 << 16))
    rng = np.random.default_rng(dim)
    ids = rng.integers(np.iinfo(np.int64).min, np.iinfo(np.int64).max, n_ids, dtype=np.int64)
    zeros = np.zeros((min(chunk, n_ids), dim), np.float32)
    for s in range(0, n_ids, chunk):
        part = ids[s : s + chunk]
        if role == "training":
            t.apply_gradients(part, zeros[: part.shape[0]], now=0.0)
        else:
            t.assign(part, zeros[: part.shape[0]])
    return t.nbytes() / len(t)


def capacity_rows(bpr: dict[str, float], hosts_gib: list[int], usable: float) -> list[dict]:
    """Shards needed per (role, dim, ids) on hosts of each size, from measured bytes per row."""
    out = []
    for key, b in sorted(bpr.items()):
        role, dim = key.split("_dim")
        for exp in (8, 9, 10):
            total = 10**exp * b
            row = {
                "role": role,
                "dim": int(dim),
                "ids": 10**exp,
                "bytes_per_row": b,
                "total_gib": total / 2**30,
            }
            for h in hosts_gib:
                row[f"shards_{h}gib"] = math.ceil(total / (h * 2**30 * usable))
            out.append(row)
    return out


# ---- main ----------------------------------------------------------------------------------------------


def main(args: argparse.Namespace) -> int:
    if args.batches is None:
        args.batches = 4 if args.quick else 30
    warmup = args.warmup if args.warmup is not None else (1 if args.quick else 3)
    n_cap = args.capacity_ids or (200_000 if args.quick else 1_000_000)
    hosts = [int(h) for h in args.hosts_gib.split(",") if h]
    use_deepfm = not args.no_deepfm and not args.quick and _model_ready()
    args.no_deepfm = not use_deepfm
    print(
        f"bench scale: {N_SLOTS} slots x dim {args.dim}, batch {args.batch_size}, Zipf {args.zipf} "
        f"(vocab up to {args.max_vocab:,}); per slot per batch: dedup + lookup + apply_gradients; "
        f"{args.batches} timed batches per worker after {warmup} warm-up",
        flush=True,
    )
    t_all = time.perf_counter()
    data = {
        w: slot_batches(
            warmup + args.batches,
            args.batch_size,
            max_vocab=args.max_vocab,
            zipf=args.zipf,
            seed=args.seed + w,
        )
        for w in range(2)
    }
    rows: list[dict] = []
    extra: dict = {"lookup_latency_us": {}, "deepfm": {}}
    for shards, workers, calls in _CONFIGS:
        rate = _inproc(shards, workers, data, args, warmup, calls)
        rows.append(
            {
                "impl": "in-process",
                "shards": shards,
                "workers": workers,
                "calls": calls,
                "examples_per_s": rate,
            }
        )
        _log(f"  in-process shards={shards} workers={workers} {calls}: {rate:,.0f} ex/s")
    from freshrec.ps.sharded import ShardedTable

    lt = ShardedTable(table_config("latency", args.dim), shards=2)
    ids = np.unique(data[0][0][0])
    lt.apply_gradients(ids, np.zeros((ids.shape[0], args.dim), np.float32), now=0.0)
    extra["lookup_latency_us"]["in-process"] = _lookup_latency_us(lt, ids, 30)
    extra["lookup_ids"] = int(ids.shape[0])
    if use_deepfm:
        extra["deepfm"]["in-process"] = _deepfm(
            args, lambda c: ShardedTable(c, shards=2), warmup=max(1, warmup)
        )
        _log(f"  deepfm on 2 in-process shards: {extra['deepfm']['in-process']:,.0f} ex/s")
    del data
    ray_reason = None
    if not args.no_ray:
        from freshrec.ps.ray_ps import ray_unavailable

        ray_reason = ray_unavailable()
        if ray_reason is None:
            _ray_part(args, warmup, rows, extra)
        else:
            _log(f"  ray: skipped ({ray_reason})")
    _log(f"  capacity: filling tables of {n_cap:,} ids ...")
    bpr = {
        f"{role}_dim{d}": bytes_per_row(d, role, n_cap) for d in (16, 64) for role in ("training", "serving")
    }
    cap = capacity_rows(bpr, hosts, args.usable)

    def rate_of(impl: str, shards: int, workers: int, calls: str) -> float | None:
        for r in rows:
            if (r["impl"], r["shards"], r["workers"], r["calls"]) == (impl, shards, workers, calls):
                return r["examples_per_s"]
        return None

    ratios = {}
    for r in rows:
        if r["impl"] == "ray":
            # grouped calls exist only on Ray: their baseline is the in-process per-slot run
            base_calls = "per slot" if r["calls"] == "grouped" else r["calls"]
            base = rate_of("in-process", r["shards"], r["workers"], base_calls)
            key = _key(r)
            ratios[key] = base / r["examples_per_s"] if base else None
    hop = ratios.get("2x1")

    print(
        f"\n{'tables':<12} {'shards':>6} {'workers':>7} {'calls':>9} {'examples/s':>12} {'in-proc/ray':>12}"
    )
    for r in rows:
        key = _key(r)
        ratio = f"{ratios[key]:.2f}" if r["impl"] == "ray" and ratios.get(key) else ""
        calls = r["calls"]
        rate = r["examples_per_s"]
        print(f"{r['impl']:<12} {r['shards']:>6} {r['workers']:>7} {calls:>9} {rate:>12,.0f} {ratio:>12}")
    if hop:
        print(f"ray_hop_ratio (in-process / Ray, 2 shards, 1 worker): {hop:.2f}")
    elif ray_reason:
        print(f"ray: not measured ({ray_reason})")
    lat = extra["lookup_latency_us"]
    print(
        f"lookup of {extra['lookup_ids']:,} distinct ids on 2 shards: in-process {lat['in-process']:,.0f} us"
        + (f", Ray {lat['ray']:,.0f} us" if "ray" in lat else "")
    )
    if args.quick:
        print("DeepFM step: skipped with --quick")
    elif extra["deepfm"]:
        print(
            "DeepFM training step, 2 shards: "
            + ", ".join(f"{k} {v:,.0f} ex/s" for k, v in extra["deepfm"].items())
        )
    print(f"\nmeasured bytes per row ({n_cap:,} ids): " + ", ".join(f"{k} {v:.1f}" for k, v in bpr.items()))
    print(
        f"{'role':<9} {'dim':>4} {'ids':>8} {'B/row':>7} {'total GiB':>10} "
        + " ".join(f"{f'{h} GiB hosts':>13}" for h in hosts)
    )
    for c in cap:
        head = f"{c['role']:<9} {c['dim']:>4} {c['ids']:>8.0e} {c['bytes_per_row']:>7.1f}"
        print(f"{head} {c['total_gib']:>10,.0f} " + " ".join(f"{c[f'shards_{h}gib']:>13,}" for h in hosts))
    took = time.perf_counter() - t_all
    print(f"(shards = ceil(ids x bytes/row / ({args.usable:.0%} of host memory)); bench took {took:.0f} s)")
    if args.json:
        out = {
            "throughput": rows,
            "ray_hop_ratio": hop,
            "ray_hop_ratio_by_config": ratios,
            "ray_skipped": ray_reason if not args.no_ray else "--no-ray",
            "lookup_latency_us": lat,
            "lookup_ids": extra["lookup_ids"],
            "deepfm_examples_per_s": extra["deepfm"] or None,
            "ray_startup_s": extra.get("ray_startup_s"),
            "bytes_per_row": bpr,
            "capacity_ids_measured": n_cap,
            "usable_fraction": args.usable,
            "capacity": cap,
            "batch_size": args.batch_size,
            "slots": N_SLOTS,
            "dim": args.dim,
            "batches": args.batches,
            "warmup": warmup,
        }
        print(json.dumps(out))
    return 0

"""`freshrec bench table`: the collisionless table against a dict and sorted-array search, in one run.

Measures, on N distinct random int64 ids (10M; 1M with --quick), dim 16, single thread unless stated:
index probes/s, lookups/s (probe + row gather), inserts/s (new ids through the training path,
into a table reserved for them, and into one that grows by itself),
the same lookups through a Python dict and numpy searchsorted, memory overhead per row, and the
speed-up of two threads looking up at once. Inserts and lookups go in batches of 65,536 ids,
the baselines too, as a trainer or a server would send them.
"""

from __future__ import annotations

import argparse
import gc
import json
import threading
import time

import numpy as np

from freshrec.commands.options import at_least
from freshrec.table import SGD, EmbeddingTable, Initializer, TableConfig

HELP = "benchmark the collisionless embedding table against a dict and searchsorted"
BATCH = 1 << 16  # ids per call, for inserts and lookups
EXAMPLE = "freshrec bench table --quick --json"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ids", type=at_least(1), default=None,
                        help="distinct ids (default 10M, 1M with --quick)")
    parser.add_argument("--dim", type=at_least(1), default=16)
    parser.add_argument("--quick", action="store_true", help="1M ids: under a minute")
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    parser.add_argument(
        "--no-reserve",
        action="store_true",
        help="let the index grow by itself instead of sizing it for all ids up front",
    )


def _best(fn, repeats: int = 3) -> float:
    """Best wall time of `repeats` calls (seconds)."""
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def run(*, n_ids: int, dim: int = 16, seed: int = 0, reserve: bool = True, log=print) -> dict:
    rng = np.random.default_rng(seed)
    ids = np.unique(rng.integers(-(2**63), 2**63 - 1, int(n_ids * 1.02), dtype=np.int64))
    ids = rng.permutation(ids)[:n_ids]
    cfg = TableConfig(
        name="bench",
        dim=dim,
        optimizer=SGD(lr=0.01),
        initializer=Initializer(kind="uniform"),
        initial_capacity=1024,
        max_load=0.9,
    )
    zeros = np.zeros((BATCH, dim), np.float32)
    ones = np.ones(BATCH, np.int64)
    # warm the kernels on a throwaway table
    warm = EmbeddingTable(cfg)
    warm.apply_gradients(ids[:1000], zeros[:1000], now=0.0, counts=ones[:1000])
    warm.lookup(ids[:1000])

    def insert_all(table: EmbeddingTable) -> float:
        t = time.perf_counter()
        for lo in range(0, n_ids, BATCH):
            chunk = ids[lo : lo + BATCH]
            table.apply_gradients(chunk, zeros[: chunk.shape[0]], now=0.0, counts=ones[: chunk.shape[0]])
        return n_ids / (time.perf_counter() - t)

    table = EmbeddingTable(cfg)
    t = time.perf_counter()
    if reserve:
        # size the index and commit row memory up front, as a user who knows the scale would
        table.reserve(n_ids)
    reserve_s = time.perf_counter() - t
    log(
        f"inserting {n_ids:,} ids (dim {dim}) through apply_gradients in batches of 65,536 "
        f"({reserve_s:.2f} s to reserve) ..."
    )
    inserts_per_s = insert_all(table)

    from freshrec.table.index import CuckooIndex

    bare = CuckooIndex(n_ids if reserve else 1024, max_load=0.9)
    t = time.perf_counter()
    bare.insert(ids, np.arange(n_ids, dtype=np.int32))
    index_inserts_per_s = n_ids / (time.perf_counter() - t)
    del bare

    n_q = n_ids
    q = ids[rng.integers(0, n_ids, n_q)]
    ix = table._index
    probe_out = np.empty(n_q, np.int32)
    log("probing ...")
    from freshrec.table import _index_kernels as K

    t_probe = _best(lambda: K.find_many(ix.words, ix.n_buckets, ix.obits, q, probe_out))
    # lookups go in batches of 65,536 ids, as a trainer or server sends them: one call for all
    # 10M queries would mostly time the first touch of a fresh 640 MB output array
    batches = [q[lo : lo + BATCH] for lo in range(0, n_q, BATCH)]

    def look(part: list[np.ndarray]) -> None:
        for b in part:
            table.lookup(b)

    log("lookups, one thread and two threads (interleaved, best of 5 each) ...")

    def two() -> None:
        th = [threading.Thread(target=look, args=(batches[k::2],)) for k in range(2)]
        for x in th:
            x.start()
        for x in th:
            x.join()

    # interleaved, so that a slow spell of the machine hits both sides of the ratio alike
    t_lookup = t_two = float("inf")
    for _ in range(5):
        t_lookup = min(t_lookup, _best(lambda: look(batches), repeats=1))
        t_two = min(t_two, _best(two, repeats=1))

    # baselines over a sample of the same queries (a dict of 10M entries is slow to query in full)
    n_base = min(n_q, 1_000_000)
    qb = q[:n_base]
    emb_flat = table.lookup(ids)  # row i <-> ids[i], as the baselines store it
    log("building the dict baseline ...")
    d = dict(zip(ids.tolist(), range(n_ids), strict=True))

    def dict_lookup(qs: np.ndarray) -> np.ndarray:
        get = d.get
        rows = np.fromiter((get(k, -1) for k in qs.tolist()), np.int64, qs.shape[0])
        out = emb_flat[rows]
        out[rows < 0] = 0
        return out

    base_batches = [qb[lo : lo + BATCH] for lo in range(0, n_base, BATCH)]
    t_dict = _best(lambda: [dict_lookup(b) for b in base_batches], repeats=2)
    np.testing.assert_array_equal(dict_lookup(qb), table.lookup(qb))  # the baselines answer the same
    d.clear()  # free the baseline before the next one
    gc.collect()
    order = np.argsort(ids)
    sorted_ids = ids[order]
    sorted_emb = emb_flat[order]

    def ss_lookup(qs: np.ndarray) -> np.ndarray:
        pos = np.searchsorted(sorted_ids, qs)
        pos[pos >= n_ids] = 0
        hit = sorted_ids[pos] == qs
        out = sorted_emb[pos]
        out[~hit] = 0
        return out

    t_ss = _best(lambda: [ss_lookup(b) for b in base_batches])
    np.testing.assert_array_equal(ss_lookup(qb), table.lookup(qb))

    log("inserting them again into a table that grows by itself (rehashes, memory faulted in) ...")
    grown = EmbeddingTable(cfg)
    growing_inserts_per_s = insert_all(grown)
    del grown

    res = {
        "ids": n_ids,
        "reserved": reserve,
        "dim": dim,
        "load_factor": round(table.load_factor, 4),
        "index_lookups_per_s": n_q / t_probe,
        "lookups_per_s": n_q / t_lookup,
        "inserts_per_s": inserts_per_s,
        "growing_inserts_per_s": growing_inserts_per_s,
        "reserve_s": round(reserve_s, 3),
        "index_inserts_per_s": index_inserts_per_s,
        "dict_lookups_per_s": n_base / t_dict,
        "searchsorted_lookups_per_s": n_base / t_ss,
        "overhead_bytes_per_row": round(table.overhead_bytes_per_row(), 2),
        "two_thread_speedup": t_lookup / t_two,
    }
    res["lookup_vs_dict"] = res["lookups_per_s"] / res["dict_lookups_per_s"]
    res["lookup_vs_searchsorted"] = res["lookups_per_s"] / res["searchsorted_lookups_per_s"]
    return res


def render(res: dict) -> str:
    m = 1e6
    rows = [
        ("index probes/s (probe only)", f"{res['index_lookups_per_s'] / m:8.1f} M"),
        ("lookups/s (probe + gather)", f"{res['lookups_per_s'] / m:8.1f} M"),
        (
            "  python dict + gather",
            f"{res['dict_lookups_per_s'] / m:8.2f} M   (table is {res['lookup_vs_dict']:.0f}x)",
        ),
        (
            "  numpy searchsorted + gather",
            f"{res['searchsorted_lookups_per_s'] / m:8.2f} M   "
            f"(table is {res['lookup_vs_searchsorted']:.1f}x)",
        ),
        ("inserts/s (new ids, training path)", f"{res['inserts_per_s'] / m:8.1f} M"),
        ("  into a table that grows by itself", f"{res['growing_inserts_per_s'] / m:8.1f} M"),
        ("  time to reserve (index + row memory)", f"{res['reserve_s']:8.2f} s"),
        ("  index inserts/s (probe + place)", f"{res['index_inserts_per_s'] / m:8.1f} M"),
        ("load factor", f"{res['load_factor']:8.3f}"),
        ("overhead bytes/row (index + meta)", f"{res['overhead_bytes_per_row']:8.1f}"),
        ("two-thread lookup speed-up", f"{res['two_thread_speedup']:8.2f} x"),
    ]
    w = max(len(a) for a, _ in rows)
    head = f"collisionless table, {res['ids']:,} distinct ids, dim {res['dim']}"
    return "\n".join([head, "-" * len(head)] + [f"{a:<{w}}  {b}" for a, b in rows])


def main(args: argparse.Namespace) -> int:
    n = args.ids or (1_000_000 if args.quick else 10_000_000)
    res = run(n_ids=n, dim=args.dim, reserve=not args.no_reserve)
    print(render(res))
    if args.json:
        print(json.dumps(res))
    return 0

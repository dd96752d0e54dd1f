"""The table's oracle: the simplest correct table (dicts), and random sequences of calls that a
table must answer exactly as it does (`check_table_oracle`).

The sequences: updates (duplicates, adversarial ids that share a bucket, the extreme int64s),
lookups (which must never insert), expiry, removal, touched-id takes and snapshot round trips, under
frequency filters, TTLs and capacity caps with LRU / LFU eviction. SGD with a power-of-two rate on
small integer gradients is exact in float32, so rows are compared bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from freshrec.errors import ConfigError
from freshrec.table import SGD, FilterConfig, Initializer, TableConfig

__all__ = ["DIM", "LR", "DictTable", "Op", "apply_op", "check_table_oracle", "oracle_config", "random_ops"]

I64_MIN, I64_MAX = -(2**63), 2**63 - 1
DIM = 3
LR = 0.5  # a power of two: SGD on small integer gradients is exact in float32
EXTREMES = (0, -1, 1, I64_MIN, I64_MAX, I64_MIN + 1, I64_MAX - 1)


class DictTable:
    """The simplest correct table: dicts. Mirrors the table contract's documented semantics for
    SGD (learning rate `LR`) from zero rows, `DIM` wide, with integer times."""

    def __init__(self, cfg: TableConfig) -> None:
        self.cfg = cfg
        self.rows: dict[int, list] = {}  # id -> [emb (float32 vec), last_rel, count]
        self.seen: dict[int, int] = {}  # filter counts of ids while they had no row
        self.epoch: int | None = None
        self.touched: set[int] = set()
        self.evicted: set[int] = set()

    def rel(self, now: int) -> int:
        if self.epoch is None:
            self.epoch = now
        return now - self.epoch

    def _evict(self, key: int) -> None:
        del self.rows[key]
        self.evicted.add(key)

    def update(self, ids: list[int], grads: np.ndarray, now: int) -> None:
        r = self.rel(now)
        summed: dict[int, np.ndarray] = {}
        occ: dict[int, int] = {}
        for k, g in zip(ids, grads, strict=True):
            summed[k] = summed.get(k, np.zeros(DIM, np.float32)) + g
            occ[k] = occ.get(k, 0) + 1
        new = sorted(k for k in summed if k not in self.rows)
        admitted = []
        for k in new:
            self.seen[k] = self.seen.get(k, 0) + occ[k]
            if self.seen[k] >= self.cfg.min_count:
                admitted.append(k)
        cap = self.cfg.capacity
        if cap is not None and admitted:
            need = len(self.rows) + len(admitted) - cap
            if need > 0:
                cands = [k for k in self.rows if k not in summed]
                if self.cfg.eviction == "lru":
                    cands.sort(key=lambda k: (self.rows[k][1], self.rows[k][2], k))
                else:
                    cands.sort(key=lambda k: (self.rows[k][2], self.rows[k][1], k))
                for k in cands[:need]:
                    self._evict(k)
            room = cap - len(self.rows)
            admitted = admitted[: max(room, 0)]
        for k in admitted:
            self.rows[k] = [np.zeros(DIM, np.float32), r, 0]
        for k, g in summed.items():
            if k in self.rows:
                row = self.rows[k]
                row[0] = (row[0] - np.float32(LR) * g).astype(np.float32)
                row[1] = r
                row[2] += occ[k]
                self.touched.add(k)

    def expire(self, now: int) -> None:
        if self.cfg.ttl_s is None or self.epoch is None:
            return
        before = (now - self.epoch) - int(self.cfg.ttl_s)
        for k in [k for k, v in self.rows.items() if v[1] < before]:
            self._evict(k)

    def remove(self, ids: list[int]) -> None:
        for k in set(ids):
            if k in self.rows:
                self._evict(k)

    def lookup(self, ids: list[int]) -> np.ndarray:
        return np.array(
            [self.rows[k][0] if k in self.rows else np.zeros(DIM, np.float32) for k in ids], dtype=np.float32
        ).reshape(len(ids), DIM)

    def take(self) -> tuple[set[int], set[int]]:
        t = {k for k in self.touched if k in self.rows}
        e = {k for k in self.evicted if k not in self.rows}
        self.touched, self.evicted = set(), set()
        return t, e


def oracle_config(*, min_count: int = 1, ttl_s: float | None = None, capacity: int | None = None,
                  eviction: str = "lru", name: str = "t") -> TableConfig:
    """A table config the oracle models: SGD(LR) from zero rows, DIM wide, a filter that forgets nothing."""
    return TableConfig(
        name=name,
        dim=DIM,
        optimizer=SGD(lr=LR),
        initializer=Initializer(kind="zeros"),
        min_count=min_count,
        ttl_s=ttl_s,
        capacity=capacity,
        eviction=eviction,  # type: ignore[arg-type]
        initial_capacity=4,
        filter=FilterConfig(width=1 << 16, depth=4, window_s=1e9),
    )


@dataclass(frozen=True, slots=True)
class Op:
    """One call: kind in update / lookup / expire / remove / take / snapshot; `ids` and `grads` for
    update / lookup / remove; `dt`: seconds the clock moves first (update, expire)."""

    kind: str
    ids: tuple[int, ...] = ()
    grads: tuple[tuple[int, ...], ...] = ()
    dt: int = 0


def apply_op(table: Any, oracle: DictTable, op: Op, now: int, load: Callable[[Any], Any]) -> tuple[Any, int]:
    """Apply `op` to both and check the table against the oracle; returns (table, now) after it
    (a snapshot op returns the table `load` rebuilt). Raises AssertionError on any difference."""
    ids = np.array(op.ids, dtype=np.int64)
    if op.kind == "update":
        now += op.dt
        grads = np.array(op.grads, dtype=np.float32).reshape(len(op.ids), DIM)
        table.apply_gradients(ids, grads, now=float(now))
        oracle.update(list(op.ids), grads, now)
    elif op.kind == "lookup":
        n = len(table)
        np.testing.assert_array_equal(table.lookup(ids), oracle.lookup(list(op.ids)))
        assert len(table) == n, "lookup must never insert"
    elif op.kind == "expire":
        now += op.dt
        table.evict_expired(float(now))
        oracle.expire(now)
    elif op.kind == "remove":
        table.remove(ids)
        oracle.remove(list(op.ids))
    elif op.kind == "take":
        got = table.take_touched()
        want_t, want_e = oracle.take()
        touched, evicted = set(got.ids.tolist()), set(got.evicted.tolist())
        assert touched == want_t, f"touched ids {sorted(touched)} != the oracle's {sorted(want_t)}"
        assert evicted == want_e, f"evicted ids {sorted(evicted)} != the oracle's {sorted(want_e)}"
        np.testing.assert_array_equal(got.embeddings, oracle.lookup(got.ids.tolist()))
    elif op.kind == "snapshot":
        table = load(table)
    else:
        msg = f"unknown op kind {op.kind!r}"
        raise ConfigError(msg)
    table.check_invariants()
    assert len(table) == len(oracle.rows), f"{len(table)} rows, the oracle {len(oracle.rows)} (after {op})"
    cap = oracle.cfg.capacity
    assert cap is None or len(table) <= cap, f"{len(table)} rows over the capacity {cap}"
    return table, now


def random_ops(rng: np.random.Generator, steps: int, *, same_bucket: Sequence[int] = ()) -> list[Op]:
    """A random call sequence (what the hypothesis test in tests/test_table.py draws, from a seed)."""
    pool = list(EXTREMES) + list(same_bucket)

    def some_ids(lo: int, hi: int) -> tuple[int, ...]:
        out = []
        for _ in range(int(rng.integers(lo, hi + 1))):
            kind = rng.integers(0, 4)
            if kind == 0:
                out.append(int(pool[int(rng.integers(0, len(pool)))]))
            elif kind == 1:
                out.append(int(rng.integers(0, 31)))
            elif kind == 2:
                out.append(int(rng.integers(-30, 0)))
            else:
                out.append(int(rng.integers(I64_MIN, I64_MAX, endpoint=True)))
        return tuple(out)

    kinds = ["update", "update", "update", "lookup", "expire", "remove", "take", "snapshot"]
    ops = []
    for _ in range(steps):
        kind = kinds[int(rng.integers(0, len(kinds)))]
        if kind == "update":
            ids = some_ids(1, 25)
            grads = tuple(tuple(int(x) for x in row) for row in rng.integers(-3, 4, (len(ids), DIM)))
            ops.append(Op("update", ids, grads, int(rng.integers(0, 5))))
        elif kind == "lookup":
            ops.append(Op("lookup", some_ids(0, 25)))
        elif kind == "expire":
            ops.append(Op("expire", dt=int(rng.integers(0, 31))))
        elif kind == "remove":
            ops.append(Op("remove", some_ids(0, 10)))
        else:
            ops.append(Op(kind))
    return ops


def check_table_oracle(
    make: Callable[[TableConfig], Any],
    *,
    load: Callable[[Any], Any] | None = None,
    sequences: int = 24,
    steps: int = 30,
    seed: int = 0,
    capacity: bool = True,
) -> None:
    """Run `sequences` random call sequences on tables from `make(config)` and on the dict oracle,
    over filter / TTL / capacity / eviction settings, checking every answer and, at the end, every
    row and count. `load(table)` rebuilds a table from its `state()` (default:
    `type(table).from_state(*table.state())`). `capacity=False` leaves out capacity caps: a table
    of several shards (`ShardedTable`, `RayShardedTable`) caps and evicts per shard, not over the
    whole table as the oracle does. Raises AssertionError naming what differed."""
    load = load or (lambda t: type(t).from_state(*t.state()))
    rng = np.random.default_rng(seed)
    for k in range(sequences):
        cfg = oracle_config(
            min_count=int(rng.choice([1, 1, 2, 3])),
            ttl_s=[None, 5.0, 20.0][int(rng.integers(0, 3))],
            capacity=[None, None, 6, 25][int(rng.integers(0, 4))] if capacity else None,
            eviction=["lru", "lfu"][int(rng.integers(0, 2))],
            name=f"oracle-{seed}-{k}",
        )
        ops = random_ops(rng, int(rng.integers(1, steps + 1)))
        run_ops(make(cfg), cfg, ops, load, what=f"sequence {k} (seed {seed}, {cfg})")


def run_ops(
    table: Any, cfg: TableConfig, ops: Sequence[Op], load: Callable[[Any], Any], *, what: str = ""
) -> Any:
    """Apply every op to `table` and a fresh oracle, then compare every row and count; returns the table."""
    oracle, now = DictTable(cfg), 1000
    try:
        for op in ops:
            table, now = apply_op(table, oracle, op, now, load)
        keys = list(oracle.rows)
        np.testing.assert_array_equal(table.lookup(np.array(keys, dtype=np.int64)), oracle.lookup(keys))
        counts = _counts(table, np.array(keys, dtype=np.int64))
        if counts is not None:
            assert counts == [oracle.rows[k][2] for k in keys], "row counts differ from the oracle's"
    except AssertionError as e:
        raise AssertionError(f"{what}: {e}") from e
    return table


def _counts(table: Any, ids: np.ndarray) -> list[int] | None:
    """The tables' per-row update counts, where the implementation exposes them (`row_state`)."""
    row_state = getattr(table, "row_state", None)
    if row_state is None:
        return None
    return [int(c) for c in row_state(ids)[2]]

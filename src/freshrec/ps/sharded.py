"""`ShardedTable`: one logical table split over N `EmbeddingTable` shards by a hash of the id.

It has the interface of `EmbeddingTable` (lookup, apply_gradients, take_touched,
evict_expired, assign, remove, state), so the model layer and the sync code do not care
whether a table is local, sharded in-process, or sharded over Ray actors. In-process shards
work in parallel on a thread pool: the table kernels release the GIL.

    shard(id) = mix64(id ^ SHARD_SALT) % n_shards    (independent of the index's own hashes)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any

import numpy as np
from numba import njit, uint64

from freshrec.checkpoint.format import strip_prefix, with_prefix
from freshrec.errors import ConfigError, SnapshotError
from freshrec.table import EmbeddingTable, TableConfig, TouchedRows
from freshrec.table._index_kernels import mix64
from freshrec.table.table import as_ids

__all__ = ["ShardedTable", "shard_of", "split_by_shard"]

_SHARD_SALT = uint64(0x5851F42D4C957F2D)


@njit(nogil=True, cache=True)
def _partition(ids, n_shards, shard_out, order_out, starts):
    """Counting sort of positions by shard: order_out lists positions of shard 0, then 1, ..."""
    n = ids.shape[0]
    counts = np.zeros(n_shards, np.int64)
    for i in range(n):
        s = np.int64(mix64(uint64(ids[i]) ^ _SHARD_SALT) % uint64(n_shards))
        shard_out[i] = s
        counts[s] += 1
    acc = 0
    for k in range(n_shards):
        starts[k] = acc
        acc += counts[k]
    starts[n_shards] = acc
    fill = starts[:n_shards].copy()
    for i in range(n):
        s = shard_out[i]
        order_out[fill[s]] = i
        fill[s] += 1


def _route(ids: np.ndarray, n_shards: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    shard = np.empty(ids.shape[0], np.int64)
    order = np.empty(ids.shape[0], np.int64)
    starts = np.empty(n_shards + 1, np.int64)
    _partition(ids, n_shards, shard, order, starts)
    return shard, order, starts


def shard_of(ids: np.ndarray, n_shards: int) -> np.ndarray:
    """The shard (int64) of each id."""
    return _route(as_ids(ids), n_shards)[0]


def split_by_shard(ids: np.ndarray, n_shards: int) -> tuple[np.ndarray, np.ndarray]:
    """(order, starts): positions of int64 `ids` grouped by shard; shard s holds the ids at
    positions order[starts[s]:starts[s + 1]]. Every sharded table routes ids with it."""
    return _route(ids, n_shards)[1:]


def shard_capacities(capacity: int | None, shards: int, *, name: str = "") -> list[int | None]:
    """Each shard's share of a table's `capacity` (they sum to it exactly; None: unbounded).
    Ids spread evenly over the shards, so a full shard evicts its least recent (or least
    frequent) rows while the table as a whole holds at most `capacity`."""
    if capacity is None:
        return [None] * shards
    if capacity < shards:
        msg = f"table {name!r}: capacity {capacity} is less than its {shards} shards (one row each at least)"
        raise ConfigError(msg)
    base, extra = divmod(capacity, shards)
    return [base + (1 if s < extra else 0) for s in range(shards)]


class ShardedTable:
    """A table over `shards` EmbeddingTables; same interface as EmbeddingTable. The table's
    `capacity` is split over the shards (`shard_capacities`)."""

    def __init__(
        self,
        config: TableConfig,
        *,
        shards: int = 1,
        tables: Sequence[EmbeddingTable] | None = None,
        pool: ThreadPoolExecutor | None = None,
    ) -> None:
        self.config = config
        self.name = config.name
        self.dim = config.dim
        if tables is None:
            per = max(config.initial_capacity // max(shards, 1), 16)
            caps = shard_capacities(config.capacity, shards, name=config.name)
            tables = [EmbeddingTable(replace(config, initial_capacity=per, capacity=c)) for c in caps]
        self.shards: list[EmbeddingTable] = list(tables)
        self.n_shards = len(self.shards)
        self._pool = (
            pool if pool is not None else (ThreadPoolExecutor(self.n_shards) if self.n_shards > 1 else None)
        )

    # ---- helpers -----------------------------------------------------------------------------
    def _split(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return split_by_shard(ids, self.n_shards)

    def _map(self, fn: Callable[[int], Any]) -> list[Any]:
        if self._pool is None:
            return [fn(s) for s in range(self.n_shards)]
        return list(self._pool.map(fn, range(self.n_shards)))

    # ---- EmbeddingTable interface --------------------------------------------------------------
    def __len__(self) -> int:
        return sum(len(t) for t in self.shards)

    def lookup(self, ids: object) -> np.ndarray:
        ids = as_ids(ids)
        if self.n_shards == 1:
            return self.shards[0].lookup(ids)
        order, starts = self._split(ids)
        out = np.empty((ids.shape[0], self.dim), np.float32)

        def one(s: int) -> None:
            pos = order[starts[s] : starts[s + 1]]
            if pos.shape[0]:
                out[pos] = self.shards[s].lookup(ids[pos])

        self._map(one)
        return out

    def contains(self, ids: object) -> np.ndarray:
        ids = as_ids(ids)
        out = np.empty(ids.shape[0], bool)
        order, starts = self._split(ids)
        for s in range(self.n_shards):
            pos = order[starts[s] : starts[s + 1]]
            out[pos] = self.shards[s].contains(ids[pos])
        return out

    def apply_gradients(
        self, ids: object, grads: np.ndarray, *, now: float, counts: np.ndarray | None = None
    ) -> None:
        ids = as_ids(ids)
        if self.n_shards == 1:
            self.shards[0].apply_gradients(ids, grads, now=now, counts=counts)
            return
        grads = np.ascontiguousarray(grads, np.float32)
        order, starts = self._split(ids)

        def one(s: int) -> None:
            pos = order[starts[s] : starts[s + 1]]
            if pos.shape[0]:
                c = None if counts is None else np.asarray(counts)[pos]
                self.shards[s].apply_gradients(ids[pos], grads[pos], now=now, counts=c)

        self._map(one)

    def assign(self, ids: object, embeddings: np.ndarray, *, now: float | None = None) -> None:
        ids = as_ids(ids)
        emb = np.ascontiguousarray(embeddings, np.float32)
        order, starts = self._split(ids)

        def one(s: int) -> None:
            pos = order[starts[s] : starts[s + 1]]
            if pos.shape[0]:
                self.shards[s].assign(ids[pos], emb[pos], now=now)

        self._map(one)

    def remove(self, ids: object) -> int:
        ids = as_ids(ids)
        order, starts = self._split(ids)
        return sum(self.shards[s].remove(ids[order[starts[s] : starts[s + 1]]]) for s in range(self.n_shards))

    def evict_expired(self, now: float) -> int:
        return sum(self._map(lambda s: self.shards[s].evict_expired(now)))

    def track(self, channel: str) -> None:
        for t in self.shards:
            t.track(channel)

    def take_touched(self, channel: str = "sync") -> TouchedRows:
        parts = self._map(lambda s: self.shards[s].take_touched(channel))
        return TouchedRows(
            ids=np.concatenate([p.ids for p in parts]),
            embeddings=np.concatenate([p.embeddings for p in parts]).reshape(-1, self.dim),
            evicted=np.concatenate([p.evicted for p in parts]),
        )

    def take_changes(self, channel: str) -> tuple[dict, dict[str, np.ndarray]]:
        """Each shard's `take_changes`, arrays under "shard<k>." (an incremental snapshot)."""
        meta: dict = {"shards": []}
        arrays: dict[str, np.ndarray] = {}
        for k, t in enumerate(self.shards):
            m, a = t.take_changes(channel)
            meta["shards"].append(m)
            arrays.update(with_prefix(f"shard{k}", a))
        return meta, arrays

    def apply_changes(self, meta: dict, arrays: dict[str, np.ndarray]) -> None:
        for k, (t, m) in enumerate(zip(self.shards, meta["shards"], strict=True)):
            t.apply_changes(m, strip_prefix(f"shard{k}", arrays))

    def export(self) -> tuple[np.ndarray, np.ndarray]:
        parts = [t.export() for t in self.shards]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]).reshape(
            -1, self.dim
        )

    def nbytes(self) -> int:
        return sum(t.nbytes() for t in self.shards)

    @property
    def evictions(self) -> int:
        return sum(t.evictions for t in self.shards)

    def check_invariants(self) -> None:
        for s, t in enumerate(self.shards):
            t.check_invariants()
            ids, _ = t.export()
            assert (shard_of(ids, self.n_shards) == s).all(), f"shard {s} holds ids of another shard"

    # ---- snapshot ----------------------------------------------------------------------------
    def state(self) -> tuple[dict, dict[str, np.ndarray]]:
        """(meta, arrays) with each shard's arrays under the prefix "shard<k>."."""
        meta: dict = {"config": self.config.to_dict(), "shards": []}
        arrays: dict[str, np.ndarray] = {}
        for k, t in enumerate(self.shards):
            m, a = t.state()
            meta["shards"].append(m)
            arrays.update(with_prefix(f"shard{k}", a))
        return meta, arrays

    @classmethod
    def from_state(
        cls, meta: dict, arrays: dict[str, np.ndarray], *, source: str = "<state>"
    ) -> ShardedTable:
        try:
            config = TableConfig.from_dict(meta["config"])
            shard_meta = list(meta["shards"])
        except (KeyError, TypeError, ValueError) as e:
            msg = f"{source}: not a sharded-table snapshot ({e!r})"
            raise SnapshotError(msg) from e
        tables = []
        for k, m in enumerate(shard_meta):
            sub = strip_prefix(f"shard{k}", arrays)
            tables.append(EmbeddingTable.from_state(m, sub, source=f"{source} shard {k}"))
        return cls(config, tables=tables)

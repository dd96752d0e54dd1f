"""`EmbeddingTable`: a collisionless embedding table, as in Monolith.

Each int64 id gets a row of its own (a cuckoo-hash index maps id -> row; rows live in chunked
storage), so two ids never share an embedding. The table grows without limit (or up to a
capacity with exact LRU/LFU eviction), forgets ids not seen for `ttl_s` seconds of data time,
admits an id only after `min_count` occurrences, and trains each row with its own sparse
optimizer state.

Semantics:
- `lookup(ids)` returns the rows of known ids and zeros for unknown or not-yet-admitted ids;
  it never inserts.
- `apply_gradients(ids, grads, now=...)` dedups ids and sums their gradients, admits new ids
  through the frequency filter, initializes their rows (a pure function of seed and id),
  applies the optimizer, sets last-seen to `now` and adds the occurrences to the count, and
  marks the ids touched. Gradients of ids the filter has not admitted yet are dropped.
- `take_touched()` returns the ids updated since the last take with their embeddings, and the
  ids evicted since then: exactly what a serving replica must upsert and delete.

Time is data time in seconds, passed in by the caller; the table never reads a clock.
Last-seen times are kept as whole seconds since the first `now` the table saw (int32), so an
id expires when ``floor(now) - floor(last_seen) > ttl_s``. Counts are exact up to INT32_MAX,
where they saturate (a row keeps one count byte; counts of 255 and more keep the excess in a
side map that only the ids seen that often use).

Memory per row beyond embedding + optimizer state: 9.1 bytes of index slot (7 slots per 64-byte
line) divided by the load factor (~10.2 at 0.9), and 5 bytes of last-seen and count.

Concurrency model: one readers-writer lock per table. `lookup`, `take_touched`-free reads and
`export` take it shared, so any number of threads look up at once (the kernels release the
GIL and run truly in parallel); every mutation takes it exclusively. A lookup therefore sees
each row entirely before or entirely after an update, never torn. Growth of the index happens
under the exclusive lock, so readers never see a half-rehashed index.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from freshrec.checkpoint.format import read_snapshot, strip_prefix, with_prefix, write_snapshot
from freshrec.errors import CapacityError, ConfigError, SnapshotError
from freshrec.table import _row_kernels as R
from freshrec.table._optim_kernels import apply_rows, init_state
from freshrec.table._rwlock import RWLock
from freshrec.table.config import TableConfig
from freshrec.table.filter import FrequencyFilter
from freshrec.table.index import CuckooIndex
from freshrec.table.storage import RowStore

__all__ = ["EmbeddingTable", "TouchedRows"]

_INIT_KIND = {"normal": R.INIT_NORMAL, "uniform": R.INIT_UNIFORM, "zeros": R.INIT_ZEROS}
_INT32_MIN, _INT32_MAX = -(2**31), 2**31 - 1


@dataclass(frozen=True)
class TouchedRows:
    """What changed in a table since the previous take.

    ids: int64 (n,) ids updated (present now); embeddings: float32 (n, dim) their values;
    evicted: int64 (m,) ids removed since (expired, capacity-evicted or removed), absent now.
    """

    ids: np.ndarray
    embeddings: np.ndarray
    evicted: np.ndarray


class _Changes:
    """Ids touched and evicted since a consumer's last take (memory bounded by compaction)."""

    __slots__ = ("evicted", "n", "touched")

    def __init__(self) -> None:
        self.touched: list[np.ndarray] = []
        self.n = 0
        self.evicted: list[np.ndarray] = []

    def mark(self, ids: np.ndarray, live: int) -> None:
        self.touched.append(ids.copy())
        self.n += ids.shape[0]
        if self.n > 4 * max(live, 1 << 16):
            merged = np.unique(np.concatenate(self.touched))
            self.touched, self.n = [merged], merged.shape[0]

    def peek(self) -> tuple[np.ndarray, np.ndarray]:
        t = np.unique(np.concatenate(self.touched)) if self.touched else np.empty(0, np.int64)
        e = np.unique(np.concatenate(self.evicted)) if self.evicted else np.empty(0, np.int64)
        return t, e

    def drain(self) -> tuple[np.ndarray, np.ndarray]:
        out = self.peek()
        self.touched, self.n, self.evicted = [], 0, []
        return out


def as_ids(ids: object) -> np.ndarray:
    """ids as a contiguous int64 vector; refuses floats, bools and non-1-D input."""
    a = np.asarray(ids)
    if a.ndim != 1:
        msg = f"ids must be a 1-D array, got shape {a.shape}"
        raise ConfigError(msg)
    if a.dtype != np.int64:
        if a.size and not np.issubdtype(a.dtype, np.integer):
            msg = f"ids must be integers, got dtype {a.dtype}"
            raise ConfigError(msg)
        if a.dtype == np.uint64 and a.size and a.max() > np.iinfo(np.int64).max:
            a = a.view(np.int64)
        a = a.astype(np.int64)
    return np.ascontiguousarray(a)


def _smallest(keys: np.ndarray, first: np.ndarray, second: np.ndarray, n: int) -> np.ndarray:
    """The n keys that come first in (first, second, key) order (int32, int32, int64), without
    sorting them all: a partition finds the n-th (first, second) pair, ties go by key. The same
    keys as ``keys[np.lexsort((keys, second, first))[:n]]`` in O(len) instead of O(len log len)."""
    if n >= keys.shape[0]:
        return keys
    off = np.int64(2**31)
    pair = ((first.astype(np.int64) + off).astype(np.uint64) << np.uint64(32)) | (
        second.astype(np.int64) + off
    ).astype(np.uint64)
    cut = np.partition(pair, n - 1)[n - 1]
    below = keys[pair < cut]
    tied = np.sort(keys[pair == cut])
    return np.concatenate([below, tied[: n - below.shape[0]]])


class EmbeddingTable:
    """A collisionless embedding table. See the module docstring for the contract."""

    def __init__(self, config: TableConfig) -> None:
        config.validate()
        self.config = config
        self.dim = config.dim
        self.name = config.name
        self._opt = config.optimizer
        self._kind = int(self._opt.kind)
        self._hyper = self._opt.hyper()
        self.width = self.dim + self._opt.state_width(self.dim)
        # chunks of ~16 MiB (address space only until rows are written: pages are mapped lazily)
        bits = int(min(18, max(10, math.floor(math.log2((16 << 20) / (4 * self.width))))))
        self._index = CuckooIndex(config.initial_capacity, max_load=config.max_load, seed=config.seed)
        self._rows = RowStore(self.width, chunk_bits=bits)
        self._filter = None
        if config.min_count > 1:
            self._filter = FrequencyFilter(config.filter, min_count=config.min_count, seed=config.seed)
        self.epoch: float | None = None  # data time of row "second 0"
        self._lock = RWLock()
        # change tracking per consumer ("sync" always; e.g. "snapshot" after track("snapshot"))
        self._changes: dict[str, _Changes] = {"sync": _Changes()}
        self.evictions = 0  # rows removed by expiry or capacity, since creation

    # ---- reading -----------------------------------------------------------------------------
    def __len__(self) -> int:
        return self._index.size

    @property
    def load_factor(self) -> float:
        return self._index.load_factor

    def lookup(self, ids: object) -> np.ndarray:
        """float32 (n, dim) embeddings of `ids`; zeros for unknown ids. Never inserts."""
        ids = as_ids(ids)
        out = np.empty((ids.shape[0], self.dim), dtype=np.float32)
        rows = np.empty(ids.shape[0], dtype=np.int32)
        with self._lock.read():
            ix = self._index
            R.lookup_gather(
                ix.words,
                ix.n_buckets,
                ix.obits,
                ids,
                self._rows.ptrs,
                self._rows.bits,
                self.width,
                self.dim,
                out,
                rows,
            )
        return out

    def contains(self, ids: object) -> np.ndarray:
        """bool (n,): which ids have a row."""
        ids = as_ids(ids)
        with self._lock.read():
            return self._index.find(ids) >= 0

    def row_state(self, ids: object) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(full rows float32 (n, width), last_seen float64 (n,) data time, count int64 (n,)).

        Missing ids give zero rows, last_seen NaN and count 0. For inspection and tests.
        """
        ids = as_ids(ids)
        with self._lock.read():
            rows = self._index.find(ids)
            have = rows >= 0
            full = np.zeros((ids.shape[0], self.width), dtype=np.float32)
            meta = np.zeros((ids.shape[0], 2), dtype=np.int32)
            if have.any():
                sub = np.empty((int(have.sum()), self.width), dtype=np.float32)
                R.gather_rows(self._rows.ptrs, self._rows.bits, self.width, rows[have], 0, self.width, sub)
                full[have] = sub
                meta[have] = self._rows.gather_meta(rows[have])
        last = np.full(ids.shape[0], np.nan)
        if self.epoch is not None:
            last[have] = self.epoch + meta[have, 0]
        return full, last, meta[:, 1].astype(np.int64)

    def export(self) -> tuple[np.ndarray, np.ndarray]:
        """(ids int64 (n,), embeddings float32 (n, dim)) of every row, in no particular order."""
        with self._lock.read():
            keys, rows = self._index.items()
            emb = np.empty((keys.shape[0], self.dim), dtype=np.float32)
            R.gather_rows(self._rows.ptrs, self._rows.bits, self.width, rows, 0, self.dim, emb)
        return keys, emb

    # ---- training ----------------------------------------------------------------------------
    def apply_gradients(
        self, ids: Any, grads: np.ndarray, *, now: float, counts: np.ndarray | None = None
    ) -> None:
        """One sparse optimizer step (see the module docstring).

        ids: int64 (n,); grads: float32 (n, dim); now: data time in seconds.
        counts: when given, ids must be distinct and counts[i] (>= 1) is how often ids[i]
        occurred in the batch (its gradient already summed); otherwise duplicates in ids are
        summed here and counted.
        """
        ids = as_ids(ids)
        grads = np.ascontiguousarray(grads, dtype=np.float32)
        if grads.shape != (ids.shape[0], self.dim):
            msg = (
                f"table {self.name!r}: grads must have shape ({ids.shape[0]}, {self.dim}), got {grads.shape}"
            )
            raise ConfigError(msg)
        if counts is None:
            order = np.argsort(ids, kind="stable")
            uids = np.empty_like(ids)
            ugrads = np.empty_like(grads)
            ucounts = np.empty(ids.shape[0], dtype=np.int64)
            m = R.dedup_sum(ids, grads, order, uids, ugrads, ucounts)
            ids, grads, counts = uids[:m], ugrads[:m], ucounts[:m]
        else:
            counts = np.ascontiguousarray(counts, dtype=np.int64)
        if ids.shape[0] == 0:
            return
        with self._lock.write():
            now_rel = self._rel(now)
            if self._filter is None and self.config.capacity is None:
                # every new id is admitted: find and insert in one pass over the index
                free, n_free = self._rows.free_list
                rows, new, taken = self._index.upsert(ids, free, n_free, self._rows.high)
                self._rows.claim(taken)
                if taken:
                    self._init(ids[new], rows[new])
            else:
                rows = self._index.find(ids)
                new = rows < 0
                if new.any():
                    rows = self._admit(ids, counts, rows, new, now)
                    keep = rows >= 0
                    if not keep.all():
                        ids, grads, counts, rows = ids[keep], grads[keep], counts[keep], rows[keep]
                        new = new[keep]
                if ids.shape[0] == 0:
                    return
            # new rows start their count here; the others add to theirs
            self._rows.touch(rows, now_rel, counts, fresh=new)
            apply_rows(self._kind, self._hyper, self._rows.ptrs, self._rows.bits, self.dim, rows, grads)
            self._mark_touched(ids)

    def _admit(self, ids, counts, rows, new, now):
        """Give rows to the new ids the filter admits (initialized, indexed; their metadata is
        the caller's to set); returns rows with -1 for the refused."""
        cand = ids[new]
        ccounts = counts[new]
        if self._filter is not None:
            ok = self._filter.admit(cand, ccounts, now)
        else:
            ok = np.ones(cand.shape[0], dtype=bool)
        if self.config.capacity is not None and ok.any():
            ok = self._make_room(ok, rows[~new])
        out = rows.copy()
        if ok.any():
            keys = cand[ok]
            fresh = self._rows.allocate(keys.shape[0])
            self._init(keys, fresh)
            self._index.insert(keys, fresh)
            pos = np.flatnonzero(new)[ok]
            out[pos] = fresh
        return out

    def _init(self, keys: np.ndarray, rows: np.ndarray) -> None:
        init = self.config.initializer
        R.init_rows(
            self._rows.ptrs,
            self._rows.bits,
            self.width,
            self.dim,
            rows,
            keys,
            _INIT_KIND[init.kind],
            float(init.scale),
            np.int64(self.config.seed),
        )
        if self._opt.state_width(self.dim):
            init_state(
                self._kind, self._hyper, self._rows.ptrs, self._rows.bits, self.dim, rows.astype(np.int64)
            )

    def _make_room(self, ok: np.ndarray, protect_rows: np.ndarray) -> np.ndarray:
        """Evict the least recently (lru) or least frequently (lfu) used rows so admitted ids fit.

        Rows of this batch are never evicted; when the batch alone exceeds the capacity, only
        the first admitted ids (in ascending id order) that fit get rows.
        """
        assert self.config.capacity is not None
        cap = int(self.config.capacity)
        n_new = int(ok.sum())
        need = len(self) + n_new - cap
        if need <= 0:
            return ok
        keys, rows = self._index.items()
        evictable = np.ones(self._rows.high, dtype=bool)
        evictable[protect_rows] = False
        evictable = evictable[rows]
        keys, rows = keys[evictable], rows[evictable]
        n_evict = min(need, keys.shape[0])
        if n_evict:
            meta = self._rows.gather_meta(rows)
            lru = self.config.eviction == "lru"
            self._remove_locked(_smallest(keys, meta[:, 0 if lru else 1], meta[:, 1 if lru else 0], n_evict))
        room = cap - len(self)
        if room < n_new:
            idx = np.flatnonzero(ok)
            ok = ok.copy()
            ok[idx[max(room, 0) :]] = False
        return ok

    # ---- serving-side writes -------------------------------------------------------------------
    def assign(self, ids: object, embeddings: np.ndarray, *, now: float | None = None) -> None:
        """Set the embeddings of `ids` exactly, inserting absent ids (no filter, no optimizer).

        For serving replicas applying deltas, and for restoring. Optimizer state of new rows
        is initialized as for a fresh row; existing state is kept. Duplicate ids: the last wins.
        """
        ids = as_ids(ids)
        emb = np.ascontiguousarray(embeddings, dtype=np.float32)
        if emb.shape != (ids.shape[0], self.dim):
            want = (ids.shape[0], self.dim)
            msg = f"table {self.name!r}: embeddings must have shape {want}, got {emb.shape}"
            raise ConfigError(msg)
        if ids.shape[0] == 0:
            return
        # last occurrence of each id wins
        rev_u, rev_idx = np.unique(ids[::-1], return_index=True)
        last = ids.shape[0] - 1 - rev_idx
        ids, emb = rev_u, emb[last]
        with self._lock.write():
            now_rel = self._rel(now) if now is not None else None
            rows = self._index.find(ids)
            new = rows < 0
            if new.any():
                if self.config.capacity is not None and len(self) + int(new.sum()) > self.config.capacity:
                    ok = self._make_room(np.ones(int(new.sum()), bool), rows[~new])
                    if not ok.all():
                        n_new, cap = int(new.sum()), self.config.capacity
                        msg = f"table {self.name!r}: {n_new} new rows exceed capacity {cap}"
                        raise CapacityError(msg)
                fresh = self._rows.allocate(int(new.sum()))
                self._init(ids[new], fresh)
                self._index.insert(ids[new], fresh)
                rows = rows.copy()
                rows[new] = fresh
            R.scatter_rows(self._rows.ptrs, self._rows.bits, self.width, rows, 0, emb)
            # new rows start at count 0; every row is stamped `now` when given (new ones second 0
            # without it)
            if now_rel is None:
                self._rows.touch(rows[new], 0, np.zeros(int(new.sum()), np.int64), fresh=True)
            else:
                self._rows.touch(rows, now_rel, np.zeros(rows.shape[0], np.int64), fresh=new)
            self._mark_touched(ids)

    def remove(self, ids: object) -> int:
        """Delete rows of `ids` (absent ids are ignored); returns how many were removed."""
        ids = np.unique(as_ids(ids))
        with self._lock.write():
            return self._remove_locked(ids)

    def _remove_locked(self, ids: np.ndarray) -> int:
        rows = self._index.delete(ids)
        hit = rows >= 0
        if hit.any():
            self._rows.release(rows[hit])
            for ch in self._changes.values():
                ch.evicted.append(ids[hit])
            self.evictions += int(hit.sum())
        return int(hit.sum())

    # ---- expiry ------------------------------------------------------------------------------
    def evict_expired(self, now: float) -> int:
        """Remove rows not seen for more than ttl_s (data time); returns how many went."""
        if self.config.ttl_s is None or self.epoch is None:
            return 0
        with self._lock.write():
            before = math.floor(now - self.epoch) - math.floor(self.config.ttl_s)
            before = max(min(before, _INT32_MAX), _INT32_MIN)
            n = len(self)
            keys = np.empty(n, dtype=np.int64)
            rows = np.empty(n, dtype=np.int32)
            ix = self._index
            k = R.expired(
                ix.words, ix.n_buckets, ix.obits, self._rows.mptrs, self._rows.bits, before, keys, rows
            )
            if k == 0:
                return 0
            return self._remove_locked(keys[:k])

    # ---- sync --------------------------------------------------------------------------------
    def _mark_touched(self, ids: np.ndarray) -> None:
        live = len(self)
        for ch in self._changes.values():
            ch.mark(ids, live)

    def track(self, channel: str) -> None:
        """Start tracking changes for another consumer (e.g. incremental snapshots)."""
        with self._lock.write():
            self._changes.setdefault(channel, _Changes())

    def take_touched(self, channel: str = "sync") -> TouchedRows:
        """Ids updated since the last take on `channel` (with their current embeddings) and ids
        evicted since; absent ids are reported only as evicted, present ones only as updated."""
        with self._lock.write():
            ids, rows, evicted = self._drain(channel)
            emb = np.empty((ids.shape[0], self.dim), dtype=np.float32)
            R.gather_rows(self._rows.ptrs, self._rows.bits, self.width, rows, 0, self.dim, emb)
        return TouchedRows(ids=ids, embeddings=emb, evicted=evicted)

    def take_changes(self, channel: str) -> tuple[dict, dict[str, np.ndarray]]:
        """Like `take_touched`, with full rows (optimizer state), last-seen and counts, as
        (meta, arrays) that `apply_changes` replays: an incremental snapshot of this table."""
        with self._lock.write():
            ids, rows, evicted = self._drain(channel)
            full = np.empty((ids.shape[0], self.width), dtype=np.float32)
            R.gather_rows(self._rows.ptrs, self._rows.bits, self.width, rows, 0, self.width, full)
            meta = self._rows.gather_meta(rows)
            info: dict[str, Any] = {
                "epoch": self.epoch,
                "evictions": self.evictions,
                "rows": int(ids.shape[0]),
            }
            if self._filter is not None:
                fmeta, farrays = self._filter.state()
                info["filter"] = fmeta
            arrays = {
                "ids": ids,
                "rows": full,
                "last_seen": meta[:, 0].copy(),
                "count": meta[:, 1].copy(),
                "evicted": evicted,
            }
            if self._filter is not None:
                arrays.update(with_prefix("filter", farrays))
        return info, arrays

    def apply_changes(self, meta: dict, arrays: dict[str, np.ndarray]) -> None:
        """Replay an incremental snapshot from `take_changes` on top of this table's state."""
        with self._lock.write():
            self._remove_locked(np.asarray(arrays["evicted"], np.int64))
            ids = np.asarray(arrays["ids"], np.int64)
            if ids.shape[0]:
                rows = self._index.find(ids)
                new = rows < 0
                if new.any():
                    fresh = self._rows.allocate(int(new.sum()))
                    self._index.insert(ids[new], fresh)
                    rows = rows.copy()
                    rows[new] = fresh
                R.scatter_rows(
                    self._rows.ptrs,
                    self._rows.bits,
                    self.width,
                    rows,
                    0,
                    np.ascontiguousarray(arrays["rows"], np.float32),
                )
                m = np.ascontiguousarray(
                    np.stack([arrays["last_seen"], arrays["count"]], axis=1).astype(np.int32)
                )
                self._rows.scatter_meta(rows, m)
            if meta.get("epoch") is not None:
                self.epoch = meta["epoch"]
            self.evictions = int(meta.get("evictions", self.evictions))
            if self._filter is not None and "filter" in meta:
                farrays = strip_prefix("filter", arrays)
                self._filter = type(self._filter).from_state(
                    self.config.filter,
                    meta["filter"],
                    farrays,
                    min_count=self.config.min_count,
                    seed=self.config.seed,
                )

    def _drain(self, channel: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(present touched ids, their rows, absent evicted ids) of a channel, which is reset."""
        ch = self._changes.get(channel)
        if ch is None:
            msg = f"table {self.name!r}: no change channel {channel!r} (call track() first)"
            raise ConfigError(msg)
        touched, evicted = ch.drain()
        rows = self._index.find(touched)
        live = rows >= 0
        if evicted.shape[0]:
            evicted = evicted[self._index.find(evicted) < 0]
        return touched[live], rows[live], evicted

    # ---- snapshot -----------------------------------------------------------------------------
    def state(self) -> tuple[dict, dict[str, np.ndarray]]:
        """The whole table as (JSON-able meta, arrays): rows with optimizer state, last-seen,
        counts, filter state and the not-yet-taken touched/evicted ids. Exact round trip."""
        with self._lock.read():
            keys, rows = self._index.items()
            full = np.empty((keys.shape[0], self.width), dtype=np.float32)
            R.gather_rows(self._rows.ptrs, self._rows.bits, self.width, rows, 0, self.width, full)
            meta = self._rows.gather_meta(rows)
            arrays = {"ids": keys, "rows": full, "last_seen": meta[:, 0].copy(), "count": meta[:, 1].copy()}
            for name, ch in self._changes.items():
                t, e = ch.peek()
                arrays[f"changes.{name}.touched"] = t
                arrays[f"changes.{name}.evicted"] = e
            info = {
                "config": self.config.to_dict(),
                "epoch": self.epoch,
                "evictions": self.evictions,
                "rows": int(keys.shape[0]),
                "width": self.width,
                "channels": sorted(self._changes),
            }
            if self._filter is not None:
                fmeta, farrays = self._filter.state()
                info["filter"] = fmeta
                arrays.update(with_prefix("filter", farrays))
        return info, arrays

    @classmethod
    def from_state(
        cls, meta: dict, arrays: dict[str, np.ndarray], *, source: str = "<state>"
    ) -> EmbeddingTable:
        """Inverse of `state()`; raises SnapshotError naming `source` when the parts disagree."""
        try:
            config = TableConfig.from_dict(meta["config"])
            n = int(meta["rows"])
            ids, full = arrays["ids"], arrays["rows"]
            last_seen, count = arrays["last_seen"], arrays["count"]
        except (KeyError, TypeError, ValueError) as e:
            msg = f"{source}: not an embedding-table snapshot ({e!r})"
            raise SnapshotError(msg) from e
        table = cls(config)
        if (
            ids.shape != (n,)
            or full.shape != (n, table.width)
            or last_seen.shape != (n,)
            or count.shape != (n,)
        ):
            msg = (
                f"{source}: table {config.name!r} arrays disagree: ids {ids.shape}, rows {full.shape} "
                f"(width {table.width}), last_seen {last_seen.shape}, count {count.shape}, rows={n}"
            )
            raise SnapshotError(msg)
        table.epoch = meta.get("epoch")
        table.evictions = int(meta.get("evictions", 0))
        if n:
            table._index.reserve(n)
            rows = table._rows.allocate(n)
            R.scatter_rows(
                table._rows.ptrs,
                table._rows.bits,
                table.width,
                rows,
                0,
                np.ascontiguousarray(full, np.float32),
            )
            m = np.ascontiguousarray(np.stack([last_seen, count], axis=1).astype(np.int32))
            table._rows.scatter_meta(rows, m)
            table._index.insert(np.ascontiguousarray(ids, np.int64), rows)
        if table._filter is not None and "filter" in meta:
            farrays = strip_prefix("filter", arrays)
            table._filter = type(table._filter).from_state(
                config.filter, meta["filter"], farrays, min_count=config.min_count, seed=config.seed
            )
        for name in meta.get("channels", []):
            ch = table._changes.setdefault(name, _Changes())
            t = np.asarray(arrays.get(f"changes.{name}.touched", np.empty(0, np.int64)), np.int64)
            ev = np.asarray(arrays.get(f"changes.{name}.evicted", np.empty(0, np.int64)), np.int64)
            ch.touched, ch.n, ch.evicted = (
                ([t] if t.shape[0] else []),
                t.shape[0],
                ([ev] if ev.shape[0] else []),
            )
        return table

    def save(self, path) -> None:
        """Write a snapshot directory (manifest + checksummed arrays, no pickle) at `path`."""
        meta, arrays = self.state()
        write_snapshot(path, kind="embedding_table", meta=meta, arrays=arrays)

    @classmethod
    def load(cls, path) -> EmbeddingTable:
        """Read a snapshot written by `save`; a corrupt or truncated file raises CorruptSnapshotError."""
        meta, arrays = read_snapshot(path, kind="embedding_table")
        return cls.from_state(meta, arrays, source=str(path))

    # ---- memory ------------------------------------------------------------------------------
    def nbytes(self) -> int:
        """Bytes held: index + row chunks + metadata + filter."""
        f = self._filter.nbytes if self._filter is not None else 0
        return self._index.nbytes + self._rows.nbytes_rows + self._rows.nbytes_meta + f

    def overhead_bytes_per_row(self) -> float:
        """Bytes per live row beyond embedding + optimizer state (index and metadata included)."""
        n = max(len(self), 1)
        payload = n * self.width * 4
        return (self.nbytes() - payload) / n

    def reserve(self, n: int) -> None:
        """Make room for n rows now: size the index and commit row memory (a bulk load then
        runs without rehashes or page faults)."""
        with self._lock.write():
            self._index.reserve(n)
            self._rows.reserve(n)

    def check_invariants(self) -> None:
        """Raise AssertionError if two live ids share a row or the index is inconsistent."""
        with self._lock.read():
            assert self._index.check() == 0, "cuckoo index invariant violated"
            keys, rows = self._index.items()
            assert np.unique(keys).shape[0] == keys.shape[0], "an id appears twice"
            assert np.unique(rows).shape[0] == rows.shape[0], "two ids share a row"
            assert rows.shape[0] == 0 or (rows.min() >= 0 and rows.max() < self._rows.high)
            free = self._rows._free[: self._rows._n_free]
            assert not np.isin(rows, free).any(), "a live row is on the free list"
            assert self._rows.live == keys.shape[0], (self._rows.live, keys.shape[0])

    # ---- time --------------------------------------------------------------------------------
    def _rel(self, now: float) -> int:
        if not math.isfinite(now):
            msg = f"table {self.name!r}: now must be a finite data time in seconds, got {now}"
            raise ConfigError(msg)
        if self.epoch is None:
            self.epoch = float(math.floor(now))
        rel = math.floor(now - self.epoch)
        return max(min(rel, _INT32_MAX), _INT32_MIN)

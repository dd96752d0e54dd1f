"""The cuckoo-hash index: int64 id -> int32 row number, collision-free.

Two hash functions pick two buckets of 7 slots each (one cache line per bucket; a slot keeps the
bits of the id's hash that its bucket does not tell, and the row: layout in `_index_kernels`).
Insertion takes a free slot in the emptier bucket, else displaces a resident to its other
bucket (a random walk of at most `max_kicks` steps). When a walk fails the index rehashes into
twice as many buckets, when the load passes `max_load` into 1.5x as many; only (id, row) pairs
move, never the rows themselves. Lookups read at most two buckets.

Every int64 is a valid id (0, negatives, INT64_MIN, INT64_MAX): emptiness is marked by a zero
row field (rows are stored plus one), never by a key value. Not thread-safe by itself:
`EmbeddingTable` locks around it.
"""

from __future__ import annotations

import mmap

import numpy as np

from freshrec.errors import CapacityError
from freshrec.table import _index_kernels as K

__all__ = ["CuckooIndex"]

_MAX_KICKS = 500


_MADV_POPULATE_WRITE = 23  # Linux >= 5.14: fault a whole range in one call


def zeroed_pages(nbytes: int) -> memoryview | np.ndarray:
    """Zeroed, page-aligned memory; big blocks ask the kernel for transparent huge pages.

    Random probes over a large index miss the TLB on every access with 4 KiB pages; 2 MiB pages
    make most of those misses go away. Big blocks are mapped lazily: see `populate`.
    """
    if nbytes < (2 << 20):
        buf = np.zeros(nbytes // 8 + 8, dtype=np.int64)
        off = (-buf.ctypes.data % 64) // 8
        return buf[off : off + nbytes // 8]
    mm = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    if hasattr(mmap, "MADV_HUGEPAGE"):
        mm.madvise(mmap.MADV_HUGEPAGE)
    return memoryview(mm)


def populate(arr: np.ndarray, lo: int, hi: int) -> None:
    """Fault in the pages of arr[lo:hi] (first axis) with one call, where the memory is a lazily
    mapped block from `zeroed_pages` and the kernel can (Linux >= 5.14); otherwise the pages
    fault in on first write, as usual. Far cheaper than taking the faults one at a time."""
    base = arr.base
    while base is not None and not isinstance(base, mmap.mmap):
        base = getattr(base, "obj", None) if isinstance(base, memoryview) else getattr(base, "base", None)
    if base is None or hi <= lo:
        return
    start = arr.__array_interface__["data"][0] + lo * arr.strides[0]
    origin = np.frombuffer(base, dtype=np.uint8, count=1).__array_interface__["data"][0]
    off = (start - origin) // mmap.PAGESIZE * mmap.PAGESIZE
    end = start - origin + (hi - lo) * arr.strides[0]
    try:
        base.madvise(_MADV_POPULATE_WRITE, off, min(end, len(base)) - off)
    except OSError:  # an older kernel: pages fault in on first write instead
        pass


def _aligned_words(n_words: int) -> np.ndarray:
    """A zeroed int64 array of n_words whose data starts on a 64-byte boundary."""
    return np.frombuffer(zeroed_pages(n_words * 8), dtype=np.int64)[:n_words]


def offset_bits(nb: int) -> int:
    """Bits of hi32(hash) that a bucket among nb does not pin down (see `_index_kernels`)."""
    width = -(-(1 << 32) // nb)  # the most hi32 values that share one bucket
    return max(1, (width - 1).bit_length())


def max_row_for(nb: int) -> int:
    """The largest row number a slot holds in an index of nb buckets (a slot's bits beyond
    the tag, less the empty mark; more buckets, shorter tags, more row bits)."""
    return min((1 << (K.SLOT_BITS - 33 - offset_bits(nb))) - 2, 2**31 - 1)


class CuckooIndex:
    """Maps distinct int64 ids to int32 rows. See the module docstring for the scheme."""

    def __init__(self, capacity_hint: int = 1024, *, max_load: float = 0.9, seed: int = 0) -> None:
        self.max_load = float(max_load)
        nb = self._buckets_for(max(capacity_hint, 1))
        self._rng = np.array([(seed * 0x9E3779B1 + 0x2545F491) & 0x7FFFFFFFFFFFFFFF or 1], dtype=np.int64)
        self.size = 0
        self.rehashes = 0
        self._alloc(nb)

    def _alloc(self, nb: int) -> None:
        nb = max(nb, K.MIN_BUCKETS)
        if nb >= 1 << 32:
            msg = f"cuckoo index cannot hold {nb} buckets (limit 2**32 - 1)"
            raise CapacityError(msg)
        words = _aligned_words(nb * K.WORDS).view(np.uint64)
        populate(words, 0, words.shape[0])  # empty slots are zeros, but the pages are all used
        self.n_buckets, self.words, self.obits = nb, words, offset_bits(nb)

    # ---- queries ---------------------------------------------------------------------------
    @property
    def slots(self) -> int:
        return self.n_buckets * K.SLOTS

    @property
    def load_factor(self) -> float:
        return self.size / self.slots

    @property
    def nbytes(self) -> int:
        return int(self.words.nbytes)

    @property
    def max_row(self) -> int:
        """The largest row number a slot can hold at this size."""
        return max_row_for(self.n_buckets)

    def find(self, keys: np.ndarray) -> np.ndarray:
        """int32 rows of `keys` (int64), -1 where absent."""
        keys = np.ascontiguousarray(keys, dtype=np.int64)
        out = np.empty(keys.shape[0], dtype=np.int32)
        K.find_many(self.words, self.n_buckets, self.obits, keys, out)
        return out

    def items(self) -> tuple[np.ndarray, np.ndarray]:
        """(keys int64, rows int32) of every live entry, in slot order."""
        keys = np.empty(self.size, dtype=np.int64)
        rows = np.empty(self.size, dtype=np.int32)
        n = K.collect(self.words, self.n_buckets, self.obits, keys, rows)
        assert n == self.size, (n, self.size)
        return keys, rows

    def check(self) -> int:
        """Number of invariant violations (each live key once, in one of its two buckets)."""
        return int(K.check_buckets(self.words, self.n_buckets, self.obits))

    # ---- updates ---------------------------------------------------------------------------
    def _fit_rows(self, top: int) -> None:
        """Grow until row numbers up to `top` fit in a slot. A slot has ~3 more row bits than the
        index has entries at full load, so rows handed out densely (as `RowStore` does) always
        fit; only sparse row numbers far above the entry count make the index grow here."""
        nb = self.n_buckets
        while top > max_row_for(nb):
            nb *= 2
        if nb != self.n_buckets:
            self._rehash(nb)

    def insert(self, keys: np.ndarray, rows: np.ndarray) -> None:
        """Insert pairs; `keys` must be absent from the index and distinct. Grows as needed."""
        keys = np.ascontiguousarray(keys, dtype=np.int64)
        rows = np.ascontiguousarray(rows, dtype=np.int32)
        n = keys.shape[0]
        if n == 0:
            return
        if self.size + n > self.slots * self.max_load:
            self._rehash(max(self._buckets_for(self.size + n), self.n_buckets * 3 // 2 + 1))
        self._fit_rows(int(rows.max()))
        while True:
            done, hk, hr = K.insert_many(
                self.words, self.n_buckets, self.obits, keys, rows, _MAX_KICKS, self._rng
            )
            if done == keys.shape[0] and hr == K.EMPTY:
                self.size += keys.shape[0]
                return
            # a displacement chain failed: everything before `done` is in, except the homeless pair
            self.size += done - 1
            keys = np.concatenate([np.array([hk], dtype=np.int64), keys[done:]])
            rows = np.concatenate([np.array([hr], dtype=np.int32), rows[done:]])
            self._rehash(self.n_buckets * 2)

    def upsert(
        self, keys: np.ndarray, free: np.ndarray, n_free: int, high: int
    ) -> tuple[np.ndarray, np.ndarray, int]:
        """Rows of the distinct `keys`, inserting absent ones with fresh rows in the same pass.

        Fresh rows are taken from the top of free[:n_free] first, then high, high + 1, ...;
        returns (rows int32, is_new bool, how many fresh rows were taken). Grows as needed.
        """
        keys = np.ascontiguousarray(keys, dtype=np.int64)
        n = keys.shape[0]
        rows = np.empty(n, dtype=np.int32)
        is_new = np.empty(n, dtype=np.bool_)
        if n and n > n_free:
            self._fit_rows(high + n - n_free - 1)
        lo, taken = 0, 0
        while lo < n:
            limit = int(self.slots * self.max_load) - self.size
            if limit <= 0:
                self._rehash(max(self._buckets_for(self.size + 1), self.n_buckets * 3 // 2 + 1))
                continue
            done, k, hk, hr = K.upsert_many(
                self.words,
                self.n_buckets,
                self.obits,
                keys[lo:],
                rows[lo:],
                is_new[lo:],
                free[: max(n_free - taken, 0)],
                max(n_free - taken, 0),
                high + max(taken - n_free, 0),
                limit,
                _MAX_KICKS,
                self._rng,
            )
            taken += k
            lo += done
            if hr == K.EMPTY:  # finished, or the load threshold was reached
                self.size += k
                if lo < n:
                    self._rehash(self.n_buckets * 3 // 2 + 1)
                continue
            # a displacement chain failed: all inserted keys are in but the homeless pair
            self.size += k - 1
            self._rehash(self.n_buckets * 2)
            self.insert(np.array([hk], dtype=np.int64), np.array([hr], dtype=np.int32))
        return rows, is_new, taken

    def delete(self, keys: np.ndarray) -> np.ndarray:
        """Remove `keys`; returns the int32 row each held (-1 where absent). Never shrinks."""
        keys = np.ascontiguousarray(keys, dtype=np.int64)
        out = np.empty(keys.shape[0], dtype=np.int32)
        K.delete_many(self.words, self.n_buckets, self.obits, keys, out)
        self.size -= int(np.count_nonzero(out != K.EMPTY))
        return out

    def reserve(self, n: int) -> None:
        """Grow now so that `n` entries fit under max_load without a rehash."""
        if n > self.slots * self.max_load:
            self._rehash(self._buckets_for(n))

    def _buckets_for(self, n: int) -> int:
        """Fewest buckets that hold n entries at (just under) max_load."""
        return max(K.MIN_BUCKETS, int(np.ceil(n / (K.SLOTS * self.max_load))))

    def _rehash(self, nb: int) -> None:
        words, old_nb, old_obits = self.words, self.n_buckets, self.obits
        while True:
            self._alloc(nb)
            self.rehashes += 1
            if K.rehash_into(
                words, old_nb, old_obits, self.words, self.n_buckets, self.obits, _MAX_KICKS, self._rng
            ):
                return
            nb = nb * 2

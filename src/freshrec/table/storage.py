"""Chunked row storage: rows never move once allocated; growth adds a chunk, freed rows are reused.

Row r lives at ``chunks[r >> bits][r & mask]`` (float32, width = dim + optimizer state). Its
metadata is 5 bytes: the last-seen time (int32 seconds since the table epoch) at
``last_seen[r >> bits][r & mask]`` and a count byte at ``count[r >> bits][r & mask]``; a count of
255 or more keeps 255 in the byte and the rest exactly in `overflow` (row -> excess), which
only the ids seen that often ever use. Kernels reach rows and metadata through `ptrs` / `mptrs`,
the chunks' base addresses (`_rowptr`).
Growing by a chunk never copies existing rows (unlike a doubling array), so a table of 10^8
rows grows without a pause proportional to its size.

Memory is committed as rows are handed out, not a chunk at a time: a chunk is only address
space until rows reach it, then its pages are faulted in a 2 MiB granule at a time with one
call (much cheaper than taking the faults one by one as rows are first written). `reserve(n)`
commits the memory of n rows up front. The byte counts report committed memory only.
"""

from __future__ import annotations

import sys

import numpy as np

from freshrec.errors import CapacityError
from freshrec.table import _row_kernels as R
from freshrec.table.index import populate, zeroed_pages

__all__ = ["RowStore"]

_GRANULE = 2 << 20  # bytes committed at a time (one transparent huge page)
_META_BYTES = 5  # last-seen int32 + count byte
_INT32_MAX = 2**31 - 1


class RowStore:
    """Allocates row numbers and holds row data in chunks of 2**chunk_bits rows."""

    def __init__(self, width: int, *, chunk_bits: int = 16) -> None:
        self.width = int(width)
        self.bits = int(chunk_bits)
        self.chunk_rows = 1 << self.bits
        self.chunks: list[np.ndarray] = []  # owners of the row memory
        self.meta: list[np.ndarray] = []  # per chunk: int32 last-seen times, then uint8 counts
        self.overflow: dict[int, int] = {}  # row -> count - 255, for rows counted 255 times or more
        self.ptrs = np.zeros(0, dtype=np.int64)  # base address of each chunk, for the kernels
        self.mptrs = np.zeros(0, dtype=np.int64)
        self.high = 0  # rows ever handed out: rows >= high are untouched
        self.committed = 0  # rows whose memory is faulted in (>= high)
        self._free = np.empty(0, dtype=np.int32)
        self._n_free = 0

    @property
    def capacity(self) -> int:
        return len(self.chunks) * self.chunk_rows

    @property
    def live(self) -> int:
        return self.high - self._n_free

    @property
    def nbytes_rows(self) -> int:
        return self._committed_bytes(max(self.width, 1) * 4)

    @property
    def nbytes_meta(self) -> int:
        # a dict entry with its two int objects: about 100 bytes
        over = sys.getsizeof(self.overflow) + 64 * len(self.overflow) if self.overflow else 0
        return self._committed_bytes(_META_BYTES) + self._free.nbytes + over

    def _committed_bytes(self, row_bytes: int) -> int:
        """Bytes of committed rows of `row_bytes` each, rounded up as the pages are mapped."""
        chunk = self.chunk_rows * row_bytes
        full, part = divmod(self.committed, self.chunk_rows)
        tail = part * row_bytes
        if chunk >= _GRANULE:  # mapped lazily, in granules
            tail = -(-tail // _GRANULE) * _GRANULE
        elif part:
            tail = chunk
        return full * chunk + min(tail, chunk)

    def _add_chunk(self) -> None:
        n = self.chunk_rows
        w = max(self.width, 1)
        rows = np.frombuffer(zeroed_pages(n * w * 4), dtype=np.float32)
        self.chunks.append(rows[: n * w].reshape(n, w))
        meta = np.frombuffer(zeroed_pages(n * _META_BYTES), dtype=np.uint8)
        self.meta.append(meta[: n * _META_BYTES])
        # new arrays (never resized in place): a kernel holding the old ones still sees valid memory
        self.ptrs = np.append(self.ptrs, np.int64(self.chunks[-1].__array_interface__["data"][0]))
        self.mptrs = np.append(self.mptrs, np.int64(self.meta[-1].__array_interface__["data"][0]))

    def _commit(self, upto: int) -> None:
        """Fault in the memory of rows [committed, upto), adding chunks as needed."""
        while upto > self.capacity:
            if self.capacity + self.chunk_rows > 2**31 - 1:
                msg = "a table holds at most 2**31 - 1 rows per shard; add shards"
                raise CapacityError(msg)
            self._add_chunk()
        if upto <= self.committed:
            return
        # whole granules of the row chunks; the metadata (5 bytes a row) faults in as written
        step = max(_GRANULE // (max(self.width, 1) * 4), 1)
        upto = min(-(-upto // step) * step, self.capacity)
        lo = self.committed
        while lo < upto:
            c = lo >> self.bits
            b = min(upto - (c << self.bits), self.chunk_rows)
            populate(self.chunks[c], lo & (self.chunk_rows - 1), b)
            lo = (c << self.bits) + b
        self.committed = upto

    def reserve(self, n: int) -> None:
        """Commit memory now for `n` live rows in all (freed rows count as room)."""
        self._commit(max(n, self.high))  # rows [0, high) are live or free: n - high fresh ones

    def allocate(self, n: int) -> np.ndarray:
        """n row numbers (int32), freed rows first; their contents are stale until written."""
        take = min(n, self._n_free)
        out = np.empty(n, dtype=np.int32)
        out[:take] = self._free[self._n_free - take : self._n_free]
        out[take:] = np.arange(self.high, self.high + n - take, dtype=np.int32)
        self.claim(n)
        return out

    def claim(self, k: int) -> None:
        """Mark k rows taken the way `CuckooIndex.upsert` takes them: the top of the free list
        first, then the rows from `high` on."""
        take = min(k, self._n_free)
        self._n_free -= take
        fresh = k - take
        if fresh:
            self._commit(self.high + fresh)
            self.high += fresh

    @property
    def free_list(self) -> tuple[np.ndarray, int]:
        return self._free, self._n_free

    # ---- metadata ----------------------------------------------------------------------------
    def touch(
        self, rows: np.ndarray, now_rel: int, counts: np.ndarray, *, fresh: np.ndarray | bool
    ) -> None:
        """last_seen = now_rel and count += counts, for distinct rows; count = counts where
        `fresh` (a bool per row, or one for all: rows just handed out, whose old count is stale)."""
        n = rows.shape[0]
        reset = np.full(n, fresh, dtype=np.bool_) if isinstance(fresh, bool) else fresh
        spill_rows = np.empty(n, dtype=np.int64)
        spill_vals = np.empty(n, dtype=np.int64)
        m = R.touch(self.mptrs, self.bits, rows, now_rel, counts, reset, spill_rows, spill_vals)
        if m:
            over = self.overflow
            cap = _INT32_MAX - R.COUNT_BYTE_MAX  # counts saturate at INT32_MAX
            for r, v in zip(spill_rows[:m].tolist(), spill_vals[:m].tolist(), strict=True):
                over[r] = min(v if v >= 0 else over.get(r, 0) - v - 1, cap)

    def gather_meta(self, rows: np.ndarray) -> np.ndarray:
        """int32 (n, 2): [last_seen, count] of each row."""
        out = np.empty((rows.shape[0], 2), dtype=np.int32)
        R.gather_meta(self.mptrs, self.bits, rows, out)
        if self.overflow:
            for i in np.flatnonzero(out[:, 1] == R.COUNT_BYTE_MAX).tolist():
                out[i, 1] += self.overflow.get(int(rows[i]), 0)
        return out

    def scatter_meta(self, rows: np.ndarray, values: np.ndarray) -> None:
        """Set [last_seen, count] of each row from int32 (n, 2) `values`."""
        values = np.ascontiguousarray(values, dtype=np.int32)
        R.scatter_meta(self.mptrs, self.bits, rows, values)
        big = values[:, 1] >= R.COUNT_BYTE_MAX
        if self.overflow:
            self._drop_overflow(rows[~big])
        for r, c in zip(rows[big].tolist(), values[big, 1].tolist(), strict=True):
            self.overflow[r] = c - R.COUNT_BYTE_MAX

    def _drop_overflow(self, rows: np.ndarray) -> None:
        held = np.fromiter(self.overflow, dtype=np.int64, count=len(self.overflow))
        for r in rows[np.isin(rows, held)].tolist():
            del self.overflow[r]

    def release(self, rows: np.ndarray) -> None:
        """Return rows to the free list (they are reused by later allocations)."""
        rows = np.asarray(rows, dtype=np.int32)
        need = self._n_free + rows.shape[0]
        if need > self._free.shape[0]:
            grown = np.empty(max(need, 2 * self._free.shape[0], 64), dtype=np.int32)
            grown[: self._n_free] = self._free[: self._n_free]
            self._free = grown
        self._free[self._n_free : need] = rows
        self._n_free = need
        if self.overflow:
            self._drop_overflow(rows)

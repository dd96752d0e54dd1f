"""A serving table in shared memory: one writer process, any number of reader processes.

Several server processes on one host read the same rows; only one process (the applier) writes
them. The table holds ids -> float32 rows of `dim` (no optimizer state, no metadata): what a
serving replica needs. Missing ids read as zeros; a lookup never inserts.

Files (under `root`, normally a folder of /dev/shm, so the pages are memory, not disk):

    <stem>.ctl        int64 [magic, generation]: which segment is current
    <stem>.<gen>      one segment: header int64[8] | keys int64[S] | vals int32[S] | rows float32[R, dim]

The index is open addressing (`freshrec.table._shared_kernels`). A segment never grows in place:
when rows or slots run out, the writer builds segment gen + 1 (twice the rows, all live rows
copied), then stores gen + 1 in the control file and unlinks the old segment (readers that still
map it keep valid memory until they let go). A reader checks the generation on each lookup and
maps the new segment when it changed. Pages of a segment are committed only where written (tmpfs
files are sparse), so unused capacity costs address space, not memory.

Never torn (a seqlock per segment): the writer makes the header's sequence number odd before it
changes a batch of at most `BATCH` rows and even after; a reader reads the number, looks up, and
reads it again; when it was odd or changed, the lookup is repeated. So a lookup returns every row
as it was before a batch or after it, never a mix, and a reader waits at most one batch. The
sequence number is read by Python around the numba lookup (a call the compiler cannot reorder
across), and the writer's stores happen in program order on x86-64 (TSO), which this relies on.
"""

from __future__ import annotations

import mmap
import os
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np

from freshrec.errors import ConfigError
from freshrec.table import _shared_kernels as K
from freshrec.table.config import TableConfig
from freshrec.table.table import as_ids

__all__ = ["BATCH", "SharedTableReader", "SharedTableWriter"]

BATCH = 4096  # rows changed per seqlock window
_MAGIC = 0x6672736854424C31  # "frshTBL1"
SEQ, LIVE, USED, SLOTS, ROWS, DIM, HIGH = 1, 2, 3, 4, 5, 6, 7
_HEADER = 8  # int64 words
_GEN = 1  # control word


class _Segment(NamedTuple):
    gen: int
    hdr: np.ndarray  # int64 (8,)
    keys: np.ndarray  # int64 (S,)
    vals: np.ndarray  # int32 (S,)
    rows: np.ndarray  # float32 (R, dim)


def _layout(slots: int, rows: int, dim: int) -> tuple[int, int, int]:
    """(offset of vals, offset of rows, file size) in bytes."""
    vals = 8 * _HEADER + 8 * slots
    rows_at = -(-(vals + 4 * slots) // 64) * 64
    return vals, rows_at, rows_at + 4 * rows * max(dim, 1)


def _view(buf: mmap.mmap, gen: int, writable: bool) -> _Segment:
    hdr = np.frombuffer(buf, np.int64, _HEADER)
    if int(hdr[0]) != _MAGIC:
        msg = "not a freshrec shared-table segment"
        raise ConfigError(msg)
    slots, rows, dim = int(hdr[SLOTS]), int(hdr[ROWS]), int(hdr[DIM])
    vals_at, rows_at, _ = _layout(slots, rows, dim)
    keys = np.frombuffer(buf, np.int64, slots, 8 * _HEADER)
    vals = np.frombuffer(buf, np.int32, slots, vals_at)
    data = np.frombuffer(buf, np.float32, rows * dim, rows_at).reshape(rows, dim)
    if not writable:
        for a in (hdr, keys, vals, data):
            a.flags.writeable = False
    return _Segment(gen, hdr, keys, vals, data)


def _pow2(n: int) -> int:
    return 1 << max(4, int(n - 1).bit_length())


class SharedTableWriter:
    """The one writer of a shared table (see the module docstring); also reads it.

    Args:
        root: folder of the files (created if missing); stem: the table's file name stem.
        dim: floats per row. capacity: rows to size the first segment for.
    """

    def __init__(self, root: str | Path, stem: str, *, dim: int, capacity: int = 1024) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.stem = stem
        self.dim = int(dim)
        if self.dim < 1:
            msg = f"a shared table needs dim >= 1, got {dim}"
            raise ConfigError(msg)
        ctl = self.root / f"{stem}.ctl"
        fd = os.open(ctl, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.ftruncate(fd, 16)
            self._ctl_buf = mmap.mmap(fd, 16)
        finally:
            os.close(fd)
        self._ctl = np.frombuffer(self._ctl_buf, np.int64, 2)
        self._ctl[0] = _MAGIC
        self._seg = self._new_segment(1, _pow2(capacity))
        self._free = np.zeros(self._seg.rows.shape[0], np.int32)
        self._n_free = 0
        self._ctl[_GEN] = 1

    # ---- segments ------------------------------------------------------------------------------
    def _path(self, gen: int) -> Path:
        return self.root / f"{self.stem}.{gen}"

    def _new_segment(self, gen: int, rows: int) -> _Segment:
        slots = 2 * rows  # load <= 1/2 when every row is live; tombstones may take it to 3/4
        _, _, size = _layout(slots, rows, self.dim)
        fd = os.open(self._path(gen), os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.ftruncate(fd, size)  # sparse: zeros (empty slots), committed where written
            buf = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        hdr = np.frombuffer(buf, np.int64, _HEADER)
        hdr[SLOTS], hdr[ROWS], hdr[DIM] = slots, rows, self.dim
        hdr[0] = _MAGIC
        return _view(buf, gen, writable=True)

    def _grow(self, extra: int) -> None:
        """Publish a new segment with room for `extra` more ids (live rows copied, renumbered)."""
        old = self._seg
        live = int(old.hdr[LIVE])
        rows = old.rows.shape[0]
        while live + extra > rows:
            rows *= 2
        new = self._new_segment(old.gen + 1, rows)
        n = K.rehash(old.keys, old.vals, old.rows, new.keys, new.vals, new.rows)
        assert n == live, (n, live)
        new.hdr[LIVE] = new.hdr[USED] = new.hdr[HIGH] = n
        self._seg = new
        self._free = np.zeros(rows, np.int32)
        self._n_free = 0
        self._ctl[_GEN] = new.gen  # the switch: readers map the new segment on their next lookup
        self._path(old.gen).unlink(missing_ok=True)

    def _room(self, extra: int) -> None:
        seg = self._seg
        hdr = seg.hdr
        fresh = max(0, extra - self._n_free)
        if int(hdr[HIGH]) + fresh > seg.rows.shape[0] or 4 * (int(hdr[USED]) + extra) > 3 * seg.keys.shape[0]:
            self._grow(extra)

    # ---- writing -------------------------------------------------------------------------------
    def assign(self, ids: object, rows: np.ndarray) -> None:
        """Rows of `ids` = `rows` (n, dim), inserting new ids; BATCH rows per seqlock window."""
        ids = as_ids(ids)
        rows = np.ascontiguousarray(rows, np.float32)
        if rows.ndim != 2 or rows.shape[0] != ids.shape[0] or rows.shape[1] != self.dim:
            msg = f"shared table {self.stem}: rows {rows.shape} for {ids.shape[0]} ids of dim {self.dim}"
            raise ConfigError(msg)
        for lo in range(0, ids.shape[0], BATCH):
            part, emb = ids[lo : lo + BATCH], rows[lo : lo + BATCH]
            self._room(part.shape[0])
            seg = self._seg
            hdr = seg.hdr
            hdr[SEQ] += 1  # odd: readers retry
            added, self._n_free, high, used = K.upsert(
                seg.keys, seg.vals, seg.rows, part, emb, self._free, self._n_free, int(hdr[HIGH])
            )
            hdr[HIGH] = high
            hdr[LIVE] += added
            hdr[USED] += used
            hdr[SEQ] += 1  # even: a consistent state again

    def remove(self, ids: object) -> int:
        """Remove `ids` (absent ones skipped); returns how many were there."""
        ids = as_ids(ids)
        total = 0
        for lo in range(0, ids.shape[0], BATCH):
            seg = self._seg
            hdr = seg.hdr
            hdr[SEQ] += 1
            n, self._n_free = K.remove(seg.keys, seg.vals, ids[lo : lo + BATCH], self._free, self._n_free)
            hdr[LIVE] -= n
            hdr[SEQ] += 1
            total += n
        return total

    def reserve(self, n: int) -> None:
        """Make room for `n` live rows now (one growth instead of several)."""
        live = int(self._seg.hdr[LIVE])
        if n > live:
            self._room(n - live)

    # ---- reading -------------------------------------------------------------------------------
    def __len__(self) -> int:
        return int(self._seg.hdr[LIVE])

    @property
    def generation(self) -> int:
        return self._seg.gen

    def lookup(self, ids: object) -> np.ndarray:
        ids = as_ids(ids)
        out = np.empty((ids.shape[0], self.dim), np.float32)
        seg = self._seg
        K.lookup(seg.keys, seg.vals, seg.rows, ids, out)
        return out

    def export(self) -> tuple[np.ndarray, np.ndarray]:
        """(ids, rows) of every live id, in slot order."""
        seg = self._seg
        n = int(seg.hdr[LIVE])
        ids = np.empty(n, np.int64)
        rows = np.empty((n, self.dim), np.float32)
        assert K.export(seg.keys, seg.vals, seg.rows, ids, rows) == n
        return ids, rows

    def close(self) -> None:
        """Remove the files (readers that map them keep their memory until they let go)."""
        self._path(self._seg.gen).unlink(missing_ok=True)
        (self.root / f"{self.stem}.ctl").unlink(missing_ok=True)


class SharedTableReader:
    """A read-only view of a shared table written by a `SharedTableWriter` in another process.

    Safe to call from several threads. `config` (optional) is what `CollisionlessEmbedding`
    reports for the layer; `retries` counts lookups repeated because a write overlapped them.
    """

    def __init__(self, root: str | Path, stem: str, *, config: TableConfig | None = None) -> None:
        self.root = Path(root)
        self.stem = stem
        fd = os.open(self.root / f"{stem}.ctl", os.O_RDONLY)
        try:
            self._ctl_buf = mmap.mmap(fd, 16, access=mmap.ACCESS_READ)
        finally:
            os.close(fd)
        self._ctl = np.frombuffer(self._ctl_buf, np.int64, 2)
        if int(self._ctl[0]) != _MAGIC:
            msg = f"{self.root / stem}.ctl: not a freshrec shared-table control file"
            raise ConfigError(msg)
        self._seg = self._map(int(self._ctl[_GEN]))
        self.dim = int(self._seg.hdr[DIM])
        self.config = config
        self.retries = 0

    def _map(self, gen: int) -> _Segment:
        fd = os.open(self.root / f"{self.stem}.{gen}", os.O_RDONLY)
        try:
            buf = mmap.mmap(fd, os.fstat(fd).st_size, access=mmap.ACCESS_READ)
        finally:
            os.close(fd)
        return _view(buf, gen, writable=False)

    def _segment(self) -> _Segment:
        seg = self._seg
        for _ in range(1000):
            gen = int(self._ctl[_GEN])
            if gen == seg.gen:
                return seg
            try:
                seg = self._map(gen)
            except FileNotFoundError:  # replaced again meanwhile: read the generation again
                time.sleep(0.001)
                continue
            self._seg = seg  # one reference assignment: other threads see old or new
            return seg
        msg = f"shared table {self.stem}: the generation kept changing"
        raise ConfigError(msg)

    def __len__(self) -> int:
        return int(self._segment().hdr[LIVE])

    @property
    def generation(self) -> int:
        return self._segment().gen

    def lookup(self, ids: object) -> np.ndarray:
        """float32 (n, dim) rows of `ids`, zeros for unknown ids; each row as before or after any
        write, never torn (module docstring)."""
        ids = as_ids(ids)
        out = np.empty((ids.shape[0], self.dim), np.float32)
        spins = 0
        while True:
            seg = self._segment()
            s1 = int(seg.hdr[SEQ])
            if not s1 & 1:
                K.lookup(seg.keys, seg.vals, seg.rows, ids, out)
                if int(seg.hdr[SEQ]) == s1:
                    return out
            self.retries += 1
            spins += 1
            if spins > 8:
                os.sched_yield()

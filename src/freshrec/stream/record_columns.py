"""Records (key, value) described by columns: a block of them is written straight from the
columns into the local log's frames by numba kernels (`freshrec.stream._import_kernels`), never
one Python object per record.

    b = RecordsBuilder(n)                      # n rows
    b.key.lit("r-"); b.key.int(request)         # key of row i: b"r-<request[i]>"
    b.value.lit('{"ts":'); b.value.number(ts); b.value.lit("}")
    recs = b.build()
    buf, ends = recs.frames(rows)              # frames of rows `rows`, in that order
    recs.pairs(rows)                           # the same records as (key, value) bytes

Numbers are written as text exactly as pyarrow's cast to string writes them (so a record built
here is byte for byte the one `pyarrow.compute` string joins build): int64 in decimal; a float64
that is a whole number of magnitude below 1e10 (and not -0.0) as that integer, any other float64
or float32 through pyarrow's cast (shortest round-trip text).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from freshrec.data.dataset import Ragged
from freshrec.stream import _import_kernels as k
from freshrec.stream.local_frames import (
    HEADER_BYTES,
    MAX_KEY_BYTES,
    MAX_RECORD_BYTES,
    frame_ends,
    seal_frames,
)

__all__ = ["ColumnRecords", "FrameBuffer", "Program", "RecordsBuilder"]


class Program:
    """The parts of a key or a value, in order (see `RecordsBuilder`)."""

    def __init__(self, builder: RecordsBuilder) -> None:
        self._b = builder
        self.ops: list[tuple[int, int]] = []

    def lit(self, text: str | bytes) -> Program:
        raw = text.encode() if isinstance(text, str) else bytes(text)
        if self.ops and self.ops[-1][0] == k.OP_LIT:  # one literal for adjacent ones
            raw = self._b._lits[self.ops.pop()[1]] + raw
        if raw:
            self.ops.append((k.OP_LIT, self._b._literal(raw)))
        return self

    def int(self, col: np.ndarray) -> Program:
        """An int64 column (n,), in decimal."""
        self.ops.append((k.OP_INT, self._b._int_column(np.asarray(col, dtype=np.int64))))
        return self

    def number(self, col: np.ndarray) -> Program:
        """A float64 column (n,) as pyarrow writes it (whole numbers below 1e10 as integers)."""
        x = np.asarray(col, dtype=np.float64)
        whole = np.all((np.abs(x) < 1e10) & (x == np.floor(x)) & ~((x == 0) & np.signbit(x)))
        if whole:
            return self.int(x.astype(np.int64))
        return self.text(pc.cast(pa.array(x), pa.string()))

    def float32(self, col: np.ndarray) -> Program:
        """A column as float32, as pyarrow writes it."""
        return self.text(pc.cast(pa.array(np.asarray(col, dtype=np.float32)), pa.string()))

    def text(self, col: pa.Array) -> Program:
        """A string or binary column (n,), its bytes as they are (nulls: empty)."""
        self.ops.append((k.OP_STR, self._b._text_column(col)))
        return self

    def ints(self, r: Ragged) -> Program:
        """A ragged int64 column: row i's values in decimal, joined by ","."""
        self.ops.append((k.OP_RAG, self._b._ragged_column(r)))
        return self

    def array(self) -> np.ndarray:
        return np.array(self.ops, dtype=np.int64).reshape(-1, 2)


class RecordsBuilder:
    """Describes n records: `key` and `value` are programs over shared columns of n rows."""

    def __init__(self, n: int) -> None:
        self.n = int(n)
        self.key = Program(self)
        self.value = Program(self)
        self._lits: list[bytes] = []
        self._lit_index: dict[bytes, int] = {}
        self._ints: list[np.ndarray] = []
        self._texts: list[pa.Array] = []
        self._rags: list[Ragged] = []

    def _check(self, m: int, what: str) -> None:
        if m != self.n:
            msg = f"{what} of {m} rows for records of {self.n}"
            raise ValueError(msg)

    def _literal(self, raw: bytes) -> int:
        i = self._lit_index.get(raw)
        if i is None:
            i = self._lit_index[raw] = len(self._lits)
            self._lits.append(raw)
        return i

    def _int_column(self, col: np.ndarray) -> int:
        self._check(len(col), "an int column")
        self._ints.append(col)
        return len(self._ints) - 1

    def _text_column(self, col: pa.Array) -> int:
        if isinstance(col, pa.ChunkedArray):
            col = col.combine_chunks()
        self._check(len(col), "a text column")
        self._texts.append(col)
        return len(self._texts) - 1

    def _ragged_column(self, r: Ragged) -> int:
        self._check(len(r.offsets) - 1, "a ragged column")
        self._rags.append(r)
        return len(self._rags) - 1

    def build(self) -> ColumnRecords:
        n = self.n
        lit_off = np.zeros(len(self._lits) + 1, np.int64)
        np.cumsum([len(x) for x in self._lits], out=lit_off[1:])
        lit_data = np.frombuffer(b"".join(self._lits), np.uint8) if self._lits else np.zeros(0, np.uint8)
        ints = np.stack(self._ints) if self._ints else np.zeros((0, n), np.int64)
        datas, str_off = [], np.zeros((len(self._texts), n + 1), np.int64)
        base = 0
        for j, col in enumerate(self._texts):
            col = pc.fill_null(col.cast(pa.large_binary()), b"")
            offs = np.frombuffer(col.buffers()[1], np.int64)[col.offset : col.offset + n + 1]
            data = np.frombuffer(col.buffers()[2], np.uint8) if col.buffers()[2] else np.zeros(0, np.uint8)
            lo, hi = int(offs[0]), int(offs[-1])
            datas.append(data[lo:hi])
            str_off[j] = offs - lo + base
            base += hi - lo
        str_data = np.concatenate(datas) if datas else np.zeros(0, np.uint8)
        vals, rag_off = [], np.zeros((len(self._rags), n + 1), np.int64)
        base = 0
        for j, r in enumerate(self._rags):
            lo, hi = int(r.offsets[0]), int(r.offsets[-1])
            vals.append(np.asarray(r.values[lo:hi], np.int64))
            rag_off[j] = np.asarray(r.offsets, np.int64) - lo + base
            base += hi - lo
        rag_vals = np.concatenate(vals) if vals else np.zeros(0, np.int64)
        return ColumnRecords(
            n,
            self.key.array(),
            self.value.array(),
            lit_data,
            lit_off,
            ints,
            str_data,
            str_off,
            rag_vals,
            rag_off,
        )


class FrameBuffer:
    """Memory that `ColumnRecords.blocks` writes its blocks into, kept from one block to the next
    (a fresh large array costs a page fault per page, more than writing into it)."""

    def __init__(self) -> None:
        self._buf = np.empty(0, np.uint8)
        self._ends = np.empty(0, np.int64)

    def take(self, nbytes: int, n: int) -> tuple[np.ndarray, np.ndarray]:
        """(uint8 (nbytes,), int64 (n,)) views of the kept memory, grown when too small."""
        if len(self._buf) < nbytes:
            self._buf = np.empty(max(nbytes, 2 * len(self._buf)), np.uint8)
        if len(self._ends) < n:
            self._ends = np.empty(max(n, 2 * len(self._ends)), np.int64)
        return self._buf[:nbytes], self._ends[:n]


@dataclass(frozen=True, eq=False)
class ColumnRecords:
    """n records as a key program, a value program and their columns (`RecordsBuilder.build`)."""

    n: int
    kops: np.ndarray
    vops: np.ndarray
    lit_data: np.ndarray
    lit_off: np.ndarray
    ints: np.ndarray
    str_data: np.ndarray
    str_off: np.ndarray
    rag_vals: np.ndarray
    rag_off: np.ndarray

    def __len__(self) -> int:
        return self.n

    @property
    def _columns(self) -> tuple[np.ndarray, ...]:
        """The columns every writing kernel takes, in its argument order."""
        return (
            self.lit_data,
            self.lit_off,
            self.ints,
            self.str_data,
            self.str_off,
            self.rag_vals,
            self.rag_off,
        )

    def _rows(self, rows: np.ndarray | None) -> np.ndarray:
        return np.arange(self.n, dtype=np.int64) if rows is None else np.asarray(rows, dtype=np.int64)

    def lengths(self, rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(key bytes, value bytes) of each row of `rows` (default all), int64."""
        rows = self._rows(rows)
        klen, vlen = np.empty(len(rows), np.int64), np.empty(len(rows), np.int64)
        k.lengths(
            self.kops,
            self.vops,
            rows,
            self.lit_off,
            self.ints,
            self.str_off,
            self.rag_vals,
            self.rag_off,
            klen,
            vlen,
        )
        return klen, vlen

    def frames(self, rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The local log's frames of rows `rows` (default all), in that order: (buf uint8, ends
        int64), frame i = buf[ends[i - 1]:ends[i]] (`freshrec.stream.local_frames.encode`'s
        bytes). Raises LogError when a key or a record is too long."""
        rows = self._rows(rows)
        return self._frames(rows, *self.lengths(rows))

    def _frames(self, rows: np.ndarray, klen: np.ndarray, vlen: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        ends = frame_ends(klen, vlen)
        buf = np.empty(int(ends[-1]) if len(ends) else 0, np.uint8)
        k.write_frames(
            buf,
            ends,
            self.kops,
            self.vops,
            rows,
            *self._columns,
        )
        seal_frames(buf, ends, klen)
        return buf, ends

    @cached_property
    def row_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """(key, frame) bytes that row i's key and frame never exceed, int64 (n,) each: literals,
        20 characters per int, the row's text, 21 per ragged value, the header."""

        def bound(ops: np.ndarray) -> np.ndarray:
            fixed, var = 0, np.zeros(self.n, np.int64)
            for op, a in ops.tolist():
                if op == k.OP_LIT:
                    fixed += int(self.lit_off[a + 1] - self.lit_off[a])
                elif op == k.OP_INT:
                    fixed += 20
                elif op == k.OP_STR:
                    var += np.diff(self.str_off[a])
                else:
                    var += 21 * np.diff(self.rag_off[a])
            return var + fixed

        key = bound(self.kops)
        return key, HEADER_BYTES + key + bound(self.vops)

    def check_lengths(self, rows: np.ndarray) -> None:
        """Raise LogError when a key or a record of `rows` is too long for the local log."""
        key, frame = self.row_bounds
        if self.n and (int(key.max()) > MAX_KEY_BYTES or int(frame.max()) > MAX_RECORD_BYTES):
            frame_ends(*self.lengths(rows))  # raises when one really is too long

    def split(self, rows: np.ndarray, block_bytes: int = 4 << 20) -> list[tuple[int, int]]:
        """Ranges [i, j) of `rows`, in order, whose frames take at most `block_bytes` by their
        bounds (one row at least each)."""
        ends = np.cumsum(self.row_bounds[1][rows])
        out, i = [], 0
        while i < len(rows):
            base = int(ends[i - 1]) if i else 0
            j = max(i + 1, int(np.searchsorted(ends, base + block_bytes, side="right")))
            out.append((i, j))
            i = j
        return out

    def block(self, rows: np.ndarray, scratch: FrameBuffer) -> tuple[np.ndarray, np.ndarray]:
        """The frames of `rows` (`frames(rows)`), written in one pass per frame (key, value, header
        and crc) into `scratch`'s memory, sized by the rows' bounds. Lengths unchecked
        (`check_lengths`)."""
        rows = np.ascontiguousarray(rows, dtype=np.int64)
        bounds = np.ascontiguousarray(self.row_bounds[1][rows])
        buf, ends = scratch.take(int(bounds.sum()), len(rows))
        c = k.write_block(
            buf,
            ends,
            self.kops,
            self.vops,
            rows,
            bounds,
            *self._columns,
        )
        assert c == len(rows), "the bounds hold every frame"
        return buf[: ends[c - 1]] if c else buf[:0], ends[:c]

    def blocks(
        self,
        rows: np.ndarray | None = None,
        *,
        scratch: FrameBuffer | None = None,
        block_bytes: int = 4 << 20,
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """`frames(rows)` in blocks of at most `block_bytes` by their bounds (at least one frame
        each), each (buf, ends) as `frames` gives them (`block`): a block is valid until the next
        one is drawn. Raises LogError when a key or a record is too long."""
        rows = self._rows(rows)
        self.check_lengths(rows)
        scratch = scratch or FrameBuffer()
        for i, j in self.split(rows, block_bytes):
            yield self.block(rows[i:j], scratch)

    def pairs(self, rows: np.ndarray | None = None) -> list[tuple[bytes, bytes]]:
        """The (key, value) bytes of rows `rows` (default all), in that order."""
        rows = self._rows(rows)
        klen, vlen = self.lengths(rows)
        buf, ends = self._frames(rows, klen, vlen)
        raw = buf.tobytes()
        starts = np.concatenate([[0], ends[:-1]]) + HEADER_BYTES
        out = []
        for s, kl, vl in zip(starts.tolist(), klen.tolist(), vlen.tolist(), strict=True):
            out.append((raw[s : s + kl], raw[s + kl : s + kl + vl]))
        return out

    def key_crcs(self, rows: np.ndarray | None = None) -> np.ndarray:
        """zlib.crc32 of each key of `rows` (default all), int64: what `partition_for` hashes."""
        rows = self._rows(rows)
        out = np.empty(len(rows), np.int64)
        k.key_crcs(*(self.kops, rows, *self._columns, out))  # one star: numba's stub counts arguments
        return out

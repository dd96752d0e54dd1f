"""Numba kernels that write records from columns: each record's key and value are the output of a
small program run on one row of the columns (see `freshrec.stream.record_columns`).

A program is an int64 array (k, 2) of (op, arg):

    OP_LIT  arg = literal number     its bytes, lit_data[lit_off[arg]:lit_off[arg + 1]]
    OP_INT  arg = int column         ints[arg, row] in decimal ("-12", "0")
    OP_STR  arg = text column        str_data[str_off[arg, row]:str_off[arg, row + 1]]
    OP_RAG  arg = ragged int column  rag_vals[rag_off[arg, row]:rag_off[arg, row + 1]] in decimal,
                                     joined by "," ("" for none)

Example: ops [(LIT, 0), (INT, 0), (LIT, 1)] with literals ['{"id":', '}'] and ints [[7, -3]] write
`{"id":7}` for row 0 and `{"id":-3}` for row 1.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from freshrec.stream.local_frames import HEADER_BYTES, _crc32, seal_frame

OP_LIT, OP_INT, OP_STR, OP_RAG = 0, 1, 2, 3
_INT64_MIN = np.int64(-(2**63))
_INT64_MIN_TEXT = np.frombuffer(b"-9223372036854775808", dtype=np.uint8).copy()


_POW10 = np.array([10**i for i in range(1, 19)], dtype=np.int64)  # 10 .. 10^18
_PAIRS = np.frombuffer(b"".join(b"%02d" % i for i in range(100)), dtype=np.uint8).copy()


@njit(cache=True, nogil=True, inline="always")
def _digits(x: int) -> int:
    """Decimal digits of 0 <= x < 2^63 (a few comparisons: _POW10[i] = 10^(i + 1))."""
    if x < 100_000_000:
        if x < 10_000:
            return 1 + (x >= 10) + (x >= 100) + (x >= 1000)
        return 5 + (x >= 100_000) + (x >= 1_000_000) + (x >= 10_000_000)
    n = 9
    while n < 19 and x >= _POW10[n - 1]:
        n += 1
    return n


@njit(cache=True, nogil=True, inline="always")
def _int_chars(x: int) -> int:
    """Characters of int64 `x` in decimal."""
    if x == _INT64_MIN:
        return 20
    if x < 0:
        return 1 + _digits(-x)
    return _digits(x)


@njit(cache=True, nogil=True, inline="always")
def _put_int(out: np.ndarray, p: int, x: int) -> int:
    """Write int64 `x` in decimal at out[p]; returns the index after it."""
    if x == _INT64_MIN:
        for q in range(20):
            out[p + q] = _INT64_MIN_TEXT[q]
        return p + 20
    if x < 0:
        out[p] = 45  # -
        p += 1
        x = -x
    n = _digits(x)
    q = p + n
    while x >= 100:  # two digits a step, from the right
        r = (x % 100) * 2
        x //= 100
        q -= 2
        out[q] = _PAIRS[r]
        out[q + 1] = _PAIRS[r + 1]
    if x >= 10:
        q -= 2
        out[q] = _PAIRS[2 * x]
        out[q + 1] = _PAIRS[2 * x + 1]
    else:
        out[q - 1] = 48 + x
    return p + n


@njit(cache=True, nogil=True, inline="always")
def _length(ops, row, lit_off, ints, str_off, rag_vals, rag_off) -> int:
    n = 0
    for j in range(ops.shape[0]):
        op, a = ops[j, 0], ops[j, 1]
        if op == 0:
            n += lit_off[a + 1] - lit_off[a]
        elif op == 1:
            n += _int_chars(ints[a, row])
        elif op == 2:
            n += str_off[a, row + 1] - str_off[a, row]
        else:
            s, e = rag_off[a, row], rag_off[a, row + 1]
            if e > s:
                n += e - s - 1
            for k in range(s, e):
                n += _int_chars(rag_vals[k])
    return n


@njit(cache=True, nogil=True, inline="always")
def _put(out, p, ops, row, lit_data, lit_off, ints, str_data, str_off, rag_vals, rag_off) -> int:
    for j in range(ops.shape[0]):
        op, a = ops[j, 0], ops[j, 1]
        if op == 0:
            for q in range(lit_off[a], lit_off[a + 1]):
                out[p] = lit_data[q]
                p += 1
        elif op == 1:
            p = _put_int(out, p, ints[a, row])
        elif op == 2:
            for q in range(str_off[a, row], str_off[a, row + 1]):
                out[p] = str_data[q]
                p += 1
        else:
            s, e = rag_off[a, row], rag_off[a, row + 1]
            for k in range(s, e):
                if k > s:
                    out[p] = 44  # ,
                    p += 1
                p = _put_int(out, p, rag_vals[k])
    return p


@njit(cache=True, nogil=True)
def lengths(kops, vops, rows, lit_off, ints, str_off, rag_vals, rag_off, klen, vlen) -> None:
    """klen[i], vlen[i] = bytes of the key and the value of row rows[i]."""
    for i in range(rows.shape[0]):
        r = rows[i]
        klen[i] = _length(kops, r, lit_off, ints, str_off, rag_vals, rag_off)
        vlen[i] = _length(vops, r, lit_off, ints, str_off, rag_vals, rag_off)


@njit(cache=True, nogil=True)
def write_frames(
    buf, ends, kops, vops, rows, lit_data, lit_off, ints, str_data, str_off, rag_vals, rag_off
) -> None:
    """Write the key and value of row rows[i] into frame i of `buf` (the frame ending at ends[i],
    key first, after a header left for `seal_frames`)."""
    start = 0
    for i in range(rows.shape[0]):
        r = rows[i]
        p = _put(
            buf, start + HEADER_BYTES, kops, r, lit_data, lit_off, ints, str_data, str_off, rag_vals, rag_off
        )
        _put(buf, p, vops, r, lit_data, lit_off, ints, str_data, str_off, rag_vals, rag_off)
        start = ends[i]


@njit(cache=True, nogil=True)
def write_block(
    buf, ends, kops, vops, rows, bounds, lit_data, lit_off, ints, str_data, str_off, rag_vals, rag_off
) -> int:
    """Frame rows rows[0], rows[1], ... into `buf` from byte 0, one pass each: key, value, then
    the header and its crc32 (`seal_frame`); ends[c] = the end of frame c. Stops before row i when
    fewer than bounds[i] (no longer than its frame) bytes of `buf` are left; returns how many rows
    it framed."""
    cap = buf.shape[0]
    p = 0
    c = 0
    while c < rows.shape[0] and p + bounds[c] <= cap:
        r = rows[c]
        q = _put(
            buf, p + HEADER_BYTES, kops, r, lit_data, lit_off, ints, str_data, str_off, rag_vals, rag_off
        )
        e = _put(buf, q, vops, r, lit_data, lit_off, ints, str_data, str_off, rag_vals, rag_off)
        seal_frame(buf, p, e, q - p - HEADER_BYTES)
        ends[c] = e
        c += 1
        p = e
    return c


@njit(cache=True, nogil=True)
def key_crcs(kops, rows, lit_data, lit_off, ints, str_data, str_off, rag_vals, rag_off, out) -> None:
    """out[i] = zlib.crc32 of the key of row rows[i]."""
    tmp = np.empty(256, dtype=np.uint8)
    for i in range(rows.shape[0]):
        r = rows[i]
        n = _length(kops, r, lit_off, ints, str_off, rag_vals, rag_off)
        if n > tmp.shape[0]:
            tmp = np.empty(2 * n, dtype=np.uint8)
        _put(tmp, 0, kops, r, lit_data, lit_off, ints, str_data, str_off, rag_vals, rag_off)
        out[i] = _crc32(tmp, 0, n)

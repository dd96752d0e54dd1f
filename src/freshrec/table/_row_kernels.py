"""Numba kernels over chunked row storage (see `freshrec.table.storage`).

Row r is a float32 vector ``[embedding (dim) | optimizer state]`` of `width` floats and its
metadata a last-seen time (int32 seconds since the table's epoch) and a count byte (counts of
255 and more keep the excess in `RowStore`'s overflow map); kernels reach both through the
chunk address arrays `ptrs` / `mptrs` (see `_rowptr`).
"""

from __future__ import annotations

import numpy as np
from numba import njit, uint64

from freshrec.table import _index_kernels as K
from freshrec.table._prefetch import prefetch_addr
from freshrec.table._rowptr import count_of, last_seen_of, row_of

INT32_MAX = 2**31 - 1
COUNT_BYTE_MAX = 255
INIT_NORMAL, INIT_UNIFORM, INIT_ZEROS = 0, 1, 2


@njit(nogil=True, cache=True)
def lookup_gather(words, nb, obits, keys, ptrs, bits, width, dim, out, rows_out):
    """out[i] = embedding of keys[i] (zeros when absent); rows_out[i] = its row or -1.

    Two-stage software pipeline: buckets are prefetched 2*AHEAD ahead, rows AHEAD ahead.
    """
    n = keys.shape[0]
    A = K.AHEAD
    mask = (1 << bits) - 1
    for i in range(min(2 * A, n)):
        K.prefetch_buckets(words, nb, keys[i])
    for i in range(min(A, n)):
        rows_out[i] = K.find_one(words, nb, obits, keys[i])
    for i in range(n):
        j = i + 2 * A
        if j < n:
            K.prefetch_buckets(words, nb, keys[j])
        j = i + A
        if j < n:
            r = K.find_one(words, nb, obits, keys[j])
            rows_out[j] = r
            if r >= 0:
                prefetch_addr(ptrs[r >> bits] + (r & mask) * width * 4)
        r = rows_out[i]
        if r >= 0:
            row = row_of(ptrs, bits, width, r)
            for d in range(dim):
                out[i, d] = row[d]
        else:
            for d in range(dim):
                out[i, d] = 0.0


@njit(nogil=True, cache=True)
def gather_rows(ptrs, bits, width, rows, lo, hi, out):
    """out[i] = row rows[i], columns lo:hi."""
    for i in range(rows.shape[0]):
        row = row_of(ptrs, bits, width, rows[i])
        for d in range(lo, hi):
            out[i, d - lo] = row[d]


@njit(nogil=True, cache=True)
def scatter_rows(ptrs, bits, width, rows, lo, values):
    """Row rows[i], columns lo:lo+values.shape[1] = values[i]."""
    w = values.shape[1]
    for i in range(rows.shape[0]):
        row = row_of(ptrs, bits, width, rows[i])
        for d in range(w):
            row[lo + d] = values[i, d]


@njit(nogil=True, cache=True)
def gather_meta(mptrs, bits, rows, out):
    """out[i] = [last_seen, count byte] of rows[i]."""
    for i in range(rows.shape[0]):
        out[i, 0] = last_seen_of(mptrs, bits, rows[i])[0]
        out[i, 1] = count_of(mptrs, bits, rows[i])[0]


@njit(nogil=True, cache=True)
def scatter_meta(mptrs, bits, rows, values):
    """last_seen = values[i, 0]; count byte = min(values[i, 1], 255)."""
    for i in range(rows.shape[0]):
        last_seen_of(mptrs, bits, rows[i])[0] = values[i, 0]
        count_of(mptrs, bits, rows[i])[0] = min(max(values[i, 1], 0), COUNT_BYTE_MAX)


@njit(nogil=True, cache=True)
def touch(mptrs, bits, rows, now_rel, counts, reset, spill_rows, spill_vals):
    """last_seen = now_rel; count += counts (or = counts where reset[i]).

    Counts from 255 on leave the byte at 255 and the excess to the caller's overflow map: for
    each such row, spill_rows/spill_vals get (row, value), where value >= 0 means "the excess is
    now value" and value < 0 means "add -value - 1 to the excess". Returns the number of spills.
    """
    m = 0
    for i in range(rows.shape[0]):
        r = rows[i]
        last_seen_of(mptrs, bits, r)[0] = now_rel
        c = count_of(mptrs, bits, r)
        add = np.int64(counts[i])
        if not reset[i] and c[0] == COUNT_BYTE_MAX:
            spill_rows[m] = r
            spill_vals[m] = -add - 1
            m += 1
            continue
        total = add if reset[i] else np.int64(c[0]) + add
        if total < COUNT_BYTE_MAX:
            c[0] = total
        else:
            c[0] = COUNT_BYTE_MAX
            spill_rows[m] = r
            spill_vals[m] = total - COUNT_BYTE_MAX
            m += 1
    return m


@njit(inline="always", cache=True)
def _unit(salt, key):
    """A uniform float64 in (0, 1), a pure function of (salt, key)."""
    x = K.mix64(uint64(key) ^ salt)
    return (np.float64(x >> uint64(11)) + 0.5) * (1.0 / 9007199254740992.0)


@njit(nogil=True, cache=True)
def init_rows(ptrs, bits, width, dim, rows, keys, kind, scale, seed):
    """Write the initial embedding of each new row: a pure function of (seed, key).

    Column d draws from hash(key ^ salt[d]) with salt[d] = mix64(seed * phi + d); normal values
    come in Box-Muller pairs (columns 2k, 2k+1 share one pair of uniforms).
    """
    salts = np.empty(dim + 1, np.uint64)
    for j in range(dim + 1):
        salts[j] = K.mix64(uint64(seed) * uint64(0x9E3779B97F4A7C15) + uint64(j))
    for i in range(rows.shape[0]):
        row = row_of(ptrs, bits, width, rows[i])
        key = keys[i]
        if kind == INIT_ZEROS:
            for d in range(dim):
                row[d] = 0.0
        elif kind == INIT_UNIFORM:
            for d in range(dim):
                row[d] = (2.0 * _unit(salts[d], key) - 1.0) * scale
        else:
            for d in range(0, dim, 2):
                r = np.sqrt(-2.0 * np.log(_unit(salts[d], key))) * scale
                a = 2.0 * np.pi * _unit(salts[d + 1], key)
                row[d] = r * np.cos(a)
                if d + 1 < dim:
                    row[d + 1] = r * np.sin(a)


@njit(nogil=True, cache=True)
def dedup_sum(ids, grads, order, out_ids, out_grads, out_counts):
    """Group equal ids (order = a stable argsort of ids): sum their gradients, count them.

    Returns the number of distinct ids m; out_*[:m] hold them in ascending id order.
    """
    n = ids.shape[0]
    dim = grads.shape[1]
    m = -1
    prev = np.int64(0)
    for t in range(n):
        i = order[t]
        k = ids[i]
        if m < 0 or k != prev:
            m += 1
            out_ids[m] = k
            out_counts[m] = 0
            for d in range(dim):
                out_grads[m, d] = 0.0
            prev = k
        out_counts[m] += 1
        for d in range(dim):
            out_grads[m, d] += grads[i, d]
    return m + 1


@njit(nogil=True, cache=True)
def expired(words, nb, obits, mptrs, bits, before_rel, out_keys, out_rows):
    """Collect live entries whose last_seen < before_rel; returns their count."""
    n = 0
    unb = uint64(nb)
    kbits = 33 + obits
    mask = (uint64(1) << uint64(kbits)) - uint64(1)
    for b in range(nb):
        for s in range(K.SLOTS):
            r = K.slot_row(words, b, s, kbits)
            if r >= 0 and last_seen_of(mptrs, bits, r)[0] < before_rel:
                out_keys[n] = K.key_of(words[b * K.WORDS + s] & mask, b, unb, obits)  # only these
                out_rows[n] = r
                n += 1
    return n

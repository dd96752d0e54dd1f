"""Numba kernels of the shared serving table (see `freshrec.table.shared` for the contract).

The index is open addressing with linear probing over S = 2**k slots: `keys` int64 (S,) and
`vals` int32 (S,), where vals[s] = 0 marks an empty slot, -1 a removed one (a tombstone, still
probed past) and r + 1 the row r of the id keys[s]. No key value is reserved. Rows are float32
(R, dim); row r belongs to the slot whose vals is r + 1. Example, S = 4:

    keys [  7,  0, 12, -3]    vals [2, 0, -1, 1]    ->  7 -> row 1, -3 -> row 0; slot 2 was removed

The home slot of a key is `mix64(key) & (S - 1)`. The writer keeps the load (live + removed
slots) at most 3/4 of S, so every probe ends at an empty slot.
"""

from __future__ import annotations

from numba import int64, njit, uint64


@njit(nogil=True, cache=True, inline="always")
def _home(key, mask):  # pragma: no cover - numba
    x = uint64(key)
    x ^= x >> uint64(33)
    x *= uint64(0xFF51AFD7ED558CCD)
    x ^= x >> uint64(33)
    x *= uint64(0xC4CEB9FE1A85EC53)
    x ^= x >> uint64(33)
    return int64(x & uint64(mask))


@njit(nogil=True, cache=True)
def lookup(keys, vals, rows, ids, out):  # pragma: no cover - numba
    """out[i] = the row of ids[i], zeros when absent. Reads only."""
    mask = keys.shape[0] - 1
    dim = rows.shape[1]
    for i in range(ids.shape[0]):
        key = ids[i]
        s = _home(key, mask)
        r = -1
        for _ in range(mask + 1):
            v = vals[s]
            if v == 0:
                break
            if v > 0 and keys[s] == key:
                r = v - 1
                break
            s = (s + 1) & mask
        if r >= 0:
            for j in range(dim):
                out[i, j] = rows[r, j]
        else:
            for j in range(dim):
                out[i, j] = 0.0


@njit(nogil=True, cache=True)
def upsert(keys, vals, rows, ids, emb, free, n_free, high):  # pragma: no cover - numba
    """rows of ids = emb (existing ids overwritten, new ones placed in a freed row first, else row
    `high`). The caller has made room: high + new ids - n_free <= R, used + new ids <= 3/4 S.
    Returns (new ids, n_free, high, slots newly used)."""
    mask = keys.shape[0] - 1
    dim = rows.shape[1]
    added = 0
    used = 0
    for i in range(ids.shape[0]):
        key = ids[i]
        s = _home(key, mask)
        grave = -1
        r = -1
        for _ in range(mask + 1):
            v = vals[s]
            if v == 0:
                break
            if v < 0:
                if grave < 0:
                    grave = s
            elif keys[s] == key:
                r = v - 1
                break
            s = (s + 1) & mask
        if r < 0:
            if n_free > 0:
                n_free -= 1
                r = free[n_free]
            else:
                r = high
                high += 1
            if grave >= 0:
                s = grave
            else:
                used += 1
            for j in range(dim):
                rows[r, j] = emb[i, j]
            keys[s] = key
            vals[s] = r + 1
            added += 1
        else:
            for j in range(dim):
                rows[r, j] = emb[i, j]
    return added, n_free, high, used


@njit(nogil=True, cache=True)
def remove(keys, vals, ids, free, n_free):  # pragma: no cover - numba
    """Remove ids (absent ones are skipped); their rows go to the free list.
    Returns (removed, n_free)."""
    mask = keys.shape[0] - 1
    removed = 0
    for i in range(ids.shape[0]):
        key = ids[i]
        s = _home(key, mask)
        for _ in range(mask + 1):
            v = vals[s]
            if v == 0:
                break
            if v > 0 and keys[s] == key:
                vals[s] = -1
                free[n_free] = v - 1
                n_free += 1
                removed += 1
                break
            s = (s + 1) & mask
    return removed, n_free


@njit(nogil=True, cache=True)
def rehash(keys, vals, rows, new_keys, new_vals, new_rows):  # pragma: no cover - numba
    """Copy every live id of (keys, vals, rows) into the empty new index, rows renumbered
    0, 1, ... in slot order. Returns the number copied."""
    mask = new_keys.shape[0] - 1
    dim = rows.shape[1]
    n = 0
    for s in range(keys.shape[0]):
        v = vals[s]
        if v <= 0:
            continue
        key = keys[s]
        t = _home(key, mask)
        while new_vals[t] != 0:
            t = (t + 1) & mask
        for j in range(dim):
            new_rows[n, j] = rows[v - 1, j]
        new_keys[t] = key
        new_vals[t] = n + 1
        n += 1
    return n


@njit(nogil=True, cache=True)
def export(keys, vals, rows, out_ids, out_rows):  # pragma: no cover - numba
    """Every live (id, row), in slot order. Returns the number written."""
    dim = rows.shape[1]
    n = 0
    for s in range(keys.shape[0]):
        v = vals[s]
        if v <= 0:
            continue
        out_ids[n] = keys[s]
        for j in range(dim):
            out_rows[n, j] = rows[v - 1, j]
        n += 1
    return n

"""Numba kernels of the cuckoo index (see `freshrec.table.index` for the contract).

Bucket layout, one 64-byte cache line per bucket, as 8 int64 words:

    words 0..4   keys of slots 0..4            (int64; any value, 0 and negatives included)
    words 5..7   viewed as 6 int32: rows of slots 0..4, then one spare int32

A slot is empty when its row is -1; the key word of an empty slot means nothing, so no id
value is reserved as an "empty" marker. Example with 2 buckets (16 words):

    bucket 0: keys [42, 7, ?, ?, ?]  rows [3, 0, -1, -1, -1, -]   -> 42 -> row 3, 7 -> row 0
    bucket 1: keys [?, ?, ?, ?, ?]   rows [-1, -1, -1, -1, -1, -]

An id may live in bucket h1(id) or h2(id); a lookup reads at most these two lines.
"""

from __future__ import annotations

import numpy as np
from numba import njit, uint64

from freshrec.table._prefetch import prefetch

SLOTS = 5
WORDS = 8  # int64 words per bucket
ROW_WORD = 5  # first int64 word holding rows
EMPTY = -1

_M1 = uint64(0xBF58476D1CE4E5B9)
_M2 = uint64(0x94D049BB133111EB)
_S1 = uint64(0x9E3779B97F4A7C15)
_S2 = uint64(0xD1B54A32D192ED03)


@njit(inline="always", cache=True)
def mix64(x):
    """splitmix64 finalizer: a bijection on uint64 with good avalanche."""
    x = (x ^ (x >> uint64(30))) * _M1
    x = (x ^ (x >> uint64(27))) * _M2
    return x ^ (x >> uint64(31))


@njit(inline="always", cache=True)
def buckets_of(key, nb):
    """The two candidate buckets of `key` among `nb` (< 2**32) buckets (Lemire's fast range)."""
    k = uint64(key)
    b1 = ((mix64(k ^ _S1) >> uint64(32)) * nb) >> uint64(32)
    b2 = ((mix64(k + _S2) >> uint64(32)) * nb) >> uint64(32)
    return np.int64(b1), np.int64(b2)


@njit(inline="always", cache=True)
def _find_in(words, rows32, b, key):
    base = b * WORDS
    rbase = b * (2 * WORDS) + 2 * ROW_WORD
    for s in range(SLOTS):
        if words[base + s] == key and rows32[rbase + s] != EMPTY:
            return rows32[rbase + s]
    return EMPTY


@njit(inline="always", cache=True)
def find_one(words, rows32, nb, key):
    b1, b2 = buckets_of(key, uint64(nb))
    r = _find_in(words, rows32, b1, key)
    if r != EMPTY:
        return r
    return _find_in(words, rows32, b2, key)


AHEAD = 16  # probes in flight: how far ahead the buckets are prefetched


@njit(inline="always", cache=True)
def prefetch_buckets(words, nb, key):
    b1, b2 = buckets_of(key, uint64(nb))
    prefetch(words, b1 * WORDS)
    prefetch(words, b2 * WORDS)


@njit(nogil=True, cache=True)
def find_many(words, rows32, nb, keys, out):
    """out[i] = row of keys[i], or -1."""
    n = keys.shape[0]
    for i in range(min(AHEAD, n)):
        prefetch_buckets(words, nb, keys[i])
    for i in range(n):
        if i + AHEAD < n:
            prefetch_buckets(words, nb, keys[i + AHEAD])
        out[i] = find_one(words, rows32, nb, keys[i])


@njit(inline="always", cache=True)
def _free_slot(rows32, b):
    """First empty slot of bucket b, and how many slots it has free (-1, 0 when full)."""
    rbase = b * (2 * WORDS) + 2 * ROW_WORD
    first = -1
    n = 0
    for s in range(SLOTS):
        if rows32[rbase + s] == EMPTY:
            n += 1
            if first < 0:
                first = s
    return first, n


@njit(inline="always", cache=True)
def _put(words, rows32, b, s, key, row):
    words[b * WORDS + s] = key
    rows32[b * (2 * WORDS) + 2 * ROW_WORD + s] = row


@njit(inline="always", cache=True)
def _place(words, rows32, unb, key, row, b1, b2, st, max_kicks):
    """Place an absent (key, row) into bucket b1 or b2, displacing residents if both are full.

    The emptier of the two buckets takes the pair, which keeps loads even and displacement
    chains short. When both are full, a random walk moves residents to their other bucket, for
    at most max_kicks steps. Returns (placed, homeless_key, homeless_row, rng_state): when the
    walk fails, the pair left without a slot (perhaps a displaced resident) comes back.
    """
    s1, n1 = _free_slot(rows32, b1)
    s2, n2 = _free_slot(rows32, b2)
    if n1 > 0 and n1 >= n2:
        _put(words, rows32, b1, s1, key, row)
        return True, key, row, st
    if n2 > 0:
        _put(words, rows32, b2, s2, key, row)
        return True, key, row, st
    b = b1
    for _ in range(max_kicks):
        st ^= st << uint64(13)
        st ^= st >> uint64(7)
        st ^= st << uint64(17)
        s = np.int64(st % uint64(SLOTS))
        base = b * WORDS
        rbase = b * (2 * WORDS) + 2 * ROW_WORD
        vk = words[base + s]
        vr = rows32[rbase + s]
        words[base + s] = key
        rows32[rbase + s] = row
        key = vk
        row = vr
        c1, c2 = buckets_of(key, unb)
        b = c2 if c1 == b else c1
        fs, _ = _free_slot(rows32, b)
        if fs >= 0:
            _put(words, rows32, b, fs, key, row)
            return True, key, row, st
    return False, key, row, st


@njit(nogil=True, cache=True)
def insert_many(words, rows32, nb, keys, rows, max_kicks, rng_state):
    """Insert (keys[i], rows[i]) for i in order; keys must be absent and distinct.

    Returns (n_done, homeless_key, homeless_row): n_done == len(keys) on success. On a failed
    displacement chain, the pair left without a slot is returned (it may be an earlier key that
    was kicked out), keys[:n_done] are all placed but for that homeless one, and the caller must
    grow the index and re-insert the homeless pair and keys[n_done:].
    """
    unb = uint64(nb)
    st = uint64(rng_state[0])
    n = keys.shape[0]
    for i in range(min(AHEAD, n)):
        prefetch_buckets(words, nb, keys[i])
    for i in range(n):
        if i + AHEAD < n:
            prefetch_buckets(words, nb, keys[i + AHEAD])
        b1, b2 = buckets_of(keys[i], unb)
        ok, hk, hr, st = _place(words, rows32, unb, keys[i], rows[i], b1, b2, st, max_kicks)
        if not ok:
            rng_state[0] = np.int64(st)
            return i + 1, hk, hr
    rng_state[0] = np.int64(st)
    return n, np.int64(0), np.int32(EMPTY)


@njit(nogil=True, cache=True)
def upsert_many(words, rows32, nb, keys, out_rows, is_new, free, n_free, high, limit, max_kicks, rng_state):
    """Find each of the distinct `keys`, inserting the absent ones with fresh rows, in one pass.

    Fresh rows come from the top of the free list free[:n_free] first, then high, high + 1, ...
    out_rows[i] = the row of keys[i]; is_new[i] marks those inserted now. At most `limit` keys
    are inserted (the room left under the load threshold). Returns
    (n_done, n_inserted, homeless_key, homeless_row): n_done < len(keys) when the limit was
    reached (homeless_row -1) or a displacement chain failed (the homeless pair comes back, as in
    insert_many); the caller grows the index, re-inserts the pair and calls again on keys[n_done:].
    """
    unb = uint64(nb)
    st = uint64(rng_state[0])
    n = keys.shape[0]
    k = 0
    for i in range(min(AHEAD, n)):
        prefetch_buckets(words, nb, keys[i])
    for i in range(n):
        if i + AHEAD < n:
            prefetch_buckets(words, nb, keys[i + AHEAD])
        key = keys[i]
        b1, b2 = buckets_of(key, unb)
        r = _find_in(words, rows32, b1, key)
        if r == EMPTY:
            r = _find_in(words, rows32, b2, key)
        if r != EMPTY:
            out_rows[i] = r
            is_new[i] = False
            continue
        if k >= limit:
            rng_state[0] = np.int64(st)
            return i, k, np.int64(0), np.int32(EMPTY)
        row = free[n_free - 1 - k] if k < n_free else np.int32(high + (k - n_free))
        k += 1
        out_rows[i] = row
        is_new[i] = True
        ok, hk, hr, st = _place(words, rows32, unb, key, row, b1, b2, st, max_kicks)
        if not ok:
            rng_state[0] = np.int64(st)
            return i + 1, k, hk, hr
    rng_state[0] = np.int64(st)
    return n, k, np.int64(0), np.int32(EMPTY)


@njit(inline="always", cache=True)
def collect_bucket(words, rows32, b, out_keys, out_rows, n):
    """Append the live (key, row) pairs of bucket b at out_*[n:]; returns the new n."""
    base = b * WORDS
    rbase = b * (2 * WORDS) + 2 * ROW_WORD
    for s in range(SLOTS):
        r = rows32[rbase + s]
        if r != EMPTY:
            out_keys[n] = words[base + s]
            out_rows[n] = r
            n += 1
    return n


@njit(nogil=True, cache=True)
def rehash_into(words, rows32, nb, new_words, new_rows32, new_nb, max_kicks, rng_state):
    """Insert every live pair of the index (words, rows32, nb) into the empty (new_words,
    new_rows32, new_nb), reading the old buckets in order and prefetching the new ones a block
    ahead. Returns False when a displacement chain failed (the old index is untouched: retry
    with more buckets)."""
    unb = uint64(new_nb)
    st = uint64(rng_state[0])
    B = 64
    bk = np.empty(B, np.int64)
    br = np.empty(B, np.int32)
    m = 0
    for b in range(nb + 1):
        if b < nb:
            m = collect_bucket(words, rows32, b, bk, br, m)
        if m >= B - SLOTS or (b == nb and m > 0):
            for j in range(m):
                prefetch_buckets(new_words, new_nb, bk[j])
            for j in range(m):
                b1, b2 = buckets_of(bk[j], unb)
                ok, _, _, st = _place(new_words, new_rows32, unb, bk[j], br[j], b1, b2, st, max_kicks)
                if not ok:
                    rng_state[0] = np.int64(st)
                    return False
            m = 0
    rng_state[0] = np.int64(st)
    return True


@njit(nogil=True, cache=True)
def delete_many(words, rows32, nb, keys, out_rows):
    """Remove keys; out_rows[i] = the row keys[i] held, or -1 when absent."""
    unb = uint64(nb)
    for i in range(keys.shape[0]):
        key = keys[i]
        out_rows[i] = EMPTY
        b1, b2 = buckets_of(key, unb)
        for b in (b1, b2):
            base = b * WORDS
            rbase = b * (2 * WORDS) + 2 * ROW_WORD
            found = False
            for s in range(SLOTS):
                if words[base + s] == key and rows32[rbase + s] != EMPTY:
                    out_rows[i] = rows32[rbase + s]
                    rows32[rbase + s] = EMPTY
                    found = True
                    break
            if found:
                break


@njit(nogil=True, cache=True)
def collect(words, rows32, nb, out_keys, out_rows):
    """Every live (key, row) in slot order; returns the count."""
    n = 0
    for b in range(nb):
        n = collect_bucket(words, rows32, b, out_keys, out_rows, n)
    return n


@njit(nogil=True, cache=True)
def check_buckets(words, rows32, nb):
    """Internal invariant: every live key sits in one of its two buckets and appears once.

    Returns the number of violations (0 when sound).
    """
    bad = 0
    unb = uint64(nb)
    for b in range(nb):
        base = b * WORDS
        rbase = b * (2 * WORDS) + 2 * ROW_WORD
        for s in range(SLOTS):
            if rows32[rbase + s] == EMPTY:
                continue
            key = words[base + s]
            b1, b2 = buckets_of(key, unb)
            if b != b1 and b != b2:
                bad += 1
            # no duplicate of this key in either bucket
            seen = 0
            for t in range(SLOTS):
                if words[b1 * WORDS + t] == key and rows32[b1 * (2 * WORDS) + 2 * ROW_WORD + t] != EMPTY:
                    seen += 1
            if b2 != b1:
                for t in range(SLOTS):
                    if words[b2 * WORDS + t] == key and rows32[b2 * (2 * WORDS) + 2 * ROW_WORD + t] != EMPTY:
                        seen += 1
            if seen != 1:
                bad += 1
    return bad

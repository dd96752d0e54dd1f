"""Numba kernels of the cuckoo index (see `freshrec.table.index` for the contract).

Keys are not stored whole: each slot keeps a *tag*, the bits of the key's hash that its bucket
does not already tell, and the row. The hash is a bijection of the key, so the tag and the
bucket give the key back exactly: no two ids ever match the same slot (no false positives).

Hashes: h1 = mix64(key ^ S1), h2 = mix64(key + S2), both bijections of the 64-bit key. The
bucket of a hash among nb buckets is ``(hi32(h) * nb) >> 32`` (Lemire's fast range), so the
bucket pins hi32(h) down to a range of at most W = ceil(2**32 / nb) values; `obits` =
bit_length(W - 1) low bits of hi32(h) tell which one. A key sitting in its first bucket has
tag ``lo32(h1) | (hi32(h1) mod 2**obits) << 32``; in its second bucket, the same of h2 plus a
flag bit at ``32 + obits``. So a tag is kbits = 33 + obits bits long, and the row gets the rest
of a 72-bit slot: rbits = 72 - kbits bits (it grows as the index does: more buckets, fewer
obits).

Bucket layout, one 64-byte cache line per bucket, as 8 uint64 words, 7 slots:

    words 0..6   slot s: tag (low kbits) | low (64 - kbits) bits of row + 1
    word  7      byte s: the high 8 bits of row + 1 of slot s; byte 7 unused

Row + 1 is stored so that 0 marks an empty slot; no key value is reserved. Example, nb = 2
(obits = 31, kbits = 64, rbits = 8, all of row + 1 in the tail byte):

    bucket 0: words [tagA, tagB, 0, 0, 0, 0, 0]  tail bytes [4, 1, 0, ...]  -> A -> row 3, B -> row 0

An id may live in bucket b1 = bucket(h1) or b2 = bucket(h2); a lookup reads at most these two
lines. 64 bytes hold 7 rows, 9.1 bytes a slot (a full int64 key and int32 row would take 12).
"""

from __future__ import annotations

import numpy as np
from numba import int64, njit, uint64

from freshrec.table._prefetch import prefetch

SLOTS = 7
WORDS = 8  # uint64 words per bucket
TAIL = 7  # the word holding the high row bits, a byte per slot
EMPTY = -1
SLOT_BITS = 72
MIN_BUCKETS = 8  # so that obits <= 29 and a tag fits a word with room for row bits

_M1 = uint64(0xBF58476D1CE4E5B9)
_M2 = uint64(0x94D049BB133111EB)
_M1_INV = uint64(pow(0xBF58476D1CE4E5B9, -1, 1 << 64))
_M2_INV = uint64(pow(0x94D049BB133111EB, -1, 1 << 64))
_S1 = uint64(0x9E3779B97F4A7C15)
_S2 = uint64(0xD1B54A32D192ED03)
_LO32 = uint64(0xFFFFFFFF)


@njit(inline="always", cache=True)
def mix64(x):
    """splitmix64 finalizer: a bijection on uint64 with good avalanche."""
    x = (x ^ (x >> uint64(30))) * _M1
    x = (x ^ (x >> uint64(27))) * _M2
    return x ^ (x >> uint64(31))


@njit(inline="always", cache=True)
def unmix64(x):
    """The inverse of mix64."""
    x = x ^ (x >> uint64(31)) ^ (x >> uint64(62))
    x = x * _M2_INV
    x = x ^ (x >> uint64(27)) ^ (x >> uint64(54))
    x = x * _M1_INV
    return x ^ (x >> uint64(30)) ^ (x >> uint64(60))


@njit(inline="always", cache=True)
def hashes(key):
    k = uint64(key)
    return mix64(k ^ _S1), mix64(k + _S2)


@njit(inline="always", cache=True)
def bucket_of(h, unb):
    return int64(((h >> uint64(32)) * unb) >> uint64(32))


@njit(inline="always", cache=True)
def buckets_of(key, nb):
    """The two candidate buckets of `key` among `nb` (< 2**32) buckets."""
    h1, h2 = hashes(key)
    unb = uint64(nb)
    return bucket_of(h1, unb), bucket_of(h2, unb)


@njit(inline="always", cache=True)
def prefetch_buckets(words, nb, key):
    b1, b2 = buckets_of(key, nb)
    prefetch(words, b1 * WORDS)
    prefetch(words, b2 * WORDS)


@njit(inline="always", cache=True)
def tags_of(h1, h2, obits):
    """The tags of a key in its first and in its second bucket."""
    low = (uint64(1) << uint64(32 + obits)) - uint64(1)
    return h1 & low, (h2 & low) | (uint64(1) << uint64(32 + obits))


@njit(inline="always", cache=True)
def key_of(tag, b, unb, obits):
    """The key whose tag `tag` sits in bucket b (inverse of tags_of)."""
    start = ((uint64(b) << uint64(32)) + unb - uint64(1)) // unb  # smallest hi32 with bucket b
    omask = (uint64(1) << uint64(obits)) - uint64(1)
    hi = start + ((((tag >> uint64(32)) & omask) - start) & omask)
    h = (hi << uint64(32)) | (tag & _LO32)
    x = unmix64(h)
    if (tag >> uint64(32 + obits)) & uint64(1):
        return int64(x - _S2)
    return int64(x ^ _S1)


@njit(inline="always", cache=True)
def slot_row(words, b, s, kbits):
    """Row of slot s of bucket b, or -1 when the slot is empty."""
    base = b * WORDS
    hi = (words[base + TAIL] >> uint64(8 * s)) & uint64(0xFF)
    v = (words[base + s] >> uint64(kbits)) | (hi << uint64(64 - kbits))
    return int64(v) - 1


@njit(inline="always", cache=True)
def put(words, b, s, tag, row, kbits):
    base = b * WORDS
    v = uint64(row + 1)
    words[base + s] = tag | (v << uint64(kbits))
    sh = uint64(8 * s)
    t = words[base + TAIL] & ~(uint64(0xFF) << sh)
    words[base + TAIL] = t | (((v >> uint64(64 - kbits)) & uint64(0xFF)) << sh)


@njit(inline="always", cache=True)
def clear(words, b, s):
    base = b * WORDS
    words[base + s] = uint64(0)
    words[base + TAIL] &= ~(uint64(0xFF) << uint64(8 * s))


@njit(inline="always", cache=True)
def slot_of(words, b, tag, kbits):
    """The live slot of bucket b holding `tag`, or -1."""
    base = b * WORDS
    mask = (uint64(1) << uint64(kbits)) - uint64(1)
    for s in range(SLOTS):
        if words[base + s] & mask == tag and slot_row(words, b, s, kbits) >= 0:
            return s
    return -1


@njit(inline="always", cache=True)
def find_in(words, b, tag, kbits):
    """Row of the key with `tag` in bucket b, or -1."""
    s = slot_of(words, b, tag, kbits)
    return slot_row(words, b, s, kbits) if s >= 0 else EMPTY


@njit(inline="always", cache=True)
def find_hashed(words, unb, obits, h1, h2):
    """Row of the key with hashes (h1, h2), or -1."""
    t1, t2 = tags_of(h1, h2, obits)
    r = find_in(words, bucket_of(h1, unb), t1, 33 + obits)
    if r != EMPTY:
        return r
    return find_in(words, bucket_of(h2, unb), t2, 33 + obits)


@njit(inline="always", cache=True)
def find_one(words, nb, obits, key):
    h1, h2 = hashes(key)
    return find_hashed(words, uint64(nb), obits, h1, h2)


AHEAD = 16  # probes in flight: how far ahead the buckets are prefetched


@njit(nogil=True, cache=True)
def find_many(words, nb, obits, keys, out):
    """out[i] = row of keys[i], or -1."""
    n = keys.shape[0]
    for i in range(min(AHEAD, n)):
        prefetch_buckets(words, nb, keys[i])
    for i in range(n):
        if i + AHEAD < n:
            prefetch_buckets(words, nb, keys[i + AHEAD])
        out[i] = find_one(words, nb, obits, keys[i])


@njit(inline="always", cache=True)
def _free_slot(words, b, kbits):
    """First empty slot of bucket b, and how many slots it has free (-1, 0 when full)."""
    first = -1
    n = 0
    for s in range(SLOTS):
        if slot_row(words, b, s, kbits) < 0:
            n += 1
            if first < 0:
                first = s
    return first, n


@njit(inline="always", cache=True)
def _place(words, unb, obits, key, h1, h2, row, st, max_kicks):
    """Place an absent (key, row), key hashing to (h1, h2), into one of its two buckets,
    displacing residents if both are full.

    The emptier of the two buckets takes the pair, which keeps loads even and displacement
    chains short. When both are full, a random walk moves residents to their other bucket, for
    at most max_kicks steps. Returns (placed, homeless_key, homeless_row, rng_state): when the
    walk fails, the pair left without a slot (perhaps a displaced resident) comes back.
    """
    kbits = 33 + obits
    mask = (uint64(1) << uint64(kbits)) - uint64(1)
    t1, t2 = tags_of(h1, h2, obits)
    b1, b2 = bucket_of(h1, unb), bucket_of(h2, unb)
    s1, n1 = _free_slot(words, b1, kbits)
    s2, n2 = _free_slot(words, b2, kbits)
    if n1 > 0 and n1 >= n2:
        put(words, b1, s1, t1, row, kbits)
        return True, key, row, st
    if n2 > 0:
        put(words, b2, s2, t2, row, kbits)
        return True, key, row, st
    b, tag = b1, t1
    for _ in range(max_kicks):
        st ^= st << uint64(13)
        st ^= st >> uint64(7)
        st ^= st << uint64(17)
        s = int64(st % uint64(SLOTS))
        vtag = words[b * WORDS + s] & mask
        vrow = slot_row(words, b, s, kbits)
        put(words, b, s, tag, row, kbits)
        key = key_of(vtag, b, unb, obits)
        row = vrow
        h1, h2 = hashes(key)
        t1, t2 = tags_of(h1, h2, obits)
        if (vtag >> uint64(kbits - 1)) & uint64(1):  # it sat in its second bucket: go to the first
            b, tag = bucket_of(h1, unb), t1
        else:
            b, tag = bucket_of(h2, unb), t2
        fs, _ = _free_slot(words, b, kbits)
        if fs >= 0:
            put(words, b, fs, tag, row, kbits)
            return True, key, row, st
    return False, key, row, st


@njit(nogil=True, cache=True)
def insert_many(words, nb, obits, keys, rows, max_kicks, rng_state):
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
        h1, h2 = hashes(keys[i])
        ok, hk, hr, st = _place(words, unb, obits, keys[i], h1, h2, rows[i], st, max_kicks)
        if not ok:
            rng_state[0] = int64(st)
            return i + 1, hk, hr
    rng_state[0] = int64(st)
    return n, int64(0), int64(EMPTY)


@njit(nogil=True, cache=True)
def upsert_many(words, nb, obits, keys, out_rows, is_new, free, n_free, high, limit, max_kicks, rng_state):
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
        h1, h2 = hashes(key)  # once, for the probe and the placement
        r = find_hashed(words, unb, obits, h1, h2)
        if r != EMPTY:
            out_rows[i] = r
            is_new[i] = False
            continue
        if k >= limit:
            rng_state[0] = int64(st)
            return i, k, int64(0), int64(EMPTY)
        row = int64(free[n_free - 1 - k]) if k < n_free else int64(high + (k - n_free))
        k += 1
        out_rows[i] = row
        is_new[i] = True
        ok, hk, hr, st = _place(words, unb, obits, key, h1, h2, row, st, max_kicks)
        if not ok:
            rng_state[0] = int64(st)
            return i + 1, k, hk, hr
    rng_state[0] = int64(st)
    return n, k, int64(0), int64(EMPTY)


@njit(inline="always", cache=True)
def collect_bucket(words, b, unb, obits, out_keys, out_rows, n):
    """Append the live (key, row) pairs of bucket b at out_*[n:]; returns the new n."""
    kbits = 33 + obits
    mask = (uint64(1) << uint64(kbits)) - uint64(1)
    for s in range(SLOTS):
        r = slot_row(words, b, s, kbits)
        if r >= 0:
            out_keys[n] = key_of(words[b * WORDS + s] & mask, b, unb, obits)
            out_rows[n] = r
            n += 1
    return n


@njit(nogil=True, cache=True)
def rehash_into(words, nb, obits, new_words, new_nb, new_obits, max_kicks, rng_state):
    """Insert every live pair of the index (words, nb, obits) into the empty (new_words, new_nb,
    new_obits), reading the old buckets in order and prefetching the new ones a block ahead.
    Returns False when a displacement chain failed (the old index is untouched: retry with more
    buckets)."""
    unb = uint64(nb)
    new_unb = uint64(new_nb)
    st = uint64(rng_state[0])
    B = 64
    bk = np.empty(B, np.int64)
    br = np.empty(B, np.int64)
    m = 0
    for b in range(nb + 1):
        if b < nb:
            m = collect_bucket(words, b, unb, obits, bk, br, m)
        if m >= B - SLOTS or (b == nb and m > 0):
            for j in range(m):
                prefetch_buckets(new_words, new_nb, bk[j])
            for j in range(m):
                h1, h2 = hashes(bk[j])
                ok, _, _, st = _place(new_words, new_unb, new_obits, bk[j], h1, h2, br[j], st, max_kicks)
                if not ok:
                    rng_state[0] = int64(st)
                    return False
            m = 0
    rng_state[0] = int64(st)
    return True


@njit(nogil=True, cache=True)
def delete_many(words, nb, obits, keys, out_rows):
    """Remove keys; out_rows[i] = the row keys[i] held, or -1 when absent."""
    unb = uint64(nb)
    kbits = 33 + obits
    for i in range(keys.shape[0]):
        out_rows[i] = EMPTY
        h1, h2 = hashes(keys[i])
        t1, t2 = tags_of(h1, h2, obits)
        for b, tag in ((bucket_of(h1, unb), t1), (bucket_of(h2, unb), t2)):
            s = slot_of(words, b, tag, kbits)
            if s >= 0:
                out_rows[i] = slot_row(words, b, s, kbits)
                clear(words, b, s)
                break


@njit(nogil=True, cache=True)
def collect(words, nb, obits, out_keys, out_rows):
    """Every live (key, row) in slot order; returns the count."""
    n = 0
    unb = uint64(nb)
    for b in range(nb):
        n = collect_bucket(words, b, unb, obits, out_keys, out_rows, n)
    return n


@njit(nogil=True, cache=True)
def check_buckets(words, nb, obits):
    """Internal invariant: every live key sits in the bucket its tag says, with the right tag,
    and appears once. Returns the number of violations (0 when sound)."""
    bad = 0
    unb = uint64(nb)
    kbits = 33 + obits
    mask = (uint64(1) << uint64(kbits)) - uint64(1)
    for b in range(nb):
        for s in range(SLOTS):
            if slot_row(words, b, s, kbits) < 0:
                continue
            tag = words[b * WORDS + s] & mask
            key = key_of(tag, b, unb, obits)
            h1, h2 = hashes(key)
            t1, t2 = tags_of(h1, h2, obits)
            b1, b2 = bucket_of(h1, unb), bucket_of(h2, unb)
            if not ((b == b1 and tag == t1) or (b == b2 and tag == t2)):
                bad += 1
            seen = 0
            for bb, tt in ((b1, t1), (b2, t2)):
                for u in range(SLOTS):
                    if words[bb * WORDS + u] & mask == tt and slot_row(words, bb, u, kbits) >= 0:
                        seen += 1
            if seen != 1:
                bad += 1
    return bad

"""Numba kernels that write the impressions of ranked requests as canonical feature records.

The impressions of a request differ only in their position and item id: record i (candidate at
position i) is `encode_feature(FeatureEvent("<rid>:<i>", user, items[i], sparse, dense, ts))`,

    {"request_id":"<rid>:<i>","user_id":<user>,"item_id":<items[i]>,"sparse":{...},"dense":{...},"ts":<ts>}
    └──────── head ────────┘ i └──── mid ─────────┘  items[i]  └────────────── tail ───────────────┘

so the caller encodes head, mid and tail once per request (Python's JSON encoder: floats are
written as `repr` writes them) and the kernels fill in the decimal digits of i and items[i]. With
keys (`"<rid>:<i>"`, the record's request_id), the records are laid out as local-log frames
(`[u32 length][u32 crc32][u16 keylen][key][value]`, `freshrec.stream.local_frames`), the header
bytes left for `seal_frames` to fill in.

Several requests go in one call: their parts are concatenated in `parts` (request r's key
prefix, head, mid and tail one after the other, `part_ends[4 r : 4 r + 4]` their ends) and their
items in `items` (request r's are items[item_ends[r - 1]:item_ends[r]], from 0).
Worked example, one request "ab" of user 7 with items [5, -12]:

    parts = b'ab' b'{"request_id":"ab' b',"user_id":7,"item_id":' b',"sparse":{},"dense":{},"ts":1.5}'
    part_ends = [2, 19, 42, 77]; items = [5, -12]; item_ends = [2]
    record 0: key b'ab:0', value b'{"request_id":"ab:0","user_id":7,"item_id":5,"sparse":{},...}'
"""

from __future__ import annotations

import numpy as np
from numba import njit

__all__ = ["impression_lengths", "write_impressions"]

_FRAME_HEADER = 10  # u32 length + u32 crc32 + u16 keylen (freshrec.stream.local_frames)


@njit(cache=True, inline="always")
def _digits(v: int) -> int:
    """Characters of `str(v)` for an int64 v (the sign included)."""
    n = 1
    if v < 0:
        n = 2
        m = np.uint64(-(v + 1)) + np.uint64(1)  # |v|, also for -2**63
    else:
        m = np.uint64(v)
    while m >= np.uint64(10):
        m //= np.uint64(10)
        n += 1
    return n


@njit(cache=True, inline="always")
def _put_int(buf: np.ndarray, at: int, v: int, width: int) -> int:
    """Write `str(v)` (`width` characters, as `_digits` counts them) at buf[at]; returns the end."""
    end = at + width
    if v < 0:
        buf[at] = 45  # "-"
        m = np.uint64(-(v + 1)) + np.uint64(1)
    else:
        m = np.uint64(v)
    j = end - 1
    while True:
        buf[j] = np.uint8(48 + m % np.uint64(10))
        m //= np.uint64(10)
        j -= 1
        if m == np.uint64(0):
            break
    return end


@njit(cache=True, inline="always")
def _put(buf: np.ndarray, at: int, parts: np.ndarray, start: int, end: int) -> int:
    for k in range(start, end):
        buf[at] = parts[k]
        at += 1
    return at


@njit(cache=True)
def impression_lengths(
    part_ends: np.ndarray, items: np.ndarray, item_ends: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(key lengths, value lengths), int64 (n,), of the records `write_impressions` writes for
    these requests (module docstring), in order."""
    n = items.shape[0]
    klen = np.empty(n, dtype=np.int64)
    vlen = np.empty(n, dtype=np.int64)
    first, p0 = 0, 0
    for r in range(item_ends.shape[0]):
        key = part_ends[4 * r] - p0
        fixed = part_ends[4 * r + 3] - part_ends[4 * r]  # head + mid + tail
        for i in range(first, item_ends[r]):
            dp = _digits(i - first)
            klen[i] = key + 1 + dp  # "<rid>:<i>"
            vlen[i] = fixed + 2 + dp + _digits(items[i])  # head ":" i '"' mid item tail
        first, p0 = item_ends[r], part_ends[4 * r + 3]
    return klen, vlen


@njit(cache=True)
def write_impressions(
    buf: np.ndarray, ends: np.ndarray, parts: np.ndarray, part_ends: np.ndarray, items: np.ndarray,
    item_ends: np.ndarray,
) -> None:  # fmt: skip
    """Write each record's key and value into its frame buf[ends[i - 1]:ends[i]] (from 0), after
    the header: key `prefix ":" i`, value `head ":" i '"' mid items[i] tail` (module docstring;
    `ends` from `frame_ends` of `impression_lengths`; buf uint8)."""
    start, first, p0 = 0, 0, 0
    for r in range(item_ends.shape[0]):
        k1, h1, m1, t1 = part_ends[4 * r], part_ends[4 * r + 1], part_ends[4 * r + 2], part_ends[4 * r + 3]
        for i in range(first, item_ends[r]):
            pos = i - first
            dp = _digits(pos)
            at = _put(buf, start + _FRAME_HEADER, parts, p0, k1)
            buf[at] = 58  # ":"
            at = _put_int(buf, at + 1, pos, dp)
            at = _put(buf, at, parts, k1, h1)
            buf[at] = 58
            at = _put_int(buf, at + 1, pos, dp)
            buf[at] = 34  # '"'
            at = _put(buf, at + 1, parts, h1, m1)
            at = _put_int(buf, at, items[i], _digits(items[i]))
            at = _put(buf, at, parts, m1, t1)
            assert at == ends[i]
            start = ends[i]
        first, p0 = item_ends[r], t1

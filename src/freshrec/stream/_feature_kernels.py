"""Numba kernels that write the impressions of one ranked request as canonical feature records.

The impressions of a request differ only in their position and item id: record i (candidate at
position i) is `encode_feature(FeatureEvent("<rid>:<i>", user, items[i], sparse, dense, ts))`,

    {"request_id":"<rid>:<i>","user_id":<user>,"item_id":<items[i]>,"sparse":{...},"dense":{...},"ts":<ts>}
    └──────── head ────────┘ i └──── mid ─────────┘  items[i]  └────────────── tail ───────────────┘

so the caller encodes head, mid and tail once (Python's JSON encoder: floats are written as
`repr` writes them) and `write_impressions` fills in the decimal digits of i and items[i]. With
keys (`"<rid>:<i>"`, the record's request_id), the records are laid out as local-log frames
(`[u32 length][u32 crc32][u16 keylen][key][value]`, `freshrec.stream.local_frames`): the header
bytes are left for `seal_frames` to fill in.
"""

from __future__ import annotations

import numpy as np
from numba import njit

__all__ = ["impression_lengths", "write_impressions"]

_FRAME_HEADER = 10  # u32 length + u32 crc32 + u16 keylen (freshrec.stream.local_frames)


@njit(nogil=True, cache=True, inline="always")
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


@njit(nogil=True, cache=True, inline="always")
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


@njit(nogil=True, cache=True, inline="always")
def _put(buf: np.ndarray, at: int, part: np.ndarray) -> int:
    for k in range(part.shape[0]):
        buf[at + k] = part[k]
    return at + part.shape[0]


@njit(nogil=True, cache=True)
def impression_lengths(
    key_prefix: int, head: int, mid: int, tail: int, items: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(key lengths, value lengths), int64 (n,), of the records `write_impressions` writes for
    `items` with parts of these byte lengths (key_prefix: the request id's)."""
    n = items.shape[0]
    klen = np.empty(n, dtype=np.int64)
    vlen = np.empty(n, dtype=np.int64)
    for i in range(n):
        dp = _digits(i)
        klen[i] = key_prefix + 1 + dp  # "<rid>:<i>"
        vlen[i] = head + 1 + dp + 1 + mid + _digits(items[i]) + tail  # head ":" i '"' mid item tail
    return klen, vlen


@njit(nogil=True, cache=True)
def write_impressions(
    buf: np.ndarray,
    ends: np.ndarray,
    key_prefix: np.ndarray,
    head: np.ndarray,
    mid: np.ndarray,
    tail: np.ndarray,
    items: np.ndarray,
) -> None:
    """Write record i's key and value into the frame buf[ends[i - 1]:ends[i]] (from 0), after
    its header: key `key_prefix ":" i`, value `head ":" i '"' mid items[i] tail` (module
    docstring). `ends` come from `frame_ends` of `impression_lengths`; buf is uint8."""
    start = 0
    for i in range(items.shape[0]):
        at = start + _FRAME_HEADER
        dp = _digits(i)
        at = _put(buf, at, key_prefix)
        buf[at] = 58  # ":"
        at = _put_int(buf, at + 1, i, dp)
        at = _put(buf, at, head)
        buf[at] = 58
        at = _put_int(buf, at + 1, i, dp)
        buf[at] = 34  # '"'
        at = _put(buf, at + 1, mid)
        at = _put_int(buf, at, items[i], _digits(items[i]))
        at = _put(buf, at, tail)
        assert at == ends[i]
        start = ends[i]

"""A numba kernel that writes the ranked items of a /v1/rank reply: `{"item_id":I,"score":S}`
for each item, comma-separated, S with 9 significant digits in the `%.9g` layout.

9 significant digits round-trip any float32 (a score is one): parsing S as a float and rounding
it to float32 gives the score back. The digits come from the score scaled by a power of ten in
float64 and rounded to an integer (half to even), which is `%.9g`'s correctly rounded result
except, possibly, within 1e-16 of a halfway point, where the ninth digit may differ by one; the
text still round-trips to the same float32 (`tests/test_reply_kernels.py` compares the kernel
with `%.9g` on millions of float32 values of every exponent).

`%g` layout: fixed notation when the decimal exponent X of the rounded value is -4 <= X < 9
(`0.000123456789`, `12345.6789`), else `d.dddddddde+XX` (at least two exponent digits); trailing
zeros of the fraction and a bare `.` are dropped; `-0` for negative zero.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from freshrec.stream._feature_kernels import _digits
from freshrec.stream._feature_kernels import _put_int as _put_digits

__all__ = ["write_ranked"]

_POW10 = np.array([10.0**k for k in range(23)])  # exact in float64
_HEAD = np.frombuffer(b'{"item_id":', dtype=np.uint8)
_MID = np.frombuffer(b',"score":', dtype=np.uint8)


@njit(cache=True, inline="always")
def _scale(a: float, k: int, pow10: np.ndarray) -> float:
    """a * 10**k, with exact powers of ten (one or two roundings)."""
    if k >= 0:
        while k > 22:
            a *= pow10[22]
            k -= 22
        return a * pow10[k]
    k = -k
    while k > 22:
        a /= pow10[22]
        k -= 22
    return a / pow10[k]


@njit(cache=True, inline="always")
def _put_int(buf: np.ndarray, at: int, v: int) -> int:
    """Write the decimal digits of an int64 at buf[at]; returns the end."""
    return _put_digits(buf, at, v, _digits(v))


@njit(cache=True)
def _put_g9(buf: np.ndarray, at: int, x: float, pow10: np.ndarray) -> int:
    """Write `%.9g` of a finite float at buf[at]; returns the end."""
    if x < 0 or (x == 0 and np.signbit(x)):
        buf[at] = 45
        at += 1
        x = -x
    if x == 0:
        buf[at] = 48
        return at + 1
    e = int(np.floor(np.log10(x)))
    m = np.rint(_scale(x, 8 - e, pow10))
    if m >= 1e9:
        e += 1
        m = np.rint(_scale(x, 8 - e, pow10))
    elif m < 1e8:
        e -= 1
        m = np.rint(_scale(x, 8 - e, pow10))
    if m >= 1e9:  # rounded up to the next power of ten
        m = 1e8
        e += 1
    digits = np.empty(9, np.uint8)
    q = np.int64(m)
    for j in range(8, -1, -1):
        digits[j] = 48 + q % 10
        q //= 10
    last = 8  # the last significant digit kept
    while last > 0 and digits[last] == 48:
        last -= 1
    if -4 <= e < 9:
        if e >= 0:
            for j in range(e + 1):
                buf[at] = digits[j]
                at += 1
            if last > e:
                buf[at] = 46
                at += 1
                for j in range(e + 1, last + 1):
                    buf[at] = digits[j]
                    at += 1
        else:
            buf[at] = 48
            buf[at + 1] = 46
            at += 2
            for _ in range(-e - 1):
                buf[at] = 48
                at += 1
            for j in range(last + 1):
                buf[at] = digits[j]
                at += 1
        return at
    buf[at] = digits[0]
    at += 1
    if last > 0:
        buf[at] = 46
        at += 1
        for j in range(1, last + 1):
            buf[at] = digits[j]
            at += 1
    buf[at] = 101  # e
    buf[at + 1] = 45 if e < 0 else 43
    at += 2
    ae = -e if e < 0 else e
    if ae < 10:
        buf[at] = 48
        at += 1
    return _put_int(buf, at, ae)


@njit(cache=True)
def _write(buf: np.ndarray, items: np.ndarray, scores: np.ndarray) -> int:
    pow10, head, mid = _POW10, _HEAD, _MID  # module constants, frozen into the kernel
    at = 0
    for i in range(items.shape[0]):
        if i:
            buf[at] = 44
            at += 1
        for b in head:
            buf[at] = b
            at += 1
        at = _put_int(buf, at, items[i])
        for b in mid:
            buf[at] = b
            at += 1
        at = _put_g9(buf, at, np.float64(scores[i]), pow10)
        buf[at] = 125
        at += 1
    return at


def write_ranked(items: np.ndarray, scores: np.ndarray) -> bytes:
    """`{"item_id":I,"score":S},...` of int64 items and finite float32 scores (module docstring)."""
    items = np.ascontiguousarray(items, dtype=np.int64)
    scores = np.ascontiguousarray(scores, dtype=np.float32)
    buf = np.empty(items.shape[0] * 64, np.uint8)  # 11 + 20 + 9 + 16 + 2 bytes per item at most
    n = _write(buf, items, scores)
    return buf[:n].tobytes()

"""Numba kernels that check a whole poll of event records at once (see `freshrec.stream.events`).

The kernels accept a strict subset of the valid records: the canonical layout that
`encode_feature` / `encode_action` write for printable-ASCII names. Anything they do not accept
(spaces, escapes, non-ASCII, other key orders, unknown fields, ids outside int64 (ids are read
exactly over the whole range, `_k_id`), exponents of 3+ digits, a negative ts, ...) is handed to
the full decoder, which decides and words the error. So a kernel may refuse a valid record (it is
only slower) but must never accept an invalid one.
"""

from __future__ import annotations

import numpy as np
from numba import njit


def _lit(text: bytes) -> np.ndarray:
    return np.frombuffer(text, dtype=np.uint8).copy()


_F_RID = _lit(b'{"request_id":')
_F_UID = _lit(b',"user_id":')
_F_IID = _lit(b',"item_id":')
_F_SPARSE = _lit(b',"sparse":{')
_F_DENSE = _lit(b',"dense":{')
_F_TS = _lit(b',"ts":')
_A_ACTION = _lit(b',"action":')
_A_VALUE = _lit(b',"value":')


@njit(cache=True, nogil=True)
def _k_lit(buf: np.ndarray, p: int, end: int, lit: np.ndarray) -> int:
    """Index after the bytes `lit` at p, or -1."""
    n = lit.shape[0]
    if p < 0 or p + n > end:
        return -1
    for i in range(n):
        if buf[p + i] != lit[i]:
            return -1
    return p + n


@njit(cache=True, nogil=True)
def _k_str(buf: np.ndarray, p: int, end: int) -> int:
    """Index after a string of printable ASCII without escapes starting at p, or -1."""
    if p < 0 or p >= end or buf[p] != 34:
        return -1
    p += 1
    while p < end:
        c = buf[p]
        if c == 34:
            return p + 1
        if c < 32 or c > 126 or c == 92:
            return -1
        p += 1
    return -1


@njit(cache=True, nogil=True)
def _k_num(buf: np.ndarray, p: int, end: int, integer: bool) -> int:
    """Index after a JSON number at p (an integer when `integer`), or -1.

    Bounded so that its value is certain to be within int64 (integers: at most 18 digits) or a
    finite float (at most 18 integer digits, exponent of at most 2 digits).
    """
    if p < 0:
        return -1
    if p < end and buf[p] == 45:  # -
        p += 1
    if p >= end:
        return -1
    c = buf[p]
    if c == 48:  # 0
        p += 1
    elif 49 <= c <= 57:
        q = p
        while p < end and 48 <= buf[p] <= 57:
            p += 1
        if p - q > 18:
            return -1
    else:
        return -1
    if integer:
        return p
    if p < end and buf[p] == 46:  # .
        p += 1
        q = p
        while p < end and 48 <= buf[p] <= 57:
            p += 1
        if p == q:
            return -1
    if p < end and (buf[p] == 101 or buf[p] == 69):  # e E
        p += 1
        if p < end and (buf[p] == 43 or buf[p] == 45):
            p += 1
        q = p
        while p < end and 48 <= buf[p] <= 57:
            p += 1
        if p == q or p - q > 2:
            return -1
    return p


_I64_DIGITS = _lit(b"9223372036854775808")  # |INT64_MIN|; INT64_MAX ends in 7


@njit(cache=True, nogil=True)
def _k_id(buf: np.ndarray, p: int, end: int):
    """(index after, value) of a JSON integer within int64 at p; index -1 for any other number
    or one out of range. Exact over all of int64."""
    if p < 0 or p >= end:
        return -1, 0
    neg = buf[p] == 45
    if neg:
        p += 1
    q = p
    v = 0  # accumulated negated: -2**63 fits, 2**63 would not
    if q < end and buf[q] == 48:  # 0
        q += 1
    else:
        while q < end and 48 <= buf[q] <= 57 and q - p < 18:
            v = v * 10 - (buf[q] - 48)
            q += 1
        if q == p:
            return -1, 0
        if q < end and 48 <= buf[q] <= 57:  # a 19th digit: within the limit?
            if q + 1 < end and 48 <= buf[q + 1] <= 57:
                return -1, 0
            for k in range(19):
                lim = _I64_DIGITS[k] - (1 if (k == 18 and not neg) else 0)
                if buf[p + k] != lim:
                    if buf[p + k] > lim:
                        return -1, 0
                    break
            v = v * 10 - (buf[q] - 48)
            q += 1
    if q < end and (buf[q] == 46 or buf[q] == 101 or buf[q] == 69):  # . e E: not an integer
        return -1, 0
    return q, (v if neg else -v)


@njit(cache=True, nogil=True)
def _k_map(buf: np.ndarray, p: int, end: int, arrays: bool) -> int:
    """Index after the body of `{name: [ints], ...}` (arrays) or `{name: number, ...}` whose
    opening brace ends at p, or -1."""
    if p < 0 or p >= end:
        return -1
    if buf[p] == 125:  # }
        return p + 1
    while True:
        p = _k_str(buf, p, end)
        if p < 0 or p + 1 >= end or buf[p] != 58:  # :
            return -1
        p += 1
        if arrays:
            if buf[p] != 91:  # [
                return -1
            p += 1
            if p < end and buf[p] == 93:  # ]
                p += 1
            else:
                while True:
                    p = _k_id(buf, p, end)[0]
                    if p < 0 or p >= end:
                        return -1
                    c = buf[p]
                    p += 1
                    if c == 93:
                        break
                    if c != 44:  # ,
                        return -1
        else:
            p = _k_num(buf, p, end, False)
        if p < 0 or p >= end:
            return -1
        c = buf[p]
        p += 1
        if c == 125:
            return p
        if c != 44:
            return -1


@njit(cache=True, nogil=True)
def _k_name(buf: np.ndarray, p: int, end: int) -> int:
    """Index after a string of 1..256 characters at p (the kernels' names are ASCII), or -1."""
    q = _k_str(buf, p, end)
    if q < 0 or not 1 <= q - p - 2 <= 256:
        return -1
    return q


@njit(cache=True, nogil=True)
def check_features(buf: np.ndarray, spans: np.ndarray, out: np.ndarray) -> None:
    """out[i] = (1, request_id start, end, ts start, end) for each record buf[spans[i]] in the
    canonical feature layout; out[i, 0] = 0 for the others."""
    for i in range(spans.shape[0]):
        s, e = spans[i, 0], spans[i, 1]
        out[i, 0] = 0
        r = _k_lit(buf, s, e, _F_RID)
        p = _k_name(buf, r, e)
        p = _k_id(buf, _k_lit(buf, p, e, _F_UID), e)[0]
        p = _k_id(buf, _k_lit(buf, p, e, _F_IID), e)[0]
        p = _k_map(buf, _k_lit(buf, p, e, _F_SPARSE), e, True)
        p = _k_map(buf, _k_lit(buf, p, e, _F_DENSE), e, False)
        t = _k_lit(buf, p, e, _F_TS)
        if t < 0 or t >= e or buf[t] == 45:  # no negative ts (range checked by the caller)
            continue
        p = _k_num(buf, t, e, False)
        if p < 0 or p + 1 != e or buf[p] != 125:
            continue
        out[i, 0], out[i, 1], out[i, 2], out[i, 3], out[i, 4] = 1, r + 1, _k_name(buf, r, e) - 1, t, p


@njit(cache=True, nogil=True)
def check_actions(buf: np.ndarray, spans: np.ndarray, out: np.ndarray) -> None:
    """out[i] = (1, request_id start, end, action start, end, value start, end, ts start, end) for
    each record buf[spans[i]] in the canonical action layout; out[i, 0] = 0 for the others."""
    for i in range(spans.shape[0]):
        s, e = spans[i, 0], spans[i, 1]
        out[i, 0] = 0
        r = _k_lit(buf, s, e, _F_RID)
        r2 = _k_name(buf, r, e)
        a = _k_lit(buf, r2, e, _A_ACTION)
        a2 = _k_name(buf, a, e)
        v = _k_lit(buf, a2, e, _A_VALUE)
        v2 = _k_num(buf, v, e, False)
        if v2 < 0 or (v2 - v == 2 and buf[v] == 45 and buf[v + 1] == 48):  # "-0" is the integer 0
            continue
        t = _k_lit(buf, v2, e, _F_TS)
        if t < 0 or t >= e or buf[t] == 45:
            continue
        p = _k_num(buf, t, e, False)
        if p < 0 or p + 1 != e or buf[p] != 125:
            continue
        out[i, 0], out[i, 1], out[i, 2], out[i, 3], out[i, 4] = 1, r + 1, r2 - 1, a + 1, a2 - 1
        out[i, 5], out[i, 6], out[i, 7], out[i, 8] = v, v2, t, p

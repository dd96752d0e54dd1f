"""Numba kernel that decodes a whole poll of canonical example records into columns.

`decode_columns` walks every record of a poll once and, for those written in the canonical
example layout (`encode_example` / `example_from_feature_bytes`: fields in order, no spaces,
printable-ASCII strings without escapes, any int64 id), fills the columns a trainer's
`ExampleSchema` reads. A record it does not accept (any other layout, a schema name twice in one
map, a number it cannot convert exactly, ...) is marked for the full decoder, which decides and
words the error: the kernel may refuse a valid record (it is only slower) but never accepts an
invalid one, and every value it writes equals what Python's decoder gives.

Numbers. A JSON number is read as digits `m` (at most 18 significant ones) and a power of ten
`e10`. For float64 fields (`ts`, `sample_rate`) the value is exact when `m <= 2**53` and
`|e10| <= 22` (one correctly rounded multiplication or division of two exact doubles, as
Clinger's fast path); `ts` of more digits is converted by the caller from the bytes. For float32
columns (dense values, labels) `d = float(m) * 10**e10` is within 2**-50 of the exact double `x`;
when no float32 rounding boundary lies that close to `d`, float32(d) == float32(x), which is what
the Python path stores. Anything else refuses the record.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from freshrec.stream._wire_kernels import _F_DENSE as _DENSE
from freshrec.stream._wire_kernels import _F_IID as _IID
from freshrec.stream._wire_kernels import _F_RID as _RID
from freshrec.stream._wire_kernels import _F_SPARSE as _SPARSE
from freshrec.stream._wire_kernels import _F_TS as _TS
from freshrec.stream._wire_kernels import _F_UID as _UID
from freshrec.stream._wire_kernels import _k_id, _k_lit, _k_name, _k_num, _k_str, _lit

MISSING = -(2**63)

# an example is a canonical feature record (the same leading literals) with its labels after it
_LABELS = _lit(b',"labels":{')
_RATE = _lit(b',"sample_rate":')
_POW10 = np.array([10.0**k for k in range(23)], dtype=np.float64)
_TWO53 = 2**53
_F32_MAX = 3.4028234663852886e38
_F32_TINY = 1.1754943508222875e-38  # smallest normal float32


@njit(cache=True, nogil=True)
def _k_dec(buf: np.ndarray, p: int, end: int):
    """(index after, m, e10, negative, integer form, exact digits) of the JSON number at p;
    index -1 when it is not one `_k_num(float)` accepts. value = (-1)**neg * m * 10**e10, exact
    digits False when significant digits past the 18th were dropped."""
    q = _k_num(buf, p, end, False)
    if q < 0:
        return -1, 0, 0, False, True, False
    neg = buf[p] == 45
    if neg:
        p += 1
    m = 0
    nd = 0
    e10 = 0
    exact = True
    integer = True
    frac = False
    while p < q:
        c = buf[p]
        if c == 46:
            frac = True
            integer = False
        elif c == 101 or c == 69:
            integer = False
            p += 1
            sign = 1
            if buf[p] == 45:
                sign = -1
                p += 1
            elif buf[p] == 43:
                p += 1
            x = 0
            while p < q:
                x = x * 10 + (buf[p] - 48)
                p += 1
            e10 += sign * x
            break
        else:
            d = c - 48
            if nd < 18:
                if m != 0 or d != 0:
                    m = m * 10 + d
                    nd += 1
                if frac:
                    e10 -= 1
            elif d != 0:
                exact = False
            elif not frac:  # a dropped integer digit (never: at most 18 integer digits)
                exact = False
        p += 1
    return q, m, e10, neg, integer, exact


@njit(cache=True, nogil=True)
def _k_f64(m: int, e10: int, neg: bool, integer: bool, exact: bool):
    """(ok, value): the exact double of a decoded number, ok False when it cannot be sure."""
    if not exact:
        return False, 0.0
    if m == 0:
        return True, (-0.0 if neg and not integer else 0.0)
    if m > _TWO53 or e10 < -22 or e10 > 22:
        return False, 0.0
    d = float(m)
    d = d * _POW10[e10] if e10 >= 0 else d / _POW10[-e10]
    return True, (-d if neg else d)


@njit(cache=True, nogil=True)
def _k_f32(m: int, e10: int, neg: bool, integer: bool, exact: bool):
    """(ok, value): float32 of the exact double of a decoded number (module docstring)."""
    if not exact:
        return False, np.float32(0.0)
    if m == 0:
        return True, np.float32(-0.0 if neg and not integer else 0.0)
    if e10 < -22 or e10 > 22:
        return False, np.float32(0.0)
    d = float(m)
    d = d * _POW10[e10] if e10 >= 0 else d / _POW10[-e10]
    if d < _F32_TINY or d > _F32_MAX:
        return False, np.float32(0.0)
    f = float(np.float32(d))
    mant, ex = math.frexp(f)
    ulp = math.ldexp(1.0, ex - 24)
    hi = f + 0.5 * ulp
    lo = f - (0.25 * ulp if mant == 0.5 else 0.5 * ulp)
    tol = d * 8.881784197001252e-16  # 2**-50
    if not (d - tol > lo and d + tol < hi):
        return False, np.float32(0.0)
    return True, np.float32(-f if neg else f)


@njit(cache=True, nogil=True)
def _k_find(buf: np.ndarray, ks: int, ke: int, names: np.ndarray, offs: np.ndarray, guess: int) -> int:
    """Index of the name buf[ks:ke] in the table (names[offs[k]:offs[k+1]]), trying `guess`
    first; -1 when absent."""
    k = offs.shape[0] - 1
    n = ke - ks
    for t in range(k + 1):
        j = guess if t == 0 else t - 1
        if t > 0 and j == guess:
            continue
        if j < 0 or j >= k:
            continue
        a = offs[j]
        if offs[j + 1] - a != n:
            continue
        same = True
        for i in range(n):
            if buf[ks + i] != names[a + i]:
                same = False
                break
        if same:
            return j
    return -1


@njit(cache=True, nogil=True)
def _k_sparse(buf, p, end, i, names, offs, kind, col, seen, single, bag_start, bag_len):
    """Parse the body of the sparse map whose brace ends at p for record i; index after, or -1."""
    if p < 0 or p >= end:
        return -1
    if buf[p] == 125:
        return p + 1
    guess = 0
    while True:
        ks = p + 1
        p = _k_str(buf, p, end)
        if p < 0 or p + 1 >= end or buf[p] != 58 or buf[p + 1] != 91:
            return -1
        j = _k_find(buf, ks, p - 1, names, offs, guess)
        if j >= 0:
            if seen[j] == i:
                return -1  # a schema name twice: the full decoder keeps the last, let it
            seen[j] = i
            guess = j + 1
        p += 2
        count = 0
        start = p
        first = MISSING
        if p < end and buf[p] == 93:
            p += 1
        else:
            while True:
                q, v = _k_id(buf, p, end)
                if q < 0 or q >= end:
                    return -1
                if count == 0:
                    first = v
                count += 1
                c = buf[q]
                p = q + 1
                if c == 93:
                    break
                if c != 44:
                    return -1
        if j >= 0:
            if kind[j] == 0:
                single[col[j], i] = first
            else:
                bag_start[col[j], i] = start
                bag_len[col[j], i] = count
        if p >= end:
            return -1
        c = buf[p]
        p += 1
        if c == 125:
            return p
        if c != 44:
            return -1


@njit(cache=True, nogil=True)
def _k_floats(buf, p, end, i, names, offs, seen, out, main):
    """Parse the body of a name -> number map whose brace ends at p for record i into out[i, j]
    (float32); with main >= 0, name `main` sets out[i, main] to 1.0 if its value > 0 else 0.0.
    Index after, or -1."""
    if p < 0 or p >= end:
        return -1
    if buf[p] == 125:
        return p + 1
    guess = 0
    while True:
        ks = p + 1
        p = _k_str(buf, p, end)
        if p < 0 or p + 1 >= end or buf[p] != 58:
            return -1
        j = _k_find(buf, ks, p - 1, names, offs, guess)
        p += 1
        q, m, e10, neg, integer, exact = _k_dec(buf, p, end)
        if q < 0:
            return -1
        if j >= 0:
            if seen[j] == i:
                return -1
            seen[j] = i
            guess = j + 1
            if j == main:  # the sign is certain; a value under 1e-300 may round to 0.0: refuse
                if m != 0 and e10 < -300:
                    return -1
                out[i, j] = 1.0 if (m != 0 and not neg) else 0.0
            else:
                ok, v = _k_f32(m, e10, neg, integer, exact)
                if not ok:
                    return -1
                out[i, j] = v
        p = q
        if p >= end:
            return -1
        c = buf[p]
        p += 1
        if c == 125:
            return p
        if c != 44:
            return -1


@njit(cache=True, nogil=True)
def decode_columns(
    buf, spans, sp_names, sp_offs, sp_kind, sp_col, n_single, n_multi, user_col, item_col,
    de_names, de_offs, la_names, la_offs,
):
    """Columns of every canonical example record buf[spans[i]] (module docstring).

    Sparse table k (names sp_names[sp_offs[k]:sp_offs[k+1]]): kind 0 = single slot column
    sp_col[k] of `single`, kind 1 = multi slot sp_col[k]; user_col / item_col: the single columns
    read from user_id / item_id (-1: none). Label table entry 0 is the binary label.

    Returns (ok, single (S, n), offsets (M, n + 1), values (M, total), dense (n, D), labels (n, L),
    ts (n,), ts span (n, 2), ts exact (n,), rate (n,) float32). ok[i] == 0: decode record i in
    Python (its row of every column is meaningless); ts exact[i] == 0: ts[i] must be read from
    the bytes of its span (a valid number, in range when converted exactly).
    """
    n = spans.shape[0]
    n_sp = sp_offs.shape[0] - 1
    n_de = de_offs.shape[0] - 1
    n_la = la_offs.shape[0] - 1
    ok = np.zeros(n, np.uint8)
    single = np.full((n_single, n), MISSING, np.int64)
    bag_start = np.zeros((n_multi, n), np.int64)
    bag_len = np.zeros((n_multi, n), np.int64)
    dense = np.zeros((n, n_de), np.float32)
    labels = np.zeros((n, n_la), np.float32)
    ts = np.zeros(n, np.float64)
    ts_span = np.zeros((n, 2), np.int64)
    ts_exact = np.zeros(n, np.uint8)
    rate = np.ones(n, np.float32)
    seen_sp = np.full(max(n_sp, 1), -1, np.int64)
    seen_de = np.full(max(n_de, 1), -1, np.int64)
    seen_la = np.full(max(n_la, 1), -1, np.int64)
    for i in range(n):
        s, e = spans[i, 0], spans[i, 1]
        r = _k_lit(buf, s, e, _RID)
        p = _k_name(buf, r, e)
        u = _k_lit(buf, p, e, _UID)
        p, uid = _k_id(buf, u, e)
        if p < 0:
            continue
        t = _k_lit(buf, p, e, _IID)
        p, iid = _k_id(buf, t, e)
        if p < 0:
            continue
        p = _k_sparse(
            buf, _k_lit(buf, p, e, _SPARSE), e, i, sp_names, sp_offs, sp_kind, sp_col, seen_sp,
            single, bag_start, bag_len,
        )
        p = _k_floats(buf, _k_lit(buf, p, e, _DENSE), e, i, de_names, de_offs, seen_de, dense, -1)
        t = _k_lit(buf, p, e, _TS)
        if t < 0 or t >= e or buf[t] == 45:  # no negative ts
            for c in range(n_multi):
                bag_len[c, i] = 0
            continue
        q, m, e10, neg, integer, exact = _k_dec(buf, t, e)
        if q < 0:
            for c in range(n_multi):
                bag_len[c, i] = 0
            continue
        good, v = _k_f64(m, e10, neg, integer, exact)
        p = _k_floats(buf, _k_lit(buf, q, e, _LABELS), e, i, la_names, la_offs, seen_la, labels, 0)
        a = _k_lit(buf, p, e, _RATE)
        rq, rm, re10, rneg, rint, rexact = _k_dec(buf, a, e)
        if rq < 0 or rq + 1 != e or buf[rq] != 125:
            for c in range(n_multi):
                bag_len[c, i] = 0
            continue
        rgood, rv = _k_f64(rm, re10, rneg, rint, rexact)
        if not rgood or not (0.0 < rv <= 1.0) or (good and not v < 1e11):
            for c in range(n_multi):
                bag_len[c, i] = 0
            continue
        ok[i] = 1
        ts[i] = v
        ts_exact[i] = 1 if good else 0
        ts_span[i, 0], ts_span[i, 1] = t, q
        rate[i] = np.float32(rv)
        if user_col >= 0:
            single[user_col, i] = uid
        if item_col >= 0:
            single[item_col, i] = iid
    # the bags: offsets from the counts, then the ids themselves
    offsets = np.zeros((n_multi, n + 1), np.int64)
    for c in range(n_multi):
        for i in range(n):
            offsets[c, i + 1] = offsets[c, i] + (bag_len[c, i] if ok[i] else 0)
    total = 0
    for c in range(n_multi):
        total = max(total, offsets[c, n])
    values = np.zeros((n_multi, total), np.int64)
    for c in range(n_multi):
        for i in range(n):
            if not ok[i]:
                continue
            p = bag_start[c, i]
            e = spans[i, 1]
            w = offsets[c, i]
            for _ in range(bag_len[c, i]):
                q, v = _k_id(buf, p, e)
                values[c, w] = v
                w += 1
                p = q + 1
    return ok, single, offsets, values, dense, labels, ts, ts_span, ts_exact, rate

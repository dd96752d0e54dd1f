"""Numba kernels of the per-row sparse optimizers (SGD, Adagrad, Adam, FTRL-Proximal).

Row storage is chunked: rows live in C-contiguous 2-D float32 chunks of shape (CHUNK, width) with
CHUNK = 1 << chunk_bits and width = dim + state_width(dim); kernels get `chunks` as the int64 array
of the chunks' base addresses (see `freshrec.table._rowptr`). Row r is row r & (CHUNK - 1) of chunk
r >> chunk_bits. Worked example, Adam, dim = 2, chunk_bits = 2:

    width = 2 + (2 * 2 + 1) = 7;  row 5 -> chunks[1][1] = [w0 w1 | m0 m1 | v0 v1 | step]

Layouts of the optimizer state (columns [dim:]) are those of `freshrec.table.optimizers`; the
meaning of `hyper` is its configs' `hyper()`:

    kind 0 SGD      hyper = [lr]
    kind 1 Adagrad  hyper = [lr, initial_accumulator_value, eps]
    kind 2 Adam     hyper = [lr, beta1, beta2, eps]
    kind 3 FTRL     hyper = [alpha, beta, l1, l2]

Arithmetic is float64 inside a kernel; rows are stored back as float32. SGD, Adagrad and Adam
follow `torch.optim.SGD/Adagrad/Adam` (weight_decay = 0, lr_decay = 0, amsgrad = False); Adam keeps
the number of updates each row received in its last state column (a float32, exact to 2**24) and
bias-corrects with it. All kernels release the GIL; callers must not update the same rows from two
threads at once.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from freshrec.errors import ConfigError, DataError
from freshrec.table._rowptr import row_of

__all__ = ["apply_rows", "init_state"]

SGD_KIND, ADAGRAD_KIND, ADAM_KIND, FTRL_KIND = 0, 1, 2, 3


@njit(inline="always", cache=True)
def _width(kind, dim):
    """Row width (embedding + optimizer state) of an optimizer kind; see freshrec.table.optimizers."""
    if kind == ADAGRAD_KIND:
        return 2 * dim
    if kind == ADAM_KIND:
        return 3 * dim + 1
    if kind == FTRL_KIND:
        return 3 * dim
    return dim


@njit(nogil=True, cache=True)
def _sgd(hyper, chunks, chunk_bits, dim, rows, grads):
    lr = hyper[0]
    width = _width(SGD_KIND, dim)
    for i in range(rows.shape[0]):
        r = rows[i]
        row = row_of(chunks, chunk_bits, width, r)
        for j in range(dim):
            row[j] = np.float32(np.float64(row[j]) - lr * np.float64(grads[i, j]))


@njit(nogil=True, cache=True)
def _adagrad(hyper, chunks, chunk_bits, dim, rows, grads):
    # torch: sum += g^2; p -= lr * g / (sqrt(sum) + eps)
    lr = hyper[0]
    eps = hyper[2]
    width = _width(ADAGRAD_KIND, dim)
    for i in range(rows.shape[0]):
        r = rows[i]
        row = row_of(chunks, chunk_bits, width, r)
        for j in range(dim):
            g = np.float64(grads[i, j])
            acc = np.float32(np.float64(row[dim + j]) + g * g)
            row[dim + j] = acc
            row[j] = np.float32(np.float64(row[j]) - lr * g / (math.sqrt(np.float64(acc)) + eps))


@njit(nogil=True, cache=True)
def _adam(hyper, chunks, chunk_bits, dim, rows, grads):
    # torch: t += 1; m = b1 m + (1 - b1) g; v = b2 v + (1 - b2) g^2;
    #        p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
    lr = hyper[0]
    b1 = hyper[1]
    b2 = hyper[2]
    eps = hyper[3]
    width = _width(ADAM_KIND, dim)
    for i in range(rows.shape[0]):
        r = rows[i]
        row = row_of(chunks, chunk_bits, width, r)
        t = np.float64(row[3 * dim]) + 1.0
        row[3 * dim] = np.float32(t)
        step_size = lr / (1.0 - b1**t)
        bc2_sqrt = math.sqrt(1.0 - b2**t)
        for j in range(dim):
            g = np.float64(grads[i, j])
            m = np.float32(np.float64(row[dim + j]) + (1.0 - b1) * (g - np.float64(row[dim + j])))
            v = np.float32(b2 * np.float64(row[2 * dim + j]) + (1.0 - b2) * g * g)
            row[dim + j] = m
            row[2 * dim + j] = v
            denom = math.sqrt(np.float64(v)) / bc2_sqrt + eps
            row[j] = np.float32(np.float64(row[j]) - step_size * np.float64(m) / denom)


@njit(nogil=True, cache=True)
def _ftrl_weight(z, n, alpha, beta, l1, l2):
    """FTRL-Proximal closed form: 0 if |z| <= l1 else -(z - sign(z) l1) / ((beta + sqrt(n)) / alpha + l2)."""
    if abs(z) <= l1:
        return 0.0
    denom = (beta + math.sqrt(n)) / alpha + l2
    if denom <= 0.0:
        return 0.0
    s = 1.0 if z > 0 else -1.0
    return -(z - s * l1) / denom


@njit(nogil=True, cache=True)
def _ftrl(hyper, chunks, chunk_bits, dim, rows, grads):
    # McMahan et al. 2013, Algorithm 1, per coordinate; w is the stored embedding (current weight).
    alpha = hyper[0]
    beta = hyper[1]
    l1 = hyper[2]
    l2 = hyper[3]
    width = _width(FTRL_KIND, dim)
    for i in range(rows.shape[0]):
        r = rows[i]
        row = row_of(chunks, chunk_bits, width, r)
        for j in range(dim):
            g = np.float64(grads[i, j])
            w = np.float64(row[j])
            z = np.float64(row[dim + j])
            n = np.float64(row[2 * dim + j])
            n_new = n + g * g
            sigma = (math.sqrt(n_new) - math.sqrt(n)) / alpha
            z = z + g - sigma * w
            row[dim + j] = np.float32(z)
            row[2 * dim + j] = np.float32(n_new)
            row[j] = np.float32(_ftrl_weight(z, n_new, alpha, beta, l1, l2))


@njit(nogil=True, cache=True)
def apply_rows(kind, hyper, chunks, chunk_bits, dim, rows, grads):
    """Update rows[i] in place with gradient grads[i] (float32 (len(rows), dim)), for every i.

    Rows must be distinct (gradients of duplicates summed beforehand) and allocated. `kind` is
    one of SGD_KIND, ADAGRAD_KIND, ADAM_KIND, FTRL_KIND; an unknown kind raises ConfigError, grads of the
    wrong shape DataError.
    """
    if grads.shape[0] != rows.shape[0] or grads.shape[1] < dim:
        raise DataError("apply_rows: grads must have shape (len(rows), dim)")
    if kind == SGD_KIND:
        _sgd(hyper, chunks, chunk_bits, dim, rows, grads)
    elif kind == ADAGRAD_KIND:
        _adagrad(hyper, chunks, chunk_bits, dim, rows, grads)
    elif kind == ADAM_KIND:
        _adam(hyper, chunks, chunk_bits, dim, rows, grads)
    elif kind == FTRL_KIND:
        _ftrl(hyper, chunks, chunk_bits, dim, rows, grads)
    else:
        raise ConfigError("apply_rows: unknown optimizer kind")


@njit(nogil=True, cache=True)
def init_state(kind, hyper, chunks, chunk_bits, dim, rows):
    """Set the optimizer state of new rows whose embedding (columns [0:dim]) is already written.

    SGD: nothing. Adagrad: accumulator = initial_accumulator_value. Adam: m = v = 0, step = 0.
    FTRL: n = 0 and z such that the weight formula gives back the initial embedding w0:
    with d = beta / alpha + l2 (the denominator at n = 0), z = -(w0 * d + sign(w0) * l1), so
    |z| = |w0| d + l1 > l1 and -(z - sign(z) l1) / d = w0; w0 = 0 gives z = 0. If d = 0
    (beta = l2 = 0) no z reproduces w0: z = 0 and the stored embedding stays the current weight
    until the first update, which recomputes it from z and n.
    """
    width = _width(kind, dim)
    if kind == SGD_KIND:
        return
    for i in range(rows.shape[0]):
        r = rows[i]
        row = row_of(chunks, chunk_bits, width, r)
        if kind == ADAGRAD_KIND:
            acc0 = np.float32(hyper[1])
            for j in range(dim):
                row[dim + j] = acc0
        elif kind == ADAM_KIND:
            for j in range(2 * dim + 1):
                row[dim + j] = np.float32(0.0)
        elif kind == FTRL_KIND:
            alpha = hyper[0]
            beta = hyper[1]
            l1 = hyper[2]
            l2 = hyper[3]
            d = beta / alpha + l2
            for j in range(dim):
                w0 = np.float64(row[j])
                z = 0.0
                if d > 0.0 and w0 != 0.0:
                    s = 1.0 if w0 > 0 else -1.0
                    z = -(w0 * d + s * l1)
                row[dim + j] = np.float32(z)
                row[2 * dim + j] = np.float32(0.0)
        else:
            raise ConfigError("init_state: unknown optimizer kind")

"""Sparse-optimizer kernels against their oracles: torch.optim (SGD, Adagrad, Adam) and a float64
reference of FTRL-Proximal written from McMahan et al. 2013, Algorithm 1."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from freshrec.table import _optim_kernels
from freshrec.table.optimizers import FTRL, SGD, Adagrad, Adam


class List(list):
    """Row chunks as RowStore keeps them: numpy arrays, handed to kernels by base address."""

    @property
    def ptrs(self) -> np.ndarray:
        return np.array([c.ctypes.data for c in self], dtype=np.int64)


def apply_rows(kind, hyper, chunks: List, chunk_bits, dim, rows, grads) -> None:
    _optim_kernels.apply_rows(kind, hyper, chunks.ptrs, chunk_bits, dim, rows, grads)


def init_state(kind, hyper, chunks: List, chunk_bits, dim, rows) -> None:
    _optim_kernels.init_state(kind, hyper, chunks.ptrs, chunk_bits, dim, rows)


def make_chunks(n_chunks: int, chunk_bits: int, width: int, rng: np.random.Generator | None = None) -> List:
    chunks = List()
    for _ in range(n_chunks):
        c = np.zeros((1 << chunk_bits, width), np.float32)
        if rng is not None:
            c[:] = rng.standard_normal(c.shape).astype(np.float32)
        chunks.append(c)
    return chunks


def get_rows(chunks: List, chunk_bits: int, rows: np.ndarray) -> np.ndarray:
    mask = (1 << chunk_bits) - 1
    return np.stack([chunks[r >> chunk_bits][r & mask] for r in rows])


def set_emb(chunks: List, chunk_bits: int, rows: np.ndarray, emb: np.ndarray) -> None:
    mask = (1 << chunk_bits) - 1
    for r, e in zip(rows, emb, strict=True):
        chunks[r >> chunk_bits][r & mask, : e.shape[0]] = e


def torch_optimizer(opt, param: torch.nn.Parameter) -> torch.optim.Optimizer:
    if isinstance(opt, SGD):
        return torch.optim.SGD([param], lr=opt.lr)
    if isinstance(opt, Adagrad):
        return torch.optim.Adagrad(
            [param], lr=opt.lr, initial_accumulator_value=opt.initial_accumulator_value, eps=opt.eps
        )
    if isinstance(opt, Adam):
        return torch.optim.Adam([param], lr=opt.lr, betas=(opt.beta1, opt.beta2), eps=opt.eps)
    raise AssertionError(opt)


def run_against_torch(
    opt, *, n: int, dim: int, chunk_bits: int, steps: int, seed: int, grad_scale: float = 1.0
) -> None:
    """Dense gradients on n distinct rows spread over several chunks; every row updates each step."""
    rng = np.random.default_rng(seed)
    width = dim + opt.state_width(dim)
    chunk = 1 << chunk_bits
    n_chunks = max(2, -(-2 * n // chunk))
    chunks = make_chunks(n_chunks, chunk_bits, width, rng)  # random everywhere: untouched rows must stay
    before = [c.copy() for c in chunks]
    rows = rng.choice(n_chunks * chunk, size=n, replace=False).astype(np.int64)
    w0 = rng.standard_normal((n, dim)).astype(np.float32)
    set_emb(chunks, chunk_bits, rows, w0)
    init_state(opt.kind, opt.hyper(), chunks, chunk_bits, dim, rows)

    param = torch.nn.Parameter(torch.from_numpy(w0.copy()))
    topt = torch_optimizer(opt, param)
    for _ in range(steps):
        g = (grad_scale * rng.standard_normal((n, dim))).astype(np.float32)
        apply_rows(opt.kind, opt.hyper(), chunks, chunk_bits, dim, rows, g)
        param.grad = torch.from_numpy(g.copy())
        topt.step()

    got = get_rows(chunks, chunk_bits, rows)
    torch.testing.assert_close(torch.from_numpy(got[:, :dim]), param.detach(), rtol=1e-5, atol=1e-6)
    # optimizer state against torch's state
    st_ = topt.state[param]
    if isinstance(opt, Adagrad):
        torch.testing.assert_close(torch.from_numpy(got[:, dim:]), st_["sum"], rtol=1e-5, atol=1e-6)
    if isinstance(opt, Adam):
        torch.testing.assert_close(
            torch.from_numpy(got[:, dim : 2 * dim]), st_["exp_avg"], rtol=1e-5, atol=1e-6
        )
        torch.testing.assert_close(
            torch.from_numpy(got[:, 2 * dim : 3 * dim]), st_["exp_avg_sq"], rtol=1e-5, atol=1e-7
        )
        np.testing.assert_array_equal(got[:, 3 * dim], np.full(n, steps, np.float32))
    # rows not listed are untouched, bit for bit
    listed = np.zeros(n_chunks * chunk, bool)
    listed[rows] = True
    for r in np.flatnonzero(~listed):
        np.testing.assert_array_equal(
            chunks[r >> chunk_bits][r & (chunk - 1)], before[r >> chunk_bits][r & (chunk - 1)]
        )


@pytest.mark.parametrize(
    "opt",
    [
        SGD(lr=0.05),
        Adagrad(lr=0.1),
        Adagrad(lr=0.05, initial_accumulator_value=0.1, eps=1e-6),
        Adam(lr=0.01),
        Adam(lr=0.003, beta1=0.8, beta2=0.99, eps=1e-6),
    ],
    ids=lambda o: repr(o),
)
def test_matches_torch_over_many_steps(opt) -> None:
    run_against_torch(opt, n=40, dim=16, chunk_bits=4, steps=60, seed=1)


def test_adam_step_counts_per_row() -> None:
    """A row updated k times is bias-corrected with k, like a torch Adam that saw only its k steps."""
    opt = Adam(lr=0.01)
    dim, cb = 4, 2
    chunks = make_chunks(2, cb, dim + opt.state_width(dim))
    rng = np.random.default_rng(3)
    w0 = rng.standard_normal((2, dim)).astype(np.float32)
    rows = np.array([1, 6], np.int64)
    set_emb(chunks, cb, rows, w0)
    init_state(opt.kind, opt.hyper(), chunks, cb, dim, rows)
    pa = torch.nn.Parameter(torch.from_numpy(w0[0].copy()))
    pb = torch.nn.Parameter(torch.from_numpy(w0[1].copy()))
    ta, tb = torch.optim.Adam([pa], lr=0.01), torch.optim.Adam([pb], lr=0.01)
    for step in range(30):
        g = rng.standard_normal((2, dim)).astype(np.float32)
        if step % 3 == 0:  # row 6 only every third step
            apply_rows(opt.kind, opt.hyper(), chunks, cb, dim, rows, g)
            pb.grad = torch.from_numpy(g[1].copy())
            tb.step()
        else:
            apply_rows(opt.kind, opt.hyper(), chunks, cb, dim, rows[:1], g[:1])
        pa.grad = torch.from_numpy(g[0].copy())
        ta.step()
    got = get_rows(chunks, cb, rows)
    assert got[0, 3 * dim] == 30 and got[1, 3 * dim] == 10
    torch.testing.assert_close(torch.from_numpy(got[0, :dim]), pa.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(torch.from_numpy(got[1, :dim]), pb.detach(), rtol=1e-5, atol=1e-6)


def test_empty_rows_and_bad_input() -> None:
    opt = Adagrad()
    chunks = make_chunks(1, 2, 2 * 3)
    apply_rows(opt.kind, opt.hyper(), chunks, 2, 3, np.zeros(0, np.int64), np.zeros((0, 3), np.float32))
    assert not chunks[0].any()
    with pytest.raises(ValueError):
        apply_rows(opt.kind, opt.hyper(), chunks, 2, 3, np.zeros(2, np.int64), np.zeros((1, 3), np.float32))
    with pytest.raises(ValueError):
        apply_rows(9, opt.hyper(), chunks, 2, 3, np.zeros(1, np.int64), np.zeros((1, 3), np.float32))


def test_init_state_layouts() -> None:
    dim, cb = 3, 1
    rows = np.array([0, 3], np.int64)
    for opt, expect in [
        (Adagrad(initial_accumulator_value=0.25), lambda s: np.all(s == 0.25)),
        (Adam(), lambda s: np.all(s == 0.0)),
    ]:
        chunks = make_chunks(2, cb, dim + opt.state_width(dim), np.random.default_rng(0))
        init_state(opt.kind, opt.hyper(), chunks, cb, dim, rows)
        state = get_rows(chunks, cb, rows)[:, dim:]
        assert state.shape[1] == opt.state_width(dim)
        assert expect(state)
        # the other rows of the chunks keep their values
        assert np.all(chunks[0][1] != 0) and np.all(chunks[1][0] != 0)


@settings(max_examples=40, deadline=None)
@given(
    kind=st.sampled_from(["sgd", "adagrad", "adam"]),
    n=st.integers(1, 24),
    dim=st.integers(1, 19),
    chunk_bits=st.integers(0, 5),
    steps=st.integers(1, 40),
    lr=st.floats(1e-4, 0.1),
    acc0=st.floats(0.0, 1.0),
    beta1=st.floats(0.0, 0.95),
    beta2=st.floats(0.9, 0.9999),
    eps=st.sampled_from([1e-10, 1e-8, 1e-6]),
    grad_scale=st.floats(0.01, 10.0),
    seed=st.integers(0, 2**31),
)
def test_matches_torch_property(
    kind, n, dim, chunk_bits, steps, lr, acc0, beta1, beta2, eps, grad_scale, seed
):
    if kind == "sgd":
        opt = SGD(lr=lr)
    elif kind == "adagrad":
        opt = Adagrad(lr=lr, initial_accumulator_value=acc0, eps=eps)
    else:
        opt = Adam(lr=lr, beta1=beta1, beta2=beta2, eps=eps)
    run_against_torch(opt, n=n, dim=dim, chunk_bits=chunk_bits, steps=steps, seed=seed, grad_scale=grad_scale)


# ---- FTRL ------------------------------------------------------------------------------------------


def ftrl_reference(z, n, grads, *, alpha, beta, l1, l2):
    """McMahan et al. 2013, Algorithm 1, float64, per coordinate; w is computed from (z, n) each round."""
    z = np.array(z, np.float64)
    n = np.array(n, np.float64)

    def weight(z, n):
        w = -(z - np.sign(z) * l1) / ((beta + np.sqrt(n)) / alpha + l2)
        return np.where(np.abs(z) <= l1, 0.0, w)

    for g in grads:
        g = g.astype(np.float64)
        w = weight(z, n)
        sigma = (np.sqrt(n + g * g) - np.sqrt(n)) / alpha
        z = z + g - sigma * w
        n = n + g * g
    return weight(z, n), z, n


@pytest.mark.parametrize(
    "opt", [FTRL(), FTRL(alpha=0.1, beta=1.0, l1=1.0, l2=0.5), FTRL(alpha=0.5, beta=0.5, l1=3.0, l2=0.0)]
)
@pytest.mark.parametrize("init", ["zeros", "normal"])
def test_ftrl_matches_reference(opt, init) -> None:
    rng = np.random.default_rng(7)
    n_rows, dim, cb, steps = 30, 8, 3, 80
    width = dim + opt.state_width(dim)
    chunks = make_chunks(6, cb, width)
    rows = rng.choice(6 << cb, size=n_rows, replace=False).astype(np.int64)
    w0 = (
        np.zeros((n_rows, dim), np.float32)
        if init == "zeros"
        else rng.standard_normal((n_rows, dim)).astype(np.float32)
    )
    set_emb(chunks, cb, rows, w0)
    init_state(opt.kind, opt.hyper(), chunks, cb, dim, rows)
    z0 = get_rows(chunks, cb, rows)[:, dim : 2 * dim]
    a, b, l1, l2 = opt.alpha, opt.beta, opt.l1, opt.l2
    # init_state's z reproduces the initial embedding through the weight formula
    w_init, _, _ = ftrl_reference(z0, np.zeros_like(z0), [], alpha=a, beta=b, l1=l1, l2=l2)
    np.testing.assert_allclose(w_init, w0, rtol=1e-6, atol=1e-7)

    # a fixed per-coordinate bias so some coordinates move far (|z| > l1) and others stay sparse
    bias = rng.standard_normal((n_rows, dim)) * rng.choice([0.0, 1.0], size=(n_rows, dim))
    grads = [(bias + 0.5 * rng.standard_normal((n_rows, dim))).astype(np.float32) for _ in range(steps)]
    for g in grads:
        apply_rows(opt.kind, opt.hyper(), chunks, cb, dim, rows, g)
    w_ref, z_ref, n_ref = ftrl_reference(z0, np.zeros_like(z0), grads, alpha=a, beta=b, l1=l1, l2=l2)
    got = get_rows(chunks, cb, rows)
    np.testing.assert_allclose(got[:, dim : 2 * dim], z_ref, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(got[:, 2 * dim :], n_ref, rtol=1e-5)
    np.testing.assert_allclose(got[:, :dim], w_ref, rtol=1e-4, atol=1e-5)
    if l1 > 0:
        clearly_sparse = np.abs(z_ref) < l1 * 0.999
        clearly_dense = np.abs(z_ref) > l1 * 1.001
        if init == "zeros":  # the test exercises both (from nonzero starts, w rarely returns to 0)
            assert clearly_sparse.sum() > 10 and clearly_dense.sum() > 10
        assert np.all(got[:, :dim][clearly_sparse] == 0.0)  # exactly zero
        assert np.all(got[:, :dim][clearly_dense] != 0.0)


def test_ftrl_init_without_denominator() -> None:
    """beta = l2 = 0: the initial embedding stays the weight until the first update recomputes it."""
    opt = FTRL(alpha=0.1, beta=0.0)
    dim, cb = 2, 1
    chunks = make_chunks(1, cb, dim + opt.state_width(dim))
    rows = np.array([1], np.int64)
    set_emb(chunks, cb, rows, np.array([[0.5, -0.25]], np.float32))
    init_state(opt.kind, opt.hyper(), chunks, cb, dim, rows)
    np.testing.assert_array_equal(chunks[0][1], [0.5, -0.25, 0, 0, 0, 0])
    g = np.array([[1.0, 0.0]], np.float32)
    apply_rows(opt.kind, opt.hyper(), chunks, cb, dim, rows, g)
    # coordinate 0: sigma = 1/alpha = 10, z = 1 - 10 * 0.5 = -4, n = 1, w = 4 / (1 / 0.1) = 0.4
    np.testing.assert_allclose(chunks[0][1, [0, 2, 4]], [0.4, -4.0, 1.0], rtol=1e-6)
    # coordinate 1: g = 0 with n = 0: the weight formula has no denominator -> 0, no NaN
    assert np.isfinite(chunks[0][1]).all() and chunks[0][1, 1] == 0.0

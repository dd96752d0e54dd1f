"""Negative sampling decisions and the log-odds correction on a stream with a known click rate."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from freshrec.errors import ConfigError
from freshrec.stream import sampling as sm
from freshrec.stream.sampling import SamplingConfig, corrected_logit, keep_negative, training_logit, unit_hash


def test_all_is_curated():
    assert set(sm.__all__) == {
        "SamplingConfig",
        "corrected_logit",
        "is_positive",
        "keep_negative",
        "training_logit",
        "unit_hash",
    }


def test_keep_decision_is_deterministic_and_at_rate():
    cfg = SamplingConfig(negative_rate=0.1, seed=3)
    ids = [f"req{i}:0" for i in range(20_000)]
    first = [keep_negative(r, cfg) for r in ids]
    assert first == [keep_negative(r, cfg) for r in ids]
    assert 0.09 < sum(first) / len(ids) < 0.11
    other = [keep_negative(r, SamplingConfig(negative_rate=0.1, seed=4)) for r in ids]
    assert first != other
    assert all(keep_negative(r, SamplingConfig()) for r in ids[:100])
    assert 0.0 <= unit_hash("x") < 1.0


@pytest.mark.parametrize("bad", [0.0, -0.1, 1.5])
def test_rate_is_validated(bad):
    with pytest.raises(ConfigError, match="negative_rate"):
        SamplingConfig(negative_rate=bad)


def test_logit_helpers_are_inverse_and_typed():
    assert training_logit(0.5, 0.1) == pytest.approx(0.5 - math.log(0.1))
    assert corrected_logit(training_logit(0.5, 0.1), 0.1) == pytest.approx(0.5)
    a = training_logit(np.array([0.0, 1.0]), np.array([1.0, 0.25]))
    np.testing.assert_allclose(a, [0.0, 1.0 + math.log(4)])
    t = training_logit(torch.tensor([0.0, 1.0]), torch.tensor([1.0, 0.25]))
    torch.testing.assert_close(t, torch.tensor([0.0, 1.0 + math.log(4)]))
    with pytest.raises(ValueError, match="sample rate"):
        corrected_logit(0.0, 0.0)


def _fit_logistic(x: np.ndarray, y: np.ndarray, offset: np.ndarray, iters: int = 25) -> np.ndarray:
    """Maximum-likelihood logistic regression with a fixed per-row logit offset (Newton/IRLS)."""
    xb = np.hstack([x, np.ones((len(x), 1))])
    w = np.zeros(xb.shape[1])
    w[-1] = math.log(y.mean() / (1 - y.mean())) - offset.mean()  # start at the base rate
    for _ in range(iters):
        p = 1.0 / (1.0 + np.exp(-np.clip(xb @ w + offset, -30, 30)))
        grad = xb.T @ (p - y)
        hess = (xb * (p * (1 - p))[:, None]).T @ xb + 1e-9 * np.eye(xb.shape[1])
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.abs(step).max() < 1e-10:
            break
    return w


def test_log_odds_correction_recovers_the_true_rate():
    rng = np.random.default_rng(0)
    w_true, b_true = np.array([0.8, -0.5, 0.3, 0.6]), -3.9

    def stream(n):
        x = rng.standard_normal((n, 4))
        p = 1.0 / (1.0 + np.exp(-(x @ w_true + b_true)))
        return x, p, (rng.random(n) < p).astype(np.float64)

    x, _, y = stream(200_000)
    assert 0.02 < y.mean() < 0.045  # the true click rate is ~3%
    r = 0.1
    cfg = SamplingConfig(negative_rate=r, seed=11)
    keep = np.array([yi > 0 or keep_negative(f"imp{i}", cfg) for i, yi in enumerate(y)])
    xs, ys = x[keep], y[keep]
    rate = np.full(len(ys), r)  # every example of the stream carries sample_rate = r
    w_fix = _fit_logistic(xs, ys, training_logit(np.zeros(len(ys)), rate))
    w_raw = _fit_logistic(xs, ys, np.zeros(len(ys)))

    xh, ph, _ = stream(100_000)
    xhb = np.hstack([xh, np.ones((len(xh), 1))])
    true_rate = ph.mean()
    pred_fix = (1 / (1 + np.exp(-(xhb @ w_fix)))).mean()
    pred_raw = (1 / (1 + np.exp(-(xhb @ w_raw)))).mean()
    pred_served_fix = (1 / (1 + np.exp(-corrected_logit(xhb @ w_raw, r)))).mean()
    assert abs(pred_fix / true_rate - 1) < 0.05
    assert abs(pred_served_fix / true_rate - 1) < 0.05  # the serving-side map agrees
    assert pred_raw / true_rate > 2.0  # uncorrected: visibly biased

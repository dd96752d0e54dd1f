"""AUC and log loss against brute-force oracles."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from freshrec.train.metrics import auc, log_loss, log_loss_from_logits, sigmoid


def _auc_pairs(y, s):
    pos = [si for yi, si in zip(y, s, strict=True) if yi]
    neg = [si for yi, si in zip(y, s, strict=True) if not yi]
    total = 0.0
    for p in pos:
        for n in neg:
            total += 1.0 if p > n else 0.5 if p == n else 0.0
    return total / (len(pos) * len(neg))


def test_auc_worked_example():
    assert auc(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8])) == 0.75


def test_auc_perfect_inverse_and_all_tied():
    y = np.array([0, 1, 0, 1, 1])
    assert auc(y, y.astype(float)) == 1.0
    assert auc(y, -y.astype(float)) == 0.0
    assert auc(y, np.zeros(5)) == 0.5


def test_auc_single_class_is_nan():
    assert math.isnan(auc(np.ones(4), np.arange(4.0)))


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(st.booleans(), st.integers(min_value=0, max_value=5)), min_size=2, max_size=40).filter(
        lambda xs: 0 < sum(b for b, _ in xs) < len(xs)
    )
)
def test_auc_matches_pairwise_oracle_with_ties(pairs):
    y = np.array([b for b, _ in pairs], dtype=np.float32)
    s = np.array([v for _, v in pairs], dtype=np.float64)
    assert math.isclose(auc(y, s), _auc_pairs(y, s), rel_tol=1e-12, abs_tol=1e-12)


def test_log_loss_matches_formula_and_logits_version():
    rng = np.random.default_rng(0)
    z = rng.normal(size=1000) * 3
    y = (rng.random(1000) < 0.3).astype(np.float32)
    p = sigmoid(z)
    ref = -np.mean(y * np.log(p) + (1 - y) * np.log(1 - p))
    assert math.isclose(log_loss(y, p), ref, rel_tol=1e-9)
    assert math.isclose(log_loss_from_logits(y, z), ref, rel_tol=1e-9)
    # large logits do not overflow
    big = log_loss_from_logits(np.array([1.0, 0.0]), np.array([800.0, -800.0]))
    assert math.isclose(big, 0.0, abs_tol=1e-12)
    assert math.isclose(log_loss(np.array([0.5]), np.array([0.5])), math.log(2), rel_tol=1e-12)

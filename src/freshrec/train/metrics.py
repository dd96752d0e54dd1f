"""Evaluation metrics for click models: exact AUC (ties handled) and log loss, in numpy.

`auc(labels, scores)` is the Mann-Whitney U statistic over average ranks: the probability that a
random positive scores above a random negative, counting a tie as one half. Worked example:

    labels = [0, 0, 1, 1]; scores = [0.1, 0.4, 0.35, 0.8]
    ranks (1-based, ties averaged) = [1, 3, 2, 4]; positive rank sum = 2 + 4 = 6
    AUC = (6 - 2 * 3 / 2) / (2 * 2) = 0.75

`log_loss(labels, probs)` is the mean binary cross-entropy, with probabilities clipped to
[eps, 1 - eps]; `log_loss_from_logits` computes the same from logits without clipping error.
"""

from __future__ import annotations

import numpy as np

from freshrec.errors import DataError

__all__ = ["auc", "log_loss", "log_loss_from_logits", "sigmoid"]


def _rank_average(x: np.ndarray) -> np.ndarray:
    """1-based ranks of `x`, ties given the average of the ranks they span."""
    n = x.shape[0]
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    # boundaries of runs of equal values in the sorted array
    new_run = np.empty(n, dtype=bool)
    new_run[:1] = True
    np.not_equal(xs[1:], xs[:-1], out=new_run[1:])
    starts = np.flatnonzero(new_run)  # first sorted index of each run
    ends = np.append(starts[1:], n)  # one past the last
    avg = (starts + ends + 1) / 2.0  # mean of 1-based ranks starts+1 .. ends
    run_of = np.cumsum(new_run) - 1  # run index of each sorted position
    ranks = np.empty(n, dtype=np.float64)
    ranks[order] = avg[run_of]
    return ranks


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve; labels are 0/1 (any value > 0.5 counts as positive).

    Returns NaN when only one class is present. Ties in `scores` count one half.
    """
    y = np.asarray(labels).reshape(-1) > 0.5
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    if y.shape[0] != s.shape[0]:
        msg = f"labels ({y.shape[0]}) and scores ({s.shape[0]}) differ in length"
        raise DataError(msg)
    n_pos = int(y.sum())
    n_neg = y.shape[0] - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = _rank_average(s)
    u = ranks[y].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def sigmoid(x: np.ndarray) -> np.ndarray:
    """Numerically stable logistic function, float64."""
    x = np.asarray(x, dtype=np.float64)
    out = np.empty_like(x)
    pos = x >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-x[pos]))
    e = np.exp(x[~pos])
    out[~pos] = e / (1.0 + e)
    return out


def log_loss(labels: np.ndarray, probs: np.ndarray, eps: float = 1e-7) -> float:
    """Mean binary cross-entropy of probabilities `probs` against 0/1 `labels` (natural log)."""
    y = np.asarray(labels, dtype=np.float64).reshape(-1)
    p = np.clip(np.asarray(probs, dtype=np.float64).reshape(-1), eps, 1.0 - eps)
    if y.shape[0] != p.shape[0]:
        msg = f"labels ({y.shape[0]}) and probs ({p.shape[0]}) differ in length"
        raise DataError(msg)
    if y.shape[0] == 0:
        return float("nan")
    return float(-np.mean(y * np.log(p) + (1.0 - y) * np.log1p(-p)))


def log_loss_from_logits(labels: np.ndarray, logits: np.ndarray) -> float:
    """Mean binary cross-entropy from logits: mean(softplus(z) - y * z), exact for large |z|."""
    y = np.asarray(labels, dtype=np.float64).reshape(-1)
    z = np.asarray(logits, dtype=np.float64).reshape(-1)
    if y.shape[0] != z.shape[0]:
        msg = f"labels ({y.shape[0]}) and logits ({z.shape[0]}) differ in length"
        raise DataError(msg)
    if y.shape[0] == 0:
        return float("nan")
    return float(np.mean(np.logaddexp(0.0, z) - y * z))

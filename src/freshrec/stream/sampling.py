"""Negative sampling in the joiner and the log-odds correction the trainer applies.

Sampling (joiner side). Every positive example (any label > 0) is kept. A negative (all labels
0) is kept with probability `r = SamplingConfig.negative_rate`. The decision is a deterministic
function of `(request_id, seed)` (`keep_negative`), so reprocessing a stream after a restart makes
the same decisions. Every example of the stream, positive or negative, carries `sample_rate = r`:
it describes the stream the example came from ("negatives here were kept with probability r"),
which is what the correction needs; positives need the correction too (see below).

One rate per stream. An example serves every head (click, like, ...) of a multi-task model, and
it is kept or dropped as a whole, so per-action-type rates do not compose into a well-defined
rate per head; a model that needs a different rate per target reads one examples stream per
target (run one joiner per target).

Correction (derivation). Let p = P(y=1 | x) in the full stream. After keeping every positive and
a fraction r of negatives, the sample has

    P_s(y=1 | x) = p / (p + r (1 - p)),   so   odds_s(x) = odds(x) / r,
    logit_s(x) = logit(x) - log r                        (note: -log r > 0 for r < 1)

A model fit on the sample without correction learns logit_s, over-predicting by the factor 1/r in
odds (about 10x at r = 0.1 when p is small).

The ONE place freshrec corrects is the training loss: the trainer computes
`training_logit(model_logit, sample_rate) = model_logit - log(sample_rate)` and feeds *that* to
the binary cross-entropy. Fitting the sample's labels through this offset makes `model_logit`
itself converge to the true logit(x), so the served model needs no correction at all, and a rate
that changes over time (per example) is handled exactly. `corrected_logit` is the inverse map for
a model that was trained *without* the offset (serving-side fix-up, for comparison and tests):
`corrected_logit(logit_s, r) = logit_s + log r`.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from freshrec.errors import ConfigError, DataError

__all__ = [
    "SamplingConfig",
    "corrected_logit",
    "is_positive",
    "keep_negative",
    "training_logit",
    "unit_hash",
]


@dataclass(frozen=True, kw_only=True, slots=True)
class SamplingConfig:
    """Negative sampling of the joiner's output.

    Attributes:
        negative_rate: probability a negative example is kept, in (0, 1]; 1.0 keeps all.
        seed: mixes into the keep decision; the same seed gives the same decisions.
    """

    negative_rate: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0.0 < self.negative_rate <= 1.0:
            msg = f"SamplingConfig.negative_rate must be in (0, 1], got {self.negative_rate}"
            raise ConfigError(msg)


def unit_hash(request_id: str, seed: int = 0) -> float:
    """A uniform number in [0, 1) that depends only on `(request_id, seed)` (blake2b)."""
    key = seed.to_bytes(8, "little", signed=True)
    h = hashlib.blake2b(request_id.encode("utf-8"), digest_size=8, key=key)
    return int.from_bytes(h.digest(), "little") / 18446744073709551616.0


def is_positive(labels: Mapping[str, float]) -> bool:
    """True when any label is > 0."""
    return any(v > 0.0 for v in labels.values())


def keep_negative(request_id: str, cfg: SamplingConfig) -> bool:
    """Whether the negative example `request_id` is kept (probability `cfg.negative_rate`)."""
    if cfg.negative_rate >= 1.0:
        return True
    return unit_hash(request_id, cfg.seed) < cfg.negative_rate


def _log(r: Any) -> Any:
    if isinstance(r, int | float):
        if not 0.0 < r <= 1.0:
            msg = f"sample rate must be in (0, 1], got {r}"
            raise DataError(msg)
        return math.log(r)
    if hasattr(r, "log") and not isinstance(r, np.ndarray):  # a torch tensor
        return r.log()
    return np.log(np.asarray(r, dtype=np.float64))


def training_logit(logit: Any, sample_rate: Any) -> Any:
    """The logit to feed the loss on sampled data: `logit - log(sample_rate)`.

    Works on floats, numpy arrays and torch tensors (elementwise, broadcasting). Training with
    this offset makes `logit` estimate the true (unsampled) log-odds; serve `logit` as is.
    """
    return logit - _log(sample_rate)


def corrected_logit(logit: Any, sample_rate: Any) -> Any:
    """True log-odds from a model trained on sampled data WITHOUT the offset: `logit + log r`."""
    return logit + _log(sample_rate)

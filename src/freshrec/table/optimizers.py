"""Per-row sparse optimizers: their configs and the row layout of their state.

A table row is one float32 vector: ``[embedding (dim) | optimizer state (state_width(dim))]``.
State layouts, for dim = d:

    SGD      no state                                   width 0
    Adagrad  [accumulator (d)]                          width d
    Adam     [m (d) | v (d) | step (1)]                 width 2d + 1
    FTRL     [z (d) | n (d)]                            width 2d   (McMahan et al. 2013)

The kernels in `freshrec.table._optim_kernels` read `kind` and `hyper()` (float64 array)
and update rows in place; SGD, Adagrad and Adam match `torch.optim` on dense gradients.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from freshrec.errors import ConfigError

__all__ = ["FTRL", "SGD", "Adagrad", "Adam", "OptimizerConfig", "optimizer_from_dict"]

SGD_KIND, ADAGRAD_KIND, ADAM_KIND, FTRL_KIND = 0, 1, 2, 3


@dataclass(frozen=True, kw_only=True)
class SGD:
    """Plain SGD: w -= lr * g."""

    lr: float = 0.01

    kind = SGD_KIND

    def state_width(self, dim: int) -> int:
        return 0

    def hyper(self) -> np.ndarray:
        return np.array([self.lr], dtype=np.float64)

    def validate(self) -> None:
        if not self.lr > 0:
            raise ConfigError(f"SGD.lr must be > 0, got {self.lr}")


@dataclass(frozen=True, kw_only=True)
class Adagrad:
    """Adagrad as torch.optim.Adagrad (lr_decay=0, weight_decay=0)."""

    lr: float = 0.01
    initial_accumulator_value: float = 0.0
    eps: float = 1e-10

    kind = ADAGRAD_KIND

    def state_width(self, dim: int) -> int:
        return dim

    def hyper(self) -> np.ndarray:
        return np.array([self.lr, self.initial_accumulator_value, self.eps], dtype=np.float64)

    def validate(self) -> None:
        if not self.lr > 0:
            raise ConfigError(f"Adagrad.lr must be > 0, got {self.lr}")
        if self.initial_accumulator_value < 0 or self.eps < 0:
            raise ConfigError("Adagrad.initial_accumulator_value and eps must be >= 0")


@dataclass(frozen=True, kw_only=True)
class Adam:
    """Adam as torch.optim.Adam (amsgrad=False, weight_decay=0), with a step count per row."""

    lr: float = 0.001
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8

    kind = ADAM_KIND

    def state_width(self, dim: int) -> int:
        return 2 * dim + 1

    def hyper(self) -> np.ndarray:
        return np.array([self.lr, self.beta1, self.beta2, self.eps], dtype=np.float64)

    def validate(self) -> None:
        if not self.lr > 0:
            raise ConfigError(f"Adam.lr must be > 0, got {self.lr}")
        if not (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1):
            raise ConfigError(f"Adam betas must be in [0, 1), got {self.beta1}, {self.beta2}")


@dataclass(frozen=True, kw_only=True)
class FTRL:
    """FTRL-Proximal, per coordinate (McMahan et al. 2013, Algorithm 1).

    alpha, beta: the per-coordinate learning rate alpha / (beta + sqrt(n)); l1, l2: regularization.
    """

    alpha: float = 0.05
    beta: float = 1.0
    l1: float = 0.0
    l2: float = 0.0

    kind = FTRL_KIND

    def state_width(self, dim: int) -> int:
        return 2 * dim

    def hyper(self) -> np.ndarray:
        return np.array([self.alpha, self.beta, self.l1, self.l2], dtype=np.float64)

    def validate(self) -> None:
        if not self.alpha > 0 or self.beta < 0 or self.l1 < 0 or self.l2 < 0:
            raise ConfigError("FTRL needs alpha > 0 and beta, l1, l2 >= 0")


OptimizerConfig = SGD | Adagrad | Adam | FTRL

_BY_NAME: dict[str, type] = {"sgd": SGD, "adagrad": Adagrad, "adam": Adam, "ftrl": FTRL}


def optimizer_to_dict(opt: OptimizerConfig) -> dict:
    """Plain-data form of an optimizer config (for manifests)."""
    from dataclasses import asdict

    return {"name": type(opt).__name__.lower(), **asdict(opt)}


def optimizer_from_dict(d: dict) -> OptimizerConfig:
    """Inverse of `optimizer_to_dict`; raises ConfigError on an unknown name or field."""
    d = dict(d)
    name = str(d.pop("name", "")).lower()
    if name not in _BY_NAME:
        raise ConfigError(f"unknown optimizer {name!r}; expected one of {sorted(_BY_NAME)}")
    try:
        return _BY_NAME[name](**d)
    except TypeError as e:
        raise ConfigError(f"bad {name} optimizer config: {e}") from e

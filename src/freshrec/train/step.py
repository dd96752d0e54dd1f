"""One training step of a slot model, shared by `OnlineTrainer` and `TrainingPS`.

    logit = model(sparse, dense)                         # (B,)
    loss  = BCE(logit + offset, label)                   # offset = -log(sample rate), see stream.sampling
    loss.backward()
    dense_opt.step() under dense_lock                    # so a publisher never copies half-stepped weights
    hashed_opt.step() (if the model has hashed tables)   # torch rows of hashed embeddings
    sparse_opt.step(now)                                 # per-row optimizers of the collisionless tables
"""

from __future__ import annotations

import threading
from typing import Any

import torch

__all__ = ["train_step"]


def train_step(
    model: Any,
    sparse: Any,
    dense: torch.Tensor | None,
    label: torch.Tensor,
    *,
    now: float,
    offset: torch.Tensor | None,
    dense_opt: torch.optim.Optimizer,
    dense_lock: threading.Lock,
    sparse_opt: Any,
    hashed_opt: torch.optim.Optimizer | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One step (module docstring); returns (logit, loss), both detached."""
    model.train()
    logit = model(sparse, dense)
    loss = model.loss(logit, label, offset)
    loss.backward()
    with dense_lock:
        dense_opt.step()
    dense_opt.zero_grad(set_to_none=True)
    if hashed_opt is not None:
        hashed_opt.step()
        hashed_opt.zero_grad(set_to_none=True)
    sparse_opt.step(now=now)
    return logit.detach(), loss.detach()

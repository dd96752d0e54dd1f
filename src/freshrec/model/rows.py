"""Model inputs as rows: several requests' inputs joined into one batch, and a batch's first rows.

Inputs are as rule 2 of `freshrec.model.contract` says: `sparse[slot]` is int64 ids (B,) for a
single-valued slot and `(flat ids (N,), offsets (B,))` for a multi-valued one; `dense` is (B, D)
float32 or None. Rule 7 (a row's outputs depend on that row's inputs alone) is what makes a joined
batch score each request as it would alone: the model server scores concurrent requests in one
call, and `check_model` tests the rule with `head_rows`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

__all__ = ["concat_rows", "head_rows"]

Inputs = tuple[dict[str, Any], torch.Tensor | None]


def concat_rows(inputs: Sequence[Inputs]) -> Inputs:
    """The inputs of all rows of `inputs` (each (sparse, dense) with the same slots), one batch
    after the other: single-valued ids and dense rows concatenated, a multi-valued slot's flat
    ids concatenated and each batch's offsets moved past the ids before it."""
    if len(inputs) == 1:
        return inputs[0]
    sparse: dict[str, Any] = {}
    for name, first in inputs[0][0].items():
        values = [sp[name] for sp, _ in inputs]
        if isinstance(first, tuple):
            offsets: list[torch.Tensor] = []
            base = 0
            for flat, off in values:
                offsets.append(off + base if base else off)
                base += int(flat.shape[0])
            sparse[name] = (torch.cat([flat for flat, _ in values]), torch.cat(offsets))
        else:
            sparse[name] = torch.cat(values)
    dense = inputs[0][1]
    if dense is not None:
        dense = torch.cat([d for _, d in inputs])  # type: ignore[misc]
    return sparse, dense


def head_rows(sparse: dict[str, Any], dense: torch.Tensor | None, k: int) -> Inputs:
    """The inputs of the first `k` rows of a batch."""
    out: dict[str, Any] = {}
    for name, v in sparse.items():
        if isinstance(v, tuple):
            flat, off = v
            end = int(off[k]) if k < off.shape[0] else int(flat.shape[0])
            out[name] = (flat[:end], off[:k])
        else:
            out[name] = v[:k]
    return out, None if dense is None else dense[:k]

"""Torch optimizer state as snapshot data: JSON meta + named numpy arrays, no pickle."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

__all__ = ["optimizer_from_arrays", "optimizer_to_arrays"]


def optimizer_to_arrays(opt: torch.optim.Optimizer, prefix: str) -> tuple[dict, dict[str, np.ndarray]]:
    """(JSON meta, arrays) of `opt.state_dict()`: tensors as arrays named `prefix.<param>.<key>`."""
    sd = opt.state_dict()
    arrays: dict[str, np.ndarray] = {}
    state_meta: dict[str, dict[str, Any]] = {}
    for pid, st in sd["state"].items():
        entry: dict[str, Any] = {}
        for k, v in st.items():
            if isinstance(v, torch.Tensor):
                t = v.detach().cpu()
                if t.is_sparse:
                    t = t.to_dense()
                arrays[f"{prefix}.{pid}.{k}"] = t.numpy().copy()
                entry[k] = {"tensor": True}
            else:
                entry[k] = {"value": v}
        state_meta[str(pid)] = entry
    return {"state": state_meta, "param_groups": sd["param_groups"]}, arrays


def optimizer_from_arrays(
    opt: torch.optim.Optimizer, meta: Mapping[str, Any], arrays: Mapping[str, np.ndarray], prefix: str
) -> None:
    """Load into `opt` what `optimizer_to_arrays` wrote (exact values, dtypes kept)."""
    state: dict[int, dict[str, Any]] = {}
    for pid, entry in meta["state"].items():
        st: dict[str, Any] = {}
        for k, v in entry.items():
            if v.get("tensor"):
                st[k] = torch.from_numpy(np.array(arrays[f"{prefix}.{pid}.{k}"]))
            else:
                st[k] = v["value"]
        state[int(pid)] = st
    groups = [dict(g) for g in meta["param_groups"]]
    for g in groups:
        if isinstance(g.get("betas"), list):
            g["betas"] = tuple(g["betas"])
    opt.load_state_dict({"state": state, "param_groups": groups})

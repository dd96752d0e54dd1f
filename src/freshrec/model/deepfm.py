"""DeepFM (Guo et al. 2017), the model of the Monolith paper's experiments; and DCN-v2.

    logit = bias + first_order + fm_second_order + dnn

Each slot's embedding layer (collisionless or hashed) is `dim + 1` wide: column 0 is the slot's
first-order FM weight w_i, columns 1.. its FM/DNN vector v_i; one lookup and one optimizer update
per id serve both. With F slots of width k and D dense features, for a batch of B examples:

    X = stack(layer_f(ids_f))          # (B, F, k + 1)
    w, V = X[..., 0], X[..., 1:]        # (B, F), (B, F, k)
    first  = w.sum(1) + dense @ a       # (B,)
    second = 0.5 * ((V.sum(1))^2 - (V^2).sum(1)).sum(1)        # (B,)  sum_{i<j} <v_i, v_j>
    dnn    = MLP(concat(V.reshape(B, F * k), dense))           # (B,)

Inputs: `sparse` maps slot name to ids (B,) int64, or, for multi-valued slots, to a pair
(flat ids (N,), offsets (B,)) pooled as the slot's spec says.

Loss: `DeepFM.loss(logit, label, logit_offset=None)` is the mean BCE with logits of
`logit + logit_offset`. The offset is added to the model's logit before the loss only. With negatives
kept at rate r (positives all kept), the sampled data's log-odds are the true log-odds minus log(r), so
passing `logit_offset = -log(r)` (>= 0) on every example makes the model's own logit estimate the true,
unsampled log-odds (no correction needed at serving). Default: no offset.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from freshrec.errors import ConfigError
from freshrec.model.contract import DEFAULT_TASKS, Task
from freshrec.model.embedding import (
    CollisionlessEmbedding,
    HashedEmbedding,
    HashKind,
    embed_slots,
)
from freshrec.model.features import FeatureSpec

__all__ = ["DCN", "DeepFM", "SlotModel", "SparseInput"]

SparseInput = Mapping[str, torch.Tensor | tuple[torch.Tensor, torch.Tensor]]


class SlotModel(nn.Module):
    """What every model over a `FeatureSpec` shares: its embedding layers, tasks, the parameter split.

    A base class for models that follow `freshrec.model.contract` (not required by it: any module
    with `spec`, `embeddings` and `tasks` that follows the rules will do)."""

    spec: FeatureSpec
    embeddings: nn.ModuleDict
    tasks: tuple[Task, ...]
    embedding_extra_columns = 0
    fused_embedding = True  # single-valued collisionless slots read by one op (`embed_slots`)

    def _set_embeddings(
        self, spec: FeatureSpec, embeddings: nn.ModuleDict, tasks: Sequence[Task] | None = None
    ) -> int:
        """Check and keep the layers and tasks; returns the slots' common embedding width."""
        dims = {spec.slot_dim(n) for n in spec.names}
        if len(dims) != 1:
            msg = f"{type(self).__name__} needs one embedding width for all slots, got {sorted(dims)}"
            raise ConfigError(msg)
        if set(embeddings.keys()) != set(spec.names):
            msg = f"embeddings {sorted(embeddings.keys())} do not match slots {sorted(spec.names)}"
            raise ConfigError(msg)
        tasks = tuple(tasks) if tasks else DEFAULT_TASKS
        if not all(isinstance(t, Task) for t in tasks):
            msg = f"{type(self).__name__}: tasks must be freshrec.model.Task objects, got {tasks!r}"
            raise ConfigError(msg)
        self.spec = spec
        self.embeddings = embeddings
        self.tasks = tasks
        return dims.pop()

    @property
    def n_tasks(self) -> int:
        return len(self.tasks)

    def hashed_parameters(self) -> Iterator[nn.Parameter]:
        """Rows of hashed embedding layers (sparse gradients): give them to Adagrad / SparseAdam."""
        for m in self.embeddings.values():
            if isinstance(m, HashedEmbedding):
                yield m.weight

    def dense_parameters(self) -> Iterator[nn.Parameter]:
        """Every parameter except embedding rows (biases, linear layers, DNN)."""
        skip = {id(p) for p in self.hashed_parameters()}
        for p in self.parameters():
            if id(p) not in skip:
                yield p

    @property
    def collisionless(self) -> dict[str, CollisionlessEmbedding]:
        return {n: m for n, m in self.embeddings.items() if isinstance(m, CollisionlessEmbedding)}

    def embed(self, sparse: SparseInput) -> torch.Tensor:
        """Every slot's (pooled) embedding, stacked: (B, F, layer width); see `embed_slots`
        (`fused_embedding = False` on a model embeds every slot by its own op, to the same numbers)."""
        slots = self.spec.slots
        return embed_slots(
            [self.embeddings[s.name] for s in slots],
            [sparse[s.name] for s in slots],
            [s.pooling for s in slots],
            fused=self.fused_embedding,
        )

    def _dense(self, dense: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
        if self.spec.dense_dim == 0:
            return None
        if dense is None:
            msg = f"model expects {self.spec.dense_dim} dense features, got none"
            raise ConfigError(msg)
        return dense.to(dtype)

    def _heads(self, out: torch.Tensor) -> torch.Tensor:
        """(B, T) head outputs as the contract returns them: (B,) for one task."""
        return out.squeeze(1) if out.shape[1] == 1 else out

    @staticmethod
    def loss(
        logit: torch.Tensor, label: torch.Tensor, logit_offset: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Mean BCE with logits of `logit + logit_offset` against 0/1 `label` (offset default none);
        one binary task. Several tasks: `freshrec.model.contract.task_losses`."""
        z = logit if logit_offset is None else logit + logit_offset.to(logit.dtype)
        return F.binary_cross_entropy_with_logits(z, label.to(logit.dtype))


def _mlp(width: int, hidden: Sequence[int], dropout: float) -> tuple[list[nn.Module], int]:
    layers: list[nn.Module] = []
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU()]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        width = h
    return layers, width


class DeepFM(SlotModel):
    """DeepFM over the slots of `spec`, with embedding layers `embeddings` (slot -> layer, width dim+1).

    Use `DeepFM.build(spec, kind=...)` to make the layers; all slots must share one width `spec.dim`.
    With T tasks the FM part is shared and the DNN's last layer and the bias have T outputs:
    logits (B, T) ((B,) for one task).
    """

    embedding_extra_columns = 1

    def __init__(
        self,
        spec: FeatureSpec,
        embeddings: nn.ModuleDict,
        *,
        tasks: Sequence[Task] | None = None,
        hidden: Sequence[int] = (256, 128),
        dropout: float = 0.0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.k = self._set_embeddings(spec, embeddings, tasks)
        self.hidden = tuple(int(h) for h in hidden)
        self.dropout = float(dropout)
        self.seed = int(seed)
        t = len(self.tasks)
        with torch.random.fork_rng(devices=[]):  # seeded init, caller's RNG state untouched
            torch.manual_seed(seed)
            n_f, d = len(spec.slots), spec.dense_dim
            self.bias = nn.Parameter(torch.zeros(()) if t == 1 else torch.zeros(t))
            self.dense_linear = nn.Linear(d, 1, bias=False) if d > 0 else None
            layers, width = _mlp(n_f * self.k + d, hidden, dropout)
            layers.append(nn.Linear(width, t))
            self.dnn = nn.Sequential(*layers)

    def model_kwargs(self) -> dict:
        """The kwargs that rebuild this model (`freshrec.model.ModelSpec`)."""
        return {"hidden": list(self.hidden), "dropout": self.dropout, "seed": self.seed}

    @classmethod
    def build(
        cls,
        spec: FeatureSpec,
        kind: Literal["collisionless", "hashed"] = "collisionless",
        *,
        buckets: Mapping[str, int] | None = None,
        hash: HashKind = "mix",
        hidden: Sequence[int] = (256, 128),
        dropout: float = 0.0,
        seed: int = 0,
        tasks: Sequence[Task] | None = None,
    ) -> DeepFM:
        """A DeepFM with its embedding layers built from `spec` (see `FeatureSpec.build`)."""
        embs = spec.build(kind, buckets=buckets, hash=hash, extra_columns=1)
        return cls(spec, embs, tasks=tasks, hidden=hidden, dropout=dropout, seed=seed)

    def forward(self, sparse: SparseInput, dense: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (B,) of a batch, (B, T) with several tasks; the module docstring has the input layout."""
        X = self.embed(sparse)  # (B, F, k + 1)
        B = X.shape[0]
        w1, V = X.split([1, X.shape[2] - 1], dim=2)  # (B, F, 1), (B, F, k): backward is one cat
        w = w1.squeeze(2)  # (B, F)
        first = w.sum(dim=1)  # (B,)
        vsum = V.sum(dim=1)  # (B, k)
        second = 0.5 * (vsum * vsum - (V * V).sum(dim=1)).sum(dim=1)  # (B,)
        parts = [V.reshape(B, -1)]  # (B, F * k)
        d = self._dense(dense, X.dtype)
        if d is not None and self.dense_linear is not None:
            first = first + self.dense_linear(d).squeeze(1)
            parts.append(d)  # (B, D)
        deep = self.dnn(torch.cat(parts, dim=1))  # (B, T)
        return self._heads(self.bias + (first + second).unsqueeze(1) + deep)  # (B,) or (B, T)


class DCN(SlotModel):
    """DCN-v2 (Wang et al. 2021), parallel form, over the same embedding layers (width `spec.dim`).

    x0 = concat(embeddings (B, F * k), dense (B, D))            # (B, W)
    x_{l+1} = x0 * (W_l x_l + b_l) + x_l,  l < cross_layers       # (B, W), full-rank cross
    logit = Linear(concat(x_L, MLP(x0)))                          # (B,)
    """

    def __init__(
        self,
        spec: FeatureSpec,
        embeddings: nn.ModuleDict,
        *,
        tasks: Sequence[Task] | None = None,
        cross_layers: int = 3,
        hidden: Sequence[int] = (256, 128),
        dropout: float = 0.0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.k = self._set_embeddings(spec, embeddings, tasks)
        self.hidden = tuple(int(h) for h in hidden)
        self.dropout = float(dropout)
        self.cross_layers = int(cross_layers)
        self.seed = int(seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            width = len(spec.slots) * self.k + spec.dense_dim
            self.cross = nn.ModuleList(nn.Linear(width, width) for _ in range(self.cross_layers))
            layers, out = _mlp(width, hidden, dropout)
            self.dnn = nn.Sequential(*layers)
            self.head = nn.Linear(width + out, len(self.tasks))

    def model_kwargs(self) -> dict:
        """The kwargs that rebuild this model (`freshrec.model.ModelSpec`)."""
        return {
            "cross_layers": self.cross_layers,
            "hidden": list(self.hidden),
            "dropout": self.dropout,
            "seed": self.seed,
        }

    @classmethod
    def build(
        cls,
        spec: FeatureSpec,
        kind: Literal["collisionless", "hashed"] = "collisionless",
        *,
        buckets: Mapping[str, int] | None = None,
        hash: HashKind = "mix",
        cross_layers: int = 3,
        hidden: Sequence[int] = (256, 128),
        dropout: float = 0.0,
        seed: int = 0,
        tasks: Sequence[Task] | None = None,
    ) -> DCN:
        """A DCN with its embedding layers built from `spec` (see `FeatureSpec.build`)."""
        embs = spec.build(kind, buckets=buckets, hash=hash)
        return cls(
            spec, embs, tasks=tasks, cross_layers=cross_layers, hidden=hidden, dropout=dropout, seed=seed
        )

    def forward(self, sparse: SparseInput, dense: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (B,) of a batch (same inputs as `DeepFM.forward`)."""
        E = self.embed(sparse)  # (B, F, k)
        parts = [E.reshape(E.shape[0], -1)]  # (B, F * k)
        d = self._dense(dense, E.dtype)
        if d is not None:
            parts.append(d)
        x0 = torch.cat(parts, dim=1)  # (B, W)
        x = x0
        for layer in self.cross:
            x = x0 * layer(x) + x  # (B, W)
        return self._heads(self.head(torch.cat([x, self.dnn(x0)], dim=1)))  # (B,) or (B, T)

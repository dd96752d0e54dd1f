"""DIN (Zhou et al. 2018, "Deep Interest Network"): the candidate attends over a user's history bag.

A multi-valued slot (`history`, e.g. the items a user clicked recently) is not pooled blindly: each
of its ids is weighted by how well it matches the candidate (`query` slot, e.g. `item_id`), so a
user's sports clicks count when the candidate is a sports article and not otherwise.

For a batch of B examples, k = embedding width, history bags of lengths L_b (L = max L_b):

    H = pad(layer_history(flat history ids))        # (B, L, k), zeros past each bag's length
    q = layer_query(item ids)                       # (B, k)
    a = MLP_att(concat(H, q, H - q, H * q))          # (B, L, 1)  local activation unit
    a = masked softmax over the bag                  # (B, L), empty bag -> all zeros
    u = (a * H).sum(1)                               # (B, k)    the user's interest in this item
    E = embed(every other slot)                     # (B, F - 1, k), other bags pooled by their spec
    logits = MLP(concat(E, u, dense))                # (B, T)

The history slot and the query slot have tables of their own (each slot has its table), so the
history learns "items the user engaged with" rows and the attention learns how they relate to the
candidate's row. An empty history reads as the zero vector, like an unknown id.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from freshrec.errors import ConfigError
from freshrec.model.contract import Task
from freshrec.model.deepfm import SlotModel, SparseInput, _mlp
from freshrec.model.embedding import embed_slots
from freshrec.model.features import FeatureSpec

__all__ = ["DIN"]


class DIN(SlotModel):
    """Deep Interest Network over `spec`: `history` (a multi-valued slot) attended by `query`."""

    def __init__(
        self,
        spec: FeatureSpec,
        embeddings: nn.ModuleDict,
        *,
        tasks: Sequence[Task] | None = None,
        history: str = "history",
        query: str = "item_id",
        attention_hidden: Sequence[int] = (36,),
        hidden: Sequence[int] = (128, 64),
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.k = self._set_embeddings(spec, embeddings, tasks)
        if history not in spec.names or not spec.slot(history).multi_valued:
            msg = f"DIN: history {history!r} must be a multi-valued slot of {spec.names}"
            raise ConfigError(msg)
        if query not in spec.names or spec.slot(query).multi_valued:
            msg = f"DIN: query {query!r} must be a single-valued slot of {spec.names}"
            raise ConfigError(msg)
        self.history, self.query = history, query
        self.attention_hidden = tuple(int(h) for h in attention_hidden)
        self.hidden = tuple(int(h) for h in hidden)
        self.seed = int(seed)
        self._others = [n for n in spec.names if n != history]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            att, width = _mlp(4 * self.k, self.attention_hidden, 0.0)
            att.append(nn.Linear(width, 1))
            self.attention = nn.Sequential(*att)
            layers, out = _mlp(len(spec.slots) * self.k + spec.dense_dim, self.hidden, 0.0)
            layers.append(nn.Linear(out, len(self.tasks)))
            self.dnn = nn.Sequential(*layers)

    def model_kwargs(self) -> dict:
        return {
            "history": self.history,
            "query": self.query,
            "attention_hidden": list(self.attention_hidden),
            "hidden": list(self.hidden),
            "seed": self.seed,
        }

    def _embed_others(self, sparse: SparseInput) -> torch.Tensor:
        """(B, F - 1, k): every slot but the history, multi-valued ones pooled as their spec says."""
        return embed_slots(
            [self.embeddings[n] for n in self._others],
            [sparse[n] for n in self._others],
            [self.spec.slot(n).pooling for n in self._others],
            fused=self.fused_embedding,
        )

    def _interest(self, bag: tuple[torch.Tensor, torch.Tensor], q: torch.Tensor) -> torch.Tensor:
        """(B, k): the attention-pooled history of each example (module docstring)."""
        ids, offsets = bag
        B, N = q.shape[0], int(ids.shape[0])
        if N == 0:
            return torch.zeros_like(q)
        flat = self.embeddings[self.history](ids)  # (N, k)
        ends = torch.cat([offsets[1:], torch.tensor([N], dtype=offsets.dtype)])
        lengths = ends - offsets  # (B,)
        L = int(lengths.max())
        owner = torch.repeat_interleave(torch.arange(B), lengths)  # (N,) the bag of each id
        pos = torch.arange(N) - offsets[owner]  # (N,) position in its bag
        H = flat.new_zeros(B, L, self.k).index_put((owner, pos), flat)  # (B, L, k)
        mask = torch.zeros(B, L, dtype=torch.bool).index_put((owner, pos), torch.tensor(True))
        qe = q.unsqueeze(1).expand(B, L, self.k)  # (B, L, k)
        score = self.attention(torch.cat([H, qe, H - qe, H * qe], dim=2)).squeeze(2)  # (B, L)
        score = score.masked_fill(~mask, -1e9)
        a = torch.softmax(score, dim=1) * mask  # (B, L); an empty bag is all zeros
        return (a.unsqueeze(2) * H).sum(dim=1)  # (B, k)

    def forward(self, sparse: SparseInput, dense: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (B,) for one task, (B, T) for several; inputs as `DeepFM.forward`."""
        E = self._embed_others(sparse)  # (B, F - 1, k)
        q = E[:, self._others.index(self.query)]  # (B, k)
        bag = sparse[self.history]
        if not isinstance(bag, tuple):
            msg = f"DIN: slot {self.history!r} must come as (flat ids, offsets)"
            raise ConfigError(msg)
        u = self._interest(bag, q)  # (B, k)
        parts = [E.reshape(E.shape[0], -1), u]
        d = self._dense(dense, E.dtype)
        if d is not None:
            parts.append(d)
        return self._heads(self.dnn(torch.cat(parts, dim=1)))

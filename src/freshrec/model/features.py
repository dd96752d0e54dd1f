"""Feature specs: name a model's sparse slots once and build their embedding layers.

A `FeatureSpec` lists the sparse slots (`SlotSpec`) and the number of dense features. It builds, for
every slot, either a `CollisionlessEmbedding` (one `EmbeddingTable` per slot, configured from the spec's
defaults plus the slot's overrides) or a `HashedEmbedding` with a given bucket count:

    spec = FeatureSpec(slots=(SlotSpec(name="user_id"), SlotSpec(name="item_id")), dense_dim=0, dim=16)
    embs = spec.build(kind="collisionless")                              # ModuleDict slot -> layer
    hashed = spec.build(kind="hashed", buckets={"user_id": 1 << 20, "item_id": 1 << 16})

`extra_columns` widens every layer (DeepFM stores each slot's first-order FM weight as column 0 of
the same row, so each id costs one lookup and one update, not two).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

from torch import nn

from freshrec.errors import ConfigError, NotFoundError
from freshrec.model.embedding import CollisionlessEmbedding, HashedEmbedding, HashKind
from freshrec.table import Adagrad, Initializer, TableConfig
from freshrec.table.optimizers import OptimizerConfig, optimizer_from_dict, optimizer_to_dict

__all__ = ["FeatureSpec", "SlotSpec"]


@dataclass(frozen=True, kw_only=True)
class SlotSpec:
    """One sparse feature slot.

    name: slot name (also the table name); must be a valid identifier-like key (no '.').
    dim: embedding width; None = the spec's `dim`.
    multi_valued: the slot carries a bag of ids per example (flat ids + offsets), pooled by `pooling`.
    table: overrides of `TableConfig` fields for this slot (e.g. {"min_count": 2, "ttl_s": 86400}).
    """

    name: str
    dim: int | None = None
    multi_valued: bool = False
    pooling: Literal["sum", "mean"] = "sum"
    table: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.name or "." in self.name:
            msg = f"slot name must be non-empty and contain no '.', got {self.name!r}"
            raise ConfigError(msg)
        if self.pooling not in ("sum", "mean"):
            msg = f"slot {self.name!r}: pooling must be 'sum' or 'mean'"
            raise ConfigError(msg)


@dataclass(frozen=True, kw_only=True)
class FeatureSpec:
    """The sparse slots and dense width of a model, with the defaults their tables share."""

    slots: tuple[SlotSpec, ...]
    dense_dim: int = 0
    dim: int = 16
    optimizer: OptimizerConfig = field(default_factory=lambda: Adagrad(lr=0.05))
    initializer: Initializer = field(default_factory=lambda: Initializer(kind="normal", scale=0.01))
    seed: int = 0

    def __post_init__(self) -> None:
        names = [s.name for s in self.slots]
        if len(set(names)) != len(names):
            msg = f"duplicate slot names in {names}"
            raise ConfigError(msg)
        if self.dense_dim < 0:
            msg = f"dense_dim must be >= 0, got {self.dense_dim}"
            raise ConfigError(msg)

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.slots]

    def to_dict(self) -> dict[str, Any]:
        """Plain data (for manifests): slots, widths, optimizer, initializer, seed."""
        return {
            "slots": [
                {
                    "name": s.name,
                    "dim": s.dim,
                    "multi_valued": s.multi_valued,
                    "pooling": s.pooling,
                    "table": dict(s.table),
                }
                for s in self.slots
            ],
            "dense_dim": self.dense_dim,
            "dim": self.dim,
            "optimizer": optimizer_to_dict(self.optimizer),
            "initializer": asdict(self.initializer),
            "seed": self.seed,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> FeatureSpec:
        """Inverse of `to_dict`."""
        return cls(
            slots=tuple(
                SlotSpec(
                    name=s["name"],
                    dim=s["dim"],
                    multi_valued=bool(s["multi_valued"]),
                    pooling=s["pooling"],
                    table=dict(s["table"]),
                )
                for s in d["slots"]
            ),
            dense_dim=int(d["dense_dim"]),
            dim=int(d["dim"]),
            optimizer=optimizer_from_dict(d["optimizer"]),
            initializer=Initializer(**d["initializer"]),
            seed=int(d["seed"]),
        )

    def slot(self, name: str) -> SlotSpec:
        for s in self.slots:
            if s.name == name:
                return s
        msg = f"no slot {name!r}; slots are {self.names}"
        raise NotFoundError(msg)

    def slot_dim(self, name: str) -> int:
        d = self.slot(name).dim
        return self.dim if d is None else d

    def table_config(self, name: str, *, extra_columns: int = 0) -> TableConfig:
        """The `TableConfig` of slot `name`: spec defaults, then the slot's overrides."""
        s = self.slot(name)
        base = TableConfig(
            name=name,
            dim=self.slot_dim(name) + extra_columns,
            optimizer=self.optimizer,
            initializer=self.initializer,
            seed=self.seed + 7919 * (self.names.index(name) + 1),
        )
        return replace(base, **dict(s.table)) if s.table else base

    def build(
        self,
        kind: Literal["collisionless", "hashed"] = "collisionless",
        *,
        buckets: Mapping[str, int] | None = None,
        hash: HashKind = "mix",
        extra_columns: int = 0,
        sparse_grad: bool = True,
    ) -> nn.ModuleDict:
        """One embedding layer per slot, in slot order: collisionless tables or hashed tables.

        kind="hashed" needs `buckets[slot]` for every slot; hashed layers draw their rows from the
        same initializer (kind, scale) as the tables, seeded per slot.
        """
        layers: dict[str, nn.Module] = {}
        for i, s in enumerate(self.slots):
            cfg = self.table_config(s.name, extra_columns=extra_columns)
            if kind == "collisionless":
                layers[s.name] = CollisionlessEmbedding(cfg)
            elif kind == "hashed":
                if buckets is None or s.name not in buckets:
                    msg = f"hashed embeddings need a bucket count for slot {s.name!r}"
                    raise ConfigError(msg)
                layers[s.name] = HashedEmbedding(
                    int(buckets[s.name]),
                    cfg.dim,
                    hash=hash,
                    hash_seed=i,
                    init=cfg.initializer.kind,
                    init_scale=cfg.initializer.scale,
                    seed=cfg.seed,
                    sparse=sparse_grad,
                    name=s.name,
                )
            else:
                msg = f"unknown embedding kind {kind!r}; expected 'collisionless' or 'hashed'"
                raise ConfigError(msg)
        return nn.ModuleDict(layers)

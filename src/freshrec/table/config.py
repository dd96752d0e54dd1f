"""Configuration of an embedding table: one frozen dataclass per component."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Literal

from freshrec.errors import ConfigError
from freshrec.table.optimizers import Adagrad, OptimizerConfig, optimizer_from_dict, optimizer_to_dict

__all__ = ["FilterConfig", "Initializer", "TableConfig"]


@dataclass(frozen=True, kw_only=True)
class Initializer:
    """How a new row's embedding is drawn: `normal` (0, scale), `uniform` (-scale, scale) or `zeros`.

    Draws are a pure function of (seed, id), so a row gets the same initial value whenever
    and wherever it is admitted.
    """

    kind: Literal["normal", "uniform", "zeros"] = "normal"
    scale: float = 0.01

    def validate(self) -> None:
        if self.kind not in ("normal", "uniform", "zeros"):
            raise ConfigError(f"unknown initializer {self.kind!r}")
        if self.scale < 0:
            raise ConfigError(f"initializer scale must be >= 0, got {self.scale}")


@dataclass(frozen=True, kw_only=True)
class FilterConfig:
    """The frequency filter that admits an id only after it was seen `min_count` times.

    kind:
      - "count_min": a count-min sketch of `depth` rows x `width` 16-bit counters, in two
        generations that slide every `window_s` seconds of data time (old counts fade);
        memory = 2 * depth * width * 2 bytes whatever the number of ids.
      - "probabilistic": each occurrence admits the id with probability 1 / min_count
        (no memory at all; expected admissions after min_count sightings ~ 63%).
    """

    kind: Literal["count_min", "probabilistic"] = "count_min"
    width: int = 1 << 20
    depth: int = 4
    window_s: float = 86400.0

    def validate(self) -> None:
        if self.kind not in ("count_min", "probabilistic"):
            raise ConfigError(f"unknown filter kind {self.kind!r}")
        if self.width < 1 or self.width & (self.width - 1):
            raise ConfigError(f"filter width must be a power of two, got {self.width}")
        if not 1 <= self.depth <= 8:
            raise ConfigError(f"filter depth must be in 1..8, got {self.depth}")
        if not self.window_s > 0:
            raise ConfigError(f"filter window_s must be > 0, got {self.window_s}")


@dataclass(frozen=True, kw_only=True)
class TableConfig:
    """One collisionless embedding table.

    name: the feature slot it serves; dim: embedding width.
    ttl_s: rows not seen for longer (data time, seconds) go at `evict_expired(now)`; None = never.
    min_count: occurrences before an id gets a row (1 = at first sight); see `filter`.
    capacity: at most this many rows; past it, `eviction` ("lru" by last-seen or "lfu" by count)
      removes the least recent / least frequent rows exactly; None = unbounded.
    initial_capacity: rows the index is sized for at start (it grows past it by itself).
    max_load: index load factor that triggers growth.
    """

    name: str
    dim: int
    optimizer: OptimizerConfig = field(default_factory=Adagrad)
    initializer: Initializer = field(default_factory=Initializer)
    seed: int = 0
    ttl_s: float | None = None
    min_count: int = 1
    filter: FilterConfig = field(default_factory=FilterConfig)
    capacity: int | None = None
    eviction: Literal["lru", "lfu"] = "lru"
    initial_capacity: int = 1024
    max_load: float = 0.9

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        if not self.name:
            raise ConfigError("table name must be non-empty")
        if not 1 <= self.dim <= 4096:
            raise ConfigError(f"table {self.name!r}: dim must be in 1..4096, got {self.dim}")
        if self.ttl_s is not None and not self.ttl_s > 0:
            raise ConfigError(f"table {self.name!r}: ttl_s must be > 0 or None, got {self.ttl_s}")
        if self.min_count < 1:
            raise ConfigError(f"table {self.name!r}: min_count must be >= 1, got {self.min_count}")
        if self.capacity is not None and self.capacity < 1:
            raise ConfigError(f"table {self.name!r}: capacity must be >= 1 or None")
        if self.eviction not in ("lru", "lfu"):
            raise ConfigError(f"table {self.name!r}: eviction must be 'lru' or 'lfu'")
        if not 0.5 <= self.max_load <= 0.98:
            raise ConfigError(f"table {self.name!r}: max_load must be in [0.5, 0.98]")
        self.optimizer.validate()
        self.initializer.validate()
        self.filter.validate()

    def to_dict(self) -> dict:
        d = asdict(self)
        d["optimizer"] = optimizer_to_dict(self.optimizer)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> TableConfig:
        d = dict(d)
        d["optimizer"] = optimizer_from_dict(d["optimizer"])
        d["initializer"] = Initializer(**d["initializer"])
        d["filter"] = FilterConfig(**d["filter"])
        return cls(**d)

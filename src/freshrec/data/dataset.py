"""The columnar example set every loader returns: numpy arrays, one row per example, torch-free.

A `Dataset` of n examples (a worked example: 3 MovieLens ratings, one multi-valued slot)::

    sparse      {"user_id": int64 (n,) = [196, 186, 22], "item_id": int64 (n,) = [242, 302, 377]}
    multi       {"genre": Ragged(values=int64 [g1, g2, g3, g1], offsets=int64 (n+1,) = [0, 2, 3, 4])}
                 row 0 has genres [g1, g2], row 1 [g3], row 2 [g1]
    dense       float32 (n, k) (k = 0 when the data has no dense features); names in `dense_names`
    label       float32 (n,) in {0, 1}: the binary label named `label_name` (default "click")
    labels      {"rating": float32 (n,)}: further labels by name, raw values (e.g. a rating, watch
                seconds), for models with several tasks (`Dataset.target(name)`)
    ts          float64 (n,) seconds (unix time; row numbers when the data has no time: has_time=False)
    sample_rate float32 (n,) the rate r at which negatives of this example's request were kept by
                sampling, carried by positives too (1.0 when not sampled); the trainer's log-odds
                correction feeds `logit - log(r)` to the loss (see `freshrec.stream.sampling`)

Ids are raw int64 values (never remapped to dense indices): the collisionless tables take them
as they are. Loaders return rows sorted by `ts` (stable), i.e. in the order they happened.

A batch from `Dataset.batches` is a dict of numpy arrays: one key per single-valued slot (int64
(B,)), `"<slot>.values"` / `"<slot>.offsets"` per multi-valued slot (offsets (B+1,), from 0),
`"dense"` (B, k), `"label"`, `"ts"`, `"sample_rate"` (B,).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import numpy as np

from freshrec.errors import DataError

__all__ = ["RESERVED_KEYS", "Dataset", "Ragged", "concat", "stable_ids"]

RESERVED_KEYS = frozenset({"dense", "label", "ts", "sample_rate"})
_SLOT_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

Index = np.ndarray | slice


def stable_ids(strings: Iterable[str]) -> np.ndarray:
    """Map strings to non-negative int64 ids that are the same on every machine and run (blake2b, 63 bits)."""
    out = [
        int.from_bytes(hashlib.blake2b(s.encode("utf-8"), digest_size=8).digest(), "little") >> 1
        for s in strings
    ]
    return np.array(out, dtype=np.int64)


def _as_index(index: Any, n: int) -> np.ndarray | slice:
    """A boolean mask (n,), an integer index array, or a slice -> an int64 index array or a slice."""
    if isinstance(index, slice):
        return index
    idx = np.asarray(index)
    if idx.dtype == np.bool_:
        if idx.shape != (n,):
            msg = f"boolean mask of shape {idx.shape} for a dataset of {n} rows"
            raise DataError(msg)
        return np.flatnonzero(idx)
    if idx.dtype.kind not in "iu":
        msg = f"take() wants a boolean mask, integer indices or a slice, got dtype {idx.dtype}"
        raise DataError(msg)
    return idx.astype(np.int64, copy=False).reshape(-1)


@dataclass(frozen=True, eq=False)
class Ragged:
    """A multi-valued column: row i holds `values[offsets[i]:offsets[i + 1]]`."""

    values: np.ndarray  # int64 (total,)
    offsets: np.ndarray  # int64 (n + 1,), offsets[0] == 0, non-decreasing, offsets[-1] == total

    def __post_init__(self) -> None:
        values = np.ascontiguousarray(self.values, dtype=np.int64)
        offsets = np.ascontiguousarray(self.offsets, dtype=np.int64)
        if offsets.ndim != 1 or len(offsets) < 1 or offsets[0] != 0 or offsets[-1] != len(values):
            msg = f"bad ragged offsets: need (n+1,) from 0 to {len(values)}"
            raise DataError(msg)
        if np.any(np.diff(offsets) < 0):
            msg = "bad ragged offsets: decreasing"
            raise DataError(msg)
        object.__setattr__(self, "values", values)
        object.__setattr__(self, "offsets", offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def lengths(self) -> np.ndarray:
        """Values per row, int64 (n,)."""
        return np.diff(self.offsets)

    def take(self, index: np.ndarray | slice) -> Ragged:
        """Rows at `index` (int64 indices or a slice), in that order."""
        if isinstance(index, slice):
            start, stop, step = index.indices(len(self))
            if step == 1:
                lo, hi = self.offsets[start], self.offsets[max(start, stop)]
                return Ragged(self.values[lo:hi], self.offsets[start : max(start, stop) + 1] - lo)
            index = np.arange(start, stop, step, dtype=np.int64)
        starts = self.offsets[index]
        lens = self.offsets[index + 1] - starts
        offsets = np.zeros(len(index) + 1, dtype=np.int64)
        np.cumsum(lens, out=offsets[1:])
        # position p of the output (row r) reads values[starts[r] + (p - offsets[r])]
        gather = np.repeat(starts - offsets[:-1], lens) + np.arange(offsets[-1], dtype=np.int64)
        return Ragged(self.values[gather], offsets)


def _ro_mapping(d: Mapping[str, Any]) -> Mapping[str, Any]:
    return MappingProxyType(dict(d))


@dataclass(frozen=True, eq=False)
class Dataset:
    """n examples as columns (see the module docstring for the layout). Build with `Dataset.build`."""

    name: str
    sparse: Mapping[str, np.ndarray]
    label: np.ndarray
    ts: np.ndarray
    sample_rate: np.ndarray
    dense: np.ndarray
    dense_names: tuple[str, ...] = ()
    multi: Mapping[str, Ragged] = field(default_factory=dict)
    has_time: bool = True
    labels: Mapping[str, np.ndarray] = field(default_factory=dict)
    label_name: str = "click"

    def __post_init__(self) -> None:
        label = np.ascontiguousarray(self.label, dtype=np.float32).reshape(-1)
        n = len(label)

        def col(a: Any, dtype: Any, what: str) -> np.ndarray:
            arr = np.ascontiguousarray(a, dtype=dtype)
            if arr.shape != (n,):
                msg = f"dataset {self.name!r}: {what} has shape {arr.shape}, expected ({n},)"
                raise DataError(msg)
            return arr

        sparse = {}
        for k, v in self.sparse.items():
            self._check_slot(k)
            sparse[k] = col(v, np.int64, f"slot {k!r}")
        multi = {}
        for k, r in self.multi.items():
            self._check_slot(k)
            if k in sparse or len(r) != n:
                msg = f"dataset {self.name!r}: multi-valued slot {k!r} clashes or has {len(r)} rows, not {n}"
                raise DataError(msg)
            multi[k] = r
        dense = np.ascontiguousarray(self.dense, dtype=np.float32)
        if dense.ndim != 2 or dense.shape[0] != n:
            msg = f"dataset {self.name!r}: dense has shape {dense.shape}, expected ({n}, k)"
            raise DataError(msg)
        names = tuple(self.dense_names) or tuple(f"d{i}" for i in range(dense.shape[1]))
        if len(names) != dense.shape[1]:
            msg = f"dataset {self.name!r}: {len(names)} dense names for {dense.shape[1]} dense columns"
            raise DataError(msg)
        set_ = object.__setattr__
        set_(self, "label", label)
        set_(self, "ts", col(self.ts, np.float64, "ts"))
        set_(self, "sample_rate", col(self.sample_rate, np.float32, "sample_rate"))
        set_(self, "sparse", _ro_mapping(sparse))
        set_(self, "multi", _ro_mapping(multi))
        set_(self, "dense", dense)
        set_(self, "dense_names", names)
        labels = {k: col(v, np.float32, f"label {k!r}") for k, v in self.labels.items()}
        set_(self, "labels", _ro_mapping(labels))

    def target(self, name: str, *, binary: bool) -> np.ndarray:
        """The values (n,) of label `name` (the binary `label` or one of `labels`), as 0/1 when
        `binary` (value > 0). ConfigError naming the labels present when there is no such label."""
        if name in self.labels:
            v = self.labels[name]
        elif name == self.label_name:
            v = self.label
        else:
            from freshrec.errors import ConfigError

            have = sorted({self.label_name, *self.labels})
            msg = f"dataset {self.name!r} has no label {name!r}; its labels are {have}"
            raise ConfigError(msg)
        return (v > 0).astype(np.float32) if binary else v

    def _check_slot(self, k: str) -> None:
        if not _SLOT_RE.fullmatch(k) or k in RESERVED_KEYS:
            reserved = sorted(RESERVED_KEYS)
            msg = f"dataset {self.name!r}: slot name {k!r} must be an identifier and not one of {reserved}"
            raise DataError(msg)

    @classmethod
    def build(
        cls,
        name: str,
        *,
        sparse: Mapping[str, np.ndarray],
        label: np.ndarray,
        ts: np.ndarray | None = None,
        sample_rate: np.ndarray | None = None,
        dense: np.ndarray | None = None,
        dense_names: tuple[str, ...] = (),
        multi: Mapping[str, Ragged] | None = None,
        labels: Mapping[str, np.ndarray] | None = None,
        label_name: str = "click",
    ) -> Dataset:
        """A dataset with defaults: no ts -> row numbers (has_time=False), rates 1.0, no dense columns."""
        n = len(label)
        return cls(
            name=name,
            sparse=sparse,
            label=label,
            ts=np.arange(n, dtype=np.float64) if ts is None else ts,
            sample_rate=np.ones(n, np.float32) if sample_rate is None else sample_rate,
            dense=np.zeros((n, 0), np.float32) if dense is None else dense,
            dense_names=dense_names,
            multi=multi or {},
            has_time=ts is not None,
            labels=labels or {},
            label_name=label_name,
        )

    def __len__(self) -> int:
        return len(self.label)

    def __repr__(self) -> str:
        return (
            f"Dataset({self.name!r}, n={len(self)}, slots={list(self.slots)}, "
            f"multi={list(self.multi_slots)}, dense={self.dense.shape[1]}, "
            f"positives={self.label.mean() if len(self) else 0:.3f})"
        )

    @property
    def slots(self) -> tuple[str, ...]:
        """Names of the single-valued sparse slots, in order."""
        return tuple(self.sparse)

    @property
    def multi_slots(self) -> tuple[str, ...]:
        """Names of the multi-valued sparse slots, in order."""
        return tuple(self.multi)

    def take(self, index: Any) -> Dataset:
        """The rows selected by a boolean mask (n,), integer indices (in that order) or a slice."""
        idx = _as_index(index, len(self))
        return Dataset(
            name=self.name,
            sparse={k: v[idx] for k, v in self.sparse.items()},
            label=self.label[idx],
            ts=self.ts[idx],
            sample_rate=self.sample_rate[idx],
            dense=self.dense[idx],
            dense_names=self.dense_names,
            multi={k: r.take(idx) for k, r in self.multi.items()},
            has_time=self.has_time,
            labels={k: v[idx] for k, v in self.labels.items()},
            label_name=self.label_name,
        )

    def is_time_sorted(self) -> bool:
        return bool(np.all(self.ts[1:] >= self.ts[:-1]))

    def sorted_by_time(self) -> Dataset:
        """Rows in time order (stable: rows with equal ts keep their order); self if already sorted."""
        if self.is_time_sorted():
            return self
        return self.take(np.argsort(self.ts, kind="stable"))

    def batch(self, index: Any) -> dict[str, np.ndarray]:
        """One batch dict (see the module docstring) of the rows at `index`."""
        idx = _as_index(index, len(self))
        out: dict[str, np.ndarray] = {k: v[idx] for k, v in self.sparse.items()}
        for k, r in self.multi.items():
            part = r.take(idx)
            out[f"{k}.values"] = part.values
            out[f"{k}.offsets"] = part.offsets
        out["dense"] = self.dense[idx]
        out["label"] = self.label[idx]
        out["ts"] = self.ts[idx]
        out["sample_rate"] = self.sample_rate[idx]
        return out

    def batches(
        self, batch_size: int, *, shuffle: bool = False, seed: int = 0, drop_last: bool = False
    ) -> Iterator[dict[str, np.ndarray]]:
        """Batch dicts of `batch_size` rows in row order (views, no copy), or shuffled with `seed`.

        The last batch is shorter unless `drop_last`.
        """
        if batch_size < 1:
            msg = f"batch_size {batch_size} must be >= 1"
            raise DataError(msg)
        n = len(self)
        order = np.random.default_rng(seed).permutation(n) if shuffle else None
        stop = n - n % batch_size if drop_last else n
        for start in range(0, stop, batch_size):
            end = min(start + batch_size, n)
            yield self.batch(order[start:end] if order is not None else slice(start, end))


def concat(parts: Iterable[Dataset], *, name: str | None = None) -> Dataset:
    """Rows of `parts` one after the other; the parts must have the same slots and dense columns."""
    parts = list(parts)
    if not parts:
        msg = "concat() needs at least one dataset"
        raise DataError(msg)
    first = parts[0]
    for p in parts[1:]:
        if p.slots != first.slots or p.multi_slots != first.multi_slots or p.dense_names != first.dense_names:
            msg = f"concat(): {p.name!r} has other columns than {first.name!r}"
            raise DataError(msg)

    def cat_ragged(rs: list[Ragged]) -> Ragged:
        shifts = np.cumsum([0] + [len(r.values) for r in rs[:-1]])
        offsets = np.concatenate([[0]] + [r.offsets[1:] + s for r, s in zip(rs, shifts, strict=True)])
        return Ragged(np.concatenate([r.values for r in rs]), offsets)

    return Dataset(
        name=name or first.name,
        sparse={k: np.concatenate([p.sparse[k] for p in parts]) for k in first.slots},
        label=np.concatenate([p.label for p in parts]),
        ts=np.concatenate([p.ts for p in parts]),
        sample_rate=np.concatenate([p.sample_rate for p in parts]),
        dense=np.concatenate([p.dense for p in parts]),
        dense_names=first.dense_names,
        multi={k: cat_ragged([p.multi[k] for p in parts]) for k in first.multi_slots},
        has_time=all(p.has_time for p in parts),
        labels={k: np.concatenate([p.labels[k] for p in parts]) for k in first.labels},
        label_name=first.label_name,
    )

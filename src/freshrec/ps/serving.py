"""`ServingReplica`: serving tables (embeddings only) + the dense model, answering while deltas apply.

The model is any model of `freshrec.model.contract`, rebuilt from the `ModelSpec`, feature spec and
tasks the training side recorded (a snapshot's meta, or given). A replica holds one `EmbeddingTable`
per collisionless slot configured for serving: SGD (no optimizer state, so a row is exactly the
floats the delta carried), no admission filter, no expiry or capacity (the training PS decides
what exists; deletions arrive in deltas). The model's `CollisionlessEmbedding` layers read those
tables; hashed slots (if any) are dense weights and arrive with them.

Outputs. The model gives one output per task (B, T): a binary task's logit is served as a
probability, a value task's value as it is. `rank` orders candidates by a blend of the tasks'
scores, `sum_t w_t * score_t` with `ServingConfig.rank_weights` (default: the first task alone).

Applying while answering:
- `apply(Delta)`: `remove(deleted)` then `assign(ids, embeddings)`; each call takes the table's
  write lock, so a request's lookup sees every row before or after an update, never torn (rows of
  one delta on different tables may be seen one table old; a request never waits on more than one
  table's write).
- `apply(DenseUpdate)`: the frames of one version are collected; once every dense tensor of the
  model is there, a NEW model sharing the same embedding layers is built, loaded and only then put
  in place by one reference assignment. A request reads `self._model` once, so it computes with the
  old or the new dense weights, never a mix.

fp16 (`ServingConfig.fp16`): embeddings are rounded through float16 on apply (and on bootstrap), so
a replica behaves exactly like one fed fp16 deltas; the storage stays float32 (the table's row
format), i.e. the flag trades accuracy for sync bandwidth (`SyncPublisher(fp16=True)` halves the
payload), not for replica memory.

Sampling correction: freshrec trains with the log-odds offset in the loss (`freshrec.stream.sampling`),
so the served logit is already the true log-odds and no correction is applied by default. For a
model trained on sampled negatives WITHOUT the offset, set `ServingConfig.train_sample_rate = r` and
the replica serves `corrected_logit(logit, r) = logit + log r`.

Model input from features (the convention shared with the training side): slot `user_id` reads
the user id, slot `item_id` the item id, any other slot `sparse[slot]` (single-valued slots take the
first id; a missing one reads as `MISSING_ID`, whose row is zeros unless trained; multi-valued slots
take the whole list as a bag). Dense features are `dense[name]` for `name` in `dense_names`
(default `dense_0 .. dense_{D-1}`), 0.0 when absent. Per-candidate features override the context's.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn

from freshrec.errors import ConfigError
from freshrec.model import CollisionlessEmbedding, FeatureSpec, HashedEmbedding, ModelSpec, Task, build_model
from freshrec.model.contract import DEFAULT_TASKS, extra_columns_of, outputs_2d
from freshrec.model.rows import concat_rows
from freshrec.ps.delta import Delta, DenseUpdate
from freshrec.ps.training import TrainingPS
from freshrec.table import SGD, EmbeddingTable, Initializer, TableConfig

__all__ = ["MISSING_ID", "RankQuery", "ServingConfig", "ServingReplica", "serving_table_config"]

MISSING_ID = -(2**63)  # the id a single-valued slot reads when the request lacks it


class RankQuery(NamedTuple):
    """One ranking request of `ServingReplica.rank_many`: the arguments of `rank_tasks`."""

    user_id: int
    item_ids: Sequence[int] | np.ndarray
    sparse: Mapping[str, Sequence[int]] | None = None
    dense: Mapping[str, float] | None = None
    item_sparse: Sequence[Mapping[str, Sequence[int]]] | None = None
    item_dense: Sequence[Mapping[str, float]] | None = None


@dataclass(frozen=True, kw_only=True)
class ServingConfig:
    """Options of a serving replica (see the module docstring).

    fp16: round embeddings through float16 on apply. train_sample_rate: add log(r) to logits
    (only for models trained on sampled negatives without the loss offset). dense_names: order of
    the dense features. initial_capacity: rows each table is sized for at start.
    """

    fp16: bool = False
    train_sample_rate: float | None = None
    dense_names: tuple[str, ...] | None = None
    initial_capacity: int = 1024
    rank_weights: Mapping[str, float] | None = None  # task -> weight of its score; default: first task

    def __post_init__(self) -> None:
        r = self.train_sample_rate
        if r is not None and not 0.0 < r <= 1.0:
            msg = f"ServingConfig.train_sample_rate must be in (0, 1], got {r}"
            raise ConfigError(msg)
        for k, w in (self.rank_weights or {}).items():
            if not math.isfinite(float(w)):
                msg = f"ServingConfig.rank_weights[{k!r}] must be finite, got {w}"
                raise ConfigError(msg)


def serving_table_config(cfg: TableConfig, *, initial_capacity: int = 1024) -> TableConfig:
    """A training table config turned into a serving one: rows of `dim` floats, nothing evicted."""
    return replace(
        cfg,
        optimizer=SGD(lr=0.01),
        initializer=Initializer(kind="zeros", scale=0.0),
        min_count=1,
        ttl_s=None,
        capacity=None,
        initial_capacity=max(int(initial_capacity), 16),
    )


def _with_dense_names(config: ServingConfig | None, meta: Mapping[str, Any]) -> ServingConfig | None:
    """`config` with the dense features named as the schema in a snapshot's `meta` names them
    (unless the config names them, or the snapshot holds no schema)."""
    schema = meta.get("extra", {}).get("schema")
    names = tuple(s["name"] for s in schema["slots"] if s.get("kind") == "dense") if schema else ()
    if not names or (config is not None and config.dense_names is not None):
        return config
    return replace(config or ServingConfig(), dense_names=names)


class ServingReplica:
    """Serving tables + dense model of any model over `spec`; see the module docstring.

    Args:
        spec: the model's slots (as the training PS's).
        model: the model (`ModelSpec` or import path); default DeepFM with `hidden` and `seed`.
        tasks: the model's tasks (default: one binary "click").
        hashed: slot -> hashed layer description (`{"num_buckets", "dim", "hash", "hash_seed"}`) for
            slots the model embeds with hashed tables (their rows are dense weights).
        config: ServingConfig.
        clock: wall-clock seconds, stamped on each apply (`last_apply_wall`, for metrics).
        tables: slot -> a table to read instead of a new `EmbeddingTable` per collisionless slot
            (e.g. `freshrec.table.shared.SharedTableReader`s of tables another process applies
            deltas to, see `freshrec.serve.shared_replica`); such a replica is not `apply`-ed to.
    """

    def __init__(
        self,
        spec: FeatureSpec,
        *,
        model: ModelSpec | str | None = None,
        tasks: Sequence[Task] | None = None,
        hidden: Sequence[int] = (256, 128),
        seed: int = 0,
        hashed: Mapping[str, Mapping[str, Any]] | None = None,
        config: ServingConfig | None = None,
        clock: Callable[[], float] = time.time,
        tables: Mapping[str, Any] | None = None,
    ) -> None:
        self.spec = spec
        if isinstance(model, str):
            model = ModelSpec(model)
        self.model_spec = model or ModelSpec(
            "freshrec.model:DeepFM", {"hidden": list(hidden), "seed": int(seed)}
        )
        self.tasks = tuple(tasks) if tasks else DEFAULT_TASKS
        self._hashed = {k: dict(v) for k, v in (hashed or {}).items()}
        self.config = config or ServingConfig()
        weights = dict(self.config.rank_weights or {self.tasks[0].name: 1.0})
        unknown = set(weights) - {t.name for t in self.tasks}
        if unknown:
            names = [t.name for t in self.tasks]
            msg = f"rank weights for unknown tasks {sorted(unknown)}; the model's tasks are {names}"
            raise ConfigError(msg)
        self.rank_weights = np.array([float(weights.get(t.name, 0.0)) for t in self.tasks], np.float64)
        self._binary = np.array([t.kind == "binary" for t in self.tasks])
        self.clock = clock
        given = self.config.dense_names
        self.dense_names = (
            tuple(given) if given is not None else tuple(f"dense_{i}" for i in range(spec.dense_dim))
        )
        if len(self.dense_names) != spec.dense_dim:
            msg = f"{len(self.dense_names)} dense_names for a model with {spec.dense_dim} dense features"
            raise ConfigError(msg)
        extra = extra_columns_of(self.model_spec.resolve())
        self.tables: dict[str, Any] = {}  # EmbeddingTable, or the tables given (read-only here)
        for n in spec.names:
            if n in self._hashed:
                continue
            cfg = serving_table_config(
                spec.table_config(n, extra_columns=extra), initial_capacity=self.config.initial_capacity
            )
            if tables is None:
                self.tables[n] = EmbeddingTable(cfg)
            elif n in tables:
                self.tables[n] = tables[n]
            else:
                msg = f"ServingReplica: no table given for the slot {n!r}"
                raise ConfigError(msg)
        self._layers = {n: CollisionlessEmbedding(t.config, table=t) for n, t in self.tables.items()}
        self._model = self._fresh_model()
        self._dense_keys = frozenset(self._model.state_dict().keys())
        self._pending_dense: dict[int, dict[str, np.ndarray]] = {}
        self._apply_lock = threading.Lock()
        self._offset = (
            0.0 if self.config.train_sample_rate is None else math.log(self.config.train_sample_rate)
        )
        # what has been applied
        self.version = 0  # highest version applied (delta or dense)
        self.dense_version = 0
        self.data_ts: float | None = None  # data time of the newest frame applied
        self.last_apply_wall: float | None = None
        self.deltas_applied = 0
        self.rows_applied = 0
        self.rows_deleted = 0
        self.dense_applied = 0
        self.unknown_tables = 0
        self.positions: dict[str, Any] = {}  # parameter-log offsets of the snapshot bootstrapped from

    # ---- model ---------------------------------------------------------------------------------
    def _fresh_model(self) -> nn.Module:
        layers: dict[str, nn.Module] = dict(self._layers)
        for n, h in self._hashed.items():
            layers[n] = HashedEmbedding.from_description(h, name=n)
        m = build_model(self.model_spec, self.spec, tasks=self.tasks, layers=layers)
        m.eval()
        for p in m.parameters():
            p.requires_grad_(False)
        return m

    @property
    def model(self) -> nn.Module:
        """The model currently answering (replaced as a whole on each dense update)."""
        return self._model

    def load_dense(self, tensors: Mapping[str, np.ndarray], *, version: int | None = None) -> None:
        """Swap in new dense weights atomically (all of the model's dense tensors are required)."""
        missing = self._dense_keys - set(tensors)
        if missing:
            msg = f"dense update lacks {sorted(missing)}"
            raise ConfigError(msg)
        m = self._fresh_model()
        m.load_state_dict({k: torch.from_numpy(np.array(tensors[k])) for k in self._dense_keys}, strict=True)
        self._model = m  # the swap: one reference assignment
        if version is not None:
            self.dense_version = int(version)

    # ---- applying ------------------------------------------------------------------------------
    def apply(self, msg: Delta | DenseUpdate) -> None:
        """Apply one parameter-log frame (see the module docstring)."""
        with self._apply_lock:
            if isinstance(msg, Delta):
                table = self.tables.get(msg.table)
                if table is None:
                    self.unknown_tables += 1
                    return
                if msg.deleted.shape[0]:
                    self.rows_deleted += table.remove(msg.deleted)
                if msg.ids.shape[0]:
                    emb = msg.embeddings
                    if self.config.fp16 and emb.dtype != np.float16:
                        emb = emb.astype(np.float16)
                    table.assign(msg.ids, emb.astype(np.float32, copy=False))
                    self.rows_applied += int(msg.ids.shape[0])
                self.deltas_applied += 1
            else:
                pend = self._pending_dense.setdefault(int(msg.version), {})
                pend.update(msg.tensors)
                if not self._dense_keys <= set(pend):
                    return
                self.load_dense(pend, version=msg.version)
                self._pending_dense = {v: p for v, p in self._pending_dense.items() if v > msg.version}
                self.dense_applied += 1
            self.version = max(self.version, int(msg.version))
            if msg.ts:
                self.data_ts = msg.ts if self.data_ts is None else max(self.data_ts, float(msg.ts))
            self.last_apply_wall = self.clock()

    # ---- bootstrap -----------------------------------------------------------------------------
    @classmethod
    def from_ps(
        cls,
        ps: TrainingPS,
        *,
        positions: Mapping[str, Any] | None = None,
        config: ServingConfig | None = None,
        clock: Callable[[], float] = time.time,
    ) -> ServingReplica:
        """A replica serving exactly what `ps` holds: its embeddings (no optimizer state) and dense
        weights. `positions` (a snapshot's) tells where to follow the parameter log from:
        `SyncSubscriber(replica, log, start=replica.positions["params"])`."""
        desc = ps.describe()
        hashed = {n: lm for n, lm in desc["embeddings"].items() if lm["kind"] == "hashed"}
        rep = cls(ps.spec, model=ps.model_spec, tasks=ps.tasks, hashed=hashed, config=config, clock=clock)
        for name, table in rep.tables.items():
            ids, rows = ps.tables[name].export()
            rows = np.asarray(rows)[:, : table.dim]
            if rep.config.fp16:
                rows = rows.astype(np.float16)
            table.reserve(ids.shape[0])
            table.assign(ids, np.ascontiguousarray(rows, np.float32))
            table.take_touched()  # serving tables track nothing for anyone: drop the marks
        positions = dict(positions or {})
        version = int(positions.get("params_version", 0))
        rep.load_dense(ps.dense_state(), version=version)
        rep.positions = positions
        rep.version = version
        rep.data_ts = ps.data_time
        return rep

    @classmethod
    def bootstrap(
        cls,
        meta: Mapping[str, Any],
        arrays: Mapping[str, np.ndarray],
        *,
        config: ServingConfig | None = None,
        clock: Callable[[], float] = time.time,
        source: str = "<state>",
    ) -> ServingReplica:
        """A replica holding the embeddings and dense weights of a full training state
        (`TrainingPS.state()`, a snapshot's meta and arrays)."""
        ps = TrainingPS.from_state(meta, arrays, source=source)
        config = _with_dense_names(config, meta)
        return cls.from_ps(ps, positions=meta.get("positions", {}), config=config, clock=clock)

    @classmethod
    def from_snapshot(
        cls,
        path: str | Path,
        *,
        config: ServingConfig | None = None,
        clock: Callable[[], float] = time.time,
    ) -> ServingReplica:
        """A replica from any snapshot a command wrote: a snapshot folder (`freshrec train --out`,
        `TrainingPS.save`, `SyncPublisher.snapshot`), a snapshot store, or a periodic-snapshot folder
        (`freshrec train online --snapshots`: its newest full snapshot plus incrementals)."""
        from freshrec.ps.training import load_training_snapshot

        ps, meta = load_training_snapshot(path)  # one read: the state and its meta (the schema)
        config = _with_dense_names(config, meta)
        return cls.from_ps(ps, positions=dict(meta.get("positions", {})), config=config, clock=clock)

    # ---- scoring -------------------------------------------------------------------------------
    def _slot_input(
        self,
        name: str,
        multi: bool,
        n: int,
        ctx: Mapping[str, Sequence[int]],
        per_row: Sequence[Mapping[str, Sequence[int]]] | None,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        if per_row is None:
            v = ctx.get(name) or ()
            if not multi:
                return torch.full((n,), int(v[0]) if len(v) else MISSING_ID, dtype=torch.int64)
            k = len(v)
            flat = torch.tensor(list(v) * n, dtype=torch.int64) if k else torch.empty(0, dtype=torch.int64)
            return flat, torch.arange(n, dtype=torch.int64) * k  # bag b = flat[b*k:(b+1)*k]
        lists = [(r.get(name) if name in r else ctx.get(name)) or () for r in per_row]
        if not multi:
            return torch.tensor([int(x[0]) if len(x) else MISSING_ID for x in lists], dtype=torch.int64)
        lens = np.fromiter((len(x) for x in lists), np.int64, len(lists))
        offsets = np.zeros(len(lists), np.int64)
        np.cumsum(lens[:-1], out=offsets[1:])
        flat_np = np.fromiter((int(i) for x in lists for i in x), np.int64, int(lens.sum()))
        return torch.from_numpy(flat_np), torch.from_numpy(offsets)

    def _dense_input(
        self, n: int, ctx: Mapping[str, float], per_row: Sequence[Mapping[str, float]] | None
    ) -> torch.Tensor | None:
        if not self.dense_names:
            return None
        base = [float(ctx.get(k, 0.0)) for k in self.dense_names]
        if per_row is None:
            return torch.tensor(base, dtype=torch.float32).expand(n, -1)
        rows = [[float(r.get(k, b)) for k, b in zip(self.dense_names, base, strict=True)] for r in per_row]
        return torch.tensor(rows, dtype=torch.float32).reshape(n, len(self.dense_names))

    def inputs(
        self,
        user_ids: Sequence[int] | np.ndarray,
        item_ids: Sequence[int] | np.ndarray,
        *,
        sparse: Mapping[str, Sequence[int]] | None = None,
        dense: Mapping[str, float] | None = None,
        row_sparse: Sequence[Mapping[str, Sequence[int]]] | None = None,
        row_dense: Sequence[Mapping[str, float]] | None = None,
    ) -> tuple[dict[str, Any], torch.Tensor | None]:
        """DeepFM input (sparse dict, dense (B, D) or None) of B rows: ids, shared context
        features and optional per-row features (see the module docstring for the mapping)."""
        uid = torch.from_numpy(np.ascontiguousarray(user_ids, dtype=np.int64).reshape(-1))
        iid = torch.from_numpy(np.ascontiguousarray(item_ids, dtype=np.int64).reshape(-1))
        n = int(iid.shape[0])
        ctx = sparse or {}
        out: dict[str, Any] = {}
        for s in self.spec.slots:
            if s.name == "user_id":
                out[s.name] = uid.expand(n) if uid.shape[0] == 1 else uid
            elif s.name == "item_id":
                out[s.name] = iid
            else:
                out[s.name] = self._slot_input(s.name, s.multi_valued, n, ctx, row_sparse)
        return out, self._dense_input(n, dense or {}, row_dense)

    def _context_inputs(
        self, queries: Sequence[RankQuery], items: list[np.ndarray], counts: np.ndarray
    ) -> tuple[dict[str, Any], torch.Tensor | None]:
        """`inputs` of all the rows of queries whose candidates have no features of their own,
        at once: each query's user, context ids and dense values repeated over its candidates."""
        ctx = [q.sparse or {} for q in queries]
        k = len(queries)
        out: dict[str, Any] = {}
        for s in self.spec.slots:
            if s.name == "user_id":
                users = np.fromiter((int(q.user_id) for q in queries), np.int64, k)
                out[s.name] = torch.from_numpy(np.repeat(users, counts))
            elif s.name == "item_id":
                out[s.name] = torch.from_numpy(np.concatenate(items))
            elif not s.multi_valued:
                first = np.fromiter(
                    (int(v[0]) if (v := c.get(s.name)) else MISSING_ID for c in ctx), np.int64, k
                )
                out[s.name] = torch.from_numpy(np.repeat(first, counts))
            else:  # bag b of query q's rows: q's list, repeated
                bags = [np.asarray(c.get(s.name) or (), np.int64) for c in ctx]
                lens = np.repeat(np.fromiter(map(len, bags), np.int64, k), counts)
                offsets = np.zeros(lens.shape[0], np.int64)
                np.cumsum(lens[:-1], out=offsets[1:])
                flat = np.concatenate([np.tile(b, n) for b, n in zip(bags, counts.tolist(), strict=True)])
                out[s.name] = (torch.from_numpy(flat), torch.from_numpy(offsets))
        if not self.dense_names:
            return out, None
        names = self.dense_names
        base = np.array([[float((q.dense or {}).get(n, 0.0)) for n in names] for q in queries], np.float32)
        return out, torch.from_numpy(np.repeat(base, counts, axis=0))

    def _scores(self, sparse: Mapping[str, Any], dense: torch.Tensor | None) -> np.ndarray:
        """(B, T) float32: each task's served score (probability for binary tasks, value else)."""
        model = self._model  # read once: old or new dense weights, never a mix
        with torch.inference_mode():
            out = outputs_2d(model(sparse, dense), len(self.tasks)).numpy().astype(np.float64)
        b = self._binary
        z = out[:, b] + self._offset if self._offset else out[:, b]
        out[:, b] = 1.0 / (1.0 + np.exp(-z))
        return out.astype(np.float32)

    def _probabilities(self, sparse: Mapping[str, Any], dense: torch.Tensor | None) -> np.ndarray:
        """(B,) the first task's scores."""
        return np.ascontiguousarray(self._scores(sparse, dense)[:, 0])

    def blend(self, scores: np.ndarray) -> np.ndarray:
        """(B,) the rank score of per-task scores (B, T): `sum_t rank_weights[t] * scores[:, t]`."""
        if scores.shape[1] == 1:
            return np.ascontiguousarray(scores[:, 0]) * np.float32(self.rank_weights[0])
        return (scores.astype(np.float64) @ self.rank_weights).astype(np.float32)

    def rank(
        self,
        user_id: int,
        item_ids: Sequence[int] | np.ndarray,
        *,
        sparse: Mapping[str, Sequence[int]] | None = None,
        dense: Mapping[str, float] | None = None,
        item_sparse: Sequence[Mapping[str, Sequence[int]]] | None = None,
        item_dense: Sequence[Mapping[str, float]] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """(item ids, rank scores) of the candidates, best first (ties keep the input order); the
        rank score is the blend of the tasks' scores (`blend`; one task: its probability)."""
        items, blended, _ = self.rank_tasks(
            user_id, item_ids, sparse=sparse, dense=dense, item_sparse=item_sparse, item_dense=item_dense
        )
        return items, blended

    def rank_tasks(
        self,
        user_id: int,
        item_ids: Sequence[int] | np.ndarray,
        *,
        sparse: Mapping[str, Sequence[int]] | None = None,
        dense: Mapping[str, float] | None = None,
        item_sparse: Sequence[Mapping[str, Sequence[int]]] | None = None,
        item_dense: Sequence[Mapping[str, float]] | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(item ids, rank scores (B,), per-task scores (B, T)), best first."""
        items = np.asarray(item_ids, dtype=np.int64).reshape(-1)
        if items.shape[0] == 0:
            return items, np.empty(0, np.float32), np.empty((0, len(self.tasks)), np.float32)
        sp, de = self.inputs(
            np.asarray([user_id], np.int64),
            items,
            sparse=sparse,
            dense=dense,
            row_sparse=item_sparse,
            row_dense=item_dense,
        )
        return self._ranked(items, self._scores(sp, de))

    def _ranked(self, items: np.ndarray, per_task: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        blended = self.blend(per_task)
        order = np.argsort(-blended, kind="stable")
        return items[order], blended[order], per_task[order]

    def rank_many(self, queries: Sequence[RankQuery]) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """`rank_tasks` of each query, the candidates of all of them scored in one model call (a
        row's scores depend on its own inputs alone, rule 7 of `freshrec.model.contract`), so that
        concurrent requests share the model's fixed cost per call. One read of the dense model:
        every query sees the same weights."""
        items = [np.asarray(q.item_ids, dtype=np.int64).reshape(-1) for q in queries]
        counts = np.fromiter((ids.shape[0] for ids in items), np.int64, len(items))
        if not counts.sum():
            per_task = np.empty((0, len(self.tasks)), np.float32)
        elif any(q.item_sparse is not None or q.item_dense is not None for q in queries):
            parts = [
                self.inputs(
                    np.asarray([q.user_id], np.int64),
                    ids,
                    sparse=q.sparse,
                    dense=q.dense,
                    row_sparse=q.item_sparse,
                    row_dense=q.item_dense,
                )
                for q, ids in zip(queries, items, strict=True)
                if ids.shape[0]
            ]
            per_task = self._scores(*concat_rows(parts))
        else:
            per_task = self._scores(*self._context_inputs(queries, items, counts))
        out = []
        start = 0
        for ids in items:
            n = int(ids.shape[0])
            out.append(self._ranked(ids, per_task[start : start + n]))
            start += n
        return out

    def predict(self, examples: Sequence[Mapping[str, Any]]) -> np.ndarray:
        """The first task's scores (B,) (a click probability) of examples {"user_id", "item_id",
        "sparse"?, "dense"?}; every task's: `predict_tasks`."""
        return np.ascontiguousarray(self.predict_tasks(examples)[:, 0])

    def predict_tasks(self, examples: Sequence[Mapping[str, Any]]) -> np.ndarray:
        """Every task's scores (B, T) of examples (as `predict`)."""
        if not examples:
            return np.empty((0, len(self.tasks)), np.float32)
        sp, de = self.inputs(
            [int(e["user_id"]) for e in examples],
            [int(e["item_id"]) for e in examples],
            row_sparse=[e.get("sparse") or {} for e in examples],
            row_dense=[e.get("dense") or {} for e in examples],
        )
        return self._scores(sp, de)

    # ---- inspection ----------------------------------------------------------------------------
    def table_sizes(self) -> dict[str, int]:
        return {n: len(t) for n, t in self.tables.items()}

    def lookup(self, table: str, ids: Sequence[int] | np.ndarray) -> np.ndarray:
        """Embeddings (n, dim) the replica serves for `ids` of `table` (zeros when absent)."""
        return self.tables[table].lookup(np.asarray(ids, np.int64))

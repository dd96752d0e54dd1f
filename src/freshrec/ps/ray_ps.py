"""`RayShardedTable`: a collisionless table whose shards live in Ray actors, on one host or many.

Layout. N `ShardServer` actors, one per shard; server k holds shard k of every table created on
it (one `EmbeddingTable` per table name), as a parameter-server process of Monolith does. A
`RayShardedTable` is the driver-side view of one table over those servers: it partitions ids with
the same `shard_of` as the in-process `ShardedTable`, sends each server its part as numpy arrays,
and gathers the answers into one array:

    ids = [7, 3, 9, 4]       shard_of(ids, 2) = [1, 1, 0, 0]
    server 0 gets [9, 4] -> rows r0 (2, dim); server 1 gets [7, 3] -> rows r1 (2, dim)
    out[[2, 3]] = r0;  out[[0, 1]] = r1                                   # out (4, dim)

It has the interface of `ShardedTable` (lookup, contains, apply_gradients, assign, remove,
evict_expired, take_touched, export, nbytes, evictions, len, state/from_state,
check_invariants), so `CollisionlessEmbedding(config, table=RayShardedTable(...))` trains
unchanged, and its `state()` has the exact shape of `ShardedTable.state()`: a snapshot of one
loads into the other (same number of shards; resharding is not supported).

Several tables on the same servers can be read and updated with one call per server for all of
them (`lookup_many`, `apply_gradients_many`): a model's 26 slot tables then cost one round trip
per batch instead of 26.

Transport: Ray. Arrays larger than ~100 KiB travel through Ray's object store (shared memory on
one host: the server reads them without a copy); small ones ride inline in the call. Every method
waits for all shards before it returns, so one caller's calls apply in the order made, and the
shards of one call work in parallel.

Concurrency: servers are threaded actors (`ShardOptions.max_concurrency` threads), and each table
sits behind its own readers-writer lock, so lookups from serving replicas do not queue behind a
trainer's update; updates from several trainers serialize per shard. Any process attached to the
cluster can use a table: pass the `RayShardedTable` to a Ray task or actor (it pickles as its
server handles), or find named servers with `find_servers(name)` and `RayShardedTable.attach`.

Ray is an optional dependency (`pip install freshrec[ray]`): this module imports it only when
used; `ray_unavailable()` says why it cannot be used.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from freshrec.checkpoint.format import strip_prefix, with_prefix
from freshrec.errors import ConfigError, FreshrecError, SnapshotError
from freshrec.ps.sharded import shard_capacities, shard_of, split_by_shard
from freshrec.table import EmbeddingTable, TableConfig, TouchedRows
from freshrec.table.table import as_ids

__all__ = [
    "RAY_ENVIRONMENT",
    "RayShardedTable",
    "ShardOptions",
    "ShardServer",
    "apply_gradients_many",
    "find_servers",
    "lookup_many",
    "ray_unavailable",
    "start_local_cluster",
    "start_servers",
    "stop_servers",
]


# the process environment a loopback-only local cluster needs before ray is imported
RAY_ENVIRONMENT = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}


def ray_unavailable() -> str | None:
    """None when Ray can be imported, else the reason (for skips and error messages)."""
    try:
        import ray  # noqa: F401
    except ImportError as e:
        return f"ray is not installed ({e}); install the extra: pip install 'freshrec[ray]'"
    return None


def _ray() -> Any:
    reason = ray_unavailable()
    if reason is not None:
        raise ConfigError(reason)
    import ray

    return ray


def start_local_cluster(
    *, num_cpus: int = 2, object_store_memory: int = 256 << 20, namespace: str | None = None
) -> str:
    """Start a one-host Ray cluster whose every server listens on loopback only; returns its address.

    No dashboard, no usage stats, worker logs not echoed. Ray resolves a node address of
    "127.0.0.1" to the host's external address unless it runs in its single-host mode, which
    `RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0` selects. That is a process-wide setting, read when ray is
    imported and inherited by the Ray processes started here, so this function does not make it:
    the process environment must hold `RAY_ENVIRONMENT` before ray is imported (the commands that
    start a cluster declare it and `freshrec.cli` sets it; tests/conftest.py sets it for the tests).
    ConfigError otherwise. To use an existing cluster instead, call `ray.init(address=...)`.
    """
    missing = {k: v for k, v in RAY_ENVIRONMENT.items() if os.environ.get(k) != v}
    if missing:
        msg = f"start_local_cluster: set {missing} in the environment before ray is imported (loopback only)"
        raise ConfigError(msg)
    ray = _ray()
    from ray._private import ray_constants

    if ray_constants.ENABLE_RAY_CLUSTER:
        msg = "start_local_cluster: ray was imported before RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 was set"
        raise ConfigError(msg)
    ctx = ray.init(
        num_cpus=num_cpus,
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        object_store_memory=object_store_memory,
        namespace=namespace,
        log_to_driver=False,
        configure_logging=False,
    )
    return str(ctx.address_info.get("gcs_address", ctx.address_info.get("address", "")))


@dataclass(frozen=True, kw_only=True)
class ShardOptions:
    """How shard servers are placed.

    num_cpus: CPUs Ray reserves per server (0.5 lets two servers and a trainer share 2 cores).
    resources: custom Ray resources per server, e.g. {"ps_host": 1} to pin servers to tagged hosts.
    memory: bytes of Ray's `memory` resource reserved per server (scheduling only), or None.
    max_concurrency: threads per server, so lookups run while an update holds another table.
    name / namespace: name servers "<name>-<k>" so other drivers can `find_servers(name)`.
    detached: servers outlive the driver that started them (needs `name`; stop with `stop_servers`).
    spread: ask Ray to spread servers over nodes (SPREAD scheduling).
    """

    num_cpus: float = 0.5
    resources: Mapping[str, float] | None = None
    memory: int | None = None
    max_concurrency: int = 8
    name: str | None = None
    namespace: str | None = None
    detached: bool = False
    spread: bool = True

    def validate(self) -> None:
        msg = None
        if self.num_cpus < 0:
            msg = f"ShardOptions.num_cpus must be >= 0, got {self.num_cpus}"
        elif self.max_concurrency < 1:
            msg = f"ShardOptions.max_concurrency must be >= 1, got {self.max_concurrency}"
        elif self.detached and not self.name:
            msg = "ShardOptions.detached needs a name (to find and stop the servers)"
        if msg is not None:
            raise ConfigError(msg)


class ShardServer:
    """The body of one shard server actor: a process holding one shard of each of many tables.

    Which shard of which table it holds is per table (`create(..., shard=k, n_shards=n)`), so one
    group of servers hosts tables of any shard count up to its size. `index` / `group` are the
    server's place in the group started together (how `find_servers` finds the rest).
    Plain Python (no Ray inside), so it is testable in-process; `start_servers` runs it as an actor.
    Every table method takes the table name first and raises ConfigError for an unknown name.
    """

    def __init__(self, index: int, group: int) -> None:
        self.index = int(index)
        self.group = int(group)
        self._tables: dict[str, EmbeddingTable] = {}
        self._meta: dict[str, dict] = {}  # name -> {"config": logical table config, "shard", "n_shards"}

    def _t(self, name: str) -> EmbeddingTable:
        t = self._tables.get(name)
        if t is None:
            msg = f"shard server {self.index}: no table {name!r} (have {sorted(self._tables)})"
            raise ConfigError(msg)
        return t

    # ---- tables ------------------------------------------------------------------------------
    def info(self) -> dict:
        """{"index", "group", "pid", "tables": {name: {"config", "shard", "n_shards"}}}."""
        return {"index": self.index, "group": self.group, "pid": os.getpid(), "tables": dict(self._meta)}

    def _place(self, name: str, config: dict, shard: int, n_shards: int) -> None:
        if name in self._tables:
            msg = f"shard server {self.index}: table {name!r} exists (attach to it, or drop it first)"
            raise ConfigError(msg)
        self._meta[name] = {"config": config, "shard": int(shard), "n_shards": int(n_shards)}

    def create(self, name: str, config: dict, shard_config: dict, shard: int, n_shards: int) -> None:
        """Hold shard `shard` of `n_shards` of a new table `name` (logical config `config`)."""
        self._place(name, config, shard, n_shards)
        self._tables[name] = EmbeddingTable(TableConfig.from_dict(shard_config))

    def load(
        self, name: str, config: dict, shard: int, n_shards: int, meta: dict, arrays: dict, source: str
    ) -> None:
        """Like `create`, with the shard's rows from `EmbeddingTable.state()` output."""
        self._place(name, config, shard, n_shards)
        try:
            self._tables[name] = EmbeddingTable.from_state(meta, dict(arrays), source=source)
        except BaseException:
            del self._meta[name]
            raise

    def drop(self, name: str) -> bool:
        self._meta.pop(name, None)
        return self._tables.pop(name, None) is not None

    # ---- the table interface, per shard -----------------------------------------------------
    def lookup(self, name: str, ids: np.ndarray) -> np.ndarray:
        return self._t(name).lookup(ids)

    def contains(self, name: str, ids: np.ndarray) -> np.ndarray:
        return self._t(name).contains(ids)

    def apply_gradients(
        self, name: str, ids: np.ndarray, grads: np.ndarray, now: float, counts: np.ndarray | None
    ) -> None:
        self._t(name).apply_gradients(ids, grads, now=now, counts=counts)

    def assign(self, name: str, ids: np.ndarray, emb: np.ndarray, now: float | None) -> None:
        self._t(name).assign(ids, emb, now=now)

    def remove(self, name: str, ids: np.ndarray) -> int:
        return self._t(name).remove(ids)

    def evict_expired(self, name: str, now: float) -> int:
        return self._t(name).evict_expired(now)

    def lookup_many(self, names: list[str], ids: list[np.ndarray]) -> list[np.ndarray]:
        return [self._t(n).lookup(x) for n, x in zip(names, ids, strict=True)]

    def apply_gradients_many(
        self,
        names: list[str],
        ids: list[np.ndarray],
        grads: list[np.ndarray],
        now: float,
        counts: list[np.ndarray] | None,
    ) -> None:
        for k, n in enumerate(names):
            c = None if counts is None else counts[k]
            self._t(n).apply_gradients(ids[k], grads[k], now=now, counts=c)

    def take_touched(self, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        t = self._t(name).take_touched()
        return t.ids, t.embeddings, t.evicted

    def export(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        return self._t(name).export()

    def stats(self, name: str) -> tuple[int, int, int]:
        """(rows, nbytes, evictions) of this shard of the table."""
        t = self._t(name)
        return len(t), t.nbytes(), t.evictions

    def state(self, name: str) -> tuple[dict, dict[str, np.ndarray]]:
        return self._t(name).state()

    def check(self, name: str) -> None:
        t = self._t(name)
        t.check_invariants()
        ids, _ = t.export()
        k, n = self._meta[name]["shard"], self._meta[name]["n_shards"]
        bad = int((shard_of(ids, n) != k).sum())
        assert bad == 0, f"table {name!r} shard {k}/{n}: {bad} ids belong to another shard"


@functools.cache
def _remote_cls() -> Any:
    return _ray().remote(ShardServer)


def start_servers(n_servers: int, *, options: ShardOptions | None = None) -> list[Any]:
    """Start `n_servers` shard server actors (Ray must be initialized); returns their handles
    once all are up. A table of n shards uses the first n of them (or any n you pass it)."""
    ray = _ray()
    opts = options or ShardOptions()
    opts.validate()
    if n_servers < 1:
        msg = f"n_servers must be >= 1, got {n_servers}"
        raise ConfigError(msg)
    cls = _remote_cls()
    handles = []
    for k in range(n_servers):
        kw: dict[str, Any] = {"num_cpus": opts.num_cpus, "max_concurrency": opts.max_concurrency}
        if opts.resources:
            kw["resources"] = dict(opts.resources)
        if opts.memory:
            kw["memory"] = int(opts.memory)
        if opts.name:
            kw["name"] = f"{opts.name}-{k}"
            if opts.namespace:
                kw["namespace"] = opts.namespace
        if opts.detached:
            kw["lifetime"] = "detached"
        if opts.spread:
            kw["scheduling_strategy"] = "SPREAD"
        handles.append(cls.options(**kw).remote(k, n_servers))
    _get(ray, [h.info.remote() for h in handles])
    return handles


def find_servers(name: str, *, namespace: str | None = None) -> list[Any]:
    """Handles of the servers "<name>-0", ... that `start_servers(options=ShardOptions(name=...))` started."""
    ray = _ray()
    try:
        first = ray.get_actor(f"{name}-0", namespace=namespace)
    except ValueError as e:
        msg = f"no shard servers named {name!r} in namespace {namespace!r}: {e}"
        raise ConfigError(msg) from e
    n = int(_get(ray, first.info.remote())["group"])
    return [first] + [ray.get_actor(f"{name}-{k}", namespace=namespace) for k in range(1, n)]


def stop_servers(servers: Sequence[Any]) -> None:
    """Kill the server actors (their tables are lost: snapshot first)."""
    ray = _ray()
    for h in servers:
        ray.kill(h)


def _get(ray: Any, refs: Any) -> Any:
    """ray.get, re-raising freshrec errors and assertion failures of a server as themselves."""
    try:
        return ray.get(refs)
    except ray.exceptions.RayTaskError as e:
        cause = getattr(e, "cause", None)
        if isinstance(cause, FreshrecError | AssertionError):
            raise cause from e
        raise


def _grouped(tables: Sequence[Any]) -> bool:
    """True when every table is a RayShardedTable on the same servers (one call per server works)."""
    if not tables or not all(isinstance(t, RayShardedTable) for t in tables):
        return False
    return all(t.servers == tables[0].servers for t in tables)


def _split_many(tables: Sequence[RayShardedTable], ids: Sequence[np.ndarray]) -> list[list[np.ndarray]]:
    """positions[t][s]: the positions of table t's ids that live on shard s."""
    out = []
    for t, x in zip(tables, ids, strict=True):
        if t.n_shards == 1:
            out.append([np.arange(x.shape[0])])
        else:
            order, starts = t._split(x)
            out.append([order[starts[s] : starts[s + 1]] for s in range(t.n_shards)])
    return out


def lookup_many(tables: Sequence[Any], ids: Sequence[object]) -> list[np.ndarray]:
    """`[t.lookup(x) for t, x in zip(tables, ids)]`, in one call per server when the tables are
    RayShardedTables on the same servers (e.g. the 26 slot tables of a model): one round trip per
    batch instead of one per table. Any other tables are looked up one by one."""
    if not _grouped(tables):
        return [t.lookup(x) for t, x in zip(tables, ids, strict=True)]
    ray = _ray()
    xs = [as_ids(x) for x in ids]
    pos = _split_many(tables, xs)
    names = [t.name for t in tables]
    refs = [
        server.lookup_many.remote(names, [x[p[s]] for x, p in zip(xs, pos, strict=True)])
        for s, server in enumerate(tables[0].servers)
    ]
    outs = [np.zeros((x.shape[0], t.dim), np.float32) for t, x in zip(tables, xs, strict=True)]
    for s, rows in enumerate(_get(ray, refs)):
        for k, r in enumerate(rows):
            outs[k][pos[k][s]] = r
    return outs


def apply_gradients_many(
    tables: Sequence[Any],
    ids: Sequence[object],
    grads: Sequence[np.ndarray],
    *,
    now: float,
    counts: Sequence[np.ndarray] | None = None,
) -> None:
    """`t.apply_gradients(x, g, now=now, counts=c)` for each table, in one call per server when the
    tables are RayShardedTables on the same servers (see `lookup_many`)."""
    cs: list[np.ndarray | None] = [None] * len(tables) if counts is None else list(counts)
    if not _grouped(tables):
        for t, x, g, c in zip(tables, ids, grads, cs, strict=True):
            t.apply_gradients(x, g, now=now, counts=c)
        return
    ray = _ray()
    xs = [as_ids(x) for x in ids]
    gs = [np.ascontiguousarray(g, np.float32) for g in grads]
    for t, x, g in zip(tables, xs, gs, strict=True):
        if g.shape != (x.shape[0], t.dim):
            msg = f"table {t.name!r}: grads must have shape ({x.shape[0]}, {t.dim}), got {g.shape}"
            raise ConfigError(msg)
    pos = _split_many(tables, xs)
    names = [t.name for t in tables]
    refs = []
    for s, server in enumerate(tables[0].servers):
        part_c = None if counts is None else [np.asarray(c)[p[s]] for c, p in zip(cs, pos, strict=True)]
        refs.append(
            server.apply_gradients_many.remote(
                names,
                [x[p[s]] for x, p in zip(xs, pos, strict=True)],
                [g[p[s]] for g, p in zip(gs, pos, strict=True)],
                float(now),
                part_c,
            )
        )
    _get(ray, refs)


def _rebuild(config: dict, servers: list[Any]) -> RayShardedTable:
    return RayShardedTable(TableConfig.from_dict(config), servers=servers, _create=False)


class RayShardedTable:
    """One table over Ray shard servers; the interface of `ShardedTable` (see the module docstring).

    `RayShardedTable(config, shards=n)` starts n servers of its own (stopped by `close()`);
    `RayShardedTable(config, servers=handles)` creates the table on existing servers (dropped from
    them by `close()`). Ray must be initialized first (`ray.init(...)` or `start_local_cluster()`).
    """

    # how a model reads and updates several tables at once (`freshrec.model.embedding.lookup_grouped`)
    lookup_group = staticmethod(lookup_many)
    apply_gradients_group = staticmethod(apply_gradients_many)

    def __init__(
        self,
        config: TableConfig,
        *,
        shards: int | None = None,
        servers: Sequence[Any] | None = None,
        options: ShardOptions | None = None,
        _create: bool = True,
    ) -> None:
        self._ray = _ray()
        config.validate()
        self.config = config
        self.name = config.name
        self.dim = config.dim
        self._owns_servers = servers is None
        if servers is None:
            servers = start_servers(shards or 1, options=options)
        elif shards is not None and shards != len(servers):
            msg = f"table {self.name!r}: shards={shards} but {len(servers)} servers given"
            raise ConfigError(msg)
        self.servers: list[Any] = list(servers)
        self.n_shards = len(self.servers)
        self._closed = False
        self._owns_table = _create  # from_state sets it too: close() then drops the table
        if _create:
            held = [sorted(i["tables"]) for i in self._all(lambda s: s.info.remote())]
            if any(self.name in h for h in held):
                self._owns_table = False
                msg = f"table {self.name!r} exists on the shard servers (use RayShardedTable.attach)"
                raise ConfigError(msg)
            per = max(config.initial_capacity // self.n_shards, 16)
            caps = shard_capacities(config.capacity, self.n_shards, name=self.name)
            whole = config.to_dict()
            _get(
                self._ray,
                [
                    s.create.remote(
                        self.name,
                        whole,
                        replace(config, initial_capacity=per, capacity=c).to_dict(),
                        k,
                        self.n_shards,
                    )
                    for (k, s), c in zip(enumerate(self.servers), caps, strict=True)
                ],
            )

    # ---- attach / pickling -------------------------------------------------------------------
    @classmethod
    def attach(cls, name: str, servers: Sequence[Any]) -> RayShardedTable:
        """The table `name` that another driver created on `servers` (closing it drops nothing)."""
        ray = _ray()
        infos = _get(ray, [s.info.remote() for s in servers])
        for k, info in enumerate(infos):
            if name not in info["tables"]:
                msg = f"no table {name!r} on shard server {k} (it has {sorted(info['tables'])})"
                raise ConfigError(msg)
            place = info["tables"][name]
            if (place["shard"], place["n_shards"]) != (k, len(servers)):
                msg = (
                    f"table {name!r}: server {k} holds shard {place['shard']} of {place['n_shards']}, "
                    f"expected shard {k} of {len(servers)}"
                )
                raise ConfigError(msg)
        config = TableConfig.from_dict(infos[0]["tables"][name]["config"])
        return cls(config, servers=servers, _create=False)

    def __reduce__(self) -> tuple:
        # travels to Ray tasks/actors as (config, server handles): an attached view, owning nothing
        return (_rebuild, (self.config.to_dict(), self.servers))

    def close(self) -> None:
        """Stop the servers this table started, or drop the table from servers it was given.
        An attached view (from `attach` or unpickling) only forgets its handles."""
        if self._closed:
            return
        self._closed = True
        if self._owns_servers:
            stop_servers(self.servers)
        elif self._owns_table:
            self._all(lambda s: s.drop.remote(self.name))

    def __enter__(self) -> RayShardedTable:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- helpers -----------------------------------------------------------------------------
    def _all(self, call: Any) -> list[Any]:
        return _get(self._ray, [call(s) for s in self.servers])

    def _split(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return split_by_shard(ids, self.n_shards)

    def _scatter(self, ids: np.ndarray, call: Any) -> list[tuple[np.ndarray, Any]]:
        """Run call(server, positions) for each shard with ids; returns [(positions, result)]."""
        if self.n_shards == 1:
            pos = np.arange(ids.shape[0])
            return [(pos, _get(self._ray, call(self.servers[0], None)))] if ids.shape[0] else []
        order, starts = self._split(ids)
        parts = [order[starts[s] : starts[s + 1]] for s in range(self.n_shards)]
        sent = [(pos, call(self.servers[s], pos)) for s, pos in enumerate(parts) if pos.shape[0]]
        results = _get(self._ray, [ref for _, ref in sent])
        return [(pos, r) for (pos, _), r in zip(sent, results, strict=True)]

    @staticmethod
    def _take(a: np.ndarray, pos: np.ndarray | None) -> np.ndarray:
        return a if pos is None else a[pos]

    # ---- the table interface -----------------------------------------------------------------
    def __len__(self) -> int:
        return sum(s[0] for s in self._stats())

    def _stats(self) -> list[tuple[int, int, int]]:
        return self._all(lambda s: s.stats.remote(self.name))

    def lookup(self, ids: object) -> np.ndarray:
        """float32 (n, dim) rows of `ids`, zeros for unknown ids; never inserts."""
        ids = as_ids(ids)
        out = np.zeros((ids.shape[0], self.dim), np.float32)
        for pos, rows in self._scatter(ids, lambda s, p: s.lookup.remote(self.name, self._take(ids, p))):
            out[pos] = rows
        return out

    def contains(self, ids: object) -> np.ndarray:
        ids = as_ids(ids)
        out = np.zeros(ids.shape[0], bool)
        for pos, have in self._scatter(ids, lambda s, p: s.contains.remote(self.name, self._take(ids, p))):
            out[pos] = have
        return out

    def apply_gradients(
        self, ids: object, grads: np.ndarray, *, now: float, counts: np.ndarray | None = None
    ) -> None:
        """As `EmbeddingTable.apply_gradients`; each shard dedups and sums its own ids."""
        ids = as_ids(ids)
        grads = np.ascontiguousarray(grads, np.float32)
        if grads.shape != (ids.shape[0], self.dim):
            msg = (
                f"table {self.name!r}: grads must have shape ({ids.shape[0]}, {self.dim}), got {grads.shape}"
            )
            raise ConfigError(msg)
        c = None if counts is None else np.ascontiguousarray(counts, np.int64)
        if c is not None and c.shape != ids.shape:
            msg = f"table {self.name!r}: counts must have shape {ids.shape}, got {c.shape}"
            raise ConfigError(msg)
        self._scatter(
            ids,
            lambda s, p: s.apply_gradients.remote(
                self.name,
                self._take(ids, p),
                self._take(grads, p),
                float(now),
                None if c is None else self._take(c, p),
            ),
        )

    def assign(self, ids: object, embeddings: np.ndarray, *, now: float | None = None) -> None:
        ids = as_ids(ids)
        emb = np.ascontiguousarray(embeddings, np.float32)
        if emb.shape != (ids.shape[0], self.dim):
            want = (ids.shape[0], self.dim)
            msg = f"table {self.name!r}: embeddings must have shape {want}, got {emb.shape}"
            raise ConfigError(msg)
        t = None if now is None else float(now)
        self._scatter(ids, lambda s, p: s.assign.remote(self.name, self._take(ids, p), self._take(emb, p), t))

    def remove(self, ids: object) -> int:
        ids = as_ids(ids)
        return sum(
            n for _, n in self._scatter(ids, lambda s, p: s.remove.remote(self.name, self._take(ids, p)))
        )

    def evict_expired(self, now: float) -> int:
        return sum(self._all(lambda s: s.evict_expired.remote(self.name, float(now))))

    def take_touched(self) -> TouchedRows:
        parts = self._all(lambda s: s.take_touched.remote(self.name))
        return TouchedRows(
            ids=np.concatenate([p[0] for p in parts]),
            embeddings=np.concatenate([p[1] for p in parts]).reshape(-1, self.dim),
            evicted=np.concatenate([p[2] for p in parts]),
        )

    def export(self) -> tuple[np.ndarray, np.ndarray]:
        parts = self._all(lambda s: s.export.remote(self.name))
        return (
            np.concatenate([p[0] for p in parts]),
            np.concatenate([p[1] for p in parts]).reshape(-1, self.dim),
        )

    def nbytes(self) -> int:
        return sum(s[1] for s in self._stats())

    @property
    def evictions(self) -> int:
        return sum(s[2] for s in self._stats())

    def check_invariants(self) -> None:
        """Raise AssertionError if a shard's table is inconsistent or holds another shard's ids."""
        infos = self._all(lambda s: s.info.remote())
        for k, info in enumerate(infos):
            place = info["tables"].get(self.name, {})
            assert (place.get("shard"), place.get("n_shards")) == (k, self.n_shards), (k, place)
        self._all(lambda s: s.check.remote(self.name))

    # ---- snapshot ----------------------------------------------------------------------------
    def state(self) -> tuple[dict, dict[str, np.ndarray]]:
        """(meta, arrays) exactly as `ShardedTable.state()`: shard k's arrays under "shard<k>."."""
        meta: dict = {"config": self.config.to_dict(), "shards": []}
        arrays: dict[str, np.ndarray] = {}
        for k, (m, a) in enumerate(self._all(lambda s: s.state.remote(self.name))):
            meta["shards"].append(m)
            arrays.update(with_prefix(f"shard{k}", a))
        return meta, arrays

    @classmethod
    def from_state(
        cls,
        meta: dict,
        arrays: dict[str, np.ndarray],
        *,
        source: str = "<state>",
        servers: Sequence[Any] | None = None,
        options: ShardOptions | None = None,
    ) -> RayShardedTable:
        """A table loaded from `ShardedTable.state()` / `RayShardedTable.state()` output, on `servers`
        (one per snapshot shard) or on new servers of its own. Raises SnapshotError when the
        snapshot is not a sharded-table snapshot or its shard count differs from the servers'."""
        ray = _ray()
        try:
            config = TableConfig.from_dict(meta["config"])
            shard_meta = list(meta["shards"])
        except (KeyError, TypeError, ValueError) as e:
            msg = f"{source}: not a sharded-table snapshot ({e!r})"
            raise SnapshotError(msg) from e
        if servers is not None and len(servers) != len(shard_meta):
            msg = f"{source}: snapshot has {len(shard_meta)} shards, {len(servers)} servers given"
            raise SnapshotError(msg)
        table = cls(
            config,
            shards=len(shard_meta) if servers is None else None,
            servers=servers,
            options=options,
            _create=False,
        )
        table._owns_table = True
        refs = []
        for k, m in enumerate(shard_meta):
            sub = strip_prefix(f"shard{k}", arrays)
            refs.append(
                table.servers[k].load.remote(
                    config.name, config.to_dict(), k, len(shard_meta), m, sub, f"{source} shard {k}"
                )
            )
        try:
            _get(ray, refs)
        except SnapshotError:
            table.close()
            raise
        return table

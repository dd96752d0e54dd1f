"""The table contract: every implementation of the table interface passes the same checks, the
ones a user runs on their own table (`freshrec.checks.check_table`), and the dict oracle.

Implementations: `EmbeddingTable`, `ShardedTable` with 1 and 3 in-process shards, and
`RayShardedTable` over 2 Ray shard servers. Checks compare against a single `EmbeddingTable` fed the
same calls (the oracle) wherever the result is determined: lookups must be bit-for-bit equal.

The Ray implementation runs on a local Ray cluster (one per module, loopback only) started here;
without ray installed its cases skip, except under CI=true, where they fail: CI must run them.
"""

from __future__ import annotations

import itertools
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pytest

from freshrec.checks import TABLE_CHECKS, check_table, check_table_oracle
from freshrec.checks.table import batches, cfg, same_rows
from freshrec.errors import ConfigError
from freshrec.ps.ray_ps import ray_unavailable
from freshrec.ps.sharded import ShardedTable, shard_of
from freshrec.table import SGD, Adagrad, EmbeddingTable, Initializer, TableConfig

RAY_SHARDS = 2
_names = itertools.count()


# ---- the Ray cluster (one per module) ---------------------------------------------------------------


class Trainer:
    """A trainer worker (a Ray actor: a process of its own) applying its share of the batches."""

    def __init__(self) -> None:
        import freshrec.ps.ray_ps  # noqa: F401  (import the table kernels while the tests run)

    def train(self, table: Any, share: list) -> tuple[int, int]:
        """(pid, examples) after applying each (ids, grads, now) of `share` to `table`."""
        for ids, g, now in share:
            table.apply_gradients(ids, g, now=now)
        return os.getpid(), sum(ids.shape[0] for ids, _, _ in share)


@dataclass
class RayEnv:
    servers: list[Any]  # RAY_SHARDS shard servers, named "contract-ps-<k>"
    trainers: list[Any]  # two Trainer actors


@pytest.fixture(scope="module")
def ray_env() -> Iterator[RayEnv]:
    """A local, loopback-only Ray cluster with shard servers and two trainer actors."""
    reason = ray_unavailable()
    if reason is not None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{reason} (CI=true: the Ray PS tests must run in CI)", pytrace=False)
        pytest.skip(reason)
    import ray

    from freshrec.ps.ray_ps import ShardOptions, start_local_cluster, start_servers, stop_servers

    if ray.is_initialized():
        ray.shutdown()
    start_local_cluster(num_cpus=2, object_store_memory=128 << 20)
    # the Ray workers cannot import this test module by name: ship its classes by value
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    # the trainers start now and come up while the first tests run
    trainers = [ray.remote(num_cpus=0.5)(Trainer).remote() for _ in range(2)]
    servers = start_servers(RAY_SHARDS, options=ShardOptions(num_cpus=0.5, name="contract-ps"))
    try:
        yield RayEnv(servers, trainers)
    finally:
        for t in trainers:
            ray.kill(t)
        stop_servers(servers)
        ray.shutdown()


@pytest.fixture
def ray_servers(ray_env: RayEnv) -> list[Any]:
    return ray_env.servers


# ---- implementations ---------------------------------------------------------------------------------


@dataclass
class Impl:
    """How to make a table of one implementation, and load one from `state()` output."""

    name: str
    make: Callable[[TableConfig], Any]
    load: Callable[[dict, dict], Any]


IMPLS = ["EmbeddingTable", "ShardedTable-1", "ShardedTable-3", "RayShardedTable-2"]


@pytest.fixture(params=IMPLS)
def impl(request) -> Iterator[Impl]:
    made: list[Any] = []

    def keep(t: Any) -> Any:
        made.append(t)
        return t

    kind = request.param
    if kind == "EmbeddingTable":
        yield Impl(kind, EmbeddingTable, lambda m, a: EmbeddingTable.from_state(m, a))
    elif kind.startswith("ShardedTable"):
        n = int(kind.split("-")[1])
        yield Impl(kind, lambda c: ShardedTable(c, shards=n), lambda m, a: ShardedTable.from_state(m, a))
    else:
        from freshrec.ps.ray_ps import RayShardedTable

        servers = request.getfixturevalue("ray_servers")

        def make(c: TableConfig) -> Any:
            # a fresh name per table: tables of several tests share the servers
            return keep(RayShardedTable(replace(c, name=f"{c.name}-{next(_names)}"), servers=servers))

        def load(m: dict, a: dict) -> Any:
            m = dict(m, config=dict(m["config"], name=f"{m['config']['name']}-{next(_names)}"))
            return keep(RayShardedTable.from_state(m, a, servers=servers))

        yield Impl(kind, make, load)
    for t in made:
        t.close()


# ---- the checks (freshrec.checks: the same a user runs on their own table) ---------------------------


@pytest.mark.parametrize("check", TABLE_CHECKS, ids=lambda c: c.__name__.removeprefix("check_"))
def test_table_contract(impl: Impl, check: Callable[..., None]) -> None:
    check(impl.make, impl.load)


def test_table_matches_dict_oracle(impl: Impl) -> None:
    # fewer sequences over Ray, where every call is a round trip to the shard servers
    sequences = 6 if impl.name.startswith("Ray") else 24
    # several shards cap and evict per shard, not over the whole table as the oracle does
    one_shard = impl.name in ("EmbeddingTable", "ShardedTable-1")
    check_table_oracle(
        impl.make, load=lambda t: impl.load(*t.state()), sequences=sequences, seed=16, capacity=one_shard
    )


def test_check_table_catches_a_table_that_breaks_the_contract() -> None:
    class Leaky(EmbeddingTable):
        """Inserts the ids it is asked for (a lookup must never insert)."""

        def lookup(self, ids: Any, *args: Any, **kwargs: Any) -> np.ndarray:
            ids = np.asarray(ids, np.int64)
            self.assign(ids, np.zeros((ids.shape[0], self.dim), np.float32), now=0.0)
            return super().lookup(ids, *args, **kwargs)

    with pytest.raises(AssertionError, match="check_unknown_ids_read_zeros_and_are_not_inserted"):
        check_table(Leaky, oracle=False)
    assert "check_table_oracle" in check_table(EmbeddingTable)


# ---- Ray-only checks ----------------------------------------------------------------------------------


def test_snapshots_cross_between_ray_and_in_process_tables(ray_servers):
    from freshrec.ps.ray_ps import RayShardedTable

    c = cfg("cross", min_count=2, ttl_s=50.0)
    local = ShardedTable(c, shards=RAY_SHARDS)
    with RayShardedTable(c, servers=ray_servers) as remote:
        for ids, g, now in batches(4):
            local.apply_gradients(ids, g, now=now)
            remote.apply_gradients(ids, g, now=now)
        q = np.arange(-210, 210)
        same_rows(remote, local, q)
        # Ray -> in-process
        meta, arrays = remote.state()
        lm, la = local.state()
        assert meta == lm and sorted(arrays) == sorted(la)
        back = ShardedTable.from_state(meta, arrays)
        same_rows(back, local, q)
        back.check_invariants()
    # in-process -> Ray (the name is free again after the with block dropped it)
    with RayShardedTable.from_state(*local.state(), servers=ray_servers) as again:
        same_rows(again, local, q)
        assert len(again) == len(local)
        again.check_invariants()
        assert again.evict_expired(100.0) == local.evict_expired(100.0)
        assert len(again) == len(local)


def test_collisionless_embedding_trains_on_ray_table_unchanged(ray_servers):
    import torch
    import torch.nn.functional as F

    from freshrec.model.embedding import CollisionlessEmbedding, SparseOptimizer
    from freshrec.ps.ray_ps import RayShardedTable

    c = cfg("emb", dim=8, optimizer=Adagrad(lr=0.05))
    with RayShardedTable(c, servers=ray_servers) as table:
        local = ShardedTable(c, shards=RAY_SHARDS)
        layers = [CollisionlessEmbedding(c, table=local), CollisionlessEmbedding(c, table=table)]
        outs = []
        for layer in layers:
            opt = SparseOptimizer(layer)
            step_rng = np.random.default_rng(6)
            for step in range(5):
                ids = torch.from_numpy(step_rng.integers(0, 50, 64))
                y = torch.from_numpy(step_rng.integers(0, 2, 64).astype(np.float32))
                loss = F.binary_cross_entropy_with_logits(layer(ids).sum(1), y)
                loss.backward()
                opt.step(now=float(step))
            outs.append(layer.table.lookup(np.arange(50)))
        np.testing.assert_array_equal(outs[0], outs[1])
        assert len(table) == len(local) > 0


def test_two_trainer_workers_update_the_same_ray_table(ray_env):
    import ray

    from freshrec.ps.ray_ps import RayShardedTable

    # SGD from zero rows with dyadic gradients: every sum is exact, so the order of the
    # workers' updates cannot change a bit and the result must equal one table fed everything
    c = cfg("workers", optimizer=SGD(lr=0.5), initializer=Initializer(kind="zeros"))
    rng = np.random.default_rng(7)
    work = [
        (rng.integers(-500, 500, 2000), rng.integers(-8, 8, (2000, 4)).astype(np.float32) / 4, 1.0)
        for _ in range(8)
    ]
    oracle = EmbeddingTable(c)
    for ids, g, now in work:
        oracle.apply_gradients(ids, g, now=now)
    a, b = ray_env.trainers
    with RayShardedTable(c, servers=ray_env.servers) as table:
        done = ray.get([a.train.remote(table, work[0::2]), b.train.remote(table, work[1::2])])
        pids = {pid for pid, _ in done}
        assert len(pids) == 2 and os.getpid() not in pids  # two trainer processes
        assert sum(n for _, n in done) == 8 * 2000
        q = np.arange(-500, 500)
        same_rows(table, oracle, q)
        assert len(table) == len(oracle)


def test_named_servers_can_be_found_and_a_table_attached(ray_servers):
    import ray

    from freshrec.ps.ray_ps import RayShardedTable, find_servers

    found = find_servers("contract-ps")
    pids = [ray.get(h.info.remote())["pid"] for h in found]
    assert pids == [ray.get(h.info.remote())["pid"] for h in ray_servers]
    with RayShardedTable(cfg("attach"), servers=found) as owner:
        owner.apply_gradients(np.arange(10), np.ones((10, 4), np.float32), now=0.0)
        view = RayShardedTable.attach("attach", ray_servers)
        same_rows(view, owner, np.arange(12))
        view.close()  # a view drops nothing
        assert len(owner) == 10
        with pytest.raises(ConfigError, match="exists"):
            RayShardedTable(cfg("attach"), servers=ray_servers)
    with pytest.raises(ConfigError, match="no table"):
        RayShardedTable.attach("attach", ray_servers)


def test_grouped_calls_over_many_tables_equal_calls_per_table(ray_servers):
    from freshrec.ps.ray_ps import RayShardedTable, apply_gradients_many, lookup_many

    configs = [cfg(f"slot{j}", dim=3 + j, min_count=1 + j % 2) for j in range(3)]
    remote = [RayShardedTable(c, servers=ray_servers) for c in configs]
    local = [ShardedTable(c, shards=RAY_SHARDS) for c in configs]
    try:
        rng = np.random.default_rng(11)
        for step in range(4):
            ids = [rng.integers(-50, 50, 40 + 10 * j) for j in range(3)]
            uc = [np.unique(x, return_counts=True) for x in ids]
            us = [u for u, _ in uc]
            dims = [c.dim for c in configs]
            grads = [
                rng.normal(size=(u.shape[0], d)).astype(np.float32) for u, d in zip(us, dims, strict=True)
            ]
            counts = [c for _, c in uc]
            apply_gradients_many(remote, us, grads, now=float(step), counts=counts)
            apply_gradients_many(local, us, grads, now=float(step), counts=counts)  # one by one
        q = [np.arange(-60, 60)] * 3
        for a, b in zip(lookup_many(remote, q), lookup_many(local, q), strict=True):
            np.testing.assert_array_equal(a, b)
        for t, lt in zip(remote, local, strict=True):
            same_rows(t, lt, q[0])
            assert len(t) == len(lt) > 0
        with pytest.raises(ConfigError, match="grads must have shape"):
            apply_gradients_many(remote, us, [g[:, :1] for g in grads], now=9.0)
    finally:
        for t in remote:
            t.close()


def test_a_model_over_ray_tables_trains_like_one_over_local_tables(ray_servers):
    """DeepFM over RayShardedTables reads and updates all its slots in grouped calls (one per
    server); it must compute and train exactly as the same model over in-process tables."""
    import torch
    from torch import nn

    from freshrec.model import CollisionlessEmbedding, DeepFM, FeatureSpec, SparseOptimizer
    from freshrec.model.features import SlotSpec
    from freshrec.ps.ray_ps import RayShardedTable

    spec = FeatureSpec(
        slots=(SlotSpec(name="user"), SlotSpec(name="item"), SlotSpec(name="tags", multi_valued=True)),
        dim=4,
        optimizer=Adagrad(lr=0.1),
    )

    def model(make):
        layers = {
            n: CollisionlessEmbedding(spec.table_config(n, extra_columns=1), table=make(n))
            for n in spec.names
        }
        return DeepFM(spec, nn.ModuleDict(layers), hidden=(8,), seed=3)

    suffix = next(_names)
    remote = model(
        lambda n: RayShardedTable(
            replace(spec.table_config(n, extra_columns=1), name=f"{n}-{suffix}"), servers=ray_servers
        )
    )
    local = model(lambda n: ShardedTable(spec.table_config(n, extra_columns=1), shards=RAY_SHARDS))
    opts = [(torch.optim.SGD(m.dense_parameters(), lr=0.1), SparseOptimizer(m)) for m in (remote, local)]
    try:
        rng = np.random.default_rng(5)
        for step in range(3):
            b = 16
            sparse = {
                "user": torch.from_numpy(rng.integers(-20, 20, b)),
                "item": torch.from_numpy(rng.integers(0, 30, b)),
                "tags": (torch.from_numpy(rng.integers(0, 9, 2 * b)), torch.arange(0, 2 * b, 2)),
            }
            label = torch.from_numpy(rng.integers(0, 2, b).astype(np.float32))
            logits = []
            for m, (dense_opt, sparse_opt) in zip((remote, local), opts, strict=True):
                logit = m(sparse)
                m.loss(logit, label).backward()
                dense_opt.step()
                dense_opt.zero_grad()
                sparse_opt.step(now=float(step))
                logits.append(logit.detach().numpy())
            np.testing.assert_allclose(logits[0], logits[1], rtol=1e-6, atol=1e-6)
        for n in spec.names:
            q = np.arange(-25, 35)
            np.testing.assert_array_equal(
                remote.embeddings[n].table.lookup(q), local.embeddings[n].table.lookup(q)
            )
    finally:
        for n in spec.names:
            remote.embeddings[n].table.close()


def test_ray_shards_partition_like_in_process_shards(ray_servers):
    import ray

    from freshrec.ps.ray_ps import RayShardedTable

    with RayShardedTable(cfg("part"), servers=ray_servers) as table:
        ids = np.arange(-1000, 1000)
        table.apply_gradients(ids, np.ones((2000, 4), np.float32), now=0.0)
        for k, s in enumerate(ray_servers):
            held, _ = ray.get(s.export.remote("part"))
            assert sorted(held.tolist()) == sorted(ids[shard_of(ids, RAY_SHARDS) == k].tolist())


def test_ray_cluster_listens_on_loopback_only(ray_servers):
    import psutil

    loopback = {"127.0.0.1", "::1", "::ffff:127.0.0.1"}
    me = psutil.Process()
    listening: dict[str, list[str]] = {}
    for p in [me, *me.children(recursive=True)]:
        try:
            conns = p.net_connections(kind="inet")
            name = p.name()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        for c in conns:
            if c.status == psutil.CONN_LISTEN:
                listening.setdefault(name, []).append(f"{c.laddr.ip}:{c.laddr.port}")
    names = " ".join(listening)
    assert "gcs_server" in names and "raylet" in names, listening  # the check saw Ray's servers
    exposed = {n: a for n, a in listening.items() if any(x.rsplit(":", 1)[0] not in loopback for x in a)}
    assert not exposed, f"Ray processes listening beyond loopback: {exposed}"

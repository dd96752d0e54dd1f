"""TrainingPS snapshots, touched-key sync through a real on-disk parameter log, replica bootstrap."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from freshrec.checkpoint.format import read_snapshot
from freshrec.model import FeatureSpec, SlotSpec
from freshrec.ps import (
    Delta,
    ServingConfig,
    ServingReplica,
    SyncPublisher,
    SyncSubscriber,
    TrainingPS,
)
from freshrec.ps.delta import decode
from freshrec.ps.sync import split_delta
from freshrec.stream.local_log import LocalBackend
from freshrec.stream.log import MemoryBackend

DIM = 8
HIDDEN = (16, 8)


def make_spec(dense_dim: int = 2) -> FeatureSpec:
    return FeatureSpec(
        slots=(
            SlotSpec(name="user_id"),
            SlotSpec(name="item_id"),
            SlotSpec(name="tags", multi_valued=True),
        ),
        dense_dim=dense_dim,
        dim=DIM,
    )


def batch(rng: np.random.Generator, n: int = 64, users: int = 200, items: int = 80):
    sparse = {
        "user_id": torch.from_numpy(rng.integers(0, users, n)),
        "item_id": torch.from_numpy(rng.integers(0, items, n)),
        "tags": (torch.from_numpy(rng.integers(0, 30, 2 * n)), torch.arange(n) * 2),
    }
    return (
        sparse,
        torch.randn(n, 2, generator=torch.Generator().manual_seed(int(rng.integers(1 << 30)))),
        (torch.from_numpy(rng.integers(0, 2, n)).float()),
    )


def train(ps: TrainingPS, rng: np.random.Generator, steps: int, t0: float) -> None:
    for i in range(steps):
        sp, d, y = batch(rng)
        ps.train_step(sp, d, y, now=t0 + i)


def all_ids(ps: TrainingPS, name: str) -> np.ndarray:
    return np.sort(ps.tables[name].export()[0])


def assert_same_tables(a: ServingReplica, b, names, ids_by_table) -> None:
    for name in names:
        ids = ids_by_table[name]
        got_a = a.lookup(name, ids)
        got_b = b.lookup(name, ids) if isinstance(b, ServingReplica) else b.tables[name].lookup(ids)
        np.testing.assert_array_equal(got_a, got_b, err_msg=f"table {name}")


def test_training_ps_snapshot_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    ps = TrainingPS(make_spec(), shards=3, hidden=HIDDEN)
    train(ps, rng, 6, 1000.0)
    path = ps.save(tmp_path / "snap", positions={"examples": [5, 7]})
    ps2, positions = TrainingPS.load(path)
    assert positions == {"examples": [5, 7], "trained": {}}
    assert ps2.step == ps.step == 6 and ps2.data_time == ps.data_time == 1005.0
    for name in ps.spec.names:
        ids = all_ids(ps, name)
        np.testing.assert_array_equal(all_ids(ps2, name), ids)
        np.testing.assert_array_equal(ps2.tables[name].lookup(ids), ps.tables[name].lookup(ids))
    for k, v in ps.dense_state().items():
        np.testing.assert_array_equal(ps2.dense_state()[k], v)
    # optimizer state restored too: one more identical step gives identical weights and loss
    sp, d, y = batch(np.random.default_rng(9))
    l1 = ps.train_step(sp, d, y, now=2000.0)
    l2 = ps2.train_step(sp, d, y, now=2000.0)
    assert l1 == l2
    for k, v in ps.dense_state().items():
        np.testing.assert_array_equal(ps2.dense_state()[k], v)
    ids = all_ids(ps, "user_id")
    np.testing.assert_array_equal(ps2.tables["user_id"].lookup(ids), ps.tables["user_id"].lookup(ids))
    meta, arrays = read_snapshot(path, kind="training")
    assert any(k.startswith("table.user_id.shard2.") for k in arrays)
    assert any(k.startswith("opt.") for k in arrays)


def test_publish_sends_touched_rows_only_and_bytes_match_the_formula():
    rng = np.random.default_rng(1)
    ps = TrainingPS(make_spec(), shards=2, hidden=HIDDEN)
    log = MemoryBackend().log("params")
    pub = SyncPublisher(ps, log, dense_interval_s=600.0)
    train(ps, rng, 3, 100.0)
    first = pub.publish_once(0.0)
    assert first.version == 1 and first.dense
    assert first.rows == {n: len(ps.tables[n]) for n in ps.spec.names}
    # nothing touched -> nothing but (no) dense
    empty = pub.publish_once(1.0)
    assert empty.frames == 0 and empty.touched == 0 and not empty.dense
    # touch a known set of ids
    width = ps.tables["user_id"].dim  # dim + 1 (first-order weight)
    ids = np.array([3, 5, 7, 11, 13], np.int64)
    ps.tables["user_id"].assign(ids, np.ones((5, width), np.float32), now=200.0)
    rep = pub.publish_once(2.0)
    assert rep.rows == {"user_id": 5} and rep.deleted == {"user_id": 0} and rep.frames == 1
    assert rep.payload_bytes == 5 * (8 + 4 * width)
    framing = rep.bytes - rep.payload_bytes
    print(
        f"\n5 touched ids, dim {width}: {rep.bytes} bytes = payload {rep.payload_bytes} + framing {framing}"
    )
    assert 0 < framing < 250
    recs = log.consumer("check").poll(100)
    last = decode(recs[-1].value)
    assert isinstance(last, Delta) and last.version == 3
    np.testing.assert_array_equal(np.sort(last.ids), ids)
    # dense weights follow when their interval has passed
    assert pub.publish_once(599.0).dense is False
    assert pub.publish_once(601.0).dense is True
    # evictions travel as deletes
    ps.tables["user_id"].remove(ids[:2])
    rep = pub.publish_once(602.0)
    assert rep.deleted == {"user_id": 2} and rep.rows == {"user_id": 0}


def test_bytes_per_sync_scale_with_touched_ids():
    ps = TrainingPS(make_spec(), shards=4, hidden=HIDDEN)
    pub = SyncPublisher(ps, MemoryBackend().log("params"))
    pub.publish_once(0.0)
    width = ps.tables["item_id"].dim
    lines = []
    for n in (100, 10_000, 100_000):
        ids = np.arange(n, dtype=np.int64) * 7919
        ps.tables["item_id"].assign(ids, np.zeros((n, width), np.float32), now=1.0)
        rep = pub.publish_once(1.0)
        assert rep.payload_bytes == n * (8 + 4 * width)
        overhead = rep.bytes - rep.payload_bytes
        assert overhead <= 250 * rep.frames
        lines.append(f"{n:>7} ids  {rep.bytes:>10} bytes  {rep.bytes / n:7.2f} B/id  {rep.frames} frame(s)")
    body = "\n".join(lines)
    print(f"\nbytes per sync (dim {width}): ids*(8+4*dim) = {8 + 4 * width} B/id\n{body}")


def test_big_deltas_are_split_into_bounded_frames():
    width = 9
    n = 5000
    d = Delta(
        table="t",
        version=4,
        ids=np.arange(n, dtype=np.int64),
        embeddings=np.random.default_rng(0).normal(size=(n, width)).astype(np.float32),
        deleted=np.arange(n, n + 3000, dtype=np.int64),
        ts=1.0,
    )
    parts = split_delta(d, 20_000)
    assert len(parts) > 5
    from freshrec.ps.delta import encode

    assert all(len(encode(p)) <= 20_000 for p in parts)
    np.testing.assert_array_equal(np.concatenate([p.ids for p in parts]), d.ids)
    np.testing.assert_array_equal(np.concatenate([p.embeddings for p in parts]), d.embeddings)
    np.testing.assert_array_equal(np.concatenate([p.deleted for p in parts]), d.deleted)
    assert {p.version for p in parts} == {4}


def test_replica_from_snapshot_equals_replica_following_the_log(tmp_path):
    """Snapshot + replay from its offsets == following from offset 0 == the PS after a final sync."""
    rng = np.random.default_rng(2)
    backend = LocalBackend(tmp_path / "logs")
    plog = backend.log("params")
    ps = TrainingPS(make_spec(), shards=3, hidden=HIDDEN)
    # tiny frames: every sync spans several frames
    pub = SyncPublisher(ps, plog, dense_interval_s=3.0, max_frame_bytes=8192)
    follower = ServingReplica(ps.spec, hidden=HIDDEN)
    sub = SyncSubscriber(follower, plog, group="follower")
    now = 0.0
    for _ in range(4):
        train(ps, rng, 3, 1000.0 + now)
        pub.publish_once(now)
        now += 1.0
    train(ps, rng, 2, 2000.0)  # touched but not yet published when the snapshot is taken
    snap = pub.snapshot(tmp_path / "snap", positions={"examples": [123]})
    for k in range(4):
        train(ps, rng, 3, 3000.0 + 10 * k)
        if k == 1:
            for name in ("user_id", "tags"):
                gone = all_ids(ps, name)[::5]
                assert ps.tables[name].remove(gone) == gone.shape[0]
        pub.publish_once(now)
        now += 1.0
    pub.publish_once(now, dense=True)  # the final sync
    sub.catch_up()

    boot = ServingReplica.from_snapshot(snap)
    assert boot.positions["examples"] == [123]
    assert boot.positions["params"] == read_snapshot(snap)[0]["positions"]["params"]
    sub2 = SyncSubscriber(boot, plog, group="booted", start=boot.positions["params"])
    assert sub2.catch_up() > 0

    ids = {n: np.union1d(all_ids(ps, n), np.arange(-5, 300)) for n in ps.spec.names}
    assert_same_tables(boot, follower, ps.spec.names, ids)
    assert_same_tables(boot, ps, ps.spec.names, ids)
    for n in ps.spec.names:
        assert len(boot.tables[n]) == len(follower.tables[n]) == len(ps.tables[n])
    assert boot.version == follower.version == pub.version
    for k, v in ps.dense_state().items():
        np.testing.assert_array_equal(boot.model.state_dict()[k].numpy(), v)
        np.testing.assert_array_equal(follower.model.state_dict()[k].numpy(), v)
    sp, d, _ = batch(np.random.default_rng(5), 32)
    np.testing.assert_array_equal(boot._probabilities(sp, d), follower._probabilities(sp, d))
    backend.close()


def test_subscriber_thread_commits_and_a_restart_resumes(tmp_path):
    backend = LocalBackend(tmp_path / "logs")
    plog = backend.log("params")
    ps = TrainingPS(make_spec(0), shards=2, hidden=HIDDEN)
    pub = SyncPublisher(ps, plog)
    rep = ServingReplica(ps.spec, hidden=HIDDEN)
    sub = SyncSubscriber(rep, plog, group="serving").start()
    width = ps.tables["item_id"].dim
    ps.tables["item_id"].assign(np.arange(10), np.full((10, width), 0.5, np.float32), now=0.0)
    v = pub.publish_once(0.0).version
    deadline = threading.Event()
    for _ in range(200):
        if rep.version >= v:
            break
        deadline.wait(0.02)
    assert rep.version == v and rep.last_apply_wall is not None
    sub.stop()
    committed = sub.consumer.committed()
    assert committed == {0: plog.end_offsets()[0]}
    ps.tables["item_id"].assign(np.arange(5), np.full((5, width), 2.0, np.float32), now=1.0)
    pub.publish_once(1.0)
    # a new subscriber of the same group starts at the committed position: reads only the new frame
    sub2 = SyncSubscriber(rep, plog, group="serving")
    assert sub2.catch_up() == 1
    np.testing.assert_array_equal(rep.lookup("item_id", [0, 9])[:, 0], [2.0, 0.5])
    backend.close()


def test_publisher_run_loop_with_injected_clock():
    ps = TrainingPS(make_spec(0), shards=1, hidden=HIDDEN)
    log = MemoryBackend().log("params")
    t = [0.0]
    stop = threading.Event()
    width = ps.tables["user_id"].dim

    def sleep(s: float) -> None:  # fake time: each wait advances the clock and touches one id
        t[0] += s
        k = int(t[0])
        ps.tables["user_id"].assign(np.array([k]), np.full((1, width), k, np.float32), now=float(k))
        if t[0] >= 5.0:
            stop.set()

    pub = SyncPublisher(ps, log, interval_s=1.0, dense_interval_s=2.5, clock=lambda: t[0], sleep=sleep)
    pub.run(stop)
    assert [r.version for r in pub.reports] == [1, 2, 3, 4, 5, 6]
    assert [r.dense for r in pub.reports] == [True, False, False, True, False, False]
    assert [r.touched for r in pub.reports] == [0, 1, 1, 1, 1, 1]


def test_fp16_sync_halves_the_payload_and_replica_sees_rounded_values():
    ps = TrainingPS(make_spec(0), shards=2, hidden=HIDDEN)
    log = MemoryBackend().log("params")
    pub = SyncPublisher(ps, log, fp16=True)
    width = ps.tables["user_id"].dim
    vals = np.random.default_rng(3).normal(size=(50, width)).astype(np.float32)
    ps.tables["user_id"].assign(np.arange(50), vals, now=0.0)
    rep = pub.publish_once(0.0)
    assert rep.payload_bytes == 50 * (8 + 2 * width)
    r = ServingReplica(ps.spec, hidden=HIDDEN, config=ServingConfig(fp16=True))
    SyncSubscriber(r, log).catch_up()
    got = r.lookup("user_id", np.arange(50))
    np.testing.assert_array_equal(got, vals.astype(np.float16).astype(np.float32))
    assert np.abs(got - vals).max() < 1e-2


@pytest.mark.parametrize("shards", [1, 4])
def test_training_through_the_model_updates_the_ps_tables(shards):
    ps = TrainingPS(make_spec(), shards=shards, hidden=HIDDEN)
    sp, d, y = batch(np.random.default_rng(4))
    ps.train_step(sp, d, y, now=10.0)
    uid = np.unique(sp["user_id"].numpy())
    assert len(ps.tables["user_id"]) == uid.shape[0]
    assert ps.tables["user_id"].contains(uid).all()
    touched = ps.tables["user_id"].take_touched()
    np.testing.assert_array_equal(np.sort(touched.ids), uid)


def test_from_model_wraps_a_batch_trained_deepfm():
    from freshrec.model import DeepFM

    spec = make_spec()
    model = DeepFM.build(spec, hidden=HIDDEN, seed=3)
    sp, d, _ = batch(np.random.default_rng(6))
    model.embeddings["user_id"].table.assign(np.arange(10), np.ones((10, DIM + 1), np.float32), now=0.0)
    ps = TrainingPS.from_model(model)
    assert ps.model.hidden == HIDDEN and ps.tables["user_id"] is model.embeddings["user_id"].table
    model.eval()
    ps.model.eval()
    with torch.no_grad():
        np.testing.assert_array_equal(ps.model(sp, d).numpy(), model(sp, d).numpy())
    rep = SyncPublisher(ps, MemoryBackend().log("params")).publish_once(0.0)
    assert rep.rows == {"user_id": 10} and rep.dense


def test_threads_end_to_end_at_a_sub_second_interval(tmp_path):
    """Publisher and subscriber threads on real clocks, publishing every 0.2 s: once both run,
    each touched row reaches the replica in under a second."""
    import time

    backend = LocalBackend(tmp_path / "logs")
    plog = backend.log("params")
    ps = TrainingPS(make_spec(0), shards=2, hidden=HIDDEN)
    rep = ServingReplica(ps.spec, hidden=HIDDEN)
    sub = SyncSubscriber(rep, plog, poll_timeout_s=0.01).start()
    pub = SyncPublisher(ps, plog, interval_s=0.2, dense_interval_s=600.0)
    th, stop = pub.start()
    width = ps.tables["item_id"].dim
    latencies = []
    try:
        for k in range(1, 5):  # the first round also waits for both threads to start: not timed
            t0 = time.monotonic()
            ps.tables["item_id"].assign(
                np.array([42]), np.full((1, width), float(k), np.float32), now=float(k)
            )
            deadline = t0 + 10.0
            while rep.lookup("item_id", [42])[0, 0] != k and time.monotonic() < deadline:
                time.sleep(0.005)
            if k > 1:
                latencies.append(time.monotonic() - t0)
            assert rep.lookup("item_id", [42])[0, 0] == k
    finally:
        stop.set()
        th.join(5.0)
        sub.stop()
        backend.close()
    assert not th.is_alive() and pub.version >= 3
    print(f"touched row -> replica: {', '.join(f'{x:.3f}' for x in latencies)} s")
    assert max(latencies) < 1.0, latencies  # interval 0.2 s + the subscriber's 0.01 s poll


def test_snapshot_state_through_a_snapshot_store(tmp_path):
    from freshrec.checkpoint.store import SnapshotStore
    from freshrec.ps.training import SNAPSHOT_KIND

    log = MemoryBackend().log("params")
    ps = TrainingPS(make_spec(0), shards=2, hidden=HIDDEN)
    pub = SyncPublisher(ps, log)
    width = ps.tables["item_id"].dim
    ps.tables["item_id"].assign(np.arange(6), np.full((6, width), 1.5, np.float32), now=0.0)
    pub.publish_once(0.0)
    meta, arrays = pub.snapshot_state({"examples": [9]})
    want = {"examples": [9], "params": log.end_offsets(), "params_version": 1, "trained": {}}
    assert meta["positions"] == want
    store = SnapshotStore(tmp_path / "snaps")
    store.save(ps.step, kind=SNAPSHOT_KIND, meta=meta, arrays=arrays)
    rep = ServingReplica.from_snapshot(store.latest_path())
    np.testing.assert_array_equal(
        rep.lookup("item_id", np.arange(6)), ps.tables["item_id"].lookup(np.arange(6))
    )
    assert rep.version == 1


def test_subscriber_skips_bad_frames_and_goes_on():
    from freshrec.ps.delta import encode

    log = MemoryBackend().log("params")
    rep = ServingReplica(make_spec(0), hidden=HIDDEN)
    width = rep.tables["item_id"].dim
    log.append(b"garbage")
    log.append(
        encode(Delta(table="item_id", version=1, ids=np.array([1]), embeddings=np.ones((1, 3), np.float32)))
    )
    log.append(
        encode(
            Delta(table="item_id", version=2, ids=np.array([2]), embeddings=np.ones((1, width), np.float32))
        )
    )
    sub = SyncSubscriber(rep, log)
    assert sub.catch_up() == 3
    assert sub.bad_frames == 2 and sub.frames_applied == 1 and "offset 1" in sub.last_error
    assert rep.version == 2 and rep.lookup("item_id", [2])[0, 0] == 1.0

"""Retention keeps the guarantee: the examples and parameter logs shrink to what the oldest kept
snapshot needs, and recovery from the snapshots still ends exactly where an uninterrupted run does."""

from __future__ import annotations

import numpy as np
import pytest

from freshrec.checkpoint.periodic import SnapshotPolicy
from freshrec.data.dataset import Dataset
from freshrec.model import FeatureSpec, SlotSpec
from freshrec.pipeline import SNAPSHOT_GROUP, Pipeline, PipelineConfig
from freshrec.stream.local_log import LocalBackend, LocalLogConfig
from freshrec.table import Adagrad
from freshrec.train.examples import dataset_to_examples, write_examples
from freshrec.train.online import OnlineConfig

N, BATCH = 6000, 200
SPEC = FeatureSpec(
    slots=(SlotSpec(name="user_id"), SlotSpec(name="item_id")), dim=4, optimizer=Adagrad(lr=0.05)
)


def dataset() -> Dataset:
    rng = np.random.default_rng(7)
    return Dataset.build(
        "retention",
        sparse={"user_id": rng.integers(0, 300, N), "item_id": rng.integers(0, 80, N)},
        label=(rng.random(N) < 0.3).astype(np.float32),
        ts=np.sort(rng.uniform(1e9, 1e9 + 3600, N)),
    )


def pipeline(root, snapshots) -> Pipeline:
    backend = LocalBackend(root, config=LocalLogConfig(segment_bytes=16 << 10))
    return Pipeline(
        PipelineConfig(
            log=str(root),
            online=OnlineConfig(batch_size=BATCH),
            features_spec=SPEC,
            snapshots=snapshots,
            policy=SnapshotPolicy(every_batches=5, full_every=2, keep=1),
        ),
        backend=backend,
    )


def state(tr) -> dict[str, np.ndarray]:
    out = {}
    for slot, t in tr.tables.items():
        _, arr = t.state()
        order = np.argsort(arr["ids"])
        out |= {f"{slot}.{k}": arr[k][order] for k in ("ids", "rows", "count")}
    _, arr = tr.ps.state()
    return out | {k: v for k, v in arr.items() if k.startswith(("dense.", "opt."))}


def test_retention_deletes_only_before_the_snapshot_floor_and_recovery_stays_exact(tmp_path):
    examples = dataset_to_examples(dataset())
    # the uninterrupted run
    ref_pipe = pipeline(tmp_path / "ref-logs", None)
    write_examples(ref_pipe.log("examples"), examples)
    ref = ref_pipe.trainer()
    ref.run(ref_pipe.examples_consumer(ref)[1], log=ref_pipe.log("examples"))
    ref_pipe.close()

    # the same with snapshots, a publisher and a tight retention: stop after 2/3 of the examples
    pipe = pipeline(tmp_path / "logs", tmp_path / "snaps")
    elog = pipe.log("examples")
    write_examples(elog, examples)
    tr = pipe.trainer()
    pub = pipe.publisher(tr, every_batch=True, dense_every=3)
    assert pipe.retain(max_bytes=32 << 10) == ["examples", "params"]
    log, consumer = pipe.examples_consumer(tr)
    tr.run(consumer, max_batches=(2 * N // 3) // BATCH, log=log)
    floor = pipe.snapshotter.replay_floor()
    held = elog.consumer(SNAPSHOT_GROUP).committed()
    assert held == {0: floor["trained"][0]} and 0 < held[0] <= tr.positions[0]
    elog.apply_retention()
    segs = elog.segments()
    first = min(s.base for s in segs)
    assert first > 0, "retention deleted nothing"  # the log shrank...
    assert first <= held[0], (
        f"retention deleted records at {first} > floor {held[0]}"
    )  # ...not past the floor
    plog = pipe.log("params")
    plog.apply_retention()
    assert min(s.base for s in plog.segments()) <= floor["params"][0]
    assert pub.version > 0
    pipe.close()

    # a new process: recovery from the snapshots, replay of what retention kept, to the end
    again = pipeline(tmp_path / "logs", tmp_path / "snaps")
    tr2 = again.trainer()
    assert again.recovered is not None and tr2.positions[0] >= first
    log2, c2 = again.examples_consumer(tr2)
    tr2.run(c2, log=log2)
    assert tr2.positions == {0: N}
    a, b = state(tr2), state(ref)
    assert sorted(a) == sorted(b)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    again.close()


def test_recovery_fails_loudly_when_retention_removed_what_the_snapshot_needs(tmp_path):
    """Retention not held by the snapshots' floor deletes records a recovery needs: the restarted
    trainer refuses to start (OffsetOutOfRange naming the positions) rather than skipping them."""
    import pytest

    from freshrec.errors import OffsetOutOfRange

    pipe = pipeline(tmp_path / "logs", tmp_path / "snaps")
    elog = pipe.log("examples")
    write_examples(elog, dataset_to_examples(dataset()))
    tr = pipe.trainer()
    pipe.snapshots_hook(tr)
    log, consumer = pipe.examples_consumer(tr)
    tr.run(consumer, max_batches=6, log=log)  # snapshots at batch 5: positions 1,000
    elog.retain(groups=["someone-else"], max_bytes=16 << 10)  # not held by "snapshots"
    c = elog.consumer("someone-else")
    c.commit({0: N})
    c.close()
    elog.apply_retention()
    assert min(s.base for s in elog.segments()) > 5 * BATCH  # the records after the snapshot are gone
    pipe.close()
    again = pipeline(tmp_path / "logs", tmp_path / "snaps")
    tr2 = again.trainer()
    assert tr2.positions == {0: 5 * BATCH}
    with pytest.raises(OffsetOutOfRange, match="retention removed records the recovery needs"):
        again.examples_consumer(tr2)
    again.close()


@pytest.mark.kafka
def test_kafka_recovery_fails_loudly_when_broker_retention_removed_what_it_needs(tmp_path, kafka_bootstrap):
    """On Kafka the broker's retention decides; a recovery whose offsets are gone is refused by name."""
    import time

    from confluent_kafka import TopicPartition
    from confluent_kafka.admin import AdminClient

    from freshrec.errors import OffsetOutOfRange

    prefix = f"retain-{int(time.time() * 1000)}."
    url = f"kafka://{kafka_bootstrap}?prefix={prefix}"

    def kpipe() -> Pipeline:
        return Pipeline(
            PipelineConfig(
                log=url,
                online=OnlineConfig(batch_size=BATCH, poll_timeout_s=0.5),
                features_spec=SPEC,
                snapshots=tmp_path / "snaps",
                policy=SnapshotPolicy(every_batches=5, full_every=2, keep=1),
            )
        )

    pipe = kpipe()
    write_examples(pipe.log("examples"), dataset_to_examples(dataset())[:3000])
    tr = pipe.trainer()
    pipe.snapshots_hook(tr)
    log, consumer = pipe.examples_consumer(tr)
    tr.run(consumer, max_batches=6, log=log)
    consumer.close()
    pipe.close()
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    futures = admin.delete_records([TopicPartition(f"{prefix}examples", 0, 2000)])
    for f in futures.values():
        f.result(30)  # the broker's retention moved the low watermark past the snapshot's 1,000
    again = kpipe()
    tr2 = again.trainer()
    assert tr2.positions == {0: 5 * BATCH}
    with pytest.raises(OffsetOutOfRange, match="retention removed records the recovery needs"):
        again.examples_consumer(tr2)
    again.close()

"""Online training: examples -> batches, the trainer's step = batch training's step, hand-off, hooks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from freshrec.checkpoint.torch_state import optimizer_from_arrays, optimizer_to_arrays
from freshrec.data.dataset import Dataset, Ragged
from freshrec.model import FeatureSpec, SlotSpec
from freshrec.stream.events import Example, encode_example
from freshrec.stream.log import MemoryLog, Record
from freshrec.table import Adagrad
from freshrec.train.batch import TrainConfig, save_checkpoint, train_model
from freshrec.train.examples import (
    MISSING_ID,
    ExampleSchema,
    dataset_to_examples,
    decode_records,
    examples_to_dataset,
    write_examples,
)
from freshrec.train.online import OnlineConfig, OnlineTrainer


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def synthetic(n: int = 2000, seed: int = 0, rate: float = 0.5) -> Dataset:
    """Learnable clicks: label depends on (user + item) parity; one dense column; time-ordered."""
    rng = np.random.default_rng(seed)
    u = rng.integers(0, 150, n)
    it = rng.integers(0, 60, n)
    x = rng.normal(size=(n, 1)).astype(np.float32)
    y = (((u + it) % 2 == 0) ^ (rng.random(n) < 0.1)).astype(np.float32)
    return Dataset.build(
        "syn",
        sparse={"user_id": u, "item_id": it},
        label=y,
        ts=np.sort(rng.uniform(1e9, 1e9 + 7200, n)),
        sample_rate=np.full(n, rate, np.float32),
        dense=x,
        dense_names=("x",),
    )


def spec(dim: int = 8) -> FeatureSpec:
    return FeatureSpec(
        slots=(SlotSpec(name="user_id"), SlotSpec(name="item_id")),
        dense_dim=1,
        dim=dim,
        optimizer=Adagrad(lr=0.05),
    )


def table_state(trainer: OnlineTrainer) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    out = {}
    for slot, t in trainer.tables.items():
        meta, arr = t.state()
        order = np.argsort(arr["ids"])
        out[slot] = (arr["ids"][order], arr["rows"][order])
    return out


# -- examples ------------------------------------------------------------------------------------


def test_examples_round_trip_through_a_log_gives_the_same_columns():
    ds = synthetic(300)
    log = MemoryLog("examples")
    assert write_examples(log, dataset_to_examples(ds)) == 300
    recs = log.consumer("g").poll(1000)
    examples, bad = decode_records(recs)
    assert not bad
    back = examples_to_dataset(examples, ExampleSchema.for_dataset(ds))
    for s in ds.slots:
        np.testing.assert_array_equal(back.sparse[s], ds.sparse[s])
    np.testing.assert_array_equal(back.dense, ds.dense)
    np.testing.assert_array_equal(back.label, ds.label)
    np.testing.assert_array_equal(back.ts, ds.ts)
    np.testing.assert_array_equal(back.sample_rate, ds.sample_rate)


def test_schema_conventions_missing_ids_bags_labels_and_bad_records():
    e = Example(
        request_id="r:0",
        user_id=11,
        item_id=22,
        sparse={"tags": [1, 2, 3], "city": []},
        dense={"b": 2.5},
        labels={"click": 0.0, "watch": 31.0},
        sample_rate=0.25,
        ts=100.0,
    )
    schema = ExampleSchema(
        slots=("user_id", "item_id", "city", "os"), multi_slots=("tags",), dense=("a", "b"), label="watch"
    )
    ds = examples_to_dataset([e, e], schema)
    assert ds.sparse["user_id"].tolist() == [11, 11] and ds.sparse["item_id"].tolist() == [22, 22]
    assert ds.sparse["city"].tolist() == [MISSING_ID] * 2 and ds.sparse["os"].tolist() == [MISSING_ID] * 2
    assert isinstance(ds.multi["tags"], Ragged)
    assert ds.multi["tags"].values.tolist() == [1, 2, 3, 1, 2, 3]
    assert ds.multi["tags"].offsets.tolist() == [0, 3, 6]
    assert ds.dense.tolist() == [[0.0, 2.5], [0.0, 2.5]]
    assert ds.label.tolist() == [1.0, 1.0]  # watch 31 s > 0
    assert np.allclose(ds.sample_rate, 0.25)
    good, bad = decode_records([Record(0, 0, None, encode_example(e)), Record(0, 1, None, b"{not json")])
    assert len(good) == 1 and len(bad) == 1 and bad[0][0].offset == 1 and "JSON" in bad[0][1]


# -- the trainer's step is batch training's step -------------------------------------------------


def test_online_over_the_log_equals_batch_training_one_pass_in_order():
    ds = synthetic(1500)
    cfg = TrainConfig(
        epochs=1, batch_size=100, dim=8, hidden=(16,), shuffle=False, dense_lr=1e-3, sparse_lr=0.05
    )
    batch = train_model(ds, None, cfg)
    log = MemoryLog("examples")
    write_examples(log, dataset_to_examples(ds))
    from freshrec.train.batch import build_model, spec_for

    model = build_model(spec_for(ds, cfg), cfg)
    online = OnlineTrainer(model, OnlineConfig(batch_size=100), schema=ExampleSchema.for_dataset(ds))
    m = online.run(log.consumer("t"))
    assert m.batches == 15 and m.examples == 1500 and online.positions == {0: 1500}
    for name, p in batch.model.state_dict().items():
        torch.testing.assert_close(online.model.state_dict()[name], p, rtol=0, atol=0)
    for slot, emb in batch.model.collisionless.items():
        ids, rows = emb.table.export()
        np.testing.assert_array_equal(online.tables[slot].lookup(ids), rows)
    assert log.consumer("t").committed() == {0: 1500}  # committed for monitoring


def test_sampling_correction_makes_the_model_logit_the_true_rate():
    rng = np.random.default_rng(1)
    n_full = 40_000
    y_full = (rng.random(n_full) < 0.1).astype(np.float32)
    keep = (y_full > 0) | (rng.random(n_full) < 0.25)  # negatives kept at rate 0.25
    n = int(keep.sum())
    ds = Dataset.build(
        "rate",
        sparse={"user_id": np.zeros(n, np.int64), "item_id": np.zeros(n, np.int64)},
        label=y_full[keep],
        ts=np.arange(n, dtype=np.float64),
        sample_rate=np.full(n, 0.25, np.float32),
        dense=np.zeros((n, 1), np.float32),
    )
    means = {}
    for corr in (True, False):
        tr = OnlineTrainer.from_spec(
            spec(4), OnlineConfig(batch_size=256, dense_lr=0.02, sampling_correction=corr), hidden=(4,)
        )
        tr.train_dataset(ds)
        tr.train_dataset(ds)
        with torch.no_grad():
            z = tr.model(
                {"user_id": torch.zeros(1, dtype=torch.int64), "item_id": torch.zeros(1, dtype=torch.int64)},
                torch.zeros(1, 1),
            )
        means[corr] = float(torch.sigmoid(z)[0])
    assert abs(means[True] - 0.1) < 0.03, means  # the true click rate
    assert abs(means[False] - 0.1 / (0.1 + 0.9 * 0.25)) < 0.05, means  # the sampled stream's rate


# -- hand-off, progressive validation, hooks, expiry ---------------------------------------------


def test_hand_off_from_a_batch_checkpoint_and_progressive_validation(tmp_path):
    past, future = synthetic(2000, seed=0), synthetic(2000, seed=0)
    future = Dataset.build(
        "future",
        sparse=dict(future.sparse),
        label=future.label,
        ts=future.ts + 7200,
        sample_rate=future.sample_rate,
        dense=future.dense,
        dense_names=("x",),
    )
    cfg = TrainConfig(epochs=2, batch_size=100, dim=8, hidden=(16,), shuffle=False)
    res = train_model(past, None, cfg)
    save_checkpoint(res.model, tmp_path / "ckpt")
    tr = OnlineTrainer.from_checkpoint(tmp_path / "ckpt", OnlineConfig(batch_size=200), dense=("x",))
    for slot, emb in res.model.collisionless.items():
        ids, rows = emb.table.export()
        np.testing.assert_array_equal(tr.tables[slot].lookup(ids), rows)
    # progressive validation: the first batch is scored by the checkpoint's model, before any step
    first = future.take(slice(0, 200))
    from freshrec.train.batch import iter_batches

    b = next(iter_batches(first, 200))
    res.model.eval()
    with torch.no_grad():
        want = (res.model(b.sparse, b.dense) + b.offset).numpy()
    seen = []
    window = tr.ps.windows["click"]
    tr.add_hook(lambda t, info: seen.append((info.step, info.examples, window.scores[:200].copy())))
    log = MemoryLog("examples")
    write_examples(log, dataset_to_examples(future))
    m = tr.run(log.consumer("t"))
    np.testing.assert_allclose(seen[0][2], want, rtol=1e-5, atol=1e-6)
    assert [s[0] for s in seen] == list(range(1, 11)) and all(s[1] == 200 for s in seen)
    assert m.auc > 0.8, m  # the learnable parity pattern, scored before each step
    assert m.table_rows == {"user_id": 150, "item_id": 60}


def test_expiry_every_n_batches_uses_data_time():
    ttl_spec = FeatureSpec(
        slots=(SlotSpec(name="user_id", table={"ttl_s": 100}), SlotSpec(name="item_id")),
        dense_dim=1,
        dim=4,
    )
    n = 400
    ds = Dataset.build(
        "ttl",
        sparse={"user_id": np.arange(n, dtype=np.int64), "item_id": np.zeros(n, np.int64)},
        label=(np.arange(n) % 2).astype(np.float32),
        ts=np.arange(n, dtype=np.float64) * 10.0,  # one new user every 10 s
        dense=np.zeros((n, 1), np.float32),
    )
    tr = OnlineTrainer.from_spec(ttl_spec, OnlineConfig(batch_size=50, evict_every=2), hidden=(4,))
    tr.train_dataset(ds)
    # a batch stamps its rows with now = its max ts; after the last eviction (step 8, data time
    # 3990 s) only the users of batch 8 are within 100 s; batch 7's (last seen 3490 s) are gone
    assert tr.data_time == 3990.0
    users = tr.tables["user_id"]
    assert len(users) == 50
    assert users.contains(np.arange(350, 400)).all() and not users.contains(np.arange(0, 350)).any()
    assert len(tr.tables["item_id"]) == 1


def test_optimizer_state_round_trip_is_exact():
    p = [torch.nn.Parameter(torch.randn(3, 2)), torch.nn.Parameter(torch.randn(4))]
    opt = torch.optim.Adam(p, lr=0.01, betas=(0.8, 0.9))
    for _ in range(3):
        (p[0].sum() ** 2 + (p[1] ** 3).sum()).backward()
        opt.step()
        opt.zero_grad()
    meta, arrays = optimizer_to_arrays(opt, "opt")
    import json

    meta = json.loads(json.dumps(meta))  # survives JSON
    q = [torch.nn.Parameter(t.detach().clone()) for t in p]
    opt2 = torch.optim.Adam(q, lr=0.5)
    optimizer_from_arrays(opt2, meta, arrays, "opt")
    for a, b in zip(opt.state.values(), opt2.state.values(), strict=True):
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)
    assert opt2.param_groups[0]["lr"] == 0.01 and tuple(opt2.param_groups[0]["betas"]) == (0.8, 0.9)


def test_trainer_feeds_the_sync_path_to_a_serving_replica(tmp_path):
    from freshrec.ps.serving import ServingReplica
    from freshrec.ps.sync import SyncPublisher, SyncSubscriber

    ds = synthetic(600)
    tr = OnlineTrainer.from_spec(spec(), OnlineConfig(batch_size=100), hidden=(16,), dense=("x",))
    params = MemoryLog("params")
    pub = SyncPublisher(tr, params)
    replica = ServingReplica(tr.model.spec, hidden=(16,))
    sub = SyncSubscriber(replica, params)
    tr.add_hook(lambda t, info: pub.publish_once(dense=True))
    tr.train_dataset(ds)
    sub.catch_up()
    for slot, t in tr.tables.items():
        ids, rows = t.export()
        np.testing.assert_array_equal(replica.tables[slot].lookup(ids), rows)
    for name, v in tr.dense_state().items():
        np.testing.assert_array_equal(replica.model.state_dict()[name].numpy(), v)
    # a publisher snapshot of the trainer is a training-PS snapshot that serving bootstraps from
    pub.snapshot(tmp_path / "ps")
    boot = ServingReplica.from_snapshot(tmp_path / "ps")
    assert boot.positions["params"] == params.end_offsets()
    for slot, t in tr.tables.items():
        ids, rows = t.export()
        np.testing.assert_array_equal(boot.tables[slot].lookup(ids), rows[:, : boot.tables[slot].dim])
    from freshrec.ps.training import TrainingPS

    ps = TrainingPS.from_state(*tr.state())
    assert ps.step == tr.step and ps.table_sizes() == {s: len(t) for s, t in tr.tables.items()}


def test_whole_batches_train_fixed_boundaries_while_the_log_fills_and_stop_at_cuts_the_last():
    """With whole_batches, a log written in uneven pieces trains batches [k*B, (k+1)*B) exactly, as
    one written at once does; stop_at ends the run at that record, the last batch cut to it."""
    ds = synthetic(1000, seed=3)
    examples = list(dataset_to_examples(ds))

    def run_pieces(pieces: list[int]) -> tuple[list[int], OnlineTrainer]:
        log = MemoryLog("examples")
        config = OnlineConfig(batch_size=128, whole_batches=True, stop_at=900)
        tr = OnlineTrainer.from_spec(spec(), config, hidden=(8,), dense=("x",))
        sizes: list[int] = []
        tr.add_hook(lambda t, info: sizes.append(info.examples))
        consumer = log.consumer("t")
        at = 0
        for n in pieces:  # the joiner writes a piece; the trainer trains what is whole of it
            write_examples(log, examples[at : at + n])
            at += n
            while True:
                got, bad, positions = tr.poll_batch(consumer)
                if not got and not bad:
                    break
                tr.train_examples(got, positions=positions, bad=bad)
        tr.run(consumer, until_idle=True)  # drained: stops at stop_at
        return sizes, tr

    even, a = run_pieces([1000])
    uneven, b = run_pieces([50, 77, 300, 1, 200, 372])
    assert even == uneven == [128] * 7 + [900 - 7 * 128]
    assert a.trained_records() == b.trained_records() == 900
    for slot, (ids, rows) in table_state(a).items():
        ids_b, rows_b = table_state(b)[slot]
        np.testing.assert_array_equal(ids, ids_b)
        np.testing.assert_array_equal(rows, rows_b)


def test_online_metrics_from_a_batch_snapshot_cover_online_predictions_only(tmp_path):
    """The batch epochs' outputs stay out of the online progressive validation: a Pipeline trainer
    started from a batch snapshot begins with empty windows, and after the stream its window holds
    exactly the stream's predictions."""
    from freshrec.pipeline import Pipeline, PipelineConfig
    from freshrec.stream.local_log import LocalBackend

    res = train_model(
        synthetic(2000, seed=0), None, TrainConfig(epochs=2, batch_size=100, dim=8, hidden=(16,))
    )
    snap = save_checkpoint(res.ps, tmp_path / "snap")
    assert res.ps is not None and res.ps.windows["click"].n == 4000  # the batch epochs' outputs
    future = synthetic(600, seed=1)
    backend = LocalBackend(tmp_path / "logs")
    write_examples(backend.log("examples"), dataset_to_examples(future))
    backend.close()
    pipe = Pipeline(
        PipelineConfig(log=str(tmp_path / "logs"), init=snap, online=OnlineConfig(batch_size=200))
    )
    try:
        trainer = pipe.trainer()
        assert trainer.ps.windows["click"].n == 0
        _, consumer = pipe.examples_consumer(trainer)
        trainer.run(consumer, until_idle=True)
        consumer.close()
        assert trainer.ps.windows["click"].n == 600
    finally:
        pipe.close()

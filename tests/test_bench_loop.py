"""The online loop with batches prepared ahead (`OnlineConfig.prefetch`) trains exactly what the
serial loop trains, and `freshrec bench loop --quick` runs as a process with its JSON fields."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

import freshrec
from freshrec.model import FeatureSpec, ModelSpec, SlotSpec
from freshrec.pipeline import Pipeline, PipelineConfig
from freshrec.stream.events import Example
from freshrec.train.examples import write_examples
from freshrec.train.online import OnlineConfig


def _examples(n: int, seed: int = 0) -> list[Example]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        u, it, c = (int(x) for x in rng.integers(0, 50, 3))
        click = float(rng.random() < 0.3 + 0.01 * (u % 20))
        out.append(
            Example(
                request_id=f"r{i}",
                user_id=u,
                item_id=it,
                sparse={"user_id": [u], "item_id": [it], "cat": [c]},
                dense={"dense_0": float(rng.normal())},
                labels={"click": click},
                sample_rate=1.0,
                ts=1000.0 + i,
            )
        )
    return out


def _train(url: str, prefetch: int, tag: str, *, chunks: tuple[int | None, ...], **online):
    slots = tuple(SlotSpec(name=n) for n in ("user_id", "item_id", "cat"))
    spec = FeatureSpec(slots=slots, dense_dim=1, dim=4)
    config = OnlineConfig(batch_size=32, prefetch=prefetch, **online)
    pipe = Pipeline(
        PipelineConfig(
            log=url, features_spec=spec, model=ModelSpec("freshrec.model:DeepFM", {"hidden": [8], "seed": 3}),
            online=config, params=f"params-{tag}",
        )
    )
    trainer = pipe.trainer()
    pipe.publisher(trainer, every_batch=True)
    log, consumer = pipe.examples_consumer(trainer, group=tag)
    for n in chunks:  # several runs on one consumer: batches prepared ahead carry over
        trainer.run(consumer, max_batches=n)
    ids = np.arange(0, 50)
    rows = {s: t.lookup(ids).copy() for s, t in trainer.tables.items()}
    out = (trainer.step, dict(trainer.positions), trainer.dense_state(), rows, trainer.metrics().log_loss)
    consumer.close()
    pipe.close()
    return out


def _assert_same(a, b) -> None:
    assert a[0] == b[0] and a[1] == b[1]
    assert a[2].keys() == b[2].keys()
    for k in a[2]:
        torch.testing.assert_close(torch.from_numpy(a[2][k]), torch.from_numpy(b[2][k]), rtol=0, atol=0)
    for s in a[3]:
        np.testing.assert_array_equal(a[3][s], b[3][s])
    assert a[4] == b[4]


def test_prefetch_trains_the_same_parameters_as_the_serial_loop(tmp_path: Path) -> None:
    url = str(tmp_path / "logs")
    pipe = Pipeline(PipelineConfig(log=url))
    write_examples(pipe.log("examples"), _examples(500))  # 15 whole batches of 32 and a short one
    pipe.close()
    serial = _train(url, 0, "serial", chunks=(None,))
    assert serial[0] == 16 and sum(serial[1].values()) == 500
    _assert_same(serial, _train(url, 3, "ahead", chunks=(None,)))
    # stopped after 2 and 5 more batches with batches prepared ahead, then drained: the same
    _assert_same(serial, _train(url, 2, "split", chunks=(2, 5, None)))


def test_prefetch_keeps_whole_batches_and_stop_at(tmp_path: Path) -> None:
    url = str(tmp_path / "logs")
    pipe = Pipeline(PipelineConfig(log=url))
    write_examples(pipe.log("examples"), _examples(300))
    pipe.close()
    kw = {"whole_batches": True, "stop_at": 250}
    serial = _train(url, 0, "serial", chunks=(None,), **kw)
    assert sum(serial[1].values()) == 250 and serial[0] == 8  # 7 x 32 + one batch cut to 26
    _assert_same(serial, _train(url, 2, "ahead", chunks=(3, None), **kw))


def test_bench_loop_quick_prints_its_fields(tmp_path: Path) -> None:
    src = str(Path(freshrec.__file__).resolve().parents[1])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([src, os.environ.get("PYTHONPATH", "")]))
    cmd = [sys.executable, "-m", "freshrec.cli", "bench", "loop", "--quick", "--json"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path, env=env, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "seconds per stage" in out.stdout
    got = json.loads(out.stdout.strip().splitlines()[-1])
    for key in ("batch_size", "batches", "prefetch", "threads", "load_before", "load_after", "results"):
        assert key in got
    (r,) = got["results"]
    assert r["backend"] == "local"
    for key in ("serial_vs_pure", "prefetch_vs_pure", "reference_vs_pure", "prefetch_gain", "columnar_gain"):
        assert r[key] > 0
    for side in ("pure", "serial", "prefetch", "reference"):
        assert r[side]["examples"] == got["batch_size"] * got["batches"]
        assert r[side]["stages"]["step"] > 0
    for stage in ("poll", "decode", "assemble", "hooks"):
        assert stage in r["serial"]["stages"]
    assert r["same_parameters"] is True  # every side trained the same batches in the same order

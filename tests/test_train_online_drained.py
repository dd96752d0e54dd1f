"""`freshrec train online` without --follow trains the whole examples log, on every backend: drained
means end offsets reached, never an empty poll (the first poll of a Kafka consumer is often empty)."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import numpy as np
import pytest

from freshrec.data.dataset import Dataset
from freshrec.stream.backends import open_backend
from freshrec.train.examples import dataset_to_examples, write_examples

N = 3000


def _examples() -> list:
    rng = np.random.default_rng(0)
    ds = Dataset.build(
        "drained",
        sparse={"user_id": rng.integers(0, 200, N), "item_id": rng.integers(0, 50, N)},
        label=(rng.random(N) < 0.3).astype(np.float32),
        ts=np.sort(rng.uniform(1e9, 1e9 + 600, N)),
    )
    return dataset_to_examples(ds)


def _train(url: str, tmp_path) -> dict:
    backend = open_backend(url)
    try:
        assert write_examples(backend.log("examples"), _examples()) == N
    finally:
        backend.close()
    out = subprocess.run(
        [sys.executable, "-m", "freshrec.cli", "train", "online", "--log", url, "--slots", "user_id,item_id",
         "--hidden", "8", "--dim", "4", "--batch-size", "500", "--json"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_local_log_trains_every_example(tmp_path):
    got = _train(str(tmp_path / "logs"), tmp_path)
    assert got["examples"] == N and got["positions"] == {"0": N}


@pytest.mark.kafka
def test_kafka_trains_every_example_although_its_first_poll_is_empty(tmp_path, kafka_bootstrap):
    got = _train(f"kafka://{kafka_bootstrap}?prefix=drained-{int(time.time() * 1000)}.", tmp_path)
    assert got["examples"] == N and got["positions"] == {"0": N}

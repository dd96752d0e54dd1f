"""`freshrec experiment shapes --quick` as a process: every shape's config drives train -> import ->
join, and the report holds the examples joined and online / frozen AUC per task."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


@pytest.mark.shared_data("movielens-100k/u.data", "globo/clicks.csv.gz")
def test_experiment_shapes_quick_runs_every_shape(tmp_path):
    out = tmp_path / "out"
    res = subprocess.run(
        [sys.executable, "-m", "freshrec", "experiment", "shapes", "--quick", "--out", str(out), "--json"],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    result = json.loads(res.stdout.strip().splitlines()[-1])
    rows = {r["shape"]: r for r in result["shapes"]}
    assert set(rows) == {"movielens", "shop-behaviour", "globo"}
    assert set(rows["shop-behaviour"]["online"]) == {"cart", "fav", "buy"}
    for r in rows.values():
        assert r["examples"] > 1000 and r["impressions"] >= r["examples"] and r["bad"] == 0
        for task, metrics in r["online"].items():
            assert 0.0 < metrics["auc"] < 1.0 and 0.0 < r["frozen"][task]["auc"] < 1.0
            assert r["positives"][task] > 0
    assert (out / "shapes.png").stat().st_size > 1000 and (out / "shapes.json").is_file()

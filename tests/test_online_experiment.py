"""`freshrec experiment online --quick`: runs end to end on the real Globo slice, prints the table and
one JSON object last, draws the plot, and the sync path reproduces the training model exactly."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest

from freshrec.experiments import online


def test_window_bounds_cover_the_stream_in_order():
    ts = np.array([0.0, 10, 20, 3599, 3600, 3601, 9000])
    b = online._bounds(ts, 0.0, 3600.0)
    assert b == [0, 4, 6, 7]  # [0, 1 h), [1 h, 2 h), [2 h, 3 h)
    labels = np.array([0, 1, 0, 1, 0, 1, 1], np.float32)
    scores = np.array([0.1, 0.9, 0.2, 0.8, 0.3, 0.7, 0.5])
    aucs = online._window_aucs(labels, scores, b, min_n=2)
    assert aucs[0] == 1.0 and aucs[1] == 1.0 and np.isnan(aucs[2])  # last window too small


@pytest.mark.shared_data("globo/clicks.csv.gz")
def test_quick_experiment_cli_prints_json_last_and_writes_the_plot(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    online.configure(parser)
    args = parser.parse_args(["--quick", "--limit", "10000", "--json", "--out", str(tmp_path)])
    assert online.main(args) == 0
    out = capsys.readouterr().out.strip().splitlines()
    summary = json.loads(out[-1])
    assert [x["interval_s"] for x in summary["intervals"]] == [3600.0, 1800.0]
    for x in summary["intervals"]:
        assert 0.0 <= x["online_auc"] <= 1.0 and 0.0 <= x["batch_auc"] <= 1.0
        assert x["windows"] >= 2
    assert summary["sync_max_abs_diff"] == 0.0  # the replica fed by deltas == the training model
    assert summary["online_examples"] > 0 and summary["train_examples"] > 0
    assert (tmp_path / "online-globo-quick.png").stat().st_size > 1000
    assert json.loads((tmp_path / "online-globo-quick.json").read_text())["intervals"] == summary["intervals"]
    assert any("online - batch" in line for line in out)

"""`freshrec experiment reliability --quick`: the JSON shape, and the design's invariant that a shard
recovered from a snapshot + replay of the examples log loses nothing (AUC drop exactly 0)."""

from __future__ import annotations

import argparse
import json

import pytest


@pytest.mark.shared_data("globo/clicks.csv.gz")
def test_reliability_quick(tmp_path, capsys, deterministic_torch):
    # `freshrec experiment reliability` runs deterministic torch (TORCH_DETERMINISTIC); main() alone does not
    from freshrec.experiments import reliability

    parser = argparse.ArgumentParser()
    reliability.configure(parser)
    args = parser.parse_args(["--quick", "--json", "--out", str(tmp_path)])
    assert reliability.main(args) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["experiment"] == "reliability"
    rows = out["intervals"]
    assert [r["snapshot_every_h"] for r in rows] == [1.0, 6.0, 24.0]
    for r in rows:
        for k in ("auc_no_failure", "auc_drop_no_replay", "auc_drop_replay", "snapshot_age_h"):
            assert isinstance(r[k], float)
        assert 0.5 < r["auc_no_failure"] < 1.0
        assert abs(r["auc_drop_replay"]) < 1e-6  # snapshot + replay restores the state exactly
        assert r["replay_max_abs_diff"] == 0.0
        assert r["rows_lost"] + r["rows_rolled_back"] > 0  # the failure did hit rows
    # an older snapshot never rolls back less
    ages = [r["snapshot_age_h"] for r in rows]
    assert ages == sorted(ages)
    assert (tmp_path / "reliability-globo-quick.png").stat().st_size > 0
    assert (tmp_path / "reliability-globo-quick.json").exists()

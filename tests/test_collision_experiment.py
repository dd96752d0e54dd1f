"""The collision experiment: table sizes hit the paper's collision rates; the quick form runs end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest

from freshrec.cli import main as cli_main
from freshrec.experiments.collision import PAPER_RATES, buckets_for_rate
from freshrec.model.embedding import collision_rate

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize("target", [0.0773, 0.0286, 0.0])
def test_bucket_search_hits_the_target_rate(target):
    ids = np.random.default_rng(0).choice(1 << 50, size=20_000, replace=False).astype(np.int64)
    m, rate = buckets_for_rate(ids, target)
    assert rate == collision_rate(ids, m)
    assert abs(rate - target) < 0.002
    if target > 0:  # about n / -ln(1 - target) buckets (birthday estimate)
        assert 0.8 < m / (len(ids) / -np.log1p(-target)) < 1.25


@pytest.mark.shared_data("movielens-100k/u.data")
@pytest.mark.filterwarnings("ignore:Sparse invariant checks")
def test_quick_form_reports_auc_and_measured_collision_rates(tmp_path, capsys):
    rc = cli_main(
        ["experiment", "collision", "--dataset", "movielens", "--quick", "--json", "--out", str(tmp_path)]
    )
    assert rc == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for key in ("collisionless_auc", "hashed_auc", "user_collision_rate", "item_collision_rate"):
        assert key in out
    assert 0.5 < out["collisionless_auc"] <= 1.0 and 0.5 < out["hashed_auc"] <= 1.0
    assert abs(out["user_collision_rate"] - PAPER_RATES["user_id"]) < 0.01
    assert abs(out["item_collision_rate"] - PAPER_RATES["item_id"]) < 0.005
    assert (tmp_path / "collision-movielens-quick.png").stat().st_size > 1000
    assert json.loads((tmp_path / "collision-movielens-quick.json").read_text())["epochs"] == 2

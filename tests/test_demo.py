"""The demo's short form: the whole loop in one process learns in real time.

It runs `freshrec demo` for real (HTTP server, logs, joiner, online trainer, sync, serving) for a
short while and checks the claim the demo exists to show: on the last part of the run, the
online model's served predictions rank clicks better than the frozen batch-trained model's.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


@pytest.mark.timeout(600)
def test_demo_short_form_learns_online(tmp_path):
    out = tmp_path / "demo"
    proc = subprocess.run(
        [sys.executable, "-m", "freshrec.cli", "demo", "--minutes", "1.5", "--out", str(out), "--json"],
        capture_output=True,
        text=True,
        timeout=540,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["impressions"] > 2000
    assert summary["examples"] > 500, summary
    assert summary["model_version"] > 10, summary  # deltas kept arriving at serving
    assert summary["online_auc_last_third"] > summary["frozen_auc_last_third"], summary
    # freshness: a click to the served score that learned from it, at a 1 s sync (measured here
    # p50 0.8 s, p99 1.3 s): a few sync intervals at most
    assert summary["freshness_samples"] > 50, summary
    assert summary["freshness_p50_s"] < 2.5 and summary["freshness_p99_s"] < 5.0, summary
    for name in ("auc_over_time.png", "freshness.png", "table_sizes.png"):
        assert (out / name).stat().st_size > 5000


@pytest.mark.timeout(600)
@pytest.mark.shared_data("globo/clicks.csv.gz")
def test_demo_on_the_real_globo_stream_learns_online(tmp_path):
    out = tmp_path / "demo-globo"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "freshrec.cli",
            "demo",
            "--data",
            "globo",
            "--minutes",
            "1",
            "--out",
            str(out),
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=540,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["examples"] > 1000, summary
    assert summary["online_auc_last_third"] > summary["frozen_auc_last_third"], summary

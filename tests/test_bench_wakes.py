"""`freshrec bench wakes --quick` runs as a process: the wake costs at each pause, the features
logger's and the idle sync follower's CPU at both settings in every round (every impression the
logger was given is checked to be in its log, or the command fails), and an idle server's CPU
(the server subprocess must start, or the command fails)."""

from __future__ import annotations

import json
import subprocess
import sys


def test_bench_wakes_quick_reports_both_settings_in_every_round() -> None:
    cmd = [sys.executable, "-m", "freshrec.cli", "bench", "wakes", "--quick", "--json",
           "--lingers", "0.01,0.05", "--idles", "0.02,0.05", "--pauses", "0,5"]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    wakes = result["wake_cpu_us_by_pause_ms"]
    assert set(wakes) == {"0", "5"}
    assert all(row["impression_block_us"] > 0 and row["empty_poll_us"] > 0 for row in wakes.values())
    for field, settings in (
        ("features_logger_cpu_ms_per_request_by_linger_s", {"0.01", "0.05"}),
        ("idle_follower_cpu_ms_per_s_by_idle_s", {"0.02", "0.05"}),
    ):
        pair = result[field]
        assert set(pair["rounds"]) == set(pair["median"]) == settings
        assert all(len(v) == 2 and all(x > 0 for x in v) for v in pair["rounds"].values())
        low, high = sorted(settings)
        assert pair["ratio"] == round(pair["median"][high] / pair["median"][low], 3)
    assert result["rounds"] == 2 and result["candidates"] == 100
    assert result["idle_server_cpu_ms_per_s"] >= 0 and result["idle_seconds"] == 2.0  # a server ran
    assert "features logger, 100 impressions a request" in out.stderr
    assert "idle sync follower" in out.stderr


def test_bench_wakes_refuses_one_linger_in_one_line() -> None:
    cmd = [sys.executable, "-m", "freshrec.cli", "bench", "wakes", "--quick", "--lingers", "0.05"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines()[-1].startswith("freshrec bench wakes: ")
    assert "--lingers and --idles each take two different values" in out.stderr

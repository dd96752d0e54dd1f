"""`freshrec bench workers --quick --json` runs as a process and reports its fields."""

from __future__ import annotations

import json
import subprocess
import sys


def test_bench_workers_quick_json_has_the_fields():
    cmd = [sys.executable, "-m", "freshrec.cli", "bench", "workers", "--quick", "--json", "--workers", "1,2"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert {"rows_per_table", "cpus", "loadavg_start", "loadavg_end", "load_generator", "runs"} <= set(out)
    assert set(out["runs"]) == {"1", "2"}
    for n, run in out["runs"].items():
        assert {"pss_mb", "rss_sum_mb", "processes"} <= set(run["memory"])
        assert run["memory"]["processes"] == (1 if n == "1" else 4)  # the supervisor, the zygote, 2 workers
        assert {"rps", "p50_ms", "p99_ms", "max_ms", "requests", "errors"} <= set(run["closed"])
        assert run["closed"]["requests"] > 0 and run["closed"]["errors"] == 0
        assert {"pss_ratio", "rps_ratio", "rps_ratio_by_round", "rounds"} <= set(run)
        assert len(run["rounds"]) == len(run["rps_ratio_by_round"]) == 3  # interleaved: 1, 2, 1, 2, 1, 2
        assert {"supervisor", "zygote", "workers"} == set(run["closed"]["cpu_ms_per_request"])
    assert {"rps", "p50_ms", "p99_ms"} <= set(out["runs"]["2"]["paced_at_1_worker_rps"])

"""`freshrec bench serve --quick --connections N --json` as a process: its JSON's fields (not the figures)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

LOAD_FIELDS = {
    "p50_ms", "p99_ms", "max_ms", "rps", "requests", "errors", "server_cpu_ms_per_request",
    "baseline_inprocess_rank_p50_ms", "server_cpu_over_inprocess_rank", "load_generator", "connections",
    "statuses", "status_503", "transport_errors", "p99_over_p50", "load_avg_1m", "cpus",
    "requests_per_model_call", "batch_rows", "baseline_inprocess_rank_p50_ms_before_after",
    "baseline_inprocess_rank_paced_p50_ms", "server_cpu_over_paced_rank",
    "server_cpu_ms_per_request_by_thread", "request_path_cpu_over_inprocess_rank",
}  # fmt: skip


@pytest.mark.parametrize("generator", ["asyncio", "auto"])
def test_bench_serve_connections_reports_the_load_run(generator):
    cmd = [
        sys.executable, "-m", "freshrec.cli", "bench", "serve", "--quick", "--json",
        "--connections", "8", "--load-generator", generator,
    ]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert out.returncode in (0, 1), out.stderr[-2000:]  # 1: some request failed (a figure, not a field)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert LOAD_FIELDS <= set(result), sorted(LOAD_FIELDS - set(result))
    assert result["connections"] == 8 and result["requests"] > 0
    assert sum(result["statuses"].values()) == result["requests"]
    by_thread = result["server_cpu_ms_per_request_by_thread"]  # the server's CPU, split by thread
    assert {"request_path", "features_log", "sync"} <= set(by_thread)
    assert by_thread["features_log"] > 0 and by_thread["request_path"] > 0  # impressions were logged
    assert sum(by_thread.values()) == pytest.approx(result["server_cpu_ms_per_request"], abs=0.01)
    if generator == "asyncio":
        assert result["load_generator"].startswith("asyncio client")
    else:
        import shutil

        want = "wrk" if shutil.which("wrk") else "asyncio client"
        assert result["load_generator"].startswith(want)

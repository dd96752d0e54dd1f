"""`freshrec bench soak --quick` as a process: 40 s of ranks, actions and deltas at once through the
whole loop with retention on; no request fails, every role keeps running, disk stays bounded."""

from __future__ import annotations

import json
import subprocess
import sys


def test_soak_short_form_keeps_disk_bounded_and_every_role_alive(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "freshrec.cli", "bench", "soak", "--quick", "--out", str(tmp_path), "--json"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    ws = res["windows"]
    assert len(ws) == 4 and res["errors"] == 0 and res["role_errors"] == []
    assert all(w["ranks_per_s"] > 0 and w["actions_per_s"] > 0 for w in ws)
    assert [w["version"] for w in ws] == sorted(w["version"] for w in ws) and ws[-1]["version"] > ws[0][
        "version"
    ]
    assert ws[-1]["examples_trained"] > ws[0]["examples_trained"] > 0  # the loop keeps learning
    assert res["disk_bounded"], (
        res["max_log_bytes"],
        res["retention_bound_bytes"],
        [w["log_bytes"] for w in ws],
    )
    assert (tmp_path / "soak.png").is_file()

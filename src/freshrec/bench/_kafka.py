"""A throwaway Kafka broker for benchmarks, through `scripts/kafka.sh` (start / stop)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

__all__ = ["start_broker", "stop_broker"]

_SCRIPT = Path(__file__).resolve().parents[3] / "scripts" / "kafka.sh"


def start_broker() -> tuple[str | None, str | None, str | None]:
    """(bootstrap, broker dir, None) of a new loopback broker, or (None, None, why it could not start)."""
    if not _SCRIPT.is_file():
        return None, None, "scripts/kafka.sh not found"
    if shutil.which("java") is None:
        return None, None, "no java on PATH: cannot start a Kafka broker"
    try:
        out = subprocess.run(["bash", str(_SCRIPT), "start"], capture_output=True, text=True, timeout=180)
    except (OSError, subprocess.TimeoutExpired) as e:
        return None, None, f"kafka.sh start failed: {e}"
    if out.returncode != 0:
        return None, None, f"kafka.sh start failed: {(out.stderr or out.stdout).strip()[-300:]}"
    kv = dict(line.split("=", 1) for line in out.stdout.split() if "=" in line)
    if "bootstrap" not in kv:
        return None, None, f"kafka.sh start printed no bootstrap: {out.stdout[-200:]}"
    return kv["bootstrap"], kv.get("dir"), None


def stop_broker(broker_dir: str) -> None:
    """Stop the broker started in `broker_dir` and remove the folder."""
    subprocess.run(["bash", str(_SCRIPT), "stop", broker_dir], capture_output=True, timeout=60)

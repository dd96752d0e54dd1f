"""`freshrec bench train --against torchrec`: one line and exit 0 where TorchRec is not importable
(the core venv), and the comparison's JSON fields where its venv (scripts/torchrec-venv.sh) exists."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import freshrec

SRC = Path(freshrec.__file__).resolve().parents[1]
TORCHREC_PYTHON = SRC.parent / ".venv-torchrec" / "bin" / "python"
ARGS = ["bench", "train", "--against", "torchrec", "--json"]
SMALL = ["--batch-size", "256", "--batches", "2", "--warmup", "1", "--rounds", "2", "--max-vocab", "10000"]


def _run(python: str, args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]))
    cmd = [python, "-m", "freshrec.cli", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=cwd, env=env, check=False)


def test_without_torchrec_it_says_so_in_one_line_and_exits_0(tmp_path: Path) -> None:
    try:
        import torchrec  # noqa: F401

        pytest.skip("TorchRec is importable in this venv")
    except Exception:
        pass
    out = _run(sys.executable, [*ARGS, *SMALL], tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 2 and "skipped" in lines[0] and "scripts/torchrec-venv.sh" in lines[0]
    assert "Traceback" not in out.stderr
    got = json.loads(lines[1])
    assert got["against"] == "torchrec" and got["skipped"]


@pytest.mark.skipif(not TORCHREC_PYTHON.exists(), reason="no .venv-torchrec (bash scripts/torchrec-venv.sh)")
def test_in_the_torchrec_venv_it_compares_both_sides(tmp_path: Path) -> None:
    out = _run(str(TORCHREC_PYTHON), [*ARGS, *SMALL], tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    for key in ("freshrec_examples_per_s", "torchrec_examples_per_s", "ratio", "round_ratios", "load_before"):
        assert key in got
    assert len(got["round_ratios"]) == 2
    assert {"torch", "torchrec"} <= set(got["versions"])

"""Every command, given a bad argument, says what is wrong in one line on stderr and exits 2
(`freshrec.cli`'s exit codes): no traceback, whatever the command."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import freshrec
from freshrec.cli import COMMANDS, EXIT_ERROR

MISSING = "/nonexistent/freshrec-test"

# one bad argument per command: each passes argparse and fails inside the command
BAD = {
    ("demo",): ["--minutes", "-1"],
    ("train",): ["--dataset", "movielens", "--data", MISSING],
    ("train", "online"): ["--log", "memory://", "--slots", "a", "--batch-size", "0"],
    ("join",): ["--log", "memory://", "--store", "{tmp}/store", "--windows", "click=-1"],
    ("log",): ["check", "--log", MISSING],
    ("serve",): ["--params", "memory://", "--snapshot", MISSING],
    ("replay", "globo"): ["--log", "memory://", "--data", MISSING],
    ("import",): ["--log", "memory://", "--dataset", "no-such-schema"],
    ("snapshot",): ["show", MISSING],
    ("bench", "table"): ["--dim", "0"],
    ("bench", "filter"): ["--data", MISSING],
    ("bench", "train"): ["--batch-size", "0"],
    ("bench", "loop"): ["--batch-size", "0"],
    ("bench", "joiner"): ["--synthetic", "--no-kafka", "--clicks", "-1"],
    ("bench", "freshness"): ["--no-kafka", "--seconds", "-1"],
    ("bench", "serve"): ["--users", "0"],
    ("bench", "workers"): ["--rows", "0"],
    ("bench", "snapshot"): ["--rows", "0"],
    ("bench", "scale"): ["--no-ray", "--batch-size", "0"],
    ("bench", "soak"): ["--rate", "0"],
    ("bench", "import"): ["--rows", "0"],
    ("bench", "wakes"): ["--lingers", "0.01"],
    ("experiment", "collision"): ["--dataset", "movielens", "--data", MISSING],
    ("experiment", "online"): ["--data", MISSING],
    ("experiment", "reliability"): ["--data", MISSING],
    ("experiment", "models"): ["--data", MISSING],
    ("experiment", "shapes"): ["--shapes", "nosuch"],
}


def test_every_command_has_a_bad_argument_case() -> None:
    assert set(BAD) == set(COMMANDS)


@pytest.mark.parametrize("words", sorted(BAD), ids=" ".join)
def test_bad_argument_is_one_line_and_exit_2(words: tuple[str, ...], tmp_path: Path) -> None:
    args = [a.replace("{tmp}", str(tmp_path)) for a in BAD[words]]
    src = str(Path(freshrec.__file__).resolve().parents[1])  # this checkout's code, from any cwd
    path = os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])
    env = dict(os.environ, FRESHREC_DATA=MISSING, PYTHONPATH=path)
    cmd = [sys.executable, "-m", "freshrec.cli", *words, *args]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env, check=False)
    err = out.stderr.strip()
    assert "Traceback" not in out.stderr, out.stderr[-3000:]
    assert out.returncode == EXIT_ERROR, (out.returncode, out.stdout[-1000:], err[-1000:])
    last = err.splitlines()[-1]
    assert last.startswith(f"freshrec {' '.join(words)}"), err[-1000:]

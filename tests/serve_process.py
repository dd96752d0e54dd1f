"""A real `freshrec serve` process for tests: a snapshot and parameter log in a folder, the server
started on 127.0.0.1 with a free port, its URL read from its stdout."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from freshrec.model import FeatureSpec, SlotSpec
from freshrec.ps import SyncPublisher, TrainingPS
from freshrec.stream.local_log import LocalBackend

SPEC = FeatureSpec(
    slots=(SlotSpec(name="user_id"), SlotSpec(name="item_id"), SlotSpec(name="tags", multi_valued=True)),
    dense_dim=2,
    dim=4,
)
HIDDEN = (16, 8)


def make_snapshot(root: Path, n_items: int = 50) -> Path:
    """root/logs (a parameter log with one version) and root/store (a snapshot of it)."""
    backend = LocalBackend(root / "logs")
    try:
        ps = TrainingPS(SPEC, shards=2, hidden=HIDDEN)
        width = ps.tables["item_id"].dim
        rows = np.random.default_rng(0).normal(0, 1, (n_items, width)).astype(np.float32)
        ps.tables["item_id"].assign(np.arange(n_items), rows)
        pub = SyncPublisher(ps, backend.log("params"))
        pub.publish_once(0.0)
        return pub.snapshot(root / "store" / "step-000000000001")
    finally:
        backend.close()


def serve_command(root: Path, *flags: str) -> list[str]:
    cmd = [sys.executable, "-m", "freshrec.cli", "serve", "--params", str(root / "logs")]
    return [*cmd, "--snapshot", str(root / "store"), "--port", "0", *flags]


@contextlib.contextmanager
def serve_process(
    root: Path, *flags: str, env: dict[str, str] | None = None, command: list[str] | None = None
) -> Iterator[str]:
    """Start `freshrec serve` on root's snapshot (or run `command`, a whole `freshrec serve` command
    line); yields its URL; terminates it on exit."""
    proc = subprocess.Popen(
        command or serve_command(root, *flags),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, **(env or {})},
    )
    assert proc.stdout is not None
    lines = []
    try:
        url = None
        for line in proc.stdout:
            lines.append(line)
            if "listening on " in line:
                url = line.rsplit("listening on ", 1)[1].strip()
                break
        assert url is not None, "freshrec serve did not start:\n" + "".join(lines)
        out = proc.stdout
        threading.Thread(target=lambda: [None for _ in out], daemon=True).start()  # drain
        yield url
    finally:
        proc.terminate()
        proc.wait(30)

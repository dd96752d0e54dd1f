"""A folder of numbered snapshots: save atomically, keep the last K, load the newest good one.

Layout of a store at `root`::

    root/
      step-000000000100/   a snapshot directory (see `freshrec.checkpoint.format`)
      step-000000000200/
      .step-000000000300.tmp-ab12cd/   a write that crashed midway: invisible, removed by the next save

A step is any non-negative integer the caller chooses (a training step, a log offset, a data
time in seconds); steps only go up. A store has one writer at a time; any number of processes
may read it. Readers never see a half-written snapshot (the format writes to a temp dir and
renames it in), and `load_latest` falls back to the previous snapshot when the newest is corrupt.

Composite snapshots (a training PS = one table per slot + dense weights) are one snapshot with
flat, prefixed array names (`"table.user.rows"`, `"dense.fc1.weight"`) and nested JSON meta;
`freshrec.checkpoint.format.with_prefix` / `strip_prefix` build and split the names.
"""

from __future__ import annotations

import logging
import re
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from freshrec.checkpoint.format import read_snapshot, write_snapshot
from freshrec.errors import ConfigError, CorruptSnapshotError, SnapshotError

__all__ = ["SnapshotStore"]

log = logging.getLogger(__name__)

_STEP_RE = re.compile(r"step-(\d+)")
_STALE_RE = re.compile(r"\.step-\d+\.(tmp|old)-.*")


class SnapshotStore:
    """Numbered snapshots under `root`, the newest `keep` kept.

    Args:
        root: the folder; created if missing.
        keep: how many snapshots to keep after each save (>= 1).
    """

    def __init__(self, root: str | Path, *, keep: int = 3) -> None:
        if not isinstance(keep, int) or keep < 1:
            msg = f"SnapshotStore keep={keep!r}: must be an integer >= 1"
            raise ConfigError(msg)
        self.root = Path(root)
        self.keep = keep
        self.root.mkdir(parents=True, exist_ok=True)

    def __repr__(self) -> str:
        return f"SnapshotStore({str(self.root)!r}, keep={self.keep})"

    def path_for(self, step: int) -> Path:
        """The directory of the snapshot for `step` (which may not exist)."""
        return self.root / f"step-{int(step):012d}"

    def steps(self) -> list[int]:
        """Steps of the snapshots present, ascending (corrupt ones included: names only)."""
        out = []
        for p in self.root.iterdir():
            m = _STEP_RE.fullmatch(p.name)
            if m and p.is_dir():
                out.append(int(m.group(1)))
        return sorted(out)

    def latest_path(self) -> Path | None:
        """The newest snapshot's directory, or None when the store is empty."""
        steps = self.steps()
        return self.path_for(steps[-1]) if steps else None

    def save(
        self, step: int, *, kind: str, meta: Mapping[str, Any], arrays: Mapping[str, np.ndarray]
    ) -> Path:
        """Write the snapshot for `step` atomically, then prune to the newest `keep`; return its path.

        Saving the newest step again replaces it atomically. Leftovers of crashed writes are removed.

        Raises:
            SnapshotError: `step` is negative or older than the newest snapshot, or the write failed
                (see `write_snapshot`).
        """
        if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step < 0:
            msg = f"snapshot step {step!r} must be a non-negative integer"
            raise SnapshotError(msg)
        steps = self.steps()
        if steps and step < steps[-1]:
            msg = f"snapshot step {step} is older than the newest one ({steps[-1]}) in {self.root}"
            raise SnapshotError(msg)
        self._remove_stale()
        path = write_snapshot(self.path_for(step), kind=kind, meta=meta, arrays=arrays)
        self.prune()
        return path

    def prune(self) -> list[int]:
        """Delete all but the newest `keep` snapshots; return the steps deleted."""
        steps = self.steps()
        doomed = steps[: max(0, len(steps) - self.keep)]
        for s in doomed:
            shutil.rmtree(self.path_for(s), ignore_errors=True)
        return doomed

    def _remove_stale(self) -> None:
        for p in self.root.iterdir():
            if _STALE_RE.fullmatch(p.name):
                shutil.rmtree(p, ignore_errors=True)

    def load(
        self, step: int, *, kind: str | None = None, mmap: bool = False
    ) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """Read the snapshot for `step`: `(meta, arrays)`.

        Raises:
            CorruptSnapshotError: it is missing or fails validation (see `read_snapshot`).
        """
        return read_snapshot(self.path_for(step), kind=kind, mmap=mmap)

    def load_latest(
        self, kind: str | None = None, *, fallback: bool = True, mmap: bool = False
    ) -> tuple[int, dict[str, Any], dict[str, np.ndarray]] | None:
        """Read the newest snapshot: `(step, meta, arrays)`, or None when the store is empty.

        When the newest is corrupt and `fallback` is true, log a warning naming the file and the
        reason and try the one before, and so on. Corrupt snapshots are left in place for people
        to inspect (the next saves prune them).

        Raises:
            CorruptSnapshotError: the newest is corrupt and `fallback` is false, or every snapshot
                is corrupt (the newest one's error, so the cause is never silently skipped).
        """
        steps = self.steps()
        first_error: CorruptSnapshotError | None = None
        for step in reversed(steps):
            try:
                meta, arrays = self.load(step, kind=kind, mmap=mmap)
            except CorruptSnapshotError as e:
                if not fallback:
                    raise
                log.warning(
                    "snapshot step %d unusable: %s (%s); trying the previous one", step, e.path, e.reason
                )
                first_error = first_error or e
                continue
            return step, meta, arrays
        if first_error is not None:
            raise first_error
        return None

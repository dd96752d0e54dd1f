"""freshrec.checkpoint: the snapshot format, periodic snapshots and recovery.

- `write_snapshot` / `read_snapshot` / `read_manifest`: one folder, a JSON manifest + raw
  checksummed arrays, no pickle (`freshrec.checkpoint.format`).
- `PeriodicSnapshotter(SnapshotPolicy(...))`: full + incremental snapshot chains of a trainer;
  `recover(...)`: the newest good chain (bad snapshots are quarantined).
- `SnapshotStore`: numbered snapshots in a folder, the newest `keep` kept.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from freshrec._exports import lazy_exports

if TYPE_CHECKING:
    from freshrec.checkpoint.format import FORMAT_VERSION, read_manifest, read_snapshot, write_snapshot
    from freshrec.checkpoint.periodic import (
        PeriodicSnapshotter,
        RecoveryInfo,
        SnapshotInfo,
        SnapshotPolicy,
        recover,
    )
    from freshrec.checkpoint.store import SnapshotStore
else:  # type checkers read the imports above; a module __getattr__ would hide typos from them
    __getattr__, __dir__ = lazy_exports(
        __name__,
        {
            "freshrec.checkpoint.format": (
                "FORMAT_VERSION",
                "read_manifest",
                "read_snapshot",
                "write_snapshot",
            ),
            "freshrec.checkpoint.periodic": (
                "PeriodicSnapshotter",
                "RecoveryInfo",
                "SnapshotInfo",
                "SnapshotPolicy",
                "recover",
            ),
            "freshrec.checkpoint.store": (
                "SnapshotStore",
            ),
        },
    )

__all__ = [
    "FORMAT_VERSION",
    "PeriodicSnapshotter",
    "RecoveryInfo",
    "SnapshotInfo",
    "SnapshotPolicy",
    "SnapshotStore",
    "read_manifest",
    "read_snapshot",
    "recover",
    "write_snapshot",
]

"""freshrec.ps: parameter servers and the sync between them.

- `ShardedTable`: one logical table over N in-process `EmbeddingTable` shards (`RayShardedTable`:
  the shards as Ray actors, with the `ray` extra).
- `TrainingPS`: the model's sharded tables + dense weights + optimizer state + step; snapshots.
- `SyncPublisher` / `SyncSubscriber`: touched rows (and, slower, dense weights) through the
  parameter log as `Delta` / `DenseUpdate` frames (`freshrec.ps.delta` encodes, decodes, compacts).
- `ServingReplica`: embeddings-only serving tables + the dense model; applies deltas while answering.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from freshrec._exports import lazy_exports

if TYPE_CHECKING:
    from freshrec.ps.delta import Delta, DenseUpdate
    from freshrec.ps.ray_ps import RayShardedTable
    from freshrec.ps.serving import MISSING_ID, RankQuery, ServingConfig, ServingReplica
    from freshrec.ps.sharded import ShardedTable
    from freshrec.ps.sync import PublishReport, SyncPublisher, SyncSubscriber
    from freshrec.ps.training import TrainingPS
else:  # type checkers read the imports above; a module __getattr__ would hide typos from them
    __getattr__, __dir__ = lazy_exports(
        __name__,
        {
            "freshrec.ps.delta": (
                "Delta",
                "DenseUpdate",
            ),
            "freshrec.ps.serving": (
                "MISSING_ID",
                "RankQuery",
                "ServingConfig",
                "ServingReplica",
            ),
            "freshrec.ps.sharded": (
                "ShardedTable",
            ),
            "freshrec.ps.ray_ps": (
                "RayShardedTable",
            ),
            "freshrec.ps.sync": (
                "PublishReport",
                "SyncPublisher",
                "SyncSubscriber",
            ),
            "freshrec.ps.training": (
                "TrainingPS",
            ),
        },
    )

__all__ = [
    "Delta",
    "DenseUpdate",
    "MISSING_ID",
    "PublishReport",
    "RankQuery",
    "RayShardedTable",
    "ServingConfig",
    "ServingReplica",
    "ShardedTable",
    "SyncPublisher",
    "SyncSubscriber",
    "TrainingPS",
]

"""freshrec.ps: parameter servers and the sync between them.

- `ShardedTable`: one logical table over N in-process `EmbeddingTable` shards.
- `TrainingPS`: the model's sharded tables + dense weights + optimizer state + step; snapshots.
- `SyncPublisher` / `SyncSubscriber`: touched rows (and, slower, dense weights) through the
  parameter log as `Delta` / `DenseUpdate` frames.
- `ServingReplica`: embeddings-only serving tables + the dense model; applies deltas while answering.
"""

from freshrec.ps.delta import Delta, DenseUpdate, compact, decode, encode
from freshrec.ps.serving import MISSING_ID, ServingConfig, ServingReplica, serving_table_config
from freshrec.ps.sharded import ShardedTable, shard_of
from freshrec.ps.sync import DENSE_KEY, PublishReport, SyncPublisher, SyncSubscriber, split_delta
from freshrec.ps.training import SNAPSHOT_KIND, TrainingPS

__all__ = [
    "DENSE_KEY",
    "MISSING_ID",
    "SNAPSHOT_KIND",
    "Delta",
    "DenseUpdate",
    "PublishReport",
    "ServingConfig",
    "ServingReplica",
    "ShardedTable",
    "SyncPublisher",
    "SyncSubscriber",
    "TrainingPS",
    "compact",
    "decode",
    "encode",
    "serving_table_config",
    "shard_of",
    "split_delta",
]

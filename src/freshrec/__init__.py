"""freshrec: a real-time recommendation system after ByteDance's Monolith.

Collisionless embedding tables, an online joiner, online training, touched-key parameter
sync and a model server, in one pip-installable package. The names most programs need:

    from freshrec import EmbeddingTable, TableConfig, Adagrad     # the collisionless table
    from freshrec import DeepFM, FeatureSpec, SlotSpec, ModelSpec  # models and their inputs
    from freshrec import Joiner, TrainingPS, ServingReplica        # the roles
    from freshrec import Pipeline, PipelineConfig                  # the roles wired to one set of logs
    from freshrec import Schema, load_schema, stable_hash          # your own columns (docs/schema.md)
    from freshrec import FreshrecError, ConfigError                # the error tree (freshrec.errors)

Each is imported on first use (torch and numba load then, not at `import freshrec`). The rest
lives in the subpackages' `__all__` (`freshrec.table`, `.model`, `.stream`, `.ps`, `.train`,
`.checkpoint`, `.data`); `freshrec.checks` holds the conformance checks for your own table or model.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from freshrec._exports import lazy_exports

__version__ = "0.1.0"

if TYPE_CHECKING:
    from freshrec.checkpoint import PeriodicSnapshotter, SnapshotPolicy
    from freshrec.data import Dataset, Schema, SyntheticConfig, SyntheticPlatform, load_schema, stable_hash
    from freshrec.errors import (
        CapacityError,
        ConfigError,
        CorruptLogError,
        CorruptSnapshotError,
        CorruptStoreError,
        EventError,
        FreshrecError,
        LogError,
        OffsetOutOfRange,
        SchemaError,
        SnapshotError,
        StoreError,
    )
    from freshrec.model import (
        DCN,
        DIN,
        CollisionlessEmbedding,
        DeepFM,
        FeatureSpec,
        HashedEmbedding,
        ModelSpec,
        SlotModel,
        SlotSpec,
        Task,
        build_model,
        check_model,
    )
    from freshrec.pipeline import Pipeline, PipelineConfig
    from freshrec.ps import (
        Delta,
        DenseUpdate,
        ServingConfig,
        ServingReplica,
        ShardedTable,
        SyncPublisher,
        SyncSubscriber,
        TrainingPS,
    )
    from freshrec.stream import ActionEvent, Example, FeatureEvent, Joiner, JoinerConfig, open_backend
    from freshrec.table import (
        FTRL,
        SGD,
        Adagrad,
        Adam,
        EmbeddingTable,
        FilterConfig,
        Initializer,
        TableConfig,
    )
    from freshrec.train import OnlineConfig, OnlineTrainer, TrainConfig, auc, log_loss, train_model
else:  # type checkers read the imports above; a module __getattr__ would hide typos from them
    __getattr__, __dir__ = lazy_exports(
        __name__,
        {
            "freshrec.table": (
                "EmbeddingTable",
                "TableConfig",
                "FilterConfig",
                "Initializer",
                "SGD",
                "Adagrad",
                "Adam",
                "FTRL",
            ),
            "freshrec.model": (
                "FeatureSpec",
                "SlotSpec",
                "ModelSpec",
                "Task",
                "SlotModel",
                "DeepFM",
                "DCN",
                "DIN",
                "CollisionlessEmbedding",
                "HashedEmbedding",
                "build_model",
                "check_model",
            ),
            "freshrec.stream": (
                "FeatureEvent",
                "ActionEvent",
                "Example",
                "Joiner",
                "JoinerConfig",
                "open_backend",
            ),
            "freshrec.ps": (
                "ShardedTable",
                "TrainingPS",
                "ServingReplica",
                "ServingConfig",
                "SyncPublisher",
                "SyncSubscriber",
                "Delta",
                "DenseUpdate",
            ),
            "freshrec.train": (
                "TrainConfig",
                "train_model",
                "OnlineTrainer",
                "OnlineConfig",
                "auc",
                "log_loss",
            ),
            "freshrec.checkpoint": (
                "PeriodicSnapshotter",
                "SnapshotPolicy",
            ),
            "freshrec.data": (
                "Dataset",
                "SyntheticPlatform",
                "SyntheticConfig",
                "Schema",
                "load_schema",
                "stable_hash",
            ),
            "freshrec.pipeline": (
                "Pipeline",
                "PipelineConfig",
            ),
            "freshrec.errors": (
                "FreshrecError",
                "ConfigError",
                "SnapshotError",
                "CorruptSnapshotError",
                "LogError",
                "OffsetOutOfRange",
                "CorruptLogError",
                "StoreError",
                "CorruptStoreError",
                "EventError",
                "CapacityError",
                "SchemaError",
            ),
        },
    )

__all__ = [
    "ActionEvent",
    "Adagrad",
    "Adam",
    "CapacityError",
    "CollisionlessEmbedding",
    "ConfigError",
    "CorruptLogError",
    "CorruptSnapshotError",
    "CorruptStoreError",
    "DCN",
    "DIN",
    "Dataset",
    "DeepFM",
    "Delta",
    "DenseUpdate",
    "EmbeddingTable",
    "EventError",
    "Example",
    "FTRL",
    "FeatureEvent",
    "FeatureSpec",
    "FilterConfig",
    "FreshrecError",
    "HashedEmbedding",
    "Initializer",
    "Joiner",
    "JoinerConfig",
    "LogError",
    "ModelSpec",
    "OffsetOutOfRange",
    "OnlineConfig",
    "OnlineTrainer",
    "PeriodicSnapshotter",
    "Pipeline",
    "PipelineConfig",
    "SGD",
    "Schema",
    "SchemaError",
    "ServingConfig",
    "ServingReplica",
    "ShardedTable",
    "SlotModel",
    "SlotSpec",
    "SnapshotError",
    "SnapshotPolicy",
    "StoreError",
    "SyncPublisher",
    "SyncSubscriber",
    "SyntheticConfig",
    "SyntheticPlatform",
    "TableConfig",
    "Task",
    "TrainConfig",
    "TrainingPS",
    "__version__",
    "auc",
    "build_model",
    "check_model",
    "load_schema",
    "log_loss",
    "open_backend",
    "stable_hash",
    "train_model",
]

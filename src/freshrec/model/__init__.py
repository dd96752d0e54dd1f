"""freshrec.model: the PyTorch side: the model contract, collisionless embedding layer, hashed baseline,
feature specs, and the shipped models (DeepFM, DCN, DIN)."""

from freshrec.model.contract import (
    MODEL_ALIASES,
    Batch,
    ModelSpec,
    Task,
    build_model,
    check_model,
    outputs_2d,
    parse_tasks,
    task_losses,
)
from freshrec.model.deepfm import DCN, DeepFM, SlotModel, SparseInput
from freshrec.model.din import DIN
from freshrec.model.embedding import (
    CollisionlessEmbedding,
    HashedEmbedding,
    SparseOptimizer,
    collision_rate,
    hash_ids,
    unique_inverse,
)
from freshrec.model.features import FeatureSpec, SlotSpec

__all__ = [
    "DCN",
    "DIN",
    "MODEL_ALIASES",
    "Batch",
    "CollisionlessEmbedding",
    "DeepFM",
    "FeatureSpec",
    "HashedEmbedding",
    "ModelSpec",
    "SlotModel",
    "SlotSpec",
    "SparseInput",
    "SparseOptimizer",
    "Task",
    "build_model",
    "check_model",
    "collision_rate",
    "hash_ids",
    "outputs_2d",
    "parse_tasks",
    "task_losses",
    "unique_inverse",
]

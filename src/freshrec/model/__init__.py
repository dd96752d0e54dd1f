"""freshrec.model: the PyTorch side: collisionless embedding layer, hashed baseline, feature specs, models."""

from freshrec.model.deepfm import DCN, DeepFM, SlotModel, SparseInput
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
    "CollisionlessEmbedding",
    "DeepFM",
    "FeatureSpec",
    "HashedEmbedding",
    "SlotModel",
    "SlotSpec",
    "SparseInput",
    "SparseOptimizer",
    "collision_rate",
    "hash_ids",
    "unique_inverse",
]

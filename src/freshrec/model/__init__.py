"""freshrec.model: the PyTorch side: the model contract, collisionless embedding layer, hashed baseline,
feature specs, and the shipped models (DeepFM, DCN, DIN).

A model of your own: subclass `SlotModel` (or any `nn.Module` following the contract in
`freshrec.model.contract`), name it by `ModelSpec("mypkg.towers:MyModel", {...})`, and check it with
`check_model` (or `freshrec.checks.check_trained_equals_served`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from freshrec._exports import lazy_exports

if TYPE_CHECKING:
    from freshrec.model.contract import (
        MODEL_ALIASES,
        Batch,
        ModelSpec,
        Task,
        build_model,
        check_model,
        parse_tasks,
    )
    from freshrec.model.deepfm import DCN, DeepFM, SlotModel, SparseInput
    from freshrec.model.din import DIN
    from freshrec.model.embedding import CollisionlessEmbedding, HashedEmbedding, SparseOptimizer
    from freshrec.model.features import FeatureSpec, SlotSpec
else:  # type checkers read the imports above; a module __getattr__ would hide typos from them
    __getattr__, __dir__ = lazy_exports(
        __name__,
        {
            "freshrec.model.contract": (
                "MODEL_ALIASES",
                "Batch",
                "ModelSpec",
                "Task",
                "build_model",
                "check_model",
                "parse_tasks",
            ),
            "freshrec.model.deepfm": (
                "DCN",
                "DeepFM",
                "SlotModel",
                "SparseInput",
            ),
            "freshrec.model.din": (
                "DIN",
            ),
            "freshrec.model.embedding": (
                "CollisionlessEmbedding",
                "HashedEmbedding",
                "SparseOptimizer",
            ),
            "freshrec.model.features": (
                "FeatureSpec",
                "SlotSpec",
            ),
        },
    )

__all__ = [
    "Batch",
    "CollisionlessEmbedding",
    "DCN",
    "DIN",
    "DeepFM",
    "FeatureSpec",
    "HashedEmbedding",
    "MODEL_ALIASES",
    "ModelSpec",
    "SlotModel",
    "SlotSpec",
    "SparseInput",
    "SparseOptimizer",
    "Task",
    "build_model",
    "check_model",
    "parse_tasks",
]

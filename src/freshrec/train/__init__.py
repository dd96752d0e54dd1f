"""freshrec.train: batch training from files, online training from the examples log, metrics.

- `train_model(TrainConfig(...), train, test)`: batch training of a model over a `Dataset`.
- `OnlineTrainer(OnlineConfig(...), ...)`: the loop around a `freshrec.ps.TrainingPS` that reads
  the examples log, trains, and reports progressive-validation metrics.
- `auc`, `log_loss`: the metrics every experiment reports.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from freshrec._exports import lazy_exports

if TYPE_CHECKING:
    from freshrec.train.batch import TrainConfig, TrainResult, evaluate, train_model
    from freshrec.train.examples import ExampleSchema
    from freshrec.train.metrics import auc, log_loss
    from freshrec.train.online import OnlineConfig, OnlineMetrics, OnlineTrainer
else:  # type checkers read the imports above; a module __getattr__ would hide typos from them
    __getattr__, __dir__ = lazy_exports(
        __name__,
        {
            "freshrec.train.batch": (
                "TrainConfig",
                "TrainResult",
                "evaluate",
                "train_model",
            ),
            "freshrec.train.online": (
                "OnlineConfig",
                "OnlineMetrics",
                "OnlineTrainer",
            ),
            "freshrec.train.examples": (
                "ExampleSchema",
            ),
            "freshrec.train.metrics": (
                "auc",
                "log_loss",
            ),
        },
    )

__all__ = [
    "ExampleSchema",
    "OnlineConfig",
    "OnlineMetrics",
    "OnlineTrainer",
    "TrainConfig",
    "TrainResult",
    "auc",
    "evaluate",
    "log_loss",
    "train_model",
]

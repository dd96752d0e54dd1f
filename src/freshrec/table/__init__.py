"""Collisionless embedding tables: a cuckoo-hash index from int64 id to a row of its own.

from freshrec.table import EmbeddingTable, TableConfig, Adagrad
t = EmbeddingTable(TableConfig(name="user_id", dim=16, optimizer=Adagrad(lr=0.05), ttl_s=7 * 86400))
t.apply_gradients(ids, grads, now=ts)      # admit, init, optimize, mark touched
t.lookup(ids)                              # (n, 16) float32, zeros for unknown ids
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from freshrec._exports import lazy_exports

if TYPE_CHECKING:
    from freshrec.table.config import FilterConfig, Initializer, TableConfig
    from freshrec.table.optimizers import FTRL, SGD, Adagrad, Adam, OptimizerConfig
    from freshrec.table.table import EmbeddingTable, TouchedRows
else:  # type checkers read the imports above; a module __getattr__ would hide typos from them
    __getattr__, __dir__ = lazy_exports(
        __name__,
        {
            "freshrec.table.config": (
                "FilterConfig",
                "Initializer",
                "TableConfig",
            ),
            "freshrec.table.optimizers": (
                "FTRL",
                "SGD",
                "Adagrad",
                "Adam",
                "OptimizerConfig",
            ),
            "freshrec.table.table": (
                "EmbeddingTable",
                "TouchedRows",
            ),
        },
    )

__all__ = [
    "Adagrad",
    "Adam",
    "EmbeddingTable",
    "FTRL",
    "FilterConfig",
    "Initializer",
    "OptimizerConfig",
    "SGD",
    "TableConfig",
    "TouchedRows",
]

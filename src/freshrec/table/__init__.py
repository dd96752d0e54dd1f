"""Collisionless embedding tables: a cuckoo-hash index from int64 id to a row of its own.

from freshrec.table import EmbeddingTable, TableConfig, Adagrad
t = EmbeddingTable(TableConfig(name="user_id", dim=16, optimizer=Adagrad(lr=0.05), ttl_s=7 * 86400))
t.apply_gradients(ids, grads, now=ts)      # admit, init, optimize, mark touched
t.lookup(ids)                              # (n, 16) float32, zeros for unknown ids
"""

from __future__ import annotations

from freshrec.table.config import FilterConfig, Initializer, TableConfig
from freshrec.table.optimizers import FTRL, SGD, Adagrad, Adam, OptimizerConfig
from freshrec.table.table import EmbeddingTable, TouchedRows

__all__ = [
    "FTRL",
    "SGD",
    "Adagrad",
    "Adam",
    "EmbeddingTable",
    "FilterConfig",
    "Initializer",
    "OptimizerConfig",
    "TableConfig",
    "TouchedRows",
]

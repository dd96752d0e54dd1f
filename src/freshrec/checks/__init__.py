"""Conformance checks a user runs on their own table or model, in one line (after river's `checks`):

    from freshrec.checks import check_table, check_trained_equals_served
    check_table(lambda config: MyTable(config))                      # the table contract + dict oracle
    check_trained_equals_served("mypkg.towers:MyModel", {"hidden": [16]}, tasks="click,watch:value")

- `check_table(make)`: every check of `TABLE_CHECKS` (the table contract, against an
  `EmbeddingTable`) and `check_table_oracle` (random call sequences against `DictTable`, the
  simplest correct table) on tables made by `make(config)`.
- `check_model(model, batch)`: a built model against the model contract's rules.
- `check_snapshot_round_trip(ps, path)`: a training PS through the one snapshot layout and back.
- `check_trained_equals_served(model, kwargs)`: batch -> snapshot -> online -> sync -> serve;
  served scores equal the trainer's, per task.

Each raises AssertionError naming the check that failed. freshrec's own tests run them over every
shipped implementation (tests/test_table_contract.py, tests/test_table.py, tests/test_model_contract.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from freshrec._exports import lazy_exports

if TYPE_CHECKING:
    from freshrec.checks.model import check_snapshot_round_trip, check_trained_equals_served, contract_dataset
    from freshrec.checks.oracle import DictTable, check_table_oracle
    from freshrec.checks.table import TABLE_CHECKS, check_table
    from freshrec.model import check_model
else:  # type checkers read the imports above; a module __getattr__ would hide typos from them
    __getattr__, __dir__ = lazy_exports(
        __name__,
        {
            "freshrec.checks.table": ("TABLE_CHECKS", "check_table"),
            "freshrec.checks.oracle": ("DictTable", "check_table_oracle"),
            "freshrec.checks.model": (
                "check_snapshot_round_trip",
                "check_trained_equals_served",
                "contract_dataset",
            ),
            "freshrec.model": ("check_model",),
        },
    )

__all__ = [
    "TABLE_CHECKS",
    "DictTable",
    "check_model",
    "check_snapshot_round_trip",
    "check_table",
    "check_table_oracle",
    "check_trained_equals_served",
    "contract_dataset",
]

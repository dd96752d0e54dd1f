"""Batch training from files a schema describes (`freshrec train --config FILE` with a `[schema]`)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from freshrec.data.schema import Schema, load_schema
from freshrec.errors import SchemaError
from freshrec.train.batch import time_split

__all__ = ["check_init_schema", "checked_snapshot_schema", "load_train_test_schema"]


def load_train_test_schema(
    config: str | os.PathLike | Schema | None,
    files: str | os.PathLike | None = None,
    *,
    test_fraction: float = 0.2,
    limit: int | None = None,
) -> tuple[Any, Any, Schema]:
    """(train, test, resolved schema) of the `[schema]` of the config file `config` (or a `Schema`):
    its examples split by time (the last `test_fraction` is the test), the dense statistics taken
    from the training part only, slot types resolved from the data; the schema is what a snapshot
    stores. `files` (a path or glob) replaces the schema's source files."""
    from freshrec.data.schema_data import load_schema_dataset

    if config is None:
        msg = "needs --dataset NAME or --config FILE.toml with a [schema] table"
        raise SchemaError(msg, field="schema")
    if isinstance(config, Schema):
        schema = config
    else:
        overrides = {"files": [str(Path(files).resolve())]} if files else None
        schema = load_schema(config, overrides=overrides)
    data, resolved, _ = load_schema_dataset(schema, limit=limit, stats_fraction=1.0 - test_fraction)
    train, test = time_split(data, test_fraction)
    return train, test, resolved


def checked_snapshot_schema(config: str | os.PathLike | None, snapshot: str | os.PathLike) -> Schema | None:
    """The schema stored in `snapshot` (None when it holds none), read once; SchemaError naming
    what differs when the config file has a `[schema]` that is not the snapshot's (or the snapshot
    holds none)."""
    import tomllib

    from freshrec.ps.schema_check import snapshot_schema

    stored = snapshot_schema(Path(snapshot))
    if config is not None:
        try:
            has = "schema" in tomllib.loads(Path(config).read_text())
        except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError):
            has = False
        if has:
            load_schema(config).check_matches(stored, where=str(snapshot))
    return stored


def check_init_schema(config: str | os.PathLike | None, snapshot: str | os.PathLike) -> tuple[str, ...]:
    """For a trainer resumed from `snapshot`: `checked_snapshot_schema`'s check; returns the
    snapshot schema's dense names (() when the snapshot holds no schema)."""
    stored = checked_snapshot_schema(config, snapshot)
    return stored.dense_names if stored is not None else ()

"""The schema a snapshot was trained with: stored under `meta["extra"]["schema"]` by `freshrec train
--config` (and carried along by `train online` chains), read back here, so that import, a resumed
trainer and serving can refuse a schema that does not match (`Schema.check_matches`)."""

from __future__ import annotations

from pathlib import Path

from freshrec.data.schema import Schema
from freshrec.errors import SchemaError

__all__ = ["SCHEMA_KEY", "snapshot_schema"]

SCHEMA_KEY = "schema"


def _manifest_path(path: str | Path) -> Path:
    from freshrec.ps.training import resolve_snapshot

    kind, p = resolve_snapshot(path)
    if kind != "chain":
        return p
    fulls = sorted((p / "full").glob("step-*"), key=lambda q: int(q.name.split("-")[1]))
    if not fulls:
        msg = f"{p}: a periodic-snapshot folder without a full snapshot"
        raise SchemaError(msg, file=str(p))
    return fulls[-1]


def snapshot_schema(path: str | Path, *, required: bool = False) -> Schema | None:
    """The schema stored in the snapshot at `path` (a folder, store or chain), or None (SchemaError
    naming the snapshot when `required`)."""
    from freshrec.checkpoint.format import read_manifest

    p = _manifest_path(path)
    d = read_manifest(p)["meta"].get("extra", {}).get(SCHEMA_KEY)
    if d is None:
        if required:
            msg = f"snapshot {path} holds no schema (train it with `freshrec train --config FILE`)"
            raise SchemaError(msg, field="schema", file=str(path))
        return None
    return Schema.from_dict(d, origin=str(p))

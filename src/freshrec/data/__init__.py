"""freshrec.data: datasets in memory, loaders for real data and a drifting synthetic platform.

- `Dataset`: columns of ids per slot (`Ragged` for multi-valued slots), dense features, labels, times.
- `load_movielens`, `load_globo`, `load_criteo`: the shared data (`dataset_path(name)`) or the
  official downloads.
- `SyntheticPlatform(SyntheticConfig(...))`: users and items whose tastes drift, for demos.
- `Schema`, `load_schema(config)`, `shipped_schema(name)`: a user's own columns as slots, labels
  and impressions (docs/schema.md); `stable_hash`: the one hash of string ids;
  `encode_features` / `encode_rank_body` / `encode_predict_body`: raw request values -> ids.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from freshrec._exports import lazy_exports

if TYPE_CHECKING:
    from freshrec.data.criteo import load_criteo
    from freshrec.data.dataset import Dataset, Ragged, stable_ids
    from freshrec.data.globo import load_globo
    from freshrec.data.movielens import load_movielens
    from freshrec.data.paths import dataset_path, shared_data_dir
    from freshrec.data.schema import Schema, load_schema, shipped_schema, stable_hash
    from freshrec.data.schema_request import encode_features, encode_predict_body, encode_rank_body
    from freshrec.data.splits import split_by_time
    from freshrec.data.synthetic import SyntheticConfig, SyntheticPlatform
else:  # type checkers read the imports above; a module __getattr__ would hide typos from them
    __getattr__, __dir__ = lazy_exports(
        __name__,
        {
            "freshrec.data.dataset": (
                "Dataset",
                "Ragged",
                "stable_ids",
            ),
            "freshrec.data.movielens": (
                "load_movielens",
            ),
            "freshrec.data.globo": (
                "load_globo",
            ),
            "freshrec.data.criteo": (
                "load_criteo",
            ),
            "freshrec.data.paths": (
                "dataset_path",
                "shared_data_dir",
            ),
            "freshrec.data.schema": (
                "Schema",
                "load_schema",
                "shipped_schema",
                "stable_hash",
            ),
            "freshrec.data.schema_request": (
                "encode_features",
                "encode_predict_body",
                "encode_rank_body",
            ),
            "freshrec.data.splits": (
                "split_by_time",
            ),
            "freshrec.data.synthetic": (
                "SyntheticConfig",
                "SyntheticPlatform",
            ),
        },
    )

__all__ = [
    "Dataset",
    "Ragged",
    "Schema",
    "SyntheticConfig",
    "SyntheticPlatform",
    "dataset_path",
    "encode_features",
    "encode_predict_body",
    "encode_rank_body",
    "load_criteo",
    "load_globo",
    "load_movielens",
    "load_schema",
    "shared_data_dir",
    "shipped_schema",
    "split_by_time",
    "stable_hash",
    "stable_ids",
]

"""Where the real datasets are: `$FRESHREC_DATA`, else `../shared/data` beside the project."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["dataset_path", "shared_data_dir"]


def shared_data_dir(env: dict[str, str] | None = None) -> Path:
    """The folder holding `globo/`, `movielens-100k/`, `criteo-sample/`.

    `FRESHREC_DATA` wins when set; otherwise `../shared/data` relative to the project root
    (the checkout that holds `src/freshrec`), then relative to the working directory.
    """
    e: dict[str, str] | os._Environ[str] = os.environ if env is None else env
    if e.get("FRESHREC_DATA"):
        return Path(e["FRESHREC_DATA"])
    root = Path(__file__).resolve().parents[3]
    for cand in (root.parent / "shared" / "data", Path.cwd().parent / "shared" / "data"):
        if cand.is_dir():
            return cand
    return root.parent / "shared" / "data"


def dataset_path(name: str) -> Path:
    """Path of one dataset folder (`globo`, `movielens-100k`, `criteo-sample`); may not exist."""
    return shared_data_dir() / name

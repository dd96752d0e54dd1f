"""The public surface is deliberate: each package's `__all__` is what it exports, lazily, and what
type checkers see (httpx's test_exported_members)."""

from __future__ import annotations

import ast
import importlib
import inspect
import subprocess
import sys
from pathlib import Path

import pytest

import freshrec

PACKAGES = ["freshrec", *(f"freshrec.{p}" for p in ("table", "model", "stream", "ps", "train", "checkpoint",
                                                    "data", "checks"))]

# The curated top level: changing it is a decision, so it is spelled out here.
TOP_LEVEL = {
    "__version__",
    # tables
    "EmbeddingTable", "TableConfig", "FilterConfig", "Initializer", "SGD", "Adagrad", "Adam", "FTRL",
    # models
    "FeatureSpec", "SlotSpec", "ModelSpec", "Task", "SlotModel", "DeepFM", "DCN", "DIN",
    "CollisionlessEmbedding", "HashedEmbedding", "build_model", "check_model",
    # the roles
    "FeatureEvent", "ActionEvent", "Example", "Joiner", "JoinerConfig", "open_backend",
    "ShardedTable", "TrainingPS", "ServingReplica", "ServingConfig", "SyncPublisher", "SyncSubscriber",
    "Delta", "DenseUpdate", "TrainConfig", "train_model", "OnlineTrainer", "OnlineConfig", "auc", "log_loss",
    "PeriodicSnapshotter", "SnapshotPolicy", "Pipeline", "PipelineConfig",
    "Dataset", "SyntheticPlatform", "SyntheticConfig", "Schema", "load_schema", "stable_hash",
    # errors
    "FreshrecError", "ConfigError", "SnapshotError", "CorruptSnapshotError", "LogError", "OffsetOutOfRange",
    "CorruptLogError", "StoreError", "CorruptStoreError", "EventError", "CapacityError", "SchemaError",
}


def _typed_imports(package: str) -> dict[str, str]:
    """name -> module of the imports under `if TYPE_CHECKING:` in the package's __init__.py."""
    tree = ast.parse(Path(inspect.getfile(importlib.import_module(package))).read_text())
    out: dict[str, str] = {}
    for node in tree.body:
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            for imp in node.body:
                assert isinstance(imp, ast.ImportFrom) and imp.module
                out.update({alias.name: imp.module for alias in imp.names})
    return out


def test_top_level_api_is_the_curated_one() -> None:
    assert set(freshrec.__all__) == TOP_LEVEL
    assert freshrec.__all__ == sorted(freshrec.__all__)


@pytest.mark.parametrize("package", PACKAGES)
def test_all_matches_typed_imports_and_resolves(package: str) -> None:
    mod = importlib.import_module(package)
    typed = _typed_imports(package)
    assert len(mod.__all__) == len(set(mod.__all__)), "duplicates in __all__"
    assert set(mod.__all__) - {"__version__"} == set(typed), "__all__ and the TYPE_CHECKING imports differ"
    for name in sorted(typed):
        value = getattr(mod, name)  # through the lazy __getattr__
        assert value is getattr(importlib.import_module(typed[name]), name), name
    # nothing public beyond __all__, apart from the subpackages and modules themselves
    public = {n for n in dir(mod) if not n.startswith("_") and not inspect.ismodule(getattr(mod, n))}
    assert public - {"annotations", "TYPE_CHECKING", "lazy_exports"} <= set(mod.__all__)


def test_unknown_names_raise_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no_such_name"):
        freshrec.no_such_name  # noqa: B018
    from freshrec.table import _index_kernels  # a submodule, not an export: still importable

    assert _index_kernels.__name__ == "freshrec.table._index_kernels"


def test_import_freshrec_loads_neither_torch_nor_numba() -> None:
    code = ("import sys, freshrec, freshrec.cli, freshrec.stream, freshrec.table, freshrec.model; "
            "print(sorted(m for m in ('torch', 'numba', 'pyarrow', 'lmdb') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_package_is_typed() -> None:
    assert (Path(inspect.getfile(freshrec)).parent / "py.typed").is_file()

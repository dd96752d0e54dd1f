"""Lazy package exports (PEP 562): a package names what it exports and from which module; the
module is imported on first use of a name, so `import freshrec` (which the CLI does) loads
neither torch nor numba.

    __getattr__, __dir__ = lazy_exports(__name__, {"freshrec.table": ("EmbeddingTable", ...)})

The package also imports the same names under `typing.TYPE_CHECKING`, for type checkers and
editors; `tests/test_exported_members.py` checks that the two lists and `__all__` agree.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["lazy_exports"]


def lazy_exports(
    package: str, exports: Mapping[str, tuple[str, ...]]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """(`__getattr__`, `__dir__`) for `package`, exporting each module's names in `exports`.

    A name resolves to the attribute of its module (imported then) and is stored on the package,
    so the second use is a plain attribute read. Other names raise AttributeError, so
    `from package import submodule` still imports the submodule.
    """
    module_of = {name: module for module, names in exports.items() for name in names}

    def __getattr__(name: str) -> Any:
        module = module_of.get(name)
        if module is None:
            msg = f"module {package!r} has no attribute {name!r}"
            raise AttributeError(msg)
        value = getattr(importlib.import_module(module), name)
        setattr(sys.modules[package], name, value)
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(module_of))

    return __getattr__, __dir__

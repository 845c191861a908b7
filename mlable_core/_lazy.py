"""Lazy loading of submodules, shared by the package ``__init__`` files."""

from __future__ import annotations

import importlib
import types
from collections.abc import Callable


def submodule_getattr(package: str) -> Callable[[str], types.ModuleType]:
    """Returns a module-level ``__getattr__`` that imports ``package.<name>`` on first access."""

    def __getattr__(name: str) -> types.ModuleType:
        if name.startswith("_"):
            raise AttributeError(name)
        try:
            return importlib.import_module(f"{package}.{name}")
        except ModuleNotFoundError as error:
            if error.name == f"{package}.{name}":
                raise AttributeError(f"module {package!r} has no attribute {name!r}") from None
            raise

    return __getattr__

"""Seed-compatible layer modules: ``mlable.layers.reshaping``, ..."""

from __future__ import annotations

from mlable_core._lazy import submodule_getattr

__getattr__ = submodule_getattr(__name__)

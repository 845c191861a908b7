"""Keras layers of mlable, one module per concept (``reshaping``, ...)."""

from __future__ import annotations

from mlable_core._lazy import submodule_getattr



__getattr__ = submodule_getattr(__name__)

"""mlable: the seed-compatible namespace.

This package only re-exports ``mlable_keras`` (layers, metrics) at the import
paths of the mlable 0.20 README, e.g. ``mlable.layers.reshaping.Divide``. The
ops themselves live in ``mlable_core``.
"""

from __future__ import annotations

import mlable_keras  # noqa: F401  (registers the serializable classes with Keras)
from mlable_core._lazy import submodule_getattr

__version__ = "0.21.0"

__getattr__ = submodule_getattr(__name__)

"""Pure TensorFlow ops for byte-level and hierarchical language models.

Nothing here imports Keras. Submodules are loaded on first access, so that
``import mlable_core.shapes`` stays free of TensorFlow:

- ``shapes``: shape arithmetic on tuples (no TensorFlow).
- ``reshaping``: divide, merge, swap and move axes.
- ``embedding``: byte-embedding combination (tokun): one gather, one reshape.
- ``rotary``: rotary position embedding (RoPE) tables and rotation.

Every op works eagerly, inside ``tf.function`` and under ``jit_compile=True``.
"""

from __future__ import annotations

from mlable_core._lazy import submodule_getattr


__version__ = "0.21.0"


__getattr__ = submodule_getattr(__name__)

"""Re-exports of ``mlable_keras.metrics`` at the seed README's import path (``mlable.metrics``)."""

from mlable_keras.metrics import (
    BinaryGroupAccuracy,
    BitsPerByte,
    CategoricalGroupAccuracy,
    RawGroupAccuracy,
    SparseCategoricalGroupAccuracy,
)

__all__ = ["BinaryGroupAccuracy", "BitsPerByte", "CategoricalGroupAccuracy", "RawGroupAccuracy", "SparseCategoricalGroupAccuracy"]

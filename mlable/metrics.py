"""Re-exports of ``mlable_keras.metrics`` at the seed README's import path (``mlable.metrics``)."""

from mlable_keras.metrics import (
    BinaryGroupAccuracy,
    CategoricalGroupAccuracy,
    RawGroupAccuracy,
    SparseCategoricalGroupAccuracy,
)

__all__ = ["BinaryGroupAccuracy", "CategoricalGroupAccuracy", "RawGroupAccuracy", "SparseCategoricalGroupAccuracy"]

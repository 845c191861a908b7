"""Re-exports of ``mlable_keras.layers.reshaping`` at the seed README's import path."""

from mlable_keras.layers.reshaping import Divide, Merge, Move, Swap

__all__ = ["Divide", "Merge", "Move", "Swap"]

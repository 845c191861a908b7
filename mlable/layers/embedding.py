"""Re-exports of ``mlable_keras.layers.embedding`` at the seed README's import path."""

from mlable_keras.layers.embedding import RotaryPositionalEmbedding, TokunEmbedding

__all__ = ["RotaryPositionalEmbedding", "TokunEmbedding"]

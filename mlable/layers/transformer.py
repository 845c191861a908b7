"""Re-exports of ``mlable_keras.layers.transformer`` at the seed README's import path."""

from mlable_keras.layers.transformer import CachedMultiHeadAttention, FeedForwardGate

__all__ = ["CachedMultiHeadAttention", "FeedForwardGate"]

"""The one place where mlable reads Keras internals, each with a fallback.

Supported: Keras 3.9 to 3.15 on TensorFlow 2.16 to 2.21 (the range CI tests at
both ends). Everything else in ``mlable_keras`` uses public Keras APIs.

- Keras masks (``_keras_mask`` on a tensor): ``keras.src.backend`` has
  ``get_keras_mask`` / ``set_keras_mask`` from Keras 3.6; older versions keep
  the attribute directly on the tensor.
- ``MultiHeadAttention`` attributes without a public property: the output gate
  (``use_gate``, Keras 3.14), the sliding window (Keras 3.15), the attention
  dropout layer and the flash-attention flag. A version without the attribute
  has the feature off.
"""

from __future__ import annotations

import inspect
from typing import Any

import keras

try:  # Keras >= 3.6
    from keras.src.backend import get_keras_mask as _get_keras_mask
    from keras.src.backend import set_keras_mask as _set_keras_mask
except ImportError:  # pragma: no cover - older Keras keeps the mask on the tensor
    _get_keras_mask = None
    _set_keras_mask = None

def get_keras_mask(tensor: Any) -> Any:
    """The Keras mask carried by ``tensor`` (``None`` if it has none)."""
    if _get_keras_mask is not None:
        return _get_keras_mask(tensor)
    return getattr(tensor, "_keras_mask", None)


def set_keras_mask(tensor: Any, mask: Any) -> None:
    """Attaches ``mask`` to ``tensor`` (``None`` removes it); tensors that cannot hold one are left alone."""
    if _set_keras_mask is not None:
        _set_keras_mask(tensor, mask)
        return
    try:
        tensor._keras_mask = mask
    except AttributeError:
        pass


def mha_use_gate(layer: keras.layers.MultiHeadAttention) -> bool:
    """Whether ``layer`` has Keras' output gate (``use_gate=True``, Keras >= 3.14)."""
    return bool(getattr(layer, "_use_gate", False))


def mha_gate_dense(layer: keras.layers.MultiHeadAttention) -> Any:
    """The gate projection of a gated ``MultiHeadAttention`` (``None`` when there is none)."""
    return getattr(layer, "_gate_dense", None) if mha_use_gate(layer) else None


def mha_sliding_window(layer: keras.layers.MultiHeadAttention) -> int | None:
    """The ``sliding_window`` of ``layer`` (Keras >= 3.15), ``None`` when absent."""
    return getattr(layer, "_sliding_window", None)


def mha_dropout_layer(layer: keras.layers.MultiHeadAttention) -> Any:
    """The ``Dropout`` layer applied to the attention weights."""
    return layer._dropout_layer


def mha_flash_attention(layer: keras.layers.MultiHeadAttention) -> bool:
    """Whether ``layer`` asks for Keras' flash attention."""
    return bool(getattr(layer, "_flash_attention", False))


def _accepts(function: Any, name: str) -> bool:
    try:
        return name in inspect.signature(function).parameters
    except (TypeError, ValueError):  # pragma: no cover - builtins without a signature
        return False


# Keras >= 3.15 lets `MultiHeadAttention._compute_attention` take `use_causal_mask`
MHA_COMPUTE_ATTENTION_TAKES_CAUSAL = _accepts(keras.layers.MultiHeadAttention._compute_attention, "use_causal_mask")


__all__ = [
    "MHA_COMPUTE_ATTENTION_TAKES_CAUSAL",
    "get_keras_mask",
    "mha_dropout_layer",
    "mha_flash_attention",
    "mha_gate_dense",
    "mha_sliding_window",
    "mha_use_gate",
    "set_keras_mask",
]

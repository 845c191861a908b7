"""Transformer blocks: cached multi-head attention and the gated feed-forward layer.

Shape letters: ``B`` batch, ``F`` positions given to one call, ``S`` key /
value length without a cache, ``T`` cache slots, ``E`` model width, ``N``
heads, ``H`` head dimension.

The cache follows ``mlable_core.attention``: one tensor ``(2, B, T, N, H)`` in
the layer's compute dtype, keys at index 0 and values at index 1, slot ``t``
holding absolute position ``t``; ``create_cache`` allocates it.
"""

from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf
from keras.src import backend as keras_backend  # Keras-mask helpers, as the parent layer uses them

from mlable_core import attention, shapes


@keras.saving.register_keras_serializable(package="mlable")
class CachedMultiHeadAttention(keras.layers.MultiHeadAttention):
    """``keras.layers.MultiHeadAttention`` with an exact key/value cache for decoding.

    It takes the constructor arguments of ``keras.layers.MultiHeadAttention``
    unchanged (``num_heads``, ``key_dim``, ``value_dim``, ``dropout``,
    ``use_bias``, ``output_shape``, ``attention_axes``, initializers,
    regularizers, constraints, and Keras' newer ``sliding_window``,
    ``use_gate``, ...) and holds the same weights, so the weights of a plain
    ``MultiHeadAttention`` load into it and give the same outputs.

    - ``cache=None``: plain attention, causal by default; the returned cache
      is ``None``.
    - ``cache`` and ``step``: the keys / values of the ``F`` new positions are
      written into the slots ``[step, step + F)`` (replacing what was there),
      query ``i`` sits at position ``step + i`` and sees the slots ``<= step + i``
      (all slots ``< step + F`` without the causal mask), never an empty slot.
      Prefill (``F > 1``) and decode (``F = 1``) are the same call, and decoding
      one position (or any chunk) at a time gives the outputs of one causal pass.
    - ``cache`` without ``step``: the new keys / values are appended after the
      existing slots (the cache grows by ``F``; all its slots count as filled).

    Masked and empty slots get a weight of exactly 0, and a query that sees
    no key at all (e.g. a padded position under a Keras mask) gets all-zero
    weights, so its output is the output bias (``keras.layers.MultiHeadAttention``
    spreads such a row evenly over the masked keys instead); every other row
    equals Keras'.

    The scores and the softmax run in float32 under mixed precision; the
    weights are cast back to the compute dtype. The cache stays in the compute
    dtype (Keras casts a float cache passed to the layer to it).

    Eagerly and in ``tf.function`` the attention reads the filled slots only;
    under XLA (``jit_compile=True``, e.g. a compiled ``tf.while_loop`` with
    ``step`` an int32 scalar tensor) it reads the smallest power-of-two bucket of
    slots holding them and updates the cache in place. A write past the end of
    the cache raises (eagerly and in graphs); under XLA the output of that call
    is NaN instead. See ``mlable_core.attention``.

    A cache requires 3D inputs ``(B, F, E)`` attending over axis 1 and
    ``value_dim == key_dim`` (keys and values share the cache's ``H``): other
    configurations raise a ``ValueError`` when a cache is given. Keras masks on
    ``value`` / ``key`` cannot describe the slots written by earlier calls, so
    with a cache they are rejected: pass ``attention_mask`` over the ``T`` slots.

    Functional models: Keras rejects a ``None`` output in a functional graph,
    so ``layer(x, x)`` without a cache cannot be called on ``keras.Input``.
    Use the layer inside a subclassed layer or model (``return layer(x, x)[0]``),
    or give the symbolic call a cache input, whose outputs are all tensors.

    Call arguments:
        query: ``(B, F, E)``.
        value: ``(B, S, E)``; with a cache, the ``F`` new positions ``(B, F, E)``.
        key: optional, like ``value`` (defaults to ``value``).
        cache: optional ``(2, B, T, N, H)`` with ``H = key_dim``.
        step: optional slot of the first new position: a Python int or an
            integer scalar tensor. Only with a cache.
        training: whether the attention dropout is active.
        attention_mask: optional boolean ``(B, F, S)``; with a cache, ``(B, F, T)``
            over the cache slots (``B`` and ``F`` may be 1).
        return_attention_scores: also return the attention weights.
        use_causal_mask: hide the positions after each query (default True).

    Input shape:
        ``query`` ``(B, F, E)``, ``value`` / ``key`` ``(B, S, E)`` (``(B, F, E)`` with a cache).

    Output shape:
        ``(outputs, cache)``, or ``(outputs, scores, cache)`` with
        ``return_attention_scores``: ``outputs`` is ``(B, F, E)`` (or
        ``(B, F) + output_shape``); ``scores`` is ``(B, N, F, S)`` without a
        cache and ``(B, N, F, T)`` with one; ``cache`` is the updated cache or ``None``.

    Example:
        >>> layer = CachedMultiHeadAttention(num_heads=4, key_dim=16)
        >>> x = tf.random.normal((2, 10, 64))
        >>> cache = mlable_core.attention.create_cache(batch_size=2, cache_length=32, num_heads=4, head_dim=16)
        >>> outputs, cache = layer(x, x, cache=cache, step=0)  # prefill 10 positions
        >>> outputs, cache = layer(x[:, :1], x[:, :1], cache=cache, step=10)  # decode the 11th
        >>> outputs.shape
        TensorShape([2, 1, 64])
    """

    def call(
        self,
        query: tf.Tensor,
        value: tf.Tensor,
        key: tf.Tensor | None = None,
        cache: tf.Tensor | None = None,
        step: int | tf.Tensor | None = None,
        training: bool | None = False,
        attention_mask: tf.Tensor | None = None,
        return_attention_scores: bool = False,
        use_causal_mask: bool = True,
    ) -> tuple[Any, ...]:
        if step is not None and cache is None:
            raise ValueError(
                f"`step` is only meaningful with a `cache`. Received: step={step!r} and cache=None; "
                "allocate one with mlable_core.attention.create_cache"
            )
        if key is None:
            key = value
        query_mask = keras_backend.get_keras_mask(query)
        value_mask = keras_backend.get_keras_mask(value)
        key_mask = None if key is value else keras_backend.get_keras_mask(key)
        if cache is None and not self._serves_with_core(query, value, key):
            # several attention axes or other ranks: Keras' own implementation
            outputs = super().call(
                query, value, key=key, attention_mask=attention_mask, return_attention_scores=return_attention_scores,
                training=training, use_causal_mask=use_causal_mask,
            )
            return (*outputs, None) if return_attention_scores else (outputs, None)
        if cache is None:
            # Keras' mask logic (input masks, causal, sliding window) over the S keys
            mask = self._compute_attention_mask(
                query, value, query_mask=query_mask, value_mask=value_mask, key_mask=key_mask,
                attention_mask=attention_mask, use_causal_mask=use_causal_mask,
            )
        else:
            self._check_cache_config(query, value, key, cache, value_mask, key_mask)
            mask = attention_mask
            if query_mask is not None:
                rows = tf.cast(query_mask, tf.bool)[:, :, None]  # (B, F, 1)
                mask = rows if mask is None else tf.logical_and(tf.cast(mask, tf.bool), rows)
        for tensor in (query, value, key):
            keras_backend.set_keras_mask(tensor, None)
        gate = self._gate_dense(query) if self._use_gate else None
        projected_query = self._query_dense(query)  # (B, F, N, H)
        projected_key = self._key_dense(key)  # (B, F or S, N, H)
        projected_value = self._value_dense(value)  # (B, F or S, N, H)

        def dropout(weights: tf.Tensor) -> tf.Tensor:
            return self._dropout_layer(weights, training=training)

        weight_dropout = dropout if self._dropout > 0.0 else None
        if cache is None:
            result = attention.attention(
                projected_query, projected_key, projected_value, attention_mask=mask, use_causal_mask=False,
                scale=self._inverse_sqrt_key_dim, dropout=weight_dropout,
                return_scores=return_attention_scores,
            )
            mixed, scores = result if return_attention_scores else (result, None)
        else:
            result = attention.cached_attention(
                projected_query, projected_key, projected_value, cache, step, attention_mask=mask,
                use_causal_mask=use_causal_mask, sliding_window=self._sliding_window,
                scale=self._inverse_sqrt_key_dim, dropout=weight_dropout,
                return_scores=return_attention_scores,
            )
            mixed, scores, cache = result if return_attention_scores else (result[0], None, result[1])
        if gate is not None:
            mixed = mixed * gate
        outputs = self._output_dense(mixed)  # (B, F, E)
        if query_mask is not None:
            keras_backend.set_keras_mask(outputs, query_mask)
        return (outputs, scores, cache) if return_attention_scores else (outputs, cache)

    def _serves_with_core(self, query: Any, value: Any, key: Any) -> bool:
        """Whether the inputs fit ``mlable_core.attention``: (B, F, E) tensors, attention over axis 1."""
        ranks = {len(tensor.shape) for tensor in (query, value, key)}
        return ranks == {3} and tuple(self._attention_axes) == (1,)

    def _check_cache_config(self, query: Any, value: Any, key: Any, cache: Any, value_mask: Any, key_mask: Any) -> None:
        if not self._serves_with_core(query, value, key):
            raise ValueError(
                "A cache needs 3D inputs (B, F, E) attending over axis 1. "
                f"Received: query shape {shapes.format_shape(query.shape)}, value shape {shapes.format_shape(value.shape)}, "
                f"key shape {shapes.format_shape(key.shape)}, attention_axes={self._attention_axes}"
            )
        if self._value_dim != self._key_dim:
            raise ValueError(
                "A cache holds keys and values with one head size H, so it needs value_dim == key_dim. "
                f"Received: key_dim={self._key_dim}, value_dim={self._value_dim}"
            )
        if value_mask is not None or key_mask is not None:
            raise ValueError(
                "Keras masks on `value` / `key` only cover the F new positions, not the cache slots written "
                "before: with a cache, pass `attention_mask` of shape (B, F, T) over the slots instead"
            )
        expected = (2, None, None, self._num_heads, self._key_dim)
        cache_shape = tuple(cache.shape)
        if len(cache_shape) != 5 or any(e is not None and d is not None and d != e for d, e in zip(cache_shape, expected)):
            raise ValueError(
                f"`cache` must have shape (2, B, T, N={self._num_heads}, H={self._key_dim}). "
                f"Received: cache with shape {shapes.format_shape(cache_shape)}"
            )

    def compute_output_shape(
        self, query_shape: Any, value_shape: Any, key_shape: Any = None, cache_shape: Any = None
    ) -> tuple[Any, Any]:
        """``(outputs shape, cache shape)``; the cache shape is ``None`` without a cache, and grows by
        ``F`` only when ``step`` is omitted (append), which a shape alone cannot tell: it is returned unchanged."""
        outputs = super().compute_output_shape(query_shape, value_shape, key_shape)
        return tuple(outputs), None if cache_shape is None else tuple(cache_shape)

    def compute_output_spec(
        self,
        query: Any,
        value: Any,
        key: Any = None,
        cache: Any = None,
        step: Any = None,
        training: Any = False,
        attention_mask: Any = None,
        return_attention_scores: bool = False,
        use_causal_mask: bool = True,
    ) -> tuple[Any, ...]:
        outputs_shape, _ = self.compute_output_shape(query.shape, value.shape, None if key is None else key.shape)
        outputs = keras.KerasTensor(outputs_shape, dtype=self.compute_dtype)
        new_cache = None
        if cache is not None:
            cache_shape = tuple(cache.shape)
            if step is None:
                grown = None if cache_shape[2] is None or query.shape[1] is None else cache_shape[2] + query.shape[1]
                cache_shape = cache_shape[:2] + (grown,) + cache_shape[3:]
            new_cache = keras.KerasTensor(cache_shape, dtype=self.compute_dtype)
        if not return_attention_scores:
            return outputs, new_cache
        keys = value.shape[1] if new_cache is None else new_cache.shape[2]
        scores = keras.KerasTensor((query.shape[0], self._num_heads, query.shape[1], keys), dtype=self.compute_dtype)
        return outputs, scores, new_cache


@keras.saving.register_keras_serializable(package="mlable")
class FeedForwardGate(keras.layers.Layer):
    """Gated feed-forward block: ``W_out(activation(W_gate x) * (W_lin x))``.

    Three dense projections act on the last axis: ``gate`` and ``linear`` map
    the input width (read from the input at build) to ``hidden_dim``, their
    product (the gate after ``activation``) goes through optional dropout, and
    ``output`` maps it to ``input_dim``, the model width the block returns to.
    Biases are added inside each projection when ``use_bias`` (before the
    activation for the gate).

    Args:
        input_dim: the output's last dimension (the model width), a positive int.
        hidden_dim: the hidden width, a positive int.
        activation: a Keras activation name or callable for the gate, GELU by default.
        use_bias: whether the three projections have biases.
        dropout_rate: dropout on the gated hidden activations, in ``[0, 1)``.
        **kwargs: base ``keras.layers.Layer`` arguments.

    Call arguments:
        inputs: a tensor of rank >= 2 whose last dimension is known.
        training: whether the dropout is active.

    Input shape:
        ``(..., D)`` with any ``D``.

    Output shape:
        ``(..., input_dim)``.

    Example:
        >>> layer = FeedForwardGate(input_dim=256, hidden_dim=1024)
        >>> layer(tf.ones((2, 3, 5))).shape
        TensorShape([2, 3, 256])
    """

    def __init__(
        self,
        input_dim: int,
        hidden_dim: int,
        activation: str | Any = "gelu",
        use_bias: bool = True,
        dropout_rate: float = 0.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.input_dim = shapes.check_int(input_dim, "input_dim", minimum=1)
        self.hidden_dim = shapes.check_int(hidden_dim, "hidden_dim", minimum=1)
        try:
            function = keras.activations.get(activation)
        except (ValueError, TypeError) as error:
            raise ValueError(
                f"`activation` must be the name of a Keras activation (e.g. 'gelu', 'relu', 'silu') or a callable. "
                f"Received: activation={activation!r}"
            ) from error
        self.activation = activation if isinstance(activation, str) else keras.activations.serialize(function)
        self.use_bias = bool(use_bias)
        if isinstance(dropout_rate, bool) or not isinstance(dropout_rate, (int, float)) or not 0.0 <= dropout_rate < 1.0:
            raise ValueError(f"`dropout_rate` must be a float in [0, 1). Received: dropout_rate={dropout_rate!r}")
        self.dropout_rate = float(dropout_rate)
        common = dict(use_bias=self.use_bias, dtype=self.dtype_policy)
        self._gate = keras.layers.Dense(self.hidden_dim, activation=function, name="gate", **common)
        self._linear = keras.layers.Dense(self.hidden_dim, name="linear", **common)
        self._output = keras.layers.Dense(self.input_dim, name="output", **common)
        self._dropout = keras.layers.Dropout(self.dropout_rate, dtype=self.dtype_policy)

    def build(self, input_shape: Any) -> None:
        input_shape = tuple(input_shape)
        if len(input_shape) < 2 or input_shape[-1] is None:
            raise ValueError(
                f"FeedForwardGate needs inputs of rank >= 2 with a known last dimension. Received: input shape {shapes.format_shape(input_shape)}"
            )
        self._gate.build(input_shape)
        self._linear.build(input_shape)
        self._output.build(input_shape[:-1] + (self.hidden_dim,))

    def call(self, inputs: tf.Tensor, training: bool | None = None) -> tf.Tensor:
        hidden = self._gate(inputs) * self._linear(inputs)  # (..., hidden_dim)
        return self._output(self._dropout(hidden, training=training))  # (..., input_dim)

    def compute_output_shape(self, input_shape: Any) -> tuple[int | None, ...]:
        return tuple(input_shape)[:-1] + (self.input_dim,)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            input_dim=self.input_dim,
            hidden_dim=self.hidden_dim,
            activation=self.activation,
            use_bias=self.use_bias,
            dropout_rate=self.dropout_rate,
        )
        return config


__all__ = ["CachedMultiHeadAttention", "FeedForwardGate"]

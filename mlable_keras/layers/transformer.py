"""Transformer blocks: cached multi-head attention and the gated feed-forward layer.

Shape letters (the glossary of ``mlable_core``, and Keras' ``MultiHeadAttention``
names): ``B`` batch, ``T`` query positions of one call (with a cache, also the
new keys / values), ``S`` key / value positions, i.e. the cache slots, ``D``
model width, ``N`` query heads, ``K`` key / value heads, ``H`` head size,
``W`` sliding window.

The cache follows ``mlable_core.cache``: one tensor ``(2, B, S, K, H)`` in
the layer's compute dtype, keys at index 0 and values at index 1, slot ``t``
holding absolute position ``t``; ``create_cache`` allocates it.
"""

from __future__ import annotations

import math
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from mlable_core import attention, chunked, reshaping, rotary, shapes
from mlable_core import cache as kv_cache
from mlable_keras import _compat

_ROTARY_KEYS = ("max_wavelength", "scaling_factor", "interleaved")


def _normalize_rotary(rotary_config: Any) -> dict[str, Any] | None:
    """The ``rotary`` option as a plain dict of RoPE settings (``None``: no rotation)."""
    if rotary_config is None or rotary_config is False:
        return None
    if rotary_config is True:
        rotary_config = {}
    if not isinstance(rotary_config, dict):
        raise TypeError(
            "`rotary` must be None, True (default RoPE settings) or a dict with the keys "
            f"{list(_ROTARY_KEYS)}. Received: rotary={rotary_config!r}"
        )
    unknown = sorted(set(rotary_config) - set(_ROTARY_KEYS))
    if unknown:
        raise ValueError(f"`rotary` takes the keys {list(_ROTARY_KEYS)}. Received unknown keys {unknown} in rotary={rotary_config!r}")
    settings = {"max_wavelength": 10_000, "scaling_factor": 1.0, "interleaved": False}
    settings.update(rotary_config)
    rotary.check_arguments(settings["max_wavelength"], settings["scaling_factor"], settings["interleaved"])
    for name in ("max_wavelength", "scaling_factor"):
        value = settings[name]
        settings[name] = value if isinstance(value, int) and not isinstance(value, bool) else float(value)
    settings["interleaved"] = bool(settings["interleaved"])
    return settings


def _rank(tensor: Any) -> int | None:
    shape = getattr(tensor, "shape", None)
    return None if shape is None or getattr(shape, "rank", len(shape)) is None else len(shape)


def _as_rank3_mask(mask: Any) -> Any:
    """A mask of rank <= 3 over ``(B, T, S)`` as rank 3 (leading axes of size 1), booleans kept as they are."""
    while len(mask.shape) < 3:
        mask = tf.expand_dims(mask, 0)
    return mask


def _project(dense: Any, inputs: Any) -> Any:
    """``dense(inputs)``, computed on two copies of the row when a compiled call projects one row (B = T = 1).

    XLA on CPU turns a matrix-vector product whose matrix is a reshaped kernel (an ``EinsumDense`` kernel
    ``(D, N, H)`` seen as ``(D, N * H)``) into a plain loop fused with the reshape, about 20x slower than its
    matrix-multiplication kernel (measured: 60 us against 3 us for a 256 x 256 projection). Two rows keep it
    a matrix product; the second is dropped. Decoding one token at batch 1 projects four times per block.
    """
    shape = getattr(inputs, "shape", None)
    if shape is not None and len(shape) >= 3 and shape[0] == 1 and shape[1] == 1 and attention.in_xla_context():
        return dense(tf.concat([inputs, inputs], axis=0))[:1]
    return dense(inputs)


@keras.saving.register_keras_serializable(package="mlable")
class CachedMultiHeadAttention(keras.layers.MultiHeadAttention):
    """``keras.layers.MultiHeadAttention`` with an exact key/value cache, causal by default, and optional RoPE.

    A drop-in for ``keras.layers.MultiHeadAttention``: it takes the same
    constructor arguments (``num_heads``, ``key_dim``, ``value_dim``,
    ``dropout``, ``use_bias``, ``output_shape``, ``attention_axes``,
    initializers, regularizers, constraints, and the newer Keras ``use_gate``,
    ``sliding_window``, ...), holds the same weights and, without a cache,
    returns what it returns: a tensor, or ``(outputs, scores)`` with
    ``return_attention_scores=True``. It works on ``keras.Input`` in functional
    models, in ``Sequential`` / subclassed models, saved and reloaded. The only
    change of default is ``use_causal_mask=True``; pass
    ``use_causal_mask=False`` for bidirectional or cross-attention.

    Without a cache the call is ``MultiHeadAttention.call`` itself (Keras'
    projections, Keras masks on ``query`` / ``value`` / ``key``, causal and
    sliding-window masks); only the attention step (``_compute_attention``) runs
    on ``mlable_core.attention`` for 4D projections attending over one axis,
    with the softmax in float32. A subclass that overrides
    ``_compute_attention`` is honoured on every path (with and without a cache
    and RoPE). Several attention axes, other ranks and flash attention use
    Keras' own step.

    Cache (``(2, B, S, K, H)``, ``K = N`` without grouped-query heads, see ``mlable_core.cache``):

    - ``cache`` and ``step``: the keys / values of the ``T`` new positions are
      written into the slots ``[step, step + T)`` (replacing what was there),
      query ``i`` sits at position ``step + i`` and sees the slots ``<= step + i``
      (all slots ``< step + T`` without the causal mask), never an empty slot.
      Prefill (``T > 1``) and decode (``T = 1``) are the same call; decoding one
      position or any chunk at a time gives the outputs of one causal pass.
      The call returns ``(outputs, cache)`` / ``(outputs, scores, cache)``.
    - ``cache`` without ``step``: the new keys / values are appended after the
      existing slots (the cache grows by ``T``; all its slots count as filled).
    - a cache of exactly ``sliding_window`` slots (Keras >= 3.15's
      ``sliding_window``) is a ring buffer (``mlable_core.attention.ring_attention``):
      position ``p`` lives in slot ``p % W``, generation runs to any length in
      ``O(W)`` memory with static shapes, and the outputs equal full attention
      with the window mask. With ``attention_mask``, it covers the ``W`` ring
      slots followed by the ``T`` new positions.
    - ``cache`` with ``read_only_cache=True``: cross-attention over keys and
      values computed once by ``compute_cache(value, key)`` (e.g. an encoder's
      output). ``value`` / ``key`` are not used, nothing is written, every slot
      is visible (combine with ``attention_mask``), and the returned cache is
      the one given. See ``compute_cache``.

    RoPE (``rotary=True`` or a dict of ``max_wavelength``, ``scaling_factor``,
    ``interleaved``): the projected queries and keys are rotated (never the
    inputs, so that the scores depend on relative positions only), queries and
    keys sitting at ``step + i`` (``0 + i`` without a cache), or at explicit
    ``positions`` ``(T,)`` / ``(B, T)``. The cache holds rotated keys.

    Masked and empty slots get a weight of exactly 0, and a query that sees
    no key at all (e.g. a padded position under a Keras mask) gets all-zero
    weights, so its output is the output bias (``keras.layers.MultiHeadAttention``
    spreads such a row evenly over the masked keys instead); every other row
    equals Keras'.

    Under mixed precision the scores ``q . k`` are summed in float32 (never in
    float16, where they overflow past 65504), the softmax runs in float32 and
    the weights are cast back to the compute dtype; the cache stays in the
    compute dtype and is never copied whole to float32 (see
    ``mlable_core.attention``). Eagerly and in ``tf.function`` a cached call reads the filled slots
    only; under XLA it reads the smallest power-of-two bucket holding them and
    updates the cache in place. A write past the end of the cache raises
    (eagerly and in graphs); under XLA the output of that call is NaN instead.

    A cache requires 3D inputs ``(B, T, D)`` attending over axis 1 and
    ``value_dim == key_dim``; other configurations raise a ``ValueError`` when a
    cache is given. Keras masks on ``value`` / ``key`` cannot describe the slots
    written by earlier calls, so with a cache they are rejected: pass
    ``attention_mask`` over the ``S`` slots. A Keras mask on ``query`` works
    everywhere (its rows see nothing).

    Long sequences (``attention_chunk_size=C``): without a cache, the attention
    runs on ``mlable_core.chunked.chunked_attention`` with blocks of ``C``
    queries by ``C`` keys and an online softmax, never building the
    ``(B, N, T, S)`` scores (in training too: the gradient recomputes the blocks),
    skipping the blocks that the causal mask or the window hide. Keras masks
    and ``attention_mask`` apply as usual (the causal and window masks are
    never materialised). The outputs and gradients equal the plain path's to
    float tolerance. It applies to 3D inputs attending over axis 1 without
    ``return_attention_scores``, attention dropout in training, a subclass'
    ``_compute_attention`` or flash attention; those calls take the plain path.

    Args:
        rotary: ``None`` (no RoPE), ``True`` (default settings) or a dict with
            ``max_wavelength`` (10000), ``scaling_factor`` (1.0) and
            ``interleaved`` (False), as in ``RotaryPositionalEmbedding``.
        num_key_value_heads: ``K``, the number of key / value heads
            (grouped-query attention; ``1``: multi-query), dividing
            ``num_heads``; ``None`` (default): ``K = N``. Query head ``n`` reads
            key / value head ``n // (N / K)``, as in
            ``keras.layers.GroupQueryAttention`` (same weight layout); the cache
            holds ``K`` heads, ``(2, B, S, K, H)``, and keys / values are never
            repeated to ``N`` heads. Needs 3D inputs.
        attention_chunk_size: ``None`` (default: plain attention) or a positive
            int ``C``, the block size of the chunked attention used without a
            cache (see above).
        **kwargs: the arguments of ``keras.layers.MultiHeadAttention``.

    Call arguments:
        query: ``(B, T, D)`` (or any rank Keras takes, without a cache).
        value: ``(B, S, D)``; with a cache, the ``T`` new positions ``(B, T, D)``.
        key: optional, like ``value`` (defaults to ``value``).
        cache: optional ``(2, B, S, K, H)`` with ``H = key_dim``.
        step: optional slot of the first new position: a Python int or an
            integer scalar tensor. Only with a cache.
        training: whether the attention dropout is active.
        attention_mask: optional boolean mask of any shape Keras takes,
            broadcastable to ``(B, T, S)``; with a cache, ``(B, T, S)`` over the slots.
        return_attention_scores: also return the attention weights.
        use_causal_mask: hide the positions after each query (default True);
            needs a single attention axis.
        positions: optional explicit RoPE positions of the queries (and of
            the new keys), ``(T,)`` or ``(B, T)``; only with ``rotary``.
        read_only_cache: attend over ``cache`` as given (see above).
        query_mask, value_mask, key_mask: Keras masks, filled in by Keras from
            the inputs' masks.

    Output shape:
        Without a cache, as ``keras.layers.MultiHeadAttention``: ``(B, T, D)``
        (or ``(B, T) + output_shape``), and scores ``(B, N, T, S)``. With a cache,
        the same followed by the cache; the scores are ``(B, N, T, S)``.

    Example:
        >>> layer = CachedMultiHeadAttention(num_heads=4, key_dim=16)
        >>> x = tf.random.normal((2, 10, 64))
        >>> layer(x, x).shape  # plain causal self-attention
        TensorShape([2, 10, 64])
        >>> cache = mlable_core.cache.create_cache(batch_size=2, cache_length=32, num_heads=4, head_dim=16)
        >>> outputs, cache = layer(x, x, cache=cache, step=0)  # prefill 10 positions
        >>> outputs, cache = layer(x[:, :1], x[:, :1], cache=cache, step=10)  # decode the 11th
        >>> outputs.shape
        TensorShape([2, 1, 64])
    """

    def __init__(
        self, num_heads: int, key_dim: int, *args: Any, rotary: Any = None, num_key_value_heads: int | None = None,
        attention_chunk_size: int | None = None, **kwargs: Any,
    ) -> None:
        # Keras' own checks and wording (Keras before 3.12 accepts non-positive sizes silently)
        value_dim = kwargs.get("value_dim", args[0] if args else None)
        for name, value, optional in (("num_heads", num_heads, False), ("key_dim", key_dim, False), ("value_dim", value_dim, True)):
            if optional and value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                expected = "a positive integer or `None`" if optional else "a positive integer"
                raise ValueError(f"Received an invalid value for argument `{name}`, expected {expected}. Received: {name}={value!r}")
        if isinstance(kwargs.get("sliding_window"), bool):  # Keras takes True for a window of 1
            raise ValueError(f"`sliding_window` must be `None` or a positive integer. Received: sliding_window={kwargs['sliding_window']!r}")
        if num_key_value_heads is not None:
            if isinstance(num_key_value_heads, bool) or not isinstance(num_key_value_heads, int) or num_key_value_heads <= 0:
                raise ValueError(
                    "Received an invalid value for argument `num_key_value_heads`, expected a positive integer or `None`. "
                    f"Received: num_key_value_heads={num_key_value_heads!r}"
                )
            if num_heads % num_key_value_heads:
                raise ValueError(
                    "`num_key_value_heads` must divide `num_heads` (each key / value head serves num_heads / "
                    f"num_key_value_heads query heads). Received: num_heads={num_heads}, num_key_value_heads={num_key_value_heads}"
                )
        if attention_chunk_size is not None and (
            isinstance(attention_chunk_size, bool) or not isinstance(attention_chunk_size, int) or attention_chunk_size <= 0
        ):
            raise ValueError(
                "Received an invalid value for argument `attention_chunk_size`, expected a positive integer or `None`. "
                f"Received: attention_chunk_size={attention_chunk_size!r}"
            )
        super().__init__(num_heads, key_dim, *args, **kwargs)
        self.rotary = _normalize_rotary(rotary)
        self.attention_chunk_size = attention_chunk_size
        self.num_key_value_heads = num_heads if num_key_value_heads is None else num_key_value_heads
        if self.num_key_value_heads != num_heads and _compat.mha_flash_attention(self):
            raise ValueError("Grouped-query heads (`num_key_value_heads` < `num_heads`) do not support Keras' flash attention")

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        if self.rotary is not None:  # absent otherwise: the config is then exactly MultiHeadAttention's
            config["rotary"] = dict(self.rotary)
        if self.num_key_value_heads != self._num_heads:
            config["num_key_value_heads"] = self.num_key_value_heads
        if self.attention_chunk_size is not None:
            config["attention_chunk_size"] = self.attention_chunk_size
        return config

    def build(self, query_shape: Any, value_shape: Any, key_shape: Any = None) -> None:
        if self.num_key_value_heads == self._num_heads:
            super().build(query_shape, value_shape, key_shape)
            return
        # grouped-query heads: Keras' projections, with K key / value heads instead of N
        key_shape = value_shape if key_shape is None else key_shape
        query_shape, value_shape, key_shape = (tuple(shape) for shape in (query_shape, value_shape, key_shape))
        if {len(query_shape), len(value_shape), len(key_shape)} != {3}:
            raise ValueError(
                "Grouped-query heads (`num_key_value_heads`) need 3D inputs (B, T, D). Received: query shape "
                f"{shapes.format_shape(query_shape)}, value shape {shapes.format_shape(value_shape)}, key shape {shapes.format_shape(key_shape)}"
            )
        if self._attention_axes is not None and tuple(np.atleast_1d(self._attention_axes)) not in ((1,), (-2,)):
            raise ValueError(f"Grouped-query heads attend over axis 1 only. Received: attention_axes={self._attention_axes}")
        common = self._get_common_kwargs_for_sublayer()

        def projection(heads: int, size: int, name: str, **extra: Any) -> Any:
            return keras.layers.EinsumDense(
                "abc,cde->abde", output_shape=(None, heads, size), bias_axes="de" if self._use_bias else None,
                name=name, **extra, **common,
            )

        self._query_dense = projection(self._num_heads, self._key_dim, "query")
        self._query_dense.build(query_shape)
        self._key_dense = projection(self.num_key_value_heads, self._key_dim, "key")
        self._key_dense.build(key_shape)
        if _compat.mha_use_gate(self):
            self._gate_dense = projection(self._num_heads, self._value_dim, "gate", activation="sigmoid")
            self._gate_dense.build(query_shape)
        self._value_dense = projection(self.num_key_value_heads, self._value_dim, "value")
        self._value_dense.build(value_shape)
        self._attention_axes = None
        self._build_attention(4)
        self._output_dense = self._make_output_dense(query_shape, common, "attention_output")
        self._output_dense.build(query_shape[:-1] + (self._num_heads, self._value_dim))
        self.built = True

    # ------------------------------------------------------------------ call

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
        positions: Any = None,
        read_only_cache: bool = False,
        query_mask: Any = None,
        value_mask: Any = None,
        key_mask: Any = None,
    ) -> Any:
        if step is not None and cache is None:
            raise ValueError(
                f"`step` is only meaningful with a `cache`. Received: step={step!r} and cache=None; "
                "allocate one with mlable_core.cache.create_cache"
            )
        if read_only_cache and cache is None:
            raise ValueError("`read_only_cache=True` needs a `cache` (from `compute_cache(value, key)`). Received: cache=None")
        if read_only_cache and step is not None:
            raise ValueError(f"A read-only cache is attended as a whole: `step` must be None. Received: step={step!r}")
        if positions is not None and self.rotary is None:
            raise ValueError(
                "`positions` sets the RoPE positions, but this layer has no rotary embedding: construct it with "
                f"`rotary=True` (or a dict of RoPE settings). Received: positions with shape {getattr(positions, 'shape', None)}"
            )
        if key is None:
            key = value
        if cache is None:
            self._check_causal(query, value, use_causal_mask)
        chunks = cache is None and self._chunks_apply(query, value, key, training, return_attention_scores)
        if cache is None and self.rotary is None and not chunks:
            # Keras' own call: its projections, masks and output; the attention step is `_compute_attention`
            return super().call(
                query, value, key=key, query_mask=query_mask, value_mask=value_mask, key_mask=key_mask,
                attention_mask=attention_mask, return_attention_scores=return_attention_scores,
                training=training, use_causal_mask=use_causal_mask,
            )
        return self._call_projected(
            query, value, key, cache, step, training, attention_mask, return_attention_scores, use_causal_mask,
            positions, read_only_cache, query_mask, value_mask, key_mask, chunks,
        )

    def _call_projected(
        self, query: Any, value: Any, key: Any, cache: Any, step: Any, training: Any, attention_mask: Any,
        return_attention_scores: bool, use_causal_mask: bool, positions: Any, read_only_cache: bool,
        query_mask: Any, value_mask: Any, key_mask: Any, chunks: bool = False,
    ) -> Any:
        """The call with a cache or RoPE: Keras' projections, then rotation and the cache, then the attention step."""
        if query_mask is None:
            query_mask = _compat.get_keras_mask(query)
        if value_mask is None:
            value_mask = _compat.get_keras_mask(value)
        if key_mask is None and key is not value:
            key_mask = _compat.get_keras_mask(key)
        if cache is not None:
            self._check_cache_config(query, value, key, cache, value_mask, key_mask)
            mask = attention_mask
            if query_mask is not None:
                rows = tf.cast(query_mask, tf.bool)[:, :, None]  # (B, T, 1)
                mask = rows if mask is None else tf.logical_and(tf.cast(_as_rank3_mask(mask), tf.bool), rows)
        elif chunks:
            mask = self._chunk_mask(attention_mask, value_mask, key_mask)
        else:
            mask = self._compute_attention_mask(
                query, value, query_mask=query_mask, value_mask=value_mask, key_mask=key_mask,
                attention_mask=attention_mask, use_causal_mask=use_causal_mask,
            )
        for tensor in (query, value, key):
            _compat.set_keras_mask(tensor, None)
        gate_dense = _compat.mha_gate_dense(self)
        gate = None if gate_dense is None else _project(gate_dense, query)
        projected_query = _project(self.query_dense, query)  # (B, T, N, H)
        projected_key = projected_value = None
        if not read_only_cache:
            projected_key = _project(self.key_dense, key)  # (B, T or S, N, H)
            projected_value = _project(self.value_dense, value)  # (B, T or S, N, H)
        if self.rotary is not None:
            projected_query, projected_key = self._rotate(projected_query, projected_key, cache, step, positions)
        scores = None
        if chunks:
            mixed = self._chunked_step(projected_query, projected_key, projected_value, mask, query_mask, use_causal_mask)
        elif cache is None:
            mixed, scores = self._compute_attention(
                projected_query, projected_key, projected_value, mask, training, return_attention_scores
            )
        else:
            mixed, scores, cache = self._cached_step(
                projected_query, projected_key, projected_value, cache, step, mask, training,
                return_attention_scores, use_causal_mask, read_only_cache,
            )
        if gate is not None:
            mixed = mixed * gate
        outputs = _project(self.output_dense, mixed)  # (B, T, D)
        if query_mask is not None:
            _compat.set_keras_mask(outputs, query_mask)
        if cache is None:
            return (outputs, scores) if return_attention_scores else outputs
        return (outputs, scores, cache) if return_attention_scores else (outputs, cache)

    def _rotate(self, query: Any, key: Any, cache: Any, step: Any, positions: Any) -> tuple[Any, Any]:
        """RoPE on the projected ``(B, T, N, H)`` queries and new keys, at ``step + i`` or at ``positions``."""
        settings = self.rotary
        offset: Any = 0
        if cache is not None and positions is None:
            # appended positions follow the existing slots; a read-only cache starts its queries at 0
            offset = tf.shape(cache)[2] if step is None and key is not None else (0 if step is None else step)
            if isinstance(offset, tf.Tensor):
                offset = tf.cast(offset, tf.int32)

        def turn(tensor: Any) -> Any:
            return rotary.rotate(
                tensor, 1, -1, offset=offset, positions=positions, max_wavelength=settings["max_wavelength"],
                scaling_factor=settings["scaling_factor"], interleaved=settings["interleaved"],
            )

        query = turn(query)
        if key is not None:
            if positions is not None and cache is None and key.shape[1] is not None and query.shape[1] is not None and key.shape[1] != query.shape[1]:
                raise ValueError(
                    "`positions` covers the queries; without a cache the keys share them, so `key` / `value` must have "
                    f"as many positions as `query`. Received: query with shape {shapes.format_shape(query.shape)}, "
                    f"key with shape {shapes.format_shape(key.shape)}"
                )
            key = turn(key)
        return query, key

    def _cached_step(
        self, query: Any, key: Any, value: Any, cache: Any, step: Any, mask: Any, training: Any,
        return_attention_scores: bool, use_causal_mask: bool, read_only_cache: bool,
    ) -> tuple[Any, Any, Any]:
        """The attention step with a cache: ``(mixed (B, T, N, H), scores or None, new cache)``."""
        sliding_window = _compat.mha_sliding_window(self)
        overridden = type(self)._compute_attention is not CachedMultiHeadAttention._compute_attention
        if read_only_cache:
            cache = tf.convert_to_tensor(cache)
            queries = reshaping.dynamic_dims(query)[1]
            slots = reshaping.dynamic_dims(cache)[2]
            visible = attention.build_attention_mask(queries, slots, 0, None, False, None, mask)
            mixed, scores = self._compute_attention(query, cache[0], cache[1], visible, training, return_attention_scores)
            return mixed, scores, cache
        slots = cache.shape[2]
        if sliding_window is not None and step is not None and slots is not None and slots < sliding_window:
            raise ValueError(
                f"With sliding_window={sliding_window}, a cache needs exactly {sliding_window} slots (a ring buffer, for "
                f"generation of any length) or at least {sliding_window} (positions in slots, the window as a mask). "
                f"Received: cache with shape {shapes.format_shape(cache.shape)}"
            )
        if overridden:
            # the user's attention step over the whole cache, with a mask over the filled slots
            queries = reshaping.dynamic_dims(query)[1]
            if step is None:
                cache, step = kv_cache.append_cache(cache, key, value)
            else:
                cache = kv_cache.update_cache(cache, key, value, step)
            slots = reshaping.dynamic_dims(cache)[2]
            filled = tf.cast(step, tf.int32) + tf.cast(queries, tf.int32)
            visible = attention.build_attention_mask(queries, slots, step, filled, use_causal_mask, sliding_window, mask)
            mixed, scores = self._compute_attention(query, cache[0], cache[1], visible, training, return_attention_scores)
            return mixed, scores, cache
        if sliding_window is not None and step is not None and cache.shape[2] == sliding_window:
            # a cache of exactly `sliding_window` slots is a ring buffer: generation of any length in O(W) memory
            result = attention.ring_attention(
                query, key, value, cache, step, attention_mask=mask, use_causal_mask=use_causal_mask,
                scale=self._score_scale(), dropout=self._weight_dropout(training), return_scores=return_attention_scores,
            )
            return result if return_attention_scores else (result[0], None, result[1])
        result = attention.cached_attention(
            query, key, value, cache, step, attention_mask=mask, use_causal_mask=use_causal_mask,
            sliding_window=sliding_window, scale=self._score_scale(), dropout=self._weight_dropout(training),
            return_scores=return_attention_scores,
        )
        if return_attention_scores:
            return result
        return result[0], None, result[1]

    # ------------------------------------------------------- attention step

    def _compute_attention(
        self,
        query: Any,
        key: Any,
        value: Any,
        attention_mask: Any = None,
        training: Any = None,
        return_attention_scores: bool = False,
        use_causal_mask: bool = False,
    ) -> tuple[Any, Any]:
        """Keras' attention step on projected tensors, on ``mlable_core.attention`` where it applies.

        ``(B, T, N, H)`` queries over ``(B, S, N, H)`` keys / values with one
        attention axis and a mask of rank <= 3 (any Keras broadcastable form):
        the core kernel (float32 softmax, fully masked rows all zero). Other
        ranks, several attention axes and flash attention: Keras' own step.
        """
        if _compat.mha_flash_attention(self) and return_attention_scores:
            raise ValueError(
                "Returning attention scores is not supported when flash attention is enabled. "
                "Disable flash attention (flash_attention=False) to get the scores."
            )
        served = (
            _rank(query) == 4
            and tuple(self._attention_axes or ()) == (1,)
            and (attention_mask is None or _rank(attention_mask) <= 3)
            and not _compat.mha_flash_attention(self)
        )
        if not served and self.num_key_value_heads != self._num_heads:
            raise ValueError(
                "Grouped-query heads need (B, T, N, H) projections attending over axis 1, a mask of rank <= 3 and no "
                f"flash attention. Received: query with shape {shapes.format_shape(query.shape)}"
            )
        if not served:
            if use_causal_mask and not _compat.MHA_COMPUTE_ATTENTION_TAKES_CAUSAL:
                causal = self._compute_causal_mask(query, value)
                attention_mask = causal if attention_mask is None else tf.logical_and(tf.cast(attention_mask, tf.bool), causal)
                use_causal_mask = False
            extra = {"use_causal_mask": True} if use_causal_mask else {}
            return super()._compute_attention(
                query, key, value, attention_mask, training, return_attention_scores, **extra
            )
        mask = None if attention_mask is None else _as_rank3_mask(attention_mask)
        result = attention.attention(
            query, key, value, attention_mask=mask, use_causal_mask=bool(use_causal_mask),
            scale=self._score_scale(), dropout=self._weight_dropout(training), return_scores=True,
        )
        mixed, scores = result
        return mixed, (scores if return_attention_scores else None)

    def _chunks_apply(self, query: Any, value: Any, key: Any, training: Any, return_attention_scores: bool) -> bool:
        """Whether an uncached call runs on the chunked kernel (``attention_chunk_size`` set and the call supported)."""
        return (
            self.attention_chunk_size is not None
            and not return_attention_scores
            and not (self._dropout > 0.0 and training is not None and training is not False)
            and type(self)._compute_attention is CachedMultiHeadAttention._compute_attention
            and not _compat.mha_flash_attention(self)
            and {_rank(query), _rank(value), _rank(key)} == {3}
            and tuple(self._attention_axes or (1,)) in ((1,), (-2,))
        )

    def _chunk_mask(self, attention_mask: Any, value_mask: Any, key_mask: Any) -> Any:
        """The user mask and the Keras key-side masks as one broadcastable ``(B, T, S)`` mask (``None``: none).

        The causal and window masks stay structural (the kernel skips their
        hidden blocks), and the query mask applies to the output rows.
        """
        mask = None if attention_mask is None else tf.cast(_as_rank3_mask(attention_mask), tf.bool)
        for side in (value_mask, key_mask):
            if side is not None:
                columns = tf.cast(side, tf.bool)[:, None, :]  # (B, 1, S)
                mask = columns if mask is None else tf.logical_and(mask, columns)
        return mask

    def _chunked_step(self, query: Any, key: Any, value: Any, mask: Any, query_mask: Any, use_causal_mask: bool) -> Any:
        """Chunked attention of the projected ``(B, T, N, H)`` queries; a masked query row gives zeros."""
        mixed = chunked.chunked_attention(
            query, key, value, attention_mask=mask, use_causal_mask=bool(use_causal_mask),
            sliding_window=_compat.mha_sliding_window(self), scale=self._score_scale(),
            query_chunk_size=self.attention_chunk_size, key_chunk_size=self.attention_chunk_size,
        )  # (B, T, N, Hv)
        if query_mask is not None:
            rows = tf.cast(query_mask, tf.bool)[:, :, None, None]  # (B, T, 1, 1)
            mixed = tf.where(rows, mixed, tf.zeros((), mixed.dtype))
        return mixed

    def _score_scale(self) -> float:
        return 1.0 / math.sqrt(float(self._key_dim))

    def _weight_dropout(self, training: Any) -> Any:
        if not self._dropout > 0.0:
            return None
        layer = _compat.mha_dropout_layer(self)
        return lambda weights: layer(weights, training=training)

    # -------------------------------------------------------------- checks

    def _check_causal(self, query: Any, value: Any, use_causal_mask: bool) -> None:
        if not use_causal_mask:
            return
        axes = tuple(self._attention_axes) if self._attention_axes is not None else None
        rank = _rank(query)
        if axes is None and rank == 3:
            axes = (1,)
        if axes != (1,):
            raise ValueError(
                "`use_causal_mask=True` (this layer's default) masks the positions after each query along axis 1, "
                "which is defined only when the layer attends over that single axis. Pass `use_causal_mask=False` "
                f"(Keras' default) for several attention axes. Received: query with shape {shapes.format_shape(query.shape)}, "
                f"value with shape {shapes.format_shape(value.shape)}, attention_axes={axes}"
            )

    def _check_cache_config(self, query: Any, value: Any, key: Any, cache: Any, value_mask: Any, key_mask: Any) -> None:
        ranks = {_rank(tensor) for tensor in (query, value, key)}
        if ranks != {3} or tuple(self._attention_axes or ()) != (1,):
            raise ValueError(
                "A cache needs 3D inputs (B, T, D) attending over axis 1. "
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
                "Keras masks on `value` / `key` only cover the T new positions, not the cache slots written "
                "before: with a cache, pass `attention_mask` of shape (B, T, S) over the slots instead"
            )
        expected = (2, None, None, self.num_key_value_heads, self._key_dim)
        cache_shape = tuple(cache.shape)
        if len(cache_shape) != 5 or any(e is not None and d is not None and d != e for d, e in zip(cache_shape, expected)):
            heads = f"N={self._num_heads}" if self.num_key_value_heads == self._num_heads else f"K={self.num_key_value_heads} key / value heads"
            raise ValueError(
                f"`cache` must have shape (2, B, S, {heads}, H={self._key_dim}). "
                f"Received: cache with shape {shapes.format_shape(cache_shape)}"
            )

    # ---------------------------------------------------- cross-attention

    def compute_cache(self, value: Any, key: Any = None, positions: Any = None) -> tf.Tensor:
        """The keys and values of ``value`` / ``key``, projected once into a read-only cache ``(2, B, S, N, H)``.

        For cross-attention (e.g. a decoder over an encoder's output): compute
        it once, then call the layer with ``cache=..., read_only_cache=True`` at
        every decoding step; nothing is written or copied, and the outputs equal
        the uncached call ``layer(query, value, key, use_causal_mask=False)``.
        With ``rotary``, the keys are rotated at positions ``0 .. S - 1`` (or
        ``positions``). The layer must be built (call it once, or ``build``).
        """
        if key is None:
            key = value
        if not self.built:
            self.build(tuple(value.shape), tuple(value.shape), tuple(key.shape))
        if self._value_dim != self._key_dim:
            raise ValueError(
                "A cache holds keys and values with one head size H, so it needs value_dim == key_dim. "
                f"Received: key_dim={self._key_dim}, value_dim={self._value_dim}"
            )
        projected_key = self.key_dense(key)  # (B, S, N, H)
        projected_value = self.value_dense(value)  # (B, S, N, H)
        if self.rotary is not None:
            settings = self.rotary
            projected_key = rotary.rotate(
                projected_key, 1, -1, positions=positions, max_wavelength=settings["max_wavelength"],
                scaling_factor=settings["scaling_factor"], interleaved=settings["interleaved"],
            )
        return tf.stack([projected_key, projected_value])  # (2, B, S, N, H)

    # -------------------------------------------------------------- shapes

    def compute_output_shape(
        self, query_shape: Any, value_shape: Any, key_shape: Any = None, cache_shape: Any = None
    ) -> Any:
        """Keras' output shape; with ``cache_shape``, ``(outputs shape, cache shape)``.

        The cache grows by ``T`` only when ``step`` is omitted (append), which a
        shape alone cannot tell: the cache shape is returned unchanged.
        """
        outputs = super().compute_output_shape(query_shape, value_shape, key_shape)
        if cache_shape is None:
            return outputs
        return tuple(outputs), tuple(cache_shape)

    def compute_output_spec(
        self,
        query: Any,
        value: Any,
        key: Any = None,
        cache: Any = None,
        step: Any = None,
        training: Any = None,
        attention_mask: Any = None,
        return_attention_scores: bool = False,
        use_causal_mask: bool = True,
        positions: Any = None,
        read_only_cache: bool = False,
        query_mask: Any = None,
        value_mask: Any = None,
        key_mask: Any = None,
    ) -> Any:
        outputs_shape = super().compute_output_shape(query.shape, value.shape, None if key is None else key.shape)
        outputs = keras.KerasTensor(outputs_shape, dtype=self.compute_dtype)
        if cache is None:
            if not return_attention_scores:
                return outputs
            if _rank(query) == 3 and _rank(value) == 3:
                scores_shape = (query.shape[0], self._num_heads, query.shape[1], value.shape[1])
                return outputs, keras.KerasTensor(scores_shape, dtype=self.compute_dtype)
            return super().compute_output_spec(query, value, key, return_attention_scores=True)
        cache_shape = tuple(cache.shape)
        if step is None and not read_only_cache:
            grown = None if cache_shape[2] is None or query.shape[1] is None else cache_shape[2] + query.shape[1]
            cache_shape = cache_shape[:2] + (grown,) + cache_shape[3:]
        new_cache = keras.KerasTensor(cache_shape, dtype=self.compute_dtype)
        if not return_attention_scores:
            return outputs, new_cache
        scores = keras.KerasTensor((query.shape[0], self._num_heads, query.shape[1], cache_shape[2]), dtype=self.compute_dtype)
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

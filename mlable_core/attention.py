"""Key/value cache and multi-head dot-product attention on projected tensors.

Shape letters used in this module:

- ``B`` batch, ``N`` heads, ``H`` head dimension;
- ``F`` the positions given to one call (the query length; for a cached call
  also the number of new keys / values);
- ``S`` the key / value length of plain (uncached) attention;
- ``T`` the slots allocated in a cache.

Cache convention
----------------
A cache is ONE tensor of shape ``(2, B, T, N, H)`` in the compute dtype:
``cache[0]`` holds the keys and ``cache[1]`` the values, and slot ``t`` holds
absolute position ``t``. ``create_cache`` allocates it filled with zeros.

A cached call at ``step`` with ``F`` new positions:

- writes its keys / values into slots ``[step, step + F)``, replacing what was
  there (writing a step twice overwrites, it never accumulates);
- puts query ``i`` at absolute position ``step + i``; with the causal mask it
  sees the slots ``<= step + i``; without it, every written slot ``< step + F``;
- never sees a slot at or beyond ``step + F`` ("empty" slots, whatever they hold);
- combines all this with an optional user mask over the ``T`` slots.

Prefill (``F > 1``) and decode (``F = 1``) are the same call: prefill at
``step=0``, then decode one position at a time at ``step = F_prefill``,
``F_prefill + 1``, ... Decoding position by position gives the same outputs
as one causal pass over the whole sequence.

``step=None`` appends instead: the new keys / values are concatenated after
the existing slots, which are all taken as filled (the cache grows by ``F``
slots per call, so a compiled loop would retrace: pass ``step`` there).

What each call reads and writes
-------------------------------
- Eagerly and in ``tf.function`` graphs the attention reads only the filled
  slots ``cache[:, :, :step + F]`` (a dynamic slice), so its cost grows with the
  filled length, not with ``T``. The update itself returns a new tensor:
  TensorFlow tensors are immutable outside XLA, so writing ``F`` slots copies
  the ``T``-slot cache once per call (a memory copy, no arithmetic).
- Under XLA (``jit_compile=True``, detected while tracing) shapes must be
  static, so the attended length cannot be ``step + F``. The attention reads
  the smallest "bucket" of slots that holds ``step + F`` (powers of two from
  ``MIN_BUCKET`` and the midpoints between them, up to ``T``; see
  ``bucket_lengths``), picked at run time by a ``tf.switch_case``; the mask
  gives the slots in ``[step + F, bucket)`` a weight of exactly 0, so the
  result is the same and the cost stays within 1.5x of the filled length. The
  update is a scatter that XLA performs in place inside a compiled loop (the
  cache buffer is reused across iterations, no copy per step).
- ``span`` overrides this choice: ``"filled"`` (dynamic slice; not under XLA),
  ``"buckets"``, or ``"allocated"`` (every slot, masked).

Writing past the end (``step + F > T``) or at a negative step raises a
``ValueError`` eagerly and when ``step`` is a Python int, and a
``tf.errors.InvalidArgumentError`` with the same message at run time in a graph.
Under XLA, where assertions are dropped, the slots past the end are not written
and the whole output of the overflowing call is NaN, so that the overflow shows
instead of passing silently.

Softmax runs in float32 for float16 / bfloat16 / float32 inputs (scores are
cast up, the weights cast back; float64 stays float64), so half-precision
caches keep full-precision normalization and masking never overflows.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import tensorflow as tf

from mlable_core import shapes
from mlable_core.reshaping import dynamic_dims

# smallest number of slots attended under XLA; below it, bucketing saves nothing
MIN_BUCKET = 64

SPANS = ("auto", "filled", "buckets", "allocated")

# added to masked scores before the float32 softmax; finite so that gradients stay finite
_MASKED_SCORE = -1e9


def in_xla_context() -> bool:
    """Whether the current code is being traced for XLA compilation (``jit_compile=True``).

    True inside a ``tf.function(jit_compile=True)``, in any function it calls
    and in the bodies of its loops and conditionals; False eagerly and in plain
    ``tf.function`` graphs.
    """
    if tf.executing_eagerly():
        return False
    try:
        # TensorFlow marks graphs traced for XLA with an XLA control-flow context
        from tensorflow.python.framework import ops as tf_ops
        from tensorflow.python.ops import control_flow_util
    except ImportError:  # pragma: no cover - a TensorFlow without these internals
        return False
    return bool(control_flow_util.GraphOrParentsInXlaContext(tf_ops.get_default_graph()))


def _static(x: tf.Tensor, name: str, rank: int, letters: str) -> tuple[int | None, ...]:
    if x.shape.rank != rank:
        shape = "<unknown rank>" if x.shape.rank is None else shapes.format_shape(x.shape.as_list())
        raise ValueError(f"`{name}` must have rank {rank}, shape {letters}. Received: {name} with shape {shape}")
    return tuple(x.shape.as_list())


def _check_float(x: tf.Tensor, name: str) -> None:
    if not x.dtype.is_floating:
        raise TypeError(f"`{name}` must be a floating-point tensor. Received: {name} with dtype {x.dtype.name}")


def _check_same_dim(values: dict[str, int | None], what: str, shapes_text: str) -> None:
    known = {name: dim for name, dim in values.items() if dim is not None}
    if len(set(known.values())) > 1:
        detail = ", ".join(f"{name}={dim}" for name, dim in known.items())
        raise ValueError(f"The {what} must agree: {detail}. Received: {shapes_text}")


def _normalize_step(step: int | tf.Tensor) -> tuple[tf.Tensor, int | None]:
    """``step`` as an int32 scalar tensor, plus its value when known in Python."""
    if tf.is_tensor(step) or isinstance(step, tf.Variable):
        step = tf.convert_to_tensor(step)
        if not step.dtype.is_integer:
            raise TypeError(f"`step` must be an integer scalar. Received: step with dtype {step.dtype.name}")
        if step.shape.rank not in (None, 0):
            raise ValueError(f"`step` must be a scalar. Received: step with shape {shapes.format_shape(step.shape.as_list())}")
        value = int(step.numpy()) if tf.executing_eagerly() else tf.get_static_value(step)
        return tf.cast(tf.reshape(step, ()), tf.int32), None if value is None else int(value)
    value = shapes.check_int(step, "step")
    return tf.constant(value, tf.int32), value


def _overflow_message(cache_shape: Sequence[int | None], values: tuple[int, int, int] | None = None) -> str:
    head = f"The new positions must fit in the cache: 0 <= step and step + F <= T, for a cache of shape {shapes.format_shape(cache_shape)}. "
    if values is None:
        return head + "Received at run time: step, F new positions, T slots ="
    step, new, slots = values
    return head + f"Received: step={step}, F={new} new positions, T={slots} slots"


def _check_fits(
    step: tf.Tensor, step_value: int | None, new: int | tf.Tensor, slots: int | tf.Tensor, cache_shape: Sequence[int | None]
) -> tuple[list[tf.Operation], tf.Tensor | None]:
    """Validates ``0 <= step`` and ``step + F <= T``.

    Returns:
        Graph assertions to depend on, and (under XLA only) a boolean scalar
        that is True when the write does not fit, to poison the output with.
    """
    if step_value is not None and isinstance(new, int) and isinstance(slots, int):
        if step_value < 0 or step_value + new > slots:
            raise ValueError(_overflow_message(cache_shape, (step_value, new, slots)))
        return [], None
    # eagerly every value is known and was checked above: this is a graph
    fits = tf.logical_and(step >= 0, step + tf.cast(new, tf.int32) <= tf.cast(slots, tf.int32))
    if in_xla_context():
        # XLA drops assertions: report the overflow through the output instead
        return [], tf.logical_not(fits)
    return [tf.debugging.Assert(fits, [_overflow_message(cache_shape), step, new, slots])], None


@tf.autograph.experimental.do_not_convert
def create_cache(batch_size: int, cache_length: int, num_heads: int, head_dim: int, dtype: tf.DType | str = "float32") -> tf.Tensor:
    """Allocates an empty key/value cache of shape ``(2, B, T, N, H)``, filled with zeros.

    Allocate it in the compute dtype of the attention layer (e.g. ``float16``
    under ``mixed_float16``): a cache of another dtype than the keys and values
    written into it is rejected (under XLA such a write fails deep in the
    compiler).

    Args:
        batch_size: ``B``, a positive int.
        cache_length: ``T``, the number of position slots, a positive int.
        num_heads: ``N``, a positive int.
        head_dim: ``H``, the key (and value) size per head, a positive int.
        dtype: a floating dtype.

    Returns:
        A zero tensor of shape ``(2, batch_size, cache_length, num_heads, head_dim)``.

    Raises:
        TypeError: a size is not an int, or ``dtype`` is not floating.
        ValueError: a size is not positive.

    Example:
        >>> create_cache(batch_size=4, cache_length=128, num_heads=8, head_dim=64, dtype="bfloat16").shape
        TensorShape([2, 4, 128, 8, 64])
    """
    dims = [
        shapes.check_int(batch_size, "batch_size", minimum=1),
        shapes.check_int(cache_length, "cache_length", minimum=1),
        shapes.check_int(num_heads, "num_heads", minimum=1),
        shapes.check_int(head_dim, "head_dim", minimum=1),
    ]
    try:
        dtype = tf.as_dtype(dtype)
    except TypeError as error:
        raise TypeError(f"`dtype` must be a floating dtype. Received: dtype={dtype!r}") from error
    if not dtype.is_floating:
        raise TypeError(f"`dtype` must be a floating dtype. Received: dtype={dtype.name}")
    return tf.zeros([2] + dims, dtype=dtype)  # (2, B, T, N, H)


def _check_cache_and_update(cache: tf.Tensor, key: tf.Tensor, value: tf.Tensor) -> None:
    cache_shape = _static(cache, "cache", 5, "(2, B, T, N, H)")
    key_shape = _static(key, "key", 4, "(B, F, N, H)")
    value_shape = _static(value, "value", 4, "(B, F, N, H)")
    _check_float(cache, "cache")
    if cache_shape[0] not in (None, 2):
        raise ValueError(
            f"`cache` must stack keys and values on axis 0, shape (2, B, T, N, H). Received: cache with shape {shapes.format_shape(cache_shape)}"
        )
    text = f"cache {shapes.format_shape(cache_shape)}, key {shapes.format_shape(key_shape)}, value {shapes.format_shape(value_shape)}"
    if key_shape != value_shape and any(
        k is not None and v is not None and k != v for k, v in zip(key_shape, value_shape)
    ):
        raise ValueError(f"`key` and `value` must have the same shape (B, F, N, H). Received: {text}")
    _check_same_dim({"cache B": cache_shape[1], "key B": key_shape[0], "value B": value_shape[0]}, "batch sizes B", text)
    _check_same_dim({"cache N": cache_shape[3], "key N": key_shape[2], "value N": value_shape[2]}, "head counts N", text)
    _check_same_dim({"cache H": cache_shape[4], "key H": key_shape[3], "value H": value_shape[3]}, "head sizes H", text)
    for name, tensor in (("key", key), ("value", value)):
        if tensor.dtype != cache.dtype:
            raise TypeError(
                f"`{name}` must have the dtype of `cache` (allocate the cache in the compute dtype). "
                f"Received: {name} dtype {tensor.dtype.name}, cache dtype {cache.dtype.name}"
            )


def _scatter_slots(cache: tf.Tensor, key: tf.Tensor, value: tf.Tensor, slots: tf.Tensor) -> tf.Tensor:
    """Writes ``key`` / ``value`` ``(B, F, N, H)`` into the cache slots ``slots`` ``(F,)`` (no validation)."""
    batch, new = dynamic_dims(key)[:2]
    update = tf.stack([key, value])  # (2, B, F, N, H)
    kind = tf.reshape(tf.range(2), (2, 1, 1))  # (2, 1, 1)
    row = tf.reshape(tf.range(batch), (1, -1, 1))  # (1, B, 1)
    slot = tf.reshape(slots, (1, 1, -1))  # (1, 1, F)
    grid = tf.stack([2, batch, new])
    indices = tf.stack([tf.broadcast_to(part, grid) for part in (kind, row, slot)], axis=-1)  # (2, B, F, 3)
    return tf.tensor_scatter_nd_update(cache, indices, update)


def _scatter(cache: tf.Tensor, key: tf.Tensor, value: tf.Tensor, step: tf.Tensor) -> tf.Tensor:
    """Writes ``key`` / ``value`` into slots ``[step, step + F)`` (no validation)."""
    return _scatter_slots(cache, key, value, step + tf.range(dynamic_dims(key)[1]))


def append_cache(cache: tf.Tensor, key: tf.Tensor, value: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Appends ``F`` new keys / values ``(B, F, N, H)`` after every existing slot of a ``(2, B, T, N, H)`` cache.

    Returns:
        ``(cache with T + F slots, T)``: the grown cache and the slot of the first new position.

    Example:
        >>> grown, step = append_cache(create_cache(1, 3, 2, 4), tf.ones((1, 2, 2, 4)), tf.ones((1, 2, 2, 4)))
        >>> grown.shape, int(step)
        (TensorShape([2, 1, 5, 2, 4]), 3)
    """
    step = tf.shape(cache, out_type=tf.int32)[2]
    return tf.concat([cache, tf.stack([key, value])], axis=2), step  # (2, B, T + F, N, H)


@tf.autograph.experimental.do_not_convert
def update_cache(cache: tf.Tensor, key: tf.Tensor, value: tf.Tensor, step: int | tf.Tensor) -> tf.Tensor:
    """Writes ``F`` new keys and values into the slots ``[step, step + F)`` of a cache.

    The slots are replaced (a step written twice holds the last write); every
    other slot is unchanged. Under XLA inside a compiled loop the write is done
    in place on the loop's cache buffer; elsewhere the result is a new tensor
    (one copy of the cache).

    Args:
        cache: ``(2, B, T, N, H)``, keys at index 0 and values at index 1.
        key: ``(B, F, N, H)``, in the dtype of ``cache``.
        value: ``(B, F, N, H)``, in the dtype of ``cache``.
        step: the slot of the first new position: a Python int or an integer
            scalar tensor (e.g. an int32 loop counter).

    Returns:
        The updated cache, same shape and dtype.

    Raises:
        ValueError: shapes do not match, or the write does not fit
            (``step < 0`` or ``step + F > T``) and this is known eagerly or while tracing.
        TypeError: the dtypes differ, or ``step`` is not an integer.
        tf.errors.InvalidArgumentError: in a graph, the write does not fit at run time.

    Under XLA, assertions are dropped: positions past the end are not written
    (``cached_attention`` makes the output NaN in that case).

    Example:
        >>> cache = create_cache(1, 8, 2, 4)
        >>> new = tf.ones((1, 3, 2, 4))
        >>> update_cache(cache, new, 2 * new, step=5)[1, 0, :, 0, 0].numpy()
        array([0., 0., 0., 0., 0., 2., 2., 2.], dtype=float32)
    """
    cache, key, value = (tf.convert_to_tensor(t) for t in (cache, key, value))
    _check_cache_and_update(cache, key, value)
    step, step_value = _normalize_step(step)
    new = dynamic_dims(key)[1]
    slots = dynamic_dims(cache)[2]
    checks, _ = _check_fits(step, step_value, new, slots, tuple(cache.shape.as_list()))
    with tf.control_dependencies(checks):
        return _scatter(cache, key, value, step)


@tf.autograph.experimental.do_not_convert
def build_attention_mask(
    query_length: int | tf.Tensor,
    key_length: int | tf.Tensor,
    step: int | tf.Tensor = 0,
    filled_length: int | tf.Tensor | None = None,
    use_causal_mask: bool = True,
    sliding_window: int | None = None,
    mask: tf.Tensor | None = None,
) -> tf.Tensor:
    """Which key slots each query position may attend to, as a boolean tensor.

    Query ``i`` sits at absolute position ``step + i`` and key slot ``j`` at
    position ``j``. Slot ``j`` is visible from query ``i`` when all of these hold:

    - ``j < filled_length`` (slots beyond are empty; ``None``: every slot is filled);
    - ``j <= step + i`` if ``use_causal_mask``;
    - ``|step + i - j| < sliding_window`` if a window is given;
    - ``mask[..., i, j]`` if a user mask is given.

    Args:
        query_length: ``F``, the number of query positions.
        key_length: the number of key slots (``S``, or ``T`` for a cache).
        step: the absolute position of the first query.
        filled_length: slots at or beyond it are never visible.
        use_causal_mask: hide the positions after each query.
        sliding_window: a positive int, or ``None`` for no window.
        mask: an optional boolean (or 0 / 1) user mask of shape
            ``(B, F, key_length)``, where ``B``, ``F`` and ``key_length`` may be 1
            (broadcast; ``(B, F, 1)`` is a mask on the queries alone).

    Returns:
        A boolean tensor of shape ``(1, F, key_length)``, or ``(B, F, key_length)``
        with a user mask.

    Raises:
        ValueError: the user mask has another rank or a mismatching static shape.

    Example:
        >>> build_attention_mask(2, 5, step=2, filled_length=4).numpy().astype(int)
        array([[[1, 1, 1, 0, 0],
                [1, 1, 1, 1, 0]]])
    """
    step = tf.cast(step, tf.int32)
    queries = tf.reshape(step + tf.range(query_length), (1, -1, 1))  # (1, F, 1)
    slots = tf.reshape(tf.range(key_length), (1, 1, -1))  # (1, 1, S)
    visible = tf.ones_like(queries, dtype=tf.bool) & tf.ones_like(slots, dtype=tf.bool)  # (1, F, S)
    if filled_length is not None:
        visible &= slots < tf.cast(filled_length, tf.int32)
    if use_causal_mask:
        visible &= slots <= queries
    if sliding_window is not None:
        window = shapes.check_int(sliding_window, "sliding_window", minimum=1)
        visible &= tf.abs(queries - slots) < window
    if mask is not None:
        visible &= _user_mask(mask, query_length, key_length)
    return visible


def _check_mask_batch(mask: Any, query: tf.Tensor) -> None:
    """A user mask's batch size must be 1 or the queries' (checked when both are known while tracing)."""
    if mask is None:
        return
    shape = getattr(mask, "shape", None)
    rows = None if shape is None or len(shape) != 3 else shape[0]
    batch = query.shape[0]
    if rows is not None and batch is not None and rows not in (1, batch):
        raise ValueError(
            f"`attention_mask` must have shape (B, F, S) with B={batch} (the batch of `query`) or 1. "
            f"Received: attention_mask with shape {shapes.format_shape(tuple(shape))}, query with shape {shapes.format_shape(query.shape.as_list())}"
        )


def _user_mask(mask: tf.Tensor, query_length: int | tf.Tensor, key_length: int | tf.Tensor) -> tf.Tensor:
    """The user mask as booleans, after checking its static shape against ``(B, F, S)``."""
    mask = tf.convert_to_tensor(mask)
    static = _static(mask, "attention_mask", 3, "(B, F, S) with S the key slots")
    queries = query_length if isinstance(query_length, int) else None
    keys = key_length if isinstance(key_length, int) else None
    bad_queries = static[1] is not None and queries is not None and static[1] not in (1, queries)
    bad_keys = static[2] is not None and keys is not None and static[2] not in (1, keys)
    if bad_queries or bad_keys:
        raise ValueError(
            f"`attention_mask` must have shape (B, F, S) with F={queries} query positions (or 1) and "
            f"S={keys} key slots (or 1). Received: attention_mask with shape {shapes.format_shape(static)}"
        )
    if mask.dtype == tf.bool:
        return mask
    if mask.dtype.is_floating:
        # a float mask must hold 0 / 1: an additive mask (0 visible, -1e9 hidden) read as "nonzero = visible"
        # would be inverted silently (asserted eagerly and in graphs; XLA drops the assertion)
        binary = tf.reduce_all(tf.logical_or(tf.equal(mask, 0), tf.equal(mask, 1)))
        check = tf.debugging.Assert(
            binary,
            ["`attention_mask` of a float dtype must hold only 0 (hidden) and 1 (visible); an additive mask "
             "(0 visible, a large negative number hidden) must be converted first, e.g. `attention_mask == 0`. "
             "Received values with min and max:", tf.reduce_min(mask), tf.reduce_max(mask)],
        )
        with tf.control_dependencies([check]):
            return tf.not_equal(mask, tf.zeros((), mask.dtype))
    return tf.not_equal(mask, tf.zeros((), mask.dtype))


def _masked_softmax(scores: tf.Tensor, visible: tf.Tensor, dtype: tf.DType) -> tf.Tensor:
    """Softmax over the last axis of ``(B, N, F, S)`` scores where ``visible`` (``(B, 1, F, S)``), 0 elsewhere.

    It runs in float32 for the half types and float32 (float64 stays float64),
    then casts the weights to ``dtype``; a row with no visible slot is all zeros.
    """
    softmax_dtype = tf.float64 if dtype == tf.float64 else tf.float32
    scores = tf.where(visible, tf.cast(scores, softmax_dtype), tf.constant(_MASKED_SCORE, softmax_dtype))
    weights = tf.where(visible, tf.nn.softmax(scores, axis=-1), tf.zeros((), softmax_dtype))  # (B, N, F, S)
    return tf.cast(weights, dtype)


def _attend(
    query: tf.Tensor,
    key: tf.Tensor,
    value: tf.Tensor,
    visible: tf.Tensor,
    scale: float,
    dropout: Callable[[tf.Tensor], tf.Tensor] | None,
    return_scores: bool,
) -> tuple[tf.Tensor, tf.Tensor | None]:
    """Masked softmax attention of ``(B, F, N, H)`` queries over ``(B, S, N, H)`` keys / values.

    With ``K < N`` key / value heads (grouped-query attention), query head ``n``
    reads key / value head ``n // (N / K)``; the keys and values are never
    repeated to ``N`` heads: the queries are viewed as ``(B, F, K, N / K, H)``.
    """
    dtype = query.dtype
    query = query * tf.cast(scale, dtype)
    heads, groups = query.shape[2], key.shape[2]
    if heads is not None and groups is not None and groups != heads:
        return _attend_grouped(query, key, value, visible, groups, dropout, return_scores)
    if query.shape[1] == 1:
        # one query position (decoding): multiply and reduce in the cache layout rather than
        # transposing the keys and values to (B, N, S, H) for a batched matmul
        scores = tf.reduce_sum(key * query, axis=-1)  # (B, S, N)
        scores = tf.transpose(scores, (0, 2, 1))[:, :, None]  # (B, N, 1, S)
    else:
        scores = tf.einsum("bfnh,bsnh->bnfs", query, key)  # (B, N, F, S)
    weights = _masked_softmax(scores, visible[:, None], dtype)  # (B, N, F, S)
    mixed = weights if dropout is None else dropout(weights)
    if query.shape[1] == 1:
        mixed_slots = tf.transpose(mixed[:, :, 0], (0, 2, 1))[..., None]  # (B, S, N, 1)
        output = tf.reduce_sum(mixed_slots * value, axis=1, keepdims=True)  # (B, 1, N, H)
    else:
        output = tf.einsum("bnfs,bsnh->bfnh", mixed, value)  # (B, F, N, H)
    return output, (weights if return_scores else None)


def _attend_grouped(
    query: tf.Tensor,
    key: tf.Tensor,
    value: tf.Tensor,
    visible: tf.Tensor,
    groups: int,
    dropout: Callable[[tf.Tensor], tf.Tensor] | None,
    return_scores: bool,
) -> tuple[tf.Tensor, tf.Tensor | None]:
    """``_attend`` for ``K = groups`` key / value heads shared by ``N / K`` query heads each (scaled queries)."""
    batch, length, heads, head_dim = dynamic_dims(query)
    share = query.shape[2] // groups
    if query.shape[1] == 1 and query.shape[3] is not None and value.shape[3] is not None:
        return _attend_grouped_one(query, key, value, visible, groups, dropout, return_scores)
    grouped = tf.reshape(query, [batch, length, groups, share, head_dim])  # (B, F, K, G, H)
    scores = tf.einsum("bfkgh,bskh->bkgfs", grouped, key)  # (B, K, G, F, S)
    slots = dynamic_dims(key)[1]
    scores = tf.reshape(scores, [batch, heads, length, slots])  # (B, N, F, S), head n = k * G + g
    weights = _masked_softmax(scores, visible[:, None], query.dtype)  # (B, N, F, S)
    mixed = weights if dropout is None else dropout(weights)
    mixed = tf.reshape(mixed, [batch, groups, share, length, slots])  # (B, K, G, F, S)
    output = tf.einsum("bkgfs,bskh->bfkgh", mixed, value)  # (B, F, K, G, Hv)
    value_dim = dynamic_dims(value)[3]
    output = tf.reshape(output, [batch, length, heads, value_dim])  # (B, F, N, Hv)
    return output, (weights if return_scores else None)


def _attend_grouped_one(
    query: tf.Tensor,
    key: tf.Tensor,
    value: tf.Tensor,
    visible: tf.Tensor,
    groups: int,
    dropout: Callable[[tf.Tensor], tf.Tensor] | None,
    return_scores: bool,
) -> tuple[tf.Tensor, tf.Tensor | None]:
    """Grouped attention of ONE query position, reading the keys / values in their cache layout.

    Seen as ``(B, S, K * H)``, the keys multiply a block-diagonal ``(K * H, N)``
    matrix of the queries (query head ``n`` in the block of its key head), so
    one batched matmul scores every head without transposing or repeating the
    keys; the values are read the same way and each head keeps its block.
    """
    batch, _, heads, head_dim = dynamic_dims(query)
    value_dim = value.shape[3]
    share = query.shape[2] // groups
    slots = dynamic_dims(key)[1]
    dtype = query.dtype
    owner = tf.one_hot(tf.range(heads) // share, groups, dtype=dtype)  # (N, K): the key head of each query head
    blocks = query[:, 0, :, None, :] * owner[None, :, :, None]  # (B, N, K, H), zero outside the own block
    blocks = tf.transpose(tf.reshape(blocks, [batch, heads, groups * head_dim]), (0, 2, 1))  # (B, K * H, N)
    flat_keys = tf.reshape(key, [batch, slots, groups * head_dim])  # (B, S, K * H), a free reshape
    scores = tf.transpose(tf.matmul(flat_keys, blocks), (0, 2, 1))[:, :, None]  # (B, N, 1, S)
    weights = _masked_softmax(scores, visible[:, None], dtype)  # (B, N, 1, S)
    mixed = weights if dropout is None else dropout(weights)
    flat_values = tf.reshape(value, [batch, slots, groups * value_dim])  # (B, S, K * Hv)
    every = tf.reshape(tf.matmul(mixed[:, :, 0], flat_values), [batch, heads, groups, value_dim])  # (B, N, K, Hv)
    output = tf.reduce_sum(every * owner[None, :, :, None], axis=2)[:, None]  # (B, 1, N, Hv): each head's own block
    return output, (weights if return_scores else None)


def _attend_rows(
    query: tf.Tensor,
    cache: tf.Tensor,
    length: tf.Tensor,
    visible: tf.Tensor,
    scale: float,
    dropout: Callable[[tf.Tensor], tf.Tensor] | None,
    return_scores: bool,
) -> tuple[tf.Tensor, tf.Tensor | None]:
    """``_attend`` for one query position over the first ``length`` slots of a cache, outside XLA.

    Seen as rows ``(2 * B * T, N * H)``, the keys (or values) of one batch row
    up to ``length`` are a contiguous block of rows, which TensorFlow slices
    without copying; two matmuls per batch row then read them once. The query
    of head ``n`` sits on the diagonal block ``n`` of a ``(N * H, N)`` matrix, so
    one matmul scores every head (the other blocks are zeros), and the heads'
    outputs are the diagonal blocks of ``weights @ values``. This avoids the
    ``(B, L, N, H)`` temporaries of the plain path, whose allocation dominates
    decoding at long filled lengths. Needs static ``B, T, N, H``.
    """
    _, batch, slots, heads, head_dim = cache.shape.as_list()
    dtype = query.dtype
    width = heads * head_dim
    rows = tf.reshape(cache, (2 * batch * slots, width))  # (2 * B * T, N * H): row (kind * B + b) * T + t
    size = tf.stack([length, width])
    eye = tf.eye(heads, dtype=dtype)  # (N, N)
    query = query[:, 0] * tf.cast(scale, dtype)  # (B, N, H)
    blocks = tf.reshape(query[..., None] * eye[:, None, :], (batch, width, heads))  # (B, N * H, N)
    scores = tf.stack([tf.matmul(tf.slice(rows, [b * slots, 0], size), blocks[b]) for b in range(batch)])  # (B, L, N)
    scores = tf.transpose(scores, (0, 2, 1))[:, :, None]  # (B, N, 1, L)
    weights = _masked_softmax(scores, visible[:, None], dtype)  # (B, N, 1, L)
    mixed = weights if dropout is None else dropout(weights)
    outputs = []
    for b in range(batch):
        values = tf.slice(rows, [(batch + b) * slots, 0], size)  # (L, N * H)
        every = tf.reshape(tf.matmul(mixed[b, :, 0], values), (heads, heads, head_dim))  # (N, N, H): weights of head i on values of head j
        outputs.append(tf.transpose(tf.linalg.diag_part(tf.transpose(every, (2, 0, 1)))))  # (N, H): i == j
    output = tf.stack(outputs)[:, None]  # (B, 1, N, H)
    return output, (weights if return_scores else None)


def _check_qkv(query: tf.Tensor, key: tf.Tensor, value: tf.Tensor) -> None:
    query_shape = _static(query, "query", 4, "(B, F, N, H)")
    key_shape = _static(key, "key", 4, "(B, S, N, H)")
    value_shape = _static(value, "value", 4, "(B, S, N, H)")
    text = f"query {shapes.format_shape(query_shape)}, key {shapes.format_shape(key_shape)}, value {shapes.format_shape(value_shape)}"
    for tensor, name in ((query, "query"), (key, "key"), (value, "value")):
        _check_float(tensor, name)
        if tensor.dtype != query.dtype:
            raise TypeError(f"`query`, `key` and `value` must share one dtype. Received: {text} with dtypes {query.dtype.name}, {key.dtype.name}, {value.dtype.name}")
    _check_same_dim({"query B": query_shape[0], "key B": key_shape[0], "value B": value_shape[0]}, "batch sizes B", text)
    _check_same_dim({"key S": key_shape[1], "value S": value_shape[1]}, "key and value lengths S", text)
    _check_same_dim({"key N": key_shape[2], "value N": value_shape[2]}, "key and value head counts", text)
    if query_shape[2] is not None and key_shape[2] is not None and query_shape[2] % key_shape[2]:
        raise ValueError(
            "The key / value head count K must divide the query head count N (grouped-query attention: each key / "
            f"value head serves N / K query heads). Received: {text}"
        )
    _check_same_dim({"query H": query_shape[3], "key H": key_shape[3]}, "query and key head sizes H", text)


def _scale(query: tf.Tensor, scale: float | tf.Tensor | None) -> float | tf.Tensor:
    """The score scale: a Python float, or a scalar tensor / ``tf.Variable`` kept as is (a learnable temperature
    keeps its gradient, and a symbolic tensor works inside ``tf.function``)."""
    if isinstance(scale, (tf.Tensor, tf.Variable)) or (scale is not None and hasattr(scale, "dtype") and hasattr(scale, "shape")):
        tensor = tf.convert_to_tensor(scale) if not isinstance(scale, tf.Variable) else scale
        if tensor.shape.rank not in (None, 0) or not tensor.dtype.is_floating:
            raise ValueError(
                f"`scale` must be a number or a floating scalar tensor. Received: scale with shape {tensor.shape} and dtype {tensor.dtype.name}"
            )
        return scale
    if scale is not None:
        if isinstance(scale, bool) or not isinstance(scale, (int, float)):
            raise TypeError(f"`scale` must be a number or a floating scalar tensor. Received: scale={scale!r}")
        return float(scale)
    head_dim = query.shape[-1]
    if head_dim is None:
        raise ValueError("The head size (last axis of `query`) must be known to derive the default `scale` = 1 / sqrt(H)")
    return 1.0 / math.sqrt(head_dim)


@tf.autograph.experimental.do_not_convert
def attention(
    query: tf.Tensor,
    key: tf.Tensor,
    value: tf.Tensor,
    attention_mask: tf.Tensor | None = None,
    use_causal_mask: bool = True,
    sliding_window: int | None = None,
    scale: float | tf.Tensor | None = None,
    dropout: Callable[[tf.Tensor], tf.Tensor] | None = None,
    return_scores: bool = False,
) -> tf.Tensor | tuple[tf.Tensor, tf.Tensor]:
    """Multi-head dot-product attention on projected queries, keys and values (no cache).

    ``softmax(scale * q . k + mask) . v`` per head, with the softmax in float32.
    The causal mask aligns the first query with the first key (query ``i``
    sees keys ``j <= i``), as ``keras.layers.MultiHeadAttention`` does. A row
    whose every key is masked gets all-zero weights.

    Args:
        query: ``(B, F, N, H)``.
        key: ``(B, S, N, H)``.
        value: ``(B, S, N, Hv)``.
        attention_mask: optional boolean ``(B, F, S)`` (``B``, ``F`` may be 1).
        use_causal_mask: hide the keys after each query.
        sliding_window: optional positive int, keys farther than it are hidden.
        scale: the score scale, ``1 / sqrt(H)`` by default; a float, or a scalar tensor / ``tf.Variable`` (its gradient flows).
        dropout: optional callable applied to the attention weights before
            they mix the values (e.g. a bound Keras ``Dropout``).
        return_scores: also return the weights.

    Returns:
        ``(B, F, N, Hv)`` in the query dtype, and with ``return_scores`` the
        weights ``(B, N, F, S)`` (each visible row sums to 1).

    Example:
        >>> q = k = v = tf.random.normal((2, 5, 4, 8))
        >>> attention(q, k, v).shape
        TensorShape([2, 5, 4, 8])
    """
    query, key, value = (tf.convert_to_tensor(t) for t in (query, key, value))
    _check_qkv(query, key, value)
    _check_mask_batch(attention_mask, query)
    query_length, key_length = dynamic_dims(query)[1], dynamic_dims(key)[1]
    visible = build_attention_mask(
        query_length, key_length, 0, None, use_causal_mask, sliding_window, attention_mask
    )
    output, scores = _attend(query, key, value, visible, _scale(query, scale), dropout, return_scores)
    return (output, scores) if return_scores else output


def bucket_lengths(cache_length: int, min_bucket: int = MIN_BUCKET) -> tuple[int, ...]:
    """The attended lengths used under XLA, each at most 1.5x the previous one.

    Powers of two from ``min_bucket`` and the midpoints ``3 * 2**k`` between
    them, below ``cache_length``, then ``cache_length`` itself: a call reads at
    most 1.5x the filled slots (beyond the first bucket), with about
    ``2 * log2(T / min_bucket)`` compiled branches.

    Example:
        >>> bucket_lengths(300)
        (64, 96, 128, 192, 256, 300)
    """
    cache_length = shapes.check_int(cache_length, "cache_length", minimum=1)
    power = shapes.check_int(min_bucket, "min_bucket", minimum=1)
    lengths = []
    while power < cache_length:
        lengths += [length for length in (power, power * 3 // 2) if length < cache_length]
        power *= 2
    return tuple(lengths) + (cache_length,)


@tf.autograph.experimental.do_not_convert
def cached_attention(
    query: tf.Tensor,
    key: tf.Tensor,
    value: tf.Tensor,
    cache: tf.Tensor,
    step: int | tf.Tensor | None,
    attention_mask: tf.Tensor | None = None,
    use_causal_mask: bool = True,
    sliding_window: int | None = None,
    scale: float | tf.Tensor | None = None,
    dropout: Callable[[tf.Tensor], tf.Tensor] | None = None,
    return_scores: bool = False,
    span: str = "auto",
) -> tuple[tf.Tensor, tf.Tensor] | tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """One attention step with a key/value cache: write the new keys / values, then attend.

    See the module docstring for the cache convention. Prefill (``F > 1``)
    and decode (``F = 1``) are the same call; decoding a sequence in chunks of
    any sizes gives the outputs of one causal pass over it.

    Args:
        query: ``(B, F, N, H)`` projected queries.
        key: ``(B, F, N, H)`` projected keys of the same ``F`` positions.
        value: ``(B, F, N, H)`` projected values.
        cache: ``(2, B, T, N, H)`` in the dtype of the projections.
        step: absolute position of the first new position (Python int or int
            scalar tensor); ``None`` appends after the existing slots (the
            cache grows by ``F``, and every slot counts as filled).
        attention_mask: optional boolean ``(B, F, T)`` over the cache slots
            (with ``step=None``: over the ``T + F`` slots after the append).
        use_causal_mask: query ``i`` sees slots ``<= step + i`` only.
        sliding_window: optional positive int; slots at distance ``>=`` it are hidden.
        scale: score scale, ``1 / sqrt(H)`` by default; a float, or a scalar tensor / ``tf.Variable``.
        dropout: optional callable applied to the attention weights.
        return_scores: also return the weights ``(B, N, F, T)``.
        span: which slots the attention reads: ``"auto"`` (``"filled"``
            outside XLA, ``"buckets"`` under XLA), ``"filled"``, ``"buckets"``
            or ``"allocated"``; every choice gives the same result.

    Returns:
        ``(output, new_cache)``, or ``(output, scores, new_cache)`` with
        ``return_scores``: ``output`` is ``(B, F, N, H)``; ``scores`` is
        ``(B, N, F, T)`` with exactly 0 on masked and empty slots.

    Raises:
        ValueError: mismatching shapes, an unknown ``span``, ``"filled"`` under
            XLA, or a write past the end known eagerly or while tracing.
        TypeError: dtypes differ or ``step`` is not an integer.
        tf.errors.InvalidArgumentError: in a graph, a write past the end at run time.

    Example:
        >>> cache = create_cache(batch_size=2, cache_length=16, num_heads=4, head_dim=8)
        >>> q = k = v = tf.random.normal((2, 3, 4, 8))
        >>> output, cache = cached_attention(q, k, v, cache, step=0)  # prefill 3 positions
        >>> q = k = v = tf.random.normal((2, 1, 4, 8))
        >>> output, cache = cached_attention(q, k, v, cache, step=3)  # decode the 4th
        >>> output.shape
        TensorShape([2, 1, 4, 8])
    """
    if span not in SPANS:
        raise ValueError(f"`span` must be one of {SPANS}. Received: span={span!r}")
    query, key, value, cache = (tf.convert_to_tensor(t) for t in (query, key, value, cache))
    _check_qkv(query, key, value)
    _check_mask_batch(attention_mask, query)
    _check_cache_and_update(cache, key, value)
    query_shape, key_shape = query.shape.as_list(), key.shape.as_list()
    if query_shape[1] is not None and key_shape[1] is not None and query_shape[1] != key_shape[1]:
        raise ValueError(
            "With a cache, `query`, `key` and `value` must cover the same F new positions. "
            f"Received: query with shape {shapes.format_shape(query_shape)}, key with shape {shapes.format_shape(key_shape)}"
        )
    scale = _scale(query, scale)
    xla = in_xla_context()
    if span == "filled" and xla:
        raise ValueError('`span="filled"` slices the cache to a length known only at run time, which XLA cannot compile: use "buckets" or "allocated"')
    new = dynamic_dims(query)[1]
    if step is None:
        # append: the existing slots are all filled, the new positions follow them
        cache, step_tensor = append_cache(cache, key, value)  # (2, B, T + F, N, H)
        poisoned = None
        checks = []
    else:
        step_tensor, step_value = _normalize_step(step)
        slots = dynamic_dims(cache)[2]
        checks, poisoned = _check_fits(step_tensor, step_value, new, slots, tuple(cache.shape.as_list()))
        with tf.control_dependencies(checks):
            cache = _scatter(cache, key, value, step_tensor)
    slots = dynamic_dims(cache)[2]
    filled = step_tensor + tf.cast(new, tf.int32)
    if span == "auto":
        span = "buckets" if xla else "filled"
    if span == "buckets" and not isinstance(slots, int):
        span = "allocated"  # buckets need a static T

    # the row-slice decode path unrolls one matmul pair per batch row: kept for B = 1 only, so that no graph
    # grows with the batch (at B = 512 it had 11,896 ops and took 12 s to trace)
    row_slices = (
        span == "filled" and query.shape[1] == 1 and all(dim is not None for dim in cache.shape.as_list())
        and query.shape[2] == cache.shape[3] and cache.shape[1] == 1
    )

    def attend_over(length: int | tf.Tensor) -> tuple[tf.Tensor, tf.Tensor | None]:
        mask = None if attention_mask is None else tf.convert_to_tensor(attention_mask)
        if mask is not None:
            _user_mask(mask, new, slots)
            mask = mask[:, :, :length]
        visible = build_attention_mask(new, length, step_tensor, filled, use_causal_mask, sliding_window, mask)
        if row_slices:
            output, scores = _attend_rows(query, cache, length, visible, scale, dropout, return_scores)
        else:
            keys, values = cache[0, :, :length], cache[1, :, :length]  # (B, L, N, H)
            output, scores = _attend(query, keys, values, visible, scale, dropout, return_scores)
        if scores is not None and not (isinstance(length, int) and isinstance(slots, int) and length == slots):
            scores = tf.pad(scores, [[0, 0], [0, 0], [0, 0], [0, slots - length]])  # (B, N, F, T)
        return output, scores

    if span == "buckets":
        lengths = bucket_lengths(slots)
        index = tf.reduce_sum(tf.cast(filled > tf.constant(lengths[:-1], tf.int32), tf.int32))
        branches = [lambda length=length: _pack(attend_over(length)) for length in lengths]
        output, scores = _unpack(tf.switch_case(index, branches), return_scores)
    else:
        output, scores = attend_over(filled if span == "filled" else slots)
    if poisoned is not None:
        output = tf.where(poisoned, tf.constant(float("nan"), output.dtype), output)
    if checks:
        with tf.control_dependencies(checks):
            output = tf.identity(output)
    return (output, scores, cache) if return_scores else (output, cache)


@tf.autograph.experimental.do_not_convert
def ring_attention(
    query: tf.Tensor,
    key: tf.Tensor,
    value: tf.Tensor,
    cache: tf.Tensor,
    step: int | tf.Tensor,
    attention_mask: tf.Tensor | None = None,
    use_causal_mask: bool = True,
    scale: float | tf.Tensor | None = None,
    dropout: Callable[[tf.Tensor], tf.Tensor] | None = None,
    return_scores: bool = False,
) -> tuple[tf.Tensor, ...]:
    """Sliding-window attention over a ring-buffer cache of ``W`` slots, for generation of any length.

    The cache ``(2, B, W, N, H)`` holds the keys / values of the last ``W``
    positions written, position ``p`` in slot ``p % W``; the window is its size
    ``W``: query ``step + i`` sees the positions ``q`` with
    ``step + i - W < q <= step + i`` (``|.| < W`` without the causal mask),
    never a position not written yet. The ``F`` new positions are attended
    together with the ring as it was (so a chunk longer than ``W`` is exact
    too), then the last ``min(F, W)`` of them are written into their slots.
    Memory is ``O(W)`` whatever the length, and the shapes are static, so a
    compiled loop runs with one trace. While ``step + F <= W`` it equals
    ``cached_attention`` with ``sliding_window=W`` on a ``W``-slot cache.

    Args:
        query: ``(B, F, N, H)`` projected queries at positions ``[step, step + F)``.
        key: ``(B, F, K, H)`` projected keys of the same positions (``K`` divides ``N``).
        value: ``(B, F, K, H)`` projected values.
        cache: ``(2, B, W, K, H)``, from ``create_cache(batch, W, K, H)``.
        step: the position of the first new query: an int or an integer scalar tensor, ``>= 0``.
        attention_mask: optional boolean ``(B, F, W + F)`` over the ring slots
            followed by the new positions (``B``, ``F`` may be 1).
        use_causal_mask: hide the positions after each query.
        scale: the score scale, ``1 / sqrt(H)`` by default.
        dropout: optional callable applied to the attention weights.
        return_scores: also return the weights ``(B, N, F, W + F)`` (ring slots, then new positions).

    Returns:
        ``(output (B, F, N, H), new_cache)``, or ``(output, scores, new_cache)``.

    Example:
        >>> ring = create_cache(batch_size=1, cache_length=4, num_heads=2, head_dim=8)  # a window of 4
        >>> for position in range(10):  # any length, constant memory
        ...     x = tf.random.normal((1, 1, 2, 8))
        ...     output, ring = ring_attention(x, x, x, ring, position)
        >>> ring.shape
        TensorShape([2, 1, 4, 2, 8])
    """
    query, key, value, cache = (tf.convert_to_tensor(t) for t in (query, key, value, cache))
    _check_qkv(query, key, value)
    _check_mask_batch(attention_mask, query)
    _check_cache_and_update(cache, key, value)
    window = cache.shape[2]
    if window is None:
        raise ValueError(f"A ring cache needs a static number of slots W (the window). Received: cache with shape {shapes.format_shape(cache.shape.as_list())}")
    step_tensor, step_value = _normalize_step(step)
    if step_value is not None and step_value < 0:
        raise ValueError(f"`step` must be >= 0. Received: step={step_value}")
    new = dynamic_dims(query)[1]
    steps = tf.range(new, dtype=tf.int32)
    queries = step_tensor + steps  # (F,) absolute positions of the new queries
    slots = tf.range(window, dtype=tf.int32)
    # slot j holds the latest written position p < step with p % W == j (none when it is negative)
    latest = step_tensor - 1 - tf.math.floormod(step_tensor - 1 - slots, window)  # (W,)
    positions = tf.concat([latest, queries], axis=0)  # (W + F,)
    written = tf.concat([latest >= 0, tf.ones_like(queries, dtype=tf.bool)], axis=0)  # (W + F,)
    distance = queries[:, None] - positions[None, :]  # (F, W + F)
    visible = written[None, :] & (tf.abs(distance) < window)
    if use_causal_mask:
        visible &= distance >= 0
    visible = visible[None]  # (1, F, W + F)
    if attention_mask is not None:
        visible &= _user_mask(attention_mask, new if isinstance(new, int) else None, window + new if isinstance(new, int) else None)
    keys = tf.concat([cache[0], key], axis=1)  # (B, W + F, K, H)
    values = tf.concat([cache[1], value], axis=1)
    output, scores = _attend(query, keys, values, visible, _scale(query, scale), dropout, return_scores)
    # write the last min(F, W) new positions into their slots
    kept = tf.minimum(tf.cast(new, tf.int32), window)
    tail_start = tf.cast(new, tf.int32) - kept
    slot = tf.math.floormod(step_tensor + tail_start + tf.range(kept), window)  # (min(F, W),)
    cache = _scatter_slots(cache, key[:, tail_start:], value[:, tail_start:], slot)
    return (output, scores, cache) if return_scores else (output, cache)


def _pack(result: tuple[tf.Tensor, tf.Tensor | None]) -> tuple[tf.Tensor, ...]:
    return tuple(item for item in result if item is not None)


def _unpack(result: Sequence[tf.Tensor] | tf.Tensor, return_scores: bool) -> tuple[tf.Tensor, tf.Tensor | None]:
    result = list(result) if isinstance(result, (tuple, list)) else [result]
    return result[0], (result[1] if return_scores else None)


__all__ = [
    "MIN_BUCKET",
    "SPANS",
    "append_cache",
    "attention",
    "build_attention_mask",
    "bucket_lengths",
    "cached_attention",
    "create_cache",
    "in_xla_context",
    "ring_attention",
    "update_cache",
]

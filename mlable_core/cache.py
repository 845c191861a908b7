"""The key / value cache of attention: allocate it, write new positions into it, append to it, use it as a ring.

Shape letters follow the glossary of ``mlable_core``: ``B`` batch, ``S`` cache
slots, ``T`` new positions written by one call, ``K`` key / value heads (``N``,
the query heads, without grouping), ``H`` head size, ``W`` the slots of a ring.

Convention
----------
A cache is ONE tensor of shape ``(2, B, S, K, H)`` in the compute dtype:
``cache[0]`` holds the keys and ``cache[1]`` the values. ``create_cache``
allocates it filled with zeros.

- Linear cache: slot ``s`` holds absolute position ``s``. ``update_cache``
  writes ``T`` new positions into the slots ``[step, step + T)``, replacing
  what was there (writing a step twice overwrites, it never accumulates);
  ``append_cache`` concatenates them after the existing slots instead (the
  cache grows, so a compiled loop would retrace: use ``update_cache`` there).
- Ring cache of ``W`` slots (a sliding window): position ``p`` lives in slot
  ``p % W``. ``update_ring_cache`` writes the last ``min(T, W)`` new positions
  into their slots, and ``ring_positions`` says which position each slot holds.
  Memory is ``O(W)`` for a generation of any length, with static shapes.

Outside XLA the write returns a new tensor (TensorFlow tensors are immutable),
one copy of the cache per call; under XLA (``jit_compile=True``) it is a
scatter that XLA performs in place inside a compiled loop.

Variable cache (a serving loop from Python): a linear cache held in a
``tf.Variable`` (``tf.Variable(create_cache(...), trainable=False)``) is
written in place: ``update_cache`` assigns the slots ``[step, step + T)`` of
the variable's buffer (a strided-slice assign, never a scatter, so that reads
of the variable stay copy-free) and returns the variable itself. A decode step
called once per token from Python (a ``tf.function`` without an XLA loop) then
costs what it reads, not a copy of the whole cache. The buffer is reused as long
as no tensor read from it is held across calls (TensorFlow copies a buffer
that a live tensor still shares before writing into it): let the step
function return the outputs only. A variable cache cannot grow
(``append_cache``) nor serve as a ring.

A write past the end (``step + T > S``) or at a negative step raises a
``ValueError`` eagerly and when ``step`` is a Python int, and a
``tf.errors.InvalidArgumentError`` with the same message at run time in a
graph. Under XLA, where assertions are dropped, the slots past the end are not
written; ``write_overflows`` gives the flag that ``cached_attention`` turns
into NaN outputs.
"""

from __future__ import annotations

from collections.abc import Sequence

import tensorflow as tf

from mlable_core import shapes
from mlable_core.reshaping import dynamic_dims


def in_xla_context() -> bool:
    """Whether the current code is being traced for XLA compilation (``jit_compile=True``).

    True inside a ``tf.function(jit_compile=True)``, in any function it calls
    and in the bodies of its loops and conditionals; False eagerly and in plain
    ``tf.function`` graphs.

    Example:
        >>> in_xla_context()
        False
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


@tf.autograph.experimental.do_not_convert
def create_cache(batch_size: int, cache_length: int, num_heads: int, head_dim: int, dtype: tf.DType | str = "float32") -> tf.Tensor:
    """Allocates an empty key/value cache of shape ``(2, B, S, K, H)``, filled with zeros.

    Allocate it in the compute dtype of the attention layer (e.g. ``float16``
    under ``mixed_float16``): a cache of another dtype than the keys and values
    written into it is rejected (under XLA such a write fails deep in the
    compiler). A ring cache for a sliding window of ``W`` is a cache of
    ``cache_length=W`` slots.

    Args:
        batch_size: ``B``, a positive int.
        cache_length: ``S``, the number of position slots, a positive int.
        num_heads: ``K``, the key / value heads (the query heads ``N`` without grouping), a positive int.
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
    return tf.zeros([2] + dims, dtype=dtype)  # (2, B, S, K, H)


def check_update(cache: tf.Tensor, key: tf.Tensor, value: tf.Tensor) -> None:
    """Checks that ``key`` / ``value`` ``(B, T, K, H)`` can be written into ``cache`` ``(2, B, S, K, H)``.

    Static shapes and dtypes only (dims unknown while tracing are skipped).

    Raises:
        ValueError: a rank, a batch size, a head count or a head size differs,
            or axis 0 of the cache is not 2.
        TypeError: the cache is not floating, or ``key`` / ``value`` have
            another dtype than the cache.
    """
    cache_shape = shapes.check_rank(cache.shape, 5, "cache", "(2, B, S, K, H)")
    key_shape = shapes.check_rank(key.shape, 4, "key", "(B, T, K, H)")
    value_shape = shapes.check_rank(value.shape, 4, "value", "(B, T, K, H)")
    if not cache.dtype.is_floating:
        raise TypeError(f"`cache` must be a floating-point tensor. Received: cache with dtype {cache.dtype.name}")
    if cache_shape[0] not in (None, 2):
        raise ValueError(
            f"`cache` must stack keys and values on axis 0, shape (2, B, S, K, H). Received: cache with shape {shapes.format_shape(cache_shape)}"
        )
    text = f"cache {shapes.format_shape(cache_shape)}, key {shapes.format_shape(key_shape)}, value {shapes.format_shape(value_shape)}"
    if any(k is not None and v is not None and k != v for k, v in zip(key_shape, value_shape)):
        raise ValueError(f"`key` and `value` must have the same shape (B, T, K, H). Received: {text}")
    shapes.check_same_dims({"cache B": cache_shape[1], "key B": key_shape[0], "value B": value_shape[0]}, "batch sizes B", text)
    shapes.check_same_dims({"cache K": cache_shape[3], "key K": key_shape[2], "value K": value_shape[2]}, "key / value head counts K", text)
    shapes.check_same_dims({"cache H": cache_shape[4], "key H": key_shape[3], "value H": value_shape[3]}, "head sizes H", text)
    for name, tensor in (("key", key), ("value", value)):
        if tensor.dtype != cache.dtype:
            raise TypeError(
                f"`{name}` must have the dtype of `cache` (allocate the cache in the compute dtype). "
                f"Received: {name} dtype {tensor.dtype.name}, cache dtype {cache.dtype.name}"
            )


def normalize_step(step: int | tf.Tensor) -> tuple[tf.Tensor, int | None]:
    """``step`` as an int32 scalar tensor, plus its value when known in Python (eagerly or constant).

    Args:
        step: a Python int (numpy integers too) or an integer scalar tensor / ``tf.Variable``.

    Returns:
        ``(int32 scalar tensor, int or None)``: the value is ``None`` while
        tracing a step known only at run time.

    Raises:
        TypeError: ``step`` is not an integer.
        ValueError: ``step`` is a tensor of rank > 0.

    Example:
        >>> normalize_step(3)
        (<tf.Tensor: shape=(), dtype=int32, numpy=3>, 3)
    """
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
    head = (
        "The new positions must fit in the cache: 0 <= step and step + T <= S, for a cache of shape "
        f"{shapes.format_shape(cache_shape)}. "
    )
    if values is None:
        return head + "Received at run time: step, T new positions, S slots ="
    step, new, slots = values
    return head + f"Received: step={step}, T={new} new positions, S={slots} slots"


def write_overflows(step: tf.Tensor, new: int | tf.Tensor, slots: int | tf.Tensor) -> tf.Tensor:
    """Whether writing ``T`` new positions at ``step`` falls outside ``S`` slots (``step < 0`` or ``step + T > S``).

    Under XLA, which drops assertions, this flag is how an overflow shows
    (``cached_attention`` turns it into NaN outputs).

    Args:
        step: int32 scalar, the slot of the first new position.
        new: ``T``, the number of new positions.
        slots: ``S``, the slots of the cache.

    Returns:
        A boolean scalar tensor.

    Example:
        >>> bool(write_overflows(tf.constant(6), 3, 8))
        True
    """
    end = step + tf.cast(new, tf.int32)
    return tf.logical_or(step < 0, end > tf.cast(slots, tf.int32))


def _check_fits(cache: tf.Tensor, new: int | tf.Tensor, step: tf.Tensor, step_value: int | None) -> list[tf.Operation]:
    """Validates ``0 <= step`` and ``step + T <= S`` for a write of ``new`` positions into ``cache``.

    Raises a ``ValueError`` when every value is known in Python; otherwise
    returns the graph assertions to depend on (none under XLA, which drops
    them: see ``write_overflows``).
    """
    slots = dynamic_dims(cache)[2]
    if step_value is not None and isinstance(new, int) and isinstance(slots, int):
        if step_value < 0 or step_value + new > slots:
            raise ValueError(_overflow_message(cache.shape.as_list(), (step_value, new, slots)))
        return []
    if in_xla_context():
        return []
    fits = tf.logical_not(write_overflows(step, new, slots))
    return [tf.debugging.Assert(fits, [_overflow_message(cache.shape.as_list()), step, new, slots])]


def _write_variable(cache: tf.Variable, key: tf.Tensor, value: tf.Tensor, step: int | tf.Tensor) -> tf.Variable:
    """``update_cache`` for a variable cache: assigns the slots ``[step, step + T)`` in place, returns the variable."""
    key, value = tf.convert_to_tensor(key), tf.convert_to_tensor(value)
    check_update(cache, key, value)
    step, step_value = normalize_step(step)
    new = dynamic_dims(key)[1]
    checks = _check_fits(cache, new, step, step_value)
    if in_xla_context():
        # XLA needs the bounds of a strided-slice assign as compile-time constants (one compilation per step):
        # write through the scatter instead, which drops the slots out of range as on a tensor cache
        cache.assign(_scatter_slots(tf.convert_to_tensor(cache), key, value, step + tf.range(new)))
        return cache
    update = tf.stack([key, value])  # (2, B, T, K, H)
    begin = tf.stack([0, 0, step, 0, 0])
    end = begin + tf.shape(update, out_type=tf.int32)
    with tf.control_dependencies(checks):
        # a dense strided-slice assign: a scatter op would switch the variable to copy-on-read, copying it at every read
        tf.raw_ops.ResourceStridedSliceAssign(ref=cache.handle, begin=begin, end=end, strides=tf.ones([5], tf.int32), value=update)
    return cache


def _scatter_slots(cache: tf.Tensor, key: tf.Tensor, value: tf.Tensor, slots: tf.Tensor) -> tf.Tensor:
    """Writes ``key`` / ``value`` ``(B, T, K, H)`` into the cache slots ``slots`` ``(T,)``, without validation.

    One ``tensor_scatter_nd_update``: the slots are replaced, never added to,
    and XLA performs it in place on a loop's cache buffer. Slots out of range
    are not written (under XLA; elsewhere validate first with ``_check_fits``).
    """
    batch, new = dynamic_dims(key)[:2]
    update = tf.stack([key, value])  # (2, B, T, K, H)
    kind = tf.reshape(tf.range(2), (2, 1, 1))  # (2, 1, 1)
    row = tf.reshape(tf.range(batch), (1, -1, 1))  # (1, B, 1)
    slot = tf.reshape(slots, (1, 1, -1))  # (1, 1, T)
    grid = tf.stack([2, batch, new])
    indices = tf.stack([tf.broadcast_to(part, grid) for part in (kind, row, slot)], axis=-1)  # (2, B, T, 3)
    return tf.tensor_scatter_nd_update(cache, indices, update)


@tf.autograph.experimental.do_not_convert
def update_cache(cache: tf.Tensor, key: tf.Tensor, value: tf.Tensor, step: int | tf.Tensor) -> tf.Tensor:
    """Writes ``T`` new keys and values into the slots ``[step, step + T)`` of a cache.

    The slots are replaced (a step written twice holds the last write); every
    other slot is unchanged. Under XLA inside a compiled loop the write is done
    in place on the loop's cache buffer; elsewhere the result is a new tensor
    (one copy of the cache). A ``tf.Variable`` cache is written in place
    everywhere and returned as is (see the module docstring).

    Args:
        cache: ``(2, B, S, K, H)``, keys at index 0 and values at index 1: a
            tensor, or a ``tf.Variable``.
        key: ``(B, T, K, H)``, in the dtype of ``cache``.
        value: ``(B, T, K, H)``, in the dtype of ``cache``.
        step: the slot of the first new position: a Python int or an integer
            scalar tensor (e.g. an int32 loop counter).

    Returns:
        The updated cache, same shape and dtype (the same variable for a variable cache).

    Raises:
        ValueError: shapes do not match, or the write does not fit
            (``step < 0`` or ``step + T > S``) and this is known eagerly or while tracing.
        TypeError: the dtypes differ, or ``step`` is not an integer.
        tf.errors.InvalidArgumentError: in a graph, the write does not fit at run time.

    Under XLA, assertions are dropped: positions past the end are not written
    (``cached_attention`` makes the output NaN in that case).

    Example:
        >>> cache = create_cache(1, 8, 2, 4)
        >>> new = tf.ones((1, 3, 2, 4))
        >>> update_cache(cache, new, 2 * new, step=5)[1, 0, :, 0, 0].numpy()
        array([0., 0., 0., 0., 0., 2., 2., 2.], dtype=float32)
        >>> variable = tf.Variable(cache, trainable=False)  # written in place, no copy per call
        >>> update_cache(variable, new, 2 * new, step=5) is variable
        True
    """
    if isinstance(cache, tf.Variable):
        return _write_variable(cache, key, value, step)
    cache, key, value = (tf.convert_to_tensor(t) for t in (cache, key, value))
    check_update(cache, key, value)
    step, step_value = normalize_step(step)
    new = dynamic_dims(key)[1]
    with tf.control_dependencies(_check_fits(cache, new, step, step_value)):
        return _scatter_slots(cache, key, value, step + tf.range(new))


@tf.autograph.experimental.do_not_convert
def append_cache(cache: tf.Tensor, key: tf.Tensor, value: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Appends ``T`` new keys / values ``(B, T, K, H)`` after every existing slot of a ``(2, B, S, K, H)`` cache.

    Every existing slot counts as filled. The cache grows by ``T`` slots per
    call, so a compiled loop retraces on each call: pass a ``step`` to
    ``update_cache`` there.

    Args:
        cache: ``(2, B, S, K, H)``.
        key: ``(B, T, K, H)``, in the dtype of ``cache``.
        value: ``(B, T, K, H)``, in the dtype of ``cache``.

    Returns:
        ``(cache with S + T slots, S)``: the grown cache and the slot of the first new position (int32 scalar).

    Raises:
        ValueError, TypeError: as ``update_cache``, for mismatching shapes or dtypes.

    Example:
        >>> grown, step = append_cache(create_cache(1, 3, 2, 4), tf.ones((1, 2, 2, 4)), tf.ones((1, 2, 2, 4)))
        >>> grown.shape, int(step)
        (TensorShape([2, 1, 5, 2, 4]), 3)
    """
    reject_variable(cache, "append_cache (a variable cannot grow: write at a `step` with update_cache)")
    cache, key, value = (tf.convert_to_tensor(t) for t in (cache, key, value))
    check_update(cache, key, value)
    step = tf.shape(cache, out_type=tf.int32)[2]
    return tf.concat([cache, tf.stack([key, value])], axis=2), step  # (2, B, S + T, K, H)


def ring_positions(step: tf.Tensor, window: int) -> tf.Tensor:
    """The position each slot of a ``window``-slot ring holds before a write at ``step``.

    Slot ``j`` holds the latest position ``p < step`` with ``p % W == j``; a
    negative value means the slot was never written.

    Args:
        step: int32 scalar, the first position not written yet.
        window: ``W``, the number of slots.

    Returns:
        ``(W,)`` int32 positions.

    Example:
        >>> ring_positions(tf.constant(6), 4).numpy()
        array([4, 5, 2, 3], dtype=int32)
    """
    slots = tf.range(window, dtype=tf.int32)
    return step - 1 - tf.math.floormod(step - 1 - slots, window)  # (W,)


@tf.autograph.experimental.do_not_convert
def update_ring_cache(cache: tf.Tensor, key: tf.Tensor, value: tf.Tensor, step: int | tf.Tensor) -> tf.Tensor:
    """Writes ``T`` new positions ``[step, step + T)`` into a ring cache of ``W`` slots, position ``p`` in slot ``p % W``.

    Only the last ``min(T, W)`` new positions are kept (the earlier ones would
    be overwritten within the same call). The shape never changes, so a
    compiled loop runs with one trace whatever the length.

    Args:
        cache: ``(2, B, W, K, H)`` with a static ``W``.
        key: ``(B, T, K, H)``, in the dtype of ``cache``.
        value: ``(B, T, K, H)``, in the dtype of ``cache``.
        step: the position of the first new key: an int or an integer scalar tensor, ``>= 0``.

    Returns:
        The updated ring, same shape and dtype.

    Raises:
        ValueError: shapes do not match, ``W`` is not static, or ``step < 0`` is known in Python.
        TypeError: the dtypes differ, or ``step`` is not an integer.

    Example:
        >>> ring = create_cache(1, 4, 1, 1)
        >>> new = tf.reshape(tf.range(6, dtype=tf.float32), (1, 6, 1, 1))  # positions 0 .. 5
        >>> update_ring_cache(ring, new, new, step=0)[0, 0, :, 0, 0].numpy()
        array([4., 5., 2., 3.], dtype=float32)
    """
    reject_variable(cache, "a ring cache")
    cache, key, value = (tf.convert_to_tensor(t) for t in (cache, key, value))
    check_update(cache, key, value)
    window = ring_window(cache)
    step, step_value = normalize_step(step)
    if step_value is not None and step_value < 0:
        raise ValueError(f"`step` must be >= 0. Received: step={step_value}")
    new = tf.cast(dynamic_dims(key)[1], tf.int32)
    kept = tf.minimum(new, window)
    first = new - kept
    slots = tf.math.floormod(step + first + tf.range(kept), window)  # (min(T, W),)
    return _scatter_slots(cache, key[:, first:], value[:, first:], slots)


def reject_variable(cache: object, what: str) -> None:
    """Raises a ``TypeError`` for a ``tf.Variable`` cache where only a tensor cache works."""
    if isinstance(cache, tf.Variable):
        raise TypeError(
            f"A variable cache is written in place at a `step` (update_cache, cached_attention); {what} needs a tensor "
            f"cache. Received: cache, a tf.Variable of shape {shapes.format_shape(cache.shape)}"
        )


def ring_window(cache: tf.Tensor) -> int:
    """The window ``W`` of a ring cache ``(2, B, W, K, H)``: its slot count, which must be static.

    Raises:
        ValueError: the slot count is unknown while tracing.

    Example:
        >>> ring_window(create_cache(1, 4, 2, 8))
        4
    """
    window = cache.shape[2]
    if window is None:
        raise ValueError(
            "A ring cache needs a static number of slots W (the window). "
            f"Received: cache with shape {shapes.format_shape(cache.shape)}"
        )
    return window


__all__ = [
    "append_cache",
    "check_update",
    "create_cache",
    "in_xla_context",
    "normalize_step",
    "reject_variable",
    "ring_positions",
    "ring_window",
    "update_cache",
    "update_ring_cache",
    "write_overflows",
]

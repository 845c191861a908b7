"""Group accuracy: reductions over groups, prediction decoders and per-group correctness.

Hierarchical models are scored on entities made of several elementary
predictions: a UTF-32-BE character is 4 bytes, a byte is 8 bits, a token is
``G`` bytes. A group is correct only when every one of its elements is.

Shape letters used in this module:

- ``S``: the number of elementary values along the grouped axis.
- ``G``: the group size; the grouped axis becomes ``S / G`` groups.
- ``C``: the classes of a categorical prediction (the last axis).
- ``depth`` (spelled out): the bits that make one value of a binary prediction.

Groups are ``G`` consecutive values along one axis (``axis``), so that a group
reduction is a free reshape followed by one ``reduce_all``, for any axis.

Every op works eagerly, inside ``tf.function`` with dimensions unknown until
run time, and under ``jit_compile=True``. Static dimensions are validated in
Python (``ValueError`` naming the argument, its value and the shapes); dimensions
known only at run time are validated by ``tf.debugging`` assertions with the same
message. XLA drops those assertions: under ``jit_compile=True`` an indivisible
length then fails in the reshape itself (XLA compiles for concrete shapes, so
the static checks usually apply anyway), and mismatched shapes that happen to
broadcast are not caught at run time.
"""

from __future__ import annotations

import math
import numbers

import tensorflow as tf

from mlable_core import reshaping, shapes


def _known_rank(x: tf.Tensor, name: str, minimum: int = 1) -> int:
    rank = x.shape.rank
    if rank is None:
        raise ValueError(f"The rank of `{name}` must be known. Received: {name} with shape {x.shape}")
    if rank < minimum:
        raise ValueError(f"`{name}` must have rank >= {minimum}. Received: {name}.shape={shapes.format_shape(x.shape)}")
    return rank


def check_real(value: object, name: str, positive: bool = False) -> float:
    """Checks that ``value`` is a finite real number (bools excluded), positive if asked.

    Args:
        value: the value to check.
        name: the argument name used in error messages.
        positive: whether the value must be > 0.

    Returns:
        ``value`` as a Python ``float``.

    Raises:
        TypeError: ``value`` is not a real number.
        ValueError: ``value`` is not finite, or not positive when asked.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"`{name}` must be a real number. Received: {name}={value!r} of type {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value) or (positive and value <= 0.0):
        expected = "a finite number > 0" if positive else "a finite number"
        raise ValueError(f"`{name}` must be {expected}. Received: {name}={value}")
    return value


def _as_float(x: tf.Tensor) -> tf.Tensor:
    """``x`` in a float dtype that holds its values exactly: float32 for half floats, integers and bools."""
    if x.dtype in (tf.float32, tf.float64):
        return x
    if x.dtype == tf.bool:
        x = tf.cast(x, tf.int32)
    return tf.cast(x, tf.float32)


def _check_divides(x: tf.Tensor, axis: int, divisor: int, message: str) -> list[tf.Operation]:
    """Checks that ``divisor`` divides dimension ``axis`` of ``x``: in Python when static, else at run time.

    ``message`` is formatted with ``size``: the dimension, or ``?`` when it is only known at run time.
    """
    size = x.shape[axis]
    if size is not None:
        if size % divisor:
            raise ValueError(message.format(size=size))
        return []
    runtime = tf.shape(x)[axis]
    condition = tf.equal(tf.math.floormod(runtime, divisor), 0)
    return [tf.debugging.Assert(condition, [message.format(size="?") + " Size at run time:", runtime])]


def _check_same_shape(y_true: tf.Tensor, y_pred: tf.Tensor, true_shape: tf.TensorShape | None = None) -> list[tf.Operation]:
    """Checks that ``y_true`` has the shape ``true_shape`` (default: the shape of ``y_pred``)."""
    expected = y_pred.shape if true_shape is None else true_shape
    message = (
        f"`y_true` and `y_pred` must have the same shape{'' if true_shape is None else ' (up to the class axis of y_pred)'}. "
        f"Received: y_true.shape={shapes.format_shape(y_true.shape)}, y_pred.shape={shapes.format_shape(y_pred.shape)}"
    )
    if y_true.shape.rank != expected.rank or not y_true.shape.is_compatible_with(expected):
        raise ValueError(message)
    if y_true.shape.is_fully_defined() and expected.is_fully_defined():
        return []
    runtime_true = tf.shape(y_true)
    runtime_expected = tf.shape(y_pred)[: expected.rank]
    condition = tf.reduce_all(tf.equal(runtime_true, runtime_expected))
    return [tf.debugging.Assert(condition, [message + ". Shapes at run time:", runtime_true, runtime_expected])]


def _reshape(x: tf.Tensor, dims: list[int | tf.Tensor]) -> tf.Tensor:
    if all(isinstance(dim, int) for dim in dims):
        return tf.reshape(x, dims)
    return tf.reshape(x, tf.stack([tf.cast(dim, tf.int32) for dim in dims]))


def _group_reduce(x: tf.Tensor, group: int, axis: int, repeat: bool, reduce: str) -> tf.Tensor:
    x = tf.convert_to_tensor(x)
    rank = _known_rank(x, "x")
    group = shapes.check_int(group, "group", minimum=1)
    axis = shapes.normalize_axis(axis, rank, "axis", tuple(x.shape.as_list()))
    if x.dtype != tf.bool:
        x = tf.not_equal(x, tf.zeros((), x.dtype))
    if group == 1:
        return x
    checks = _check_divides(
        x, axis, group,
        f"`group` must divide axis {axis} of size {{size}}. Received: group={group}, shape={shapes.format_shape(x.shape)}",
    )
    with tf.control_dependencies(checks):
        dims = reshaping.dynamic_dims(x)
        split = dims[:axis] + [dims[axis] // group, group] + dims[axis + 1 :]
        grouped = _reshape(x, split)  # (..., S / G, G, ...)
        reducer = tf.reduce_all if reduce == "all" else tf.reduce_any
        result = reducer(grouped, axis=axis + 1)  # (..., S / G, ...)
        if repeat:
            expanded = tf.expand_dims(result, axis + 1)  # (..., S / G, 1, ...)
            target = split if all(isinstance(dim, int) for dim in split) else tf.shape(grouped)
            result = _reshape(tf.broadcast_to(expanded, target), dims)  # (..., S, ...)
    return result


def group_all(x: tf.Tensor, group: int, axis: int = -1, repeat: bool = False) -> tf.Tensor:
    """Whether every element of each group of ``group`` consecutive elements along ``axis`` is true.

    Non-boolean inputs count as true where they are not zero.

    Args:
        x: a tensor of known rank, shape ``(..., S, ...)`` with ``S`` along ``axis``.
        group: the group size ``G``, a positive int dividing ``S``.
        axis: the axis along which groups run.
        repeat: whether to repeat each group's result ``G`` times, giving back the shape of ``x``.

    Returns:
        A boolean tensor of shape ``(..., S / G, ...)``, or the shape of ``x`` when ``repeat``.

    Raises:
        ValueError: ``group`` is not positive or does not divide ``S``, or ``axis`` is out of range.
        TypeError: ``group`` or ``axis`` is not an int.

    Example:
        >>> group_all(tf.constant([[True, True, False, True]]), group=2).numpy()
        array([[ True, False]])
    """
    return _group_reduce(x, group, axis, repeat, "all")


def group_any(x: tf.Tensor, group: int, axis: int = -1, repeat: bool = False) -> tf.Tensor:
    """Whether any element of each group of ``group`` consecutive elements along ``axis`` is true.

    Non-boolean inputs count as true where they are not zero. Useful to turn an
    element-level mask into a group-level one (a group counts when any of its
    elements does).

    Args:
        x: a tensor of known rank, shape ``(..., S, ...)`` with ``S`` along ``axis``.
        group: the group size ``G``, a positive int dividing ``S``.
        axis: the axis along which groups run.
        repeat: whether to repeat each group's result ``G`` times, giving back the shape of ``x``.

    Returns:
        A boolean tensor of shape ``(..., S / G, ...)``, or the shape of ``x`` when ``repeat``.

    Raises:
        ValueError: ``group`` is not positive or does not divide ``S``, or ``axis`` is out of range.
        TypeError: ``group`` or ``axis`` is not an int.

    Example:
        >>> group_any(tf.constant([[False, False, False, True]]), group=2).numpy()
        array([[False,  True]])
    """
    return _group_reduce(x, group, axis, repeat, "any")


def decode_categorical(y: tf.Tensor) -> tf.Tensor:
    """The class index of each prediction: the argmax over the last axis.

    Ties go to the smallest index (``tf.argmax``, like ``numpy.argmax``).

    Args:
        y: one-hot vectors, probabilities or logits of shape ``(..., S, C)``.

    Returns:
        An ``int32`` tensor of shape ``(..., S)``.

    Example:
        >>> decode_categorical(tf.constant([[0.1, 0.7, 0.2], [0.9, 0.0, 0.1]])).numpy()
        array([1, 0], dtype=int32)
    """
    y = tf.convert_to_tensor(y)
    _known_rank(y, "y", minimum=1)
    return tf.argmax(y, axis=-1, output_type=tf.int32)


def decode_binary(y: tf.Tensor, depth: int = 8, threshold: float = 0.5, axis: int = -1) -> tf.Tensor:
    """Integers from binary predictions: a bit is 1 when the value is strictly above ``threshold``.

    Each run of ``depth`` consecutive bits along ``axis`` makes one integer, most
    significant bit first (big-endian): bits ``(0, 1, 1)`` give ``3``.

    Args:
        y: bits or probabilities (or logits with ``threshold=0``), shape ``(..., S * depth, ...)``.
        depth: the bits per value, in ``[1, 63]``.
        threshold: a bit is 1 where ``y > threshold``.
        axis: the axis holding the bits.

    Returns:
        A tensor of shape ``(..., S, ...)``: ``int32`` for ``depth <= 31``, else ``int64``.

    Raises:
        ValueError: ``depth`` is not in ``[1, 63]`` or does not divide the length of ``axis``.
        TypeError: ``depth`` is not an int or ``threshold`` is not a real number.

    Example:
        >>> decode_binary(tf.constant([[0.0, 0.9, 0.8, 1.0, 0.2, 0.3]]), depth=3).numpy()
        array([[3, 4]], dtype=int32)
    """
    y = tf.convert_to_tensor(y)
    rank = _known_rank(y, "y")
    depth = shapes.check_int(depth, "depth", minimum=1)
    if depth > 63:
        raise ValueError(f"`depth` must be an int <= 63 to fit an int64. Received: depth={depth}")
    threshold = check_real(threshold, "threshold")
    axis = shapes.normalize_axis(axis, rank, "axis", tuple(y.shape.as_list()))
    checks = _check_divides(
        y, axis, depth,
        f"`depth` must divide axis {axis} of size {{size}} (the bits of the values). "
        f"Received: depth={depth}, y.shape={shapes.format_shape(y.shape)}",
    )
    dtype = tf.int32 if depth <= 31 else tf.int64
    with tf.control_dependencies(checks):
        bits = tf.cast(_as_float(y) > threshold, dtype)
        dims = reshaping.dynamic_dims(bits)
        split = dims[:axis] + [dims[axis] // depth, depth] + dims[axis + 1 :]
        bits = _reshape(bits, split)  # (..., S, depth, ...)
        powers = tf.constant([2 ** (depth - 1 - index) for index in range(depth)], dtype=dtype)
        powers = tf.reshape(powers, [depth] + [1] * (rank - 1 - axis))  # (depth, 1, ...) to broadcast after the depth axis
        return tf.reduce_sum(bits * powers, axis=axis + 1)  # (..., S, ...)


def decode_raw(y: tf.Tensor, factor: float = 256.0) -> tf.Tensor:
    """Values from raw predictions: ``round(factor * y)``, rounding half to even (like NumPy).

    Half-precision and integer inputs are computed in float32, so that
    ``factor * y`` does not lose integer precision.

    Args:
        y: real values of any shape.
        factor: a positive scale, typically from ``[0, 1)`` to ``[0, 256)``.

    Returns:
        A float tensor (float32, or float64 for float64 inputs) of the shape of ``y``.

    Raises:
        ValueError: ``factor`` is not a finite positive number.

    Example:
        >>> decode_raw(tf.constant([0.25, 0.5, 0.999]), factor=256.0).numpy()
        array([ 64., 128., 256.], dtype=float32)
    """
    y = _as_float(tf.convert_to_tensor(y))
    factor = check_real(factor, "factor", positive=True)
    return tf.round(y * tf.constant(factor, y.dtype))


def _grouped_matches(matches: tf.Tensor, group: int, axis: int, message: str, checks: list[tf.Operation]) -> tf.Tensor:
    """Groups element matches with a clear message on indivisible lengths (``message`` takes ``{size}``)."""
    checks = checks + _check_divides(matches, axis, group, message)
    with tf.control_dependencies(checks):
        if group == 1:
            return tf.identity(matches) if checks else matches
        return group_all(matches, group, axis)


def categorical_group_accuracy(
    y_true: tf.Tensor, y_pred: tf.Tensor, group: int = 4, axis: int = -1, dtype: tf.DType = tf.float32
) -> tf.Tensor:
    """Per-group correctness of categorical predictions: 1 where every argmax of the group matches.

    Both tensors hold one-hot vectors, probabilities or logits over the last
    axis; their values are the argmax over ``C``. Groups are ``G`` consecutive
    values along ``axis``, an axis of the values (``y`` without its class axis).

    Args:
        y_true: the targets, shape ``(..., S, C)``.
        y_pred: the predictions, same shape.
        group: the group size ``G``, dividing ``S``.
        axis: the axis of the values ``(..., S)`` along which groups run.
        dtype: the float dtype of the result.

    Returns:
        A tensor of 0 / 1 of shape ``(..., S / G)`` (the values' shape with ``S`` divided by ``G``).

    Raises:
        ValueError: the shapes differ, a tensor has rank < 2, ``group`` is not
            positive or does not divide ``S``, or ``axis`` is out of range.

    Example:
        >>> y = tf.one_hot([[1, 2, 3, 0]], 4)
        >>> categorical_group_accuracy(y, tf.one_hot([[1, 2, 0, 0]], 4), group=2).numpy()
        array([[1., 0.]], dtype=float32)
    """
    y_true = tf.convert_to_tensor(y_true)
    y_pred = tf.convert_to_tensor(y_pred)
    rank = _known_rank(y_pred, "y_pred", minimum=2)
    group = shapes.check_int(group, "group", minimum=1)
    checks = _check_same_shape(y_true, y_pred)
    axis = shapes.normalize_axis(axis, rank - 1, "axis", tuple(y_pred.shape.as_list()[:-1]))
    matches = tf.equal(decode_categorical(y_true), decode_categorical(y_pred))  # (..., S)
    message = (
        f"`group` must divide the number of values along axis {axis} ({{size}}). Received: group={group}, "
        f"y_true.shape={shapes.format_shape(y_true.shape)}, y_pred.shape={shapes.format_shape(y_pred.shape)}"
    )
    grouped = _grouped_matches(matches, group, axis, message, checks)
    return tf.cast(grouped, dtype)  # (..., S / G)


def sparse_categorical_group_accuracy(
    y_true: tf.Tensor, y_pred: tf.Tensor, group: int = 4, axis: int = -1, dtype: tf.DType = tf.float32
) -> tf.Tensor:
    """Per-group correctness of categorical predictions against integer labels.

    Like ``categorical_group_accuracy``, but ``y_true`` holds the class indices
    themselves (e.g. the byte values), shape ``(..., S)``, or ``(..., S, 1)``
    whose trailing axis is dropped. Float labels are compared as they are (a
    label of ``2.5`` never matches).

    Args:
        y_true: the class indices, shape ``(..., S)`` or ``(..., S, 1)``.
        y_pred: probabilities or logits, shape ``(..., S, C)``.
        group: the group size ``G``, dividing ``S``.
        axis: the axis of the values ``(..., S)`` along which groups run.
        dtype: the float dtype of the result.

    Returns:
        A tensor of 0 / 1 of shape ``(..., S / G)``.

    Raises:
        ValueError: ``y_true`` does not have the shape of ``y_pred`` without its
            last axis, ``group`` is not positive or does not divide ``S``, or
            ``axis`` is out of range.

    Example:
        >>> logits = tf.one_hot([[1, 2, 0, 0]], 4)
        >>> sparse_categorical_group_accuracy(tf.constant([[1, 2, 3, 0]]), logits, group=2).numpy()
        array([[1., 0.]], dtype=float32)
    """
    y_true = tf.convert_to_tensor(y_true)
    y_pred = tf.convert_to_tensor(y_pred)
    rank = _known_rank(y_pred, "y_pred", minimum=2)
    _known_rank(y_true, "y_true")
    group = shapes.check_int(group, "group", minimum=1)
    if y_true.shape.rank == rank and y_true.shape[-1] == 1:
        y_true = tf.squeeze(y_true, axis=-1)  # (..., S, 1) -> (..., S)
    checks = _check_same_shape(y_true, y_pred, true_shape=y_pred.shape[:-1])
    axis = shapes.normalize_axis(axis, rank - 1, "axis", tuple(y_pred.shape.as_list()[:-1]))
    predicted = decode_categorical(y_pred)  # (..., S)
    if y_true.dtype.is_floating:
        matches = tf.equal(y_true, tf.cast(predicted, y_true.dtype))
    else:
        matches = tf.equal(tf.cast(y_true, tf.int64), tf.cast(predicted, tf.int64))
    message = (
        f"`group` must divide the number of values along axis {axis} ({{size}}). Received: group={group}, "
        f"y_true.shape={shapes.format_shape(y_true.shape)}, y_pred.shape={shapes.format_shape(y_pred.shape)}"
    )
    grouped = _grouped_matches(matches, group, axis, message, checks)
    return tf.cast(grouped, dtype)  # (..., S / G)


def binary_group_accuracy(
    y_true: tf.Tensor,
    y_pred: tf.Tensor,
    group: int = 4,
    depth: int = 8,
    threshold: float = 0.5,
    axis: int = -1,
    dtype: tf.DType = tf.float32,
) -> tf.Tensor:
    """Per-group correctness of binary predictions: 1 where all ``G * depth`` bits of the group agree.

    A bit is 1 where the value is strictly above ``threshold``, for ``y_true``
    and ``y_pred`` alike. ``depth`` consecutive bits along ``axis`` make one value
    (see ``decode_binary``) and ``G`` consecutive values make one group, so a
    group is correct exactly when its decoded values all match. The bits are
    compared directly, which never overflows whatever ``depth``.

    Args:
        y_true: the target bits (or probabilities), shape ``(..., S * depth, ...)``.
        y_pred: the predicted probabilities, same shape.
        group: the group size ``G``, dividing ``S``.
        depth: the bits per value, dividing the length of ``axis``.
        threshold: a bit is 1 where the value is strictly above it.
        axis: the axis holding the bits.
        dtype: the float dtype of the result.

    Returns:
        A tensor of 0 / 1 of shape ``(..., S / G, ...)``.

    Raises:
        ValueError: the shapes differ, ``depth`` or ``group`` is not positive or
            does not divide the length, or ``axis`` is out of range.

    Example:
        >>> y_true = tf.constant([[0.0, 1.0, 1.0, 1.0, 0.0, 0.0, 1.0, 1.0]])
        >>> y_pred = tf.constant([[0.1, 0.9, 0.8, 0.7, 0.2, 0.6, 0.9, 0.9]])
        >>> binary_group_accuracy(y_true, y_pred, group=1, depth=2).numpy()
        array([[1., 1., 0., 1.]], dtype=float32)
    """
    y_true = tf.convert_to_tensor(y_true)
    y_pred = tf.convert_to_tensor(y_pred)
    rank = _known_rank(y_pred, "y_pred")
    group = shapes.check_int(group, "group", minimum=1)
    depth = shapes.check_int(depth, "depth", minimum=1)
    threshold = check_real(threshold, "threshold")
    checks = _check_same_shape(y_true, y_pred)
    axis = shapes.normalize_axis(axis, rank, "axis", tuple(y_pred.shape.as_list()))
    text = f"y_true.shape={shapes.format_shape(y_true.shape)}, y_pred.shape={shapes.format_shape(y_pred.shape)}"
    checks = checks + _check_divides(
        y_pred, axis, depth, f"`depth` must divide axis {axis} of size {{size}} (the bits). Received: depth={depth}, {text}"
    )
    matches = tf.equal(_as_float(y_true) > threshold, _as_float(y_pred) > threshold)  # (..., S * depth, ...)
    message = (
        f"`group` must divide the number of values along axis {axis} ({{size}} bits / depth {depth}). "
        f"Received: group={group}, depth={depth}, {text}"
    )
    grouped = _grouped_matches(matches, group * depth, axis, message, checks)
    return tf.cast(grouped, dtype)  # (..., S / G, ...)


def raw_group_accuracy(
    y_true: tf.Tensor,
    y_pred: tf.Tensor,
    group: int = 1,
    factor: float = 256.0,
    axis: int = -1,
    dtype: tf.DType = tf.float32,
) -> tf.Tensor:
    """Per-group correctness of raw predictions: 1 where ``round(factor * y)`` matches on the whole group.

    Args:
        y_true: the target values, shape ``(..., S, ...)``.
        y_pred: the predicted values, same shape.
        group: the group size ``G``, dividing ``S``.
        factor: the positive scale applied to both before rounding (see ``decode_raw``).
        axis: the axis along which groups run.
        dtype: the float dtype of the result.

    Returns:
        A tensor of 0 / 1 of shape ``(..., S / G, ...)``.

    Raises:
        ValueError: the shapes differ, ``group`` is not positive or does not
            divide ``S``, ``factor`` is not positive, or ``axis`` is out of range.

    Example:
        >>> raw_group_accuracy(tf.constant([[0.25, 0.5]]), tf.constant([[0.251, 0.52]]), factor=256.0).numpy()
        array([[1., 0.]], dtype=float32)
    """
    y_true = tf.convert_to_tensor(y_true)
    y_pred = tf.convert_to_tensor(y_pred)
    rank = _known_rank(y_pred, "y_pred")
    group = shapes.check_int(group, "group", minimum=1)
    factor = check_real(factor, "factor", positive=True)
    checks = _check_same_shape(y_true, y_pred)
    axis = shapes.normalize_axis(axis, rank, "axis", tuple(y_pred.shape.as_list()))
    true_values, pred_values = decode_raw(y_true, factor), decode_raw(y_pred, factor)
    if true_values.dtype != pred_values.dtype:
        true_values, pred_values = tf.cast(true_values, tf.float64), tf.cast(pred_values, tf.float64)
    matches = tf.equal(true_values, pred_values)  # (..., S, ...)
    message = (
        f"`group` must divide the number of values along axis {axis} ({{size}}). Received: group={group}, "
        f"y_true.shape={shapes.format_shape(y_true.shape)}, y_pred.shape={shapes.format_shape(y_pred.shape)}"
    )
    grouped = _grouped_matches(matches, group, axis, message, checks)
    return tf.cast(grouped, dtype)  # (..., S / G, ...)


def broadcast_weights(weights: tf.Tensor, values: tf.Tensor, name: str = "sample_weight") -> tf.Tensor:
    """Broadcasts per-row or per-group weights to the shape of group-level ``values``, Keras style.

    ``weights`` align with the LEADING axes of ``values`` (a ``(B,)`` weight is
    one weight per row); each of its dimensions must equal the one of ``values``
    or be 1. A trailing axis of size 1 beyond the rank of ``values`` is dropped.

    Args:
        weights: weights of rank <= rank of ``values`` (+ a trailing 1).
        values: the group-level tensor, e.g. ``(B, S / G)``.
        name: the argument name used in error messages.

    Returns:
        Float weights of the shape and dtype of ``values``.

    Raises:
        ValueError: the weights do not broadcast to the group-level shape.

    Example:
        >>> broadcast_weights(tf.constant([1.0, 0.0]), tf.zeros((2, 3))).numpy()
        array([[1., 1., 1.],
               [0., 0., 0.]], dtype=float32)
    """
    weights = tf.cast(tf.convert_to_tensor(weights), values.dtype)
    rank = _known_rank(values, "values", minimum=0)
    weight_rank = _known_rank(weights, name, minimum=0)
    if weight_rank == rank + 1 and weights.shape[-1] == 1:
        weights = tf.squeeze(weights, axis=-1)
        weight_rank = rank
    message = (
        f"`{name}` must broadcast to the group-level shape {shapes.format_shape(values.shape)}, aligned on the leading "
        f"axes (one weight per row, or per group). Received: {name}.shape={shapes.format_shape(weights.shape)}"
    )
    if weight_rank > rank:
        raise ValueError(message)
    for weight_dim, value_dim in zip(weights.shape.as_list(), values.shape.as_list()):
        if weight_dim not in (None, 1) and value_dim is not None and weight_dim != value_dim:
            raise ValueError(message)
    for _ in range(rank - weight_rank):
        weights = tf.expand_dims(weights, -1)  # (B, ..., 1, 1) aligned on the leading axes
    if values.shape.is_fully_defined() and weights.shape == values.shape:
        return weights
    return tf.broadcast_to(weights, tf.shape(values))


def group_mask(mask: tf.Tensor, values: tf.Tensor, axis: int = -1) -> tf.Tensor:
    """Turns an element-level mask into group-level weights: a group counts when all its elements are unmasked.

    A mask of the rank of ``values`` may hold one entry per element along
    ``axis`` (``m`` entries per group, e.g. a Keras mask of shape ``(B, S)`` for
    groups of ``m = G`` values, or ``m = G * depth`` bits); it is reduced with
    ``all`` over each group. Any other mask is a weight and follows
    ``broadcast_weights`` (aligned on the leading axes).

    Args:
        mask: booleans or 0 / 1, shape ``(..., S, ...)`` with ``S`` a multiple of
            the groups along ``axis``, or a shape that broadcasts to ``values``.
        values: the group-level tensor, shape ``(..., S / G, ...)``.
        axis: the axis along which groups run.

    Returns:
        Float weights (0 / 1) of the shape and dtype of ``values``.

    Raises:
        ValueError: the mask fits neither rule (statically; at run time the reshape fails).

    Example:
        >>> mask = tf.constant([[True, True, True, False]])
        >>> group_mask(mask, tf.zeros((1, 2)), axis=-1).numpy()
        array([[1., 0.]], dtype=float32)
    """
    mask = tf.convert_to_tensor(mask)
    rank = _known_rank(values, "values")
    axis = shapes.normalize_axis(axis, rank, "axis", tuple(values.shape.as_list()))
    if mask.shape.rank == rank and mask.shape[axis] != 1:
        mask_size, groups = mask.shape[axis], values.shape[axis]
        if mask_size is not None and groups is not None and (groups == 0 or mask_size % groups):
            raise ValueError(
                f"A mask must hold a whole number of entries per group along axis {axis}. Received: "
                f"mask.shape={shapes.format_shape(mask.shape)}, group-level shape={shapes.format_shape(values.shape)}"
            )
        if mask.dtype != tf.bool:
            mask = tf.not_equal(mask, tf.zeros((), mask.dtype))
        dims = reshaping.dynamic_dims(mask)
        groups = reshaping.dynamic_dims(values)[axis]
        split = dims[:axis] + [groups, dims[axis] // groups] + dims[axis + 1 :]
        mask = tf.reduce_all(_reshape(mask, split), axis=axis + 1)  # (..., S / G, ...)
    return broadcast_weights(mask, values, name="mask")


__all__ = [
    "binary_group_accuracy",
    "broadcast_weights",
    "check_real",
    "categorical_group_accuracy",
    "decode_binary",
    "decode_categorical",
    "decode_raw",
    "group_all",
    "group_any",
    "group_mask",
    "raw_group_accuracy",
    "sparse_categorical_group_accuracy",
]

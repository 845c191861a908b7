"""Relative reshaping ops: divide, merge, swap and move axes.

Each op works eagerly, inside ``tf.function`` (dimensions may be unknown until
run time, e.g. ``tf.TensorSpec([None, None, 8])``) and under
``jit_compile=True``. Neighbouring axes are a pure ``tf.reshape`` (no copy);
other pairs cost one ``tf.transpose`` between two reshapes.

Shape rules and argument validation live in ``mlable_core.shapes``; this module
only turns them into tensor programs. Static dimensions are checked in Python
(``ValueError``), dimensions known only at run time with ``tf.debugging``
assertions carrying the same message.
"""

from __future__ import annotations

from collections.abc import Sequence

import tensorflow as tf

from mlable_core import shapes


def _static_shape(x: tf.Tensor) -> shapes.Shape:
    if x.shape.rank is None:
        raise ValueError(f"The rank of `x` must be known. Received: x with shape {x.shape}")
    return tuple(x.shape.as_list())


def dynamic_dims(x: tf.Tensor) -> list[int | tf.Tensor]:
    """Dimensions of ``x``: Python ints where static, scalar tensors elsewhere."""
    static = _static_shape(x)
    if all(dim is not None for dim in static):
        return list(static)  # type: ignore[arg-type]
    runtime = tf.shape(x)
    return [runtime[axis] if dim is None else dim for axis, dim in enumerate(static)]


def reshape_target(dims: Sequence[int | tf.Tensor]) -> list[int] | tf.Tensor:
    """A reshape target: a Python list when every dim is static, a stacked int32 tensor otherwise."""
    if all(isinstance(dim, int) for dim in dims):
        return list(dims)  # type: ignore[arg-type]
    return tf.stack([tf.cast(dim, tf.int32) for dim in dims])


def _check_divisible(dim: int | tf.Tensor, axis: int, factor: int, shape: shapes.Shape) -> list[tf.Operation]:
    """Run-time check that ``factor`` divides a dimension unknown at trace time."""
    if isinstance(dim, int):
        return []  # already validated statically by shapes.divide_shape
    condition = tf.equal(tf.math.floormod(dim, factor), 0)
    message = f"`factor` must divide axis {axis}. Received: factor={factor}, static shape={shape}, axis size at run time:"
    return [tf.debugging.Assert(condition, [message, dim])]


def divide(x: tf.Tensor, input_axis: int, output_axis: int, factor: int, insert: bool = False) -> tf.Tensor:
    """Divides ``input_axis`` by ``factor`` and multiplies ``output_axis`` by it.

    Both axes index the OUTPUT shape. With ``insert=True`` a new axis of size 1
    is first inserted at ``output_axis``. The data moves as follows, for any
    pair of axes (``d_i`` and ``d_o`` are the input sizes of the two axes):

    - output right of input: the input axis is split C-order into
      ``(d_i / f, f)`` and the ``f`` part becomes the major part of the output
      axis: ``out[..., a, ..., b * d_o + c, ...] = x[..., a * f + b, ..., c, ...]``.
    - output left of input: the input axis is split into ``(f, d_i / f)`` and
      the ``f`` part becomes the minor part of the output axis:
      ``out[..., c * f + b, ..., a, ...] = x[..., c, ..., b * (d_i / f) + a, ...]``.

    For neighbouring axes both rules are exactly ``tf.reshape``. Dividing back
    with the axes swapped restores the input.

    Args:
        x: a tensor of known rank.
        input_axis: the axis divided by ``factor`` (index in the output shape).
        output_axis: the axis multiplied by ``factor`` (index in the output shape).
        factor: a positive int dividing the ``input_axis`` dimension.
        insert: whether to insert a new axis of size 1 at ``output_axis`` first.

    Returns:
        A tensor of the same dtype and of shape
        ``mlable_core.shapes.divide_shape(x.shape, input_axis, output_axis, factor, insert)``.

    Raises:
        ValueError: an axis is out of range, the axes are equal, ``factor`` is not
            positive, or it does not divide a static dimension.
        TypeError: ``factor`` or an axis is not an int.
        tf.errors.InvalidArgumentError: at run time, ``factor`` does not divide a
            dimension that was unknown when tracing.

    Example:
        >>> divide(tf.ones((2, 4, 6, 8)), input_axis=2, output_axis=-1, factor=3).shape
        TensorShape([2, 4, 2, 24])
    """
    x = tf.convert_to_tensor(x)
    static = _static_shape(x)
    factor = shapes.check_int(factor, "factor", minimum=1)
    axis_in, axis_out = shapes.divide_axes(len(static), input_axis, output_axis, insert)
    if insert:
        x = tf.expand_dims(x, axis_out)
        static = _static_shape(x)
    output_static = shapes.divide_shape(static, axis_in, axis_out, factor)  # validates static divisibility
    dims = dynamic_dims(x)
    checks = _check_divisible(dims[axis_in], axis_in, factor, static)
    with tf.control_dependencies(checks):
        if factor == 1:
            return tf.identity(x) if checks else x
        part = dims[axis_in] // factor
        if axis_in < axis_out:
            split = dims[:axis_in] + [part, factor] + dims[axis_in + 1 :]  # (..., d_i / f, f, ...)
        else:
            split = dims[:axis_in] + [factor, part] + dims[axis_in + 1 :]  # (..., f, d_i / f, ...)
        order = shapes.divide_plan(len(static), axis_in, axis_out)
        output_dims = list(dims)
        output_dims[axis_in] = part
        output_dims[axis_out] = dims[axis_out] * factor
        if shapes.is_identity(order):
            result = tf.reshape(x, reshape_target(output_dims))
        else:
            result = tf.reshape(tf.transpose(tf.reshape(x, reshape_target(split)), order), reshape_target(output_dims))
    return tf.ensure_shape(result, output_static)


def merge(x: tf.Tensor, left_axis: int, right_axis: int, left: bool = True) -> tf.Tensor:
    """Merges two axes into one.

    The merged axis has the index ``index(left_axis) * dim(right_axis) + index(right_axis)``
    and stands where ``left_axis`` was (``left=True``) or where ``right_axis`` was
    (``left=False``), among the remaining axes. Any two distinct axes can be
    merged; ``left_axis`` may even be to the right of ``right_axis``. Neighbours
    in that order are a pure reshape.

    Args:
        x: a tensor of known rank >= 2.
        left_axis: the axis giving the major part of the merged index.
        right_axis: the axis giving the minor part of the merged index.
        left: whether the merged axis stands where ``left_axis`` was.

    Returns:
        A tensor of rank ``rank(x) - 1`` and shape
        ``mlable_core.shapes.merge_shape(x.shape, left_axis, right_axis, left)``.

    Raises:
        ValueError: an axis is out of range or the axes are equal.

    Example:
        >>> merge(tf.ones((2, 4, 6, 8)), left_axis=1, right_axis=-1, left=False).shape
        TensorShape([2, 6, 32])
    """
    x = tf.convert_to_tensor(x)
    static = _static_shape(x)
    axis_l, axis_r = shapes.merge_axes(len(static), left_axis, right_axis)
    output_static = shapes.merge_shape(static, axis_l, axis_r, left)
    order = shapes.merge_plan(len(static), axis_l, axis_r, left)
    dims = dynamic_dims(x)
    position = order.index(axis_l)
    output_dims = [dims[axis] for axis in order]
    output_dims[position : position + 2] = [dims[axis_l] * dims[axis_r]]
    if not shapes.is_identity(order):
        x = tf.transpose(x, order)
    return tf.ensure_shape(tf.reshape(x, reshape_target(output_dims)), output_static)


def swap(x: tf.Tensor, left_axis: int, right_axis: int) -> tf.Tensor:
    """Exchanges two axes (a transpose; a no-op when they are the same axis).

    Args:
        x: a tensor of known rank.
        left_axis: one axis.
        right_axis: the other axis.

    Returns:
        ``x`` with the two axes exchanged.

    Example:
        >>> swap(tf.ones((2, 3, 5)), 0, -1).shape
        TensorShape([5, 3, 2])
    """
    x = tf.convert_to_tensor(x)
    static = _static_shape(x)
    axis_l = shapes.normalize_axis(left_axis, len(static), "left_axis", static)
    axis_r = shapes.normalize_axis(right_axis, len(static), "right_axis", static)
    order = shapes.swap_plan(len(static), axis_l, axis_r)
    return x if shapes.is_identity(order) else tf.transpose(x, order)


def move(x: tf.Tensor, from_axis: int, to_axis: int) -> tf.Tensor:
    """Moves one axis to a new position, keeping the others in order.

    Args:
        x: a tensor of known rank.
        from_axis: the axis to move.
        to_axis: the index it has in the output.

    Returns:
        ``x`` transposed, like ``numpy.moveaxis(x, from_axis, to_axis)``.

    Example:
        >>> move(tf.ones((2, 3, 5)), 0, -1).shape
        TensorShape([3, 5, 2])
    """
    x = tf.convert_to_tensor(x)
    static = _static_shape(x)
    axis_f = shapes.normalize_axis(from_axis, len(static), "from_axis", static)
    axis_t = shapes.normalize_axis(to_axis, len(static), "to_axis", static)
    order = shapes.move_plan(len(static), axis_f, axis_t)
    return x if shapes.is_identity(order) else tf.transpose(x, order)


__all__ = ["divide", "dynamic_dims", "merge", "move", "reshape_target", "swap"]

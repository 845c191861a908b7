"""Shape arithmetic on plain Python tuples.

Every function here works on shapes given as sequences of ``int`` or ``None``
(``None`` = unknown until run time) and never imports TensorFlow, so the same
rules serve the tensor ops (``mlable_core.reshaping``), the Keras layers'
``compute_output_shape`` and the tests.

Axes may be negative, as in NumPy. Every function validates its arguments and
raises ``ValueError`` / ``TypeError`` with the argument, the value received and
the shape, rather than flooring or clipping.
"""

from __future__ import annotations

from collections.abc import Sequence

Shape = tuple[int | None, ...]


def format_shape(shape: Sequence[int | None] | object) -> str:
    """A shape as in error messages: ``(2, None, 8)``; accepts ``tf.TensorShape`` (``<unknown rank>``)."""
    if hasattr(shape, "as_list"):
        if getattr(shape, "rank", 0) is None:
            return "<unknown rank>"
        shape = shape.as_list()
    dims = tuple(shape)  # type: ignore[arg-type]
    return "(" + ", ".join(str(dim) for dim in dims) + ("," if len(dims) == 1 else "") + ")"


def check_int(value: object, name: str, minimum: int | None = None) -> int:
    """Checks that ``value`` is a Python int (bools excluded) of at least ``minimum``.

    Args:
        value: the value to check.
        name: the argument name used in error messages.
        minimum: the smallest accepted value, or ``None`` for no bound.

    Returns:
        ``value`` as an ``int``.

    Raises:
        TypeError: ``value`` is not an integer.
        ValueError: ``value`` is below ``minimum``.
    """
    # numpy integers are accepted, bools and floats are not
    if isinstance(value, bool) or not hasattr(value, "__index__"):
        raise TypeError(f"`{name}` must be an int. Received: {name}={value!r} of type {type(value).__name__}")
    value = int(value.__index__())
    if minimum is not None and value < minimum:
        raise ValueError(f"`{name}` must be an int >= {minimum}. Received: {name}={value}")
    return value


def check_rank(shape: Sequence[int | None] | object, rank: int, name: str, letters: str) -> Shape:
    """Checks that a tensor's shape has rank ``rank`` and returns it as a tuple.

    Args:
        shape: the shape (a tuple, a list or a ``tf.TensorShape``, possibly of unknown rank).
        rank: the expected rank.
        name: the argument name used in error messages.
        letters: the expected shape in glossary letters, e.g. ``"(B, T, N, H)"``.

    Raises:
        ValueError: the rank differs or is unknown.

    Example:
        >>> check_rank((2, None, 4), 3, "x", "(B, S, D)")
        (2, None, 4)
    """
    known = not (hasattr(shape, "as_list") and getattr(shape, "rank", 0) is None)
    if not known or len(tuple(shape.as_list() if hasattr(shape, "as_list") else shape)) != rank:  # type: ignore[union-attr]
        raise ValueError(f"`{name}` must have rank {rank}, shape {letters}. Received: {name} with shape {format_shape(shape)}")
    return normalize_shape(shape)


def check_same_dims(dims: dict[str, int | None], what: str, received: str) -> None:
    """Checks that the known sizes in ``dims`` (``{"key B": 2, ...}``) are all equal.

    Args:
        dims: a description of each size (argument and letter) mapped to the size, ``None`` when unknown.
        what: what the sizes are, for the message (``"batch sizes B"``).
        received: the shapes received, for the message.

    Raises:
        ValueError: two known sizes differ.

    Example:
        >>> check_same_dims({"query B": 2, "key B": None}, "batch sizes B", "query (2, 3), key (None, 3)")
    """
    known = {name: dim for name, dim in dims.items() if dim is not None}
    if len(set(known.values())) > 1:
        detail = ", ".join(f"{name}={dim}" for name, dim in known.items())
        raise ValueError(f"The {what} must agree: {detail}. Received: {received}")


def normalize_shape(shape: Sequence[int | None] | object) -> Shape:
    """Returns ``shape`` as a tuple of ``int`` / ``None``.

    Accepts tuples, lists and anything with ``as_list()`` (``tf.TensorShape``).

    Raises:
        ValueError: the rank is unknown or a dimension is negative.
    """
    if hasattr(shape, "as_list"):
        if getattr(shape, "rank", 0) is None:
            raise ValueError("The rank of the input must be known. Received: shape=<unknown rank>")
        shape = shape.as_list()
    result = []
    for dim in shape:  # type: ignore[union-attr]
        if dim is None:
            result.append(None)
            continue
        dim = check_int(dim, "shape")
        if dim < 0:
            raise ValueError(f"Dimensions must be >= 0 or None. Received: shape={format_shape(tuple(shape))}")  # type: ignore[arg-type]
        result.append(dim)
    return tuple(result)


def normalize_axis(axis: int, rank: int, name: str = "axis", shape: Sequence[int | None] | None = None) -> int:
    """Maps ``axis`` in ``[-rank, rank)`` to ``[0, rank)``.

    Args:
        axis: a possibly negative axis index.
        rank: the number of axes.
        name: the argument name used in error messages.
        shape: the shape, only used to make error messages clearer.

    Returns:
        The non-negative axis.

    Raises:
        TypeError: ``axis`` is not an int.
        ValueError: ``axis`` is out of range.
    """
    axis = check_int(axis, name)
    if not -rank <= axis < rank:
        where = f"shape={format_shape(shape)}" if shape is not None else f"rank={rank}"
        raise ValueError(f"`{name}` must be in [{-rank}, {rank}). Received: {name}={axis}, {where}")
    return axis % rank


def _check_distinct(first: int, second: int, names: tuple[str, str], values: tuple[int, int], shape: Shape) -> None:
    if first == second:
        raise ValueError(
            f"`{names[0]}` and `{names[1]}` must be two different axes. "
            f"Received: {names[0]}={values[0]}, {names[1]}={values[1]}, shape={format_shape(shape)}"
        )


def _multiply(left: int | None, right: int | None) -> int | None:
    return None if left is None or right is None else left * right


def divide_axes(rank: int, input_axis: int, output_axis: int, insert: bool = False) -> tuple[int, int]:
    """Normalizes the axes of ``divide`` for an input of rank ``rank``.

    Both axes index the OUTPUT shape, whose rank is ``rank + 1`` when ``insert``.

    Returns:
        ``(input_axis, output_axis)``, both non-negative and distinct.
    """
    out_rank = rank + int(bool(insert))
    axis_in = normalize_axis(input_axis, out_rank, "input_axis")
    axis_out = normalize_axis(output_axis, out_rank, "output_axis")
    if axis_in == axis_out:
        raise ValueError(
            "`input_axis` and `output_axis` must be two different axes of the output. "
            f"Received: input_axis={input_axis}, output_axis={output_axis}, output rank={out_rank}"
        )
    return axis_in, axis_out


def divide_shape(
    shape: Sequence[int | None], input_axis: int, output_axis: int, factor: int, insert: bool = False
) -> Shape:
    """Shape after dividing ``input_axis`` by ``factor`` and multiplying ``output_axis`` by it.

    Both axes index the output shape. With ``insert=True`` a new axis of size 1
    is first inserted at ``output_axis``.

    Args:
        shape: the input shape.
        input_axis: the axis divided by ``factor``.
        output_axis: the axis multiplied by ``factor``.
        factor: a positive int that divides the ``input_axis`` dimension.
        insert: whether to insert a new axis at ``output_axis`` first.

    Returns:
        The output shape, with ``None`` where a dimension is unknown.

    Raises:
        ValueError: an axis is out of range, the axes are equal, or ``factor``
            is not positive or does not divide a known dimension.

    Example:
        >>> divide_shape((2, 4, 6, 8), input_axis=2, output_axis=-1, factor=3)
        (2, 4, 2, 24)
    """
    shape = normalize_shape(shape)
    factor = check_int(factor, "factor", minimum=1)
    axis_in, axis_out = divide_axes(len(shape), input_axis, output_axis, insert)
    if insert:
        shape = shape[:axis_out] + (1,) + shape[axis_out:]
    dim = shape[axis_in]
    if dim is not None and dim % factor:
        raise ValueError(
            f"`factor` must divide axis {axis_in} of size {dim}. "
            f"Received: factor={factor}, shape={format_shape(shape)}"
        )
    result = list(shape)
    result[axis_in] = None if dim is None else dim // factor
    result[axis_out] = _multiply(shape[axis_out], factor)
    return tuple(result)


def divide_plan(rank: int, input_axis: int, output_axis: int) -> tuple[int, ...]:
    """Permutation used by ``divide`` after splitting ``input_axis`` in two.

    The op first reshapes the input (of rank ``rank``, already normalized axes,
    no insertion) so that ``input_axis`` becomes two axes: ``(d / f, f)`` when the
    output axis is on the right, ``(f, d / f)`` when it is on the left. This
    returns the permutation of those ``rank + 1`` axes that puts the ``f`` part
    next to ``output_axis`` (major side when on the right, minor side when on
    the left), so that a final reshape merges them. It is the identity when
    the axes are neighbours.
    """
    if input_axis < output_axis:
        # axes of the split tensor: input -> (input, input + 1 = f part); output is at output + 1
        order = [axis for axis in range(rank + 1) if axis != input_axis + 1]
        position = order.index(output_axis + 1)
        order.insert(position, input_axis + 1)
    else:
        # split as (f, d / f): the f part is at input_axis, output axis unchanged
        order = [axis for axis in range(rank + 1) if axis != input_axis]
        position = order.index(output_axis)
        order.insert(position + 1, input_axis)
    return tuple(order)


def merge_axes(rank: int, left_axis: int, right_axis: int) -> tuple[int, int]:
    """Normalizes the axes of ``merge`` for an input of rank ``rank``."""
    axis_l = normalize_axis(left_axis, rank, "left_axis")
    axis_r = normalize_axis(right_axis, rank, "right_axis")
    if axis_l == axis_r:
        raise ValueError(
            "`left_axis` and `right_axis` must be two different axes. "
            f"Received: left_axis={left_axis}, right_axis={right_axis}, rank={rank}"
        )
    return axis_l, axis_r


def merge_plan(rank: int, left_axis: int, right_axis: int, left: bool = True) -> tuple[int, ...]:
    """Permutation used by ``merge`` before its final reshape.

    It keeps every other axis in order and puts ``left_axis`` immediately
    followed by ``right_axis`` where the kept axis (``left_axis`` when ``left``,
    else ``right_axis``) was. It is the identity for neighbours in that order.
    """
    kept, moved = (left_axis, right_axis) if left else (right_axis, left_axis)
    order = [axis for axis in range(rank) if axis != moved]
    position = order.index(kept)
    order[position : position + 1] = [left_axis, right_axis]
    return tuple(order)


def merge_shape(shape: Sequence[int | None], left_axis: int, right_axis: int, left: bool = True) -> Shape:
    """Shape after merging ``left_axis`` and ``right_axis``.

    The merged axis has the size ``dim(left_axis) * dim(right_axis)`` and stands
    where ``left_axis`` was (``left=True``) or where ``right_axis`` was.

    Raises:
        ValueError: an axis is out of range or the axes are equal.

    Example:
        >>> merge_shape((2, 4, 6, 8), left_axis=1, right_axis=-1, left=False)
        (2, 6, 32)
    """
    shape = normalize_shape(shape)
    axis_l, axis_r = merge_axes(len(shape), left_axis, right_axis)
    order = merge_plan(len(shape), axis_l, axis_r, left)
    position = order.index(axis_l)
    result = [shape[axis] for axis in order]
    result[position : position + 2] = [_multiply(shape[axis_l], shape[axis_r])]
    return tuple(result)


def swap_plan(rank: int, left_axis: int, right_axis: int) -> tuple[int, ...]:
    """Permutation that exchanges two axes (normalized, possibly equal)."""
    order = list(range(rank))
    order[left_axis], order[right_axis] = order[right_axis], order[left_axis]
    return tuple(order)


def swap_shape(shape: Sequence[int | None], left_axis: int, right_axis: int) -> Shape:
    """Shape after exchanging ``left_axis`` and ``right_axis``.

    Example:
        >>> swap_shape((2, 3, 5), 0, -1)
        (5, 3, 2)
    """
    shape = normalize_shape(shape)
    axis_l = normalize_axis(left_axis, len(shape), "left_axis", shape)
    axis_r = normalize_axis(right_axis, len(shape), "right_axis", shape)
    return tuple(shape[axis] for axis in swap_plan(len(shape), axis_l, axis_r))


def move_plan(rank: int, from_axis: int, to_axis: int) -> tuple[int, ...]:
    """Permutation that moves ``from_axis`` to position ``to_axis`` (normalized)."""
    order = [axis for axis in range(rank) if axis != from_axis]
    order.insert(to_axis, from_axis)
    return tuple(order)


def move_shape(shape: Sequence[int | None], from_axis: int, to_axis: int) -> Shape:
    """Shape after moving ``from_axis`` so that it ends at index ``to_axis``.

    Example:
        >>> move_shape((2, 3, 5), 0, -1)
        (3, 5, 2)
    """
    shape = normalize_shape(shape)
    axis_f = normalize_axis(from_axis, len(shape), "from_axis", shape)
    axis_t = normalize_axis(to_axis, len(shape), "to_axis", shape)
    return tuple(shape[axis] for axis in move_plan(len(shape), axis_f, axis_t))


def is_identity(order: Sequence[int]) -> bool:
    """Whether a permutation leaves every axis in place."""
    return all(axis == index for index, axis in enumerate(order))


__all__ = [
    "Shape",
    "check_int",
    "divide_axes",
    "divide_plan",
    "divide_shape",
    "format_shape",
    "is_identity",
    "merge_axes",
    "merge_plan",
    "merge_shape",
    "move_plan",
    "move_shape",
    "normalize_axis",
    "normalize_shape",
    "swap_plan",
    "swap_shape",
]

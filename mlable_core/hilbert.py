"""Hilbert folding: a flat axis laid out on a grid along the Hilbert curve, and back.

A Hilbert curve of ``order`` and ``rank`` visits every point of the grid
``[0, 2 ** order) ** rank`` once, always stepping to a neighbouring point, so
that elements close on the flat axis stay close on the grid. ``fold`` turns an
axis of length ``S = 2 ** (order * rank)`` into ``rank`` axes of side
``2 ** order``, element ``i`` going to the grid point of index ``i`` on the
curve; ``unfold`` is its inverse.

The curve follows the conventions of ``densecurves.hilbert`` exactly (John
Skilling's transpose algorithm, "Programming the Hilbert curve", 2004):
``point(i, order, rank)`` and ``index(coords, order, rank)`` here agree with
``densecurves.hilbert.point`` / ``densecurves.hilbert.index`` (``group=0``), but
work on whole numpy arrays with bit operations instead of one point at a time.
Coordinate ``c`` of a point is its position along the ``c``-th folded axis.

The permutations used by ``fold`` and ``unfold`` are computed once per
``(order, rank)`` and cached; the tensor ops are then a single ``tf.gather``
with a constant index and a reshape, so they work eagerly, in ``tf.function``
with unknown dimensions and under ``jit_compile=True``.

Shape letters: ``S = 2 ** (order * rank)`` the flat length, ``side = 2 ** order``
the side of the grid.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from mlable_core import shapes
from mlable_core.reshaping import dynamic_dims, reshape_target

# 2 ** 30 points already take 4 GiB per permutation; indices must also fit int32
MAX_BITS = 30


def _check_curve(order: int, rank: int) -> tuple[int, int]:
    order = shapes.check_int(order, "order", minimum=1)
    rank = shapes.check_int(rank, "rank", minimum=1)
    if order * rank > MAX_BITS:
        raise ValueError(
            f"`order * rank` must be at most {MAX_BITS} (a curve of 2 ** (order * rank) points). "
            f"Received: order={order}, rank={rank}"
        )
    return order, rank


def _exchange(coords: list[np.ndarray], bit: int, axis: int) -> None:
    """One step of Skilling's algorithm at ``bit`` for ``axis``, in place, on every point at once.

    Where bit ``bit`` of ``coords[axis]`` is set, the bits of ``coords[0]`` below it
    are inverted; elsewhere those low bits are exchanged between ``coords[0]``
    and ``coords[axis]`` (a no-op for ``axis == 0``).
    """
    low = (1 << bit) - 1  # the bits below `bit`
    is_set = -((coords[axis] >> bit) & 1)  # all ones where set, 0 elsewhere
    coords[0] ^= low & is_set
    if axis:
        exchange = (coords[0] ^ coords[axis]) & low & ~is_set
        coords[0] ^= exchange
        coords[axis] ^= exchange


def _untangle(coords: list[np.ndarray], order: int, rank: int) -> None:
    """Skilling's transpose-to-axes step, in place, vectorised over every point."""
    for bit in range(1, order):
        for axis in reversed(range(rank)):
            _exchange(coords, bit, axis)


def _entangle(coords: list[np.ndarray], order: int, rank: int) -> None:
    """Skilling's axes-to-transpose step (the inverse of ``_untangle``), in place."""
    for bit in reversed(range(1, order)):
        for axis in range(rank):
            _exchange(coords, bit, axis)


def point(position: int | np.ndarray, order: int, rank: int) -> np.ndarray:
    """Grid coordinates of positions on the Hilbert curve (vectorised ``densecurves.hilbert.point``).

    Args:
        position: an int or an integer array of positions in ``[0, 2 ** (order * rank))``.
        order: the number of bits per coordinate; the grid side is ``2 ** order``.
        rank: the number of coordinates (dimensions of the grid).

    Returns:
        An int64 array of shape ``position.shape + (rank,)`` whose last axis holds
        the coordinates, each in ``[0, 2 ** order)``.

    Raises:
        ValueError: ``order`` or ``rank`` is below 1, ``order * rank`` exceeds 30,
            or a position is out of range.

    Example:
        >>> point(np.arange(4), order=1, rank=2).tolist()
        [[0, 0], [0, 1], [1, 1], [1, 0]]
    """
    order, rank = _check_curve(order, rank)
    width = order * rank
    positions = np.asarray(position, dtype=np.int64)
    if positions.size and (positions.min() < 0 or positions.max() >= 1 << width):
        raise ValueError(
            f"`position` must be in [0, 2 ** (order * rank)) = [0, {1 << width}). "
            f"Received: positions in [{positions.min()}, {positions.max()}], order={order}, rank={rank}"
        )
    gray = positions ^ (positions >> 1)
    # the Gray code, read most significant bit first, deals its bits to the coordinates in turn
    coords = [np.zeros_like(gray) for _ in range(rank)]
    for level in range(order):
        for axis in range(rank):
            bit = (gray >> (width - 1 - (level * rank + axis))) & 1
            coords[axis] |= bit << (order - 1 - level)
    _untangle(coords, order, rank)
    return np.stack(coords, axis=-1)


def index(coords: Sequence[int] | np.ndarray, order: int, rank: int) -> np.ndarray:
    """Positions on the Hilbert curve of grid points (vectorised ``densecurves.hilbert.index``).

    Args:
        coords: an integer array whose last axis (of size ``rank``) holds the
            coordinates of points, each in ``[0, 2 ** order)``.
        order: the number of bits per coordinate.
        rank: the number of coordinates.

    Returns:
        An int64 array of shape ``coords.shape[:-1]``: the position of each point on the curve.

    Raises:
        ValueError: bad ``order`` / ``rank``, the last axis is not of size
            ``rank``, or a coordinate is out of range.

    Example:
        >>> index([[0, 0], [0, 1], [1, 1], [1, 0]], order=1, rank=2).tolist()
        [0, 1, 2, 3]
    """
    order, rank = _check_curve(order, rank)
    points = np.asarray(coords, dtype=np.int64)
    if points.ndim == 0 or points.shape[-1] != rank:
        raise ValueError(
            f"The last axis of `coords` must hold the {rank} coordinates. Received: shape={points.shape}, rank={rank}"
        )
    if points.size and (points.min() < 0 or points.max() >= 1 << order):
        raise ValueError(
            f"`coords` must be in [0, 2 ** order) = [0, {1 << order}). "
            f"Received: coordinates in [{points.min()}, {points.max()}], order={order}"
        )
    transposed = [points[..., axis].copy() for axis in range(rank)]
    _entangle(transposed, order, rank)
    width = order * rank
    gray = np.zeros(points.shape[:-1], dtype=np.int64)
    for level in range(order):
        for axis in range(rank):
            bit = (transposed[axis] >> (order - 1 - level)) & 1
            gray |= bit << (width - 1 - (level * rank + axis))
    # Gray decoding: the prefix XOR of the bits, by doubling shifts
    shift = 1
    while shift < width:
        gray ^= gray >> shift
        shift <<= 1
    return gray


def _read_only(array: np.ndarray) -> np.ndarray:
    array.setflags(write=False)
    return array


@functools.lru_cache(maxsize=32)
def fold_permutation(order: int, rank: int) -> np.ndarray:
    """The gather index of ``fold``: the curve position of every grid point, grid in C order.

    ``fold(x)`` along the flat axis is ``take(x, fold_permutation(order, rank))``
    reshaped to ``(side,) * rank``. Cached per ``(order, rank)``; the array is read-only.

    Returns:
        An int32 array of shape ``(S,)``, a permutation of ``range(S)``.
    """
    order, rank = _check_curve(order, rank)
    side = 1 << order
    grid = np.stack(np.unravel_index(np.arange(side**rank, dtype=np.int64), (side,) * rank), axis=-1)  # (S, rank)
    return _read_only(index(grid, order, rank).astype(np.int32))


@functools.lru_cache(maxsize=32)
def unfold_permutation(order: int, rank: int) -> np.ndarray:
    """The gather index of ``unfold``: the C-order grid index of each position on the curve.

    It is the inverse permutation of ``fold_permutation(order, rank)``. Cached; read-only.

    Returns:
        An int32 array of shape ``(S,)``, a permutation of ``range(S)``.
    """
    order, rank = _check_curve(order, rank)
    side = 1 << order
    coords = point(np.arange(side**rank, dtype=np.int64), order, rank)  # (S, rank)
    return _read_only(np.ravel_multi_index(tuple(coords.T), (side,) * rank).astype(np.int32))


def fold_shape(shape: Sequence[int | None], order: int, rank: int, axis: int = -1) -> shapes.Shape:
    """Shape after ``fold``: ``axis`` (of length ``S``) replaced by ``rank`` axes of side ``2 ** order``.

    Raises:
        ValueError: ``axis`` is out of range or its known length is not ``2 ** (order * rank)``.

    Example:
        >>> fold_shape((2, 64, 3), order=3, rank=2, axis=1)
        (2, 8, 8, 3)
    """
    order, rank = _check_curve(order, rank)
    shape = shapes.normalize_shape(shape)
    position = shapes.normalize_axis(axis, len(shape), "axis", shape)
    length = 1 << (order * rank)
    if shape[position] is not None and shape[position] != length:
        raise ValueError(
            f"Axis {position} of `x` must have length 2 ** (order * rank) = {length} to be folded. "
            f"Received: order={order}, rank={rank}, axis={axis}, shape={shapes.format_shape(shape)}"
        )
    return shape[:position] + (1 << order,) * rank + shape[position + 1 :]


def _unfold_axes(shape: shapes.Shape, rank: int, axes: Sequence[int] | None) -> tuple[int, ...]:
    if axes is None:
        if len(shape) < rank:
            raise ValueError(f"`x` must have at least rank={rank} axes to unfold. Received: shape={shapes.format_shape(shape)}")
        return tuple(range(len(shape) - rank, len(shape)))
    if isinstance(axes, (str, bytes)) or not isinstance(axes, Sequence):
        raise TypeError(f"`axes` must be a sequence of {rank} ints. Received: axes={axes!r}")
    if len(axes) != rank:
        raise ValueError(f"`axes` must list rank={rank} axes, one per coordinate. Received: axes={tuple(axes)}")
    normalized = tuple(shapes.normalize_axis(item, len(shape), "axes", shape) for item in axes)
    if len(set(normalized)) != rank:
        raise ValueError(f"`axes` must be distinct axes. Received: axes={tuple(axes)}, shape={shapes.format_shape(shape)}")
    return normalized


def _unfold_plan(rank_x: int, axes: tuple[int, ...]) -> tuple[tuple[int, ...], int]:
    """The transpose putting ``axes`` together, in order, where the smallest of them was; and that position."""
    first = min(axes)
    others = [item for item in range(rank_x) if item not in axes]
    position = sum(item < first for item in others)
    return tuple(others[:position] + list(axes) + others[position:]), position


def unfold_shape(
    shape: Sequence[int | None], order: int, rank: int, axes: Sequence[int] | None = None
) -> shapes.Shape:
    """Shape after ``unfold``: the ``rank`` grid axes replaced by one axis of length ``S``.

    The flat axis stands where the smallest of ``axes`` was, the other axes keep their order.

    Raises:
        ValueError: bad ``axes`` or a known grid side that is not ``2 ** order``.

    Example:
        >>> unfold_shape((2, 8, 8, 3), order=3, rank=2, axes=(1, 2))
        (2, 64, 3)
    """
    order, rank = _check_curve(order, rank)
    shape = shapes.normalize_shape(shape)
    grid_axes = _unfold_axes(shape, rank, axes)
    side = 1 << order
    for item in grid_axes:
        if shape[item] is not None and shape[item] != side:
            raise ValueError(
                f"Axis {item} of `x` must have length 2 ** order = {side} to be unfolded. "
                f"Received: order={order}, rank={rank}, axes={tuple(grid_axes)}, shape={shapes.format_shape(shape)}"
            )
    order_x, position = _unfold_plan(len(shape), grid_axes)
    moved = [shape[item] for item in order_x]
    return tuple(moved[:position]) + (1 << (order * rank),) + tuple(moved[position + rank :])


def _length_checks(dims: list[int | tf.Tensor], axes: Sequence[int], expected: int, message: str) -> list[tf.Operation]:
    checks = []
    for item in axes:
        if not isinstance(dims[item], int):
            checks.append(tf.debugging.Assert(tf.equal(dims[item], expected), [message, dims[item]]))
    return checks


def fold(x: tf.Tensor, order: int, rank: int, axis: int = -1) -> tf.Tensor:
    """Folds an axis of length ``2 ** (order * rank)`` into ``rank`` axes along the Hilbert curve.

    Element ``i`` of the axis goes to the grid point ``point(i, order, rank)``:
    ``fold(x)[..., c_0, ..., c_{rank-1}, ...] = x[..., index((c_0, ..., c_{rank-1})), ...]``.
    Consecutive elements land on neighbouring grid points (Manhattan distance 1).
    The cost is one ``tf.gather`` with a cached constant permutation and a reshape.

    Args:
        x: a tensor of known rank, any dtype.
        order: bits per grid coordinate; each new axis has ``side = 2 ** order``.
        rank: the number of new axes.
        axis: the axis to fold, of length ``S = 2 ** (order * rank)``.

    Returns:
        A tensor of shape ``fold_shape(x.shape, order, rank, axis)``: ``x.shape``
        with ``axis`` replaced by ``rank`` axes of side ``2 ** order``.

    Raises:
        ValueError: bad ``order`` / ``rank`` / ``axis``, or a static axis length other than ``S``.
        TypeError: ``order``, ``rank`` or ``axis`` is not an int.
        tf.errors.InvalidArgumentError: at run time, in graph mode, the axis length
            was unknown while tracing and is not ``S`` (under XLA, where assertions
            are dropped, the reshape to ``S`` fails instead).

    Example:
        >>> fold(tf.range(16)[None], order=2, rank=2, axis=1)[0].numpy()
        array([[ 0,  3,  4,  5],
               [ 1,  2,  7,  6],
               [14, 13,  8,  9],
               [15, 12, 11, 10]], dtype=int32)
    """
    x = tf.convert_to_tensor(x)
    if x.shape.rank is None:
        raise ValueError(f"The rank of `x` must be known. Received: x with shape {x.shape}")
    static = tuple(x.shape.as_list())
    output_static = fold_shape(static, order, rank, axis)
    position = shapes.normalize_axis(axis, len(static), "axis", static)
    length = 1 << (order * rank)
    dims = dynamic_dims(x)
    message = f"Axis {position} of `x` must have length 2 ** (order * rank) = {length} to be folded. Received length:"
    checks = _length_checks(dims, [position], length, message)
    with tf.control_dependencies(checks):
        if checks:
            dims[position] = length
            x = tf.reshape(x, reshape_target(dims))  # pins the length, so that XLA rejects a wrong one
        permutation = tf.constant(fold_permutation(order, rank))
        gathered = tf.gather(x, permutation, axis=position)
        folded = tf.reshape(gathered, reshape_target(dims[:position] + [1 << order] * rank + dims[position + 1 :]))  # (..., side, ..., side, ...)
    # the reshape already knows a fully static shape: no EnsureShape op then
    return folded if folded.shape.is_fully_defined() else tf.ensure_shape(folded, output_static)


def unfold(x: tf.Tensor, order: int, rank: int, axes: Sequence[int] | None = None) -> tf.Tensor:
    """Unfolds ``rank`` grid axes of side ``2 ** order`` into one axis along the Hilbert curve: ``fold``'s inverse.

    Position ``i`` of the output axis reads the grid point ``point(i, order, rank)``,
    whose coordinate ``c`` indexes ``axes[c]``. The output axis stands where the
    smallest of ``axes`` was; the other axes keep their order, so that
    ``unfold(fold(x, order, rank, axis), order, rank, range(axis, axis + rank)) == x``.

    Args:
        x: a tensor of known rank, any dtype.
        order: bits per grid coordinate; each grid axis has ``side = 2 ** order``.
        rank: the number of grid axes.
        axes: the ``rank`` distinct grid axes, coordinate 0 first; ``None`` means the last ``rank`` axes.

    Returns:
        A tensor of shape ``unfold_shape(x.shape, order, rank, axes)``.

    Raises:
        ValueError: bad ``order`` / ``rank`` / ``axes``, or a static grid side other than ``2 ** order``.
        TypeError: ``axes`` is not a sequence of ints.
        tf.errors.InvalidArgumentError: at run time, in graph mode, a grid side
            unknown while tracing is not ``2 ** order`` (under XLA the reshape fails instead).

    Example:
        >>> y = fold(tf.range(16)[None], order=2, rank=2, axis=1)
        >>> unfold(y, order=2, rank=2, axes=(1, 2)).numpy().tolist()
        [[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15]]
    """
    x = tf.convert_to_tensor(x)
    if x.shape.rank is None:
        raise ValueError(f"The rank of `x` must be known. Received: x with shape {x.shape}")
    static = tuple(x.shape.as_list())
    output_static = unfold_shape(static, order, rank, axes)
    grid_axes = _unfold_axes(static, rank, axes)
    side = 1 << order
    dims = dynamic_dims(x)
    message = f"The grid axes {grid_axes} of `x` must have length 2 ** order = {side} to be unfolded. Received length:"
    checks = _length_checks(dims, grid_axes, side, message)
    with tf.control_dependencies(checks):
        transpose, position = _unfold_plan(len(static), grid_axes)
        if not shapes.is_identity(transpose):
            x = tf.transpose(x, transpose)
        moved = [dims[item] for item in transpose]
        flat = moved[:position] + [1 << (order * rank)] + moved[position + rank :]
        x = tf.reshape(x, reshape_target(flat))  # (..., S, ...), fails (even under XLA) on a wrong side
        permutation = tf.constant(unfold_permutation(order, rank))
        unfolded = tf.gather(x, permutation, axis=position)
    return unfolded if unfolded.shape.is_fully_defined() else tf.ensure_shape(unfolded, output_static)


__all__ = [
    "fold",
    "fold_permutation",
    "fold_shape",
    "index",
    "point",
    "unfold",
    "unfold_permutation",
    "unfold_shape",
]

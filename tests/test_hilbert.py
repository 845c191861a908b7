"""Hilbert curve points and indices (against densecurves), fold and unfold."""

from __future__ import annotations

import densecurves.hilbert
import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given
from hypothesis import strategies as st

from mlable_core import hilbert
from tests import strategies

SMALL_CURVES = [(1, 1), (4, 1), (1, 2), (2, 2), (3, 2), (5, 2), (1, 3), (2, 3), (3, 3), (1, 4), (2, 4), (1, 6)]


@pytest.mark.parametrize("order,rank", SMALL_CURVES)
def test_points_and_indices_agree_with_densecurves(order, rank):
    length = 1 << (order * rank)
    expected = np.array([densecurves.hilbert.point(position, order=order, rank=rank) for position in range(length)])
    np.testing.assert_array_equal(hilbert.point(np.arange(length), order, rank), expected)
    # index on an independent set of points: the whole grid in C order
    side = 1 << order
    grid = np.stack(np.unravel_index(np.arange(length), (side,) * rank), axis=-1)
    expected_index = np.array([densecurves.hilbert.index(list(coords), order=order, rank=rank) for coords in grid])
    np.testing.assert_array_equal(hilbert.index(grid, order, rank), expected_index)


def test_large_curve_agrees_with_densecurves_on_random_points():
    order, rank = 10, 2
    positions = np.random.default_rng(0).integers(0, 1 << 20, size=300)
    expected = np.array([densecurves.hilbert.point(int(position), order=order, rank=rank) for position in positions])
    np.testing.assert_array_equal(hilbert.point(positions, order, rank), expected)
    np.testing.assert_array_equal(hilbert.index(expected, order, rank), positions)
    # the cached permutations hold the same answers
    side = 1 << order
    flat = np.ravel_multi_index(tuple(expected.T), (side, side))
    np.testing.assert_array_equal(hilbert.unfold_permutation(order, rank)[positions], flat)
    np.testing.assert_array_equal(hilbert.fold_permutation(order, rank)[flat], positions)


def test_scalar_inputs():
    assert hilbert.point(2, 1, 2).tolist() == densecurves.hilbert.point(2, order=1, rank=2)
    assert int(hilbert.index([1, 1], 1, 2)) == densecurves.hilbert.index([1, 1], order=1, rank=2)


@pytest.mark.parametrize("order,rank", [(3, 1), (4, 2), (2, 3), (2, 4), (1, 5)])
def test_consecutive_positions_are_grid_neighbours(order, rank):
    points = hilbert.point(np.arange(1 << (order * rank)), order, rank)
    np.testing.assert_array_equal(np.abs(np.diff(points, axis=0)).sum(axis=-1), 1)
    # and every grid point is visited once
    assert len({tuple(item) for item in points.tolist()}) == points.shape[0]


@pytest.mark.parametrize("order,rank", [(3, 2), (2, 3)])
def test_fold_places_consecutive_elements_on_neighbours(order, rank):
    length = 1 << (order * rank)
    folded = hilbert.fold(tf.range(length)[None], order, rank, axis=1).numpy()[0]  # (D,) * rank
    where = np.zeros((length, rank), dtype=np.int64)
    for coords in np.ndindex(*folded.shape):
        where[folded[coords]] = coords
    np.testing.assert_array_equal(np.abs(np.diff(where, axis=0)).sum(axis=-1), 1)
    # element i sits at densecurves.hilbert.point(i)
    expected = np.array([densecurves.hilbert.point(position, order=order, rank=rank) for position in range(length)])
    np.testing.assert_array_equal(where, expected)


def test_permutations_are_cached_read_only_and_inverse():
    first = hilbert.fold_permutation(4, 2)
    assert hilbert.fold_permutation(4, 2) is first
    assert not first.flags.writeable and first.dtype == np.int32
    inverse = hilbert.unfold_permutation(4, 2)
    np.testing.assert_array_equal(first[inverse], np.arange(256))
    np.testing.assert_array_equal(inverse[first], np.arange(256))


def numpy_fold(x: np.ndarray, order: int, rank: int, axis: int) -> np.ndarray:
    """Reference: output grid point c reads x at densecurves.hilbert.index(c), by a loop."""
    axis = axis % x.ndim
    side = 1 << order
    moved = np.moveaxis(x, axis, 0)
    out = np.empty((side,) * rank + moved.shape[1:], dtype=x.dtype)
    for coords in np.ndindex(*(side,) * rank):
        out[coords] = moved[densecurves.hilbert.index(list(coords), order=order, rank=rank)]
    return np.moveaxis(out, list(range(rank)), list(range(axis, axis + rank)))


@given(strategies.hilbert_cases())
def test_fold_matches_reference_and_unfold_inverts_it(case):
    order, rank, shape, axis = case
    x = strategies.arange(shape)
    folded = hilbert.fold(x, order, rank, axis)
    np.testing.assert_array_equal(folded.numpy(), numpy_fold(x, order, rank, axis))
    assert tuple(folded.shape) == hilbert.fold_shape(shape, order, rank, axis)
    position = axis % len(shape)
    axes = list(range(position, position + rank))
    np.testing.assert_array_equal(hilbert.unfold(folded, order, rank, axes).numpy(), x)
    assert hilbert.unfold_shape(folded.shape, order, rank, axes) == shape


@given(strategies.hilbert_cases(), st.randoms(use_true_random=False))
def test_unfold_any_axes_then_fold_restores(case, random):
    order, rank, flat_shape, axis = case
    # a grid tensor with the rank grid axes anywhere, in any order
    others = [side for index, side in enumerate(flat_shape) if index != axis % len(flat_shape)]
    total = len(others) + rank
    axes = random.sample(range(total), rank)
    shape = [0] * total
    for item in axes:
        shape[item] = 1 << order
    rest = iter(others)
    shape = tuple(next(rest) if side == 0 else side for side in shape)
    y = strategies.arange(shape)
    unfolded = hilbert.unfold(y, order, rank, axes)
    assert tuple(unfolded.shape) == hilbert.unfold_shape(shape, order, rank, axes)
    # reference: the grid axes together, in the given order, where the smallest was; then read along the curve
    position = min(axes)
    kept = [item for item in range(total) if item not in axes]
    grouped = np.transpose(y, [item for item in kept if item < position] + list(axes) + [item for item in kept if item > position])
    length = 1 << (order * rank)
    points = np.array([densecurves.hilbert.point(index, order=order, rank=rank) for index in range(length)])
    before = sum(item < position for item in kept)
    # adjacent advanced indices: the curve axis stays where the grid axes were
    np.testing.assert_array_equal(unfolded.numpy(), grouped[(slice(None),) * before + tuple(points.T)])
    # fold restores the grouped grid, hence y itself when the axes were already in place
    refolded = hilbert.fold(unfolded, order, rank, before)
    np.testing.assert_array_equal(refolded.numpy(), grouped)
    if axes == list(range(axes[0], axes[0] + rank)):
        np.testing.assert_array_equal(refolded.numpy(), y)


@pytest.mark.parametrize("order,rank,axis,shape", [(2, 2, 1, (2, 16, 3)), (1, 3, -1, (3, 8)), (3, 1, 0, (8, 2))])
def test_eager_graph_and_xla_agree(order, rank, axis, shape):
    x = strategies.arange(shape)
    position = axis % len(shape)
    axes = list(range(position, position + rank))
    op = lambda t: hilbert.unfold(hilbert.fold(t, order, rank, axis) * 2.0, order, rank, axes)  # noqa: E731
    fold = lambda t: hilbert.fold(t, order, rank, axis)  # noqa: E731
    spec = [tf.TensorSpec([None] * len(shape), tf.float32)]
    for function in (fold, op):
        eager = function(x).numpy()
        for compiled in (
            tf.function(function, input_signature=spec),
            tf.function(function, input_signature=spec, jit_compile=True),
            tf.function(function, jit_compile=True),
        ):
            np.testing.assert_array_equal(compiled(x).numpy(), eager)
    np.testing.assert_array_equal(op(x).numpy(), 2 * x)


def test_unknown_dims_keep_static_sides():
    @tf.function(input_signature=[tf.TensorSpec([None, None, 3], tf.float32)])
    def roundtrip(x):
        folded = hilbert.fold(x, 2, 2, axis=1)
        assert folded.shape.as_list() == [None, 4, 4, 3]
        flat = hilbert.unfold(folded, 2, 2, (1, 2))
        assert flat.shape.as_list() == [None, 16, 3]
        return flat

    x = strategies.arange((2, 16, 3))
    np.testing.assert_array_equal(roundtrip(x).numpy(), x)


ERRORS = [
    (lambda: hilbert.fold(tf.zeros((2, 15)), 2, 2), ValueError, r"Axis 1 of `x` must have length 2 \*\* \(order \* rank\) = 16 to be folded\. Received: order=2, rank=2, axis=-1, shape=\(2, 15\)"),
    (lambda: hilbert.fold(tf.zeros((2, 16)), 2, 2, axis=2), ValueError, r"`axis` must be in \[-2, 2\)\. Received: axis=2, shape=\(2, 16\)"),
    (lambda: hilbert.fold(tf.zeros((2, 16)), 0, 2), ValueError, r"`order` must be an int >= 1\. Received: order=0"),
    (lambda: hilbert.fold(tf.zeros((2, 16)), 2, 0), ValueError, r"`rank` must be an int >= 1\. Received: rank=0"),
    (lambda: hilbert.fold(tf.zeros((2, 16)), 2.0, 2), TypeError, r"`order` must be an int\. Received: order=2\.0 of type float"),
    (lambda: hilbert.fold(tf.zeros((2, 16)), 16, 2), ValueError, r"`order \* rank` must be at most 30 .* Received: order=16, rank=2"),
    (lambda: hilbert.unfold(tf.zeros((2, 4, 5)), 2, 2), ValueError, r"Axis 2 of `x` must have length 2 \*\* order = 4 to be unfolded\. Received: order=2, rank=2, axes=\(1, 2\), shape=\(2, 4, 5\)"),
    (lambda: hilbert.unfold(tf.zeros((2, 4, 4)), 2, 2, axes=(1,)), ValueError, r"`axes` must list rank=2 axes, one per coordinate\. Received: axes=\(1,\)"),
    (lambda: hilbert.unfold(tf.zeros((2, 4, 4)), 2, 2, axes=(1, -2)), ValueError, r"`axes` must be distinct axes\. Received: axes=\(1, -2\)"),
    (lambda: hilbert.unfold(tf.zeros((2, 4, 4)), 2, 2, axes=(1, 3)), ValueError, r"`axes` must be in \[-3, 3\)\. Received: axes=3"),
    (lambda: hilbert.unfold(tf.zeros((2, 4, 4)), 2, 2, axes=1), TypeError, r"`axes` must be a sequence of 2 ints\. Received: axes=1"),
    (lambda: hilbert.unfold(tf.zeros((4,)), 2, 2), ValueError, r"`x` must have at least rank=2 axes to unfold\. Received: shape=\(4,\)"),
    (lambda: hilbert.point([0, 4], 1, 2), ValueError, r"`position` must be in \[0, 2 \*\* \(order \* rank\)\) = \[0, 4\)\. Received: positions in \[0, 4\]"),
    (lambda: hilbert.index([[0, 2]], 1, 2), ValueError, r"`coords` must be in \[0, 2 \*\* order\) = \[0, 2\)"),
    (lambda: hilbert.index([0, 1, 1], 1, 2), ValueError, r"The last axis of `coords` must hold the 2 coordinates\. Received: shape=\(3,\)"),
]


@pytest.mark.parametrize("call,error,message", ERRORS)
def test_errors(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_runtime_length_errors():
    fold = tf.function(lambda t: hilbert.fold(t, 2, 2, axis=1), input_signature=[tf.TensorSpec([None, None], tf.float32)])
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"Axis 1 of `x` must have length 2 \*\* \(order \* rank\) = 16 to be folded"):
        fold(tf.zeros((2, 15)))
    unfold = tf.function(lambda t: hilbert.unfold(t, 2, 2), input_signature=[tf.TensorSpec([None, None, None], tf.float32)])
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"must have length 2 \*\* order = 4 to be unfolded"):
        unfold(tf.zeros((2, 4, 8)))
    # under XLA the assertion is dropped but the reshape to the pinned length still refuses a wrong one
    compiled = tf.function(lambda t: hilbert.fold(t, 2, 2, axis=1), input_signature=[tf.TensorSpec([None, None], tf.float32)], jit_compile=True)
    with pytest.raises(tf.errors.InvalidArgumentError):
        compiled(tf.zeros((2, 20)))

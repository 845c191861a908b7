"""Shape algebra, reshaping ops and layers: Divide, Merge, Swap, Move."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given
from hypothesis import strategies as st

from mlable_core import reshaping, shapes
from mlable_keras.layers import reshaping as layers
from tests import strategies
from tests.harness import run_layer_test

# independent numpy references ---------------------------------------------------------------


def numpy_divide(x: np.ndarray, input_axis: int, output_axis: int, factor: int, insert: bool) -> np.ndarray:
    """``divide`` from ``reshape`` and ``moveaxis``, axes already normalized (output coordinates)."""
    if insert:
        x = np.expand_dims(x, output_axis)
    size = x.shape[input_axis]
    head, tail = x.shape[:input_axis], x.shape[input_axis + 1 :]
    if input_axis < output_axis:
        split = x.reshape(head + (size // factor, factor) + tail)
        moved = np.moveaxis(split, input_axis + 1, output_axis)  # f lands just before the output axis
        position = output_axis
    else:
        split = x.reshape(head + (factor, size // factor) + tail)
        moved = np.moveaxis(split, input_axis, output_axis + 1)  # f lands just after the output axis
        position = output_axis
    merged = moved.shape[:position] + (moved.shape[position] * moved.shape[position + 1],) + moved.shape[position + 2 :]
    return moved.reshape(merged)


def formula_divide(x: np.ndarray, input_axis: int, output_axis: int, factor: int) -> np.ndarray:
    """``divide`` element by element from the index formulas of the specification (no insert)."""
    out_shape = list(x.shape)
    d_i, d_o = x.shape[input_axis], x.shape[output_axis]
    out_shape[input_axis] = d_i // factor
    out_shape[output_axis] = d_o * factor
    out = np.empty(out_shape, dtype=x.dtype)
    for index in np.ndindex(*out_shape):
        source = list(index)
        if input_axis < output_axis:
            a, (b, c) = index[input_axis], divmod(index[output_axis], d_o)
            source[input_axis], source[output_axis] = a * factor + b, c
        else:
            a, (c, b) = index[input_axis], divmod(index[output_axis], factor)
            source[input_axis], source[output_axis] = b * (d_i // factor) + a, c
        out[index] = x[tuple(source)]
    return out


def numpy_merge(x: np.ndarray, left_axis: int, right_axis: int, left: bool) -> np.ndarray:
    """``merge`` from an explicit transpose: other axes in order, the pair where the kept axis was."""
    kept = left_axis if left else right_axis
    others = [axis for axis in range(x.ndim) if axis not in (left_axis, right_axis)]
    position = sum(axis < kept for axis in others)
    order = others[:position] + [left_axis, right_axis] + others[position:]
    moved = x.transpose(order)
    return moved.reshape(moved.shape[:position] + (-1,) + moved.shape[position + 2 :])


# shape algebra --------------------------------------------------------------------------------


def test_seed_shapes():
    assert shapes.divide_shape((2, 4, 6, 8), 2, -1, 3) == (2, 4, 2, 24)
    assert shapes.merge_shape((2, 4, 6, 8), 1, -1, left=False) == (2, 6, 32)
    assert shapes.merge_shape((2, 4, 6, 8), 1, -1, left=True) == (2, 32, 6)


def test_shapes_with_unknown_dims():
    assert shapes.divide_shape((None, None, 8), 1, 2, 4) == (None, None, 32)
    assert shapes.divide_shape((None, 12, None), 1, 2, 4) == (None, 3, None)
    assert shapes.divide_shape((None, 12), 1, 2, 4, insert=True) == (None, 3, 4)
    assert shapes.merge_shape((None, 3, 4), 1, 2) == (None, 12)
    assert shapes.merge_shape((None, None, 4), 1, 2) == (None, None)


def test_shape_helpers():
    assert shapes.swap_shape((2, 3, 5), 0, -1) == (5, 3, 2)
    assert shapes.move_shape((2, 3, 5), 0, -1) == (3, 5, 2)
    assert shapes.move_shape((2, 3, 5), -1, 0) == (5, 2, 3)
    assert shapes.normalize_shape(tf.TensorShape([None, 3])) == (None, 3)
    assert shapes.is_identity((0, 1, 2)) and not shapes.is_identity((1, 0))


@given(strategies.divide_cases())
def test_divide_matches_numpy_and_shape_function(case):
    x = strategies.arange(case.shape)
    expected = numpy_divide(x, case.input_axis, case.output_axis, case.factor, case.insert)
    actual = reshaping.divide(x, case.given_input_axis, case.given_output_axis, case.factor, case.insert)
    np.testing.assert_array_equal(actual.numpy(), expected)
    assert shapes.divide_shape(case.shape, case.given_input_axis, case.given_output_axis, case.factor, case.insert) == expected.shape
    layer = layers.Divide(case.given_input_axis, case.given_output_axis, case.factor, case.insert)
    assert layer.compute_output_shape(case.shape) == expected.shape
    np.testing.assert_array_equal(np.sort(actual.numpy(), axis=None), np.sort(x, axis=None))


@pytest.mark.parametrize(
    "shape,input_axis,output_axis,factor",
    [((4, 3), 0, 1, 2), ((3, 4), 1, 0, 2), ((6, 2, 3), 0, 2, 3), ((3, 2, 6), 2, 0, 3), ((2, 6, 5, 3), 1, 3, 2), ((2, 3, 5, 6), 3, 1, 3)],
)
def test_divide_follows_the_index_formulas(shape, input_axis, output_axis, factor):
    x = strategies.arange(shape)
    np.testing.assert_array_equal(
        reshaping.divide(x, input_axis, output_axis, factor).numpy(), formula_divide(x, input_axis, output_axis, factor)
    )


@given(strategies.merge_cases())
def test_merge_matches_numpy_and_shape_function(case):
    shape, left_axis, right_axis, left = case
    x = strategies.arange(shape)
    expected = numpy_merge(x, left_axis, right_axis, left)
    actual = reshaping.merge(x, left_axis - len(shape), right_axis, left)
    np.testing.assert_array_equal(actual.numpy(), expected)
    assert shapes.merge_shape(shape, left_axis, right_axis, left) == expected.shape
    assert layers.Merge(left_axis, right_axis, left).compute_output_shape(shape) == expected.shape


@given(strategies.divide_cases())
def test_divide_back_with_swapped_axes_and_merge_undo_divide(case):
    x = strategies.arange(case.shape)
    divided = reshaping.divide(x, case.input_axis, case.output_axis, case.factor, case.insert)
    if not case.insert:
        restored = reshaping.divide(divided, case.output_axis, case.input_axis, case.factor)
        np.testing.assert_array_equal(restored.numpy(), x)
        return
    # with insert, the new axis holds the f part: merging it back is the inverse
    if case.input_axis < case.output_axis:
        restored = reshaping.merge(divided, case.input_axis, case.output_axis, left=True)
    else:
        restored = reshaping.merge(divided, case.output_axis, case.input_axis, left=False)
    np.testing.assert_array_equal(restored.numpy(), x)


@given(strategies.merge_cases())
def test_divide_undoes_merge(case):
    shape, left_axis, right_axis, left = case
    left_axis, right_axis = min(left_axis, right_axis), max(left_axis, right_axis)
    x = strategies.arange(shape)
    merged = reshaping.merge(x, left_axis, right_axis, left)
    if left:
        # merged axis at left_axis, right part minor: split it out to a new axis at right_axis
        restored = reshaping.divide(merged, left_axis, right_axis, shape[right_axis], insert=True)
    else:
        # merged axis at right_axis - 1, left part major: split it out to a new axis at left_axis
        restored = reshaping.divide(merged, right_axis, left_axis, shape[left_axis], insert=True)
    np.testing.assert_array_equal(restored.numpy(), x)


@given(strategies.divide_cases(max_rank=4), st.booleans())
def test_eager_graph_with_unknown_dims_and_xla_agree(case, use_merge):
    x = strategies.arange(case.shape)
    if use_merge and len(case.shape) >= 2:
        op = lambda t: reshaping.merge(t, 0, -1, left=False)  # noqa: E731
    else:
        op = lambda t: reshaping.divide(t, case.input_axis, case.output_axis, case.factor, case.insert)  # noqa: E731
    eager = op(x).numpy()
    spec = tf.TensorSpec([None] * len(case.shape), tf.float32)
    graph = tf.function(op, input_signature=[spec])(x)
    compiled = tf.function(op, input_signature=[spec], jit_compile=True)(x)
    compiled_static = tf.function(op, jit_compile=True)(x)
    for other in (graph, compiled, compiled_static):
        np.testing.assert_array_equal(other.numpy(), eager)


def test_unknown_dims_keep_static_information():
    @tf.function(input_signature=[tf.TensorSpec([None, None, 8], tf.float32)])
    def f(x):
        y = reshaping.divide(x, 1, 2, 4)
        assert y.shape.as_list() == [None, None, 32]
        z = reshaping.merge(y, 1, 2)
        assert z.shape.as_list() == [None, None]
        return z

    assert f(tf.zeros((2, 8, 8))).shape == (2, 64)


def test_swap_and_move_match_numpy():
    x = strategies.arange((2, 3, 4, 5))
    np.testing.assert_array_equal(reshaping.swap(x, 0, -1).numpy(), np.swapaxes(x, 0, -1))
    np.testing.assert_array_equal(reshaping.move(x, 1, -1).numpy(), np.moveaxis(x, 1, -1))
    np.testing.assert_array_equal(reshaping.move(x, -1, 0).numpy(), np.moveaxis(x, -1, 0))
    np.testing.assert_array_equal(reshaping.swap(x, 2, 2).numpy(), x)


# errors -------------------------------------------------------------------------------------

ERRORS = [
    (lambda: reshaping.divide(tf.ones((2, 4, 10, 8)), 2, -1, 3), ValueError, r"`factor` must divide axis 2 of size 10\. Received: factor=3, shape=\(2, 4, 10, 8\)"),
    (lambda: reshaping.divide(tf.ones((2, 4)), 1, 0, 0), ValueError, r"`factor` must be an int >= 1\. Received: factor=0"),
    (lambda: reshaping.divide(tf.ones((2, 4)), 1, 0, -2), ValueError, r"`factor` must be an int >= 1\. Received: factor=-2"),
    (lambda: reshaping.divide(tf.ones((2, 4)), 1, 0, 2.0), TypeError, r"`factor` must be an int\. Received: factor=2\.0 of type float"),
    (lambda: reshaping.divide(tf.ones((2, 4)), 1, 0, True), TypeError, r"`factor` must be an int"),
    (lambda: reshaping.divide(tf.ones((2, 4)), 2, 0, 2), ValueError, r"`input_axis` must be in \[-2, 2\)\. Received: input_axis=2"),
    (lambda: reshaping.divide(tf.ones((2, 4)), 1, -3, 2), ValueError, r"`output_axis` must be in \[-2, 2\)\. Received: output_axis=-3"),
    (lambda: reshaping.divide(tf.ones((2, 4)), 1, 1, 2), ValueError, r"`input_axis` and `output_axis` must be two different axes"),
    (lambda: reshaping.divide(tf.ones((2, 4)), 1, 3, 2, insert=True), ValueError, r"`output_axis` must be in \[-3, 3\)"),
    (lambda: reshaping.merge(tf.ones((2, 4, 6)), 1, -2), ValueError, r"`left_axis` and `right_axis` must be two different axes\. Received: left_axis=1, right_axis=-2"),
    (lambda: reshaping.merge(tf.ones((2, 4, 6)), 3, 1), ValueError, r"`left_axis` must be in \[-3, 3\)\. Received: left_axis=3"),
    (lambda: reshaping.swap(tf.ones((2, 4)), 0, 2), ValueError, r"`right_axis` must be in \[-2, 2\)\. Received: right_axis=2, shape=\(2, 4\)"),
    (lambda: reshaping.move(tf.ones((2, 4)), -3, 0), ValueError, r"`from_axis` must be in \[-2, 2\)\. Received: from_axis=-3"),
    (lambda: layers.Divide(2, -1, factor=0), ValueError, r"`factor` must be an int >= 1\. Received: factor=0"),
    (lambda: layers.Divide(2, -1, factor=3).compute_output_shape((2, 4, 10, 8)), ValueError, r"`factor` must divide axis 2 of size 10"),
    (lambda: layers.Merge("1", 2), TypeError, r"`left_axis` must be an int\. Received: left_axis='1' of type str"),
    (lambda: layers.Divide(2, -1, factor=3)(tf.ones((2, 4, 10, 8))), ValueError, r"`factor` must divide axis 2 of size 10"),
]


@pytest.mark.parametrize("call,error,message", ERRORS)
def test_errors(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_runtime_divisibility_error_in_graph():
    f = tf.function(lambda t: reshaping.divide(t, 1, 2, 3), input_signature=[tf.TensorSpec([None, None, 5], tf.float32)])
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"`factor` must divide axis 1\. Received: factor=3.*\n?.*7"):
        f(tf.zeros((2, 7, 5)))


# layers ---------------------------------------------------------------------------------------

SEED_DIVIDE = """
import mlable.layers.reshaping

__x = tf.ones(shape=(2, 4, 6, 8))
__l = mlable.layers.reshaping.Divide(
    input_axis=2, # relative to the NEW shape / rank
    output_axis=-1, # same
    factor=3,
    insert=False,) # whether to create a new axis

result = list(__l(__x).shape)
"""

SEED_MERGE = """
import mlable.layers.reshaping

__x = tf.ones(shape=(2, 4, 6, 8))
__l = mlable.layers.reshaping.Merge(
    left_axis=1,
    right_axis=-1,
    left=False,) # whether to merge into the left axis

result = list(__l(__x).shape)
"""


@pytest.mark.parametrize("source,expected", [(SEED_DIVIDE, [2, 4, 2, 24]), (SEED_MERGE, [2, 6, 32])])
def test_seed_readme_examples(source, expected):
    namespace = {"tf": tf}
    exec(source, namespace)  # the README's lines, verbatim but for naming the last expression
    assert namespace["result"] == expected


def test_seed_namespace_exports_the_same_classes():
    import mlable.layers.reshaping

    assert mlable.layers.reshaping.Divide is layers.Divide
    assert mlable.layers.reshaping.Merge is layers.Merge


LAYER_CASES = [
    (layers.Divide, dict(input_axis=2, output_axis=-1, factor=3), (2, 4, 6, 8)),
    (layers.Divide, dict(input_axis=1, output_axis=3, factor=2), (2, 4, 3, 5)),
    (layers.Divide, dict(input_axis=1, output_axis=2, factor=4, insert=True), (2, 8, 3)),
    (layers.Merge, dict(left_axis=1, right_axis=-1, left=False), (2, 4, 6, 8)),
    (layers.Merge, dict(left_axis=-1, right_axis=1, left=True), (2, 4, 6, 8)),
    (layers.Swap, dict(left_axis=1, right_axis=-1), (2, 3, 5)),
    (layers.Move, dict(from_axis=1, to_axis=-1), (2, 3, 4, 5)),
]


@pytest.mark.parametrize("layer_cls,kwargs,shape", LAYER_CASES)
def test_layer_harness(layer_cls, kwargs, shape):
    x = np.random.default_rng(0).normal(size=shape).astype("float32")
    core = {layers.Divide: reshaping.divide, layers.Merge: reshaping.merge, layers.Swap: reshaping.swap, layers.Move: reshaping.move}[layer_cls]
    run_layer_test(
        layer_cls,
        kwargs,
        x,
        expected_num_trainable_weights=0,
        reference_fn=lambda layer, inputs: core(inputs, **kwargs).numpy(),
        reference_tolerance=0.0,
        symbolic_shapes=[(None,) + shape[1:]],
    )


def test_layers_keep_integer_inputs():
    x = tf.constant(strategies.arange((2, 4, 6), dtype="int32"))
    y = layers.Divide(1, 2, 2, dtype="mixed_float16")(x)
    assert y.dtype == tf.int32
    np.testing.assert_array_equal(y.numpy(), numpy_divide(x.numpy(), 1, 2, 2, False))

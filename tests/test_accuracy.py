"""Core group accuracy ops: group reductions, decoders, per-group correctness, weights."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given
from hypothesis import strategies as st

from mlable_core import accuracy
from tests import accuracy_reference as reference
from tests import strategies


def _spec(x: np.ndarray) -> tf.TensorSpec:
    return tf.TensorSpec([None] * x.ndim, tf.as_dtype(x.dtype))


def _eager_graph_xla(fn, *arrays: np.ndarray) -> list[np.ndarray]:
    """``fn(*arrays)`` eagerly, in a tf.function with every dimension unknown, and under XLA."""
    eager = fn(*arrays)
    graph = tf.function(fn, input_signature=[_spec(array) for array in arrays])(*arrays)
    compiled = tf.function(fn, input_signature=[_spec(array) for array in arrays], jit_compile=True)(*arrays)
    return [np.asarray(result) for result in (eager, graph, compiled)]


# group reductions ---------------------------------------------------------------------------


@given(strategies.group_cases(), st.booleans())
def test_group_reductions_match_numpy(case, repeat):
    x = np.random.default_rng(case.seed).random(case.shape) < 0.8
    for op, ref in ((accuracy.group_all, reference.group_all), (accuracy.group_any, reference.group_any)):
        expected = ref(x, case.group, case.axis)
        if repeat:
            expected = np.repeat(expected, case.group, axis=case.axis)
        result = op(x, case.group, case.given_axis, repeat=repeat).numpy()
        assert result.dtype == bool
        np.testing.assert_array_equal(result, expected)


# every op, eagerly, in a tf.function with unknown dims and under XLA, on a few fixed cases
_RNG = np.random.default_rng(7)
_LABELS, _ONE_HOT, _PROBS = reference.categorical_data((3, 8, 2), 5, _RNG)
_BITS_TRUE, _BITS_PRED = reference.binary_data((3, 32, 2), _RNG)
_RAW_TRUE, _RAW_PRED = reference.raw_data((3, 8, 2), _RNG)

MODE_CASES = [
    ("group_all", lambda t: accuracy.group_all(t, 4, axis=1), (_BITS_PRED > 0.5,),
     reference.group_all(_BITS_PRED > 0.5, 4, 1)),
    ("group_any repeat", lambda t: accuracy.group_any(t, 2, axis=-1, repeat=True), (_BITS_PRED > 0.5,),
     np.repeat(reference.group_any(_BITS_PRED > 0.5, 2, -1), 2, axis=-1)),
    ("decode_binary", lambda t: accuracy.decode_binary(t, 8, 0.5, axis=1), (_BITS_PRED,),
     reference.decode_binary(_BITS_PRED, 8, 0.5, 1)),
    ("categorical", lambda a, b: accuracy.categorical_group_accuracy(a, b, 4, axis=1), (_ONE_HOT, _PROBS),
     reference.categorical(_ONE_HOT, _PROBS, 4, 1)),
    ("sparse", lambda a, b: accuracy.sparse_categorical_group_accuracy(a, b, 2, axis=-1), (_LABELS, _PROBS),
     reference.sparse_categorical(_LABELS, _PROBS, 2, -1)),
    ("binary", lambda a, b: accuracy.binary_group_accuracy(a, b, 2, 8, 0.5, axis=1), (_BITS_TRUE, _BITS_PRED),
     reference.binary(_BITS_TRUE, _BITS_PRED, 2, 8, 0.5, 1)),
    ("raw", lambda a, b: accuracy.raw_group_accuracy(a, b, 4, 256.0, axis=1), (_RAW_TRUE, _RAW_PRED),
     reference.raw(_RAW_TRUE, _RAW_PRED, 4, 256.0, 1)),
]


@pytest.mark.parametrize("name,fn,arrays,expected", MODE_CASES, ids=[case[0] for case in MODE_CASES])
def test_eager_graph_with_unknown_dims_and_xla_agree_with_numpy(name, fn, arrays, expected):
    for result in _eager_graph_xla(fn, *arrays):
        np.testing.assert_array_equal(result, expected)


def test_group_reductions_on_non_boolean_inputs():
    x = tf.constant([[0.0, 2.0, 3.0, -1.0]])
    np.testing.assert_array_equal(accuracy.group_all(x, 2).numpy(), [[False, True]])
    np.testing.assert_array_equal(accuracy.group_any(tf.constant([[0, 0, 0, 5]]), 2).numpy(), [[False, True]])


def test_group_reductions_keep_static_shapes():
    @tf.function(input_signature=[tf.TensorSpec([None, 12, None], tf.bool)])
    def f(x):
        grouped = accuracy.group_all(x, 4, axis=1)
        assert grouped.shape.as_list() == [None, 3, None]
        repeated = accuracy.group_any(x, 4, axis=1, repeat=True)
        assert repeated.shape.as_list() == [None, 12, None]
        return grouped

    assert f(tf.ones((2, 12, 3), tf.bool)).shape == (2, 3, 3)


# decoders -------------------------------------------------------------------------------------


@given(strategies.group_cases(max_group=3), st.integers(1, 9), st.sampled_from([0.0, 0.5, 0.6]))
def test_decode_binary_matches_bit_strings(case, depth, threshold):
    shape = list(case.shape)
    shape[case.axis] *= depth
    y = np.random.default_rng(case.seed).random(shape).astype("float32") * 2 - 0.5
    expected = reference.decode_binary(y, depth, threshold, case.axis)
    np.testing.assert_array_equal(accuracy.decode_binary(y, depth, threshold, case.given_axis).numpy(), expected)


def test_decode_binary_is_big_endian_strict_and_wide():
    y = tf.constant([[0.0, 0.9, 0.8, 1.0, 0.2, 0.3]])
    np.testing.assert_array_equal(accuracy.decode_binary(y, depth=3).numpy(), [[3, 4]])
    # strictly above the threshold: a value equal to it is a 0 bit
    np.testing.assert_array_equal(accuracy.decode_binary(tf.constant([0.5, 0.6]), depth=2).numpy(), [1])
    ones = tf.ones((40,))
    assert accuracy.decode_binary(ones, depth=40).dtype == tf.int64
    assert int(accuracy.decode_binary(ones, depth=40)[0]) == 2**40 - 1
    assert accuracy.decode_binary(tf.ones((31,)), depth=31).dtype == tf.int32


def test_decode_categorical_and_raw_match_numpy():
    rng = np.random.default_rng(0)
    y = rng.normal(size=(3, 5, 7)).astype("float32")
    np.testing.assert_array_equal(accuracy.decode_categorical(y).numpy(), np.argmax(y, axis=-1))
    r = np.array([0.25, 0.5 / 256, 1.5 / 256, 2.5 / 256, 0.999, -0.3], dtype="float32")
    np.testing.assert_array_equal(accuracy.decode_raw(r, 256.0).numpy(), np.round(256.0 * r))  # half to even
    half = tf.constant([0.7, 0.3], tf.bfloat16)
    np.testing.assert_array_equal(accuracy.decode_raw(half, 1000.0).numpy(), np.round(1000.0 * half.numpy().astype("float32")))


# per-group correctness ----------------------------------------------------------------------


@given(strategies.group_cases(), st.integers(2, 6))
def test_categorical_matches_numpy(case, classes):
    labels, one_hot, y_pred = reference.categorical_data(case.shape, classes, np.random.default_rng(case.seed))
    expected = reference.categorical(one_hot, y_pred, case.group, case.axis)
    result = accuracy.categorical_group_accuracy(one_hot, y_pred, case.group, case.given_axis)
    np.testing.assert_array_equal(result.numpy(), expected)
    sparse = accuracy.sparse_categorical_group_accuracy(labels, y_pred, case.group, case.given_axis)
    np.testing.assert_array_equal(sparse.numpy(), reference.sparse_categorical(labels, y_pred, case.group, case.axis))


@given(strategies.group_cases(), st.integers(1, 8), st.sampled_from([0.0, 0.5, 0.6]), st.booleans())
def test_binary_matches_numpy(case, depth, threshold, soft):
    shape = list(case.shape)
    shape[case.axis] *= depth
    y_true, y_pred = reference.binary_data(tuple(shape), np.random.default_rng(case.seed), threshold, soft=soft)
    expected = reference.binary(y_true, y_pred, case.group, depth, threshold, case.axis)
    result = accuracy.binary_group_accuracy(y_true, y_pred, case.group, depth, threshold, case.given_axis)
    np.testing.assert_array_equal(result.numpy(), expected)


@given(strategies.group_cases(), st.sampled_from([256.0, 100.0]))
def test_raw_matches_numpy(case, factor):
    y_true, y_pred = reference.raw_data(case.shape, np.random.default_rng(case.seed), factor)
    expected = reference.raw(y_true, y_pred, case.group, factor, case.axis)
    result = accuracy.raw_group_accuracy(y_true, y_pred, case.group, factor, case.given_axis)
    np.testing.assert_array_equal(result.numpy(), expected)


@given(strategies.group_cases(max_group=3), st.integers(2, 3))
def test_larger_groups_are_never_more_accurate(case, multiple):
    shape = list(case.shape)
    shape[case.axis] *= multiple
    _, one_hot, y_pred = reference.categorical_data(tuple(shape), 4, np.random.default_rng(case.seed))
    small = accuracy.categorical_group_accuracy(one_hot, y_pred, case.group, case.axis).numpy()
    large = accuracy.categorical_group_accuracy(one_hot, y_pred, case.group * multiple, case.axis).numpy()
    assert large.mean() <= small.mean() + 1e-7
    # stronger: a large group is right exactly when all of its small groups are
    np.testing.assert_array_equal(large, reference.group_all(small, multiple, case.axis).astype("float32"))


def test_binary_thresholds_the_targets_too():
    # Keras' BinaryAccuracy compares raw targets with thresholded predictions; here both are thresholded
    y_true = tf.constant([[0.9, 0.2, 0.7, 0.0]])
    y_pred = tf.constant([[0.8, 0.1, 0.6, 0.4]])
    np.testing.assert_array_equal(accuracy.binary_group_accuracy(y_true, y_pred, group=1, depth=1).numpy(), [[1.0, 1.0, 1.0, 1.0]])
    np.testing.assert_array_equal(accuracy.binary_group_accuracy(y_true, y_pred, group=1, depth=1, threshold=0.65).numpy(), [[1.0, 1.0, 0.0, 1.0]])


def test_binary_group_is_right_only_when_every_bit_is():
    # one UTF-32-BE character of "a" = (0, 0, 0, 97) as 32 bits; flip one bit of the last byte
    bits = np.unpackbits(np.array([0, 0, 0, 97], dtype=np.uint8)).astype("float32")[None]
    wrong = bits.copy()
    wrong[0, -1] = 1.0 - wrong[0, -1]
    by_byte = accuracy.binary_group_accuracy(bits, wrong, group=1, depth=8).numpy()
    by_char = accuracy.binary_group_accuracy(bits, wrong, group=4, depth=8).numpy()
    np.testing.assert_array_equal(by_byte, [[1.0, 1.0, 1.0, 0.0]])
    np.testing.assert_array_equal(by_char, [[0.0]])


def test_half_precision_predictions():
    rng = np.random.default_rng(3)
    _, one_hot, y_pred = reference.categorical_data((2, 8), 5, rng)
    y_true_bits, y_pred_bits = reference.binary_data((2, 16), rng, threshold=0.6)
    for dtype in (tf.float16, tf.bfloat16):
        result = accuracy.categorical_group_accuracy(one_hot, tf.cast(y_pred, dtype), group=2)
        np.testing.assert_array_equal(result.numpy(), reference.categorical(one_hot, tf.cast(y_pred, dtype).numpy().astype("float32"), 2, -1))
        cast_pred = tf.cast(y_pred_bits, dtype)
        result = accuracy.binary_group_accuracy(y_true_bits, cast_pred, group=2, depth=4, threshold=0.6)
        expected = reference.binary(y_true_bits, cast_pred.numpy().astype("float32"), 2, 4, 0.6, -1)
        np.testing.assert_array_equal(result.numpy(), expected)


# weights and masks --------------------------------------------------------------------------


def test_broadcast_weights_aligns_on_leading_axes():
    values = tf.zeros((2, 3, 4))
    weights = accuracy.broadcast_weights(tf.constant([1.0, 2.0]), values).numpy()
    np.testing.assert_array_equal(weights, np.broadcast_to(np.array([1.0, 2.0])[:, None, None], (2, 3, 4)))
    per_group = np.arange(24, dtype="float32").reshape(2, 3, 4)
    np.testing.assert_array_equal(accuracy.broadcast_weights(per_group, values).numpy(), per_group)
    column = accuracy.broadcast_weights(tf.constant([[1.0], [0.0]]), tf.zeros((2,))).numpy()  # (B, 1) on (B,)
    np.testing.assert_array_equal(column, [1.0, 0.0])


def test_group_mask_reduces_element_masks_with_all():
    mask = np.array([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1]], dtype=bool)
    values = tf.zeros((2, 2))  # groups of 3 elements
    np.testing.assert_array_equal(accuracy.group_mask(mask, values).numpy(), [[1.0, 0.0], [1.0, 1.0]])
    # a mask over bits (group 1 value of 3 bits): still a whole number of entries per group
    np.testing.assert_array_equal(accuracy.group_mask(mask, tf.zeros((2, 1))).numpy(), [[0.0], [1.0]])
    # a per-row mask is a plain weight
    np.testing.assert_array_equal(accuracy.group_mask(np.array([True, False]), values).numpy(), [[1.0, 1.0], [0.0, 0.0]])
    graph = tf.function(lambda m, v: accuracy.group_mask(m, v), input_signature=[tf.TensorSpec([None, None], tf.bool), tf.TensorSpec([None, None])])
    np.testing.assert_array_equal(graph(mask, values).numpy(), [[1.0, 0.0], [1.0, 1.0]])


# errors -------------------------------------------------------------------------------------

ONES_30 = tf.ones((2, 30))
ONES_32 = tf.ones((2, 32))
CATEGORICAL = tf.ones((2, 8, 4))

ERRORS = [
    (lambda: accuracy.binary_group_accuracy(ONES_30, ONES_30, group=1, depth=8), ValueError,
     r"`depth` must divide axis 1 of size 30 \(the bits\)\. Received: depth=8, y_true\.shape=\(2, 30\), y_pred\.shape=\(2, 30\)"),
    (lambda: accuracy.binary_group_accuracy(ONES_32, ONES_32, group=3, depth=8), ValueError,
     r"`group` must divide the number of values along axis 1 \(32 bits / depth 8\)\. Received: group=3, depth=8, y_true\.shape=\(2, 32\)"),
    (lambda: accuracy.categorical_group_accuracy(CATEGORICAL, CATEGORICAL, group=3), ValueError,
     r"`group` must divide the number of values along axis 1 \(8\)\. Received: group=3, y_true\.shape=\(2, 8, 4\), y_pred\.shape=\(2, 8, 4\)"),
    (lambda: accuracy.raw_group_accuracy(tf.ones((2, 5)), tf.ones((2, 5)), group=2), ValueError,
     r"`group` must divide the number of values along axis 1 \(5\)\. Received: group=2"),
    (lambda: accuracy.categorical_group_accuracy(CATEGORICAL, tf.ones((2, 8, 5))), ValueError,
     r"`y_true` and `y_pred` must have the same shape\. Received: y_true\.shape=\(2, 8, 4\), y_pred\.shape=\(2, 8, 5\)"),
    (lambda: accuracy.binary_group_accuracy(tf.ones((2, 32)), tf.ones((2, 1, 32))), ValueError,
     r"`y_true` and `y_pred` must have the same shape\. Received: y_true\.shape=\(2, 32\), y_pred\.shape=\(2, 1, 32\)"),
    (lambda: accuracy.sparse_categorical_group_accuracy(tf.ones((2, 4), tf.int32), CATEGORICAL), ValueError,
     r"`y_true` and `y_pred` must have the same shape \(up to the class axis of y_pred\)\. Received: y_true\.shape=\(2, 4\), y_pred\.shape=\(2, 8, 4\)"),
    (lambda: accuracy.categorical_group_accuracy(tf.ones((4,)), tf.ones((4,)), group=1), ValueError,
     r"`y_pred` must have rank >= 2\. Received: y_pred\.shape=\(4,\)"),
    (lambda: accuracy.categorical_group_accuracy(CATEGORICAL, CATEGORICAL, group=0), ValueError, r"`group` must be an int >= 1\. Received: group=0"),
    (lambda: accuracy.binary_group_accuracy(ONES_32, ONES_32, depth=-8), ValueError, r"`depth` must be an int >= 1\. Received: depth=-8"),
    (lambda: accuracy.binary_group_accuracy(ONES_32, ONES_32, group=2.0), TypeError, r"`group` must be an int\. Received: group=2\.0 of type float"),
    (lambda: accuracy.raw_group_accuracy(ONES_32, ONES_32, factor=0.0), ValueError, r"`factor` must be a finite number > 0\. Received: factor=0\.0"),
    (lambda: accuracy.raw_group_accuracy(ONES_32, ONES_32, factor=-256), ValueError, r"`factor` must be a finite number > 0\. Received: factor=-256\.0"),
    (lambda: accuracy.raw_group_accuracy(ONES_32, ONES_32, factor="256"), TypeError, r"`factor` must be a real number\. Received: factor='256' of type str"),
    (lambda: accuracy.binary_group_accuracy(ONES_32, ONES_32, threshold=True), TypeError, r"`threshold` must be a real number"),
    (lambda: accuracy.binary_group_accuracy(ONES_32, ONES_32, threshold=float("nan")), ValueError, r"`threshold` must be a finite number\. Received: threshold=nan"),
    (lambda: accuracy.categorical_group_accuracy(CATEGORICAL, CATEGORICAL, axis=2), ValueError, r"`axis` must be in \[-2, 2\)\. Received: axis=2, shape=\(2, 8\)"),
    (lambda: accuracy.decode_binary(ONES_32, depth=64), ValueError, r"`depth` must be an int <= 63 to fit an int64\. Received: depth=64"),
    (lambda: accuracy.decode_binary(ONES_30, depth=8), ValueError, r"`depth` must divide axis 1 of size 30 \(the bits of the values\)\. Received: depth=8, y\.shape=\(2, 30\)"),
    (lambda: accuracy.group_all(tf.ones((2, 6)), 4), ValueError, r"`group` must divide axis 1 of size 6\. Received: group=4, shape=\(2, 6\)"),
    (lambda: accuracy.broadcast_weights(tf.ones((3,)), tf.zeros((2, 4))), ValueError,
     r"`sample_weight` must broadcast to the group-level shape \(2, 4\), aligned on the leading axes \(one weight per row, or per group\)\. Received: sample_weight\.shape=\(3,\)"),
    (lambda: accuracy.broadcast_weights(tf.ones((2, 8)), tf.zeros((2, 4))), ValueError, r"Received: sample_weight\.shape=\(2, 8\)"),
    (lambda: accuracy.group_mask(tf.ones((2, 6)), tf.zeros((2, 4))), ValueError,
     r"A mask must hold a whole number of entries per group along axis 1\. Received: mask\.shape=\(2, 6\), group-level shape=\(2, 4\)"),
]


@pytest.mark.parametrize("call,error,message", ERRORS)
def test_errors(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_runtime_errors_in_graph_with_unknown_dims():
    spec = tf.TensorSpec([None, None], tf.float32)
    binary = tf.function(lambda a, b: accuracy.binary_group_accuracy(a, b, group=2, depth=4), input_signature=[spec, spec])
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"`group` must divide the number of values along axis 1 \(\? bits / depth 4\)"):
        binary(tf.ones((2, 12)), tf.ones((2, 12)))
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"`depth` must divide axis 1 of size \? \(the bits\)\. Received: depth=4"):
        binary(tf.ones((2, 10)), tf.ones((2, 10)))
    # (1, 16) would broadcast against (2, 16): the shape check must catch it
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"`y_true` and `y_pred` must have the same shape"):
        binary(tf.ones((2, 16)), tf.ones((1, 16)))


def test_docstring_examples_run():
    import doctest

    from mlable_keras import metrics

    for module in (accuracy, metrics):
        result = doctest.testmod(module, extraglobs={"tf": tf}, optionflags=doctest.NORMALIZE_WHITESPACE)
        assert result.attempted > 0 and result.failed == 0, module.__name__

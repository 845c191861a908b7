"""Rotary position embedding: the core op, its tables, the Keras layer.

The reference is an independent float64 numpy implementation written from the
formulas of the specification, one feature pair at a time.
"""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, settings
from hypothesis import strategies as st

from mlable_core import rotary
from mlable_keras.layers import embedding as layers
from tests import strategies
from tests.harness import run_layer_test

# float32 angles: the error grows with |position| (about 1e-7 per unit of angle)
TOLERANCE = 2e-5


def numpy_rope(
    x: np.ndarray,
    sequence_axis: int = 1,
    feature_axis: int = -1,
    offset: int | np.ndarray = 0,
    max_wavelength: float = 10_000,
    scaling_factor: float = 1.0,
    interleaved: bool = False,
) -> np.ndarray:
    """RoPE in float64 from the formulas: ``theta_j = w ** (-2j / R)``, angle ``(p + offset) / scale * theta_j``."""
    x = np.asarray(x, dtype=np.float64)
    moved = np.moveaxis(x, (sequence_axis, feature_axis), (-2, -1))  # (..., S, E); axis 0 stays first
    length, features = moved.shape[-2], moved.shape[-1]
    rotated = features - features % 2
    offset = np.asarray(offset, dtype=np.float64)
    if offset.ndim == 1:  # one offset per row of axis 0
        offset = offset.reshape((-1,) + (1,) * (moved.ndim - 2))
    position = np.arange(length, dtype=np.float64) + offset
    out = moved.copy()
    for j in range(rotated // 2):
        theta = float(max_wavelength) ** (-2.0 * j / rotated)
        angle = position / scaling_factor * theta
        a, b = (2 * j, 2 * j + 1) if interleaved else (j, j + rotated // 2)
        out[..., a] = moved[..., a] * np.cos(angle) - moved[..., b] * np.sin(angle)
        out[..., b] = moved[..., b] * np.cos(angle) + moved[..., a] * np.sin(angle)
    return np.moveaxis(out, (-2, -1), (sequence_axis, feature_axis))


def random(shape: tuple[int, ...], seed: int = 0, dtype: str = "float32") -> np.ndarray:
    return np.random.default_rng(seed).normal(size=shape).astype(dtype)


def rope(case: strategies.RotaryCase, x: np.ndarray, **overrides) -> np.ndarray:
    arguments = dict(
        sequence_axis=case.given_sequence_axis, feature_axis=case.given_feature_axis, offset=case.offset,
        max_wavelength=case.max_wavelength, scaling_factor=case.scaling_factor, interleaved=case.interleaved,
    )
    arguments.update(overrides)
    return rotary.rotate(x, **arguments).numpy()


def take(x: np.ndarray, axis: int, index: int | slice) -> np.ndarray:
    selection = [slice(None)] * x.ndim
    selection[axis] = index
    return x[tuple(selection)]


# the op against the reference ----------------------------------------------------------------


@given(strategies.rotary_cases())
def test_rotate_matches_the_numpy_reference(case):
    x = random(case.shape)
    expected = numpy_rope(x, case.sequence_axis, case.feature_axis, case.offset, case.max_wavelength, case.scaling_factor, case.interleaved)
    np.testing.assert_allclose(rope(case, x), expected, atol=TOLERANCE, rtol=TOLERANCE)


def test_rotate_matches_keras_hub_on_its_convention():
    keras_hub = pytest.importorskip("keras_hub")
    x = random((2, 6, 3, 8))
    expected = keras_hub.layers.RotaryEmbedding(max_wavelength=500, scaling_factor=2.0)(x, start_index=5)
    actual = rotary.rotate(x, offset=5, max_wavelength=500, scaling_factor=2.0)
    np.testing.assert_allclose(actual.numpy(), np.asarray(expected), atol=1e-5)


def test_tables_match_numpy():
    cos, sin = rotary.tables(5, 6, offset=3, max_wavelength=100, scaling_factor=2.0, dtype="float64")
    angle = (np.arange(5)[:, None] + 3) / 2.0 * 100.0 ** (-np.arange(0, 6, 2)[None, :] / 6)
    assert cos.dtype == tf.float64 and cos.shape == (5, 3)
    np.testing.assert_allclose(cos.numpy(), np.cos(angle), atol=1e-6)
    np.testing.assert_allclose(sin.numpy(), np.sin(angle), atol=1e-6)
    cos, sin = rotary.tables(4, 2, offset=tf.constant([0, 7]))
    assert cos.shape == (2, 4, 1)
    np.testing.assert_allclose(sin.numpy()[:, :, 0], np.sin(np.arange(4)[None, :] + np.array([[0], [7]])), atol=1e-5)
    np.testing.assert_allclose(rotary.inverse_frequencies(4, max_wavelength=100).numpy(), [1.0, 0.1], rtol=1e-7)
    np.testing.assert_array_equal(rotary.positions(3, offset=tf.constant([0, 5])).numpy(), [[0, 1, 2], [5, 6, 7]])


def test_seed_readme_example_with_odd_features():
    source = """
import mlable.layers.embedding

__x = tf.ones(shape=(2, 3, 5))
__l = mlable.layers.embedding.RotaryPositionalEmbedding(
    sequence_axis=1, # position along this axis
    feature_axis=-1, # output axis
    max_wavelength=10_000, # see the paper
    scaling_factor=1.) # see the paper

result = __l(inputs=__x, offset=2) # the offset is typically used to perform iterative decoding during inference
"""
    namespace = {"tf": tf}
    exec(source, namespace)  # the README's lines, verbatim but for naming the last expression
    result = namespace["result"].numpy()
    np.testing.assert_allclose(result, numpy_rope(np.ones((2, 3, 5)), offset=2), atol=TOLERANCE)
    np.testing.assert_array_equal(result[..., -1], 1.0)


# properties ------------------------------------------------------------------------------------


@given(strategies.rotary_cases())
def test_rotation_preserves_the_norm_of_each_pair(case):
    x = random(case.shape)
    y = rope(case, x)
    features = case.shape[case.feature_axis]
    rotated = features - features % 2
    for j in range(rotated // 2):
        a, b = (2 * j, 2 * j + 1) if case.interleaved else (j, j + rotated // 2)
        before = np.hypot(take(x, case.feature_axis, a), take(x, case.feature_axis, b))
        after = np.hypot(take(y, case.feature_axis, a), take(y, case.feature_axis, b))
        np.testing.assert_allclose(after, before, rtol=1e-5, atol=1e-6)


@given(
    st.integers(2, 9), st.integers(0, 300), st.integers(0, 300), st.integers(-100, 300), st.booleans(), st.integers(0, 2**16)
)
def test_scores_depend_only_on_the_relative_position(features, m, n, shift, interleaved, seed):
    query, key = random((2, 1, 1, features), seed=seed)
    rotate = lambda vector, position: rotary.rotate(vector, offset=position, interleaved=interleaved).numpy().ravel()  # noqa: E731
    score = np.dot(rotate(query, m), rotate(key, n))
    shifted = np.dot(rotate(query, m + shift), rotate(key, n + shift))
    relative = np.dot(rotate(query, m - n), key.ravel())
    scale = np.linalg.norm(query) * np.linalg.norm(key)
    assert abs(score - shifted) <= 1e-4 * scale
    assert abs(score - relative) <= 1e-4 * scale


@given(strategies.rotary_cases())
def test_position_zero_with_offset_zero_is_the_identity(case):
    x = random(case.shape)
    y = rope(case, x, offset=0)
    np.testing.assert_array_equal(take(y, case.sequence_axis, 0), take(x, case.sequence_axis, 0))


@given(strategies.rotary_cases())
def test_one_position_at_a_time_equals_the_whole_sequence(case):
    x = random(case.shape)
    whole = rope(case, x)
    for index in range(case.shape[case.sequence_axis]):
        step = take(x, case.sequence_axis, slice(index, index + 1))
        np.testing.assert_allclose(
            rope(case, step, offset=case.offset + index), take(whole, case.sequence_axis, slice(index, index + 1)), atol=1e-6
        )


@given(strategies.rotary_cases(), st.randoms(use_true_random=False))
def test_permuting_the_axes_commutes_with_the_rotation(case, generator):
    x = random(case.shape)
    order = list(range(len(case.shape)))
    generator.shuffle(order)  # new axis i holds old axis order[i]
    permuted = rope(case, np.transpose(x, order), sequence_axis=order.index(case.sequence_axis), feature_axis=order.index(case.feature_axis))
    np.testing.assert_allclose(permuted, np.transpose(rope(case, x), order), atol=1e-6)


@given(strategies.rotary_cases())
def test_half_split_and_interleaved_differ_by_a_fixed_permutation(case):
    x = random(case.shape)
    features = case.shape[case.feature_axis]
    half = (features - features % 2) // 2
    order = [index for j in range(half) for index in (j, j + half)] + list(range(2 * half, features))
    interleaved = rope(case, np.take(x, order, axis=case.feature_axis), interleaved=True)
    np.testing.assert_allclose(interleaved, np.take(rope(case, x, interleaved=False), order, axis=case.feature_axis), atol=1e-6)


@given(strategies.rotary_cases())
def test_the_odd_tail_is_untouched(case):
    shape = list(case.shape)
    shape[case.feature_axis] |= 1  # an odd number of features
    x = random(tuple(shape))
    y = rope(case, x)
    last = shape[case.feature_axis] - 1
    np.testing.assert_array_equal(take(y, case.feature_axis, last), take(x, case.feature_axis, last))
    expected = numpy_rope(x, case.sequence_axis, case.feature_axis, case.offset, case.max_wavelength, case.scaling_factor, case.interleaved)
    np.testing.assert_allclose(y, expected, atol=TOLERANCE, rtol=TOLERANCE)


@given(strategies.rotary_cases(), st.lists(st.integers(-5, 500), min_size=1, max_size=4))
def test_per_row_offsets_equal_separate_calls_row_by_row(case, offsets):
    if 0 in (case.sequence_axis, case.feature_axis):
        return
    shape = (len(offsets),) + case.shape[1:]
    x = random(shape)
    together = rope(case, x, offset=tf.constant(offsets, dtype=tf.int32))
    for row, offset in enumerate(offsets):
        np.testing.assert_allclose(together[row : row + 1], rope(case, x[row : row + 1], offset=offset), atol=1e-6)
    expected = numpy_rope(x, case.sequence_axis, case.feature_axis, np.array(offsets), case.max_wavelength, case.scaling_factor, case.interleaved)
    np.testing.assert_allclose(together, expected, atol=TOLERANCE * 10)


@settings(max_examples=6)
@given(strategies.rotary_cases(max_rank=4), st.booleans())
def test_eager_graph_with_unknown_dims_and_xla_agree(case, tensor_offset):
    x = random(case.shape)
    offset = tf.constant(case.offset) if tensor_offset else case.offset
    eager = rope(case, x, offset=offset)
    spec = [None] * len(case.shape)
    spec[case.feature_axis] = case.shape[case.feature_axis]  # the feature size must be known
    function = lambda t, o: rotary.rotate(  # noqa: E731
        t, case.given_sequence_axis, case.given_feature_axis, o, case.max_wavelength, case.scaling_factor, case.interleaved
    )
    signature = [tf.TensorSpec(spec, tf.float32), tf.TensorSpec([], tf.int32)]
    graph = tf.function(function, input_signature=signature)(x, tf.constant(case.offset))
    compiled = tf.function(function, input_signature=signature, jit_compile=True)(x, tf.constant(case.offset))
    np.testing.assert_allclose(graph.numpy(), eager, atol=1e-6)
    np.testing.assert_allclose(compiled.numpy(), eager, atol=1e-5)


def test_per_row_offsets_with_unknown_batch_in_graph_and_xla():
    x = random((3, 4, 2, 6))
    offsets = tf.constant([0, 3, 9])
    expected = numpy_rope(x, offset=np.array([0, 3, 9]))
    signature = [tf.TensorSpec([None, None, 2, 6], tf.float32), tf.TensorSpec([None], tf.int32)]
    for jit in (False, True):
        function = tf.function(lambda t, o: rotary.rotate(t, offset=o), input_signature=signature, jit_compile=jit)
        np.testing.assert_allclose(function(x, offsets).numpy(), expected, atol=TOLERANCE)


def test_decoding_in_a_compiled_while_loop_with_a_scalar_tensor_offset():
    # the demo's use: one position per step, the step counter as the offset, all under XLA
    layer = layers.RotaryPositionalEmbedding(sequence_axis=1, feature_axis=-1)
    x = random((2, 7, 3, 8))

    @tf.function(jit_compile=True)
    def decode(inputs):
        steps = tf.TensorArray(tf.float32, size=inputs.shape[1])

        def body(index, steps):
            token = tf.expand_dims(tf.gather(inputs, index, axis=1), axis=1)  # (B, 1, N, H)
            return index + 1, steps.write(index, layer(token, offset=index)[:, 0])

        _, steps = tf.while_loop(lambda index, _: index < inputs.shape[1], body, (tf.constant(0), steps))
        return tf.transpose(steps.stack(), (1, 0, 2, 3))  # (B, S, N, H)

    np.testing.assert_allclose(decode(x).numpy(), numpy_rope(x), atol=TOLERANCE)
    np.testing.assert_allclose(decode(x).numpy(), layer(x).numpy(), atol=1e-6)


def test_rotate_keeps_static_shapes_with_unknown_dims():
    @tf.function(input_signature=[tf.TensorSpec([None, None, 4, 7], tf.float32)])
    def f(x):
        y = rotary.rotate(x, sequence_axis=1, feature_axis=-1, offset=3)
        assert y.shape.as_list() == [None, None, 4, 7]
        return y

    assert f(tf.zeros((2, 5, 4, 7))).shape == (2, 5, 4, 7)


# precision and gradients -----------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_at_position_4096_stays_within_1e_2(dtype):
    x = np.random.default_rng(1).uniform(-1.0, 1.0, size=(4, 16, 64))  # unit-scale inputs
    low = tf.cast(x, dtype)
    expected = numpy_rope(tf.cast(low, tf.float64).numpy(), offset=4088)  # positions 4088 ... 4103
    for actual in (rotary.rotate(low, offset=4088), layers.RotaryPositionalEmbedding(dtype=f"mixed_{dtype}")(x, offset=4088)):
        assert actual.dtype == dtype
        assert np.max(np.abs(tf.cast(actual, tf.float64).numpy() - expected)) <= 1e-2
    # control: the same angles in the low dtype are off by about 1, which the bound above would catch
    angles = tf.cast(4096.0, dtype) * tf.cast(rotary.inverse_frequencies(64), dtype)
    exact = np.cos(4096.0 * 10_000.0 ** (-np.arange(0, 64, 2) / 64))
    assert np.max(np.abs(tf.cast(tf.cos(angles), tf.float64).numpy() - exact)) > 0.1


def test_float64_inputs_stay_float64():
    x = random((2, 3, 6), dtype="float64")
    y = rotary.rotate(x, offset=1)
    assert y.dtype == tf.float64
    np.testing.assert_allclose(y.numpy(), numpy_rope(x, offset=1), atol=1e-6)


@pytest.mark.parametrize("interleaved", [False, True])
def test_float64_gradient_of_the_op_and_the_layer(interleaved):
    x = tf.constant(random((2, 3, 5), dtype="float64"))
    layer = layers.RotaryPositionalEmbedding(sequence_axis=1, feature_axis=-1, interleaved=interleaved, dtype="float64")
    functions = (lambda t: rotary.rotate(t, offset=4, interleaved=interleaved), lambda t: layer(t, offset=4))
    for function in functions:
        theoretical, numerical = tf.test.compute_gradient(function, [x])
        np.testing.assert_allclose(theoretical[0], numerical[0], atol=1e-7)
    # the op is linear: its Jacobian (output index, input index) holds the images of the basis vectors in columns
    basis = np.eye(30).reshape(30, 2, 3, 5)
    images = np.stack([numpy_rope(vector, offset=4, interleaved=interleaved).ravel() for vector in basis], axis=1)
    np.testing.assert_allclose(theoretical[0], images, atol=1e-6)


# errors ----------------------------------------------------------------------------------------

ERRORS = [
    (lambda: rotary.rotate(tf.ones((2, 3, 4)), 1, -2), ValueError, r"`sequence_axis` and `feature_axis` must be two different axes\. Received: sequence_axis=1, feature_axis=-2, shape=\(2, 3, 4\)"),
    (lambda: rotary.rotate(tf.ones((2, 3, 4)), 3, -1), ValueError, r"`sequence_axis` must be in \[-3, 3\)\. Received: sequence_axis=3, shape=\(2, 3, 4\)"),
    (lambda: rotary.rotate(tf.ones((2, 3, 4)), 1, -4), ValueError, r"`feature_axis` must be in \[-3, 3\)\. Received: feature_axis=-4"),
    (lambda: rotary.rotate(tf.ones((4,)), 0, 0), ValueError, r"needs a sequence axis and a feature axis \(rank >= 2\)\. Received: shape=\(4,\)"),
    (lambda: rotary.rotate(tf.ones((2, 3, 4)), 1.0, -1), TypeError, r"`sequence_axis` must be an int\. Received: sequence_axis=1\.0 of type float"),
    (lambda: rotary.rotate(tf.ones((2, 3, 4)), max_wavelength=0), ValueError, r"`max_wavelength` must be a finite number > 0\. Received: max_wavelength=0"),
    (lambda: rotary.rotate(tf.ones((2, 3, 4)), max_wavelength=-10.0), ValueError, r"`max_wavelength` must be a finite number > 0\. Received: max_wavelength=-10\.0"),
    (lambda: rotary.rotate(tf.ones((2, 3, 4)), max_wavelength="1e4"), TypeError, r"`max_wavelength` must be a number\. Received: max_wavelength='1e4' of type str"),
    (lambda: rotary.rotate(tf.ones((2, 3, 4)), scaling_factor=0.0), ValueError, r"`scaling_factor` must be a finite number > 0\. Received: scaling_factor=0\.0"),
    (lambda: rotary.rotate(tf.ones((2, 3, 4)), scaling_factor=float("inf")), ValueError, r"`scaling_factor` must be a finite number > 0\. Received: scaling_factor=inf"),
    (lambda: rotary.rotate(tf.ones((2, 3, 4)), interleaved="yes"), TypeError, r"`interleaved` must be a bool\. Received: interleaved='yes'"),
    (lambda: rotary.rotate(tf.ones((2, 3, 4)), offset=tf.constant([1, 2, 3])), ValueError, r"`offset` must be a scalar or have one value per row of `x` \(shape \(B,\), B = size of axis 0\)\. Received: offset with shape \(3,\), x with shape \(2, 3, 4\)"),
    (lambda: rotary.rotate(tf.ones((2, 3, 4)), offset=tf.ones((2, 3), tf.int32)), ValueError, r"`offset` must be a scalar or a vector with one value per row, of shape \(\) or \(B,\)\. Received: offset with shape \(2, 3\)"),
    (lambda: rotary.rotate(tf.ones((2, 3, 4)), offset=1.5), TypeError, r"`offset` must be an int or an integer tensor\. Received: offset=1\.5 of type float"),
    (lambda: rotary.rotate(tf.ones((2, 3, 4)), offset=tf.constant(1.0)), TypeError, r"`offset` must be an int or an integer tensor of shape \(\) or \(B,\)\. Received: offset with dtype float32"),
    (lambda: rotary.rotate(tf.ones((2, 3, 4)), offset=True), TypeError, r"`offset` must be an int or an integer tensor\. Received: offset=True of type bool"),
    (lambda: rotary.rotate(tf.ones((3, 2, 4)), 0, -1, offset=tf.constant([1, 2, 3])), ValueError, r"A per-row `offset` of shape \(B,\) needs axis 0 of `x` to be a batch axis, but axis 0 is the sequence_axis"),
    (lambda: rotary.rotate(tf.ones((4, 2, 3)), 1, 0, offset=tf.constant([1, 2, 3, 4])), ValueError, r"axis 0 is the feature_axis"),
    (lambda: rotary.rotate(tf.ones((2, 3, 4), tf.int32)), TypeError, r"`x` must be a floating tensor\. Received: x with dtype int32"),
    (lambda: rotary.inverse_frequencies(3), ValueError, r"`rotated_dim` must be even\. Received: rotated_dim=3"),
    (lambda: layers.RotaryPositionalEmbedding(sequence_axis=2, feature_axis=2), ValueError, r"`sequence_axis` and `feature_axis` must be two different axes\. Received: sequence_axis=2, feature_axis=2"),
    (lambda: layers.RotaryPositionalEmbedding(max_wavelength=-1), ValueError, r"`max_wavelength` must be a finite number > 0\. Received: max_wavelength=-1"),
    (lambda: layers.RotaryPositionalEmbedding(scaling_factor=None), TypeError, r"`scaling_factor` must be a number\. Received: scaling_factor=None"),
    (lambda: layers.RotaryPositionalEmbedding(feature_axis="-1"), TypeError, r"`feature_axis` must be an int\. Received: feature_axis='-1' of type str"),
    (lambda: layers.RotaryPositionalEmbedding(sequence_axis=1, feature_axis=-2)(tf.ones((2, 3, 4))), ValueError, r"`sequence_axis` and `feature_axis` must be two different axes\. Received: sequence_axis=1, feature_axis=-2, shape=\(2, 3, 4\)"),
    (lambda: layers.RotaryPositionalEmbedding(sequence_axis=1, feature_axis=-1).compute_output_shape((2, 3)), ValueError, r"`sequence_axis` and `feature_axis` must be two different axes"),
    (lambda: layers.RotaryPositionalEmbedding()(tf.ones((2, 3, 4)), offset=tf.constant([1, 2, 3])), ValueError, r"`offset` must be a scalar or have one value per row of `x`"),
]


@pytest.mark.parametrize("call,error,message", ERRORS)
def test_errors(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_unknown_feature_size_is_a_clear_error():
    function = tf.function(lambda t: rotary.rotate(t), input_signature=[tf.TensorSpec([2, 3, None], tf.float32)])
    with pytest.raises(ValueError, match=r"The size of the feature axis must be known when tracing\. Received: feature_axis=-1, x with shape \(2, 3, None\)"):
        function.get_concrete_function()


def test_per_row_offset_of_the_wrong_size_fails_at_run_time_in_a_graph():
    signature = [tf.TensorSpec([None, 3, 4], tf.float32), tf.TensorSpec([None], tf.int32)]
    function = tf.function(lambda t, o: rotary.rotate(t, offset=o), input_signature=signature)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"`offset` must be a scalar or have one value per row of `x`"):
        function(tf.ones((2, 3, 4)), tf.constant([1, 2, 3]))


# the layer -------------------------------------------------------------------------------------

LAYER_CASES = [
    (dict(), (2, 5, 8), None),
    (dict(sequence_axis=1, feature_axis=-1, max_wavelength=500, scaling_factor=2.0), (2, 6, 3, 8), None),
    (dict(sequence_axis=1, feature_axis=-1, interleaved=True), (2, 4, 7), None),
    (dict(sequence_axis=-1, feature_axis=1), (2, 6, 5), [(None, 6, None)]),
    (dict(sequence_axis=2, feature_axis=1, interleaved=True), (2, 4, 5, 3), [(None, 4, None, None)]),
]


@pytest.mark.parametrize("kwargs,shape,symbolic", LAYER_CASES)
def test_layer_harness(kwargs, shape, symbolic):
    x = random(shape)
    config = dict(sequence_axis=1, feature_axis=-1, max_wavelength=10_000, scaling_factor=1.0, interleaved=False)
    config.update(kwargs)
    run_layer_test(
        layers.RotaryPositionalEmbedding,
        kwargs,
        x,
        call_kwargs={"offset": 3},
        expected_output_shape=shape,
        expected_num_trainable_weights=0,
        expected_num_non_trainable_weights=0,
        reference_fn=lambda layer, inputs: numpy_rope(inputs, offset=3, **config),
        reference_tolerance=TOLERANCE,
        symbolic_shapes=symbolic,
    )


def test_layer_equals_the_core_op_and_keeps_its_config():
    x = random((3, 4, 2, 6))
    layer = layers.RotaryPositionalEmbedding(sequence_axis=1, feature_axis=3, max_wavelength=1_000, scaling_factor=0.5, interleaved=True)
    offsets = tf.constant([2, 0, 7])
    np.testing.assert_array_equal(
        layer(x, offset=offsets).numpy(),
        rotary.rotate(x, 1, 3, offsets, max_wavelength=1_000, scaling_factor=0.5, interleaved=True).numpy(),
    )
    config = layer.get_config()
    assert {key: config[key] for key in ("sequence_axis", "feature_axis", "max_wavelength", "scaling_factor", "interleaved")} == dict(
        sequence_axis=1, feature_axis=3, max_wavelength=1_000, scaling_factor=0.5, interleaved=True
    )
    json.dumps(config)
    assert layer.compute_output_shape((None, None, 2, 6)) == (None, None, 2, 6)


def test_layer_in_a_functional_model_with_a_symbolic_offset():
    inputs = keras.Input((None, 6))
    offset = keras.Input(batch_shape=(None,), dtype="int32")
    outputs = layers.RotaryPositionalEmbedding()(inputs, offset=offset)
    model = keras.Model([inputs, offset], outputs)
    x = random((2, 4, 6))
    np.testing.assert_allclose(model([x, np.array([1, 5], dtype="int32")]).numpy(), numpy_rope(x, offset=np.array([1, 5])), atol=TOLERANCE)


def test_seed_namespace_exports_the_same_class():
    import mlable.layers.embedding

    assert mlable.layers.embedding.RotaryPositionalEmbedding is layers.RotaryPositionalEmbedding

"""Byte-embedding combination: the core op and TokunEmbedding.

References: numpy fancy indexing followed by a reshape, an element-by-element
loop over the index formula, and ``keras.layers.Embedding`` + reshape.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, settings
from hypothesis import strategies as st

from mlable_core import embedding
from mlable_keras.layers import embedding as layers
from tests import strategies
from tests.harness import run_layer_test


def numpy_combine(indices: np.ndarray, table: np.ndarray) -> np.ndarray:
    """``table[indices]`` of shape ``(..., S / G, G, E)`` reshaped to ``(..., S / G, G * E)``."""
    gathered = table[indices]
    return gathered.reshape(indices.shape[:-1] + (indices.shape[-1] * table.shape[-1],))


def formula_combine(indices: np.ndarray, table: np.ndarray) -> np.ndarray:
    """``out[..., s, t * E:(t + 1) * E] = table[indices[..., s, t]]``, one index at a time."""
    width = table.shape[-1]
    out = np.empty(indices.shape[:-1] + (indices.shape[-1] * width,), dtype=table.dtype)
    for index in np.ndindex(*indices.shape):
        *prefix, t = index
        out[tuple(prefix) + (slice(t * width, (t + 1) * width),)] = table[indices[index]]
    return out


def random_case(shape: tuple[int, ...], vocabulary: int, width: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, vocabulary, size=shape).astype("int32"), rng.normal(size=(vocabulary, width)).astype("float32")


# the op --------------------------------------------------------------------------------------


@given(strategies.token_cases(), st.sampled_from(["int32", "int64", "uint8", "int16"]))
def test_combine_matches_numpy(case, dtype):
    shape, vocabulary, width = case
    vocabulary = min(vocabulary, 255) if dtype == "uint8" else vocabulary
    indices, table = random_case(shape, vocabulary, width)
    actual = embedding.combine(indices.astype(dtype), table)
    np.testing.assert_array_equal(actual.numpy(), numpy_combine(indices, table))
    assert embedding.combine_shape(shape, width) == actual.shape


@pytest.mark.parametrize("shape", [(1, 1), (3, 4), (2, 3, 4), (2, 1, 3, 2)])
def test_combine_follows_the_index_formula(shape):
    indices, table = random_case(shape, 7, 3)
    np.testing.assert_array_equal(embedding.combine(indices, table).numpy(), formula_combine(indices, table))


@settings(max_examples=6)
@given(strategies.token_cases(max_rank=3))
def test_eager_graph_with_unknown_dims_and_xla_agree(case):
    shape, vocabulary, width = case
    indices, table = random_case(shape, vocabulary, width)
    eager = embedding.combine(indices, table).numpy()
    signature = [tf.TensorSpec([None] * len(shape), tf.int32), tf.TensorSpec([None, None], tf.float32)]
    graph = tf.function(embedding.combine, input_signature=signature)(indices, table)
    compiled = tf.function(embedding.combine, input_signature=signature, jit_compile=True)(indices, table)
    np.testing.assert_array_equal(graph.numpy(), eager)
    np.testing.assert_array_equal(compiled.numpy(), eager)


def test_unknown_dims_keep_static_information():
    @tf.function(input_signature=[tf.TensorSpec([None, None, 16], tf.int32)])
    def f(indices):
        y = embedding.combine(indices, tf.zeros((256, 8)))
        assert y.shape.as_list() == [None, None, 128]
        return y

    assert f(tf.zeros((2, 3, 16), tf.int32)).shape == (2, 3, 128)


def test_float64_gradient_of_the_op_and_the_layer():
    indices = tf.constant([[[0, 2, 2], [1, 0, 3]]])
    table = tf.constant(np.random.default_rng(0).normal(size=(4, 3)))
    theoretical, numerical = tf.test.compute_gradient(lambda t: embedding.combine(indices, t), [table])
    np.testing.assert_allclose(theoretical[0], numerical[0], atol=1e-8)
    # each output element reads one table entry: the Jacobian counts how often
    expected = np.zeros((18, 12))
    for position, row in enumerate(indices.numpy().ravel()):
        for column in range(3):
            expected[position * 3 + column, row * 3 + column] = 1.0
    np.testing.assert_array_equal(theoretical[0], expected)
    layer = layers.TokunEmbedding(4, 3, dtype="float64")
    layer.build()
    call = lambda t: layer.stateless_call([t], [], indices)[0]  # noqa: E731  (the table as an explicit input)
    theoretical_layer, numerical_layer = tf.test.compute_gradient(call, [table])
    np.testing.assert_allclose(theoretical_layer[0], numerical_layer[0], atol=1e-8)
    np.testing.assert_array_equal(theoretical_layer[0], expected)


# index checks --------------------------------------------------------------------------------

INDEX_MESSAGE = r"`indices` must be in \[0, 3\), 3 being the number of rows of the embedding table"


@pytest.mark.parametrize("bad", [3, -1, 1000])
def test_out_of_range_indices_raise_eagerly_and_in_graphs(bad):
    table = tf.zeros((3, 2))
    indices = tf.constant([[[0, 1], [2, bad]]])
    with pytest.raises(tf.errors.InvalidArgumentError, match=INDEX_MESSAGE):
        embedding.combine(indices, table)
    with pytest.raises(tf.errors.InvalidArgumentError, match=INDEX_MESSAGE):
        tf.function(lambda i: embedding.combine(i, table))(indices)
    signature = [tf.TensorSpec([None, None, None], tf.int32), tf.TensorSpec([None, 2], tf.float32)]
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"`indices` must be in \[0, V\), V being the number of rows"):
        tf.function(embedding.combine, input_signature=signature)(indices, table)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"`indices` must be in \[0, 3\)"):
        layers.TokunEmbedding(3, 2)(indices)


def test_validation_can_be_switched_off_and_empty_inputs_pass():
    table = tf.reshape(tf.range(6.0), (3, 2))
    graph = tf.function(lambda i: embedding.combine(i, table, validate_indices=False)).get_concrete_function(tf.TensorSpec([2, 2], tf.int32)).graph
    assert not [op for op in graph.get_operations() if op.type == "Assert"]
    assert embedding.combine(tf.zeros((0, 4), tf.int32), table).shape == (0, 8)


ERRORS = [
    (lambda: embedding.combine(tf.constant([1, 2]), tf.zeros((3, 2))), ValueError, r"`indices` must have rank >= 2, shaped \(\.\.\., S / G, G\) .* Received: indices with shape \(2,\)"),
    (lambda: embedding.combine(tf.constant([[1.0, 2.0]]), tf.zeros((3, 2))), TypeError, r"`indices` must be an integer tensor\. Received: indices with dtype float32"),
    (lambda: embedding.combine(tf.constant([[1, 2]]), tf.zeros((3, 2, 2))), ValueError, r"`table` must have rank 2, shaped \(V, E\)\. Received: table with shape \(3, 2, 2\)"),
    (lambda: embedding.combine_shape((4,), 8), ValueError, r"`indices` must have rank >= 2"),
    (lambda: layers.TokunEmbedding(0, 8), ValueError, r"`input_dim` must be a positive integer\. Received: input_dim=0"),
    (lambda: layers.TokunEmbedding(256, -1), ValueError, r"`output_dim` must be a positive integer\. Received: output_dim=-1"),
    (lambda: layers.TokunEmbedding(256, 8)(tf.constant([1, 2])), ValueError, r"`indices` must have rank >= 2"),
    (lambda: layers.TokunEmbedding(256, 8).compute_output_shape((4,)), ValueError, r"`indices` must have rank >= 2"),
]


@pytest.mark.parametrize("call,error,message", ERRORS)
def test_errors(call, error, message):
    with pytest.raises(error, match=message):
        call()


# the layer -----------------------------------------------------------------------------------


def test_seed_readme_example():
    source = """
import mlable.layers.embedding

__x = tf.random.uniform((128, 1024, 16), minval=0, maxval=256, dtype=int32)
__l = mlable.layers.embedding.TokunEmbedding(
    input_dim=256,
    output_dim=128,)

result = list(__l(__x).shape)
"""
    namespace = {"tf": tf, "int32": tf.int32}
    exec(source, namespace)  # the README's lines, verbatim but for naming the last expression
    assert namespace["result"] == [128, 1024, 2048]


@given(strategies.token_cases(max_rank=4), st.integers(0, 2**16))
def test_layer_equals_keras_embedding_followed_by_a_reshape(case, seed):
    shape, vocabulary, width = case
    indices, _ = random_case(shape, vocabulary, width, seed)
    ours = layers.TokunEmbedding(vocabulary, width, embeddings_initializer=keras.initializers.RandomNormal(seed=seed))
    builtin = keras.layers.Embedding(vocabulary, width)
    builtin.build()
    ours.build()
    builtin.set_weights(ours.get_weights())
    expected = keras.layers.Reshape(shape[1:-1] + (shape[-1] * width,))(builtin(indices))
    np.testing.assert_array_equal(ours(indices).numpy(), expected.numpy())


LAYER_CASES = [
    (dict(input_dim=256, output_dim=4), (2, 3, 4), None),
    (dict(input_dim=10, output_dim=3, embeddings_initializer="glorot_uniform"), (2, 5), [(None, 5)]),
    (dict(input_dim=17, output_dim=2, mask_zero=True, embeddings_regularizer="l2"), (2, 3, 2, 4), None),
    (dict(input_dim=12, output_dim=3, lora_rank=2), (3, 2, 4), None),
]


@pytest.mark.parametrize("kwargs,shape,symbolic", LAYER_CASES)
def test_layer_harness(kwargs, shape, symbolic):
    indices = np.random.default_rng(0).integers(0, kwargs["input_dim"], size=shape).astype("int32")
    trainable = 2 if kwargs.get("lora_rank") else 1
    layer = run_layer_test(
        layers.TokunEmbedding,
        kwargs,
        indices,
        expected_output_shape=shape[:-1] + (shape[-1] * kwargs["output_dim"],),
        expected_num_trainable_weights=trainable,
        reference_fn=lambda layer, inputs: numpy_combine(inputs, np.asarray(layer.embeddings)),
        reference_tolerance=1e-6,
        symbolic_shapes=symbolic,
    )
    assert layer.embeddings.shape == (kwargs["input_dim"], kwargs["output_dim"])


def test_mask_has_one_value_per_token():
    layer = layers.TokunEmbedding(5, 2, mask_zero=True)
    indices = tf.constant([[[0, 0], [0, 3], [4, 0]]])
    np.testing.assert_array_equal(layer.compute_mask(indices).numpy(), [[False, True, True]])
    assert layers.TokunEmbedding(5, 2).compute_mask(indices) is None
    symbolic = layer(keras.Input((None, 2), dtype="int32"))
    assert tuple(symbolic._keras_mask.shape) == (None, None)


def test_mixed_precision_casts_the_table_not_the_variable():
    layer = layers.TokunEmbedding(6, 3, dtype="mixed_bfloat16")
    indices = tf.constant([[[1, 5]]])
    outputs = layer(indices)
    assert outputs.dtype == tf.bfloat16 and layer.embeddings.dtype == "float32"
    expected = numpy_combine(indices.numpy(), tf.cast(tf.cast(layer.embeddings, tf.bfloat16), tf.float32).numpy())
    np.testing.assert_array_equal(tf.cast(outputs, tf.float32).numpy(), expected)


def test_float_indices_are_cast_like_keras_embedding():
    layer = layers.TokunEmbedding(6, 2)
    np.testing.assert_array_equal(layer(tf.constant([[1.0, 4.0]])).numpy(), layer(tf.constant([[1, 4]])).numpy())


def test_seed_namespace_exports_the_same_class():
    import mlable.layers.embedding

    assert mlable.layers.embedding.TokunEmbedding is layers.TokunEmbedding


# quantization ---------------------------------------------------------------------------------


def _int4_supported() -> bool:
    try:
        keras.dtype_policies.get("int4_from_float32")
    except ValueError:
        return False
    return True


@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_quantized_policies_and_model_quantize_keep_the_combined_output(mode):
    if mode == "int4" and not _int4_supported():
        pytest.skip(f"Keras {keras.__version__} has no int4 Embedding")
    indices = np.random.default_rng(21).integers(0, 256, size=(2, 3, 4))
    plain = layers.TokunEmbedding(256, 8)
    model = keras.Sequential([keras.Input((3, 4), dtype="int32"), plain])
    expected = model(indices).numpy()
    table = plain.embeddings.numpy()
    # the plain layer equals the per-byte lookup, merged (independent reference)
    np.testing.assert_array_equal(expected, table[indices].reshape(2, 3, 32))
    model.quantize(mode)
    assert plain.quantization_mode == mode  # Model.quantize reached the subclass
    quantized = model(indices).numpy()
    assert quantized.shape == (2, 3, 32)
    # int8 / int4 abs-max quantization per row: error at most half a step of the row's largest value
    steps = np.abs(table).max(axis=-1, keepdims=True) / (127.0 if mode == "int8" else 7.0)
    bound = np.repeat(steps[indices], 8, axis=-1).reshape(2, 3, 32) * 0.5 + 1e-6
    assert np.all(np.abs(quantized - expected) <= bound)
    compiled = tf.function(lambda x: model(x), jit_compile=True)(indices)
    np.testing.assert_allclose(compiled.numpy(), quantized, atol=1e-6)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"`indices` must be in \[0, 256\)"):
        model(np.full((1, 3, 4), 300))
    policy_layer = layers.TokunEmbedding(256, 8, dtype=f"{mode}_from_float32")
    assert policy_layer(indices).shape == (2, 3, 32)

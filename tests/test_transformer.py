"""Transformer layers: CachedMultiHeadAttention and FeedForwardGate."""

from __future__ import annotations

import ast
import inspect
import math

import keras
import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given
from hypothesis import strategies as st

from mlable_core import attention
from mlable_keras.layers import transformer as layers
from tests import strategies
from tests.harness import run_layer_test

# references ---------------------------------------------------------------------------------


def keras_attention(layer: keras.layers.Layer, query: np.ndarray, value: np.ndarray | None = None, **kwargs) -> keras.layers.MultiHeadAttention:
    """A plain ``keras.layers.MultiHeadAttention`` with the configuration and weights of ``layer``."""
    config = {key: item for key, item in layer.get_config().items() if key not in ("name", "dtype")}
    config.update(kwargs)
    reference = keras.layers.MultiHeadAttention(**config)
    reference(query, query if value is None else value)
    reference.set_weights(layer.get_weights())
    return reference


def causal_reference(layer: keras.layers.Layer, query: np.ndarray, *unused: np.ndarray) -> np.ndarray:
    """One causal pass of ``keras.layers.MultiHeadAttention`` holding the weights of ``layer``."""
    return keras_attention(layer, query)(query, query, use_causal_mask=True).numpy()


def numpy_gelu(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1.0 + np.vectorize(math.erf)(x / math.sqrt(2.0)))


def numpy_feed_forward(layer: layers.FeedForwardGate, x: np.ndarray, activation=numpy_gelu) -> np.ndarray:
    """``W_out(act(W_gate x + b) * (W_lin x + b)) + b`` with the layer's weights, in float64."""
    weights = {variable.path.split("/")[-2] + "/" + variable.name: variable.numpy().astype("float64") for variable in layer.weights}
    bias = (lambda name: weights[f"{name}/bias"]) if layer.use_bias else (lambda name: 0.0)
    x = x.astype("float64")
    gate = activation(x @ weights["gate/kernel"] + bias("gate"))
    linear = x @ weights["linear/kernel"] + bias("linear")
    return (gate * linear) @ weights["output/kernel"] + bias("output")


def decode(layer: layers.CachedMultiHeadAttention, x: np.ndarray, slots: int, chunks, **kwargs):
    """Feeds ``x`` to the layer chunk by chunk through a cache; returns the outputs and the last cache."""
    batch = x.shape[0]
    cache = attention.create_cache(batch, slots, layer.num_heads, layer.key_dim, dtype=layer.compute_dtype)
    outputs, position = [], 0
    for size in chunks:
        part = x[:, position : position + size]
        output, cache = layer(part, part, cache=cache, step=position, **kwargs)
        outputs.append(np.asarray(output))
        position += size
    return np.concatenate(outputs, axis=1), cache


# CachedMultiHeadAttention -------------------------------------------------------------------


def test_harness_without_cache():
    x = np.random.default_rng(0).normal(size=(2, 5, 8)).astype("float32")
    run_layer_test(
        layers.CachedMultiHeadAttention,
        dict(num_heads=2, key_dim=4),
        (x, x),
        expected_output_shape=(2, 5, 8),
        expected_num_trainable_weights=8,
        reference_fn=causal_reference,
        symbolic_shapes=[(None, None, 8), (None, None, 8)],
    )


def test_harness_with_cache_scores_and_dropout():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, 5, 8)).astype("float32")
    cache = np.zeros((2, 2, 7, 3, 4), dtype="float32")  # (2, B, S, N, H); B=2 keeps fit from splitting it
    run_layer_test(
        layers.CachedMultiHeadAttention,
        dict(num_heads=3, key_dim=4, dropout=0.1, output_shape=6),
        (x, x, x, cache),
        call_kwargs=dict(step=0, return_attention_scores=True),
        output_index=0,
        expected_output_shape=(2, 5, 6),
        reference_fn=causal_reference,
    )


def test_call_signature_and_returns():
    layer = layers.CachedMultiHeadAttention(num_heads=2, key_dim=4)
    x = tf.random.normal((2, 3, 8))
    # without a cache: what keras.layers.MultiHeadAttention returns
    outputs = layer(x, x)
    assert isinstance(outputs, tf.Tensor) and outputs.shape == (2, 3, 8)
    outputs, scores = layer(x, x, return_attention_scores=True)
    assert scores.shape == (2, 2, 3, 3)
    outputs, scores = layer(x, x[:, :2], return_attention_scores=True, use_causal_mask=False)
    assert scores.shape == (2, 2, 3, 2)
    outputs, scores, cache = layer(x, x, cache=attention.create_cache(2, 6, 2, 4), step=0, return_attention_scores=True)
    assert scores.shape == (2, 2, 3, 6) and cache.shape == (2, 2, 6, 2, 4)
    np.testing.assert_allclose(np.sum(scores.numpy(), axis=-1), 1.0, atol=1e-6)
    assert not np.any(scores.numpy()[..., 3:])
    # without step the cache grows
    _, grown = layer(x, x, cache=cache)
    assert grown.shape == (2, 2, 9, 2, 4)


@given(strategies.decode_cases(max_length=6), st.integers(1, 3), st.integers(0, 2**16))
def test_decoding_in_chunks_equals_one_keras_causal_pass(case, width_factor, seed):
    width = case.heads * width_factor + 1
    x = np.random.default_rng(seed).normal(size=(case.batch, case.length, width)).astype("float32")
    layer = layers.CachedMultiHeadAttention(num_heads=case.heads, key_dim=case.head_dim)
    layer(x, x)
    reference = keras_attention(layer, x)
    expected = reference(x, x, use_causal_mask=True).numpy()
    outputs, cache = decode(layer, x, case.slots, case.chunks)
    np.testing.assert_allclose(outputs, expected, atol=1e-5)
    # the final cache holds the full pass's keys and values
    np.testing.assert_allclose(cache[0, :, : case.length].numpy(), reference.key_dense(x).numpy(), atol=1e-6)
    np.testing.assert_allclose(cache[1, :, : case.length].numpy(), reference.value_dense(x).numpy(), atol=1e-6)
    assert not np.any(cache[:, :, case.length :].numpy())


@pytest.mark.parametrize("kwargs", [dict(use_gate=True), dict(sliding_window=2), dict(use_bias=False, output_shape=(3,))])
def test_keras_options_decode_like_the_keras_layer(kwargs):
    option = next(iter(kwargs))
    if option not in inspect.signature(keras.layers.MultiHeadAttention.__init__).parameters:
        pytest.skip(f"keras.layers.MultiHeadAttention of Keras {keras.__version__} has no `{option}`")
    x = np.random.default_rng(2).normal(size=(2, 6, 8)).astype("float32")
    layer = layers.CachedMultiHeadAttention(num_heads=2, key_dim=4, **kwargs)
    outputs = layer(x, x)
    expected = keras_attention(layer, x)(x, x, use_causal_mask=True).numpy()
    np.testing.assert_allclose(outputs.numpy(), expected, atol=1e-5)
    np.testing.assert_allclose(decode(layer, x, 8, (2, 1, 3))[0], expected, atol=1e-5)


@pytest.mark.parametrize("policy", ["float32", "mixed_float16"])
@pytest.mark.parametrize("dropout", [0.0, 0.3])
@pytest.mark.parametrize("cached", [False, True])
def test_causal_mask_holds_on_every_path(policy, dropout, cached):
    # Keras once dropped the causal mask on its non-fused paths (dropout, returned scores): check them all
    x = np.random.default_rng(11).normal(size=(2, 5, 8)).astype("float32")
    layer = layers.CachedMultiHeadAttention(num_heads=2, key_dim=4, dropout=dropout, dtype=policy)
    cache = attention.create_cache(2, 7, 2, 4, dtype=layer.compute_dtype) if cached else None
    for training in (False, True):
        scores = layer(x, x, cache=cache, step=0 if cached else None, return_attention_scores=True, training=training)[1]
        scores = tf.cast(scores, tf.float32).numpy()
        future = ~np.tril(np.ones((5, scores.shape[-1]), dtype=bool))  # slots after each query, empty ones included
        assert not np.any(scores[:, :, future])
        if not training:
            np.testing.assert_allclose(scores.sum(-1), 1.0, atol=2e-3)


def test_layer_equals_its_core_op():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(2, 4, 8)).astype("float32")
    layer = layers.CachedMultiHeadAttention(num_heads=2, key_dim=4)
    cache = attention.create_cache(2, 6, 2, 4)
    layer(x, x)
    _, cache = layer(x[:, :3], x[:, :3], cache=cache, step=0)
    outputs, new_cache = layer(x[:, 3:], x[:, 3:], cache=cache, step=3)
    q, k, v = layer.query_dense(x[:, 3:]), layer.key_dense(x[:, 3:]), layer.value_dense(x[:, 3:])
    mixed, core_cache = attention.cached_attention(q, k, v, cache, 3)
    np.testing.assert_array_equal(outputs.numpy(), layer.output_dense(mixed).numpy())
    np.testing.assert_array_equal(new_cache.numpy(), core_cache.numpy())


def test_user_and_keras_masks_without_cache_match_keras():
    rng = np.random.default_rng(4)
    ids = np.array([[3, 5, 2, 0, 0], [1, 4, 6, 7, 0]])
    embedded = keras.layers.Embedding(10, 8, mask_zero=True)(ids)
    layer = layers.CachedMultiHeadAttention(num_heads=2, key_dim=4)
    outputs, scores = layer(embedded, embedded, return_attention_scores=True)
    reference = keras_attention(layer, embedded)
    expected = reference(embedded, embedded, use_causal_mask=True).numpy()
    # padded queries see no key at all: their weights are all zero here (Keras spreads them evenly over
    # the masked keys), so only the output bias remains; every other row is Keras' row
    padded = ids == 0
    np.testing.assert_allclose(outputs.numpy()[~padded], expected[~padded], atol=1e-5)
    assert not np.any(scores.numpy().transpose(0, 2, 1, 3)[padded])
    np.testing.assert_allclose(outputs.numpy()[padded], np.broadcast_to(layer.output_dense.bias.numpy(), (padded.sum(), 8)))
    user = rng.integers(0, 2, size=(2, 5, 5)).astype(bool)
    x = rng.normal(size=(2, 5, 8)).astype("float32")
    outputs = layer(x, x, attention_mask=user, use_causal_mask=False)
    np.testing.assert_allclose(outputs.numpy(), reference(x, x, attention_mask=user).numpy(), atol=1e-5)


def test_compiled_decode_loop_with_a_step_tensor():
    batch, length, width, slots = 2, 7, 8, 12
    x = np.random.default_rng(5).normal(size=(batch, length, width)).astype("float32")
    layer = layers.CachedMultiHeadAttention(num_heads=2, key_dim=4)
    layer(x, x)
    expected = keras_attention(layer, x)(x, x, use_causal_mask=True).numpy()

    @tf.function(jit_compile=True)
    def generate(x, cache):
        def body(step, cache, outputs):
            position = tf.slice(x, [0, step, 0], [batch, 1, width])
            output, cache = layer(position, position, cache=cache, step=step)
            return step + 1, cache, outputs.write(step, output[:, 0])

        outputs = tf.TensorArray(tf.float32, size=length)
        _, cache, outputs = tf.while_loop(lambda step, *_: step < length, body, (tf.constant(0), cache, outputs))
        return tf.transpose(outputs.stack(), (1, 0, 2)), cache

    outputs, cache = generate(x, attention.create_cache(batch, slots, 2, 4))
    np.testing.assert_allclose(outputs.numpy(), expected, atol=1e-5)
    # one compiled step per token, called with a new step each time: traced once
    step_fn = tf.function(lambda part, cache, step: layer(part, part, cache=cache, step=step), jit_compile=True)
    cache = attention.create_cache(batch, slots, 2, 4)
    outputs = []
    for step in range(length):
        output, cache = step_fn(x[:, step : step + 1], cache, tf.constant(step))
        outputs.append(output.numpy())
    np.testing.assert_allclose(np.concatenate(outputs, axis=1), expected, atol=1e-5)
    assert step_fn.experimental_get_tracing_count() == 1


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_cache_stays_in_the_compute_dtype(policy):
    x = np.random.default_rng(6).normal(size=(2, 5, 8)).astype("float32")
    layer = layers.CachedMultiHeadAttention(num_heads=2, key_dim=4, dtype=policy)
    full = layers.CachedMultiHeadAttention(num_heads=2, key_dim=4)
    full(x, x)
    layer(x, x)
    layer.set_weights(full.get_weights())
    compute = layer.compute_dtype
    # a float32 cache given to the layer is cast to the compute dtype, like every float input
    outputs, scores, cache = layer(x, x, cache=attention.create_cache(2, 8, 2, 4), step=0, return_attention_scores=True)
    assert outputs.dtype == compute and scores.dtype == compute and cache.dtype == compute

    @tf.function(jit_compile=True)
    def step(part, cache, position):
        return layer(part, part, cache=cache, step=position)

    decoded, cache = step(x[:, :1], attention.create_cache(2, 8, 2, 4, dtype=compute), tf.constant(0))
    for position in range(1, 5):
        output, cache = step(x[:, position : position + 1], cache, tf.constant(position))
        decoded = tf.concat([decoded, output], axis=1)
    expected = full(x, x).numpy()
    tolerance = 0.05 if policy == "mixed_bfloat16" else 0.01
    np.testing.assert_allclose(tf.cast(decoded, tf.float32).numpy(), expected, atol=tolerance)


def test_overflow_raises_through_the_layer():
    layer = layers.CachedMultiHeadAttention(num_heads=2, key_dim=4)
    x = tf.ones((1, 2, 8))
    cache = attention.create_cache(1, 4, 2, 4)
    with pytest.raises(ValueError, match=r"The new positions must fit in the cache: 0 <= step and step \+ T <= S.* Received: step=3, T=2 new positions, S=4 slots"):
        layer(x, x, cache=cache, step=3)
    graph = tf.function(lambda step: layer(x, x, cache=cache, step=step)[0])
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"The new positions must fit in the cache"):
        graph(tf.constant(3))


def test_functional_models():
    width, heads, head_dim = 8, 2, 4
    layer = layers.CachedMultiHeadAttention(num_heads=heads, key_dim=head_dim)
    x = keras.Input((None, width))
    # with a cache input every output is a tensor: a functional model holds the layer as is
    cache = keras.Input(batch_shape=(2, None, 6, heads, head_dim))
    outputs, new_cache = layer(x, x, cache=cache, step=0)
    model = keras.Model([x, cache], [outputs, new_cache])
    data = np.random.default_rng(7).normal(size=(2, 3, width)).astype("float32")
    result = model([data, np.zeros((2, 2, 6, heads, head_dim), "float32")])
    assert result[0].shape == (2, 3, width) and result[1].shape == (2, 2, 6, heads, head_dim)
    # without a cache it returns a tensor, as keras.layers.MultiHeadAttention does
    functional = keras.Model(x, layers.CachedMultiHeadAttention(num_heads=heads, key_dim=head_dim)(x, x))
    assert functional(data).shape == (2, 3, width)

    # and inside a subclassed layer
    class SelfAttention(keras.layers.Layer):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.attention = layers.CachedMultiHeadAttention(num_heads=heads, key_dim=head_dim)

        def call(self, inputs):
            return self.attention(inputs, inputs)

    functional = keras.Model(x, SelfAttention()(x))
    assert functional(data).shape == (2, 3, width)


_X = tf.ones((2, 3, 8))
_CACHE = attention.create_cache(2, 6, 2, 4)

ATTENTION_ERRORS = [
    (lambda: layers.CachedMultiHeadAttention(2, 4)(_X, _X, step=0), ValueError, r"`step` is only meaningful with a `cache`\. Received: step=0 and cache=None"),
    (lambda: layers.CachedMultiHeadAttention(2, 4, value_dim=5)(_X, _X, cache=_CACHE, step=0), ValueError, r"value_dim == key_dim\. Received: key_dim=4, value_dim=5"),
    (lambda: layers.CachedMultiHeadAttention(2, 4)(tf.ones((2, 3, 3, 8)), tf.ones((2, 3, 3, 8)), cache=_CACHE, step=0), ValueError, r"A cache needs 3D inputs \(B, T, D\) attending over axis 1\. Received: query shape \(2, 3, 3, 8\)"),
    (lambda: layers.CachedMultiHeadAttention(3, 4)(_X, _X, cache=_CACHE, step=0), ValueError, r"`cache` must have shape \(2, B, S, N=3, H=4\)\. Received: cache with shape \(2, 2, 6, 2, 4\)"),
    (lambda: layers.CachedMultiHeadAttention(2, 4)(_X, _X, cache=_CACHE, step=tf.constant(0.0)), TypeError, r"`step` must be an integer scalar"),
    (lambda: layers.CachedMultiHeadAttention(2, 4)(_X, _X, cache=_CACHE, step=0, attention_mask=tf.ones((2, 3, 3), tf.bool)), ValueError, r"`attention_mask` must have shape \(B, T, S\) with T=3 query positions \(or 1\) and S=6 key slots"),
    (lambda: layers.CachedMultiHeadAttention(0, 4), ValueError, r"num_heads"),
]


def test_keras_masks_on_values_are_rejected_with_a_cache():
    embedded = keras.layers.Embedding(10, 8, mask_zero=True)(np.array([[1, 2, 0], [3, 0, 0]]))
    with pytest.raises(ValueError, match=r"Keras masks on `value` / `key` only cover the T new positions"):
        layers.CachedMultiHeadAttention(2, 4)(embedded, embedded, cache=_CACHE, step=0)


@pytest.mark.parametrize("call,error,message", ATTENTION_ERRORS)
def test_attention_errors(call, error, message):
    with pytest.raises(error, match=message):
        call()


# FeedForwardGate ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs,shape",
    [(dict(input_dim=8, hidden_dim=16), (2, 3, 5)), (dict(input_dim=4, hidden_dim=6, activation="relu", use_bias=False, dropout_rate=0.2), (3, 7)), (dict(input_dim=3, hidden_dim=5), (2, 2, 2, 4))],
)
def test_feed_forward_harness(kwargs, shape):
    activation = {"gelu": numpy_gelu, "relu": lambda t: np.maximum(t, 0.0)}[kwargs.get("activation", "gelu")]
    x = np.random.default_rng(8).normal(size=shape).astype("float32")
    run_layer_test(
        layers.FeedForwardGate,
        kwargs,
        x,
        expected_output_shape=shape[:-1] + (kwargs["input_dim"],),
        expected_num_trainable_weights=6 if kwargs.get("use_bias", True) else 3,
        reference_fn=lambda layer, inputs: numpy_feed_forward(layer, inputs, activation),
        symbolic_shapes=[(None,) * (len(shape) - 1) + shape[-1:]],
    )


def test_feed_forward_dropout_only_in_training():
    x = np.random.default_rng(9).normal(size=(4, 6, 8)).astype("float32")
    layer = layers.FeedForwardGate(input_dim=8, hidden_dim=32, dropout_rate=0.5)
    inference = layer(x).numpy()
    np.testing.assert_allclose(inference, numpy_feed_forward(layer, x), atol=1e-5)
    assert not np.allclose(layer(x, training=True).numpy(), inference)


def test_feed_forward_gradients_in_float64():
    x = np.random.default_rng(10).normal(size=(2, 3, 4))
    layer = layers.FeedForwardGate(input_dim=3, hidden_dim=5, dtype="float64")
    layer(x)
    theoretical, numerical = tf.test.compute_gradient(lambda t: layer(t), [x])
    np.testing.assert_allclose(theoretical[0], numerical[0], atol=1e-6)  # central differences, delta 1e-3
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(layer(x) ** 2)
    gradients = tape.gradient(loss, layer.trainable_weights)
    assert len(gradients) == 6 and all(gradient is not None for gradient in gradients)


FEED_FORWARD_ERRORS = [
    (lambda: layers.FeedForwardGate(input_dim=0, hidden_dim=4), ValueError, r"`input_dim` must be an int >= 1\. Received: input_dim=0"),
    (lambda: layers.FeedForwardGate(input_dim=4, hidden_dim=-1), ValueError, r"`hidden_dim` must be an int >= 1\. Received: hidden_dim=-1"),
    (lambda: layers.FeedForwardGate(input_dim=4.0, hidden_dim=4), TypeError, r"`input_dim` must be an int\. Received: input_dim=4\.0"),
    (lambda: layers.FeedForwardGate(input_dim=4, hidden_dim=4, activation="nope"), ValueError, r"`activation` must be the name of a Keras activation .* Received: activation='nope'"),
    (lambda: layers.FeedForwardGate(input_dim=4, hidden_dim=4, dropout_rate=1.0), ValueError, r"`dropout_rate` must be a float in \[0, 1\)\. Received: dropout_rate=1\.0"),
    (lambda: layers.FeedForwardGate(input_dim=4, hidden_dim=4)(tf.ones((5,))), ValueError, r"FeedForwardGate needs inputs of rank >= 2 with a known last dimension\. Received: input shape \(5,\)"),
]


@pytest.mark.parametrize("call,error,message", FEED_FORWARD_ERRORS)
def test_feed_forward_errors(call, error, message):
    with pytest.raises(error, match=message):
        call()


# seed README --------------------------------------------------------------------------------

SEED_ATTENTION_CONSTRUCTOR = """
import mlable.layers.transformer

mlable.layers.transformer.CachedMultiHeadAttention(
    num_heads,
    key_dim,
    value_dim=None,
    dropout=0.0,
    use_bias=True,
    output_shape=None,
    attention_axes=None,
    kernel_initializer='glorot_uniform',
    bias_initializer='zeros',
    kernel_regularizer=None,
    bias_regularizer=None,
    activity_regularizer=None,
    kernel_constraint=None,
    bias_constraint=None,
    **kwargs)
"""

SEED_ATTENTION_CALL = """
mlable.layers.transformer.CachedMultiHeadAttention.call(
    query,
    value,
    key=None,
    cache=None,
    step=None,
    training=False,
    attention_mask=None,
    return_attention_scores=False,
    use_causal_mask=True,)
"""

SEED_FEED_FORWARD = """
import mlable.layers.transformer

__x = tf.ones(shape=(2, 3, 5), dtype=tf.dtypes.float32)
__l = mlable.layers.transformer.FeedForwardGate(
    input_dim=256,
    hidden_dim=1024)

__l(__x)
"""


def _last_expression(source: str, namespace: dict) -> object:
    """Runs ``source`` and returns the value of its last expression statement."""
    tree = ast.parse(source)
    last = tree.body.pop()
    exec(compile(tree, "<readme>", "exec"), namespace)
    return eval(compile(ast.Expression(last.value), "<readme>", "eval"), namespace)


def test_seed_readme_attention_constructor_runs_verbatim():
    # the README lists the signature with placeholders: give them values, run the lines as written
    namespace = {"tf": tf, "num_heads": 2, "key_dim": 8, "kwargs": {"name": "readme"}}
    layer = _last_expression(SEED_ATTENTION_CONSTRUCTOR, namespace)
    assert isinstance(layer, layers.CachedMultiHeadAttention)
    assert (layer.num_heads, layer.key_dim, layer.name) == (2, 8, "readme")


def test_seed_readme_call_signature_is_the_layer_signature():
    call = ast.parse(SEED_ATTENTION_CALL).body[0].value
    listed = [arg.id for arg in call.args] + [keyword.arg for keyword in call.keywords]
    defaults = {keyword.arg: ast.literal_eval(keyword.value) for keyword in call.keywords}
    signature = inspect.signature(layers.CachedMultiHeadAttention.call)
    parameters = [name for name in signature.parameters if name != "self"]
    # the seed's parameters lead, in its order (later ones, e.g. Keras' masks, follow)
    assert parameters[: len(listed)] == listed
    assert {name: signature.parameters[name].default for name in defaults} == defaults


def test_seed_readme_feed_forward_example():
    output = _last_expression(SEED_FEED_FORWARD, {"tf": tf})
    assert list(output.shape) == [2, 3, 256]


def test_seed_namespace_exports_the_same_classes():
    import mlable.layers.transformer

    assert mlable.layers.transformer.CachedMultiHeadAttention is layers.CachedMultiHeadAttention
    assert mlable.layers.transformer.FeedForwardGate is layers.FeedForwardGate


def test_readme_section_examples_run():
    import os
    import re
    import textwrap

    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")
    with open(path, encoding="utf-8") as handle:
        readme = handle.read()
    section = readme.split("## Attention and feed-forward", 1)[1].split("\n## ", 1)[0]
    blocks = [textwrap.dedent(block) for block in re.findall(r"```python\n(.*?)```", section, flags=re.S)]
    assert len(blocks) == 3
    namespace: dict = {}
    for block in blocks:
        exec(block, namespace)  # noqa: S102 - the README's own lines
    assert namespace["scores"].shape == (2, 4, 1, 128)
    assert namespace["block"](namespace["x"]).shape == (2, 10, 64)
    assert namespace["token"].shape == (2, 1, 64) and namespace["cache"].shape == (2, 2, 128, 4, 16)
    # the compiled loop wrote positions 12..15 after the eager calls, and nothing beyond
    cache = namespace["cache"].numpy()
    assert np.any(cache[:, :, 15]) and not np.any(cache[:, :, 16:])
    # the serving loop wrote positions 0..19 of its variable cache in place, and nothing beyond
    serving = namespace["serving_cache"].numpy()
    assert np.all(np.any(serving[:, :, :20], axis=(0, 1, 3, 4))) and not np.any(serving[:, :, 20:])


def test_generation_loop_with_the_cache_matches_recomputing_everything():
    from mlable_core import decoding

    vocabulary, width, heads, head_dim = 11, 8, 2, 4
    embed = keras.layers.Embedding(vocabulary, width)
    layer = layers.CachedMultiHeadAttention(num_heads=heads, key_dim=head_dim)
    head = keras.layers.Dense(vocabulary)

    def step_fn(tokens, cache, step):
        x = embed(tokens)  # (B, T, D)
        mixed, cache = layer(x, x, cache=cache, step=step)
        return head(x + mixed), cache  # (B, T, C)

    def model_fn(tokens):
        x = embed(tokens)
        return head(x + layer(x, x))

    prompt = tf.constant(np.random.default_rng(12).integers(1, vocabulary, size=(3, 4)), tf.int32)
    model_fn(prompt)  # build
    cache = attention.create_cache(3, 16, heads, head_dim)
    tokens, lengths = tf.function(decoding.generate, jit_compile=True)(step_fn, prompt, cache, 9)
    expected = tf.function(decoding.generate_uncached, jit_compile=True)(model_fn, prompt, 9)
    np.testing.assert_array_equal(tokens.numpy(), expected.numpy())
    assert lengths.numpy().tolist() == [9, 9, 9]

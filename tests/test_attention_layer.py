"""CachedMultiHeadAttention the ways Keras users use it, and RoPE inside the attention.

References: ``keras.layers.MultiHeadAttention`` holding the same weights, and a
float64 numpy implementation of rotary attention written here from the formulas.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, settings
from hypothesis import strategies as st

from mlable_core import attention
from mlable_keras.layers.transformer import CachedMultiHeadAttention
from mlable_keras.models.byte_decoder import ByteDecoder

WIDTH, HEADS, HEAD_DIM = 8, 2, 4


def keras_twin(layer: CachedMultiHeadAttention, query: np.ndarray, value: np.ndarray) -> keras.layers.MultiHeadAttention:
    """A ``keras.layers.MultiHeadAttention`` with the configuration and weights of ``layer``."""
    config = {key: item for key, item in layer.get_config().items() if key not in ("name", "dtype", "rotary")}
    twin = keras.layers.MultiHeadAttention(**config)
    twin(query, value)
    twin.set_weights(layer.get_weights())
    return twin


def numpy_rope(x: np.ndarray, positions: np.ndarray, wavelength: float = 10_000.0) -> np.ndarray:
    """Half-split RoPE of ``(B, T, N, H)`` at float64 ``positions`` ``(B, T)``."""
    half = x.shape[-1] // 2
    inverse = wavelength ** (-2.0 * np.arange(half) / (2 * half))
    angles = positions[:, :, None, None] * inverse  # (B, T, 1, H / 2)
    a, b = x[..., :half], x[..., half : 2 * half]
    return np.concatenate([a * np.cos(angles) - b * np.sin(angles), b * np.cos(angles) + a * np.sin(angles), x[..., 2 * half :]], -1)


def numpy_rotary_attention(layer: CachedMultiHeadAttention, x: np.ndarray, positions: np.ndarray, causal: bool = True) -> np.ndarray:
    """Self-attention with RoPE on the projected queries and keys, float64."""
    weights = {v.path.split("/")[-2] + "/" + v.name: v.numpy().astype("float64") for v in layer.weights}
    x = x.astype("float64")
    q = np.einsum("bfe,enh->bfnh", x, weights["query/kernel"]) + weights["query/bias"]
    k = np.einsum("bfe,enh->bfnh", x, weights["key/kernel"]) + weights["key/bias"]
    v = np.einsum("bfe,enh->bfnh", x, weights["value/kernel"]) + weights["value/bias"]
    q, k = numpy_rope(q, positions), numpy_rope(k, positions)
    scores = np.einsum("bfnh,bsnh->bnfs", q, k) / np.sqrt(q.shape[-1])
    if causal:
        length = x.shape[1]
        scores = np.where(np.tril(np.ones((length, length), bool)), scores, -np.inf)
    scores = np.exp(scores - scores.max(-1, keepdims=True))
    scores /= scores.sum(-1, keepdims=True)
    mixed = np.einsum("bnfs,bsnh->bfnh", scores, v)
    return np.einsum("bfnh,nhe->bfe", mixed, weights["attention_output/kernel"]) + weights["attention_output/bias"]


def data(*shape: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=shape).astype("float32")


# drop-in ---------------------------------------------------------------------------------------


def test_functional_model_fits_saves_and_reloads_in_a_fresh_process(tmp_path):
    inputs = keras.Input((None, WIDTH))
    hidden = CachedMultiHeadAttention(num_heads=HEADS, key_dim=HEAD_DIM)(inputs, inputs)
    cross, scores = CachedMultiHeadAttention(num_heads=HEADS, key_dim=HEAD_DIM)(
        hidden, inputs, return_attention_scores=True, use_causal_mask=False
    )
    model = keras.Model(inputs, keras.layers.Dense(3)(hidden + cross))
    assert tuple(scores.shape) == (None, HEADS, None, None)
    x, y = data(4, 6, WIDTH), data(4, 6, 3, seed=1)
    model.compile("adam", "mse", jit_compile=True)
    before = [w.copy() for w in model.get_weights()]
    model.fit(x, y, epochs=1, batch_size=2, verbose=0)
    assert any(not np.allclose(a, b) for a, b in zip(before, model.get_weights()))
    path = str(tmp_path / "attention.keras")
    model.save(path)
    expected = model.predict(x, verbose=0)
    np.save(tmp_path / "x.npy", x)
    script = textwrap.dedent(
        f"""
        import numpy as np, keras, mlable_keras
        model = keras.saving.load_model({path!r})
        x = np.load({str(tmp_path / "x.npy")!r})
        np.save({str(tmp_path / "out.npy")!r}, model.predict(x, verbose=0))
        """
    )
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", TF_CPP_MIN_LOG_LEVEL="3")
    subprocess.run([sys.executable, "-c", script], check=True, env=env, timeout=240, capture_output=True)
    np.testing.assert_allclose(np.load(tmp_path / "out.npy"), expected, atol=1e-6)


def test_called_twice_with_new_shapes_and_in_sequential():
    layer = CachedMultiHeadAttention(num_heads=HEADS, key_dim=HEAD_DIM)
    assert layer(data(2, 5, WIDTH), data(2, 5, WIDTH)).shape == (2, 5, WIDTH)
    assert layer(data(3, 9, WIDTH), data(3, 4, WIDTH), use_causal_mask=False).shape == (3, 9, WIDTH)
    graph = tf.function(lambda q, v: layer(q, v), reduce_retracing=True)
    assert graph(data(1, 3, WIDTH), data(1, 3, WIDTH)).shape == (1, 3, WIDTH)
    assert graph(data(2, 7, WIDTH), data(2, 7, WIDTH)).shape == (2, 7, WIDTH)


def _masked_embedding(ids: np.ndarray) -> tf.Tensor:
    keras.utils.set_random_seed(3)
    return keras.layers.Embedding(10, WIDTH, mask_zero=True)(ids)


QUERY_IDS = np.array([[3, 5, 2, 0, 0], [1, 4, 6, 7, 0]])
VALUE_IDS = np.array([[2, 2, 0, 0, 0, 0], [1, 3, 5, 7, 9, 0]])
KEY_IDS = np.array([[4, 6, 8, 1, 0], [2, 2, 2, 0, 0]])


@pytest.mark.parametrize("masked", ["query", "value", "key", "query+value", "all"])
@pytest.mark.parametrize("causal", [False, True])
def test_every_keras_mask_combination_matches_keras(masked, causal):
    def inputs():
        # fresh tensors for each layer: MultiHeadAttention (Keras' and ours) removes the masks it consumed
        query = _masked_embedding(QUERY_IDS) if "query" in masked or masked == "all" else tf.constant(data(2, 5, WIDTH))
        value = _masked_embedding(VALUE_IDS[:, :5]) if "value" in masked or masked == "all" else tf.constant(data(2, 5, WIDTH, seed=4))
        key = _masked_embedding(KEY_IDS) if masked in ("key", "all") else None
        return query, value, key

    layer = CachedMultiHeadAttention(num_heads=HEADS, key_dim=HEAD_DIM)
    query, value, key = inputs()
    outputs, scores = layer(query, value, key=key, use_causal_mask=causal, return_attention_scores=True)
    twin = keras_twin(layer, *inputs()[:2])
    query, value, key = inputs()
    expected, expected_scores = twin(query, value, key=key, use_causal_mask=causal, return_attention_scores=True)
    # rows that see at least one key equal Keras'; a row that sees none is all zero here (uniform in Keras)
    seen = np.asarray(scores).sum(-1) > 0.5  # (B, N, T)
    rows = seen.all(1)  # (B, T)
    assert rows.any()
    np.testing.assert_allclose(np.asarray(outputs)[rows], np.asarray(expected)[rows], atol=1e-5)
    np.testing.assert_allclose(np.asarray(scores)[seen], np.asarray(expected_scores)[seen], atol=1e-6)
    # the masks were applied: Keras' weights on masked keys are 0 (in the rows that see a key)
    if "value" in masked or masked == "all":
        hidden = VALUE_IDS[:, None, None, :5] == 0
        assert not np.any(np.asarray(expected_scores) * hidden * seen[..., None])


@pytest.mark.parametrize("shape", [(2, 5, 6), (2, 1, 6), (1, 5, 6), (5, 6), (2, 5, 1)])
def test_attention_mask_of_every_broadcastable_shape(shape):
    query, value = data(2, 5, WIDTH), data(2, 6, WIDTH, seed=1)
    mask = np.random.default_rng(5).integers(0, 2, size=shape).astype(bool)
    mask.reshape(-1)[0] = True
    layer = CachedMultiHeadAttention(num_heads=HEADS, key_dim=HEAD_DIM)
    outputs = layer(query, value, attention_mask=mask, use_causal_mask=False)
    expected = keras_twin(layer, query, value)(query, value, attention_mask=mask).numpy()
    full = np.broadcast_to(mask if len(shape) == 3 else mask[None], (2, 5, 6))
    rows = full.any(-1)
    np.testing.assert_allclose(outputs.numpy()[rows], expected[rows], atol=1e-5)


def test_query_mask_alone_with_and_without_a_cache():
    # a masked decoder attending to an unmasked encoder: the query's mask alone, (B, T, 1)
    memory = tf.constant(data(2, 5, WIDTH, seed=6))
    layer = CachedMultiHeadAttention(num_heads=HEADS, key_dim=HEAD_DIM)
    outputs = layer(_masked_embedding(QUERY_IDS), memory, use_causal_mask=False)
    expected = keras_twin(layer, memory, memory)(_masked_embedding(QUERY_IDS), memory).numpy()
    rows = QUERY_IDS != 0
    np.testing.assert_allclose(outputs.numpy()[rows], expected[rows], atol=1e-5)
    # self-attention with a cache and a masked query: valid rows equal the uncached causal pass
    cache = attention.create_cache(2, 8, HEADS, HEAD_DIM)
    # (the values carry no Keras mask: with a cache, masks on values are rejected, see test_transformer)
    query = _masked_embedding(QUERY_IDS)
    cached, _ = layer(query, tf.identity(query), cache=cache, step=0)
    query = _masked_embedding(QUERY_IDS)
    plain = layer(query, tf.identity(query))
    np.testing.assert_allclose(cached.numpy()[rows], plain.numpy()[rows], atol=1e-6)


def test_causal_default_on_several_axes_says_what_to_pass():
    x = data(2, 3, 4, WIDTH)
    layer = CachedMultiHeadAttention(num_heads=HEADS, key_dim=HEAD_DIM)
    with pytest.raises(ValueError, match=r"Pass `use_causal_mask=False`.*Received: query with shape \(2, 3, 4, 8\).*attention_axes=\(1, 2\)"):
        layer(x, x)
    outputs = layer(x, x, use_causal_mask=False)
    np.testing.assert_allclose(outputs.numpy(), keras_twin(layer, x, x)(x, x).numpy(), atol=1e-5)
    # one attention axis on 4D inputs: causal along it is defined, and equals Keras'
    single = CachedMultiHeadAttention(num_heads=HEADS, key_dim=HEAD_DIM, attention_axes=1)
    outputs = single(x, x)
    np.testing.assert_allclose(outputs.numpy(), keras_twin(single, x, x)(x, x, use_causal_mask=True).numpy(), atol=1e-5)


class ScaledScores(CachedMultiHeadAttention):
    """A user's ``_compute_attention``: Keras' documented hook, here halving the outputs."""

    calls = 0

    def _compute_attention(self, query, key, value, attention_mask=None, training=None, return_attention_scores=False):
        ScaledScores.calls += 1
        mixed, scores = super()._compute_attention(query, key, value, attention_mask, training, return_attention_scores)
        return mixed * 0.5, scores


@pytest.mark.parametrize("path", ["plain", "cache", "rotary", "rotary+cache", "4d"])
def test_compute_attention_override_is_honoured_on_every_path(path):
    rotary = {"max_wavelength": 100} if "rotary" in path else None
    x = data(2, 4, 3, WIDTH) if path == "4d" else data(2, 4, WIDTH)
    kwargs = dict(use_causal_mask=False) if path == "4d" else {}
    mine = ScaledScores(num_heads=HEADS, key_dim=HEAD_DIM, rotary=rotary, use_bias=False)
    base = CachedMultiHeadAttention(num_heads=HEADS, key_dim=HEAD_DIM, rotary=rotary, use_bias=False)
    base(x, x, **kwargs)
    mine(x, x, **kwargs)
    mine.set_weights(base.get_weights())
    ScaledScores.calls = 0
    if "cache" in path:
        got, _ = mine(x, x, cache=attention.create_cache(2, 6, HEADS, HEAD_DIM), step=0)
        want, _ = base(x, x, cache=attention.create_cache(2, 6, HEADS, HEAD_DIM), step=0)
    else:
        got, want = mine(x, x, **kwargs), base(x, x, **kwargs)
    assert ScaledScores.calls == 1
    np.testing.assert_allclose(got.numpy(), 0.5 * want.numpy(), atol=1e-6)  # no bias: the output is linear in mixed


def test_read_only_cross_attention_cache_equals_uncached_cross_attention():
    encoder, decoder = data(2, 7, WIDTH), data(2, 5, WIDTH, seed=1)
    mask = np.random.default_rng(2).integers(0, 2, size=(2, 1, 7)).astype(bool)
    mask[:, :, 0] = True
    layer = CachedMultiHeadAttention(num_heads=HEADS, key_dim=HEAD_DIM)
    expected = layer(decoder, encoder, use_causal_mask=False, attention_mask=mask).numpy()
    memory = layer.compute_cache(encoder)
    assert memory.shape == (2, 2, 7, HEADS, HEAD_DIM)
    kept = memory.numpy()
    step = tf.function(lambda q, m: layer(q, q, cache=m, read_only_cache=True, attention_mask=mask), jit_compile=True)
    outputs = []
    for position in range(5):  # one decoder position at a time, the encoder cache never written
        output, returned = step(decoder[:, position : position + 1], memory)
        outputs.append(output.numpy())
        np.testing.assert_array_equal(returned.numpy(), kept)
    np.testing.assert_allclose(np.concatenate(outputs, 1), expected, atol=1e-5)
    with pytest.raises(ValueError, match=r"`read_only_cache=True` needs a `cache`"):
        layer(decoder, encoder, read_only_cache=True)


@pytest.mark.parametrize("strategy_name", ["mirrored"])
def test_functional_attention_model_fits_under_a_strategy(strategy_name):
    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    with strategy.scope():
        inputs = keras.Input((None, WIDTH))
        outputs = keras.layers.Dense(2)(CachedMultiHeadAttention(num_heads=HEADS, key_dim=HEAD_DIM)(inputs, inputs))
        model = keras.Model(inputs, outputs)
        model.compile("sgd", "mse")
    history = model.fit(data(4, 5, WIDTH), data(4, 5, 2, seed=1), epochs=1, batch_size=2, verbose=0)
    assert np.isfinite(history.history["loss"][0])


# RoPE inside the attention ----------------------------------------------------------------------


def test_rotary_layer_equals_a_numpy_reference_and_round_trips():
    x = data(2, 6, WIDTH)
    layer = CachedMultiHeadAttention(num_heads=HEADS, key_dim=HEAD_DIM, rotary=True)
    outputs = layer(x, x).numpy()
    np.testing.assert_allclose(outputs, numpy_rotary_attention(layer, x, np.tile(np.arange(6.0), (2, 1))), atol=1e-5)
    config = layer.get_config()
    assert config["rotary"] == {"max_wavelength": 10_000, "scaling_factor": 1.0, "interleaved": False}
    clone = CachedMultiHeadAttention.from_config(config)
    clone(x, x)
    clone.set_weights(layer.get_weights())
    np.testing.assert_array_equal(clone(x, x).numpy(), outputs)
    assert "rotary" not in CachedMultiHeadAttention(num_heads=2, key_dim=4).get_config()


@settings(max_examples=10)
@given(st.integers(1, 3), st.integers(2, 6), st.integers(0, 5000), st.integers(0, 2**16))
def test_rotary_attention_depends_on_relative_positions_only(batch, length, shift, seed):
    x = data(batch, length, WIDTH, seed=seed)
    layer = CachedMultiHeadAttention(num_heads=HEADS, key_dim=HEAD_DIM, rotary=True)
    base = layer(x, x).numpy()
    steps = np.arange(length)
    # without a cache, shared or per-row shifted positions
    np.testing.assert_allclose(layer(x, x, positions=steps + shift).numpy(), base, atol=2e-4)
    rows = steps[None] + np.arange(batch)[:, None] * shift
    np.testing.assert_allclose(layer(x, x, positions=rows).numpy(), base, atol=2e-4)
    # with a cache, position by position under XLA: the cache stores rotated keys
    step_fn = tf.function(lambda part, cache, step, pos: layer(part, part, cache=cache, step=step, positions=pos), jit_compile=True)
    cache = attention.create_cache(batch, length, HEADS, HEAD_DIM)
    decoded = []
    for index in range(length):
        output, cache = step_fn(x[:, index : index + 1], cache, tf.constant(index), tf.constant(rows[:, index : index + 1]))
        decoded.append(output.numpy())
    np.testing.assert_allclose(np.concatenate(decoded, 1), base, atol=2e-4)


def test_rotary_positions_errors():
    x = data(2, 3, WIDTH)
    with pytest.raises(ValueError, match=r"`positions` sets the RoPE positions, but this layer has no rotary"):
        CachedMultiHeadAttention(num_heads=HEADS, key_dim=HEAD_DIM)(x, x, positions=np.arange(3))
    layer = CachedMultiHeadAttention(num_heads=HEADS, key_dim=HEAD_DIM, rotary=True)
    with pytest.raises(ValueError, match=r"`positions` must have shape \(S,\).*Received: positions with shape \(4,\)"):
        layer(x, x, positions=np.arange(4))
    with pytest.raises(TypeError, match=r"`positions` must be an integer or float tensor"):
        layer(x, x, positions=np.array([True, False, True]))
    with pytest.raises(ValueError, match=r"`rotary` takes the keys"):
        CachedMultiHeadAttention(num_heads=HEADS, key_dim=HEAD_DIM, rotary={"base": 10})


def test_byte_decoder_logits_depend_on_relative_positions_only():
    # a random model: with RoPE on the residual stream (the old bug) a common shift changes the logits
    model = ByteDecoder(token_size=4, embed_dim=4, num_layers=2, num_heads=2)
    tokens = tf.constant(np.random.default_rng(7).integers(0, 256, size=(2, 6, 4)), tf.int32)
    base = model.forward(tokens)[0].numpy()
    for shift in (1, 37, 1000):
        shifted = model.forward(tokens, positions=np.arange(6) + shift)[0].numpy()
        np.testing.assert_allclose(shifted, base, atol=2e-4)
    cache = model.create_cache(2, 6)
    prefill, cache = model.forward(tokens[:, :4], cache=cache, step=0)
    decoded, _ = model.forward(tokens[:, 4:], cache=cache, step=4)
    np.testing.assert_allclose(np.concatenate([prefill, decoded], 1), base, atol=1e-4)


# grouped-query heads -----------------------------------------------------------------------------


@pytest.mark.parametrize("kv_heads", [1, 2])
def test_grouped_query_heads_equal_keras_group_query_attention(kv_heads):
    x, memory = data(2, 6, 16), data(2, 5, 16, seed=1)
    layer = CachedMultiHeadAttention(num_heads=4, key_dim=8, num_key_value_heads=kv_heads)
    outputs = layer(x, memory, use_causal_mask=False)
    twin = keras.layers.GroupQueryAttention(head_dim=8, num_query_heads=4, num_key_value_heads=kv_heads)
    twin(x, memory)
    assert [w.shape for w in twin.weights] == [w.shape for w in layer.weights]
    twin.set_weights(layer.get_weights())
    np.testing.assert_allclose(outputs.numpy(), twin(x, memory).numpy(), atol=1e-5)
    np.testing.assert_allclose(layer(x, x).numpy(), twin(x, x, use_causal_mask=True).numpy(), atol=1e-5)
    assert layer.key_dense.kernel.shape == (16, kv_heads, 8)  # K heads of keys and values, never N


@settings(max_examples=8)
@given(st.lists(st.integers(1, 3), min_size=1, max_size=4), st.booleans(), st.integers(0, 2**16))
def test_grouped_query_decoding_in_chunks_equals_the_full_pass(chunks, rope, seed):
    length = sum(chunks)
    x = data(2, length, 16, seed=seed)
    layer = CachedMultiHeadAttention(num_heads=4, key_dim=8, num_key_value_heads=2, rotary=rope or None)
    expected = layer(x, x).numpy()
    cache = attention.create_cache(2, length + 2, 2, 8)
    step_fn = tf.function(lambda part, cache, step: layer(part, part, cache=cache, step=step), jit_compile=True)
    outputs, position = [], 0
    for size in chunks:
        output, cache = step_fn(x[:, position : position + size], cache, tf.constant(position))
        outputs.append(output.numpy())
        position += size
    assert cache.shape == (2, 2, length + 2, 2, 8)  # the cache holds K = 2 heads, half of N = 4
    np.testing.assert_allclose(np.concatenate(outputs, 1), expected, atol=1e-5)


def test_grouped_query_heads_round_trip_and_errors(tmp_path):
    x = data(2, 4, 16)
    layer = CachedMultiHeadAttention(num_heads=4, key_dim=8, num_key_value_heads=2, rotary=True)
    inputs = keras.Input((None, 16))
    model = keras.Model(inputs, layer(inputs, inputs))
    path = str(tmp_path / "gqa.keras")
    model.save(path)
    np.testing.assert_allclose(keras.saving.load_model(path)(x).numpy(), model(x).numpy(), atol=1e-6)
    with pytest.raises(ValueError, match=r"`num_key_value_heads` must divide `num_heads`.*num_heads=4, num_key_value_heads=3"):
        CachedMultiHeadAttention(num_heads=4, key_dim=8, num_key_value_heads=3)
    with pytest.raises(ValueError, match=r"argument `num_key_value_heads`.*Received: num_key_value_heads=0"):
        CachedMultiHeadAttention(num_heads=4, key_dim=8, num_key_value_heads=0)
    with pytest.raises(ValueError, match=r"`cache` must have shape \(2, B, S, K=2 key / value heads, H=8\)\. Received: cache with shape \(2, 2, 6, 4, 8\)"):
        layer(x, x, cache=attention.create_cache(2, 6, 4, 8), step=0)
    with pytest.raises(ValueError, match=r"Grouped-query heads \(`num_key_value_heads`\) need 3D inputs"):
        CachedMultiHeadAttention(num_heads=4, key_dim=8, num_key_value_heads=2)(data(2, 3, 3, 16), data(2, 3, 3, 16), use_causal_mask=False)


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_scores_past_float16_range_match_float64(policy):
    # projected queries and keys near 100 with H=64: q . k / 8 is about 80000, past float16's 65504
    layer = CachedMultiHeadAttention(num_heads=2, key_dim=64, dtype=policy)
    x = 1.0 + 0.02 * data(1, 6, 8, seed=60)
    layer(x, x)
    rng = np.random.default_rng(61)
    for dense in (layer.query_dense, layer.key_dense):
        dense.kernel.assign(12.5 + rng.normal(size=dense.kernel.shape).astype("float32"))
    half = [tf.cast(dense(x), tf.float64).numpy() for dense in (layer.query_dense, layer.key_dense, layer.value_dense)]
    q, k, v = half  # (B, T, N, H), the projections as the layer rounds them
    scores = np.einsum("btnh,bsnh->bnts", q, k) / 8.0
    scores = np.where(np.tril(np.ones((6, 6), bool)), scores, -np.inf)
    weights = np.exp(scores - scores.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    mixed = np.einsum("bnts,bsnh->btnh", weights, v)
    kernel, bias = (tf.cast(w, tf.float64).numpy() for w in (layer.output_dense.kernel, layer.output_dense.bias))
    expected = np.einsum("btnh,nhd->btd", mixed, kernel) + bias
    tolerance = 0.05 if policy == "mixed_bfloat16" else 0.01
    plain = layer(x, x)
    cache = attention.create_cache(1, 8, 2, 64, dtype=layer.compute_dtype)
    prefill, cache = layer(x[:, :5], x[:, :5], cache=cache, step=0)
    step = tf.function(lambda token, cache: layer(token, token, cache=cache, step=5), jit_compile=True)
    decoded, _ = step(x[:, 5:], cache)
    for got in (plain, tf.concat([prefill, decoded], axis=1)):
        got = tf.cast(got, tf.float64).numpy()
        assert np.all(np.isfinite(got))
        np.testing.assert_allclose(got, expected, atol=tolerance * np.abs(expected).max())


_X = data(2, 3, WIDTH)
_Q = data(2, 3, 3, 4)


def _windowed(window: int) -> CachedMultiHeadAttention:
    if "sliding_window" not in CachedMultiHeadAttention(num_heads=HEADS, key_dim=HEAD_DIM).get_config():
        pytest.skip(f"Keras {keras.__version__} has no sliding_window")
    return CachedMultiHeadAttention(num_heads=HEADS, key_dim=HEAD_DIM, sliding_window=window)


BAD_INPUTS = [
    (lambda: _windowed(True), ValueError, r"`sliding_window` must be `None` or a positive integer\. Received: sliding_window=True"),
    (lambda: _windowed(0), ValueError, r"`sliding_window` must be `None` or a positive integer\. Received: sliding_window=0"),
    (
        lambda: _windowed(4)(_X, _X, cache=attention.create_cache(2, 3, HEADS, HEAD_DIM), step=0), ValueError,
        r"With sliding_window=4, a cache needs exactly 4 slots \(a ring buffer.*or at least 4.*Received: cache with shape \(2, 2, 3, 2, 4\)",
    ),
    (
        lambda: CachedMultiHeadAttention(num_heads=HEADS, key_dim=HEAD_DIM)(_X, _X, cache=attention.create_cache(2, 6, 1, HEAD_DIM), step=0),
        ValueError, r"`cache` must have shape \(2, B, S, N=2, H=4\)\. Received: cache with shape \(2, 2, 6, 1, 4\)",
    ),
    (
        lambda: CachedMultiHeadAttention(num_heads=HEADS, key_dim=HEAD_DIM, rotary=True)(_X, _X, positions=np.zeros((3, 3))),
        ValueError, r"`positions`.*\(B, S\).*Received: positions with shape \(3, 3\)",
    ),
    (
        lambda: CachedMultiHeadAttention(num_heads=HEADS, key_dim=HEAD_DIM, rotary=True)(_X, _X, positions=np.zeros((2, 3, 1))),
        ValueError, r"`positions` must have shape \(S,\).*or \(B, S\).*Received: positions with shape \(2, 3, 1\)",
    ),
    (
        lambda: CachedMultiHeadAttention(num_heads=HEADS, key_dim=HEAD_DIM, rotary=True)(_X, _X, positions=np.zeros(3, np.complex64)),
        TypeError, r"`positions` must be an integer or float tensor of shape \(S,\) or \(B, S\)",
    ),
    (
        lambda: attention.attention(_Q, _Q[:, :, :2], _Q[:, :, :2]), ValueError,
        r"The key / value head count K must divide the query head count N.*Received: query \(2, 3, 3, 4\), key \(2, 3, 2, 4\)",
    ),
    (
        lambda: attention.ring_attention(_Q, _Q, _Q, attention.create_cache(2, 4, 2, 4), 0), ValueError,
        r"The key / value head counts K must agree: cache K=2, key K=3, value K=3\. Received: cache \(2, 2, 4, 2, 4\)",
    ),
    (lambda: attention.ring_attention(_Q, _Q, _Q, attention.create_cache(2, 4, 3, 4), -1), ValueError, r"`step` must be >= 0\. Received: step=-1"),
    (
        lambda: attention.cached_attention(_Q, _Q, _Q, attention.create_cache(2, 4, 3, 4), 0, sliding_window=0), ValueError,
        r"`sliding_window` must be an int >= 1\. Received: sliding_window=0",
    ),
]


@pytest.mark.parametrize("call,error,message", BAD_INPUTS)
def test_bad_inputs_name_the_argument_the_value_and_the_shape(call, error, message):
    with pytest.raises(error, match=message):
        call()

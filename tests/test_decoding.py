"""The compiled generation loop against a naive loop that recomputes the whole sequence each step."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given
from hypothesis import strategies as st

from mlable_core import decoding

CLASSES = 7
LENGTH = 24  # cache slots


def toy_step(inputs, cache, step):
    """A cached toy model: the next token is a function of the sum of every token so far and the position."""
    fresh = tf.shape(inputs)[1]
    positions = tf.range(LENGTH)[tf.newaxis, :, tf.newaxis]  # (1, T, 1)
    window = (positions >= step) & (positions < step + fresh)
    placed = tf.gather(inputs, tf.clip_by_value(tf.range(LENGTH) - step, 0, fresh - 1), axis=1)  # (B, T, 2)
    cache = tf.where(window, placed, cache)  # overwrite [step, step + F)
    query = step + tf.range(fresh)  # absolute positions of the inputs
    seen = tf.cast(tf.range(LENGTH)[tf.newaxis, :] <= query[:, tf.newaxis], cache.dtype)  # (F, T)
    totals = tf.einsum("ft,btc->bfc", seen, cache)  # (B, F, 2)
    values = (totals * 3 + query[tf.newaxis, :, tf.newaxis]) % CLASSES
    return tf.one_hot(values, CLASSES) * 5.0, cache


def naive_generate(prompt: np.ndarray, count: int, stop_value=None, pad_value=0):
    sequence = prompt.copy()
    rows = []
    for row in sequence:
        tokens = list(row)
        produced = 0
        stopped = False
        for _ in range(count):
            if stopped:
                tokens.append(np.full_like(row[0], pad_value))
                continue
            total = np.sum(np.array(tokens), axis=0)
            tokens.append((total * 3 + len(tokens) - 1) % CLASSES)
            produced += 1
            stopped = stop_value is not None and np.any(tokens[-1] == stop_value)
        rows.append((np.array(tokens), produced))
    return np.stack([tokens for tokens, _ in rows]), np.array([produced for _, produced in rows])


@given(
    batch=st.integers(1, 3),
    prompt_length=st.integers(1, 6),
    count=st.integers(1, 12),
    stop_value=st.one_of(st.none(), st.integers(0, CLASSES - 1)),
    seed=st.integers(0, 2**16),
)
def test_generate_matches_the_naive_loop(batch, prompt_length, count, stop_value, seed):
    prompt = np.random.default_rng(seed).integers(0, CLASSES, size=(batch, prompt_length, 2)).astype("int32")
    cache = tf.zeros((batch, LENGTH, 2), tf.int32)
    expected, lengths = naive_generate(prompt, count, stop_value, pad_value=-1)
    stop = None if stop_value is None else decoding.stop_at(stop_value)
    tokens, actual_lengths = decoding.generate(toy_step, prompt, cache, count, stop=stop, pad_value=-1)
    np.testing.assert_array_equal(tokens.numpy(), expected)
    np.testing.assert_array_equal(actual_lengths.numpy(), lengths)


@pytest.mark.parametrize("jit_compile", [False, True])
def test_compiled_generation_traces_once_and_matches_eager(jit_compile):
    traces = []

    def step(inputs, cache, position):
        traces.append(inputs.shape[1])
        return toy_step(inputs, cache, position)

    run = tf.function(lambda prompt, cache: decoding.generate(step, prompt, cache, 10), jit_compile=jit_compile)
    prompt = np.arange(8, dtype="int32").reshape(2, 2, 2) % CLASSES
    cache = tf.zeros((2, LENGTH, 2), tf.int32)
    first, _ = run(prompt, cache)
    second, _ = run(prompt + 1, cache)
    # one trace of the prefill (F = 2) and one of the loop body (F = 1), whatever the number of steps
    assert sorted(traces) == [1, 2], traces
    np.testing.assert_array_equal(first.numpy(), naive_generate(prompt, 10)[0])
    np.testing.assert_array_equal(second.numpy(), naive_generate(prompt + 1, 10)[0])


def test_sampler_and_seed_are_used():
    def sampler(logits, seed):
        return tf.random.stateless_uniform(tf.shape(logits)[:-1], seed, maxval=CLASSES, dtype=tf.int32)

    prompt = np.zeros((2, 3, 2), "int32")
    cache = tf.zeros((2, LENGTH, 2), tf.int32)
    one, _ = decoding.generate(toy_step, prompt, cache, 8, sampler=sampler, seed=[1, 2])
    two, _ = decoding.generate(toy_step, prompt, cache, 8, sampler=sampler, seed=[1, 2])
    three, _ = decoding.generate(toy_step, prompt, cache, 8, sampler=sampler, seed=[3, 4])
    np.testing.assert_array_equal(one.numpy(), two.numpy())
    assert not np.array_equal(one.numpy(), three.numpy())


ERRORS = [
    (lambda: decoding.generate(toy_step, np.zeros((2, 3, 2), "int32"), None, 0), ValueError, r"`max_new_tokens` must be an int >= 1\. Received: max_new_tokens=0"),
    (lambda: decoding.generate(toy_step, np.zeros((2,), "int32"), None, 3), ValueError, r"`prompt` must have shape \(B, P, \.\.\.\) with P >= 1\. Received: prompt with shape \(2,\)"),
    (lambda: decoding.generate(toy_step, np.zeros((2, 0, 2), "int32"), None, 3), ValueError, r"`prompt` must hold at least one token"),
]


@pytest.mark.parametrize("call,error,message", ERRORS)
def test_errors(call, error, message):
    with pytest.raises(error, match=message):
        call()


@pytest.mark.parametrize("jit_compile", [False, True])
def test_compiled_generation_with_stop_value_pads_the_stopped_rows(jit_compile):
    run = tf.function(lambda prompt, cache: decoding.generate(toy_step, prompt, cache, 12, stop=decoding.stop_at(3), pad_value=-1), jit_compile=jit_compile)
    prompt = (np.arange(3 * 2 * 2, dtype="int32").reshape(3, 2, 2) * 5) % CLASSES
    tokens, lengths = run(prompt, tf.zeros((3, LENGTH, 2), tf.int32))
    expected, expected_lengths = naive_generate(prompt, 12, stop_value=3, pad_value=-1)
    assert expected_lengths.min() < 12, "the example must stop early to test the stop"
    np.testing.assert_array_equal(tokens.numpy(), expected)
    np.testing.assert_array_equal(lengths.numpy(), expected_lengths)


def test_stop_at_groups():
    token = tf.constant([[0, 0, 0, 97, 0, 0, 0, 0], [0, 0, 0, 97, 0, 0, 1, 0]])
    np.testing.assert_array_equal(decoding.stop_at(0, group=4)(token).numpy(), [True, False])
    np.testing.assert_array_equal(decoding.stop_at(0, group=1)(token).numpy(), [True, True])
    np.testing.assert_array_equal(decoding.stop_at(97)(token).numpy(), [True, True])
    with pytest.raises(ValueError, match=r"`group` must divide the token size\. Received: group=3"):
        decoding.stop_at(0, group=3)(token)


def toy_full(tokens):
    return toy_step(tokens, tf.zeros((tf.shape(tokens)[0], LENGTH, 2), tokens.dtype), tf.constant(0))[0]


def seeded_sampler(logits, seed):
    noise = tf.random.stateless_uniform(tf.shape(logits), seed)
    return tf.argmax(logits + 10.0 * noise, axis=-1, output_type=tf.int32)


@given(batch=st.integers(1, 3), prompt_length=st.integers(1, 6), count=st.integers(1, 12), seed=st.integers(0, 2**16))
def test_uncached_reference_matches_the_naive_loop_and_the_cached_loop(batch, prompt_length, count, seed):
    prompt = np.random.default_rng(seed).integers(0, CLASSES, size=(batch, prompt_length, 2)).astype("int32")
    uncached = decoding.generate_uncached(toy_full, prompt, count)
    np.testing.assert_array_equal(uncached.numpy(), naive_generate(prompt, count)[0])
    cache = tf.zeros((batch, LENGTH, 2), tf.int32)
    sampled, _ = decoding.generate(toy_step, prompt, cache, count, sampler=seeded_sampler, seed=[seed, 1])
    reference = decoding.generate_uncached(toy_full, prompt, count, sampler=seeded_sampler, seed=[seed, 1])
    np.testing.assert_array_equal(sampled.numpy(), reference.numpy())


def test_uncached_reference_compiles():
    run = tf.function(lambda prompt: decoding.generate_uncached(toy_full, prompt, 9), jit_compile=True)
    prompt = np.arange(12, dtype="int32").reshape(2, 3, 2) % CLASSES
    np.testing.assert_array_equal(run(prompt).numpy(), naive_generate(prompt, 9)[0])


def test_make_sampler_greedy_and_sampling():
    logits = tf.constant([[0.0, 3.0, 1.0], [2.0, -np.inf, 1.0]])
    np.testing.assert_array_equal(decoding.make_sampler()(logits, tf.constant([0, 0])).numpy(), [1, 0])
    top1 = decoding.make_sampler(temperature=1.0, top_k=1)
    np.testing.assert_array_equal(top1(logits, tf.constant([5, 6])).numpy(), [1, 0])
    draws = np.stack([decoding.make_sampler(temperature=1.0)(logits, tf.constant([0, i])).numpy() for i in range(64)])
    assert set(np.unique(draws[:, 0])) <= {0, 1, 2} and len(np.unique(draws[:, 0])) > 1
    assert 1 not in draws[:, 1], "an index of logit -inf was drawn"
    with pytest.raises(ValueError, match="top_k"):
        decoding.make_sampler(temperature=1.0, top_k=0)
    with pytest.raises(ValueError, match="temperature"):
        decoding.make_sampler(temperature=-1.0)


def test_byte_decoder_generate_survives_new_prompt_shapes():
    # regression: reduce_retracing relaxed the prompt shape to None and create_cache read prompt.shape[1]
    from mlable_keras.models import ByteDecoder, encode_tokens

    model = ByteDecoder(token_size=8, embed_dim=4, num_layers=1, num_heads=2)
    model(encode_tokens(["built"], num_tokens=2, token_size=8))  # weights first: a trace that creates them is traced again
    for num_tokens, batch in ((3, 1), (5, 1), (4, 2), (3, 1)):
        prompt = encode_tokens(["hello world"] * batch, num_tokens=num_tokens, token_size=8)
        tokens, _ = model.generate(prompt, 4)
        reference = model.generate_uncached(prompt, 4)
        assert tokens.shape == (batch, num_tokens + 4, 8)
        assert (tokens.numpy() == reference.numpy()).all()
    # one trace per distinct prompt shape, reused on the repeat: (1, 3), (1, 5), (2, 4), then (1, 3) again
    functions = model.__dict__["_generation_functions"]
    counts = sorted(function.experimental_get_tracing_count() for function in functions.values())
    assert counts == [3, 3], counts  # the cached and the uncached loop, each traced for three shapes

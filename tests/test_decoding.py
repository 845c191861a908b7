"""The compiled generation loop against naive Python loops on toy models: greedy, sampled, ragged, beam search."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, settings
from hypothesis import strategies as st

from mlable_core import decoding
from tests.strategies import ragged_cases

CLASSES = 7
LENGTH = 24  # cache slots
TOY_AXES = (0, 1)  # the toy caches are (B, S, 2)


def _totals_and_positions(inputs, cache, step, padding):
    """The toy cache: slot t holds the token written there; returns (cache, totals (B, T, 2), positions (B, T))."""
    fresh = tf.shape(inputs)[1]
    slots = tf.range(LENGTH)
    window = ((slots >= step) & (slots < step + fresh))[tf.newaxis, :, tf.newaxis]  # (1, S, 1)
    placed = tf.gather(inputs, tf.clip_by_value(slots - step, 0, fresh - 1), axis=1)  # (B, S, 2)
    cache = tf.where(window, placed, cache)  # overwrite [step, step + T)
    query = step + tf.range(fresh)  # (T,) slots of the inputs
    pad = tf.zeros([tf.shape(inputs)[0]], tf.int32) if padding is None else padding
    seen = (slots[tf.newaxis, tf.newaxis, :] <= query[tf.newaxis, :, tf.newaxis]) & (
        slots[tf.newaxis, tf.newaxis, :] >= pad[:, tf.newaxis, tf.newaxis]
    )  # (B, T, S): causal, pad slots hidden
    totals = tf.einsum("bts,bsc->btc", tf.cast(seen, cache.dtype), cache)  # (B, T, 2)
    positions = query[tf.newaxis, :] - pad[:, tf.newaxis]  # (B, T)
    return cache, totals, positions


def toy_step(inputs, cache, step, padding=None):
    """A cached toy model: the next token is a function of the sum of every token so far and the position."""
    cache, totals, positions = _totals_and_positions(inputs, cache, step, padding)
    values = (totals * 3 + positions[..., tf.newaxis]) % CLASSES
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


def toy_cache(batch):
    return tf.zeros((batch, LENGTH, 2), tf.int32)


@given(
    batch=st.integers(1, 3),
    prompt_length=st.integers(1, 6),
    count=st.integers(1, 12),
    stop_value=st.one_of(st.none(), st.integers(0, CLASSES - 1)),
    seed=st.integers(0, 2**16),
)
def test_generate_matches_the_naive_loop(batch, prompt_length, count, stop_value, seed):
    prompt = np.random.default_rng(seed).integers(0, CLASSES, size=(batch, prompt_length, 2)).astype("int32")
    expected, lengths = naive_generate(prompt, count, stop_value, pad_value=-1)
    stop = None if stop_value is None else decoding.stop_at(stop_value)
    tokens, actual_lengths = decoding.generate(toy_step, prompt, toy_cache(batch), count, stop=stop, pad_value=-1, cache_axes=TOY_AXES)
    np.testing.assert_array_equal(tokens.numpy(), expected)
    np.testing.assert_array_equal(actual_lengths.numpy(), lengths)


# ragged batches ---------------------------------------------------------------------------------

PAD = 5  # a pad value the toy would add to its sums if a pad slot were visible


def left_pad(rows: list[np.ndarray], pad_value: int) -> np.ndarray:
    width = max(len(row) for row in rows)
    out = np.full((len(rows), width) + rows[0].shape[1:], pad_value, rows[0].dtype)
    for index, row in enumerate(rows):
        out[index, width - len(row):] = row
    return out


def row_seeds(seed: int, batch: int) -> np.ndarray:
    return np.stack([np.array([seed, row], "int32") for row in range(batch)])


@given(case=ragged_cases(max_length=6, max_new_tokens=10), stop_value=st.one_of(st.none(), st.integers(0, CLASSES - 1)))
def test_ragged_rows_equal_the_naive_loop_and_each_row_alone(case, stop_value):
    rng = np.random.default_rng(case.seed)
    rows = [rng.integers(0, CLASSES, size=(length, 2)).astype("int32") for length in case.lengths]
    prompt = left_pad(rows, PAD)
    stop = None if stop_value is None else decoding.stop_at(stop_value)
    tokens, lengths = decoding.generate(
        toy_step, prompt, toy_cache(len(rows)), case.max_new_tokens, stop=stop, pad_value=PAD, lengths=case.lengths,
        cache_axes=TOY_AXES,
    )
    width = prompt.shape[1]
    for index, row in enumerate(rows):
        expected, expected_length = naive_generate(row[np.newaxis], case.max_new_tokens, stop_value, pad_value=PAD)
        np.testing.assert_array_equal(tokens.numpy()[index, width - len(row):], expected[0])
        np.testing.assert_array_equal(tokens.numpy()[index, : width - len(row)], PAD)  # the padding is kept as given
        assert lengths.numpy()[index] == expected_length[0]


def noisy_sampler(logits, seed):
    """A sampler with one seed per row ``(B, 2)``: each row's noise depends only on its own seed."""
    noise = tf.map_fn(lambda pair: tf.random.stateless_uniform(tf.shape(pair[0]), pair[1]), (logits, seed), fn_output_signature=tf.float32)
    return tf.argmax(logits + 10.0 * noise, axis=-1, output_type=tf.int32)


@settings(max_examples=10)
@given(case=ragged_cases(max_length=6, max_new_tokens=8), stop_value=st.one_of(st.none(), st.integers(0, CLASSES - 1)))
def test_ragged_sampling_with_row_seeds_equals_each_row_alone(case, stop_value):
    rng = np.random.default_rng(case.seed)
    rows = [rng.integers(0, CLASSES, size=(length, 2)).astype("int32") for length in case.lengths]
    seeds = row_seeds(case.seed, len(rows))
    stop = None if stop_value is None else decoding.stop_at(stop_value)
    for sampler in (noisy_sampler, decoding.make_sampler(temperature=1.0, top_k=4)):
        tokens, lengths = decoding.generate(
            toy_step, left_pad(rows, PAD), toy_cache(len(rows)), case.max_new_tokens, sampler=sampler, seed=seeds,
            stop=stop, pad_value=PAD, lengths=case.lengths, cache_axes=TOY_AXES,
        )
        for index, row in enumerate(rows):
            alone, alone_length = decoding.generate(
                toy_step, row[np.newaxis], toy_cache(1), case.max_new_tokens, sampler=sampler, seed=seeds[index : index + 1],
                stop=stop, pad_value=PAD, cache_axes=TOY_AXES,
            )
            np.testing.assert_array_equal(tokens.numpy()[index, -len(alone[0]):], alone.numpy()[0])
            assert lengths.numpy()[index] == alone_length.numpy()[0]


def test_row_seeds_fold_each_row_like_fold_in():
    # the i-th draw of row b uses fold_in(seed[b], i): a recording sampler sees the seeds
    seen = []

    def recorder(logits, seed):
        seen.append(seed.numpy())
        return tf.zeros(tf.shape(logits)[:-1], tf.int32)

    seeds = np.array([[3, 4], [5, 6]], "int32")
    decoding.generate(toy_step, np.zeros((2, 2, 2), "int32"), toy_cache(2), 3, sampler=recorder, seed=seeds, cache_axes=TOY_AXES)
    for index, pair in enumerate(seen, start=1):
        expected = [tf.random.experimental.stateless_fold_in(row, index).numpy() for row in seeds]
        np.testing.assert_array_equal(pair, expected)
    assert len(seen) == 3


# compiled loops and traces ----------------------------------------------------------------------


@pytest.mark.parametrize("jit_compile", [False, True])
def test_compiled_generation_traces_once_and_matches_eager(jit_compile):
    traces = []

    def step(inputs, cache, position, padding=None):
        traces.append(inputs.shape[1])
        return toy_step(inputs, cache, position, padding)

    run = tf.function(
        lambda prompt, cache, lengths: decoding.generate(step, prompt, cache, 10, lengths=lengths, pad_value=PAD, cache_axes=TOY_AXES),
        jit_compile=jit_compile,
    )
    rows = [np.arange(4, dtype="int32").reshape(2, 2) % CLASSES, np.array([[3, 1]], "int32")]
    prompt = left_pad(rows, PAD)
    first, _ = run(prompt, toy_cache(2), np.array([2, 1], "int32"))
    second, _ = run(prompt, toy_cache(2), np.array([2, 1], "int32"))
    # one trace of the prefill (T = 2) and one of the loop body (T = 1), whatever the number of steps
    assert sorted(traces) == [1, 2], traces
    for tokens in (first, second):
        np.testing.assert_array_equal(tokens.numpy()[0], naive_generate(rows[0][np.newaxis], 10)[0][0])
        np.testing.assert_array_equal(tokens.numpy()[1, 1:], naive_generate(rows[1][np.newaxis], 10)[0][0])


def test_sampler_and_seed_are_used():
    def sampler(logits, seed):
        return tf.random.stateless_uniform(tf.shape(logits)[:-1], seed, maxval=CLASSES, dtype=tf.int32)

    prompt = np.zeros((2, 3, 2), "int32")
    one, _ = decoding.generate(toy_step, prompt, toy_cache(2), 8, sampler=sampler, seed=[1, 2], cache_axes=TOY_AXES)
    two, _ = decoding.generate(toy_step, prompt, toy_cache(2), 8, sampler=sampler, seed=[1, 2], cache_axes=TOY_AXES)
    three, _ = decoding.generate(toy_step, prompt, toy_cache(2), 8, sampler=sampler, seed=[3, 4], cache_axes=TOY_AXES)
    np.testing.assert_array_equal(one.numpy(), two.numpy())
    assert not np.array_equal(one.numpy(), three.numpy())


@pytest.mark.parametrize("jit_compile", [False, True])
def test_compiled_generation_with_stop_value_pads_the_stopped_rows(jit_compile):
    run = tf.function(
        lambda prompt, cache: decoding.generate(toy_step, prompt, cache, 12, stop=decoding.stop_at(3), pad_value=-1, cache_axes=TOY_AXES),
        jit_compile=jit_compile,
    )
    prompt = (np.arange(3 * 2 * 2, dtype="int32").reshape(3, 2, 2) * 5) % CLASSES
    tokens, lengths = run(prompt, toy_cache(3))
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
    sampled, _ = decoding.generate(toy_step, prompt, toy_cache(batch), count, sampler=seeded_sampler, seed=[seed, 1], cache_axes=TOY_AXES)
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
    np.testing.assert_array_equal(top1(logits, tf.constant([[5, 6], [7, 8]])).numpy(), [1, 0])  # one seed per row
    draws = np.stack([decoding.make_sampler(temperature=1.0)(logits, tf.constant([0, i])).numpy() for i in range(64)])
    assert set(np.unique(draws[:, 0])) <= {0, 1, 2} and len(np.unique(draws[:, 0])) > 1
    assert 1 not in draws[:, 1], "an index of logit -inf was drawn"
    # with one seed per row, a row draws the same alone as in a batch
    sampler = decoding.make_sampler(temperature=1.0)
    batch = sampler(logits, tf.constant([[1, 2], [3, 4]])).numpy()
    assert batch[1] == sampler(logits[1:], tf.constant([[3, 4]])).numpy()[0]


@pytest.mark.parametrize(
    "length,bucket", [(1, 16), (15, 16), (16, 16), (17, 24), (24, 24), (25, 32), (33, 48), (48, 48), (49, 64), (65, 96), (97, 128)]
)
def test_bucket_length(length, bucket):
    assert decoding.bucket_length(length) == bucket
    assert length <= bucket <= max(16, 1.5 * length)


# beam search -----------------------------------------------------------------------------------

BEAM_CLASSES = 5


def beam_logits(totals, positions):
    """Distinct scores for every value of a token (no ties): ``(..., 2)`` totals, ``(...)`` positions -> ``(..., 2, C)``."""
    classes = np.arange(BEAM_CLASSES)
    value = np.arange(2)[:, None]
    return 1.2 * np.sin(1.3 * totals[..., None] + 0.7 * classes + 0.37 * positions[..., None, None] + 0.91 * value + 0.1 * classes**2)


def beam_step(inputs, cache, step, padding=None):
    cache, totals, positions = _totals_and_positions(inputs, cache, step, padding)
    classes = tf.range(BEAM_CLASSES, dtype=tf.float64)
    value = tf.constant([[0.0], [1.0]], tf.float64)
    totals = tf.cast(totals, tf.float64)[..., tf.newaxis]  # (B, T, 2, 1)
    angles = 1.3 * totals + 0.7 * classes + 0.37 * tf.cast(positions, tf.float64)[..., tf.newaxis, tf.newaxis] + 0.91 * value + 0.1 * classes**2
    return tf.cast(1.2 * tf.sin(angles), tf.float32), cache


def log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def token_log_probs(tokens: list[np.ndarray]) -> np.ndarray:
    """``(2, C)`` log-probabilities of the token after ``tokens`` (float64, uncached)."""
    total = np.sum(np.array(tokens), axis=0)
    return log_softmax(beam_logits(total, np.array(len(tokens) - 1)))


def naive_beam_search(prompt_row, count, beams, stop_value=None, pad_value=0, length_penalty=1.0):
    """Beam search with explicit loops over beams and over every token (C ** 2 per beam), no cache."""
    hypotheses = [(list(prompt_row), 0.0, False, 0)]  # (tokens, log-prob, finished, generated length)
    every_token = [np.array(pair) for pair in itertools.product(range(BEAM_CLASSES), repeat=2)]
    for _ in range(count):
        proposals = []
        for tokens, score, finished, length in hypotheses:
            if finished:
                proposals.append((tokens + [np.full(2, pad_value)], score, True, length))
                continue
            lp = token_log_probs(tokens)
            scored = sorted(((score + lp[0, t[0]] + lp[1, t[1]], t) for t in every_token), key=lambda item: -item[0])
            for value, token in scored[:beams]:
                stopped = stop_value is not None and bool(np.any(token == stop_value))
                proposals.append((tokens + [token], value, stopped, length + 1))
        hypotheses = sorted(proposals, key=lambda item: -item[1])[:beams]  # stable: ties keep the earlier beam
        if all(finished for _, _, finished, _ in hypotheses):
            break
    best = max(range(len(hypotheses)), key=lambda j: (hypotheses[j][1] / hypotheses[j][3] ** length_penalty, -j))
    tokens, score, _, length = hypotheses[best]
    tokens = tokens + [np.full(2, pad_value)] * (len(prompt_row) + count - len(tokens))
    return np.array(tokens), length, score


def sequence_log_prob(tokens: np.ndarray, prompt_length: int, length: int) -> float:
    """The log-probability of ``tokens[prompt_length : prompt_length + length]`` under the toy, scored from scratch."""
    total = 0.0
    for position in range(prompt_length, prompt_length + length):
        lp = token_log_probs(list(tokens[:position]))
        total += lp[0, tokens[position][0]] + lp[1, tokens[position][1]]
    return total


@settings(max_examples=12)
@given(
    case=ragged_cases(max_batch=2, max_length=4, max_new_tokens=5),
    beams=st.integers(1, 4),
    stop_value=st.one_of(st.none(), st.integers(0, BEAM_CLASSES - 1)),
    length_penalty=st.sampled_from([0.0, 1.0, 2.0]),
)
def test_beam_search_equals_a_naive_beam_search(case, beams, stop_value, length_penalty):
    rng = np.random.default_rng(case.seed)
    rows = [rng.integers(0, BEAM_CLASSES, size=(length, 2)).astype("int32") for length in case.lengths]
    stop = None if stop_value is None else decoding.stop_at(stop_value)
    tokens, lengths, log_probs = decoding.beam_search(
        beam_step, left_pad(rows, 0), toy_cache(len(rows)), case.max_new_tokens, beams, length_penalty=length_penalty,
        stop=stop, pad_value=0, lengths=case.lengths, cache_axes=TOY_AXES,
    )
    width = max(case.lengths)
    for index, row in enumerate(rows):
        expected, length, score = naive_beam_search(row, case.max_new_tokens, beams, stop_value, 0, length_penalty)
        np.testing.assert_array_equal(tokens.numpy()[index, width - len(row):], expected)
        assert lengths.numpy()[index] == length
        np.testing.assert_allclose(log_probs.numpy()[index], score, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(score, sequence_log_prob(expected, len(row), length), rtol=1e-9)


@given(case=ragged_cases(max_batch=2, max_length=4, max_new_tokens=8), stop_value=st.one_of(st.none(), st.integers(0, BEAM_CLASSES - 1)))
def test_one_beam_is_greedy(case, stop_value):
    rng = np.random.default_rng(case.seed)
    rows = [rng.integers(0, BEAM_CLASSES, size=(length, 2)).astype("int32") for length in case.lengths]
    stop = None if stop_value is None else decoding.stop_at(stop_value)
    arguments = dict(stop=stop, pad_value=0, lengths=case.lengths, cache_axes=TOY_AXES)
    greedy = decoding.generate(beam_step, left_pad(rows, 0), toy_cache(len(rows)), case.max_new_tokens, **arguments)
    beam = decoding.generate(beam_step, left_pad(rows, 0), toy_cache(len(rows)), case.max_new_tokens, num_beams=1, length_penalty=3.0, **arguments)
    for one, other in zip(greedy, beam):
        np.testing.assert_array_equal(one.numpy(), other.numpy())


@given(case=ragged_cases(max_batch=2, max_length=4, max_new_tokens=2), beams=st.integers(1, 4))
def test_the_best_beam_is_at_least_as_likely_as_greedy_over_two_tokens(case, beams):
    # over two tokens this is a theorem: greedy's first token is among the kept beams, its second among their proposals
    rng = np.random.default_rng(case.seed)
    rows = [rng.integers(0, BEAM_CLASSES, size=(length, 2)).astype("int32") for length in case.lengths]
    prompt = left_pad(rows, 0)
    greedy, _ = decoding.generate(beam_step, prompt, toy_cache(len(rows)), case.max_new_tokens, lengths=case.lengths, cache_axes=TOY_AXES)
    beam, _, log_probs = decoding.beam_search(beam_step, prompt, toy_cache(len(rows)), case.max_new_tokens, beams, lengths=case.lengths, cache_axes=TOY_AXES)
    width = prompt.shape[1]
    for index, row in enumerate(rows):
        start = width - len(row)
        greedy_score = sequence_log_prob(greedy.numpy()[index, start:], len(row), case.max_new_tokens)
        beam_score = sequence_log_prob(beam.numpy()[index, start:], len(row), case.max_new_tokens)
        assert beam_score >= greedy_score - 1e-9
        np.testing.assert_allclose(log_probs.numpy()[index], beam_score, rtol=1e-5, atol=1e-5)


def test_the_best_beam_beats_greedy_on_longer_fixed_examples():
    # not a theorem beyond two tokens (greedy's prefix can fall out of the beam), so fixed examples
    prompt = np.array([[[4, 3], [2, 1]], [[0, 4], [3, 4]], [[1, 4], [3, 0]]], "int32")
    greedy, _ = decoding.generate(beam_step, prompt, toy_cache(3), 8, cache_axes=TOY_AXES)
    beam, _, _ = decoding.beam_search(beam_step, prompt, toy_cache(3), 8, 4, cache_axes=TOY_AXES)
    scores = [(sequence_log_prob(beam.numpy()[row], 2, 8), sequence_log_prob(greedy.numpy()[row], 2, 8)) for row in range(3)]
    assert all(ours >= theirs for ours, theirs in scores), scores
    assert any(ours > theirs + 1e-6 for ours, theirs in scores), "the beams must find a better sequence somewhere"


def test_beam_search_compiles_and_reorders_the_cache():
    run = tf.function(lambda prompt, cache: decoding.beam_search(beam_step, prompt, cache, 6, 3, cache_axes=TOY_AXES), jit_compile=True)
    prompt = np.array([[[1, 2], [3, 0]], [[4, 4], [0, 1]]], "int32")
    tokens, lengths, _ = run(prompt, toy_cache(2))
    for index in range(2):
        expected, length, _ = naive_beam_search(prompt[index], 6, 3)
        np.testing.assert_array_equal(tokens.numpy()[index], expected)
        assert lengths.numpy()[index] == length


@settings(max_examples=20)
@given(
    values=st.integers(1, 3), classes=st.integers(1, 4), k=st.integers(1, 4), rows=st.integers(1, 2), seed=st.integers(0, 2**16)
)
def test_top_tokens_are_the_best_of_every_token(values, classes, k, rows, seed):
    k = min(k, classes)
    log_probs = log_softmax(np.random.default_rng(seed).normal(size=(rows, values, classes)))
    scores, tokens = decoding.top_tokens(tf.constant(log_probs, tf.float64), k)
    for row in range(rows):
        every = sorted(
            (sum(log_probs[row, g, t[g]] for g in range(values)), t) for t in itertools.product(range(classes), repeat=values)
        )[::-1]
        expected = [score for score, _ in every[:k]]
        np.testing.assert_allclose(scores.numpy()[row], expected, rtol=1e-12)
        for score, token in zip(scores.numpy()[row], tokens.numpy()[row]):
            np.testing.assert_allclose(sum(log_probs[row, g, token[g]] for g in range(values)), score, rtol=1e-12)
        assert len({tuple(token) for token in tokens.numpy()[row]}) == k


# bad input, rejected before anything is traced ------------------------------------------------

ZEROS = np.zeros((2, 3, 2), "int32")


def generate_call(prompt=ZEROS, cache=None, count=3, **kwargs):
    cache = toy_cache(np.shape(prompt)[0] if np.ndim(prompt) else 1) if cache is None else cache
    return lambda: decoding.generate(toy_step, prompt, cache, count, cache_axes=kwargs.pop("cache_axes", TOY_AXES), **kwargs)


def padded(rows):
    return left_pad([np.asarray(row, "int32").reshape(-1, 2) for row in rows], 0)


ERRORS = [
    (generate_call(count=0), ValueError, r"`max_new_tokens` must be an int >= 1\. Received: max_new_tokens=0"),
    (generate_call(prompt=np.zeros((2,), "int32")), ValueError, r"`prompt` must have shape \(B, S, \.\.\.\) with S >= 1\. Received: prompt with shape \(2,\)"),
    (generate_call(prompt=np.zeros((2, 0, 2), "int32")), ValueError, r"`prompt` must hold at least one token \(S >= 1\)\. Received: prompt with shape \(2, 0, 2\)"),
    (generate_call(prompt=np.zeros((0, 3, 2), "int32"), cache=toy_cache(1)), ValueError, r"`prompt` must hold at least one row \(B >= 1\)"),
    (generate_call(prompt=np.zeros((2, 3, 2), "float32")), TypeError, r"`prompt` must hold integer tokens\. Received: prompt with dtype float32"),
    (generate_call(count=LENGTH - 2), ValueError, r"room for the prompt and the new tokens: S \+ max_new_tokens = 25 slots on its slot axis 1 .*Received: a cache tensor of shape \(2, 24, 2\)"),
    (generate_call(cache=toy_cache(3)), ValueError, r"Every cache tensor must hold B=2 rows .* on its batch axis 0 .*Received: a cache tensor of shape \(3, 24, 2\)"),
    (generate_call(cache_axes=(0, 3)), ValueError, r"`cache_axes` \(0, 3\) \(batch axis, slot axis\) must index every cache tensor"),
    (generate_call(num_beams=0), ValueError, r"`num_beams` must be an int >= 1\. Received: num_beams=0"),
    (generate_call(num_beams=2, sampler=seeded_sampler), ValueError, r"Beam search keeps the `num_beams` most likely sequences and draws nothing"),
    (generate_call(num_beams=2, cache_axes=None), ValueError, r"Beam search reorders the cache rows: `cache_axes` must give the batch axis"),
    (generate_call(num_beams=CLASSES + 1), ValueError, r"`num_beams` must be at most C=7 \(the classes of one value\)\. Received: num_beams=8"),
    (generate_call(num_beams=2, length_penalty=float("nan")), ValueError, r"`length_penalty` must be a finite float\. Received: length_penalty=nan"),
    (generate_call(seed=np.zeros((3, 2), "int32")), ValueError, r"`seed` must have shape \(2,\) .* or \(B, 2\) with B=2 .*Received: seed with shape \(3, 2\)"),
    (generate_call(lengths=[3]), ValueError, r"`lengths` must have shape \(B,\) for a prompt of shape \(2, 3, 2\)\. Received: lengths with shape \(1,\)"),
    (generate_call(lengths=[1.0, 2.0]), TypeError, r"`lengths` must hold integers"),
    (generate_call(lengths=[3, 4]), ValueError, r"1 <= lengths\[b\] <= S\. Received: lengths\[1\]=4 with S=3"),
    (generate_call(lengths=[0, 3]), ValueError, r"1 <= lengths\[b\] <= S\. Received: lengths\[0\]=0 with S=3"),
    (generate_call(prompt=padded([[1, 1, 2, 2], [3, 3, 4, 4, 5, 5]]), lengths=[1, 3]), ValueError, r"Received: lengths\[0\]=1 with S=3, but position 1 of row 0 holds \[1, 1\], not pad_value=0"),
    (lambda: decoding.make_sampler(temperature=-1.0), ValueError, r"`temperature` must be a finite float >= 0"),
    (lambda: decoding.make_sampler(temperature=1.0, top_k=0), ValueError, r"`top_k` must be an int >= 1\. Received: top_k=0"),
    (lambda: decoding.make_sampler(temperature=1.0, top_p=0.0), ValueError, r"`top_p` must be .*\(0, 1\].*Received: top_p=0\.0"),
    (lambda: decoding.make_sampler(temperature=1.0, top_p=1.5), ValueError, r"`top_p` must be .*\(0, 1\].*Received: top_p=1\.5"),
    (lambda: decoding.top_tokens(tf.zeros((2, 3)), 4), ValueError, r"`k` must be at most C=3"),
    (lambda: decoding.bucket_length(0), ValueError, r"`length` must be an int >= 1\. Received: length=0"),
]


@pytest.mark.parametrize("call,error,message", ERRORS)
def test_errors(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_lengths_are_checked_at_run_time_in_graphs():
    run = tf.function(lambda prompt, lengths: decoding.generate(toy_step, prompt, toy_cache(2), 3, lengths=lengths, cache_axes=TOY_AXES))
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"a pad position that does not hold pad_value"):
        run(padded([[1, 1, 2, 2], [3, 3, 4, 4, 5, 5]]), tf.constant([1, 3]))
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"1 <= lengths\[b\] <= S"):
        run(padded([[1, 1, 2, 2], [3, 3, 4, 4, 5, 5]]), tf.constant([2, 4]))

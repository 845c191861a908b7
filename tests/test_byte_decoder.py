"""ByteDecoder generation: ragged batches equal each row alone, beam search against a naive one, one compile per bucket."""

from __future__ import annotations

import itertools

import keras
import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, settings
from hypothesis import strategies as st

from mlable_keras.models import ByteDecoder
from tests.strategies import ragged_cases

TOKEN = 4  # bytes per token


def small_model(seed: int = 1, nul_bias: float | None = None) -> ByteDecoder:
    """A small random ByteDecoder; with ``nul_bias``, NUL characters come often (rows stop at different steps)."""
    keras.utils.set_random_seed(seed)
    model = ByteDecoder(token_size=TOKEN, embed_dim=4, num_layers=2, num_heads=2, hidden_dim=16)
    model(np.zeros((1, 2, TOKEN), "int32"))
    if nul_bias is not None:
        bias = np.zeros((TOKEN, 256), "float32")
        bias[:3, 0] = 5.0  # the three high bytes of a character are zero: ASCII-like characters
        bias[3, 0] = nul_bias  # the last byte is zero (a NUL character) about a third of the time
        model.head.bias.assign(bias.reshape(-1))
    return model


MODEL = small_model()
STOPPER = small_model(seed=2, nul_bias=0.3)


def random_rows(lengths, seed):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, size=(length, TOKEN)).astype("int32") for length in lengths]


def left_pad(rows):
    width = max(len(row) for row in rows)
    out = np.zeros((len(rows), width, TOKEN), "int32")
    for index, row in enumerate(rows):
        out[index, width - len(row):] = row
    return out


# model level: the padded prefill and decode steps compute what each row computes alone --------------


@settings(max_examples=10)
@given(case=ragged_cases(max_batch=3, max_length=7))
def test_padded_steps_equal_each_row_alone_and_the_full_pass(case):
    rows = random_rows(case.lengths, case.seed)
    prompt = left_pad(rows)
    width = prompt.shape[1]
    padding = tf.constant([width - len(row) for row in rows], tf.int32)
    cache = MODEL.create_cache(len(rows), width + 1)
    logits, cache = MODEL.step(tf.constant(prompt), cache, tf.constant(0), padding=padding)  # one prefill for the batch
    following = np.random.default_rng(case.seed + 1).integers(0, 256, size=(len(rows), 1, TOKEN)).astype("int32")
    decoded, _ = MODEL.step(tf.constant(following), cache, tf.constant(width), padding=padding)
    for index, row in enumerate(rows):
        alone = MODEL.forward(tf.constant(np.concatenate([row, following[index]])[np.newaxis]))[0].numpy()[0]  # uncached
        np.testing.assert_allclose(logits.numpy()[index, width - len(row):], alone[:-1], atol=2e-5)
        np.testing.assert_allclose(decoded.numpy()[index, 0], alone[-1], atol=2e-5)


# ragged generation ------------------------------------------------------------------------------
# graph mode (jit_compile=False) with one batch size and one prompt bucket, so that the examples share two
# traced loops per setting (tracing a 2-block model costs seconds); the XLA loop is checked in the trace test

COUNT = 6
GRAPH = {"jit_compile": False}


def assert_rows_alone(model, rows, tokens, generated, seeds=None, **options):
    """Each row of a batch's output equals generating that row alone (its prompt, its seed)."""
    for index, row in enumerate(rows):
        seed = {} if seeds is None else {"seed": seeds[index : index + 1]}
        alone, alone_length = model.generate([row], COUNT, **seed, **options)
        np.testing.assert_array_equal(tokens.numpy()[index, -alone.shape[1]:], alone.numpy()[0])
        np.testing.assert_array_equal(tokens.numpy()[index, : -alone.shape[1]], 0)  # left padding
        assert generated.numpy()[index] == alone_length.numpy()[0]


@settings(max_examples=6)
@given(case=ragged_cases(min_batch=3, max_batch=3, max_length=12), listed=st.booleans())
def test_ragged_generation_equals_each_row_alone(case, listed):
    rows = random_rows(case.lengths, case.seed)
    prompt = rows if listed else left_pad(rows)
    lengths = None if listed else list(case.lengths)
    seeds = np.array([[case.seed, row] for row in range(len(rows))], "int32")
    # greedy and sampled with one seed per row, rows stopping at their first NUL character (often early)
    for options in ({"stop_at_nul": True, **GRAPH}, {"stop_at_nul": True, "temperature": 1.0, **GRAPH}):
        row_seeds = seeds if "temperature" in options else None
        extra = {} if row_seeds is None else {"seed": row_seeds}
        tokens, generated = STOPPER.generate(prompt, COUNT, lengths=lengths, **extra, **options)
        assert tokens.shape == (len(rows), max(case.lengths) + COUNT, TOKEN)
        assert_rows_alone(STOPPER, rows, tokens, generated, row_seeds, **options)


def test_rows_stop_at_their_own_step():
    rows = random_rows((3, 9, 1), seed=4)
    tokens, lengths = STOPPER.generate(rows, COUNT, stop_at_nul=True, **GRAPH)
    assert len(set(lengths.numpy().tolist())) > 1, "the example must stop rows at different steps"
    for index in range(len(rows)):
        generated = tokens.numpy()[index, 9:]
        stop = lengths.numpy()[index]
        if stop < COUNT:
            np.testing.assert_array_equal(generated[stop - 1], 0)  # the NUL character that stopped it
        np.testing.assert_array_equal(generated[stop:], 0)
        assert not np.any(np.all(generated[: stop - 1] == 0, axis=-1)), "no NUL before the stop"


def test_cached_generation_with_row_seeds_equals_the_uncached_reference():
    dense = left_pad(random_rows((5, 5, 5), seed=5))
    options = {"temperature": 1.0, "seed": [[1, 2], [3, 4], [5, 6]], **GRAPH}
    cached, _ = MODEL.generate(dense, COUNT, **options)
    np.testing.assert_array_equal(cached.numpy(), MODEL.generate_uncached(dense, COUNT, **options).numpy())


def test_string_prompts_are_encoded_and_left_padded():
    tokens, _ = STOPPER.generate(["hé", "hello", "a"], COUNT, stop_at_nul=True, **GRAPH)
    assert tokens.shape == (3, 5 + COUNT, TOKEN)
    assert tokens.numpy()[0, :3].sum() == 0  # "hé" is 2 characters, left-padded by 3 tokens
    np.testing.assert_array_equal(tokens.numpy()[0, 3:5].reshape(-1), np.frombuffer("hé".encode("utf-32-be"), np.uint8))
    np.testing.assert_array_equal(tokens.numpy()[1, :5].reshape(-1), np.frombuffer("hello".encode("utf-32-be"), np.uint8))


# beam search ------------------------------------------------------------------------------------


def log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def next_log_probs(model, tokens):
    """``(G, 256)`` float64 log-probabilities of each byte of the token after ``tokens`` (uncached forward)."""
    logits = model.forward(tf.constant(np.asarray(tokens, "int32")[np.newaxis]))[0].numpy()[0, -1]
    return log_softmax(logits.astype("float64"))


def naive_beam_search(model, prompt_row, count, beams, stop_at_nul=False, length_penalty=1.0):
    """Beam search with explicit loops: each live beam proposes the best tokens of the product of its byte
    distributions, found among every combination of each byte's ``beams`` best values (a token of the top
    ``beams`` needs each of its bytes in that byte's top ``beams``)."""
    hypotheses = [(list(prompt_row), 0.0, False, 0)]
    for _ in range(count):
        proposals = []
        for tokens, score, finished, length in hypotheses:
            if finished:
                proposals.append((tokens + [np.zeros(TOKEN, "int32")], score, True, length))
                continue
            lp = next_log_probs(model, tokens)
            best = [np.argsort(-lp[g], kind="stable")[:beams] for g in range(TOKEN)]
            scored = [(score + sum(lp[g, t[g]] for g in range(TOKEN)), np.array(t)) for t in itertools.product(*best)]
            scored.sort(key=lambda item: -item[0])
            for value, token in scored[:beams]:
                stopped = stop_at_nul and not token.any()
                proposals.append((tokens + [token], value, stopped, length + 1))
        hypotheses = sorted(proposals, key=lambda item: -item[1])[:beams]
        if all(finished for _, _, finished, _ in hypotheses):
            break
    best = max(range(len(hypotheses)), key=lambda j: (hypotheses[j][1] / hypotheses[j][3] ** length_penalty, -j))
    tokens, score, _, length = hypotheses[best]
    tokens = tokens + [np.zeros(TOKEN, "int32")] * (len(prompt_row) + count - len(tokens))
    return np.array(tokens), length, score


def sequence_log_prob(model, tokens, prompt_length, length):
    """The log-probability of the generated tokens, scored by one uncached pass."""
    logits = model.forward(tf.constant(np.asarray(tokens, "int32")[np.newaxis]))[0].numpy()[0].astype("float64")
    lp = log_softmax(logits)
    return sum(lp[position - 1, g, tokens[position][g]] for position in range(prompt_length, prompt_length + length) for g in range(TOKEN))


@pytest.mark.parametrize("beams,stop_at_nul,length_penalty", [(2, False, 1.0), (3, True, 0.0)])
def test_beam_search_equals_a_naive_beam_search(beams, stop_at_nul, length_penalty):
    rows = random_rows((2, 4, 1), seed=7)
    model = STOPPER if stop_at_nul else MODEL
    tokens, lengths = model.generate(rows, 3, num_beams=beams, stop_at_nul=stop_at_nul, length_penalty=length_penalty, **GRAPH)
    for index, row in enumerate(rows):
        expected, length, score = naive_beam_search(model, row, 3, beams, stop_at_nul, length_penalty)
        np.testing.assert_array_equal(tokens.numpy()[index, 4 - len(row):], expected)
        assert lengths.numpy()[index] == length
        np.testing.assert_allclose(sequence_log_prob(model, expected, len(row), length), score, atol=1e-6)


def test_one_beam_is_greedy_and_more_beams_are_at_least_as_likely():
    rows = random_rows((3, 6, 1), seed=8)
    greedy = STOPPER.generate(rows, COUNT, stop_at_nul=True, **GRAPH)
    one = STOPPER.generate(rows, COUNT, stop_at_nul=True, num_beams=1, length_penalty=2.0, **GRAPH)
    for ours, theirs in zip(greedy, one):
        np.testing.assert_array_equal(ours.numpy(), theirs.numpy())
    # two new tokens: greedy's first token stays among the beams, so the best beam is at least as likely
    greedy, _ = MODEL.generate(rows, 2, **GRAPH)
    beam, _ = MODEL.generate(rows, 2, num_beams=3, **GRAPH)
    for index, row in enumerate(rows):
        start = 6 - len(row)
        ours = sequence_log_prob(MODEL, beam.numpy()[index, start:], len(row), 2)
        theirs = sequence_log_prob(MODEL, greedy.numpy()[index, start:], len(row), 2)
        assert ours >= theirs - 1e-6


# one compile per (batch size, prompt-length bucket) -------------------------------------------------


def tracing_counts(model):
    return sorted(function.experimental_get_tracing_count() for function in model.__dict__.get("_generation_functions", {}).values())


def test_generate_traces_once_per_batch_size_and_prompt_bucket():
    model = small_model(seed=3)
    rows = random_rows((3, 5, 16, 1, 2, 9, 17, 24, 20, 7, 7, 12), seed=9)
    outputs = {}
    for group in ((0,), (1,), (2,), (3,), (4, 5), (6,), (7,), (8,), (9, 10), (11,), (5,), (4,)):
        tokens, _ = model.generate([rows[index] for index in group], 3)  # XLA
        for position, index in enumerate(group):
            outputs.setdefault(index, []).append(tokens.numpy()[position, -len(rows[index]) - 3:])
    # buckets: lengths 1-16 -> 16 and 17-24 -> 24; batch sizes 1 and 2: (1, 16), (2, 16), (1, 24)
    assert tracing_counts(model) == [3], tracing_counts(model)
    for index in (4, 5):  # a row in a ragged pair of the XLA loop equals the same row alone
        np.testing.assert_array_equal(outputs[index][0], outputs[index][1])


# bad input: a clear error before anything is compiled ---------------------------------------------

DENSE = np.ones((2, 3, TOKEN), "int32")
PADDED = left_pad([np.ones((1, TOKEN), "int32"), np.ones((3, TOKEN), "int32")])

ERRORS = [
    (dict(prompt=[]), ValueError, r"`prompt` must hold at least one prompt\. Received: an empty list"),
    (dict(prompt=["hi", ""]), ValueError, r"Every prompt must hold at least one character\. Received: an empty string at prompt\[1\]"),
    (dict(prompt=np.ones((2, 0, TOKEN), "int32")), ValueError, r"`prompt` must hold at least one row and one token .* Received: prompt with shape \(2, 0, 4\)"),
    (dict(prompt=[np.ones((2, TOKEN), "int32"), np.ones((0, TOKEN), "int32")]), ValueError, r"at least one row and one token .*\(1, 0, 4\)"),
    (dict(prompt="hello"), TypeError, r"Received: a single str; wrap it in a list"),
    (dict(prompt=np.ones((2, 3, 8), "int32")), ValueError, r"`prompt` must be byte tokens of shape \(B, S, token_size=4\)\. Received: prompt with shape \(2, 3, 8\)"),
    (dict(prompt=DENSE * 300), ValueError, r"`prompt` must hold bytes in \[0, 256\)\. Received: values from 300 to 300"),
    (dict(prompt=DENSE * 0.5), TypeError, r"`prompt` must hold integer bytes"),
    (dict(max_new_tokens=0), ValueError, r"`max_new_tokens` must be an int >= 1\. Received: max_new_tokens=0"),
    (dict(num_beams=0), ValueError, r"`num_beams` must be an int >= 1\. Received: num_beams=0"),
    (dict(num_beams=257), ValueError, r"`num_beams` must be at most 256"),
    (dict(num_beams=2, temperature=0.5), ValueError, r"Beam search is deterministic: use temperature=0 with num_beams > 1"),
    (dict(length_penalty=float("inf")), ValueError, r"`length_penalty` must be a finite float\. Received: length_penalty=inf"),
    (dict(temperature=-0.5), ValueError, r"`temperature` must be a finite float >= 0 .*Received: temperature=-0\.5"),
    (dict(temperature=1.0, top_k=0), ValueError, r"`top_k` must be an int >= 1\. Received: top_k=0"),
    (dict(temperature=1.0, top_p=0.0), ValueError, r"`top_p` must be in \(0, 1\]\. Received: top_p=0\.0"),
    (dict(temperature=1.0, top_p=1.01), ValueError, r"`top_p` must be in \(0, 1\]\. Received: top_p=1\.01"),
    (dict(seed=(1, 2, 3)), ValueError, r"`seed` must be two ints \(2,\) or one pair per row \(B=2, 2\)\. Received: seed with shape \(3,\)"),
    (dict(prompt=PADDED, lengths=[1, 2]), ValueError, r"Received: lengths\[1\]=2 with S=3, but position 0 of row 1 holds \[1, 1, 1, 1\], not pad_value=0"),
    (dict(prompt=PADDED, lengths=[1, 4]), ValueError, r"1 <= lengths\[b\] <= S\. Received: lengths\[1\]=4 with S=3"),
    (dict(prompt=PADDED, lengths=[0, 3]), ValueError, r"Received: lengths\[0\]=0 with S=3"),
    (dict(prompt=PADDED, lengths=[1]), ValueError, r"`lengths` must have shape \(B,\)"),
    (dict(prompt=[np.ones((1, TOKEN), "int32")], lengths=[1]), ValueError, r"`lengths` goes with a left-padded \(B, S, token_size\) prompt"),
]


@pytest.mark.parametrize("arguments,error,message", ERRORS)
def test_bad_input_is_rejected_before_compiling(arguments, error, message):
    model = small_model(seed=5)
    arguments = {"prompt": DENSE, "max_new_tokens": 3, **arguments}
    with pytest.raises(error, match=message):
        model.generate(**arguments)
    assert sum(tracing_counts(model)) == 0, "nothing may be traced or compiled for bad input"


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_a_mixed_policy_reaches_every_sublayer_and_keeps_the_float32_model_within_tolerance(policy):
    half = ByteDecoder(token_size=TOKEN, embed_dim=4, num_layers=2, num_heads=2, hidden_dim=16, dtype=policy)
    prompt = np.random.default_rng(3).integers(0, 256, size=(2, 5, TOKEN)).astype("int32")
    half(prompt)
    half.set_weights(MODEL.get_weights())  # same variables (float32 under both policies)
    layers = [layer for layer in half._flatten_layers(include_self=False, recursive=False)]
    assert layers and all(layer.dtype_policy.name == ("float32" if layer in (half.head, half.split) else policy) for layer in layers), [
        (layer.name, layer.dtype_policy.name) for layer in layers
    ]
    logits = half(prompt)
    assert logits.dtype == tf.float32
    assert half.create_cache(2, 8)[0].dtype == half.compute_dtype  # the cache in the compute dtype
    expected = MODEL(prompt).numpy()
    # bfloat16 keeps 8 bits of mantissa, float16 11: two blocks of rounding move the logits by a few percent
    share = {"mixed_float16": 0.02, "mixed_bfloat16": 0.1}[policy]
    np.testing.assert_allclose(logits.numpy(), expected, atol=share * np.abs(expected).max())

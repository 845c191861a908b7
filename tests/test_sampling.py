"""Samplers: greedy, temperature, top-k, top-p, binary heads."""

from __future__ import annotations

import math

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import assume, given
from hypothesis import strategies as st

from mlable_core import sampling
from tests import strategies

SEED = tf.constant([7, 11], dtype=tf.int32)


def numpy_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - np.max(logits, axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def ranking(logits: np.ndarray) -> np.ndarray:
    """Indices by decreasing logit, the lower index first on ties (what tf.math.top_k promises)."""
    return np.argsort(-logits, axis=-1, kind="stable")


def top_k_allowed(logits: np.ndarray, k: int) -> np.ndarray:
    """The k largest logits, ties broken toward the lower index."""
    allowed = np.zeros(logits.shape, dtype=bool)
    np.put_along_axis(allowed, ranking(logits)[..., :k], True, axis=-1)
    return allowed


def top_p_allowed(logits: np.ndarray, p: float, among: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The smallest prefix of the ranked logits (within ``among``) whose probability reaches p, and its ties.

    Also returns the distance of p to the nearest cumulative probability, so that
    tests can skip cases where float rounding decides the set.
    """
    among = np.ones(logits.shape, dtype=bool) if among is None else among
    allowed = np.zeros(logits.shape, dtype=bool)
    margins = np.zeros(logits.shape[:-1])
    for row in np.ndindex(*logits.shape[:-1]):
        values = np.where(among[row], logits[row], -np.inf).astype(np.float64)
        probabilities = numpy_softmax(values)
        order = ranking(values)
        total, last = 0.0, None
        for index in order:
            last = values[index]
            total += probabilities[index]
            if total >= p:
                break
        allowed[row] = values >= last
        margins[row] = np.min(np.abs(np.cumsum(probabilities[order]) - p))
    return allowed, margins


def draws(logits: np.ndarray, count: int, seed: tf.Tensor = SEED, compiled: bool = False, **kwargs) -> np.ndarray:
    """``count`` independent samples per row: the rows are tiled, one seed draws them all."""
    tiled = np.repeat(logits[None], count, axis=0)  # (N, B, V)
    function = lambda x, s: sampling.sample(x, s, **kwargs)  # noqa: E731
    if compiled:
        function = tf.function(function, jit_compile=True)
    return function(tf.constant(tiled), seed).numpy()


def chi_square_bound(degrees: int, tail: float = 1e-6) -> float:
    """Upper ``tail`` quantile of chi-square(degrees), Wilson-Hilferty approximation.

    The normal quantile comes from bisection on ``erfc``; the cube approximation
    errs on the large side in the far tail for small ``degrees`` (e.g. 37.5
    against the exact 35.9 for 5 degrees at 1e-6), so the bound is conservative.
    """
    low, high = 0.0, 10.0
    for _ in range(100):
        middle = (low + high) / 2
        low, high = (middle, high) if 0.5 * math.erfc(middle / math.sqrt(2)) > tail else (low, middle)
    z = (low + high) / 2
    factor = 2.0 / (9.0 * degrees)
    return degrees * (1.0 - factor + z * math.sqrt(factor)) ** 3


def chi_square(samples: np.ndarray, probabilities: np.ndarray) -> tuple[float, int]:
    counts = np.bincount(samples.reshape(-1), minlength=probabilities.size)
    support = probabilities > 0
    assert counts[~support].sum() == 0, "an index of probability 0 was drawn"
    expected = probabilities[support] * samples.size
    return float(((counts[support] - expected) ** 2 / expected).sum()), int(support.sum()) - 1


def chi_square_tail(degrees: int, value: float) -> float:
    """P(chi-square(degrees) > value): the regularized upper incomplete gamma Q(degrees / 2, value / 2).

    Evaluated with its continued fraction (modified Lentz), valid for value / 2 > degrees / 2 + 1.
    """
    a, x = degrees / 2, value / 2
    assert x > a + 1
    tiny = 1e-300
    b = x + 1 - a
    c, d = 1 / tiny, 1 / b
    result = d
    for step in range(1, 1000):
        term = -step * (step - a)
        b += 2
        d = term * d + b
        d = 1 / (d if abs(d) > tiny else tiny)
        c = b + term / c
        c = c if abs(c) > tiny else tiny
        result *= d * c
    return math.exp(-x + a * math.log(x) - math.lgamma(a)) * result


@pytest.mark.parametrize("degrees", [1, 2, 5, 6, 100])
def test_chi_square_bound_is_sound(degrees):
    # the bound is beyond the 1e-6 tail, but not absurdly far (the test would then never fail)
    tail = chi_square_tail(degrees, chi_square_bound(degrees))
    assert 1e-8 < tail <= 1e-6


@given(strategies.logits())
def test_greedy_is_numpy_argmax(logits):
    np.testing.assert_array_equal(sampling.greedy(logits).numpy(), np.argmax(logits, axis=-1))
    assert sampling.greedy(logits).dtype == tf.int32


@given(strategies.logits(), st.one_of(st.none(), st.integers(1, 14)), st.one_of(st.none(), st.floats(0.05, 1.0)), st.floats(0.2, 3.0))
def test_candidates_match_numpy(logits, k, p, temperature):
    scaled = logits / np.float32(temperature)
    kept = top_k_allowed(scaled, k) if k is not None else np.ones(scaled.shape, dtype=bool)
    if p is not None:
        kept, margins = top_p_allowed(scaled, p, among=kept)
        assume(np.all(margins > 1e-4))  # rounding alone would decide the set
    values, indices = sampling.candidates(logits, temperature, top_k=k, top_p=p)
    count = scaled.shape[-1] if k is None else min(k, scaled.shape[-1])
    assert values.shape == indices.shape == scaled.shape[:-1] + (count,)
    np.testing.assert_array_equal(indices.numpy(), ranking(scaled)[..., :count])
    expected = np.take_along_axis(np.where(kept, scaled, -np.inf), indices.numpy(), axis=-1)
    np.testing.assert_array_equal(np.isfinite(values.numpy()), np.isfinite(expected))
    finite = np.isfinite(expected)
    np.testing.assert_allclose(values.numpy()[finite], expected[finite], rtol=1e-6, atol=1e-30)  # TF flushes denormals


@given(strategies.logits(), st.integers(1, 4), st.integers(0, 2**31 - 1))
def test_top_k_only_returns_the_k_largest(logits, k, seed):
    samples = draws(logits, 50, tf.constant([seed, 1]), top_k=k)
    allowed = top_k_allowed(logits, k)
    assert np.take_along_axis(np.broadcast_to(allowed, (50,) + allowed.shape), samples[..., None], -1).all()


@given(strategies.logits(), st.floats(0.05, 0.95), st.integers(0, 2**31 - 1))
def test_top_p_only_returns_the_nucleus(logits, p, seed):
    allowed, margins = top_p_allowed(logits, p)
    assume(np.all(margins > 1e-4))
    samples = draws(logits, 50, tf.constant([seed, 2]), top_p=p)
    assert np.take_along_axis(np.broadcast_to(allowed, (50,) + allowed.shape), samples[..., None], -1).all()


@given(strategies.logits(), st.integers(0, 2**31 - 1))
def test_infinite_logits_are_never_drawn_and_same_seed_same_samples(logits, seed):
    seed = tf.constant([seed, 3])
    first = draws(logits, 40, seed, temperature=1.5)
    assert np.isfinite(np.take_along_axis(np.broadcast_to(logits, (40,) + logits.shape), first[..., None], -1)).all()
    np.testing.assert_array_equal(draws(logits, 40, seed, temperature=1.5), first)


def test_different_seeds_give_different_samples():
    logits = np.zeros((1, 64), np.float32)
    assert not np.array_equal(draws(logits, 100, tf.constant([1, 2])), draws(logits, 100, tf.constant([1, 3])))


@given(strategies.logits(), st.integers(0, 2**31 - 1))
def test_temperature_toward_zero_is_greedy(logits, seed):
    # distinct finite logits, at least 0.01 apart: at temperature 1e-4 the gaps are >= 100 nats
    finite = np.isfinite(logits)
    values = np.sort(logits[finite])
    assume(values.size < 2 or np.min(np.diff(values)) > 1e-2)
    greedy = np.argmax(logits, axis=-1)
    np.testing.assert_array_equal(sampling.sample(logits, tf.constant([seed, 4]), temperature=0.0).numpy(), greedy)
    np.testing.assert_array_equal(sampling.sample(logits, tf.constant([seed, 4]), temperature=1e-4).numpy(), greedy)
    np.testing.assert_array_equal(sampling.sample(logits, tf.constant([seed, 4]), temperature=0, top_k=3, top_p=0.5).numpy(), greedy)


PROBABILITIES = np.array([0.4, 0.25, 0.15, 0.1, 0.06, 0.04, 0.0])
CASES = [
    # (arguments, the distribution they should draw from, computed independently in numpy)
    (dict(), PROBABILITIES),
    (dict(temperature=0.5), PROBABILITIES**2 / np.sum(PROBABILITIES**2)),
    (dict(top_k=3), np.r_[PROBABILITIES[:3] / 0.8, np.zeros(4)]),
    (dict(top_p=0.75), np.r_[PROBABILITIES[:3] / 0.8, np.zeros(4)]),  # 0.4 + 0.25 < 0.75 <= 0.8
    (dict(top_k=4, top_p=0.5, temperature=2.0), np.r_[np.sqrt(PROBABILITIES[:2]) / np.sqrt(PROBABILITIES[:2]).sum(), np.zeros(5)]),
]


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "xla"])
@pytest.mark.parametrize("kwargs,expected", CASES)
def test_frequencies_match_the_distribution(kwargs, expected, compiled):
    with np.errstate(divide="ignore"):
        logits = np.log(PROBABILITIES).astype(np.float32)[None]  # log(0) = -inf
    samples = draws(logits, 20_000, compiled=compiled, **kwargs)
    statistic, degrees = chi_square(samples, expected)
    # a fixed seed makes the test deterministic; the 1e-6 tail keeps it valid for any seed
    assert statistic < chi_square_bound(degrees), f"chi-square {statistic:.1f} with {degrees} degrees of freedom"


def test_xla_agrees_and_reproduces():
    logits = np.random.default_rng(1).normal(size=(4, 300)).astype(np.float32)
    logits[:, ::7] = -np.inf
    for kwargs in (dict(top_k=5, top_p=0.9, temperature=0.7), dict(top_p=0.5), dict(top_k=1)):
        compiled = tf.function(lambda x: sampling.candidates(x, **kwargs), jit_compile=True)  # noqa: B023
        for actual, expected in zip(compiled(logits), sampling.candidates(logits, **kwargs)):
            np.testing.assert_allclose(actual.numpy(), expected.numpy(), rtol=1e-6)
    np.testing.assert_array_equal(tf.function(sampling.greedy, jit_compile=True)(logits).numpy(), np.argmax(logits, -1))
    compiled = tf.function(lambda x, s: sampling.sample(x, s, top_k=5, top_p=0.9), jit_compile=True)
    first = compiled(logits, SEED).numpy()
    np.testing.assert_array_equal(compiled(logits, SEED).numpy(), first)
    assert top_k_allowed(logits, 5)[np.arange(4), first].all()


def test_compiled_generation_loop_with_unknown_dims():
    """The way a compiled decoder calls it: inside tf.while_loop, one folded seed per step."""

    @tf.function(input_signature=[tf.TensorSpec([None, None], tf.float32), tf.TensorSpec([2], tf.int32)], jit_compile=True)
    def generate(logits, seed):
        def body(step, outputs):
            step_seed = tf.random.experimental.stateless_fold_in(seed, step)
            return step + 1, outputs.write(step, sampling.sample(logits, step_seed, temperature=0.8, top_k=3, top_p=0.9))

        _, outputs = tf.while_loop(lambda step, _: step < 6, body, [0, tf.TensorArray(tf.int32, size=6)])
        return outputs.stack()

    logits = np.random.default_rng(2).normal(size=(3, 20)).astype(np.float32)
    samples = generate(logits, SEED).numpy()
    assert samples.shape == (6, 3)
    assert top_k_allowed(logits, 3)[np.arange(3), samples].all()
    np.testing.assert_array_equal(generate(logits, SEED).numpy(), samples)


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "xla"])
@pytest.mark.parametrize("spread", [8.0, 0.1], ids=["small-nucleus", "large-nucleus"])
def test_top_p_on_a_large_vocabulary(spread, compiled):
    # V > NUCLEUS_CANDIDATES: a peaked row keeps its nucleus among the largest logits,
    # a flat one (nucleus of ~90% of V) takes the full sort
    vocabulary = sampling.NUCLEUS_CANDIDATES * 3
    logits = (np.random.default_rng(3).normal(size=(2, vocabulary)) * spread).astype(np.float32)
    allowed, margins = top_p_allowed(logits, 0.9)
    assert np.all(margins > 1e-6)
    assert (allowed.sum(axis=-1) > sampling.NUCLEUS_CANDIDATES).all() == (spread < 1)
    samples = draws(logits, 30, compiled=compiled, top_p=0.9)
    assert np.take_along_axis(np.broadcast_to(allowed, (30,) + allowed.shape), samples[..., None], -1).all()
    if spread < 1:
        # drawn from the whole nucleus, beyond the first candidates (all 60 below rank 1024: p < 1e-25)
        ranks = np.argsort(ranking(logits), axis=-1)  # rank of every index
        assert (np.take_along_axis(np.broadcast_to(ranks, (30,) + ranks.shape), samples[..., None], -1) >= sampling.NUCLEUS_CANDIDATES).any()


def test_ties_across_the_candidates_are_all_kept():
    # one large logit, then 3 * 1024 tied ones: the nucleus of 0.95 ends inside the tie, which
    # straddles the 1024 candidates, so every tied index must stay possible
    vocabulary = 3 * sampling.NUCLEUS_CANDIDATES
    logits = np.zeros((1, vocabulary), np.float32)
    logits[0, 0] = 8.0
    logits[0, 5] = -np.inf
    allowed, _ = top_p_allowed(logits, 0.95)
    assert allowed.sum() == vocabulary - 1
    samples = draws(logits, 200, top_p=0.95)
    assert allowed[0, samples[:, 0]].all()
    assert (samples > 2 * sampling.NUCLEUS_CANDIDATES).any()


@given(strategies.logits(max_vocabulary=40), st.floats(0.05, 0.99))
def test_nucleus_bisection_matches_numpy(logits, p):
    # the path taken by large vocabularies, checked on small ones (ties come from the small float set)
    logits = np.round(logits * 2) / 2  # many ties, +-0.0 too
    allowed, margins = top_p_allowed(logits, p)
    assume(np.all(margins > 1e-4))
    keys, limit = sampling._nucleus_keys(tf.constant(logits), p)
    np.testing.assert_array_equal((keys >= limit).numpy(), allowed)


def test_half_precision_logits():
    logits = tf.constant([[0.0, 5.0, -np.inf, 1.0]], tf.bfloat16)
    assert sampling.sample(logits, SEED, temperature=0).numpy().tolist() == [1]
    assert sampling.sample(tf.cast(logits, tf.float16), SEED, top_k=1).numpy().tolist() == [1]


# binary heads ---------------------------------------------------------------------------------


def numpy_bits_to_integers(bits: np.ndarray, depth: int) -> np.ndarray:
    groups = bits.reshape(bits.shape[:-1] + (-1, depth)).astype(np.int64)
    return sum(groups[..., position] << (depth - 1 - position) for position in range(depth))


@given(st.integers(1, 3), st.integers(1, 4), st.integers(1, 10), st.floats(0.05, 0.95), st.integers(0, 2**31 - 1))
def test_binary_threshold_matches_numpy(batch, groups, depth, threshold, seed):
    probabilities = np.random.default_rng(seed).uniform(size=(batch, groups * depth)).astype(np.float32)
    expected = numpy_bits_to_integers(probabilities > np.float32(threshold), depth)
    np.testing.assert_array_equal(sampling.binary(probabilities, depth, threshold).numpy(), expected)
    logits = np.log(probabilities) - np.log1p(-probabilities)
    keep = np.abs(probabilities - threshold) > 1e-4  # away from the boundary, logits agree with probabilities
    from_logits = sampling.binary(logits, depth, threshold, from_logits=True).numpy()
    if keep.all():
        np.testing.assert_array_equal(from_logits, expected)


def test_binary_bytes_and_sampling():
    byte_values = np.array([[0, 97, 255, 128]])
    bits = ((byte_values[..., None] >> np.arange(7, -1, -1)) & 1).reshape(1, 32).astype(np.float32)
    np.testing.assert_array_equal(sampling.binary(bits * 0.8 + 0.1, 8).numpy(), byte_values)
    # sure bits are drawn as such; a fair bit is 1 about half the time
    np.testing.assert_array_equal(sampling.binary(bits, 8, seed=SEED).numpy(), byte_values)
    fair = sampling.binary(np.full((20_000, 1), 0.5, np.float32), 1, seed=SEED).numpy()
    statistic, degrees = chi_square(fair, np.array([0.5, 0.5]))
    assert statistic < chi_square_bound(degrees)
    again = sampling.binary(np.full((20_000, 1), 0.5, np.float32), 1, seed=SEED).numpy()
    np.testing.assert_array_equal(again, fair)
    # logits: +-20 are sure bits
    np.testing.assert_array_equal(sampling.binary((bits - 0.5) * 40, 8, seed=SEED, from_logits=True).numpy(), byte_values)
    compiled = tf.function(lambda x: sampling.binary(x, 8, threshold=0.6), jit_compile=True)
    np.testing.assert_array_equal(compiled(bits * 0.8 + 0.1).numpy(), byte_values)


LOGITS = tf.zeros((2, 8))
ERRORS = [
    (lambda: sampling.sample(LOGITS, SEED, top_k=0), ValueError, r"`top_k` must be an int >= 1\. Received: top_k=0"),
    (lambda: sampling.sample(LOGITS, SEED, top_k=2.0), TypeError, r"`top_k` must be an int\. Received: top_k=2\.0"),
    (lambda: sampling.sample(LOGITS, SEED, top_p=0.0), ValueError, r"`top_p` must be in \(0, 1\]\. Received: top_p=0\.0"),
    (lambda: sampling.sample(LOGITS, SEED, top_p=1.5), ValueError, r"`top_p` must be in \(0, 1\]\. Received: top_p=1\.5"),
    (lambda: sampling.sample(LOGITS, SEED, top_p=float("nan")), ValueError, r"`top_p` must not be NaN"),
    (lambda: sampling.sample(LOGITS, SEED, temperature=-0.5), ValueError, r"`temperature` must be a finite float >= 0 \(0 means greedy\)\. Received: temperature=-0\.5"),
    (lambda: sampling.sample(LOGITS, SEED, temperature=tf.constant(1.0)), TypeError, r"`temperature` must be a Python float"),
    (lambda: sampling.sample(LOGITS, SEED, temperature=0, top_k=-1), ValueError, r"`top_k` must be an int >= 1"),
    (lambda: sampling.sample(LOGITS, [1, 2, 3]), ValueError, r"`seed` must have shape \(2,\)\. Received: shape=\(3,\)"),
    (lambda: sampling.sample(LOGITS, [1.0, 2.0]), TypeError, r"`seed` must hold int32 or int64 values\. Received: dtype=float32"),
    (lambda: sampling.sample(LOGITS, None), ValueError, r"`seed` must be a shape \(2,\) int32 / int64 tensor to sample\. Received: seed=None"),
    (lambda: sampling.sample(tf.zeros((2, 8), tf.int32), SEED), TypeError, r"`logits` must be a float tensor\. Received: dtype=int32, shape=\(2, 8\)"),
    (lambda: sampling.greedy(tf.constant(1.0)), ValueError, r"`logits` must have rank >= 1 \(the choices on the last axis\)\. Received: shape=\(\)"),
    (lambda: sampling.candidates(LOGITS, temperature=0.0), ValueError, r"`temperature` must be > 0 for `candidates`"),
    (lambda: sampling.binary(LOGITS, 3), ValueError, r"`depth` must divide the last axis of `values`\. Received: depth=3, shape=\(2, 8\)"),
    (lambda: sampling.binary(LOGITS, 0), ValueError, r"`depth` must be an int >= 1\. Received: depth=0"),
    (lambda: sampling.binary(tf.zeros((1, 32)), 32), ValueError, r"`depth` must be at most 31 \(int32 outputs\)\. Received: depth=32"),
    (lambda: sampling.binary(LOGITS, 4, threshold=1.0), ValueError, r"`threshold` must be in \(0, 1\)\. Received: threshold=1\.0"),
    (lambda: sampling.binary(LOGITS, 4, seed=[1]), ValueError, r"`seed` must have shape \(2,\)"),
    (lambda: sampling.binary(tf.zeros((2, 8), tf.int32), 4), TypeError, r"`values` must be a float tensor"),
]


@pytest.mark.parametrize("call,error,message", ERRORS)
def test_errors(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_runtime_depth_error_in_graph():
    function = tf.function(lambda x: sampling.binary(x, 3), input_signature=[tf.TensorSpec([None, None], tf.float32)])
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"`depth` must divide the last axis of `values`"):
        function(tf.zeros((2, 8)))

"""Samplers: greedy, temperature, top-k, top-p (exact distributions, counter-based seeds), binary heads."""

from __future__ import annotations

import functools
import math
import pathlib

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import assume, given
from hypothesis import strategies as st

from mlable_core import sampling
from mlable_core import testing as core_testing
from tests import strategies

SEED = tf.constant([7, 11], dtype=tf.int32)
ROOT = pathlib.Path(__file__).resolve().parent.parent
# above SMALL_VOCABULARY: the block path (softmax blocks, block-max top-k, rejection top-p)
LARGE = 3001


# references -------------------------------------------------------------------------------------


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
        # the set changes only when p crosses the cumulative probability at the end of a group of tied logits
        ranked = values[order]
        ends = np.r_[ranked[1:] != ranked[:-1], True]
        margins[row] = np.min(np.abs(np.cumsum(probabilities[order])[ends] - p))
    return allowed, margins


def kept_probabilities(logits: np.ndarray, temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None) -> tuple[np.ndarray, float]:
    """The distribution ``sample`` must draw from, in float64: the kept set's renormalised softmax.

    Returns it with the margin of ``top_p`` to the nearest cumulative probability (inf without top-p).
    """
    scaled = logits.astype(np.float64) / temperature
    kept = np.isfinite(scaled) if top_k is None else top_k_allowed(scaled, top_k) & np.isfinite(scaled)
    margin = np.inf
    if top_p is not None:
        kept, margins = top_p_allowed(scaled, top_p, among=kept)
        margin = float(np.min(margins))
    return numpy_softmax(np.where(kept, scaled, -np.inf)), margin


MASK64 = (1 << 64) - 1


def python_mix(value: int) -> int:
    """The splitmix64 finalizer on Python ints (unbounded, masked to 64 bits): the documented hash."""
    value = ((value ^ (value >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    value = ((value ^ (value >> 27)) * 0x94D049BB133111EB) & MASK64
    return value ^ (value >> 31)


def python_uniform(seed: tuple[int, int], counter: int, draw: int) -> float:
    """``sampling.uniform`` in plain Python: splitmix64 of (seed words, row counter from 1, draw)."""
    first, second = (word & MASK64 for word in seed)  # two's complement of negative words
    key = python_mix(((first ^ 0x5851F42D4C957F2D) * 0x9E3779B97F4A7C15 + second) & MASK64)
    row = python_mix((key + (counter + 1) * 0x9E3779B97F4A7C15) & MASK64)
    bits = row if draw == 0 else python_mix((row + draw * 0x9E3779B97F4A7C15) & MASK64)
    return (bits >> 12) * 2.0**-52


def regularized_upper_gamma(a: float, x: float) -> float:
    """Q(a, x) = Gamma(a, x) / Gamma(a): the series below a + 1, the continued fraction (modified Lentz) above."""
    if x <= 0:
        return 1.0
    log_prefix = -x + a * math.log(x) - math.lgamma(a)
    if x < a + 1:
        term = total = 1.0 / a
        for step in range(1, 10_000):
            term *= x / (a + step)
            total += term
            if term < total * 1e-16:
                break
        return max(0.0, 1.0 - math.exp(log_prefix) * total)
    tiny = 1e-300
    b = x + 1 - a
    c, d = 1 / tiny, 1 / b
    result = d
    for step in range(1, 10_000):
        term = -step * (step - a)
        b += 2
        d = term * d + b
        d = 1 / (d if abs(d) > tiny else tiny)
        c = b + term / c
        c = c if abs(c) > tiny else tiny
        result *= d * c
        if abs(d * c - 1) < 1e-16:
            break
    return math.exp(log_prefix) * result


def chi_square_p_value(statistic: float, degrees: int) -> float:
    """P(chi-square(degrees) > statistic)."""
    return regularized_upper_gamma(degrees / 2, statistic / 2)


def chi_square(samples: np.ndarray, probabilities: np.ndarray, groups: list[np.ndarray] | None = None) -> tuple[float, int]:
    """Pearson's statistic of the drawn indices against ``probabilities`` (and its degrees of freedom).

    Indices of probability 0 must never be drawn. ``groups`` lumps indices into
    one category each (e.g. a long tail of tiny probabilities); the others count alone.
    """
    counts = np.bincount(samples.reshape(-1), minlength=probabilities.size)
    assert counts.size == probabilities.size, "an index beyond the vocabulary was drawn"
    support = probabilities > 0
    assert counts[~support].sum() == 0, f"an index of probability 0 was drawn: {np.flatnonzero(counts * ~support)[:10]}"
    lumped = np.zeros(probabilities.size, dtype=bool)
    observed, expected = [], []
    for group in groups or []:
        lumped[group] = True
        observed.append(counts[group].sum())
        expected.append(probabilities[group].sum() * samples.size)
    alone = support & ~lumped
    observed = np.r_[observed, counts[alone]]
    expected = np.r_[expected, probabilities[alone] * samples.size]
    keep = expected > 0
    assert expected[keep].min() >= 5, "too few expected draws in a category for the chi-square approximation"
    return float(((observed[keep] - expected[keep]) ** 2 / expected[keep]).sum()), int(keep.sum()) - 1


def check_frequencies(samples: np.ndarray, probabilities: np.ndarray, groups: list[np.ndarray] | None = None) -> None:
    statistic, degrees = chi_square(samples, probabilities, groups)
    p_value = chi_square_p_value(statistic, degrees)
    # fixed seeds make the test deterministic; at 1e-4 a correct sampler fails a given case 1 time in 10_000
    assert p_value > 1e-4, f"chi-square {statistic:.1f} with {degrees} degrees of freedom: p = {p_value:.2e}"


def draws(logits: np.ndarray, count: int, seed: tf.Tensor = SEED, compiled: bool = False, **kwargs) -> np.ndarray:
    """``count`` independent samples per row: the rows are tiled, one seed draws them all (one counter per row)."""
    tiled = np.repeat(logits[None], count, axis=0)  # (N, B, V)
    function = lambda x, s: sampling.sample(x, s, **kwargs)  # noqa: E731
    if compiled:
        function = tf.function(function, jit_compile=True)
    return function(tf.constant(tiled), seed).numpy()


def python_uniform_p_value(values: np.ndarray, bins: int = 50) -> float:
    counts = np.bincount(np.minimum((values * bins).astype(int), bins - 1), minlength=bins)
    expected = values.size / bins
    return chi_square_p_value(float(((counts - expected) ** 2 / expected).sum()), bins - 1)


# the references themselves ------------------------------------------------------------------


@pytest.mark.parametrize("statistic", [0.01, 0.7, 3.0, 12.0, 40.0])
def test_chi_square_p_value_matches_closed_forms(statistic):
    # 1 degree: erfc(sqrt(x / 2)); 2 degrees: exp(-x / 2); 4 degrees: exp(-x / 2) (1 + x / 2)
    assert chi_square_p_value(statistic, 1) == pytest.approx(math.erfc(math.sqrt(statistic / 2)), rel=1e-9)
    assert chi_square_p_value(statistic, 2) == pytest.approx(math.exp(-statistic / 2), rel=1e-9)
    assert chi_square_p_value(statistic, 4) == pytest.approx(math.exp(-statistic / 2) * (1 + statistic / 2), rel=1e-9)


def test_python_mix_is_splitmix64():
    # the first outputs of the published SplitMix64 generator seeded with 0: mix(k * golden) for k = 1, 2, 3
    outputs = [python_mix(k * 0x9E3779B97F4A7C15 & MASK64) for k in (1, 2, 3)]
    assert outputs == [0xE220A8397B1DCDAF, 0x6E789E6AA1B965F4, 0x06C45D188009454F]


# uniforms: the counter-based hash ------------------------------------------------------------


@pytest.mark.parametrize("mode", ["eager", "graph", "xla"])
def test_uniform_is_the_documented_hash_everywhere(mode):
    seeds = [(7, 11), (-1, 2**31 - 1), (2**40 + 3, -(2**62))]
    function = sampling.uniform if mode == "eager" else tf.function(sampling.uniform, jit_compile=mode == "xla")
    for seed in seeds:
        dtype = tf.int32 if max(abs(word) for word in seed) < 2**31 else tf.int64
        for draw in (0, 1, 5):
            actual = function(tf.constant(seed, dtype), [2, 3], draw=draw).numpy()
            expected = np.array([python_uniform(seed, counter, draw) for counter in range(6)]).reshape(2, 3)
            np.testing.assert_array_equal(actual, expected)
    # a seed per row of the prefix: the rows below it count from 0 again
    per_row = function(tf.constant([[1, 2], [3, 4]]), [2, 3]).numpy()
    np.testing.assert_array_equal(per_row[1], [python_uniform((3, 4), counter, 0) for counter in range(3)])


def test_uniforms_are_uniform_and_independent():
    values = sampling.uniform(SEED, [20_000]).numpy()
    assert python_uniform_p_value(values) > 1e-4
    # consecutive counters, and draws of one row, look independent: uniform pairs fill a 7 x 7 grid evenly
    again = sampling.uniform(SEED, [20_000], draw=1).numpy()
    for first, second in ((values[:-1], values[1:]), (values, again)):
        cells = np.minimum((first * 7).astype(int), 6) * 7 + np.minimum((second * 7).astype(int), 6)
        assert python_uniform_p_value((cells + 0.5) / 49, bins=49) > 1e-4
    other = sampling.uniform(tf.constant([7, 12]), [20_000]).numpy()
    assert abs(np.corrcoef(values, other)[0, 1]) < 0.04  # 5 standard deviations


def test_gumbel_noise_follows_the_gumbel_law():
    noise = sampling.gumbel([20_000], SEED).numpy()
    np.testing.assert_array_equal(sampling.gumbel([20_000], SEED).numpy(), noise)
    # ten bins of probability 0.1 each under the CDF exp(-exp(-x))
    edges = -np.log(-np.log(np.arange(1, 10) / 10))
    check_frequencies(np.searchsorted(edges, noise), np.full(10, 0.1))
    assert abs(noise.mean() - 0.5772156649) < 0.05  # Euler's constant; the standard deviation of the mean is 0.009


# greedy and candidates ------------------------------------------------------------------------


@given(strategies.logits())
def test_greedy_is_numpy_argmax(logits):
    np.testing.assert_array_equal(sampling.greedy(logits).numpy(), np.argmax(logits, axis=-1))
    assert sampling.greedy(logits).dtype == tf.int32


@given(strategies.logits(), st.one_of(st.none(), st.integers(1, 14)), st.one_of(st.none(), st.floats(0.05, 1.0)), st.floats(0.2, 3.0))
def test_candidates_match_numpy(logits, k, p, temperature):
    scaled = logits.astype(np.float64) / temperature  # float64: no ties that the logits do not have
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


@given(strategies.logits(max_vocabulary=40), st.integers(1, 6))
def test_block_top_k_equals_tf_top_k(logits, k):
    # the block-max search of large vocabularies, on a row widened past 64 k with many ties (+-0.0 too)
    rounded = np.round(logits * 2) / 2
    wide = np.tile(rounded, (1, 64 * k // rounded.shape[-1] + 2))  # every value many times over
    values, indices = sampling._largest(tf.constant(wide), k)
    expected_values, expected_indices = tf.math.top_k(wide, k)
    np.testing.assert_array_equal(indices.numpy(), expected_indices.numpy())
    np.testing.assert_array_equal(values.numpy(), expected_values.numpy())


def test_the_temperature_changes_no_order():
    # 1.6369618 / 1.3 and 1.6369617 / 1.3 round to the same float32: the order is still the logits'
    logits = np.full((1, 300), -5.0, np.float32)
    logits[0, 3], logits[0, 9] = np.float32(1.6369617), np.float32(1.6369618)
    assert np.float32(logits[0, 3]) / np.float32(1.3) == np.float32(logits[0, 9]) / np.float32(1.3)
    values, indices = sampling.candidates(logits, temperature=1.3, top_k=1)
    assert indices.numpy().tolist() == [[9]]
    np.testing.assert_array_equal(draws(logits, 50, temperature=1.3, top_k=1), 9)


# what is drawn --------------------------------------------------------------------------------


@given(strategies.logits(), st.integers(1, 4), st.integers(0, 2**31 - 1))
def test_top_k_only_returns_the_k_largest(logits, k, seed):
    samples = draws(logits, 50, tf.constant([seed, 1]), top_k=k)
    allowed = top_k_allowed(logits, k) & np.isfinite(logits)
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


@pytest.mark.parametrize("vocabulary", [5, 300, LARGE])
def test_filters_that_keep_everything_change_nothing(vocabulary):
    # top_p=1 and top_k >= V keep every index: the same draws as no filter
    logits = np.random.default_rng(4).normal(size=(6, vocabulary)).astype(np.float32)
    plain = sampling.sample(logits, SEED, temperature=0.9).numpy()
    np.testing.assert_array_equal(sampling.sample(logits, SEED, temperature=0.9, top_p=1.0).numpy(), plain)
    np.testing.assert_array_equal(sampling.sample(logits, SEED, temperature=0.9, top_k=vocabulary).numpy(), plain)


# exact distributions: chi-square goodness of fit ---------------------------------------------

PROBABILITIES = np.array([0.4, 0.25, 0.15, 0.1, 0.06, 0.04, 0.0])
SMALL_CASES = [
    # (arguments, the distribution they should draw from, computed by hand)
    (dict(), PROBABILITIES),
    (dict(temperature=0.5), PROBABILITIES**2 / np.sum(PROBABILITIES**2)),
    (dict(top_k=3), np.r_[PROBABILITIES[:3] / 0.8, np.zeros(4)]),
    (dict(top_p=0.75), np.r_[PROBABILITIES[:3] / 0.8, np.zeros(4)]),  # 0.4 + 0.25 < 0.75 <= 0.8
    (dict(top_k=4, top_p=0.5, temperature=2.0), np.r_[np.sqrt(PROBABILITIES[:2]) / np.sqrt(PROBABILITIES[:2]).sum(), np.zeros(5)]),
    # squared probabilities 0.16, 0.0625, 0.0225, ... (sum 0.2602): 0.16 + 0.0625 < 0.9 * 0.2602 <= 0.16 + 0.0625 + 0.0225
    (dict(temperature=0.5, top_p=0.9), np.r_[PROBABILITIES[:3] ** 2 / np.sum(PROBABILITIES[:3] ** 2), np.zeros(4)]),
]


@functools.lru_cache(maxsize=None)
def _sampler(items: tuple, jit_compile: bool) -> tf.types.experimental.GenericFunction:
    return tf.function(lambda x, seed: sampling.sample(x, seed, **dict(items)), jit_compile=jit_compile)


def sampler(kwargs: dict, jit_compile: bool) -> tf.types.experimental.GenericFunction:
    """``sample`` with ``kwargs`` in a ``tf.function``, one per (arguments, mode) for the whole module (XLA compiles once a shape)."""
    return _sampler(tuple(sorted(kwargs.items())), jit_compile)


@pytest.fixture(scope="module")
def small_draws() -> dict[str, list[np.ndarray]]:
    with np.errstate(divide="ignore"):
        logits = np.log(PROBABILITIES).astype(np.float32)[None]  # log(0) = -inf
    tiled = tf.constant(np.repeat(logits[None], 20_000, axis=0))  # (N, 1, V): one counter per draw
    return {
        "eager": [sampling.sample(tiled, SEED, **kwargs).numpy() for kwargs, _ in SMALL_CASES],
        "xla": [sampler(kwargs, True)(tiled, SEED).numpy() for kwargs, _ in SMALL_CASES],
    }


@pytest.mark.parametrize("mode", ["eager", "xla"])
@pytest.mark.parametrize("case", range(len(SMALL_CASES)), ids=[str(kwargs) for kwargs, _ in SMALL_CASES])
def test_frequencies_match_the_distribution(small_draws, case, mode):
    check_frequencies(small_draws[mode][case], SMALL_CASES[case][1])


def large_row(vocabulary: int = 4099) -> tuple[np.ndarray, list[int], np.ndarray, np.ndarray]:
    """A row over a large vocabulary: 12 likely tokens scattered across blocks, two flat tails, a few -inf.

    Returns the logits, the likely tokens, and the two tails (index arrays).
    """
    rng = np.random.default_rng(5)
    order = rng.permutation(vocabulary)
    heads, first_tail, forbidden, second_tail = order[:12], order[12:1512], order[1512:1519], order[1519:]
    probabilities = np.zeros(vocabulary)
    probabilities[heads] = [0.2, 0.12, 0.1, 0.08, 0.06, 0.05, 0.04, 0.03, 0.02, 0.015, 0.01, 0.005]  # 0.73
    probabilities[first_tail] = 0.2 / first_tail.size
    probabilities[second_tail] = 0.07 / second_tail.size
    with np.errstate(divide="ignore"):
        return np.log(probabilities).astype(np.float32), list(heads), first_tail, second_tail


LARGE_CASES = [
    # (arguments, how many tokens they keep, counted by hand)
    (dict(), 4092),
    (dict(temperature=0.8), 4092),
    (dict(top_k=6), 6),  # the block-max search: 4099 >= 64 * 6
    (dict(top_p=0.6), 6),  # 0.56 < 0.6 <= 0.61: the first 6 likely tokens
    (dict(top_p=0.85), 1512),  # ends inside the first tail's tie: all of it is kept, across every block
    (dict(temperature=1.25, top_p=0.3), 6),  # probabilities ** 0.8: 0.2885 < 0.3 <= 0.319
    (dict(top_k=8, top_p=0.5), 3),  # among 0.68: 0.47 < 0.5 <= 0.62
]


@pytest.fixture(scope="module")
def large_draws() -> dict[str, list[np.ndarray]]:
    # 2000 rows a call, 6 calls with their own seeds: 12_000 draws a case
    logits = large_row()[0]
    tiled = tf.constant(np.repeat(logits[None], 2000, axis=0))
    result = {}
    for mode, jit in (("graph", False), ("xla", True)):
        cases = LARGE_CASES if mode == "graph" else [LARGE_CASES[index] for index in LARGE_XLA]
        functions = [sampler(kwargs, jit) for kwargs, _ in cases]
        result[mode] = [np.concatenate([function(tiled, tf.constant([chunk, 99])).numpy() for chunk in range(6)]) for function in functions]
    return result


# under XLA (a compilation each, hence fewer): temperature, the block-max top-k then top-p, a nucleus of 1512 tokens
LARGE_XLA = (1, 6, 4)


@pytest.mark.parametrize("mode,case", [("graph", case) for case in range(len(LARGE_CASES))] + [("xla", case) for case in LARGE_XLA])
def test_frequencies_match_the_distribution_on_a_large_vocabulary(large_draws, case, mode):
    # 4099 is prime: the blocks are padded with -inf, which must never be drawn
    logits, _, first_tail, second_tail = large_row()
    kwargs, kept = LARGE_CASES[case]
    expected, margin = kept_probabilities(logits, **kwargs)
    assert margin > 1e-3 and np.count_nonzero(expected) == kept
    samples = large_draws[mode][case if mode == "graph" else LARGE_XLA.index(case)]
    check_frequencies(samples, expected, groups=[first_tail, second_tail])


def test_top_k_when_most_draws_miss_it():
    # top-k below 64 k tokens checks four draws from the whole softmax, then sorts the rows they all missed:
    # here the top 3 hold a quarter of the probability, so about a third of the rows take each way
    logits = np.zeros((1, 300), np.float32)
    logits[0, [40, 7, 250]] = np.log([60.0, 30.0, 10.0])
    expected = np.zeros(300)
    expected[[40, 7, 250]] = [0.6, 0.3, 0.1]
    check_frequencies(draws(logits, 6000, top_k=3), expected)
    # flat logits: the top 1 is the lowest index, drawn although almost every draw misses it
    np.testing.assert_array_equal(draws(np.zeros((1, 300), np.float32), 100, top_k=1), 0)


@pytest.mark.parametrize("compiled", [False, True], ids=["graph", "xla"])
def test_top_k_on_a_large_vocabulary_when_draws_miss_it(compiled):
    # top-k on V >= 64 k draws from the k blocks with the largest maxima and keeps a draw ranked below k among them;
    # here the top 3 hold about half of their blocks' probability, so about 1 row in 20 misses all four draws and
    # ranks its candidates instead; index 3000 lies in the last block, padded with -inf
    logits = np.zeros((1, LARGE), np.float32)
    logits[0, [40, 3000, 2100]] = np.log([60.0, 30.0, 10.0])
    expected = np.zeros(LARGE)
    expected[[40, 3000, 2100]] = [0.6, 0.3, 0.1]
    check_frequencies(draws(logits, 6000, compiled=compiled, top_k=3), expected)
    # all tied: the top k are the k lowest indices, although almost every draw among the candidates misses them
    tied = np.zeros((1, LARGE), np.float32)
    np.testing.assert_array_equal(draws(tied, 200, compiled=compiled, top_k=1), 0)
    uniform = np.zeros(LARGE)
    uniform[:3] = 1 / 3
    check_frequencies(draws(tied, 3000, compiled=compiled, top_k=3), uniform)
    # a tie left out below the draw: blocks 0 and 2 both have the maximum 3, block 5 holds 5 and another 3; top 2 =
    # the 5 and block 0's 3 (the lower index); block 5's 3 is a candidate but ranks third (after block 0's 3)
    block = sampling._layout(LARGE, LARGE // (32 * 2))[0]
    spread = np.full((1, LARGE), -np.inf, np.float32)
    spread[0, [0, 2 * block, 5 * block, 5 * block + 1]] = [3.0, 3.0, 5.0, 3.0]
    expected = np.zeros(LARGE)
    expected[[5 * block, 0]] = np.exp([5.0, 3.0]) / np.exp([5.0, 3.0]).sum()
    check_frequencies(draws(spread, 3000, compiled=compiled, top_k=2), expected)


@pytest.mark.parametrize("compiled", [False, True], ids=["graph", "xla"])
def test_a_tiny_nucleus_is_found_exactly(compiled):
    # p = 0.006 keeps 2 tokens holding 0.7% of the probability: nearly every draw misses them, so after
    # its draws a row finds its nucleus by bisection; ties around it (the flat tail) stay out
    probabilities = np.full(LARGE, (1 - 0.009) / (LARGE - 3))
    probabilities[[10, 20, 30]] = [0.004, 0.003, 0.002]
    tiled = np.repeat(np.log(probabilities).astype(np.float32)[None], 400, axis=0)
    samples = sampler(dict(top_p=0.006), compiled)(tiled, SEED).numpy()
    expected, margin = kept_probabilities(tiled[0], top_p=0.006)
    assert margin > 1e-4 and np.count_nonzero(expected) == 2
    check_frequencies(samples, expected)


def test_large_vocabulary_with_a_tie_straddling_the_nucleus():
    # one large logit, then ~3000 tied ones: the nucleus of 0.95 ends inside the tie, so every tied index stays possible
    logits = np.zeros((1, LARGE), np.float32)
    logits[0, 0] = 8.0
    logits[0, 5] = -np.inf
    allowed, _ = top_p_allowed(logits, 0.95)
    assert allowed.sum() == LARGE - 1
    samples = draws(logits, 300, top_p=0.95)
    assert allowed[0, samples[:, 0]].all()
    assert (samples > LARGE // 2).any() and (samples[:, 0] != 0).sum() > 100


def bounded_rows(scale: float, rows: int = 24) -> np.ndarray:
    """Normal logits of a spread, and rows a model gives or that stress ties: rounded (many ties), some -inf, all tied, one spike."""
    rng = np.random.default_rng(int(scale * 10))
    logits = rng.normal(size=(rows, LARGE)) * scale
    logits[:4] = np.round(logits[:4])
    logits[4:7, ::7] = -np.inf
    logits[7] = 1.5
    logits[8, 123] = logits[8].max() + 12.0
    return logits.astype(np.float32)


@pytest.mark.parametrize("scale,temperature,p", [(0.3, 1.0, 0.9), (3.0, 1.0, 0.9), (6.0, 0.7, 0.5), (10.0, 1.3, 0.95), (3.0, 1.0, 0.2)])
def test_column_bounds_agree_with_the_masked_sums_and_numpy(scale, temperature, p):
    # top-p on a large vocabulary settles most draws with bounds from the columns of the row; a draw they settle
    # must be settled the same way by the masked sum over the row and by a float64 numpy nucleus
    logits = bounded_rows(scale)
    blocks = sampling._Blocks.of(tf.constant(logits), temperature)
    keys = sampling._row_keys(SEED, [logits.shape[0]])
    drawn = blocks.draw(keys, tf.range(6, dtype=tf.int32)[None, :]).numpy()  # (R, 6)
    inside, outside = (value.numpy() for value in blocks.certify(tf.constant(drawn), p))
    exact = blocks.in_nucleus(tf.constant(drawn), p).numpy()
    allowed, margins = top_p_allowed(logits.astype(np.float64) / temperature, p)
    chosen = np.take_along_axis(allowed, drawn, axis=-1)
    assert not (inside & outside).any()
    assert not (inside & ~exact).any() and not (outside & exact).any()
    clear = margins[:, None] > 1e-6  # rows whose nucleus float rounding cannot move
    assert not (inside & ~chosen & clear).any() and not (outside & chosen & clear).any()
    if scale >= 3.0:
        assert (inside | outside).mean() > 0.6  # they settle most draws on spread logits


@pytest.mark.parametrize("scale,temperature,p", [(3.0, 1.0, 0.9), (6.0, 0.7, 0.5), (3.0, 1.0, 0.2)])
def test_top_p_keeps_the_first_draw_in_the_nucleus(scale, temperature, p):
    # the rejection rule, whichever way a draw is settled (column bounds, masked sums, later rounds): each row
    # returns its first draw (numbers 0, 1, ...) inside the nucleus, checked here against a float64 numpy nucleus
    logits = bounded_rows(scale, rows=128)
    blocks = sampling._Blocks.of(tf.constant(logits), temperature)
    keys = sampling._row_keys(SEED, [logits.shape[0]])
    budget = 1 + 2 * sampling._draws(p)  # the draws checked by rejection before the exact nucleus
    drawn = blocks.draw(keys, tf.range(budget, dtype=tf.int32)[None, :]).numpy()  # (R, budget)
    allowed, margins = top_p_allowed(logits.astype(np.float64) / temperature, p)
    inside = np.take_along_axis(allowed, drawn, axis=-1)
    rows = np.flatnonzero((margins > 1e-6) & inside.any(axis=-1))  # a clear nucleus, drawn within the budget
    assert len(rows) >= len(logits) // 2
    expected = drawn[rows, np.argmax(inside[rows], axis=-1)]
    kwargs = dict(temperature=temperature, top_p=p)
    np.testing.assert_array_equal(sampling.sample(logits, SEED, **kwargs).numpy()[rows], expected)
    np.testing.assert_array_equal(sampler(kwargs, False)(logits, SEED).numpy()[rows], expected)
    if p == 0.9:
        # both ways past the column bounds occur: a first draw left undecided that the masked sum keeps, and rows
        # that go on to a later draw
        certain = np.logical_or(*(value.numpy()[:, 0] for value in blocks.certify(tf.constant(drawn[:, :1]), p)))
        assert (~certain[rows] & inside[rows, 0]).any()
        assert (np.argmax(inside[rows], axis=-1) > 0).any()


def test_ascending_is_a_sort():
    values = np.stack([np.random.default_rng(seed).permutation(5000)[:50] for seed in range(6)]).astype(np.int32)
    np.testing.assert_array_equal(sampling._ascending(tf.constant(values)).numpy(), np.sort(values, axis=-1))

# reproducibility and per-row seeds -------------------------------------------------------------

EQUALITY_CASES = [dict(), dict(temperature=0.7), dict(top_k=3), dict(top_p=0.6), dict(top_k=40, top_p=0.8), dict(temperature=1.3, top_p=0.95)]
# one per path (temperature, top-k, top-k then top-p, top-p): an XLA compilation each
XLA_CASES = [EQUALITY_CASES[index] for index in (1, 2, 4, 5)]


@pytest.mark.parametrize("vocabulary", [300, LARGE])
def test_same_draws_eagerly_in_graphs_and_under_xla(vocabulary):
    logits = (np.random.default_rng(6).normal(size=(2, 16, vocabulary)) * 3).astype(np.float32)
    logits[..., ::5] = -np.inf
    for kwargs in EQUALITY_CASES:
        eager = sampling.sample(logits, SEED, **kwargs).numpy()
        assert eager.shape == (2, 16)
        for jit in (False, True) if kwargs in XLA_CASES else (False,):
            np.testing.assert_array_equal(sampler(kwargs, jit)(logits, SEED).numpy(), eager, err_msg=f"{kwargs}, jit_compile={jit}")


@given(
    core_testing.logits(st.tuples(st.integers(1, 3), st.integers(1, 3), st.integers(1, 12))),
    st.sampled_from(EQUALITY_CASES),
    st.booleans(),
    st.integers(0, 2**31 - 1),
)
def test_a_row_alone_equals_the_row_in_a_batch(logits, kwargs, per_token, start):
    # seeds per row of the batch (B, 2), or per token (B, T, 2): each row's draw depends on its seed and logits only
    leading = logits.shape[: 2 if per_token else 1]
    seeds = (start + np.arange(np.prod(leading) * 2)).reshape(leading + (2,)).astype(np.int64)
    batch = sampling.sample(logits, seeds, **kwargs).numpy()
    for row in range(logits.shape[0]):
        alone = sampling.sample(logits[row : row + 1], seeds[row : row + 1], **kwargs).numpy()
        np.testing.assert_array_equal(alone, batch[row : row + 1])
    # reversed rows and seeds give reversed draws
    np.testing.assert_array_equal(sampling.sample(logits[::-1], seeds[::-1], **kwargs).numpy(), batch[::-1])


@pytest.mark.parametrize("kwargs", EQUALITY_CASES)
def test_a_row_alone_equals_the_row_in_a_batch_on_a_large_vocabulary(kwargs):
    logits = (np.random.default_rng(7).normal(size=(12, LARGE)) * 3).astype(np.float32)
    seeds = np.arange(24, dtype=np.int32).reshape(12, 2)
    batch = sampling.sample(logits, seeds, **kwargs).numpy()
    for row in (0, 5, 11):
        np.testing.assert_array_equal(sampling.sample(logits[row : row + 1], seeds[row : row + 1], **kwargs).numpy(), batch[row : row + 1])
    order = np.random.default_rng(8).permutation(12)
    np.testing.assert_array_equal(sampling.sample(logits[order], seeds[order], **kwargs).numpy(), batch[order])


@pytest.mark.parametrize("vocabulary", [9, LARGE])
def test_rows_without_a_valid_choice_return_an_index(vocabulary):
    logits = np.full((3, vocabulary), -np.inf, np.float32)
    logits[1, 4] = 0.0
    for kwargs in EQUALITY_CASES:
        samples = sampling.sample(logits, SEED, **kwargs).numpy()
        assert samples[1] == 4 and ((samples >= 0) & (samples < vocabulary)).all(), kwargs


@pytest.mark.parametrize("shape", [(0, 5), (0, LARGE), (3, 1), (2, 1, 1), (5,)])
def test_edge_shapes(shape):
    logits = np.random.default_rng(10).normal(size=shape).astype(np.float32)
    for kwargs in EQUALITY_CASES:
        samples = sampling.sample(logits, SEED, **kwargs).numpy()
        assert samples.shape == shape[:-1] and samples.dtype == np.int32
        assert ((samples >= 0) & (samples < shape[-1])).all()


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


@pytest.mark.parametrize("kwargs", [dict(), dict(top_k=3), dict(top_p=0.5)])
def test_unknown_dims_in_a_graph(kwargs):
    # the vocabulary known only at run time: the block path pads to DYNAMIC_BLOCK
    function = tf.function(
        lambda x, s: sampling.sample(x, s, **kwargs), input_signature=[tf.TensorSpec([None, None, None], tf.float32), tf.TensorSpec([None, 2], tf.int32)]
    )
    logits = (np.random.default_rng(9).normal(size=(2, 3, 700)) * 4).astype(np.float32)
    seeds = np.array([[1, 2], [3, 4]], np.int32)
    samples = function(logits, seeds).numpy()
    assert samples.shape == (2, 3)
    expected = np.stack([kept_probabilities(row, **kwargs)[0] > 0 for row in logits.reshape(6, 700)]).reshape(2, 3, 700)
    assert np.take_along_axis(expected, samples[..., None], -1).all()
    np.testing.assert_array_equal(function(logits, seeds).numpy(), samples)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"`seed` must have shape \(2,\) or \(\*prefix, 2\)"):
        function(logits, np.zeros((3, 2), np.int32))


def test_half_precision_logits():
    logits = tf.constant([[0.0, 5.0, -np.inf, 1.0]], tf.bfloat16)
    assert sampling.sample(logits, SEED, temperature=0).numpy().tolist() == [1]
    assert sampling.sample(tf.cast(logits, tf.float16), SEED, top_k=1).numpy().tolist() == [1]
    assert sampling.sample(tf.cast(logits, tf.float16), SEED, top_p=0.9).numpy().tolist() == [1]  # p(1) = 0.98


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
    check_frequencies(fair, np.array([0.5, 0.5]))
    again = sampling.binary(np.full((20_000, 1), 0.5, np.float32), 1, seed=SEED).numpy()
    np.testing.assert_array_equal(again, fair)
    # logits: +-20 are sure bits
    np.testing.assert_array_equal(sampling.binary((bits - 0.5) * 40, 8, seed=SEED, from_logits=True).numpy(), byte_values)
    compiled = tf.function(lambda x: sampling.binary(x, 8, threshold=0.6), jit_compile=True)
    np.testing.assert_array_equal(compiled(bits * 0.8 + 0.1).numpy(), byte_values)


LOGITS = tf.zeros((2, 8))
ERRORS = [
    # top_k
    (lambda: sampling.sample(LOGITS, SEED, top_k=0), ValueError, r"`top_k` must be an int >= 1\. Received: top_k=0"),
    (lambda: sampling.sample(LOGITS, SEED, top_k=-3), ValueError, r"`top_k` must be an int >= 1\. Received: top_k=-3"),
    (lambda: sampling.sample(LOGITS, SEED, top_k=2.0), TypeError, r"`top_k` must be an int\. Received: top_k=2\.0 of type float"),
    (lambda: sampling.sample(LOGITS, SEED, top_k=True), TypeError, r"`top_k` must be an int\. Received: top_k=True of type bool"),
    (lambda: sampling.sample(LOGITS, SEED, top_k="3"), TypeError, r"`top_k` must be an int\. Received: top_k='3'"),
    (lambda: sampling.sample(LOGITS, SEED, temperature=0, top_k=-1), ValueError, r"`top_k` must be an int >= 1"),
    # top_p
    (lambda: sampling.sample(LOGITS, SEED, top_p=0.0), ValueError, r"`top_p` must be in \(0, 1\]\. Received: top_p=0\.0"),
    (lambda: sampling.sample(LOGITS, SEED, top_p=-0.2), ValueError, r"`top_p` must be in \(0, 1\]\. Received: top_p=-0\.2"),
    (lambda: sampling.sample(LOGITS, SEED, top_p=1.5), ValueError, r"`top_p` must be in \(0, 1\]\. Received: top_p=1\.5"),
    (lambda: sampling.sample(LOGITS, SEED, top_p=float("inf")), ValueError, r"`top_p` must be in \(0, 1\]\. Received: top_p=inf"),
    (lambda: sampling.sample(LOGITS, SEED, top_p=float("nan")), ValueError, r"`top_p` must not be NaN\. Received: top_p=nan"),
    (lambda: sampling.sample(LOGITS, SEED, top_p="0.9"), TypeError, r"`top_p` must be a Python float\. Received: top_p='0\.9' of type str"),
    # temperature
    (lambda: sampling.sample(LOGITS, SEED, temperature=-0.5), ValueError, r"`temperature` must be a finite float >= 0 \(0 means greedy\)\. Received: temperature=-0\.5"),
    (lambda: sampling.sample(LOGITS, SEED, temperature=float("inf")), ValueError, r"`temperature` must be a finite float >= 0 \(0 means greedy\)\. Received: temperature=inf"),
    (lambda: sampling.sample(LOGITS, SEED, temperature=float("nan")), ValueError, r"`temperature` must not be NaN\. Received: temperature=nan"),
    (lambda: sampling.sample(LOGITS, SEED, temperature=tf.constant(1.0)), TypeError, r"`temperature` must be a Python float\. Received: temperature=<tf\.Tensor"),
    (lambda: sampling.sample(LOGITS, SEED, temperature=None), TypeError, r"`temperature` must be a Python float\. Received: temperature=None of type NoneType"),
    # seed
    (lambda: sampling.sample(LOGITS, [1, 2, 3]), ValueError, r"`seed` must have shape \(2,\) or \(\*prefix, 2\) with `prefix` a leading prefix of the logits' leading shape \(2,\)\. Received: seed shape=\(3,\), logits shape=\(2, 8\)"),
    (lambda: sampling.sample(LOGITS, np.zeros((3, 2), np.int32)), ValueError, r"Received: seed shape=\(3, 2\), logits shape=\(2, 8\)"),
    (lambda: sampling.sample(LOGITS, np.zeros((2, 1, 2), np.int32)), ValueError, r"Received: seed shape=\(2, 1, 2\), logits shape=\(2, 8\)"),
    (lambda: sampling.sample(tf.zeros((2, 4, 8)), np.zeros((2, 5, 2), np.int32)), ValueError, r"prefix of the logits' leading shape \(2, 4\)\. Received: seed shape=\(2, 5, 2\)"),
    (lambda: sampling.sample(LOGITS, 3), ValueError, r"Received: seed shape=\(\), logits shape=\(2, 8\)"),
    (lambda: sampling.sample(LOGITS, [1.0, 2.0]), TypeError, r"`seed` must hold int32 or int64 values\. Received: dtype=float64, shape=\(2,\)"),
    (lambda: sampling.sample(LOGITS, tf.constant([1, 2], tf.uint8)), TypeError, r"`seed` must hold int32 or int64 values\. Received: dtype=uint8, shape=\(2,\)"),
    (lambda: sampling.sample(LOGITS, None), ValueError, r"`seed` must be a shape \(2,\) or \(\*prefix, 2\) int32 / int64 tensor to sample\. Received: seed=None"),
    (lambda: sampling.sample(LOGITS, None, temperature=0), ValueError, r"Received: seed=None"),
    # logits
    (lambda: sampling.sample(tf.zeros((2, 8), tf.int32), SEED), TypeError, r"`logits` must be a float tensor\. Received: dtype=int32, shape=\(2, 8\)"),
    (lambda: sampling.sample(tf.zeros((2, 0)), SEED), ValueError, r"`logits` must have at least one choice on the last axis\. Received: shape=\(2, 0\)"),
    (lambda: sampling.greedy(tf.constant(1.0)), ValueError, r"`logits` must have rank >= 1 \(the choices on the last axis\)\. Received: shape=\(\)"),
    # candidates, uniform, gumbel
    (lambda: sampling.candidates(LOGITS, temperature=0.0), ValueError, r"`temperature` must be > 0 for `candidates`"),
    (lambda: sampling.candidates(LOGITS, top_p=2.0), ValueError, r"`top_p` must be in \(0, 1\]\. Received: top_p=2\.0"),
    (lambda: sampling.uniform(SEED, [2, -1]), ValueError, r"`shape` must be an int >= 0\. Received: shape=-1"),
    (lambda: sampling.uniform(SEED, [2], draw=-1), ValueError, r"`draw` must be an int >= 0\. Received: draw=-1"),
    (lambda: sampling.uniform(np.zeros((3, 2), np.int32), [2]), ValueError, r"Received: seed shape=\(3, 2\)"),
    (lambda: sampling.gumbel([2], [1, 2, 3]), ValueError, r"`seed` must have shape \(2,\)\. Received: shape=\(3,\)"),
    # binary
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


@pytest.mark.parametrize("call,error,message", ERRORS[:26])
def test_errors_are_raised_while_tracing(call, error, message):
    # before any TensorFlow op runs or compiles: a compiled function fails at its first trace
    with pytest.raises(error, match=message):
        tf.function(call, jit_compile=True)()


def test_runtime_depth_error_in_graph():
    function = tf.function(lambda x: sampling.binary(x, 3), input_signature=[tf.TensorSpec([None, None], tf.float32)])
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"`depth` must divide the last axis of `values`"):
        function(tf.zeros((2, 8)))


def test_docstring_examples_run():
    import doctest

    result = doctest.testmod(sampling, extraglobs={"tf": tf}, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0


def test_readme_lines_run():
    # the sampling lines of the README's "Text, Hilbert folding and sampling" block, as they stand there
    with open(ROOT / "README.md", encoding="utf-8") as handle:
        lines = [line.split("#")[0] for line in handle if line.startswith(("logits = tf.math.log", "sampling.sample(", "sampling.binary("))]
    assert len(lines) == 4
    namespace = {"tf": tf, "sampling": sampling}
    for line in lines:
        exec(line, namespace)  # noqa: S102 - the README's own lines
    assert sampling.sample(namespace["logits"], seed=tf.constant([[1, 2]]), top_p=0.9).shape == (1,)

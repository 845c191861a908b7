"""Dynamic patching and hash n-grams: the core ops of ``mlable_core.patching`` and ``mlable_core.hashing``.

References, all written here independently of the code under test: a byte-by-byte
Python loop for the patch boundaries, numpy loops over bytes for pooling,
unpooling, the masks and their gradients, ``mlable_core.reshaping.divide``
followed by a mean for fixed patches, and Python integers for the polynomial hashes.
"""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given
from hypothesis import strategies as st

from mlable_core import hashing, patching, reshaping
from tests.strategies import BYTE_ALPHABET as ALPHABET
from tests.strategies import patch_inputs

# references --------------------------------------------------------------------------------------


def loop_patches(starts: np.ndarray, max_patches: int, max_patch_length: int | None, mask: np.ndarray | None = None):
    """``(ids, lengths, counts)`` one byte at a time, overflow into the last patch."""
    rows, length = starts.shape
    mask = np.ones_like(starts, bool) if mask is None else mask
    ids = np.full((rows, length), -1, np.int64)
    counts = np.zeros(rows, np.int64)
    for row in range(rows):
        current, filled, previous_real = -1, 0, False
        for t in range(length):
            if not mask[row, t]:
                previous_real = False
                continue
            if not previous_real or starts[row, t] or (max_patch_length is not None and filled == max_patch_length):
                current, filled = current + 1, 0
            filled += 1
            previous_real = True
            ids[row, t] = min(current, max_patches - 1)
        counts[row] = current + 1
    lengths = np.zeros((rows, max_patches), np.int64)
    for row in range(rows):
        for t in range(length):
            if ids[row, t] >= 0:
                lengths[row, ids[row, t]] += 1
    return ids, lengths, counts


def entropy_starts(entropies: np.ndarray, threshold: float) -> np.ndarray:
    return entropies > np.float32(threshold)


def monotonic_starts(entropies: np.ndarray, threshold: float) -> np.ndarray:
    starts = np.zeros(entropies.shape, bool)
    for t in range(1, entropies.shape[1]):
        starts[:, t] = (entropies[:, t] - entropies[:, t - 1]) > np.float32(threshold)  # float32, as the op
    return starts


def space_starts(data: np.ndarray, space_bytes: tuple[int, ...]) -> np.ndarray:
    starts = np.zeros(data.shape, bool)
    for row, t in np.ndindex(*data.shape):
        continuation = 0x80 <= data[row, t] <= 0xBF
        starts[row, t] = t > 0 and data[row, t - 1] in space_bytes and data[row, t] not in space_bytes and not continuation
    return starts


def loop_pool(x: np.ndarray, ids: np.ndarray, max_patches: int, mode: str) -> np.ndarray:
    rows, _, features = x.shape
    out = np.zeros((rows, max_patches, features), np.float64)
    for row in range(rows):
        for patch in range(max_patches):
            members = [t for t in range(ids.shape[1]) if ids[row, t] == patch]
            if not members:
                continue
            vectors = x[row, members].astype(np.float64)
            out[row, patch] = {
                "sum": vectors.sum(0), "mean": vectors.mean(0), "max": vectors.max(0), "first": vectors[0], "last": vectors[-1],
            }[mode]
    return out


def loop_pool_gradient(x: np.ndarray, ids: np.ndarray, weights: np.ndarray, mode: str) -> np.ndarray:
    """d sum(pool(x) * weights) / dx, byte by byte (inputs without ties)."""
    gradient = np.zeros(x.shape, np.float64)
    for row in range(x.shape[0]):
        for patch in range(weights.shape[1]):
            members = [t for t in range(ids.shape[1]) if ids[row, t] == patch]
            if not members:
                continue
            if mode == "sum":
                for t in members:
                    gradient[row, t] += weights[row, patch]
            elif mode == "mean":
                for t in members:
                    gradient[row, t] += weights[row, patch] / len(members)
            elif mode == "max":
                for feature in range(x.shape[2]):
                    best = max(members, key=lambda t: x[row, t, feature])
                    gradient[row, best, feature] += weights[row, patch, feature]
            else:
                chosen = members[0] if mode == "first" else members[-1]
                gradient[row, chosen] += weights[row, patch]
    return gradient


def python_hash(window: list[int], base: int, modulus: int, buckets: int) -> int:
    """The polynomial of symbols (byte + 1, 0 before the start), most recent first, in Python integers."""
    value = sum(symbol * base**order for order, symbol in enumerate(reversed(window)))
    return value % modulus % buckets


def python_ngram_hashes(data: np.ndarray, sizes: tuple[int, ...], buckets: int, base: int = hashing.BASE, modulus: int = hashing.MODULUS) -> np.ndarray:
    rows, length = data.shape
    out = np.zeros((rows, length, len(sizes)), np.int64)
    for row, t in np.ndindex(rows, length):
        for index, size in enumerate(sizes):
            window = [0 if u < 0 else int(data[row, u]) + 1 for u in range(t - size + 1, t + 1)]
            out[row, t, index] = python_hash(window, base, modulus, buckets)
    return out


# running the criteria ---------------------------------------------------------------------------


def run_criterion(criterion: str, data, entropies, threshold, max_patches, max_patch_length, mask=None, allow_overflow=False):
    options = dict(mask=mask, allow_overflow=allow_overflow)
    if criterion == "entropy":
        return patching.entropy_patches(entropies, threshold, max_patches, max_patch_length, **options)
    if criterion == "monotonic":
        return patching.monotonic_patches(entropies, threshold, max_patches, max_patch_length, **options)
    if criterion == "space":
        return patching.space_patches(data, max_patches, max_patch_length, patching.WHITESPACE, **options)
    return patching.stride_patches(data, max_patch_length or 3, max_patches, **options)


def reference_starts(criterion: str, data, entropies, threshold) -> np.ndarray:
    if criterion == "entropy":
        return entropy_starts(entropies, threshold)
    if criterion == "monotonic":
        return monotonic_starts(entropies, threshold)
    if criterion == "space":
        return space_starts(data, patching.WHITESPACE)
    return np.zeros(data.shape, bool)


CRITERIA = ["entropy", "monotonic", "space", "stride"]


# boundaries --------------------------------------------------------------------------------------


@given(patch_inputs(), st.sampled_from(CRITERIA), st.booleans())
def test_boundaries_match_the_byte_by_byte_loop(inputs, criterion, overflow):
    data, entropies, mask, max_patch_length, threshold = inputs
    if criterion == "stride":
        max_patch_length = max_patch_length or 3
    # enough patches for every row, or a small bound with the overflow going to the last patch
    max_patches = 2 if overflow else max(1, data.shape[1])
    result = run_criterion(criterion, data, entropies, threshold, max_patches, max_patch_length, mask, allow_overflow=overflow)
    ids, lengths, counts = loop_patches(reference_starts(criterion, data, entropies, threshold), max_patches, max_patch_length, mask)
    np.testing.assert_array_equal(result.ids.numpy(), ids)
    np.testing.assert_array_equal(result.lengths.numpy(), lengths)
    np.testing.assert_array_equal(result.counts.numpy(), counts)
    real = np.ones(data.shape, bool) if mask is None else mask
    assert result.lengths.numpy().sum() == real.sum()  # every real byte in exactly one patch
    if not overflow and max_patch_length is not None:
        assert result.lengths.numpy().max(initial=0) <= max_patch_length


@given(patch_inputs(max_rows=1, max_length=16), st.sampled_from(CRITERIA), st.integers(0, 15), st.data())
def test_later_bytes_never_move_an_earlier_boundary(inputs, criterion, cut, draw):
    data, entropies, _, max_patch_length, threshold = inputs
    length = data.shape[1]
    cut = min(cut, max(length - 1, 0))
    changed_data, changed_entropies = data.copy(), entropies.copy()
    suffix = length - cut - 1
    if suffix > 0:
        changed_data[0, cut + 1 :] = draw.draw(st.lists(st.sampled_from(ALPHABET), min_size=suffix, max_size=suffix))
        changed_entropies[0, cut + 1 :] = draw.draw(st.lists(st.floats(0, 4, width=32), min_size=suffix, max_size=suffix))
    max_patches = max(1, length // 3)  # small: the overflow into the last patch must be causal too
    before = run_criterion(criterion, data, entropies, threshold, max_patches, max_patch_length, allow_overflow=True)
    after = run_criterion(criterion, changed_data, changed_entropies, threshold, max_patches, max_patch_length, allow_overflow=True)
    np.testing.assert_array_equal(before.ids.numpy()[:, : cut + 1], after.ids.numpy()[:, : cut + 1])


def test_documented_examples():
    assert patching.patches_from_starts(tf.constant([[False, False, True, False, False, False]]), 4, 3).ids.numpy().tolist() == [[0, 0, 1, 1, 1, 2]]
    assert patching.entropy_patches(tf.constant([[2.0, 0.1, 3.0, 0.2, 0.3]]), 1.0, 3, None).ids.numpy().tolist() == [[0, 0, 1, 1, 1]]
    assert patching.monotonic_patches(tf.constant([[2.0, 0.1, 3.0, 2.5, 2.9]]), 0.3, 4, None).ids.numpy().tolist() == [[0, 0, 1, 1, 2]]
    assert patching.space_patches(tf.constant([list(b"to be  or")]), 4, None).ids.numpy().tolist() == [[0, 0, 0, 1, 1, 1, 1, 2, 2]]
    assert patching.stride_patches(tf.zeros((1, 5)), 2, 3).ids.numpy().tolist() == [[0, 0, 1, 1, 2]]
    assert patching.patch_lengths(tf.constant([[0, 0, 1, -1]]), 3).numpy().tolist() == [[2, 1, 0]]


def test_spacelike_follows_spacebyte():
    # not an ASCII letter or digit, not a UTF-8 continuation byte
    for value in range(256):
        letter_or_digit = ord("a") <= value <= ord("z") or ord("A") <= value <= ord("Z") or ord("0") <= value <= ord("9")
        assert (value in patching.SPACELIKE) == (not letter_or_digit and not 0x80 <= value <= 0xBF), value
    ids = patching.space_patches(tf.constant([list("été, là".encode())]), 4, None).ids.numpy()[0].tolist()
    # "été," + " " | "là": the comma and the space end the first word; the continuation bytes stay in their words
    assert ids == [0] * 7 + [1] * 3


@pytest.mark.parametrize("criterion", CRITERIA)
def test_eager_graph_and_xla_agree_and_xla_overflows_into_the_last_patch(criterion):
    rng = np.random.default_rng(0)
    data = np.asarray(rng.choice(ALPHABET, size=(3, 40)), np.int32)
    entropies = rng.uniform(0, 3, size=(3, 40)).astype(np.float32)
    mask = rng.random((3, 40)) > 0.1

    def call(data, entropies, mask):
        return tuple(run_criterion(criterion, data, entropies, 1.0, 40, 4, mask))

    eager = call(data, entropies, mask)
    signature = [tf.TensorSpec([None, None], tf.int32), tf.TensorSpec([None, None], tf.float32), tf.TensorSpec([None, None], tf.bool)]
    graph = tf.function(call, input_signature=signature)(data, entropies, mask)
    xla = tf.function(call, jit_compile=True)(data, entropies, mask)
    for a, b, c in zip(eager, graph, xla):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
        np.testing.assert_array_equal(a.numpy(), c.numpy())
    # too few patches: an error eagerly and in graphs, the last patch under XLA (as with allow_overflow)
    # (an all-true mask: without one, fixed patches of a static length overflow at trace time, see below)
    everything = np.ones(data.shape, bool)
    small = lambda data, entropies: tuple(run_criterion(criterion, data, entropies, 1.0, 3, 2, everything))  # noqa: E731
    with pytest.raises(ValueError, match=r"A row needs more patches than `max_patches`=3 .* patches needed per row: \[\d+, \d+, \d+\]"):
        small(data, entropies)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"needs more patches than `max_patches`=3"):
        tf.function(small, input_signature=signature[:2])(data, entropies)
    ids, lengths, counts = tf.function(small, jit_compile=True)(data, entropies)
    expected = run_criterion(criterion, data, entropies, 1.0, 3, 2, everything, allow_overflow=True)
    np.testing.assert_array_equal(ids.numpy(), expected.ids.numpy())
    assert ids.numpy().max() == 2 and (counts.numpy() > 3).all()
    assert (lengths.numpy().sum(-1) == 40).all() and (lengths.numpy()[:, -1] > 2).all()  # the last patch took the rest


def test_stride_patches_are_divide():
    ids = patching.stride_patches(tf.zeros((2, 12)), 4, 3).ids.numpy()
    np.testing.assert_array_equal(ids, np.broadcast_to(np.arange(12) // 4, (2, 12)))
    with pytest.raises(ValueError, match=r"12 bytes make 4 patches of max_patch_length=3, more than `max_patches`=3"):
        patching.stride_patches(tf.zeros((2, 12)), 3, 3)


BAD_BOUNDARIES = [
    (lambda: patching.entropy_patches(tf.zeros((2, 3, 4)), 1.0, 4, 2), ValueError, r"`entropies` must have rank 2, shape \(B, S\).*shape \(2, 3, 4\)"),
    (lambda: patching.entropy_patches(tf.zeros((3,)), 1.0, 4, 2), ValueError, r"`entropies` must have rank 2.*shape \(3,\)"),
    (lambda: patching.monotonic_patches(tf.zeros((2, 3), tf.int32), 1.0, 4, 2), TypeError, r"`entropies` must be a floating tensor.*int32"),
    (lambda: patching.entropy_patches(tf.zeros((2, 3)), float("nan"), 4, 2), ValueError, r"`threshold` must be a finite number. Received: threshold=nan"),
    (lambda: patching.monotonic_patches(tf.zeros((2, 3)), float("inf"), 4, 2), ValueError, r"`threshold` must be a finite number. Received: threshold=inf"),
    (lambda: patching.entropy_patches(tf.zeros((2, 3)), "1", 4, 2), TypeError, r"`threshold` must be a real number"),
    (lambda: patching.entropy_patches(tf.zeros((2, 3)), 1.0, 4, 0), ValueError, r"`max_patch_length` must be an int >= 1. Received: max_patch_length=0"),
    (lambda: patching.space_patches(tf.zeros((2, 3), tf.int32), 4, -2), ValueError, r"`max_patch_length` must be an int >= 1. Received: max_patch_length=-2"),
    (lambda: patching.stride_patches(tf.zeros((2, 3)), 1.5, 4), TypeError, r"`max_patch_length` must be an int. Received: max_patch_length=1.5"),
    (lambda: patching.stride_patches(tf.zeros((2, 3)), None, 4), ValueError, r"`max_patch_length` is the stride"),
    (lambda: patching.space_patches(tf.zeros((2, 3), tf.int32), 0, 2), ValueError, r"`max_patches` must be an int >= 1. Received: max_patches=0"),
    (lambda: patching.space_patches(tf.constant([[97, 256]]), 4, 2), ValueError, r"`data` must hold byte values in \[0, 255\]. Received: data with shape \(1, 2\), smallest and largest values 97, 256"),
    (lambda: patching.space_patches(tf.constant([[-1, 3]], tf.int64), 4, 2), ValueError, r"byte values in \[0, 255\].* -1, 3"),
    (lambda: patching.space_patches(tf.constant([[2**32 + 65]], tf.int64), 4, 2), ValueError, r"byte values in \[0, 255\].* 4294967361"),
    (lambda: patching.space_patches(tf.zeros((2, 3)), 4, 2), TypeError, r"`data` must hold integer byte values.*float32"),
    (lambda: patching.space_patches(tf.zeros((2, 3), tf.int32), 4, 2, space_bytes=[32, 300]), ValueError, r"`space_bytes` must hold byte values in \[0, 255\]. Received: 300"),
    (lambda: patching.space_patches(tf.zeros((2, 3), tf.int32), 4, 2, space_bytes=" "), TypeError, r"`space_bytes` must be a sequence of byte values"),
    (lambda: patching.stride_patches(tf.zeros((2, 3)), 2, 4, mask=tf.ones((2, 4), tf.bool)), ValueError, r"`mask` must have the shape \(B, S\) of the bytes.*\(2, 4\).*\(2, 3\)"),
    (lambda: patching.stride_patches(tf.zeros((2, 3)), 2, 4, mask=tf.ones((2, 3))), TypeError, r"`mask` must be a boolean tensor"),
    (lambda: patching.patches_from_starts(tf.zeros((2, 3)), 4, 2), TypeError, r"`starts` must be a boolean tensor"),
]


@pytest.mark.parametrize("make,error,message", BAD_BOUNDARIES)
def test_bad_boundary_arguments(make, error, message):
    with pytest.raises(error, match=message):
        make()


def test_bytes_out_of_range_in_a_graph():
    function = tf.function(lambda data: patching.space_patches(data, 4, 2).ids)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"`data` must hold byte values in \[0, 255\]"):
        function(tf.constant([[97, 300]]))


def test_entropy_of_logits():
    logits = np.random.default_rng(0).normal(size=(2, 5, 7)).astype(np.float32)
    logits[0, 0, 3] = -np.inf
    probabilities = np.exp(logits.astype(np.float64) - logits.max(-1, keepdims=True))
    probabilities /= probabilities.sum(-1, keepdims=True)
    expected = -np.sum(np.where(probabilities > 0, probabilities * np.log(np.where(probabilities > 0, probabilities, 1)), 0), -1)
    np.testing.assert_allclose(patching.entropy(logits).numpy(), expected, rtol=1e-5)
    assert patching.entropy(tf.zeros((4,), tf.float16)).dtype == tf.float32


# pooling ---------------------------------------------------------------------------------------


def random_ids(rng: np.random.Generator, rows: int, length: int, max_patches: int, padding: bool) -> np.ndarray:
    """Sorted patch ids per row (as the patchers give them), with -1 padding when asked."""
    ids = np.sort(rng.integers(0, max_patches, size=(rows, length)), axis=1)
    if padding:
        ids[rng.random((rows, length)) < 0.25] = -1
    return ids.astype(np.int32)


@pytest.mark.parametrize("mode", patching.POOLING_MODES)
@pytest.mark.parametrize("padding", [False, True], ids=["sorted", "padded"])
def test_pool_matches_the_loop_and_its_gradient_everywhere(mode, padding):
    rng = np.random.default_rng(1)
    rows, length, features, max_patches = 3, 17, 4, 6
    x = rng.permutation(rows * length * features).reshape(rows, length, features).astype(np.float32) / 10  # no ties
    ids = random_ids(rng, rows, length, max_patches, padding)
    weights = rng.normal(size=(rows, max_patches, features)).astype(np.float32)

    def value_and_gradient(x, ids):
        with tf.GradientTape() as tape:
            tape.watch(x)
            pooled = patching.pool(x, ids, max_patches, mode)
            loss = tf.reduce_sum(pooled * weights)
        return pooled, tape.gradient(loss, x)

    expected = loop_pool(x, ids, max_patches, mode)
    expected_gradient = loop_pool_gradient(x, ids, weights, mode)
    x_tensor = tf.constant(x)
    signature = [tf.TensorSpec([None, None, features]), tf.TensorSpec([None, None], tf.int32)]
    for function in (value_and_gradient, tf.function(value_and_gradient, input_signature=signature), tf.function(value_and_gradient, jit_compile=True)):
        pooled, gradient = function(x_tensor, ids)
        np.testing.assert_allclose(pooled.numpy(), expected, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(gradient.numpy(), expected_gradient, rtol=1e-6, atol=1e-6)


def test_pool_in_half_precision_and_bad_ids():
    x = np.random.default_rng(2).normal(size=(2, 9, 3)).astype(np.float32)
    ids = np.array([[0, 0, 0, 1, 1, 2, 2, 2, 2], [0, 1, 1, 1, -1, -1, 2, 3, 3]], np.int32)
    for dtype in (tf.float16, tf.bfloat16):
        pooled = patching.pool(tf.cast(x, dtype), ids, 4, "mean")
        assert pooled.dtype == dtype
        np.testing.assert_allclose(tf.cast(pooled, tf.float32).numpy(), loop_pool(x, ids, 4, "mean"), atol=2e-2)
    with pytest.raises(ValueError, match=r"`ids` must be < max_patches=3 \(negative ids mean no patch\).*largest id 3"):
        patching.pool(x, ids, 3)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"`ids` must be < max_patches=3"):
        tf.function(lambda x, ids: patching.pool(x, ids, 3))(x, ids)
    # unchecked (or under XLA), bytes of a too large id add to no patch
    np.testing.assert_allclose(patching.pool(x, ids, 3, validate_ids=False).numpy(), loop_pool(x, np.where(ids < 3, ids, -1), 3, "mean"), rtol=1e-6)
    np.testing.assert_allclose(tf.function(lambda x: patching.pool(x, ids, 3), jit_compile=True)(x).numpy(), loop_pool(x, np.where(ids < 3, ids, -1), 3, "mean"), rtol=1e-6)


BAD_POOLING = [
    (lambda: patching.pool(tf.zeros((2, 3)), tf.zeros((2, 3), tf.int32), 4), ValueError, r"`x` must have rank 3, shape \(B, S, E\). Received: x with shape \(2, 3\)"),
    (lambda: patching.pool(tf.zeros((2, 3, 1), tf.int32), tf.zeros((2, 3), tf.int32), 4), TypeError, r"`x` must be a floating tensor"),
    (lambda: patching.pool(tf.zeros((2, 3, 1)), tf.zeros((2, 3)), 4), TypeError, r"`ids` must be an integer tensor"),
    (lambda: patching.pool(tf.zeros((2, 3, 1)), tf.zeros((3, 3), tf.int32), 4), ValueError, r"`x` and `ids` must have the same batch size B"),
    (lambda: patching.pool(tf.zeros((2, 3, 1)), tf.zeros((2, 3), tf.int32), 4, "median"), ValueError, r"`mode` must be one of \['mean', 'sum', 'max', 'first', 'last'\]. Received: mode='median'"),
    (lambda: patching.unpool(tf.zeros((2, 3, 1)), tf.zeros((2, 3), tf.int32), shift=-1), ValueError, r"`shift` must be an int >= 0. Received: shift=-1"),
    (lambda: patching.unpool(tf.zeros((2, 3)), tf.zeros((2, 3), tf.int32)), ValueError, r"`patches` must have rank 3, shape \(B, P, E\)"),
    (lambda: patching.byte_to_patch_mask(tf.zeros((2, 3), tf.int32), 4, "next"), ValueError, r"`mode` must be one of \['previous', 'own'\]"),
    (lambda: patching.patch_to_byte_mask(tf.zeros((2, 3, 1), tf.int32), 4), ValueError, r"`ids` must have rank 2"),
]


@pytest.mark.parametrize("make,error,message", BAD_POOLING)
def test_bad_pooling_arguments(make, error, message):
    with pytest.raises(error, match=message):
        make()


@given(st.integers(1, 3), st.integers(0, 14), st.integers(1, 5), st.booleans(), st.sampled_from(["mean", "max", "first", "last", "sum"]), st.integers(0, 2**31 - 1))
def test_unpool_then_pool_gives_the_patches_back(rows, length, max_patches, padding, mode, seed):
    rng = np.random.default_rng(seed)
    patches = rng.normal(size=(rows, max_patches, 3)).astype(np.float32)
    ids = random_ids(rng, rows, length, max_patches, padding)
    lengths = patching.patch_lengths(ids, max_patches).numpy()[..., None]
    pooled = patching.pool(patching.unpool(patches, ids), ids, max_patches, mode).numpy()
    expected = np.where(lengths > 0, patches * (lengths if mode == "sum" else 1), 0.0)  # empty patches pool to 0
    np.testing.assert_allclose(pooled, expected, rtol=1e-5, atol=1e-6)


@given(st.integers(1, 3), st.integers(1, 4), st.integers(1, 5), st.integers(1, 4))
def test_pooling_a_fixed_stride_is_divide_and_mean(rows, stride, patches, features):
    x = np.random.default_rng(rows * 100 + stride).normal(size=(rows, stride * patches, features)).astype(np.float32)
    ids = patching.stride_patches(x[..., 0], stride, patches).ids
    expected = tf.reduce_mean(reshaping.divide(x, input_axis=1, output_axis=2, factor=stride, insert=True), axis=2)  # (B, P, S / P, E)
    np.testing.assert_allclose(patching.pool(x, ids, patches, "mean").numpy(), expected.numpy(), rtol=1e-6, atol=1e-6)


def test_unpool_and_its_gradient():
    rng = np.random.default_rng(3)
    patches = rng.normal(size=(2, 4, 3)).astype(np.float32)
    ids = np.array([[0, 0, 1, 2, 2, 3, -1], [-1, 0, 1, 1, 1, 1, 1]], np.int32)
    weights = rng.normal(size=(2, 7, 3)).astype(np.float32)
    for shift in (0, 1, 2):
        expected = np.zeros((2, 7, 3), np.float32)
        expected_gradient = np.zeros_like(patches)
        for row, t in np.ndindex(2, 7):
            source = ids[row, t] - shift if ids[row, t] >= 0 else -1
            if 0 <= source < 4:
                expected[row, t] = patches[row, source]
                expected_gradient[row, source] += weights[row, t]

        def value_and_gradient(patches):
            with tf.GradientTape() as tape:
                tape.watch(patches)
                out = patching.unpool(patches, ids, shift)
                loss = tf.reduce_sum(out * weights)
            return out, tape.gradient(loss, patches)

        for function in (value_and_gradient, tf.function(value_and_gradient, jit_compile=True)):
            out, gradient = function(tf.constant(patches))
            np.testing.assert_array_equal(out.numpy(), expected)
            np.testing.assert_allclose(gradient.numpy(), expected_gradient, rtol=1e-6)


# masks -----------------------------------------------------------------------------------------


def test_masks_match_loops():
    ids = np.array([[0, 0, 1, 2, 2, -1], [-1, 0, 0, 0, 1, 1]], np.int32)
    max_patches = 4
    patch_to_byte = patching.patch_to_byte_mask(ids, max_patches).numpy()
    previous = patching.byte_to_patch_mask(ids, max_patches, "previous").numpy()
    own = patching.byte_to_patch_mask(ids, max_patches, "own").numpy()
    assert patch_to_byte.shape == (2, 4, 6) and previous.shape == own.shape == (2, 6, 4)
    for row, patch, t in np.ndindex(2, max_patches, 6):
        real = ids[row, t] >= 0
        assert patch_to_byte[row, patch, t] == (real and ids[row, t] == patch)
        assert previous[row, t, patch] == (real and patch < ids[row, t])
        assert own[row, t, patch] == (real and patch == ids[row, t])
    # a patch sees its own bytes exactly when they see it as their own patch
    np.testing.assert_array_equal(patch_to_byte, own.transpose(0, 2, 1))


# hash n-grams ----------------------------------------------------------------------------------


@given(st.integers(1, 3), st.integers(0, 12), st.sampled_from([(3, 4, 5, 6, 7, 8), (1,), (2, 5), (9, 3)]), st.sampled_from([1, 7, 4096, 500_000]), st.integers(0, 2**31 - 1))
def test_hashes_match_python_integers(rows, length, sizes, buckets, seed):
    data = np.random.default_rng(seed).integers(0, 256, size=(rows, length)).astype(np.uint8)
    data[:, : length // 3] = 255  # the largest symbols
    actual = hashing.ngram_hashes(data, buckets, sizes)
    assert actual.dtype == tf.int32 and actual.shape == (rows, length, len(sizes))
    np.testing.assert_array_equal(actual.numpy(), python_ngram_hashes(data, sizes, buckets))


@given(st.lists(st.integers(0, 255), min_size=1, max_size=8), st.integers(0, 10), st.integers(0, 10), st.integers(0, 2**31 - 1))
def test_the_same_ngram_gets_the_same_id_at_any_position(ngram, first, second, seed):
    rng = np.random.default_rng(seed)
    length = max(first, second) + len(ngram) + 2
    rows = rng.integers(0, 256, size=(2, length)).astype(np.int32)
    rows[0, first : first + len(ngram)] = ngram
    rows[1, second : second + len(ngram)] = ngram
    sizes = tuple(range(1, len(ngram) + 1))
    ids = hashing.ngram_ids(rows, 1 << 20, sizes, offset=256).numpy()
    # every n-gram ending at the last byte of the copy, of any size up to len(ngram), is the same in both rows
    np.testing.assert_array_equal(ids[0, first + len(ngram) - 1], ids[1, second + len(ngram) - 1])
    assert ids.min() >= 256 and ids.max() < 256 + len(sizes) * (1 << 20)


def test_positions_before_the_start_use_their_own_symbol():
    # "ab" at the start of a row is the 3-gram (start, a, b), unlike the 3-gram (NUL, a, b) elsewhere
    data = np.array([[97, 98, 0, 97, 98]], np.int32)
    buckets = hashing.ngram_hashes(data, 1 << 30, (3,)).numpy()[0, :, 0]
    assert buckets[1] != hashing.ngram_hashes(np.array([[0, 97, 98]]), 1 << 30, (3,)).numpy()[0, 2, 0]
    assert buckets[1] == python_hash([0, 98, 99], hashing.BASE, hashing.MODULUS, 1 << 30)
    # the same short prefix at the start of any row gets the same id
    other = hashing.ngram_hashes(np.array([[97, 98, 55]]), 1 << 30, (3,)).numpy()[0, :2, 0]
    np.testing.assert_array_equal(other, buckets[:2])


def test_hashes_are_the_same_eagerly_in_graphs_and_under_xla():
    data = np.random.default_rng(4).integers(0, 256, size=(3, 300)).astype(np.int32)
    data[0] = 255
    function = lambda data: hashing.ngram_ids(data, 500_000, hashing.NGRAM_SIZES, offset=256)  # noqa: E731
    eager = function(data).numpy()
    graph = tf.function(function, input_signature=[tf.TensorSpec([None, None], tf.int32)])(data).numpy()
    xla = tf.function(function, jit_compile=True)(data).numpy()
    np.testing.assert_array_equal(eager, graph)
    np.testing.assert_array_equal(eager, xla)
    np.testing.assert_array_equal(eager - 256 - np.arange(6) * 500_000, python_ngram_hashes(data, hashing.NGRAM_SIZES, 500_000))
    for dtype in (np.uint8, np.int64, np.int16):
        np.testing.assert_array_equal(function(data.astype(dtype)).numpy(), eager)


BAD_HASHING = [
    (lambda: hashing.ngram_hashes(tf.zeros((2, 3)), 10), TypeError, r"`data` must hold integer byte values.*float32"),
    (lambda: hashing.ngram_hashes(tf.constant([[1, 256]]), 10), ValueError, r"`data` must hold byte values in \[0, 255\].*1, 256"),
    (lambda: hashing.ngram_hashes(tf.constant(3), 10), ValueError, r"`data` must have rank >= 1"),
    (lambda: hashing.ngram_hashes(tf.zeros((2, 3), tf.int32), 0), ValueError, r"`num_buckets` must be an int >= 1. Received: num_buckets=0"),
    (lambda: hashing.ngram_hashes(tf.zeros((2, 3), tf.int32), 10, ()), TypeError, r"`ngram_sizes` must be a non-empty sequence"),
    (lambda: hashing.ngram_hashes(tf.zeros((2, 3), tf.int32), 10, (3, 0)), ValueError, r"`ngram_sizes` must be an int >= 1. Received: ngram_sizes=0"),
    (lambda: hashing.ngram_hashes(tf.zeros((2, 3), tf.int32), 10, (3, 3)), ValueError, r"`ngram_sizes` must not repeat a size"),
    (lambda: hashing.ngram_hashes(tf.zeros((2, 3), tf.int32), 10, modulus=2**31), ValueError, r"`modulus` must be < 2 \*\* 31"),
    (lambda: hashing.ngram_hashes(tf.zeros((2, 3), tf.int32), 10, base=1), ValueError, r"`base` must be an int >= 2"),
]


@pytest.mark.parametrize("make,error,message", BAD_HASHING)
def test_bad_hashing_arguments(make, error, message):
    with pytest.raises(error, match=message):
        make()

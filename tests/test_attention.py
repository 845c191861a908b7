"""Core attention ops: KV cache create / update, masks, plain and cached attention."""

from __future__ import annotations

import inspect
import math
import re

import keras
import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, settings
from hypothesis import strategies as st

from mlable_core import attention
from mlable_core import cache as kv_cache
from tests import strategies

# independent numpy references ---------------------------------------------------------------


def loop_mask(queries: int, keys: int, step: int = 0, filled: int | None = None, causal: bool = True, window: int | None = None) -> np.ndarray:
    """The visibility rules of the specification, one (query, slot) pair at a time: ``(T, S)`` booleans."""
    mask = np.zeros((queries, keys), dtype=bool)
    for i in range(queries):
        position = step + i
        for j in range(keys):
            visible = filled is None or j < filled
            visible = visible and (not causal or j <= position)
            visible = visible and (window is None or abs(position - j) < window)
            mask[i, j] = visible
    return mask


def naive_attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Softmax attention in float64, one (batch, head, query) row at a time; ``mask`` is ``(B, T, S)``.

    Returns the outputs ``(B, T, N, H)`` and the weights ``(B, N, T, S)`` (zero where hidden).
    """
    q, k, v = (np.asarray(t, dtype=np.float64) for t in (q, k, v))
    batch, queries, heads, head_dim = q.shape
    keys = k.shape[1]
    mask = np.broadcast_to(mask, (batch, queries, keys))
    outputs = np.zeros((batch, queries, heads, v.shape[-1]))
    weights = np.zeros((batch, heads, queries, keys))
    for b in range(batch):
        for n in range(heads):
            for i in range(queries):
                visible = mask[b, i]
                if not visible.any():
                    continue
                logits = k[b, visible, n] @ q[b, i, n] / math.sqrt(head_dim)
                exp = np.exp(logits - logits.max())
                row = exp / exp.sum()
                weights[b, n, i, visible] = row
                outputs[b, i, n] = row @ v[b, visible, n]
    return outputs, weights


def random_qkv(rng: np.random.Generator, batch: int, length: int, heads: int, head_dim: int, dtype: str = "float32") -> tuple[np.ndarray, ...]:
    return tuple(rng.normal(size=(batch, length, heads, head_dim)).astype(dtype) for _ in range(3))


def decode_in_chunks(q, k, v, slots: int, chunks, span: str = "auto", return_scores: bool = False, append: bool = False):
    """Runs ``cached_attention`` chunk by chunk; returns the outputs, the final cache and the scores per chunk."""
    batch, _, heads, head_dim = q.shape
    if append:
        cache = tf.zeros((2, batch, 0, heads, head_dim), q.dtype)  # (2, B, S=0, N, H), grown by each call
    else:
        cache = attention.create_cache(batch, slots, heads, head_dim, dtype=q.dtype)
    outputs, scores, position = [], [], 0
    for size in chunks:
        part = slice(position, position + size)
        result = attention.cached_attention(
            q[:, part], k[:, part], v[:, part], cache, None if append else position, span=span, return_scores=return_scores
        )
        outputs.append(result[0])
        if return_scores:
            scores.append(result[1])
        cache = result[-1]
        position += size
    return np.concatenate([o.numpy() for o in outputs], axis=1), cache.numpy(), scores


# cache creation and update ------------------------------------------------------------------


def test_create_cache_is_zero_in_the_requested_dtype():
    cache = attention.create_cache(batch_size=2, cache_length=5, num_heads=3, head_dim=4, dtype="bfloat16")
    assert cache.shape == (2, 2, 5, 3, 4)
    assert cache.dtype == tf.bfloat16
    assert not np.any(tf.cast(cache, tf.float32).numpy())


def test_update_writes_the_slots_and_overwrites():
    rng = np.random.default_rng(0)
    cache = attention.create_cache(2, 7, 3, 4)
    first = [rng.normal(size=(2, 3, 3, 4)).astype("float32") for _ in range(2)]
    second = [rng.normal(size=(2, 2, 3, 4)).astype("float32") for _ in range(2)]
    expected = np.zeros((2, 2, 7, 3, 4), dtype="float32")
    cache = attention.update_cache(cache, first[0], first[1], step=2)
    expected[0, :, 2:5], expected[1, :, 2:5] = first
    np.testing.assert_array_equal(cache.numpy(), expected)
    # slots 3 and 4 written again: replaced, not added
    cache = attention.update_cache(cache, second[0], second[1], step=tf.constant(3))
    expected[0, :, 3:5], expected[1, :, 3:5] = second
    np.testing.assert_array_equal(cache.numpy(), expected)


def test_update_in_a_graph_with_unknown_dims_and_under_xla():
    rng = np.random.default_rng(1)
    cache = rng.normal(size=(2, 3, 6, 2, 4)).astype("float32")
    key, value = (rng.normal(size=(3, 2, 2, 4)).astype("float32") for _ in range(2))
    expected = cache.copy()
    expected[0, :, 4:6], expected[1, :, 4:6] = key, value
    specs = [tf.TensorSpec([2, None, None, None, None]), tf.TensorSpec([None, None, None, None]), tf.TensorSpec([None, None, None, None]), tf.TensorSpec([], tf.int32)]
    graph = tf.function(attention.update_cache, input_signature=specs)
    compiled = tf.function(attention.update_cache, jit_compile=True)
    for fn in (graph, compiled):
        np.testing.assert_array_equal(fn(cache, key, value, tf.constant(4)).numpy(), expected)


@given(st.integers(1, 6), st.lists(st.integers(1, 9), min_size=1, max_size=4), st.integers(0, 2**16))
def test_ring_cache_holds_the_latest_position_of_each_slot(window, chunks, seed):
    rng = np.random.default_rng(seed)
    length = sum(chunks)
    keys = rng.normal(size=(2, length, 1, 3)).astype("float32")
    ring, position = kv_cache.create_cache(2, window, 1, 3), 0
    for size in chunks:  # chunks longer than the window included
        part = keys[:, position : position + size]
        ring = kv_cache.update_ring_cache(ring, part, 2 * part, position)
        position += size
    # a plain loop: slot j holds the last position p < length with p % W == j, or nothing (any negative value)
    latest = [max((p for p in range(length) if p % window == j), default=-1) for j in range(window)]
    np.testing.assert_array_equal(np.maximum(kv_cache.ring_positions(tf.constant(length), window).numpy(), -1), latest)
    for slot, held in enumerate(latest):
        expected = keys[:, held] if held >= 0 else np.zeros((2, 1, 3))
        np.testing.assert_array_equal(ring[0, :, slot].numpy(), expected)
        np.testing.assert_array_equal(ring[1, :, slot].numpy(), 2 * expected)


# masks --------------------------------------------------------------------------------------


@given(
    st.integers(1, 5), st.integers(1, 9), st.integers(0, 6), st.one_of(st.none(), st.integers(0, 9)),
    st.booleans(), st.one_of(st.none(), st.integers(1, 4)),
)
def test_mask_follows_the_rules_pair_by_pair(queries, keys, step, filled, causal, window):
    mask = attention.build_attention_mask(queries, keys, step, filled, causal, window)
    np.testing.assert_array_equal(mask.numpy()[0], loop_mask(queries, keys, step, filled, causal, window))


def test_mask_combines_with_a_user_mask():
    user = np.random.default_rng(2).integers(0, 2, size=(2, 3, 6))
    mask = attention.build_attention_mask(3, 6, step=2, filled_length=5, mask=user)
    np.testing.assert_array_equal(mask.numpy(), loop_mask(3, 6, 2, 5)[None] & user.astype(bool))


# plain attention ----------------------------------------------------------------------------


@given(
    st.integers(1, 3), st.integers(1, 5), st.integers(1, 6), st.integers(1, 3), st.integers(1, 4),
    st.booleans(), st.one_of(st.none(), st.integers(1, 3)), st.booleans(), st.integers(0, 2**16),
)
def test_attention_matches_the_naive_loop(batch, queries, keys, heads, head_dim, causal, window, with_mask, seed):
    rng = np.random.default_rng(seed)
    q = rng.normal(size=(batch, queries, heads, head_dim)).astype("float32")
    k, v = (rng.normal(size=(batch, keys, heads, head_dim)).astype("float32") for _ in range(2))
    user = rng.integers(0, 2, size=(batch, 1, keys)).astype(bool) if with_mask else None
    mask = loop_mask(queries, keys, 0, None, causal, window)[None]
    if user is not None:
        mask = mask & user
    expected, expected_weights = naive_attention(q, k, v, mask)
    output, weights = attention.attention(q, k, v, attention_mask=user, use_causal_mask=causal, sliding_window=window, return_scores=True)
    np.testing.assert_allclose(output.numpy(), expected, atol=1e-5)
    np.testing.assert_allclose(weights.numpy(), expected_weights, atol=1e-6)


# cached attention ---------------------------------------------------------------------------


@given(strategies.decode_cases(), st.sampled_from(["auto", "filled", "buckets", "allocated"]), st.integers(0, 2**16))
def test_decoding_in_chunks_equals_one_causal_pass(case, span, seed):
    q, k, v = random_qkv(np.random.default_rng(seed), case.batch, case.length, case.heads, case.head_dim)
    expected, expected_weights = naive_attention(q, k, v, loop_mask(case.length, case.length)[None])
    outputs, cache, scores = decode_in_chunks(q, k, v, case.slots, case.chunks, span, return_scores=True)
    np.testing.assert_allclose(outputs, expected, atol=1e-5)
    # the final cache holds the keys and values of the whole sequence, then untouched (zero) slots
    np.testing.assert_array_equal(cache[0, :, : case.length], k)
    np.testing.assert_array_equal(cache[1, :, : case.length], v)
    assert not np.any(cache[:, :, case.length :])
    position = 0
    for size, weights in zip(case.chunks, scores):
        weights = weights.numpy()
        assert weights.shape == (case.batch, case.heads, size, case.slots)
        np.testing.assert_allclose(weights[..., : case.length], expected_weights[:, :, position : position + size], atol=1e-6)
        np.testing.assert_allclose(weights.sum(-1), 1.0, atol=1e-5)
        # slots after each query (future or empty) get exactly zero
        hidden = ~loop_mask(size, case.slots, position, position + size)
        assert not np.any(weights[:, :, hidden])
        position += size


@given(strategies.decode_cases(max_extra_slots=0), st.integers(0, 2**16))
def test_appending_without_step_equals_one_causal_pass(case, seed):
    q, k, v = random_qkv(np.random.default_rng(seed), case.batch, case.length, case.heads, case.head_dim)
    expected, _ = naive_attention(q, k, v, loop_mask(case.length, case.length)[None])
    outputs, cache, _ = decode_in_chunks(q, k, v, case.slots, case.chunks, append=True)
    np.testing.assert_allclose(outputs, expected, atol=1e-5)
    np.testing.assert_array_equal(cache, np.stack([k, v]))


def test_user_mask_over_the_slots_and_non_causal_chunks():
    rng = np.random.default_rng(3)
    q, k, v = random_qkv(rng, 2, 6, 2, 4)
    user = rng.integers(0, 2, size=(2, 1, 9)).astype(bool)
    user[:, :, 0] = True  # keep one visible slot per row
    cache = attention.create_cache(2, 9, 2, 4)
    _, cache = attention.cached_attention(q[:, :4], k[:, :4], v[:, :4], cache, 0, attention_mask=user)
    output, weights, _ = attention.cached_attention(
        q[:, 4:], k[:, 4:], v[:, 4:], cache, 4, attention_mask=user, use_causal_mask=False, return_scores=True
    )
    # without the causal mask a chunk sees every written slot (< 6), never an empty one
    mask = loop_mask(2, 9, 4, 6, causal=False)[None] & user
    expected, expected_weights = naive_attention(q[:, 4:], np.pad(k, ((0, 0), (0, 3), (0, 0), (0, 0))), np.pad(v, ((0, 0), (0, 3), (0, 0), (0, 0))), mask)
    np.testing.assert_allclose(output.numpy(), expected, atol=1e-5)
    np.testing.assert_allclose(weights.numpy(), expected_weights, atol=1e-6)


def test_fully_masked_rows_get_zero_weights():
    q, k, v = random_qkv(np.random.default_rng(4), 1, 3, 2, 4)
    user = np.array([[[True, True, True], [False, False, False], [True, False, True]]])
    output, weights = attention.attention(q, k, v, attention_mask=user, use_causal_mask=False, return_scores=True)
    assert not np.any(weights.numpy()[:, :, 1]) and not np.any(output.numpy()[:, 1])
    np.testing.assert_allclose(weights.numpy()[:, :, [0, 2]].sum(-1), 1.0, atol=1e-6)


@pytest.mark.parametrize("dtype,scale,tolerance", [("float16", 12.0, 0.01), ("bfloat16", 3.0, 0.05)])
def test_half_precision_softmax_runs_in_float32(dtype, scale, tolerance):
    rng = np.random.default_rng(5)
    # float16 logits near 300 overflow exp without the float32 softmax; one row is fully masked
    half = [tf.cast(rng.normal(size=(1, 3, 2, 4)) * factor, dtype) for factor in (scale, scale, 1.0)]
    user = np.array([[[True, True, True], [False, False, False], [True, True, False]]])
    # the reference sees the same rounded inputs, in float64
    rounded = [tf.cast(t, tf.float64).numpy() for t in half]
    expected, expected_weights = naive_attention(*rounded, loop_mask(3, 3)[None] & user)
    output, weights = attention.attention(*half, attention_mask=user, return_scores=True)
    assert output.dtype == dtype and weights.dtype == dtype
    assert np.all(np.isfinite(tf.cast(output, tf.float32).numpy()))
    np.testing.assert_allclose(tf.cast(output, tf.float32).numpy(), expected, atol=tolerance * 4)
    np.testing.assert_allclose(tf.cast(weights, tf.float32).numpy(), expected_weights, atol=tolerance)


def test_filled_span_never_reads_empty_slots_and_buckets_read_up_to_the_bucket():
    q, k, v = random_qkv(np.random.default_rng(6), 1, 1, 2, 4)
    cache = np.full((2, 1, 256, 2, 4), np.nan, dtype="float32")
    cache[:, :, :70] = 0.5
    # slot 70 is written; 71.. hold NaN, which any read with a zero weight turns into NaN (0 * NaN)
    filled = attention.cached_attention(q, k, v, cache, 70, span="filled")[0]
    graph = tf.function(lambda c, s: attention.cached_attention(q, k, v, c, s)[0])(cache, tf.constant(70))
    allocated = attention.cached_attention(q, k, v, cache, 70, span="allocated")[0]
    assert np.all(np.isfinite(filled.numpy())) and np.all(np.isfinite(graph.numpy()))
    assert np.all(np.isnan(allocated.numpy()))
    cache[:, :, 71:96] = 0.0  # the bucket of 71 filled slots is 96 (buckets 64, 96, 128, 192, 256)
    bucketed = tf.function(lambda c, s: attention.cached_attention(q, k, v, c, s)[0], jit_compile=True)(cache, tf.constant(70))
    np.testing.assert_allclose(bucketed.numpy(), filled.numpy(), atol=1e-6)
    assert attention.bucket_lengths(256) == (64, 96, 128, 192, 256)
    assert attention.bucket_lengths(4096)[-4:] == (1536, 2048, 3072, 4096)
    assert attention.bucket_lengths(300, min_bucket=100) == (100, 150, 200, 300)
    assert attention.bucket_lengths(10) == (10,)


@pytest.mark.parametrize("queries,step", [(1, 0), (1, 37), (5, 0), (3, 61)])
@pytest.mark.parametrize("span", ["buckets", "allocated"])
def test_xla_step_equals_eager_step(queries, step, span):
    rng = np.random.default_rng(7)
    q, k, v = random_qkv(rng, 2, queries, 3, 4)
    cache = rng.normal(size=(2, 2, 130, 3, 4)).astype("float32")
    user = rng.integers(0, 2, size=(2, 1, 130)).astype(bool)
    eager = attention.cached_attention(q, k, v, cache, step, attention_mask=user, return_scores=True)
    compiled = tf.function(
        lambda *args: attention.cached_attention(*args, attention_mask=user, return_scores=True, span=span), jit_compile=True
    )(q, k, v, cache, tf.constant(step))
    for left, right in zip(eager, compiled):
        np.testing.assert_allclose(right.numpy(), left.numpy(), atol=1e-6)


def test_compiled_decode_loop_matches_and_does_not_retrace():
    rng = np.random.default_rng(8)
    batch, length, heads, head_dim, slots = 2, 9, 2, 4, 16
    q, k, v = random_qkv(rng, batch, length, heads, head_dim)
    expected, _ = naive_attention(q, k, v, loop_mask(length, length)[None])
    traces = []

    def one_step(q_t, k_t, v_t, cache, step):
        traces.append(1)  # runs once per trace
        return attention.cached_attention(q_t, k_t, v_t, cache, step)

    for jit in (False, True):
        traces.clear()
        step_fn = tf.function(one_step, jit_compile=jit)
        cache = attention.create_cache(batch, slots, heads, head_dim)
        outputs = []
        for position in range(length):
            part = slice(position, position + 1)
            output, cache = step_fn(q[:, part], k[:, part], v[:, part], cache, tf.constant(position))
            outputs.append(output.numpy())
        np.testing.assert_allclose(np.concatenate(outputs, axis=1), expected, atol=1e-5)
        assert len(traces) == 1 and step_fn.experimental_get_tracing_count() == 1

    @tf.function(jit_compile=True)
    def loop(q, k, v, cache):
        def body(position, cache, outputs):
            chunk = [tf.slice(t, [0, position, 0, 0], [batch, 1, heads, head_dim]) for t in (q, k, v)]
            output, cache = attention.cached_attention(*chunk, cache, position)
            return position + 1, cache, outputs.write(position, output[:, 0])

        outputs = tf.TensorArray(tf.float32, size=length)
        _, cache, outputs = tf.while_loop(lambda position, *_: position < length, body, (tf.constant(0), cache, outputs))
        return tf.transpose(outputs.stack(), (1, 0, 2, 3)), cache

    output, cache = loop(q, k, v, attention.create_cache(batch, slots, heads, head_dim))
    np.testing.assert_allclose(output.numpy(), expected, atol=1e-5)
    np.testing.assert_array_equal(cache.numpy()[:, :, :length], np.stack([k, v]))


def _computations(hlo: str) -> dict[str, str]:
    """HLO text split into ``{computation name: body}``."""
    parts = re.split(r"\n(?=(?:ENTRY )?%?[\w.\-]+ [^\n]*\{\n)", hlo)
    computations = {}
    for part in parts:
        match = re.match(r"(?:ENTRY )?%?([\w.\-]+) ", part)
        if match:
            computations[match.group(1)] = part
    return computations


def test_xla_updates_the_cache_in_place_inside_a_compiled_loop():
    batch, heads, head_dim, slots = 3, 2, 5, 96
    cache_type = f"f32[2,{batch},{slots},{heads},{head_dim}]"

    @tf.function(jit_compile=True)
    def loop(q, cache):
        def body(position, cache, total):
            output, cache = attention.cached_attention(q, q, q, cache, position)
            return position + 1, cache, total + tf.reduce_sum(output)

        return tf.while_loop(lambda position, *_: position < slots, body, (tf.constant(0), cache, tf.constant(0.0)))

    q = tf.ones((batch, 1, heads, head_dim))
    cache = attention.create_cache(batch, slots, heads, head_dim)
    hlo = loop.experimental_get_compiler_ir(q, cache)(stage="optimized_hlo")
    computations = _computations(hlo)
    bodies = [name for name in re.findall(r"body=%?([\w.\-]+)", hlo)]
    assert bodies, "no while loop in the optimized HLO"
    for name in bodies:
        body = computations[name]
        writers = [line for line in body.splitlines() if re.search(rf"= {re.escape(cache_type)}\S* ", line)]
        # the only op producing a whole cache in the loop body is the scatter, on the loop's own buffer
        for line in writers:
            assert not re.search(r"\b(copy|concatenate|dynamic-update-slice|broadcast|transpose)\(", line), line
        # the write is a scatter in the body, or (XLA of TF 2.16) a loop fusion that the body calls, whose
        # root updates the loop's cache parameter in place (a scatter or a dynamic-update-slice of param 0)
        called = [computations.get(callee, "") for callee in re.findall(r"calls=%?([\w.\-]+)", body)]
        in_place = [text for text in called if re.search(r"ROOT \S+ = \S+ (scatter|dynamic-update-slice)\(\S+ %param_0[,)]", text)]
        # (XLA of TF 2.16 also expands the scatter into a nested while loop over the rows: that inner
        # body is one of `bodies`, checked by the same rules)
        nested = [line for line in body.splitlines() if re.search(r" while\(", line) and cache_type in line]
        assert any("scatter" in line for line in writers) or in_place or nested, writers
    # and the loop still computes the right thing
    total = loop(q, cache)[2]
    assert np.isfinite(total.numpy())


def test_float64_inputs_keep_float64_precision_with_the_default_scale():
    # H = 3: 1 / sqrt(3) is not a float32 number; rounding the scale through float32 costs about 1e-8
    rng = np.random.default_rng(11)
    q, k, v = random_qkv(rng, 2, 5, 2, 3, dtype="float64")
    q = q * 8.0  # large scores, so that a scale error shows in the softmax
    expected, weights = naive_attention(q, k, v, loop_mask(5, 5)[None])
    output, scores = attention.attention(q, k, v, return_scores=True)
    np.testing.assert_allclose(scores.numpy(), weights, rtol=0, atol=1e-13)
    np.testing.assert_allclose(output.numpy(), expected, rtol=0, atol=1e-13)


def test_gradients_match_finite_differences_in_float64():
    rng = np.random.default_rng(9)
    q, k, v = random_qkv(rng, 1, 3, 2, 2, dtype="float64")
    cache = np.zeros((2, 1, 5, 2, 2))
    theoretical, numerical = tf.test.compute_gradient(lambda a, b, c: attention.cached_attention(a, b, c, cache, 1)[0], [q, k, v])
    for left, right in zip(theoretical, numerical):
        np.testing.assert_allclose(left, right, atol=1e-6)
    theoretical, numerical = tf.test.compute_gradient(lambda a, b, c: attention.attention(a, b, c, sliding_window=2), [q, k, v])
    for left, right in zip(theoretical, numerical):
        np.testing.assert_allclose(left, right, atol=1e-6)


def test_xla_context_detection():
    assert not attention.in_xla_context()
    seen = []
    tf.function(lambda: seen.append(attention.in_xla_context()) or tf.constant(0))()
    tf.function(lambda: seen.append(attention.in_xla_context()) or tf.constant(0), jit_compile=True)()
    assert seen == [False, True]


# overflow and errors ------------------------------------------------------------------------

OVERFLOW = r"The new positions must fit in the cache: 0 <= step and step \+ T <= S, for a cache of shape \(2, 1, 4, 2, 3\)\."


def _overflow_inputs(new: int = 2) -> tuple[np.ndarray, ...]:
    q = np.ones((1, new, 2, 3), dtype="float32")
    return q, q, q, np.zeros((2, 1, 4, 2, 3), dtype="float32")


def test_overflow_raises_eagerly_and_while_tracing():
    q, k, v, cache = _overflow_inputs()
    for step in (3, tf.constant(3), np.int64(3)):
        with pytest.raises(ValueError, match=OVERFLOW + r" Received: step=3, T=2 new positions, S=4 slots"):
            attention.cached_attention(q, k, v, cache, step)
    with pytest.raises(ValueError, match=OVERFLOW + r" Received: step=-1"):
        attention.update_cache(cache, k, v, -1)
    with pytest.raises(ValueError, match=OVERFLOW):
        tf.function(lambda: attention.cached_attention(q, k, v, cache, 3))()


def test_overflow_raises_at_run_time_in_a_graph():
    q, k, v, cache = _overflow_inputs()
    graph = tf.function(lambda step: attention.cached_attention(q, k, v, cache, step)[0])
    assert graph(tf.constant(2)).shape == (1, 2, 2, 3)
    with pytest.raises(tf.errors.InvalidArgumentError, match=OVERFLOW + r" Received at run time: step, T new positions, S slots =.*\n?.*3.*2.*4"):
        graph(tf.constant(3))
    update = tf.function(lambda step: attention.update_cache(cache, k, v, step))
    with pytest.raises(tf.errors.InvalidArgumentError, match=OVERFLOW):
        update(tf.constant(-1))


def test_overflow_under_xla_gives_nan_outputs():
    q, k, v, cache = _overflow_inputs()
    compiled = tf.function(lambda step: attention.cached_attention(q, k, v, cache, step)[0], jit_compile=True)
    assert np.all(np.isfinite(compiled(tf.constant(2)).numpy()))
    assert np.all(np.isnan(compiled(tf.constant(3)).numpy()))
    assert np.all(np.isnan(compiled(tf.constant(-1)).numpy()))


_Q = np.ones((2, 3, 4, 5), dtype="float32")
_CACHE = np.zeros((2, 2, 8, 4, 5), dtype="float32")

ERRORS = [
    (lambda: attention.create_cache(0, 8, 4, 5), ValueError, r"`batch_size` must be an int >= 1\. Received: batch_size=0"),
    (lambda: attention.create_cache(2, 8.0, 4, 5), TypeError, r"`cache_length` must be an int\. Received: cache_length=8\.0"),
    (lambda: attention.create_cache(2, 8, 4, 5, dtype="int32"), TypeError, r"`dtype` must be a floating dtype\. Received: dtype=int32"),
    (lambda: attention.cached_attention(_Q, _Q, _Q, _CACHE[0], 0), ValueError, r"`cache` must have rank 5, shape \(2, B, S, K, H\)\. Received: cache with shape \(2, 8, 4, 5\)"),
    (lambda: attention.cached_attention(_Q, _Q, _Q, np.zeros((3, 2, 8, 4, 5), "float32"), 0), ValueError, r"`cache` must stack keys and values on axis 0"),
    (lambda: attention.cached_attention(_Q[0], _Q, _Q, _CACHE, 0), ValueError, r"`query` must have rank 4, shape \(B, T, N, H\)\. Received: query with shape \(3, 4, 5\)"),
    (lambda: attention.cached_attention(_Q, _Q, _Q, _CACHE[:, :1], 0), ValueError, r"The batch sizes B must agree: cache B=1, key B=2, value B=2"),
    (lambda: attention.cached_attention(_Q, _Q, _Q, _CACHE[..., :3, :], 0), ValueError, r"The key / value head counts K must agree: cache K=3, key K=4"),
    (lambda: attention.cached_attention(_Q, _Q, _Q, _CACHE[..., :2], 0), ValueError, r"The head sizes H must agree: cache H=2, key H=5"),
    (lambda: attention.cached_attention(_Q, _Q[:, :2], _Q[:, :2], _CACHE, 0), ValueError, r"With a cache, `query`, `key` and `value` must cover the same T new positions"),
    (lambda: attention.cached_attention(_Q, _Q, _Q, _CACHE.astype("float16"), 0), TypeError, r"`key` must have the dtype of `cache` \(allocate the cache in the compute dtype\)\. Received: key dtype float32, cache dtype float16"),
    (lambda: attention.cached_attention(_Q, _Q, _Q, _CACHE, 1.5), TypeError, r"`step` must be an int\. Received: step=1\.5"),
    (lambda: attention.cached_attention(_Q, _Q, _Q, _CACHE, tf.constant(1.0)), TypeError, r"`step` must be an integer scalar\. Received: step with dtype float32"),
    (lambda: attention.cached_attention(_Q, _Q, _Q, _CACHE, tf.constant([1])), ValueError, r"`step` must be a scalar\. Received: step with shape \(1,\)"),
    (lambda: attention.cached_attention(_Q, _Q, _Q, _CACHE, 0, span="all"), ValueError, r"`span` must be one of \('auto', 'filled', 'buckets', 'allocated'\)\. Received: span='all'"),
    (lambda: tf.function(lambda: attention.cached_attention(_Q, _Q, _Q, _CACHE, 0, span="filled"), jit_compile=True)(), ValueError, r'`span="filled"` slices the cache to a length known only at run time'),
    (lambda: attention.cached_attention(_Q, _Q, _Q, _CACHE, 0, attention_mask=np.ones((2, 3, 5), bool)), ValueError, r"`attention_mask` must have shape \(B, T, S\) with T=3 query positions \(or 1\) and S=8 key slots \(or 1\)\. Received: attention_mask with shape \(2, 3, 5\)"),
    (lambda: attention.attention(_Q, _Q, _Q, attention_mask=np.ones((3, 3), bool)), ValueError, r"`attention_mask` must have rank 3"),
    (lambda: attention.attention(_Q, _Q[..., :4], _Q), ValueError, r"The query and key head sizes H must agree: query H=5, key H=4"),
    (lambda: attention.attention(_Q, _Q[:, :2], _Q), ValueError, r"The key and value lengths S must agree: key S=2, value S=3"),
    (lambda: attention.attention(_Q.astype("int32"), _Q, _Q), TypeError, r"`query` must be a floating-point tensor"),
    (lambda: attention.attention(_Q, _Q, _Q, sliding_window=0), ValueError, r"`sliding_window` must be an int >= 1\. Received: sliding_window=0"),
]


@pytest.mark.parametrize("call,error,message", ERRORS)
def test_errors(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_scale_as_a_variable_keeps_its_gradient_and_traces():
    rng = np.random.default_rng(30)
    q, k, v = (tf.constant(a) for a in random_qkv(rng, 2, 3, 2, 4))
    temperature = tf.Variable(0.5)
    with tf.GradientTape() as tape:
        output = attention.attention(q, k, v, scale=temperature)
    gradient = tape.gradient(output, temperature)
    assert gradient is not None and np.isfinite(gradient.numpy())
    np.testing.assert_allclose(output.numpy(), attention.attention(q, k, v, scale=0.5).numpy(), atol=1e-6)
    graph = tf.function(lambda scale: attention.attention(q, k, v, scale=scale))
    np.testing.assert_allclose(graph(tf.constant(0.5)).numpy(), output.numpy(), atol=1e-6)
    cache = attention.create_cache(2, 5, 2, 4)
    cached = tf.function(lambda scale: attention.cached_attention(q, k, v, cache, 0, scale=scale)[0], jit_compile=True)
    np.testing.assert_allclose(cached(temperature).numpy(), output.numpy(), atol=1e-5)
    with pytest.raises(ValueError, match=r"`scale` must be a number or a floating scalar tensor\. Received: scale with shape \(2,\)"):
        attention.attention(q, k, v, scale=tf.constant([0.5, 0.5]))


def test_an_additive_float_mask_is_rejected_not_inverted():
    rng = np.random.default_rng(31)
    q, k, v = random_qkv(rng, 1, 3, 2, 4)
    additive = np.where(np.tril(np.ones((3, 3))), 0.0, -1e9)[None].astype("float32")
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"`attention_mask` of a float dtype must hold only 0 \(hidden\) and 1 \(visible\)"):
        attention.attention(q, k, v, attention_mask=additive, use_causal_mask=False)
    binary = (additive == 0).astype("float32")
    np.testing.assert_allclose(
        attention.attention(q, k, v, attention_mask=binary, use_causal_mask=False).numpy(),
        attention.attention(q, k, v).numpy(), atol=1e-6,
    )


def test_decode_graph_does_not_grow_with_the_batch():
    def op_count(batch):
        q = tf.zeros((batch, 1, 2, 4))
        cache = attention.create_cache(batch, 16, 2, 4)
        graph = tf.function(lambda q, cache, step: attention.cached_attention(q, q, q, cache, step)[0])
        return len(graph.get_concrete_function(q, cache, tf.constant(3)).graph.get_operations())

    assert op_count(64) == op_count(2)


@given(st.integers(1, 5), st.lists(st.integers(1, 7), min_size=1, max_size=5), st.sampled_from([(2, 2), (4, 2), (2, 1)]), st.integers(0, 2**16))
@settings(max_examples=15)
def test_ring_cache_equals_full_window_attention_at_every_length(window, chunks, heads, seed):
    query_heads, kv_heads = heads
    rng = np.random.default_rng(seed)
    length = sum(chunks)
    q = tf.constant(rng.normal(size=(2, length, query_heads, 4)).astype("float32"))
    k, v = (tf.constant(rng.normal(size=(2, length, kv_heads, 4)).astype("float32")) for _ in range(2))
    # the reference: every position, keys repeated to the query heads, the window as a mask
    repeat = query_heads // kv_heads
    expected, _ = naive_attention(
        q.numpy(), np.repeat(k.numpy(), repeat, 2), np.repeat(v.numpy(), repeat, 2),
        loop_mask(length, length, window=window)[None],
    )
    ring = attention.create_cache(2, window, kv_heads, 4)
    outputs, position = [], 0
    for size in chunks:  # chunks longer than the window included (a prompt longer than W)
        output, ring = attention.ring_attention(q[:, position : position + size], k[:, position : position + size], v[:, position : position + size], ring, position)
        outputs.append(output.numpy())
        position += size
    np.testing.assert_allclose(np.concatenate(outputs, 1), expected, atol=1e-5)
    assert ring.shape == (2, 2, window, kv_heads, 4)  # O(W) memory after any length
    # the ring holds the last min(W, L) positions, each in slot p % W
    for p in range(max(0, length - window), length):
        np.testing.assert_array_equal(ring[0, :, p % window].numpy(), k[:, p].numpy())


def test_ring_cache_compiled_loop_traces_once_and_the_layer_uses_it():
    rng = np.random.default_rng(40)
    q, k, v = (tf.constant(a) for a in random_qkv(rng, 1, 20, 2, 4))
    step_fn = tf.function(lambda a, b, c, ring, step: attention.ring_attention(a, b, c, ring, step), jit_compile=True)
    ring = attention.create_cache(1, 4, 2, 4)
    for position in range(20):
        _, ring = step_fn(q[:, position : position + 1], k[:, position : position + 1], v[:, position : position + 1], ring, tf.constant(position))
    assert step_fn.experimental_get_tracing_count() == 1
    if "sliding_window" not in inspect.signature(keras.layers.MultiHeadAttention.__init__).parameters:
        pytest.skip(f"Keras {keras.__version__} has no sliding_window")
    from mlable_keras.layers.transformer import CachedMultiHeadAttention

    x = rng.normal(size=(2, 11, 8)).astype("float32")
    layer = CachedMultiHeadAttention(num_heads=2, key_dim=4, sliding_window=3, rotary=True)
    expected = layer(x, x).numpy()
    ring, outputs = attention.create_cache(2, 3, 2, 4), []
    for position in range(11):
        output, ring = layer(x[:, position : position + 1], x[:, position : position + 1], cache=ring, step=position)
        outputs.append(output.numpy())
    np.testing.assert_allclose(np.concatenate(outputs, 1), expected, atol=1e-5)


def test_a_mask_of_another_batch_size_is_named():
    rng = np.random.default_rng(41)
    q, k, v = random_qkv(rng, 2, 3, 2, 4)
    with pytest.raises(ValueError, match=r"`attention_mask` must have shape \(B, T, S\) with B=2 \(the batch of `query`\) or 1\. Received: attention_mask with shape \(3, 3, 3\)"):
        attention.attention(q, k, v, attention_mask=np.ones((3, 3, 3), bool))
    with pytest.raises(ValueError, match=r"with B=2 \(the batch of `query`\) or 1"):
        attention.cached_attention(q, k, v, attention.create_cache(2, 5, 2, 4), 0, attention_mask=np.ones((3, 3, 5), bool))
    assert attention.attention(q, k, v, attention_mask=np.ones((1, 3, 3), bool)).shape == (2, 3, 2, 4)


def test_append_cache_grows_after_the_existing_slots():
    rng = np.random.default_rng(42)
    cache = tf.constant(rng.normal(size=(2, 2, 3, 2, 4)).astype("float32"))
    key, value = (tf.constant(a) for a in random_qkv(rng, 2, 2, 2, 4)[:2])
    grown, step = attention.append_cache(cache, key, value)
    assert int(step) == 3 and grown.shape == (2, 2, 5, 2, 4)
    np.testing.assert_array_equal(grown.numpy(), np.concatenate([cache.numpy(), np.stack([key.numpy(), value.numpy()])], axis=2))


# half precision: the scores accumulate in float32 ---------------------------------------------


def _large(rng: np.random.Generator, shape: tuple[int, ...], dtype: str) -> tf.Tensor:
    """Entries near 100 (a float16 dot product over 64 of them is past 65504), rounded to ``dtype``."""
    return tf.cast(100.0 + rng.normal(size=shape) * 3.0, dtype)


def _reference(q, k, v, mask) -> np.ndarray:
    """The float64 loop on the same rounded inputs, key / value heads repeated to the query heads."""
    q, k, v = (tf.cast(t, tf.float64).numpy() for t in (q, k, v))
    repeat = q.shape[2] // k.shape[2]
    return naive_attention(q, np.repeat(k, repeat, 2), np.repeat(v, repeat, 2), mask)[0]


def _close(output: tf.Tensor, expected: np.ndarray) -> None:
    got = tf.cast(output, tf.float64).numpy()
    assert np.all(np.isfinite(got))
    # the output is rounded to the half type once (values near 100: float16 ulp 0.06, bfloat16 ulp 0.5)
    np.testing.assert_allclose(got, expected, atol=0.6 if output.dtype == tf.bfloat16 else 0.07)


def test_half_precision_overflow_is_reproduced_by_a_float16_product():
    x = tf.fill((1, 2, 1, 64), tf.constant(100.0, tf.float16))
    assert not np.isfinite(tf.einsum("btnh,bsnh->bnts", x, x).numpy()).all()  # what the scores were before
    np.testing.assert_array_equal(attention.attention(x, x, x)[0, :, 0, 0].numpy(), [100.0, 100.0])


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("heads", [(2, 2), (4, 2)])
@pytest.mark.parametrize("length", [5, attention.SCORE_BLOCK + 88])  # one block, and blocks whose last one overlaps
def test_half_precision_plain_attention_scores_in_float32(dtype, heads, length):
    rng = np.random.default_rng(50)
    query_heads, kv_heads = heads
    q = _large(rng, (2, 3, query_heads, 64), dtype)
    k, v = (_large(rng, (2, length, kv_heads, 64), dtype) for _ in range(2))
    expected = _reference(q, k, v, np.ones((1, 3, length), bool))
    _close(attention.attention(q, k, v, use_causal_mask=False), expected)
    if length > attention.SCORE_BLOCK:
        graph = tf.function(
            lambda q, k, v: attention.attention(q, k, v, use_causal_mask=False),
            input_signature=[tf.TensorSpec([None, None, query_heads, 64], dtype)] + 2 * [tf.TensorSpec([None, None, kv_heads, 64], dtype)],
        )
        _close(graph(q, k, v), expected)  # S known at run time only: a block count known at run time only
        compiled = tf.function(lambda q, k, v: attention.attention(q, k, v, use_causal_mask=False), jit_compile=True)
        _close(compiled(q, k, v), expected)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("kv_heads", [2, 1])
def test_half_precision_cached_decoding_on_every_path(dtype, kv_heads):
    rng = np.random.default_rng(51)
    slots, prompt = 640, attention.SCORE_BLOCK + 40  # the decode step reads 553 slots: two blocks
    q = _large(rng, (1, prompt + 1, 2, 64), dtype)
    k, v = (_large(rng, (1, prompt + 1, kv_heads, 64), dtype) for _ in range(2))
    expected = _reference(q, k, v, loop_mask(prompt + 1, prompt + 1)[None])[:, prompt:]
    cache = attention.create_cache(1, slots, kv_heads, 64, dtype=dtype)
    _, cache = attention.cached_attention(q[:, :prompt], k[:, :prompt], v[:, :prompt], cache, 0)
    new = [t[:, prompt:] for t in (q, k, v)]
    eager = attention.cached_attention(*new, cache, prompt)[0]
    graph = tf.function(lambda c, s: attention.cached_attention(*new, c, s)[0])(cache, tf.constant(prompt))
    buckets = tf.function(lambda c, s: attention.cached_attention(*new, c, s)[0], jit_compile=True)(cache, tf.constant(prompt))
    for output in (eager, graph, buckets):
        _close(output, expected)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_ring_attention(dtype):
    rng = np.random.default_rng(52)
    window, length = 4, 9
    q = _large(rng, (1, length, 4, 64), dtype)
    k, v = (_large(rng, (1, length, 2, 64), dtype) for _ in range(2))
    expected = _reference(q, k, v, loop_mask(length, length, window=window)[None])
    ring, outputs = attention.create_cache(1, window, 2, 64, dtype=dtype), []
    step_fn = tf.function(attention.ring_attention, jit_compile=True)
    for position in range(length):
        part = slice(position, position + 1)
        output, ring = step_fn(q[:, part], k[:, part], v[:, part], ring, tf.constant(position))
        outputs.append(output)
    _close(tf.concat(outputs, axis=1), expected)


def test_half_precision_block_scores_have_gradients():
    rng = np.random.default_rng(53)
    length = attention.SCORE_BLOCK + 30
    q, k, v = (tf.constant(rng.normal(size=(1, 2, 2, 8)) if i == 0 else rng.normal(size=(1, length, 2, 8)), tf.float16) for i in range(3))

    def loss(q, k, v):
        return tf.reduce_sum(tf.cast(attention.attention(q, k, v, use_causal_mask=False), tf.float32) ** 2)

    with tf.GradientTape() as tape:
        tape.watch([q, k, v])
        half = loss(q, k, v)
    gradients = tape.gradient(half, [q, k, v])
    wide = [tf.cast(t, tf.float64) for t in (q, k, v)]
    with tf.GradientTape() as tape:
        tape.watch(wide)
        reference = tf.reduce_sum(attention.attention(*wide, use_causal_mask=False) ** 2)
    expected = tape.gradient(reference, wide)
    for got, want in zip(gradients, expected):
        np.testing.assert_allclose(tf.cast(got, tf.float64).numpy(), want.numpy(), atol=0.05, rtol=0.02)
    compiled = tf.function(lambda q, k, v: tf.gradients(loss(q, k, v), [q, k])[1], jit_compile=True)
    np.testing.assert_allclose(tf.cast(compiled(q, k, v), tf.float64).numpy(), expected[1].numpy(), atol=0.05, rtol=0.02)


# sizes known at run time only -----------------------------------------------------------------

_ANY = tf.TensorSpec([None, None, None, 4])  # H known: it sets the default scale
_ANY_H = tf.TensorSpec([None, None, None, None])


def _graph(fn, *specs):
    return tf.function(fn, input_signature=list(specs))


RUN_TIME_ERRORS = [
    (  # query and key batches
        _graph(lambda q, k, v: attention.attention(q, k, v), _ANY, _ANY, _ANY),
        (np.ones((2, 3, 2, 4)), np.ones((3, 3, 2, 4)), np.ones((3, 3, 2, 4))),
        r"The batch sizes B must agree\. Received at run time: the shapes of `query`, `key`, `value` =.*\[2 3 2 4\].*\[3 3 2 4\]",
    ),
    (  # key and value lengths
        _graph(lambda q, k, v: attention.attention(q, k, v, use_causal_mask=False), _ANY, _ANY, _ANY),
        (np.ones((2, 3, 2, 4)), np.ones((2, 5, 2, 4)), np.ones((2, 4, 2, 4))),
        r"The key / value lengths S must agree\. Received at run time: the shapes of `key`, `value` =.*\[2 5 2 4\].*\[2 4 2 4\]",
    ),
    (  # query and key head sizes
        _graph(lambda q, k, v: attention.attention(q, k, v), _ANY, _ANY_H, _ANY_H),
        (np.ones((2, 3, 2, 4)), np.ones((2, 3, 2, 5)), np.ones((2, 3, 2, 5))),
        r"The query and key head sizes H must agree\. Received at run time: the shapes of `query`, `key` =",
    ),
    (  # the batch of the mask
        _graph(lambda q, m: attention.attention(q, q, q, attention_mask=m), _ANY, tf.TensorSpec([None, None, None], tf.bool)),
        (np.ones((2, 3, 2, 4)), np.ones((3, 3, 3), bool)),
        r"`attention_mask` must have shape \(B, T, S\), each 1 or the size of the call: B the batch of `query`.* Received at run time: attention_mask shape, then the sizes of B, T, S =.*\[3 3 3\].*2",
    ),
    (  # the key length of the mask, over the slots of a cache
        _graph(lambda q, m: attention.cached_attention(q, q, q, tf.zeros((2, 2, 8, 2, 4)), 0, attention_mask=m)[0], _ANY, tf.TensorSpec([None, None, None], tf.bool)),
        (np.ones((2, 3, 2, 4)), np.ones((2, 3, 5), bool)),
        r"`attention_mask` must have shape \(B, T, S\).* Received at run time: attention_mask shape, then the sizes of B, T, S =.*\[2 3 5\].*\[8\]",
    ),
    (  # the query length of the mask, ring cache
        _graph(lambda q, m: attention.ring_attention(q, q, q, tf.zeros((2, 1, 4, 2, 4)), 0, attention_mask=m)[0], tf.TensorSpec([1, None, 2, 4]), tf.TensorSpec([1, None, None], tf.bool)),
        (np.ones((1, 3, 2, 4)), np.ones((1, 2, 7), bool)),
        r"`attention_mask` must have shape \(B, T, S\).* Received at run time: attention_mask shape, then the sizes of T, S =.*\[1 2 7\].*3.*7",
    ),
]


@pytest.mark.parametrize("fn,inputs,message", RUN_TIME_ERRORS)
def test_sizes_known_at_run_time_only_are_asserted_with_the_argument_names(fn, inputs, message):
    inputs = [tf.constant(item, tf.bool if item.dtype == bool else tf.float32) for item in inputs]
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        fn(*inputs)


def test_run_time_checks_pass_matching_sizes_and_add_nothing_when_sizes_are_static():
    rng = np.random.default_rng(60)
    q, k, v = random_qkv(rng, 2, 3, 2, 4)
    mask = rng.integers(0, 2, size=(1, 3, 3)).astype(bool)
    graph = _graph(lambda q, k, v, m: attention.attention(q, k, v, attention_mask=m), _ANY, _ANY, _ANY, tf.TensorSpec([None, None, None], tf.bool))
    np.testing.assert_allclose(graph(q, k, v, mask).numpy(), attention.attention(q, k, v, attention_mask=mask).numpy(), atol=1e-6)
    static = tf.function(lambda q, k, v: attention.attention(q, k, v)).get_concrete_function(q, k, v).graph
    assert not [op for op in static.get_operations() if op.type == "Assert"]


def test_docstring_examples_run():
    import doctest

    for module in (attention, kv_cache):
        result = doctest.testmod(module, extraglobs={"tf": tf}, optionflags=doctest.NORMALIZE_WHITESPACE)
        assert result.failed == 0 and result.attempted > 5, (module.__name__, result)

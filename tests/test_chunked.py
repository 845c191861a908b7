"""Chunked attention (``mlable_core.chunked``): equal to plain attention, exact gradients, bounded memory.

References: a float64 numpy attention (grouped heads repeated, every mask
written out pair by pair) and its numpy gradients (the full-matrix softmax
backward), ``mlable_core.attention.attention`` through ``tf.GradientTape``,
and finite differences.
"""

from __future__ import annotations

import inspect
import math
import re

import keras
import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given
from hypothesis import strategies as st

from mlable_core import attention, chunked
from mlable_keras.layers.transformer import CachedMultiHeadAttention
from tests import strategies
from tests.harness import run_layer_test

# independent numpy references ---------------------------------------------------------------


def visibility(case: strategies.AttentionCase, user: np.ndarray | None) -> np.ndarray:
    """``(B, T, S)`` booleans: the causal, window and user rules, one (query, key) pair at a time."""
    visible = np.zeros((case.batch, case.queries, case.keys), dtype=bool)
    for b in range(case.batch):
        for i in range(case.queries):
            for j in range(case.keys):
                seen = (not case.causal or j <= i) and (case.window is None or abs(i - j) < case.window)
                if user is not None:
                    seen = seen and bool(user[min(b, user.shape[0] - 1), min(i, user.shape[1] - 1), min(j, user.shape[2] - 1)])
                visible[b, i, j] = seen
    return visible


def numpy_attention(q, k, v, visible, scale):
    """Float64 attention with grouped heads: returns the output ``(B, T, N, Hv)`` and the weights ``(B, N, T, S)``."""
    q, k, v = (np.asarray(t, dtype=np.float64) for t in (q, k, v))
    groups = q.shape[2] // k.shape[2]
    k, v = np.repeat(k, groups, axis=2), np.repeat(v, groups, axis=2)  # head n reads key / value head n // G
    scores = np.einsum("btnh,bsnh->bnts", q, k) * scale
    seen = visible[:, None]  # (B, 1, T, S)
    peak = np.where(seen, scores, -np.inf).max(axis=-1, keepdims=True)
    peak = np.where(np.isfinite(peak), peak, 0.0)
    exp = np.where(seen, np.exp(np.where(seen, scores - peak, 0.0)), 0.0)
    total = exp.sum(axis=-1, keepdims=True)
    weights = np.divide(exp, total, out=np.zeros_like(exp), where=total > 0)
    return np.einsum("bnts,bsnh->btnh", weights, v), weights


def numpy_gradients(q, k, v, visible, scale, upstream):
    """Gradients of ``sum(output * upstream)`` with respect to q, k, v (and the scale), from the full weights."""
    q, k, v = (np.asarray(t, dtype=np.float64) for t in (q, k, v))
    kv_heads, groups = k.shape[2], q.shape[2] // k.shape[2]
    _, weights = numpy_attention(q, k, v, visible, scale)
    keys, values = np.repeat(k, groups, axis=2), np.repeat(v, groups, axis=2)
    value_grad = np.einsum("bnts,btnh->bsnh", weights, upstream)
    weight_grad = np.einsum("btnh,bsnh->bnts", upstream, values)
    score_grad = weights * (weight_grad - (weights * weight_grad).sum(axis=-1, keepdims=True))
    query_grad = scale * np.einsum("bnts,bsnh->btnh", score_grad, keys)
    key_grad = scale * np.einsum("bnts,btnh->bsnh", score_grad, q)
    scale_grad = float((score_grad * np.einsum("btnh,bsnh->bnts", q, keys)).sum())

    def fold(grad):  # the N query heads back onto their K key / value heads
        batch, length, _, size = grad.shape
        return grad.reshape(batch, length, kv_heads, groups, size).sum(axis=3)

    return query_grad, fold(key_grad), fold(value_grad), scale_grad


def case_inputs(case: strategies.AttentionCase, dtype: str = "float64"):
    rng = np.random.default_rng(case.seed)
    q = rng.normal(size=(case.batch, case.queries, case.heads, case.head_dim)).astype(dtype)
    k = rng.normal(size=(case.batch, case.keys, case.kv_heads, case.head_dim)).astype(dtype)
    v = rng.normal(size=(case.batch, case.keys, case.kv_heads, case.value_dim)).astype(dtype)
    user = None if case.mask_shape is None else rng.random(case.mask_shape) < 0.7
    upstream = rng.normal(size=(case.batch, case.queries, case.heads, case.value_dim))
    return q, k, v, user, upstream


def run_chunked(case, q, k, v, user, **options):
    return chunked.chunked_attention(
        q, k, v, attention_mask=user, use_causal_mask=case.causal, sliding_window=case.window,
        query_chunk_size=case.query_chunk, key_chunk_size=case.key_chunk, **options,
    )


def tape_gradients(fn, q, k, v, upstream):
    q, k, v = (tf.constant(t) for t in (q, k, v))
    with tf.GradientTape() as tape:
        tape.watch([q, k, v])
        loss = tf.reduce_sum(fn(q, k, v) * tf.cast(upstream, q.dtype))
    return [g.numpy() for g in tape.gradient(loss, [q, k, v])]


# values ---------------------------------------------------------------------------------------


@given(strategies.attention_cases())
def test_equals_the_numpy_reference_and_plain_attention_for_any_blocks_masks_and_heads(case):
    q, k, v, user, _ = case_inputs(case)
    expected, _ = numpy_attention(q, k, v, visibility(case, user), 1 / math.sqrt(case.head_dim))
    output = run_chunked(case, q, k, v, user)
    assert output.dtype == tf.float64 and output.shape == expected.shape
    np.testing.assert_allclose(output.numpy(), expected, atol=1e-12)
    # in float32, against the plain kernel with the same arguments
    q, k, v = (t.astype("float32") for t in (q, k, v))
    plain = attention.attention(q, k, v, attention_mask=user, use_causal_mask=case.causal, sliding_window=case.window)
    np.testing.assert_allclose(run_chunked(case, q, k, v, user).numpy(), plain.numpy(), atol=2e-6)


@given(strategies.attention_cases())
def test_gradients_equal_numpy_and_plain_attention(case):
    q, k, v, user, upstream = case_inputs(case)
    scale = 1 / math.sqrt(case.head_dim)
    expected = numpy_gradients(q, k, v, visibility(case, user), scale, upstream)
    ours = tape_gradients(lambda a, b, c: run_chunked(case, a, b, c, user), q, k, v, upstream)
    plain = tape_gradients(
        lambda a, b, c: attention.attention(a, b, c, attention_mask=user, use_causal_mask=case.causal, sliding_window=case.window),
        q, k, v, upstream,
    )
    for name, mine, reference, through_plain in zip("qkv", ours, expected, plain):
        np.testing.assert_allclose(mine, reference, atol=1e-10, err_msg=f"d{name} against numpy")
        # the plain kernel rounds a Python scale to float32 before casting it to float64: 1e-7 relative
        np.testing.assert_allclose(mine, through_plain, atol=1e-6, err_msg=f"d{name} against plain attention")


def test_gradients_match_finite_differences():
    rng = np.random.default_rng(3)
    q = rng.normal(size=(1, 5, 4, 3))
    k, v = rng.normal(size=(1, 4, 2, 3)), rng.normal(size=(1, 4, 2, 2))
    mask = rng.random((1, 5, 4)) < 0.8

    @tf.function  # traced once: finite differences call it for every input element
    def fn(a, b, c):
        return chunked.chunked_attention(a, b, c, attention_mask=mask, sliding_window=3, query_chunk_size=2, key_chunk_size=3)

    theoretical, numerical = tf.test.compute_gradient(fn, [q, k, v])
    for left, right in zip(theoretical, numerical):
        np.testing.assert_allclose(left, right, atol=1e-6)  # finite differences in float64


@pytest.mark.parametrize("variable", [False, True])
def test_a_tensor_scale_gets_its_gradient(variable):
    case = strategies.AttentionCase(2, 6, 5, 2, 2, 3, 2, True, None, (True, True, True), 4, 2, 11)
    q, k, v, user, upstream = case_inputs(case)
    visible = visibility(case, user)
    expected_grads = numpy_gradients(q, k, v, visible, 0.7, upstream)
    scale = tf.Variable(0.7, dtype=tf.float64) if variable else tf.constant(0.7, tf.float64)
    with tf.GradientTape() as tape:
        tape.watch(scale)
        loss = tf.reduce_sum(run_chunked(case, q, k, v, user, scale=scale) * upstream)
    np.testing.assert_allclose(tape.gradient(loss, scale).numpy(), expected_grads[3], rtol=1e-10)
    np.testing.assert_allclose(
        run_chunked(case, q, k, v, user, scale=scale).numpy(), numpy_attention(q, k, v, visible, 0.7)[0], atol=1e-12
    )
    # inside tf.function, a symbolic scale works too
    traced = tf.function(lambda s: run_chunked(case, q, k, v, user, scale=s))
    np.testing.assert_allclose(traced(tf.constant(0.7, tf.float64)).numpy(), numpy_attention(q, k, v, visible, 0.7)[0], atol=1e-12)


# modes ------------------------------------------------------------------------------------------

_CASE = strategies.AttentionCase(2, 11, 13, 2, 2, 4, 3, True, 5, (True, False, True), 4, 3, 5)


def _loss_and_gradients(q, k, v, mask, upstream):
    with tf.GradientTape() as tape:
        tape.watch([q, k, v])
        output = chunked.chunked_attention(q, k, v, attention_mask=mask, sliding_window=5, query_chunk_size=4, key_chunk_size=3)
        loss = tf.reduce_sum(output * upstream)
    return [output, *tape.gradient(loss, [q, k, v])]


def test_graph_with_unknown_dims_and_xla_equal_the_reference():
    q, k, v, user, upstream = (tf.constant(t, tf.float32) for t in case_inputs(_CASE, "float32"))
    user = tf.cast(user, tf.bool)
    visible = visibility(_CASE, user.numpy())
    expected = [numpy_attention(q, k, v, visible, 0.5)[0], *numpy_gradients(q, k, v, visible, 0.5, upstream.numpy())[:3]]
    signature = [
        tf.TensorSpec([None, None, None, 4]), tf.TensorSpec([None, None, 2, 4]), tf.TensorSpec([None, None, 2, 3]),
        tf.TensorSpec([None, None, None], tf.bool), tf.TensorSpec([None, None, None, 3]),
    ]
    graph = tf.function(_loss_and_gradients, input_signature=signature)
    xla = tf.function(_loss_and_gradients, jit_compile=True)
    for fn in (_loss_and_gradients, graph, xla):
        for result, reference in zip(fn(q, k, v, user, upstream), expected):
            np.testing.assert_allclose(result.numpy(), reference, atol=2e-5)
    # a longer sequence reuses the graph with unknown dims (the last blocks padded)
    longer = [tf.concat([t, t], axis=1) for t in (q, k, v)]
    mask = tf.ones((2, 22, 26), tf.bool)
    out = graph(*longer, mask, tf.concat([upstream, upstream], axis=1))[0]
    reference = attention.attention(*longer, attention_mask=mask, sliding_window=5)
    np.testing.assert_allclose(out.numpy(), reference.numpy(), atol=2e-6)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_accumulates_in_float32(dtype):
    # q . k = 64 * 100 * 100 = 640000 overflows float16 (65504) unless the scores run in float32
    x = tf.fill((1, 2, 1, 64), tf.constant(100.0, dtype))
    output = chunked.chunked_attention(x, x, x)
    assert output.dtype == tf.as_dtype(dtype)
    np.testing.assert_array_equal(output.numpy().astype("float32")[0, :, 0, 0], [100.0, 100.0])
    case = strategies.AttentionCase(2, 9, 9, 2, 2, 8, 8, True, None, (True, True, True), 4, 4, 21)
    q, k, v, user, upstream = case_inputs(case, "float32")
    expected, _ = numpy_attention(q, k, v, visibility(case, user), 1 / math.sqrt(8))
    half = [tf.cast(t, dtype) for t in (q, k, v)]
    output = run_chunked(case, *half, user)
    tolerance = 2e-2 if dtype == "bfloat16" else 3e-3
    np.testing.assert_allclose(tf.cast(output, tf.float32).numpy(), expected, atol=tolerance)
    grads = tape_gradients(lambda a, b, c: run_chunked(case, a, b, c, user), *half, upstream)
    for grad, reference in zip(grads, numpy_gradients(q, k, v, visibility(case, user), 1 / math.sqrt(8), upstream)[:3]):
        assert grad.dtype == tf.as_dtype(dtype).as_numpy_dtype
        np.testing.assert_allclose(grad.astype("float32"), reference, atol=10 * tolerance)


def test_a_query_that_sees_no_key_gives_zeros_and_zero_gradients():
    rng = np.random.default_rng(4)
    q, k, v = rng.normal(size=(1, 4, 2, 3)), rng.normal(size=(1, 5, 2, 3)), rng.normal(size=(1, 5, 2, 3))
    mask = np.ones((1, 4, 5), bool)
    mask[0, 2] = False  # row 2 sees nothing
    grads = tape_gradients(
        lambda a, b, c: chunked.chunked_attention(a, b, c, attention_mask=mask, use_causal_mask=False, query_chunk_size=2, key_chunk_size=2),
        q, k, v, np.ones((1, 4, 2, 3)),
    )
    output = chunked.chunked_attention(q, k, v, attention_mask=mask, use_causal_mask=False, query_chunk_size=2, key_chunk_size=2)
    np.testing.assert_array_equal(output.numpy()[0, 2], 0.0)
    np.testing.assert_array_equal(grads[0][0, 2], 0.0)
    assert all(np.isfinite(grad).all() for grad in grads)
    plain = attention.attention(q, k, v, attention_mask=mask, use_causal_mask=False)
    np.testing.assert_allclose(output.numpy(), plain.numpy(), atol=1e-6)


@pytest.mark.parametrize("queries,keys", [(3, 0), (0, 3)])
def test_empty_sequences_give_what_plain_attention_gives(queries, keys):
    q = tf.constant(_rng_normal((1, queries, 2, 4)))
    k = v = tf.constant(_rng_normal((1, keys, 2, 4)))
    signature = [tf.TensorSpec([None, None, 2, 4])] * 3
    expected = attention.attention(q, k, v)
    eager = chunked.chunked_attention(q, k, v, query_chunk_size=2, key_chunk_size=2)
    graph = tf.function(lambda a, b, c: chunked.chunked_attention(a, b, c, query_chunk_size=2, key_chunk_size=2), input_signature=signature)
    for output in (eager, graph(q, k, v)):
        assert output.shape == expected.shape
        np.testing.assert_array_equal(output.numpy(), expected.numpy())
    grads = tape_gradients(lambda a, b, c: chunked.chunked_attention(a, b, c, query_chunk_size=2, key_chunk_size=2), q, k, v, np.ones(expected.shape))
    assert [g.shape for g in grads] == [q.shape, k.shape, v.shape] and not any(np.any(g) for g in grads)


def _rng_normal(shape):
    return np.random.default_rng(6).normal(size=shape).astype("float32")


# block skipping and bounded memory --------------------------------------------------------------


@given(strategies.attention_cases(max_length=20))
def test_block_ranges_cover_every_visible_pair(case):
    q, k, v, _, _ = case_inputs(case, "float32")
    plan = chunked._Plan(tf.constant(q), tf.constant(k), tf.constant(v), None, case.causal, case.window, case.query_chunk, case.key_chunk)
    visible = visibility(case, None)[0]
    for i in range(case.queries):
        for j in range(case.keys):
            if visible[i, j]:
                low, high = (int(x) for x in plan.key_range(tf.constant(i // plan.query_chunk)))
                assert low <= j // plan.key_chunk < high, (i, j, low, high)
                low, high = (int(x) for x in plan.query_range(tf.constant(j // plan.key_chunk)))
                assert low <= i // plan.query_chunk < high, (i, j, low, high)


@pytest.mark.parametrize("causal,window", [(False, None), (True, None), (True, 16), (False, 16), (True, 1)])
def test_causal_and_window_visit_only_the_blocks_they_can_see(causal, window):
    x = tf.zeros((1, 64, 1, 2))
    plan = chunked._Plan(x, x, x, None, causal, window, 8, 8)
    visited = sum(int(high - low) for low, high in (plan.key_range(tf.constant(i)) for i in range(8)))
    case = strategies.AttentionCase(1, 64, 64, 1, 1, 2, 2, causal, window, None, 8, 8, 0)
    seen = visibility(case, None)[0].reshape(8, 8, 8, 8).any(axis=(1, 3))  # (query block, key block) with a visible pair
    assert visited == seen.sum()
    if causal and window is None:
        assert visited == 36  # of 8 x 8: the blocks on and below the diagonal, about half the work


def _largest_tensor(fn, *args) -> int:
    """The most elements of any array in the compiled (XLA) program of ``fn``."""
    hlo = fn.experimental_get_compiler_ir(*args)(stage="hlo")
    sizes = [math.prod(int(d) for d in dims.split(",") if d) for dims in re.findall(r"(?:f32|f64|pred)\[([\d,]*)\]", hlo)]
    return max(sizes)


def test_xla_never_builds_the_full_scores():
    q = k = v = tf.zeros((1, 256, 2, 4))
    full = 2 * 256 * 256  # (B, N, T, S) scores

    def train_step(q, k, v, attend):
        with tf.GradientTape() as tape:
            tape.watch([q, k, v])
            loss = tf.reduce_sum(attend(q, k, v))
        return tape.gradient(loss, [q, k, v])

    ours = tf.function(lambda *a: train_step(*a, lambda *b: chunked.chunked_attention(*b, query_chunk_size=32, key_chunk_size=32)), jit_compile=True)
    plain = tf.function(lambda *a: train_step(*a, attention.attention), jit_compile=True)
    assert _largest_tensor(plain, q, k, v) >= full  # the check sees the scores where they exist
    assert _largest_tensor(ours, q, k, v) <= 4 * 2 * 32 * 32  # a few blocks at most, linear tensors are 2048


# errors -----------------------------------------------------------------------------------------

_Q = np.zeros((2, 3, 4, 5), "float32")
_KV = np.zeros((2, 6, 2, 5), "float32")

ERRORS = [
    (lambda: chunked.chunked_attention(_Q, _KV, _KV, query_chunk_size=0), ValueError, r"`query_chunk_size` must be an int >= 1\. Received: query_chunk_size=0"),
    (lambda: chunked.chunked_attention(_Q, _KV, _KV, key_chunk_size=2.5), TypeError, r"`key_chunk_size` must be an int\. Received: key_chunk_size=2\.5"),
    (lambda: chunked.chunked_attention(_Q, _KV, _KV, key_chunk_size=True), TypeError, r"`key_chunk_size` must be an int\. Received: key_chunk_size=True"),
    (lambda: chunked.chunked_attention(_Q, _KV, _KV, sliding_window=0), ValueError, r"`sliding_window` must be an int >= 1\. Received: sliding_window=0"),
    (lambda: chunked.chunked_attention(_Q, _KV, _KV, use_causal_mask="yes"), TypeError, r"`use_causal_mask` must be a bool\. Received: use_causal_mask='yes'"),
    (lambda: chunked.chunked_attention(_Q, np.zeros((2, 6, 3, 5), "float32"), np.zeros((2, 6, 3, 5), "float32")), ValueError, r"The key / value head count K must divide the query head count N"),
    (lambda: chunked.chunked_attention(_Q, _KV[:, :4], _KV), ValueError, r"The key and value lengths S must agree: key S=4, value S=6"),
    (lambda: chunked.chunked_attention(_Q, _KV.astype("float16"), _KV), TypeError, r"`query`, `key` and `value` must share one dtype"),
    (lambda: chunked.chunked_attention(_Q[0], _KV, _KV), ValueError, r"`query` must have rank 4"),
    (lambda: chunked.chunked_attention(_Q, _KV, _KV, attention_mask=np.ones((2, 3, 5), bool)), ValueError, r"`attention_mask` must have shape \(B, T, S\) with T=3 query positions \(or 1\) and S=6 key slots \(or 1\)\. Received: attention_mask with shape \(2, 3, 5\)"),
    (lambda: chunked.chunked_attention(_Q, _KV, _KV, attention_mask=np.ones((3, 3, 6), bool)), ValueError, r"`attention_mask` must have shape \(B, T, S\) with B=2 \(the batch of `query`\) or 1\. Received: attention_mask with shape \(3, 3, 6\)"),
    (lambda: chunked.chunked_attention(_Q, _KV, _KV, scale=tf.constant([0.5, 0.5])), ValueError, r"`scale` must be a number or a floating scalar tensor\. Received: scale with shape \(2,\)"),
    (lambda: chunked.chunked_attention(_Q, _KV, _KV, attention_mask=np.full((2, 3, 6), -1e9, "float32")), tf.errors.InvalidArgumentError, r"`attention_mask` of a float dtype must hold only 0 \(hidden\) and 1 \(visible\)"),
]


@pytest.mark.parametrize("call,error,message", ERRORS)
def test_errors(call, error, message):
    with pytest.raises(error, match=message):
        call()


@pytest.mark.parametrize(
    "key_length,mask_shape,message",
    [
        (5, (2, 3, 6), r"the key length S; value S, key S"),
        (6, (2, 2, 6), r"`attention_mask` must have shape \(B, T, S\) \(each may be 1\); axis 1 must be 1 or T"),
    ],
)
def test_run_time_mismatches_are_named_in_a_graph(key_length, mask_shape, message):
    fn = tf.function(
        lambda q, k, v, m: chunked.chunked_attention(q, k, v, attention_mask=m),
        input_signature=[tf.TensorSpec([None, None, 4, 5]), tf.TensorSpec([None, None, 2, 5]), tf.TensorSpec([None, None, 2, 5]), tf.TensorSpec([None, None, None], tf.bool)],
    )
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        fn(_Q, _KV[:, :key_length], _KV, np.ones(mask_shape, bool))


# the layer option ---------------------------------------------------------------------------------

WIDTH = 12


def _data(*shape: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=shape).astype("float32")


def _twins(**kwargs):
    """The layer with ``attention_chunk_size=3`` and the plain layer, with the same weights."""
    if "sliding_window" in kwargs and "sliding_window" not in inspect.signature(keras.layers.MultiHeadAttention.__init__).parameters:
        pytest.skip(f"keras.layers.MultiHeadAttention of Keras {keras.__version__} has no `sliding_window`")
    chunky = CachedMultiHeadAttention(num_heads=4, key_dim=3, attention_chunk_size=3, **kwargs)
    plain = CachedMultiHeadAttention(num_heads=4, key_dim=3, **kwargs)
    x = _data(2, 4, WIDTH)
    chunky(x, x)
    plain(x, x)
    plain.set_weights(chunky.get_weights())
    return chunky, plain


def _masked(ids: np.ndarray) -> tf.Tensor:
    keras.utils.set_random_seed(3)
    return keras.layers.Embedding(10, WIDTH, mask_zero=True)(ids)


LAYER_CASES = {
    "causal": (dict(), dict()),
    "bidirectional with a (B, T, S) mask": (dict(), dict(use_causal_mask=False, attention_mask="full")),
    "causal with a (T, S) mask": (dict(), dict(attention_mask="two-d")),
    "keras padding masks": (dict(), dict(masked=True)),
    "grouped heads and RoPE": (dict(num_key_value_heads=2, rotary=True), dict()),
    "sliding window": (dict(sliding_window=4), dict()),
    "gate and dropout at inference": (dict(use_gate=True, dropout=0.5), dict(training=False)),
}


@pytest.mark.parametrize("name", list(LAYER_CASES))
def test_the_layer_gives_the_plain_layer_outputs_and_gradients(name):
    if "use_gate" in LAYER_CASES[name][0] and "use_gate" not in inspect.signature(keras.layers.MultiHeadAttention.__init__).parameters:
        LAYER_CASES[name][0].pop("use_gate")
    layer_kwargs, call = LAYER_CASES[name]
    chunky, plain = _twins(**layer_kwargs)
    call = dict(call)
    query_ids = np.array([[3, 5, 2, 4, 1, 1, 2, 0, 0, 0, 0], [1, 4, 6, 7, 1, 2, 3, 4, 5, 6, 0]])
    mask = call.pop("attention_mask", None)
    if mask == "full":
        call["attention_mask"] = np.random.default_rng(1).random((2, 11, 11)) < 0.6
    elif mask == "two-d":
        call["attention_mask"] = np.random.default_rng(2).random((11, 11)) < 0.6
    masked = call.pop("masked", False)

    def run(layer):
        x = _masked(query_ids) if masked else tf.constant(_data(2, 11, WIDTH, seed=7))
        with tf.GradientTape() as tape:
            tape.watch(x)
            outputs = layer(x, x, **call)
            loss = tf.reduce_sum(tf.sin(outputs))
        return outputs, tape.gradient(loss, [x, *layer.trainable_weights])

    outputs, grads = run(chunky)
    expected, expected_grads = run(plain)
    np.testing.assert_allclose(outputs.numpy(), expected.numpy(), atol=2e-6)
    for grad, reference in zip(grads, expected_grads):
        np.testing.assert_allclose(grad.numpy(), reference.numpy(), atol=1e-5)


def test_the_layer_fits_in_a_functional_model_under_xla_like_the_plain_layer():
    chunky, plain = _twins(num_key_value_heads=2)
    models = []
    for layer in (chunky, plain):
        inputs = keras.Input((None, WIDTH))
        model = keras.Model(inputs, keras.layers.Dense(2, kernel_initializer="ones")(layer(inputs, inputs)))
        model.compile(keras.optimizers.SGD(0.01), "mse", jit_compile=True)
        models.append(model)
    before = [weight.copy() for weight in models[0].get_weights()]
    x, y = _data(4, 10, WIDTH, seed=8), _data(4, 10, 2, seed=9)
    for model in models:
        model.fit(x, y, epochs=2, batch_size=2, verbose=0, shuffle=False)
    for ours, reference in zip(models[0].get_weights(), models[1].get_weights()):
        np.testing.assert_allclose(ours, reference, atol=1e-5)
    moved = [not np.allclose(old, new) for old, new in zip(before, models[0].get_weights())]
    assert sum(moved) >= len(moved) - 1  # all but the key bias, to which a softmax is blind


def test_the_layer_option_round_trips_in_the_harness():
    x = _data(2, 7, WIDTH)
    run_layer_test(
        CachedMultiHeadAttention, dict(num_heads=2, key_dim=4, attention_chunk_size=3), (x, x),
        expected_output_shape=(2, 7, WIDTH),
        reference_fn=lambda layer, q, v: _plain_twin(layer, q, v),
        run_training=False,  # the compiled fit, against the plain layer, is the test above
    )


def _plain_twin(layer, query, value):
    config = {key: item for key, item in layer.get_config().items() if key not in ("attention_chunk_size", "name")}
    twin = CachedMultiHeadAttention.from_config(config)
    twin(query, value)
    twin.set_weights(layer.get_weights())
    return twin(query, value).numpy()


def test_the_option_is_in_the_config_only_when_set_and_the_plain_path_serves_scores():
    chunky, plain = _twins()
    assert "attention_chunk_size" not in plain.get_config()
    assert chunky.get_config()["attention_chunk_size"] == 3
    assert CachedMultiHeadAttention.from_config(chunky.get_config()).attention_chunk_size == 3
    x = _data(2, 6, WIDTH)
    outputs, scores = chunky(x, x, return_attention_scores=True)  # the weights need the plain kernel
    expected, expected_scores = plain(x, x, return_attention_scores=True)
    np.testing.assert_allclose(scores.numpy(), expected_scores.numpy(), atol=1e-6)
    np.testing.assert_allclose(outputs.numpy(), expected.numpy(), atol=1e-6)


@pytest.mark.parametrize("value", [0, -2, 2.5, True, "8"])
def test_a_bad_chunk_size_is_named(value):
    with pytest.raises(ValueError, match=r"Received an invalid value for argument `attention_chunk_size`, expected a positive integer or `None`\. Received: attention_chunk_size="):
        CachedMultiHeadAttention(num_heads=2, key_dim=4, attention_chunk_size=value)


def test_the_docstring_example_runs():
    import doctest

    result = doctest.testmod(chunked, extraglobs={"tf": tf}, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted >= 3 and result.failed == 0

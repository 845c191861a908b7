"""A serving loop from Python: a ``tf.Variable`` key/value cache written in place, one decode step per call.

References: the tensor cache path (``cached_attention`` on a tensor, whose
result is compared position by position), one causal pass over the whole
sequence, and numpy for the written slots. The in-place claim is checked on the
variable's buffer address after every call.
"""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given
from hypothesis import strategies as st

from benchmarks.bench_serving import buffer_address
from mlable_core import attention, cache as kv_cache, testing
from mlable_keras.layers.transformer import CachedMultiHeadAttention
from tests import strategies


def _qkv(case: strategies.DecodeCase, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(case.batch, case.length, case.heads, case.head_dim)).astype("float32")


@given(strategies.decode_cases(), st.sampled_from(["eager", "graph", "xla"]), st.integers(0, 2**16))
def test_a_variable_cache_equals_the_tensor_cache_position_by_position(case, mode, seed):
    x = _qkv(case, seed)
    variable = tf.Variable(kv_cache.create_cache(case.batch, case.slots, case.heads, case.head_dim), trainable=False)

    def step_variable(chunk, step):
        output, returned = attention.cached_attention(chunk, chunk, chunk, variable, step)
        assert returned is variable
        return output

    if mode != "eager":
        step_variable = tf.function(step_variable, jit_compile=mode == "xla")
    tensor = kv_cache.create_cache(case.batch, case.slots, case.heads, case.head_dim)
    position = 0
    for size in case.chunks:
        chunk = x[:, position : position + size]
        output = step_variable(chunk, tf.constant(position))
        expected, tensor = attention.cached_attention(chunk, chunk, chunk, tensor, position)
        np.testing.assert_allclose(output.numpy(), expected.numpy(), atol=1e-6)
        np.testing.assert_array_equal(variable.numpy(), tensor.numpy())
        position += size

    # and the whole decoding equals one causal pass
    variable.assign(tf.zeros_like(variable))
    testing.check_cached_decoding(
        lambda chunk, cache, step: (step_variable(chunk, tf.constant(step)), cache),
        lambda inputs: attention.attention(inputs, inputs, inputs),
        x, case.chunks, None,
    )


def test_update_cache_writes_the_variable_in_place_and_returns_it():
    variable = tf.Variable(kv_cache.create_cache(1, 6, 1, 2), trainable=False)
    new = tf.reshape(tf.range(6, dtype=tf.float32), (1, 3, 1, 2))
    assert kv_cache.update_cache(variable, new, -new, 2) is variable
    expected = np.zeros((2, 1, 6, 1, 2), "float32")
    expected[0, 0, 2:5, 0] = np.arange(6).reshape(3, 2)
    expected[1, 0, 2:5, 0] = -np.arange(6).reshape(3, 2)
    np.testing.assert_array_equal(variable.numpy(), expected)
    kv_cache.update_cache(variable, 2 * new[:, :1], 2 * new[:, :1], 3)  # a slot written twice holds the last write
    expected[:, 0, 3, 0] = [0.0, 2.0]
    np.testing.assert_array_equal(variable.numpy(), expected)


def test_the_layer_decodes_from_python_with_a_variable_cache():
    layer = CachedMultiHeadAttention(num_heads=4, key_dim=8, num_key_value_heads=2, rotary=True)
    x = tf.constant(np.random.default_rng(1).normal(size=(2, 9, 16)).astype("float32"))
    full = layer(x, x)  # one causal pass
    variable = tf.Variable(attention.create_cache(2, 16, 2, 8), trainable=False)
    outputs, returned = layer(x[:, :4], x[:, :4], cache=variable, step=0)  # prefill, eagerly
    assert returned is variable
    np.testing.assert_allclose(outputs.numpy(), full[:, :4].numpy(), atol=1e-5)
    step = tf.function(lambda token, position: layer(token, token, cache=variable, step=position)[0])
    for position in range(4, 9):
        outputs = step(x[:, position : position + 1], tf.constant(position))
        np.testing.assert_allclose(outputs.numpy(), full[:, position : position + 1].numpy(), atol=1e-5)
    assert step.experimental_get_tracing_count() == 1


def test_no_copy_of_the_cache_per_call():
    # 4 MiB: large enough that TensorFlow's buffer is what numpy views (tiny tensors may be copied on export)
    batch, slots, heads, head_dim = 2, 1024, 4, 64
    layer = CachedMultiHeadAttention(num_heads=heads, key_dim=head_dim)
    token = tf.constant(np.random.default_rng(2).normal(size=(batch, 1, 32)).astype("float32"))
    variable = tf.Variable(attention.create_cache(batch, slots, heads, head_dim), trainable=False)
    step = tf.function(lambda position: layer(token, token, cache=variable, step=position)[0])
    step(tf.constant(0))  # the first write moves the variable off its initial value's buffer
    address = buffer_address(variable)
    for position in range(1, 6):
        step(tf.constant(position)).numpy()
        assert buffer_address(variable) == address, f"the cache was copied at call {position}"
    # the check can fail: a read held across a call forces TensorFlow to copy the buffer before writing
    held = variable.read_value()
    step(tf.constant(6)).numpy()
    assert buffer_address(variable) != address
    del held


def test_overflow_of_a_variable_cache():
    variable = tf.Variable(kv_cache.create_cache(1, 4, 1, 2), trainable=False)
    x = tf.ones((1, 2, 1, 2))
    with pytest.raises(ValueError, match=r"The new positions must fit in the cache: 0 <= step and step \+ T <= S.*step=3, T=2 new positions, S=4 slots"):
        attention.cached_attention(x, x, x, variable, 3)
    graph = tf.function(lambda step: attention.cached_attention(x, x, x, variable, step)[0])
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"The new positions must fit in the cache"):
        graph(tf.constant(3))
    np.testing.assert_array_equal(variable.numpy(), 0.0)  # nothing written
    xla = tf.function(lambda step: attention.cached_attention(x, x, x, variable, step)[0], jit_compile=True)
    assert np.isnan(xla(tf.constant(3)).numpy()).all()  # under XLA the overflow shows in the output
    np.testing.assert_array_equal(variable.numpy()[:, :, :3], 0.0)  # and no slot in range was written


ERRORS = [
    (lambda v, x: attention.cached_attention(x, x, x, v, None), r"A variable cache is written in place at a `step` .*; appending \(step=None\) needs a tensor cache"),
    (lambda v, x: kv_cache.append_cache(v, x, x), r"append_cache \(a variable cannot grow: write at a `step` with update_cache\) needs a tensor cache"),
    (lambda v, x: attention.ring_attention(x, x, x, v, 0), r"a ring cache needs a tensor cache\. Received: cache, a tf\.Variable of shape \(2, 1, 4, 1, 2\)"),
    (lambda v, x: kv_cache.update_ring_cache(v, x, x, 0), r"a ring cache needs a tensor cache"),
]


@pytest.mark.parametrize("call,message", ERRORS)
def test_what_a_variable_cache_cannot_do_is_named(call, message):
    variable = tf.Variable(kv_cache.create_cache(1, 4, 1, 2), trainable=False)
    with pytest.raises(TypeError, match=message):
        call(variable, tf.ones((1, 1, 1, 2)))

"""UTF-32-BE byte codecs: encode, decode, trim, untrim."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given
from hypothesis import strategies as st

from mlable_core import text
from tests import strategies


def python_utf32(value: str, size: int) -> np.ndarray:
    """The reference: Python's own UTF-32-BE codec, cut to ``size`` characters and zero-padded."""
    data = np.frombuffer(value[:size].encode("utf-32-be"), dtype=np.uint8)
    return np.pad(data, (0, 4 * size - data.size))


def decoded(tensor: tf.Tensor) -> list[str]:
    return [item.decode("utf-8") for item in np.asarray(tensor.numpy()).reshape(-1)]


@given(st.lists(strategies.texts(), min_size=1, max_size=4), st.integers(0, 3))
def test_round_trip_and_python_reference(values, extra):
    size = max(len(value) for value in values) + extra or 1
    data = text.encode(values, size)
    assert data.dtype == tf.uint8 and data.shape == (len(values), 4 * size)
    np.testing.assert_array_equal(data.numpy(), np.stack([python_utf32(value, size) for value in values]))
    assert decoded(text.decode(data)) == values


@given(strategies.texts(min_size=1, max_size=16), st.integers(1, 8))
def test_long_text_is_cut_at_a_character_boundary(value, size):
    data = text.encode([value], size)
    np.testing.assert_array_equal(data.numpy()[0], python_utf32(value, size))
    assert decoded(text.decode(data)) == [value[:size]]


@given(st.lists(strategies.texts(), min_size=1, max_size=3), st.integers(1, 12))
def test_trimmed_round_trip(values, size):
    data = text.encode(values, size)
    trimmed = text.trim(data)
    assert trimmed.shape == (len(values), 3 * size)
    # reference: drop byte 0 of each group of 4 with numpy
    np.testing.assert_array_equal(trimmed.numpy(), np.delete(data.numpy(), np.s_[::4], axis=-1))
    np.testing.assert_array_equal(text.untrim(trimmed).numpy(), data.numpy())
    assert decoded(text.decode(text.untrim(trimmed))) == [value[:size] for value in values]


def test_seed_example_bytes_and_scalar_input():
    # "a" is (0, 0, 0, 97) in UTF-32-BE, as the seed README says
    np.testing.assert_array_equal(text.encode("a", 1).numpy(), [0, 0, 0, 97])
    np.testing.assert_array_equal(text.encode(["😀"], 1).numpy(), [[0, 1, 0xF6, 0]])
    assert text.decode(text.encode("abc", 2)).numpy() == b"ab"


def test_nested_shapes_string_tensors_and_bytes():
    values = [["a", "bc"], ["中文", "😀!"]]
    data = text.encode(tf.constant(values), 2)
    assert data.shape == (2, 2, 8)
    assert text.decode(data).numpy().tolist() == [[item.encode() for item in row] for row in values]
    assert decoded(text.decode(text.encode([b"\xc3\xa9t\xc3\xa9"], 3))) == ["été"]
    assert text.encode([], 2).shape == (0, 8)


def test_padding_and_nul_characters():
    # only the trailing zeros are padding; an inner NUL survives
    assert decoded(text.decode(text.encode(["a\x00b"], 5))) == ["a\x00b"]
    assert decoded(text.decode(np.zeros((2, 8), np.uint8))) == ["", ""]
    assert decoded(text.decode(np.zeros((1, 0), np.uint8))) == [""]


INVALID = np.array([[0, 0, 0, 97, 0, 0x11, 0, 0, 0, 0, 0xD8, 0x01, 0, 0, 0, 98]], dtype=np.uint8)


def test_invalid_sequences_replace_ignore_strict():
    assert decoded(text.decode(INVALID)) == ["a\ufffd\ufffdb"]
    assert decoded(text.decode(INVALID, errors="ignore")) == ["ab"]
    with pytest.raises(ValueError, match=r"invalid UTF-32-BE sequence: the bytes \[0, 17, 0, 0\] at positions \[4, 8\) of row 0"):
        text.decode(INVALID, errors="strict")
    # a "byte" outside [0, 255] in a wider integer tensor is invalid too, never wrapped around
    wide = np.array([[0, 0, 0, 97, 0, 0, 1, 256]], dtype=np.int32)
    assert decoded(text.decode(wide)) == ["a\ufffd"]
    with pytest.raises(ValueError, match=r"the bytes \[0, 0, 1, 256\]"):
        text.decode(wide, errors="strict")
    assert decoded(text.decode(INVALID[:, :4], errors="strict")) == ["a"]


def test_strict_error_in_graph_mode():
    strict = tf.function(lambda data: text.decode(data, errors="strict"), input_signature=[tf.TensorSpec([None, None], tf.uint8)])
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"invalid UTF-32-BE sequence \(errors=strict\)"):
        strict(INVALID)
    assert decoded(strict(INVALID[:, :4])) == ["a"]


def test_graph_with_unknown_dims():
    values = tf.constant(["héllo", "😀😀", ""])
    encode = tf.function(lambda texts: text.encode(texts, 4), input_signature=[tf.TensorSpec([None], tf.string)])
    data = encode(values)
    np.testing.assert_array_equal(data.numpy(), text.encode(values, 4).numpy())
    decode = tf.function(text.decode, input_signature=[tf.TensorSpec([None, None], tf.uint8)])
    assert decoded(decode(data)) == ["héll", "😀😀", ""]


@pytest.mark.parametrize("signature", [None, [tf.TensorSpec([None, None, None], tf.int32)]])
def test_trim_untrim_under_xla_and_other_axes(signature):
    data = np.random.default_rng(0).integers(0, 256, size=(2, 12, 3)).astype(np.int32)
    data[:, ::4] = 0  # valid UTF-32 groups along axis 1
    reference = np.delete(data, np.s_[::4], axis=1)
    trim = tf.function(lambda x: text.trim(x, axis=1), input_signature=signature, jit_compile=True)
    untrim = tf.function(lambda x: text.untrim(x, axis=-2), input_signature=signature, jit_compile=True)
    np.testing.assert_array_equal(trim(data).numpy(), reference)
    np.testing.assert_array_equal(text.trim(data, axis=1).numpy(), reference)
    np.testing.assert_array_equal(untrim(trim(data)).numpy(), data)
    # floats (e.g. features along the byte axis) are trimmed without the zero check
    features = tf.ones((2, 8, 5))
    assert text.trim(features, axis=1).shape == (2, 6, 5)


ERRORS = [
    (lambda: text.encode(["a"], 0), ValueError, r"`size` must be an int >= 1\. Received: size=0"),
    (lambda: text.encode(["a"], "3"), TypeError, r"`size` must be an int\. Received: size='3'"),
    (lambda: text.encode(["a"], 2, errors="bogus"), ValueError, r"`errors` must be one of \('strict', 'replace', 'ignore'\)\. Received: errors='bogus'"),
    (lambda: text.encode([1, 2], 2), TypeError, r"`texts` must be a str, a sequence of str / bytes or a tf.string tensor"),
    (lambda: text.encode(tf.constant([1, 2]), 2), TypeError, r"`texts` must hold strings\. Received: a tensor of dtype int32"),
    (lambda: text.decode(np.zeros((2, 8), np.float32)), TypeError, r"`data` must hold integer byte values\. Received: dtype=float32, shape=\(2, 8\)"),
    (lambda: text.decode(np.zeros((2, 6), np.uint8)), ValueError, r"Axis 1 of `data` must be a multiple of 4 bytes\. Received: shape=\(2, 6\)"),
    (lambda: text.decode(np.zeros((), np.uint8)), ValueError, r"`data` must have rank >= 1"),
    (lambda: text.decode(np.zeros((2, 8), np.uint8), errors="surrogateescape"), ValueError, r"`errors` must be one of"),
    (lambda: text.trim(np.zeros((2, 6), np.uint8)), ValueError, r"Axis 1 of `data` must be a multiple of 4 bytes\. Received: shape=\(2, 6\)"),
    (lambda: text.trim(np.zeros((2, 8), np.uint8), axis=2), ValueError, r"`axis` must be in \[-2, 2\)\. Received: axis=2"),
    (lambda: text.trim(np.array([[1, 0, 0, 97]], np.uint8)), ValueError, r"whose first byte is 0: `trim` would drop a nonzero byte"),
    (lambda: text.untrim(np.zeros((2, 8), np.uint8)), ValueError, r"Axis 1 of `data` must be a multiple of 3 bytes\. Received: shape=\(2, 8\)"),
]


@pytest.mark.parametrize("call,error,message", ERRORS)
def test_errors(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_runtime_length_errors_in_graph():
    decode = tf.function(text.decode, input_signature=[tf.TensorSpec([None, None], tf.uint8)])
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"Axis 1 of `data` must be a multiple of 4 bytes"):
        decode(np.zeros((1, 6), np.uint8))
    trim = tf.function(text.trim, input_signature=[tf.TensorSpec([None, None], tf.uint8)])
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"`trim` would drop a nonzero byte"):
        trim(np.array([[0, 0, 0, 97, 2, 0, 0, 0]], np.uint8))

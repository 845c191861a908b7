"""Byte codecs for text: UTF-32-BE bytes, the input format of byte-level (tokun-style) models.

Every character (Unicode code point) becomes 4 bytes, most significant first,
so that a string of at most ``S`` characters is a fixed row of ``4 * S`` bytes:
``"a"`` is ``(0, 0, 0, 97)`` and ``"😀"`` (U+1F600) is ``(0, 1, 246, 0)``.
Rows are padded with zero bytes, which ``decode`` removes again.

Every code point is below ``0x110000``, so the first byte of each group of 4 is
always 0: ``trim`` drops it (``3 * S`` bytes per row) and ``untrim`` puts it
back, losslessly.

``encode`` and ``decode`` use TensorFlow string ops: they run eagerly and in
``tf.function``, but not under XLA (``jit_compile=True``), which has no strings.
``trim`` and ``untrim`` are plain reshapes and slices and also run under XLA.

Shape letters: ``B`` batch (any leading axes), ``S`` characters per row.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import tensorflow as tf

from mlable_core import shapes
from mlable_core.reshaping import dynamic_dims, reshape_target

ERRORS = ("strict", "replace", "ignore")
REPLACEMENT = 0xFFFD
UNICODE_LIMIT = 0x110000
SURROGATES = (0xD800, 0xDFFF)


def _check_errors(errors: object) -> str:
    if errors not in ERRORS:
        raise ValueError(f"`errors` must be one of {ERRORS}. Received: errors={errors!r}")
    return str(errors)


def _as_strings(texts: Any) -> tf.Tensor:
    if isinstance(texts, tf.Tensor) or hasattr(texts, "dtype"):
        tensor = tf.convert_to_tensor(texts)
    else:
        try:
            tensor = tf.convert_to_tensor(texts, dtype=tf.string)
        except (TypeError, ValueError) as error:
            raise TypeError(
                f"`texts` must be a str, a sequence of str / bytes or a tf.string tensor. "
                f"Received: texts={texts!r:.80}"
            ) from error
    if tensor.dtype != tf.string:
        raise TypeError(f"`texts` must hold strings. Received: a tensor of dtype {tensor.dtype.name} and shape {tensor.shape}")
    return tensor


def encode(texts: Any, size: int, errors: str = "replace") -> tf.Tensor:
    """Encodes strings into fixed-size rows of UTF-32-BE bytes.

    Each string is read as UTF-8, cut after ``size`` characters (code points,
    so never inside a character; a base letter may still lose a combining mark
    that follows it past the cut) and padded with U+0000, then each code point
    is written as 4 big-endian bytes.

    Args:
        texts: a ``str``, a (nested) sequence of ``str`` / ``bytes``, or a
            ``tf.string`` tensor of shape ``(B,)`` (any shape works).
        size: ``S``, the number of characters per row (>= 1).
        errors: what to do with invalid UTF-8 in the input (only possible for
            ``bytes`` / string tensors): ``"replace"`` with U+FFFD (default),
            ``"ignore"`` to drop it, or ``"strict"`` to raise.

    Returns:
        A ``uint8`` tensor of shape ``texts.shape + (4 * size,)``.

    Raises:
        TypeError: ``texts`` does not hold strings or ``size`` is not an int.
        ValueError: ``size`` < 1 or ``errors`` is unknown.
        tf.errors.InvalidArgumentError: ``errors="strict"`` and invalid UTF-8.

    Example:
        >>> encode(["a😀"], size=3).numpy().tolist()
        [[0, 0, 0, 97, 0, 1, 246, 0, 0, 0, 0, 0]]
    """
    size = shapes.check_int(size, "size", minimum=1)
    errors = _check_errors(errors)
    texts = _as_strings(texts)
    flat = tf.reshape(texts, [-1])  # (B,)
    codes = tf.strings.unicode_decode(flat, "UTF-8", errors=errors, replacement_char=REPLACEMENT)  # (B, None)
    codes = codes.to_tensor(default_value=0, shape=[None, size])  # (B, S): padded and cut
    shifts = tf.constant([24, 16, 8, 0], dtype=tf.int32)
    data = tf.bitwise.bitwise_and(tf.bitwise.right_shift(codes[..., None], shifts), 0xFF)  # (B, S, 4)
    leading = dynamic_dims(texts)
    return tf.cast(tf.reshape(data, reshape_target(leading + [4 * size])), tf.uint8)  # (B, 4S)


def _check_bytes(data: Any, name: str) -> tf.Tensor:
    data = tf.convert_to_tensor(data)
    if data.shape.rank is None or data.shape.rank < 1:
        raise ValueError(f"`{name}` must have rank >= 1 (bytes on the last axis). Received: shape={data.shape}")
    if not data.dtype.is_integer:
        raise TypeError(f"`{name}` must hold integer byte values. Received: dtype={data.dtype.name}, shape={data.shape}")
    return data


def _group_checks(dim: int | tf.Tensor, group: int, name: str, axis: int, shape: shapes.Shape) -> list[tf.Operation]:
    """Static (ValueError) or run-time (assertion) check that ``group`` divides ``dim``."""
    message = f"Axis {axis} of `{name}` must be a multiple of {group} bytes. Received: shape={shape}"
    if isinstance(dim, int):
        if dim % group:
            raise ValueError(message)
        return []
    return [tf.debugging.Assert(tf.equal(tf.math.floormod(dim, group), 0), [message, "axis length at run time:", dim])]


def _code_points(data: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """``(..., 4S)`` bytes -> ``(..., S)`` int64 code points and whether each group of 4 is valid."""
    dims = dynamic_dims(data)
    groups = tf.reshape(tf.cast(data, tf.int64), reshape_target(dims[:-1] + [dims[-1] // 4, 4]))  # (B, S, 4)
    in_range = tf.reduce_all((groups >= 0) & (groups <= 0xFF), axis=-1)
    weights = tf.constant([1 << 24, 1 << 16, 1 << 8, 1], dtype=tf.int64)
    codes = tf.reduce_sum(groups * weights, axis=-1)  # (B, S)
    surrogate = (codes >= SURROGATES[0]) & (codes <= SURROGATES[1])
    valid = in_range & (codes >= 0) & (codes < UNICODE_LIMIT) & ~surrogate
    return codes, valid


def _strict_error(data: np.ndarray, codes: np.ndarray, invalid: np.ndarray) -> ValueError:
    """The error of ``errors="strict"``, pointing at the first invalid group (eager mode)."""
    location = np.argwhere(invalid)[0]
    row, column = tuple(int(item) for item in location[:-1]), int(location[-1])
    found = data[row][4 * column : 4 * column + 4].tolist()
    where = "" if not row else f" of row {row[0] if len(row) == 1 else row}"
    return ValueError(
        f"`data` holds an invalid UTF-32-BE sequence: the bytes {found} at positions "
        f"[{4 * column}, {4 * column + 4}){where} (value {int(codes[row + (column,)]):#x}) are not a Unicode scalar value "
        "(bytes in [0, 255] forming a code point below 0x110000 that is not a surrogate). "
        f"Pass errors='replace' (U+FFFD) or errors='ignore' to decode it anyway. Received: shape={data.shape}"
    )


def decode(data: Any, errors: str = "replace") -> tf.Tensor:
    """Decodes rows of UTF-32-BE bytes into strings, removing the padding.

    The trailing U+0000 characters of each row (the padding of ``encode``) are
    removed; a U+0000 followed by other characters is kept. A group of 4 bytes
    that is not a Unicode scalar value (a byte outside ``[0, 255]``, a value of
    ``0x110000`` or more, or a surrogate ``0xD800..0xDFFF``) is invalid.

    Args:
        data: an integer tensor of shape ``(B, 4 * S)`` (any leading axes) whose
            last axis holds the bytes.
        errors: ``"replace"`` invalid groups with U+FFFD (default), ``"ignore"``
            them, or ``"strict"``: raise.

    Returns:
        A ``tf.string`` tensor of shape ``(B,)`` (the leading axes of ``data``), UTF-8 encoded.

    Raises:
        TypeError: ``data`` does not hold integers.
        ValueError: the last axis is not a multiple of 4, ``errors`` is unknown,
            or (eagerly) ``errors="strict"`` and an invalid group, whose row and
            bytes the message gives.
        tf.errors.InvalidArgumentError: the same problems found at run time in a
            ``tf.function`` (a length unknown while tracing, ``errors="strict"``).

    Example:
        >>> decode(encode(["a😀", "é"], size=3)).numpy().tolist() == ["a😀".encode(), "é".encode()]
        True
    """
    errors = _check_errors(errors)
    data = _check_bytes(data, "data")
    static = tuple(data.shape.as_list())
    dims = dynamic_dims(data)
    checks = _group_checks(dims[-1], 4, "data", len(static) - 1, static)
    with tf.control_dependencies(checks):
        codes, valid = _code_points(data)  # (B, S)
    # the length of a row is the position after its last non-zero code point
    positions = tf.range(1, tf.shape(codes, out_type=tf.int64)[-1] + 1, dtype=tf.int64)
    lengths = tf.reduce_max(tf.where(tf.not_equal(codes, 0), positions, tf.zeros_like(positions)), axis=-1)
    lengths = tf.maximum(lengths, 0)  # rows without bytes at all
    inside = tf.sequence_mask(lengths, tf.shape(codes, out_type=tf.int64)[-1])
    invalid = inside & ~valid
    if errors == "strict":
        if tf.executing_eagerly():
            if bool(tf.reduce_any(invalid)):
                raise _strict_error(data.numpy(), codes.numpy(), invalid.numpy())
        else:
            message = "`data` holds an invalid UTF-32-BE sequence (errors=strict); index of the first invalid code point:"
            assertion = tf.debugging.Assert(~tf.reduce_any(invalid), [message, tf.where(invalid)[:1]], summarize=8)
            with tf.control_dependencies([assertion]):
                codes = tf.identity(codes)
    leading = dims[:-1]
    count = dims[-1] // 4
    codes = tf.where(valid, codes, tf.constant(REPLACEMENT, tf.int64))
    flat = [-1, count]
    codes = tf.reshape(tf.cast(codes, tf.int32), reshape_target(flat))  # (B, S) with B flattened
    valid = tf.reshape(valid, reshape_target(flat))
    lengths = tf.reshape(lengths, [-1])
    ragged = tf.RaggedTensor.from_tensor(codes, lengths=lengths)  # (B, None)
    if errors == "ignore":
        ragged = tf.ragged.boolean_mask(ragged, tf.RaggedTensor.from_tensor(valid, lengths=lengths))
    strings = tf.strings.unicode_encode(ragged, "UTF-8")  # (B,)
    return tf.reshape(strings, reshape_target(leading))


def _axis_split(data: tf.Tensor, axis: int, group: int, name: str) -> tuple[list[int | tf.Tensor], int, list[tf.Operation]]:
    static = tuple(data.shape.as_list())
    position = shapes.normalize_axis(axis, len(static), "axis", static)
    dims = dynamic_dims(data)
    checks = _group_checks(dims[position], group, name, position, static)
    return dims, position, checks


def trim(data: Any, axis: int = -1) -> tf.Tensor:
    """Drops the first byte of every 4-byte UTF-32-BE code point: ``4 * S`` -> ``3 * S`` bytes.

    That byte is always 0 for a valid code point, so no information is lost and
    ``untrim(trim(data)) == data``. For integer data the dropped bytes are
    checked to be 0 eagerly and in ``tf.function`` (assertions are dropped under
    XLA); other dtypes (e.g. features laid along the byte axis) are not checked.

    Args:
        data: a tensor of known rank whose ``axis`` holds the bytes, in groups of 4.
        axis: the byte axis (default: the last).

    Returns:
        A tensor of the same dtype with ``axis`` of length ``3 * S``.

    Raises:
        ValueError: ``axis`` is out of range, its static length is not a multiple
            of 4, or (eagerly) integer data has a nonzero byte to drop.
        tf.errors.InvalidArgumentError: in graph mode, a length unknown while tracing
            is not a multiple of 4, or integer data has a nonzero byte to drop.

    Example:
        >>> trim(encode(["a😀"], size=2)).numpy().tolist()
        [[0, 0, 97, 1, 246, 0]]
    """
    data = tf.convert_to_tensor(data)
    if data.shape.rank is None or data.shape.rank < 1:
        raise ValueError(f"`data` must have rank >= 1. Received: shape={data.shape}")
    dims, position, checks = _axis_split(data, axis, 4, "data")
    with tf.control_dependencies(checks):
        count = dims[position] // 4
        groups = tf.reshape(data, reshape_target(dims[:position] + [count, 4] + dims[position + 1 :]))  # (B, S, 4)
        index = [slice(None)] * (position + 1) + [slice(0, 1)]
        if data.dtype.is_integer:
            message = (
                "`data` must hold UTF-32-BE code points, whose first byte is 0: `trim` would drop a nonzero byte. "
                f"Received: shape={tuple(data.shape.as_list())}, axis={axis}"
            )
            dropped_are_zero = tf.reduce_all(tf.equal(groups[tuple(index)], 0))
            if tf.executing_eagerly():
                if not bool(dropped_are_zero):
                    raise ValueError(message)
            else:
                checks = [tf.debugging.Assert(dropped_are_zero, [message])]
        index[-1] = slice(1, 4)
    with tf.control_dependencies(checks):
        kept = groups[tuple(index)]  # (B, S, 3)
        return tf.reshape(kept, reshape_target(dims[:position] + [3 * count] + dims[position + 1 :]))  # (B, 3S)


def untrim(data: Any, axis: int = -1) -> tf.Tensor:
    """Puts back the zero first byte of every code point: ``3 * S`` -> ``4 * S`` bytes.

    The inverse of ``trim``: ``trim(untrim(data)) == data``.

    Args:
        data: a tensor of known rank whose ``axis`` holds trimmed bytes, in groups of 3.
        axis: the byte axis (default: the last).

    Returns:
        A tensor of the same dtype with ``axis`` of length ``4 * S``.

    Raises:
        ValueError: ``axis`` is out of range or its static length is not a multiple of 3.
        tf.errors.InvalidArgumentError: in graph mode, a length unknown while
            tracing is not a multiple of 3.

    Example:
        >>> untrim(trim(encode(["a"], size=1))).numpy().tolist()
        [[0, 0, 0, 97]]
    """
    data = tf.convert_to_tensor(data)
    if data.shape.rank is None or data.shape.rank < 1:
        raise ValueError(f"`data` must have rank >= 1. Received: shape={data.shape}")
    dims, position, checks = _axis_split(data, axis, 3, "data")
    with tf.control_dependencies(checks):
        count = dims[position] // 3
        groups = tf.reshape(data, reshape_target(dims[:position] + [count, 3] + dims[position + 1 :]))  # (B, S, 3)
        padding = [[0, 0]] * (position + 1) + [[1, 0]] + [[0, 0]] * (len(dims) - position - 1)
        full = tf.pad(groups, padding)  # (B, S, 4)
        return tf.reshape(full, reshape_target(dims[:position] + [4 * count] + dims[position + 1 :]))  # (B, 4S)


__all__ = ["decode", "encode", "trim", "untrim"]

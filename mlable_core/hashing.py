"""Hashes of the byte n-grams ending at each position (BLT's hash n-gram embeddings).

For each size ``n`` and each position ``t``, the n-gram ``x[t - n + 1 .. t]`` is
hashed with a polynomial over the byte values plus one::

    h_n(t) = sum_{i = 0}^{n - 1} (x[t - i] + 1) * base ** i   mod modulus
    bucket_n(t) = h_n(t) mod num_buckets

so the same n-gram gets the same bucket at any position and in any row.

**Before the start.** An n-gram that reaches before the first byte (``t < n - 1``)
takes the value 0 for its missing bytes (real bytes count ``x + 1``, from 1 to
256): it hashes as the shorter n-gram at the start of the sequence, padded with
a "before the start" symbol that no byte value equals. So the first ``n - 1``
positions get buckets of their own kind, the same at the start of every row.

**Exact integer arithmetic.** The weights ``base ** i mod modulus`` are computed
in Python integers; with ``modulus < 2 ** 31`` each term ``(x + 1) * weight`` is
below ``2 ** 40``, so the int64 sum of the ``n`` terms cannot wrap (for any
``n < 2 ** 23``), and one modulo per size gives the exact hash: the same
eagerly, in graphs and under XLA, on any device. The sizes are computed
together, each adding one term to the previous one.

Shape letters: ``S`` bytes along the last axis (any leading axes); the number
of n-gram sizes and of buckets per size are spelled out (``len(ngram_sizes)``,
``num_buckets``), their glossary letters meaning heads.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import tensorflow as tf

from mlable_core import patching, shapes

NGRAM_SIZES: tuple[int, ...] = (3, 4, 5, 6, 7, 8)
# a prime base above the 257 symbol values, and the Mersenne prime 2 ** 31 - 1
BASE = 1_000_003
MODULUS = 2**31 - 1


def check_ngram_sizes(ngram_sizes: object) -> tuple[int, ...]:
    """The n-gram sizes as a tuple of distinct ints >= 1, in the order given."""
    if isinstance(ngram_sizes, (str, bytes)) or not isinstance(ngram_sizes, Sequence) or not ngram_sizes:
        raise TypeError(f"`ngram_sizes` must be a non-empty sequence of ints >= 1. Received: ngram_sizes={ngram_sizes!r}")
    sizes = tuple(shapes.check_int(size, "ngram_sizes", minimum=1) for size in ngram_sizes)
    if len(set(sizes)) != len(sizes):
        raise ValueError(f"`ngram_sizes` must not repeat a size. Received: ngram_sizes={list(ngram_sizes)}")
    return sizes


def check_hash_arguments(num_buckets: object, base: object, modulus: object) -> tuple[int, int, int]:
    num_buckets = shapes.check_int(num_buckets, "num_buckets", minimum=1)
    modulus = shapes.check_int(modulus, "modulus", minimum=2)
    if modulus >= 2**31:
        raise ValueError(f"`modulus` must be < 2 ** 31, so that int64 products cannot wrap. Received: modulus={modulus}")
    base = shapes.check_int(base, "base", minimum=2)
    return num_buckets, base, modulus


def ngram_hashes(
    data: Any,
    num_buckets: int,
    ngram_sizes: Sequence[int] = NGRAM_SIZES,
    base: int = BASE,
    modulus: int = MODULUS,
) -> tf.Tensor:
    """The bucket of the n-gram ending at each byte, for each size: ``(..., S)`` bytes to ``(..., S, len(ngram_sizes))`` int32.

    Vectorised: one shifted multiply-add per size up to ``max(ngram_sizes)`` on
    the whole tensor (a Python loop over the sizes, never over positions).

    Args:
        data: integer bytes in ``[0, 255]``, shape ``(..., S)`` with rank >= 1.
        num_buckets: the buckets per size; the output lies in ``[0, num_buckets)``.
        ngram_sizes: the sizes ``n``, in the order of the last output axis (BLT: 3 to 8).
        base: the polynomial base, an int >= 2.
        modulus: the hash modulus, an int in ``[2, 2 ** 31)``.

    Returns:
        ``(..., S, len(ngram_sizes))`` int32 buckets.

    Raises:
        TypeError: ``data`` is not an integer tensor, or an argument has the wrong type.
        ValueError: a bad argument; eagerly, a byte outside ``[0, 255]`` (an
            ``InvalidArgumentError`` in graphs; not checked under XLA).

    Example:
        >>> ids = ngram_hashes(tf.constant([list(b"abcabc")]), num_buckets=1000, ngram_sizes=(3,))
        >>> bool(ids[0, 2, 0] == ids[0, 5, 0])  # "abc" at positions 2 and 5
        True
    """
    num_buckets, base, modulus = check_hash_arguments(num_buckets, base, modulus)
    sizes = check_ngram_sizes(ngram_sizes)
    data = tf.convert_to_tensor(data)
    if data.shape.rank is None or data.shape.rank < 1:
        raise ValueError(f"`data` must have rank >= 1, bytes on the last axis (..., S). Received: data with shape {shapes.format_shape(data.shape)}")
    values, checks = patching.check_bytes(data)
    width = max(sizes)
    with tf.control_dependencies(checks):
        symbols = tf.cast(values, tf.int64) + 1  # (..., S), 1 to 256; 0 is "before the start"
    rank = data.shape.rank
    padded = tf.pad(symbols, [[0, 0]] * (rank - 1) + [[width - 1, 0]])  # (..., max(ngram_sizes) - 1 + S)
    length = data.shape[-1] if data.shape[-1] is not None else tf.shape(data)[-1]
    polynomial = tf.zeros_like(symbols)
    buckets = {}
    for order in range(width):
        # the symbol `order` places before each position; each term < 2 ** 9 * 2 ** 31, so a sum of
        # fewer than 2 ** 23 terms cannot wrap in int64 and one modulo at the end is exact
        before = padded[..., width - 1 - order : width - 1 - order + length]  # (..., S)
        polynomial = polynomial + before * pow(base, order, modulus)
        if order + 1 in sizes:
            hashes = tf.math.floormod(polynomial, modulus)
            buckets[order + 1] = tf.cast(tf.math.floormod(hashes, num_buckets), tf.int32)
    return tf.stack([buckets[size] for size in sizes], axis=-1)  # (..., S, len(ngram_sizes))


def ngram_ids(
    data: Any,
    num_buckets: int,
    ngram_sizes: Sequence[int] = NGRAM_SIZES,
    base: int = BASE,
    modulus: int = MODULUS,
    offset: int = 0,
) -> tf.Tensor:
    """Rows of one shared table: bucket ``k`` of the ``i``-th size is row ``offset + i * num_buckets + k``.

    Same arguments as ``ngram_hashes``; ``offset`` (an int >= 0) skips the first
    rows, e.g. the 256 byte embeddings. Returns ``(..., S, len(ngram_sizes))``
    int32 in ``[offset, offset + len(ngram_sizes) * num_buckets)``.

    Example:
        >>> ngram_ids(tf.constant([[1, 2, 3]]), num_buckets=10, ngram_sizes=(1, 2), offset=256).shape
        TensorShape([1, 3, 2])
    """
    offset = shapes.check_int(offset, "offset", minimum=0)
    buckets = ngram_hashes(data, num_buckets, ngram_sizes, base, modulus)
    sizes = check_ngram_sizes(ngram_sizes)
    starts = tf.constant([offset + index * num_buckets for index in range(len(sizes))], tf.int32)
    return buckets + starts


__all__ = ["BASE", "MODULUS", "NGRAM_SIZES", "check_hash_arguments", "check_ngram_sizes", "ngram_hashes", "ngram_ids"]

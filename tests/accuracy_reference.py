"""Independent NumPy references and data builders for the group accuracy tests.

The references follow the definitions in plain NumPy (``moveaxis`` then a
reshape over the last axis, a bit-string loop for binary values), not the
library's reshape-in-place code path.
"""

from __future__ import annotations

import numpy as np


def group_all(x: np.ndarray, group: int, axis: int) -> np.ndarray:
    """All over groups of ``group`` consecutive elements along ``axis``: moved last, reshaped, reduced."""
    moved = np.moveaxis(np.asarray(x, dtype=bool), axis, -1)
    reduced = moved.reshape(moved.shape[:-1] + (moved.shape[-1] // group, group)).all(axis=-1)
    return np.moveaxis(reduced, -1, axis)


def group_any(x: np.ndarray, group: int, axis: int) -> np.ndarray:
    moved = np.moveaxis(np.asarray(x, dtype=bool), axis, -1)
    reduced = moved.reshape(moved.shape[:-1] + (moved.shape[-1] // group, group)).any(axis=-1)
    return np.moveaxis(reduced, -1, axis)


def decode_binary(y: np.ndarray, depth: int, threshold: float, axis: int) -> np.ndarray:
    """Big-endian integers from bit strings, one value at a time (a naive loop)."""
    moved = np.moveaxis(np.asarray(y), axis, -1)
    bits = moved.reshape(moved.shape[:-1] + (moved.shape[-1] // depth, depth)) > threshold
    out = np.zeros(bits.shape[:-1], dtype=np.int64)
    for index in np.ndindex(*out.shape):
        out[index] = int("".join("1" if bit else "0" for bit in bits[index]), 2)
    return np.moveaxis(out, -1, axis)


def categorical(y_true: np.ndarray, y_pred: np.ndarray, group: int, axis: int) -> np.ndarray:
    """Per-group correctness of one-hot / probability tensors ``(..., K, C)``; ``axis`` indexes ``(..., K)``."""
    return group_all(np.argmax(y_true, axis=-1) == np.argmax(y_pred, axis=-1), group, axis).astype("float32")


def sparse_categorical(labels: np.ndarray, y_pred: np.ndarray, group: int, axis: int) -> np.ndarray:
    return group_all(labels == np.argmax(y_pred, axis=-1), group, axis).astype("float32")


def binary(y_true: np.ndarray, y_pred: np.ndarray, group: int, depth: int, threshold: float, axis: int) -> np.ndarray:
    """Per-group correctness through the decoded values (not the bits)."""
    equal = decode_binary(y_true, depth, threshold, axis) == decode_binary(y_pred, depth, threshold, axis)
    return group_all(equal, group, axis).astype("float32")


def raw(y_true: np.ndarray, y_pred: np.ndarray, group: int, factor: float, axis: int) -> np.ndarray:
    """``np.round`` rounds half to even, like the op under test is documented to."""
    equal = np.round(factor * y_true.astype("float64")) == np.round(factor * y_pred.astype("float64"))
    return group_all(equal, group, axis).astype("float32")


def weighted_share(correct: np.ndarray, weights: np.ndarray | None = None) -> float:
    """``sum(w * correct) / sum(w)`` with ``w`` aligned on the leading axes of the group-level ``correct``."""
    if weights is None:
        return float(correct.mean()) if correct.size else 0.0
    weights = np.asarray(weights, dtype="float64")
    weights = weights.reshape(weights.shape + (1,) * (correct.ndim - weights.ndim))
    weights = np.broadcast_to(weights, correct.shape)
    total = weights.sum()
    return float((weights * correct).sum() / total) if total else 0.0


# data builders: predictions close enough to the targets that groups are sometimes right, and never tied


def categorical_data(shape: tuple[int, ...], classes: int, rng: np.random.Generator, error: float = 0.15):
    """Labels, one-hot targets and probability-like predictions ``(..., K, C)`` with unique argmaxes."""
    labels = rng.integers(0, classes, size=shape)
    wrong = rng.random(shape) < error
    predicted = np.where(wrong, rng.integers(0, classes, size=shape), labels)
    y_pred = np.eye(classes, dtype="float32")[predicted] + rng.uniform(0.0, 0.5, size=shape + (classes,)).astype("float32")
    return labels, np.eye(classes, dtype="float32")[labels], y_pred


def binary_data(
    shape: tuple[int, ...], rng: np.random.Generator, threshold: float = 0.5, error: float = 0.02, soft: bool = False
):
    """Targets and predictions strictly on the right or wrong side of ``threshold``.

    The targets are 0 / 1, or with ``soft`` probabilities on the side of their bit.
    """

    def spread(bits: np.ndarray) -> np.ndarray:
        above = threshold + 0.01 + 0.4 * rng.random(shape)
        below = threshold - 0.4 * rng.random(shape)  # may equal the threshold: not strictly above, so 0
        return np.where(bits, above, below).astype("float32")

    bits = rng.random(shape) < 0.5
    flipped = np.where(rng.random(shape) < error, ~bits, bits)
    return (spread(bits) if soft else bits.astype("float32")), spread(flipped)


def raw_data(shape: tuple[int, ...], rng: np.random.Generator, factor: float = 256.0, error: float = 0.1):
    """Values ``v / factor`` and predictions within 0.4 / factor of ``v`` (or of a neighbour)."""
    values = rng.integers(1, int(factor) - 1, size=shape)
    shifted = values + np.where(rng.random(shape) < error, rng.choice([-1, 1], size=shape), 0)
    noise = rng.uniform(-0.4, 0.4, size=shape)
    return (values / factor).astype("float32"), ((shifted + noise) / factor).astype("float32")

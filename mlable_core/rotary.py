"""Rotary position embedding (RoPE): the cos / sin tables and the rotation.

Shape letters: ``B`` batch (axis 0), ``S`` sequence, ``N`` heads, ``D``
features, ``R = D - D % 2`` rotated features (an odd last feature passes through
unchanged).

Conventions, with ``j < R / 2``:

- inverse frequencies ``theta_j = max_wavelength ** (-2j / R)``;
- angle at position ``p`` (index along the sequence axis):
  ``(p + offset) / scaling_factor * theta_j``;
- each pair ``(a, b)`` of features turns by that angle:
  ``out_a = x_a cos - x_b sin`` and ``out_b = x_b cos + x_a sin``;
- pairs: ``(j, j + R / 2)`` by default ("half-split", as in GPT-NeoX, Llama and
  keras-hub), ``(2j, 2j + 1)`` with ``interleaved=True`` (the RoFormer paper).
  The two differ by a fixed permutation of the features, see ``rotate``.

Precision: positions ``p + offset`` are float32 (exact below 2 ** 24), the
inverse frequencies are a float32 constant (computed in float64, rounded once),
and the angles and their cos / sin are ALWAYS computed in float32, then cast to
the input dtype. Computing them in float16 / bfloat16 instead gives errors of
the order of 1 at positions in the thousands.

Speed: the tables have the shape of one sequence (``S`` by ``R / 2``, plus
``B`` for per-row offsets) laid out to broadcast against the input, so they are
computed once per call, never per head or per row. The rotation is then
``x * cos + swap(x) * signed_sin`` on a free reshape of the feature axis into
``(2, R / 2)`` (or ``(R / 2, 2)``), where ``swap`` reverses that axis of size 2:
under XLA this is one fused pass over the input. cos and sin come from one
complex exponential: XLA treats ``exp`` as expensive and keeps the small table
in memory, whereas a plain ``cos`` gets fused into (and recomputed for) every
element of the input (3x to 4x slower on CPU, as keras-hub's RoPE is).

Every op works eagerly, inside ``tf.function`` (any dimension but the feature
axis may be unknown) and under ``jit_compile=True``.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any

import numpy as np
import tensorflow as tf

from mlable_core import reshaping, shapes

Offset = int | tf.Tensor | np.ndarray  # an int, or integers of shape () or (B,)


def _check_positive(value: object, name: str) -> None:
    """Checks that ``value`` is a finite real number > 0 (bools excluded)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"`{name}` must be a number. Received: {name}={value!r} of type {type(value).__name__}")
    if not math.isfinite(float(value)) or value <= 0:
        raise ValueError(f"`{name}` must be a finite number > 0. Received: {name}={value!r}")


def check_arguments(max_wavelength: object, scaling_factor: object, interleaved: object) -> None:
    """Validates the constructor-like arguments shared by ``rotate`` and the Keras layer.

    Raises:
        TypeError: a value has the wrong type.
        ValueError: ``max_wavelength`` or ``scaling_factor`` is not a finite number > 0.
    """
    _check_positive(max_wavelength, "max_wavelength")
    _check_positive(scaling_factor, "scaling_factor")
    if not isinstance(interleaved, (bool, np.bool_)):
        raise TypeError(f"`interleaved` must be a bool. Received: interleaved={interleaved!r} of type {type(interleaved).__name__}")


def rotation_axes(shape: Sequence[int | None] | tf.TensorShape, sequence_axis: int, feature_axis: int) -> tuple[int, int]:
    """Normalizes ``sequence_axis`` and ``feature_axis`` for an input of shape ``shape``.

    Returns:
        ``(sequence_axis, feature_axis)``, both non-negative and distinct.

    Raises:
        ValueError: the rank is below 2, an axis is out of range, or the two axes are equal.
    """
    shape = shapes.normalize_shape(shape)
    rank = len(shape)
    if rank < 2:
        raise ValueError(
            "The input of a rotary embedding needs a sequence axis and a feature axis (rank >= 2). "
            f"Received: shape={shape}"
        )
    sequence = shapes.normalize_axis(sequence_axis, rank, "sequence_axis", shape)
    feature = shapes.normalize_axis(feature_axis, rank, "feature_axis", shape)
    if sequence == feature:
        raise ValueError(
            "`sequence_axis` and `feature_axis` must be two different axes. "
            f"Received: sequence_axis={sequence_axis}, feature_axis={feature_axis}, shape={shape}"
        )
    return sequence, feature


def rotated_dim(feature_dim: int) -> int:
    """``R``: the number of rotated features, the largest even number <= ``feature_dim``."""
    return feature_dim - feature_dim % 2


def inverse_frequencies(rotated_dim: int, max_wavelength: float = 10_000, scaling_factor: float = 1.0) -> tf.Tensor:
    """``theta_j / scaling_factor`` for ``j < R / 2``, as a float32 constant.

    ``theta_j = max_wavelength ** (-2j / R)``. The values are computed in float64
    and rounded to float32 once.

    Args:
        rotated_dim: ``R``, an even number >= 0.
        max_wavelength: the base of the geometric progression of wavelengths, > 0.
        scaling_factor: positions are divided by this factor, > 0.

    Returns:
        A float32 tensor of shape ``(R / 2,)``.

    Example:
        >>> inverse_frequencies(4, max_wavelength=100).numpy().tolist()
        [1.0, 0.10000000149011612]
    """
    return tf.constant(_frequencies(rotated_dim, max_wavelength, scaling_factor))


def _frequencies(rotated_dim: int, max_wavelength: float, scaling_factor: float) -> np.ndarray:
    """``inverse_frequencies`` as a float32 numpy array (usable while tracing)."""
    rotated_dim = shapes.check_int(rotated_dim, "rotated_dim", minimum=0)
    if rotated_dim % 2:
        raise ValueError(f"`rotated_dim` must be even. Received: rotated_dim={rotated_dim}")
    _check_positive(max_wavelength, "max_wavelength")
    _check_positive(scaling_factor, "scaling_factor")
    exponents = np.arange(0, rotated_dim, 2, dtype=np.float64) / max(rotated_dim, 1)
    values = np.power(float(max_wavelength), -exponents) / float(scaling_factor)
    return values.astype(np.float32)


def normalize_offset(offset: Offset) -> int | tf.Tensor:
    """Returns ``offset`` as a Python int, or as an integer tensor of rank 0 or 1.

    Raises:
        TypeError: ``offset`` is neither an integer nor an integer tensor.
        ValueError: ``offset`` is a tensor of rank > 1.
    """
    if isinstance(offset, bool):
        raise TypeError(f"`offset` must be an int or an integer tensor. Received: offset={offset!r} of type bool")
    if isinstance(offset, (int, np.integer)):
        return int(offset)
    if isinstance(offset, float):
        raise TypeError(f"`offset` must be an int or an integer tensor. Received: offset={offset!r} of type float")
    try:
        offset = tf.convert_to_tensor(offset)
    except (TypeError, ValueError) as error:
        raise TypeError(f"`offset` must be an int or an integer tensor. Received: offset={offset!r}") from error
    if not offset.dtype.is_integer:
        raise TypeError(
            "`offset` must be an int or an integer tensor of shape () or (B,). "
            f"Received: offset with dtype {offset.dtype.name}"
        )
    if offset.shape.rank is None or offset.shape.rank > 1:
        raise ValueError(
            "`offset` must be a scalar or a vector with one value per row, of shape () or (B,). "
            f"Received: offset with shape {offset.shape}"
        )
    return offset


def positions(length: int | tf.Tensor, offset: Offset = 0) -> tf.Tensor:
    """The int32 positions ``p + offset`` for ``p < length``.

    Args:
        length: ``S``, the number of positions (an int or a scalar tensor).
        offset: an int or a scalar integer tensor (shape ``()``), or one offset per
            row (shape ``(B,)``).

    Returns:
        An int32 tensor of shape ``(S,)``, or ``(B, S)`` for per-row offsets.

    Example:
        >>> positions(3, offset=tf.constant([0, 5])).numpy().tolist()
        [[0, 1, 2], [5, 6, 7]]
    """
    offset = normalize_offset(offset)
    steps = tf.range(length, dtype=tf.int32)
    if isinstance(offset, int):
        return steps + offset if offset else steps
    offset = tf.cast(offset, tf.int32)
    if offset.shape.rank == 1:
        return offset[:, None] + steps[None, :]  # (B, S)
    return steps + offset


def _cos_sin(angles: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    # exp(i angle) = cos + i sin: XLA keeps an `exp` table in memory instead of
    # fusing (and recomputing) it into every element of the consumer
    rotation = tf.exp(tf.complex(0.0, angles))
    return tf.math.real(rotation), tf.math.imag(rotation)


def normalize_positions(positions: Any) -> tf.Tensor | None:
    """Returns explicit ``positions`` as a float32 tensor of rank 1 ``(S,)`` or 2 ``(B, S)`` (``None`` stays ``None``).

    Raises:
        TypeError: ``positions`` is not numeric (or is boolean).
        ValueError: ``positions`` has a rank other than 1 or 2.
    """
    if positions is None:
        return None
    try:
        positions = tf.convert_to_tensor(positions)
    except (TypeError, ValueError) as error:
        raise TypeError(f"`positions` must be an integer or float tensor of shape (S,) or (B, S). Received: positions={positions!r}") from error
    if not (positions.dtype.is_integer or positions.dtype.is_floating) or positions.dtype == tf.bool:
        raise TypeError(
            "`positions` must be an integer or float tensor of shape (S,) or (B, S). "
            f"Received: positions with dtype {positions.dtype.name}"
        )
    if positions.shape.rank not in (1, 2):
        raise ValueError(
            "`positions` must have shape (S,) (shared by every row) or (B, S) (one position per row and element). "
            f"Received: positions with shape {positions.shape}"
        )
    return tf.cast(positions, tf.float32)


def _layout_explicit(positions: tf.Tensor, offset: int | tf.Tensor, rank: int, sequence_axis: int) -> tf.Tensor:
    """Explicit float32 ``positions`` (``(S,)`` or ``(B, S)``) plus ``offset``, laid out like ``_layout_positions``."""
    if isinstance(offset, int):
        if offset:
            positions = positions + float(offset)
    else:
        offset = tf.cast(offset, tf.float32)
        if offset.shape.rank == 1:
            if positions.shape.rank == 1:
                positions = positions[None, :]
            offset = offset[:, None]
        positions = positions + offset
    layout = [1] * rank
    layout[sequence_axis] = -1
    if positions.shape.rank == 2:
        layout[0] = tf.shape(positions)[0]
        layout = tf.stack([tf.constant(d) if isinstance(d, int) else d for d in layout])
    return tf.reshape(positions, layout)


def _layout_positions(length: int | tf.Tensor, offset: int | tf.Tensor, rank: int, sequence_axis: int) -> tf.Tensor:
    """``p + offset`` as float32 (exact below 2 ** 24), laid out to broadcast.

    The result has rank ``rank``, ``S`` on ``sequence_axis``, ``B`` on axis 0 for
    a per-row offset and 1 elsewhere. A static length gives a constant (no op).
    """
    layout = [1] * rank
    layout[sequence_axis] = -1
    if isinstance(length, int):
        steps = tf.constant(np.arange(length, dtype=np.float32).reshape(layout))
    else:
        steps = tf.reshape(tf.range(length, dtype=tf.float32), layout)
    if isinstance(offset, int):
        return steps + float(offset) if offset else steps
    offset = tf.cast(offset, tf.float32)
    if offset.shape.rank == 1:
        offset = tf.reshape(offset, [-1] + [1] * (rank - 1))  # (B, 1, ..., 1)
    return steps + offset


def _signed_frequencies(
    rotated: int, max_wavelength: float, scaling_factor: float, rank: int, pair_axis: int, frequency_axis: int
) -> tf.Tensor:
    """``-theta_j / scale`` for the first element of each pair and ``+theta_j / scale`` for the second.

    A float32 constant of rank ``rank`` with ``2`` on ``pair_axis``, ``R / 2`` on
    ``frequency_axis`` (two neighbouring axes) and 1 elsewhere.
    """
    frequencies = _frequencies(rotated, max_wavelength, scaling_factor)
    signs = np.array([-1.0, 1.0], dtype=np.float32)
    table = np.multiply.outer(signs, frequencies) if pair_axis < frequency_axis else np.multiply.outer(frequencies, signs)
    shape = [1] * rank
    shape[pair_axis], shape[frequency_axis] = 2, rotated // 2
    return tf.constant(table.reshape(shape))


def tables(
    length: int | tf.Tensor,
    rotated_dim: int,
    offset: Offset = 0,
    max_wavelength: float = 10_000,
    scaling_factor: float = 1.0,
    dtype: tf.DType | str = tf.float32,
) -> tuple[tf.Tensor, tf.Tensor]:
    """The cos and sin of the rotation angles, computed in float32 and cast to ``dtype``.

    ``cos[..., p, j] = cos((p + offset) / scaling_factor * theta_j)``, and the same for sin.

    Args:
        length: ``S``, the number of positions.
        rotated_dim: ``R``, the (even) number of rotated features.
        offset: an int, a scalar integer tensor or one offset per row (shape ``(B,)``).
        max_wavelength: see ``inverse_frequencies``.
        scaling_factor: see ``inverse_frequencies``.
        dtype: the dtype of the returned tables.

    Returns:
        ``(cos, sin)``, each of shape ``(S, R / 2)``, or ``(B, S, R / 2)`` for per-row offsets.

    Example:
        >>> cos, sin = tables(4, 8)
        >>> cos.shape
        TensorShape([4, 4])
    """
    inverse = inverse_frequencies(rotated_dim, max_wavelength, scaling_factor)
    offset = normalize_offset(offset)
    rank = 2 if isinstance(offset, int) or offset.shape.rank == 0 else 3
    angles = _layout_positions(length, offset, rank, rank - 2) * inverse  # (S, R / 2) or (B, S, R / 2)
    cos, sin = _cos_sin(angles)
    dtype = tf.as_dtype(dtype)
    return (cos, sin) if dtype == tf.float32 else (tf.cast(cos, dtype), tf.cast(sin, dtype))


def _offset_checks(
    offset: int | tf.Tensor, x: tf.Tensor, static: tuple[int | None, ...], sequence: int, feature: int
) -> list[tf.Operation]:
    """Validates a per-row offset against axis 0 of ``x``: statically if possible, else at run time."""
    if isinstance(offset, int) or offset.shape.rank == 0:
        return []
    taken = {sequence: "sequence_axis", feature: "feature_axis"}
    if 0 in taken:
        raise ValueError(
            f"A per-row `offset` of shape (B,) needs axis 0 of `x` to be a batch axis, but axis 0 is the {taken[0]}. "
            f"Received: offset with shape {tuple(offset.shape.as_list())}, x with shape {static}"
        )
    rows, batch = offset.shape[0], static[0]
    message = (
        "`offset` must be a scalar or have one value per row of `x` (shape (B,), B = size of axis 0). "
        f"Received: offset with shape {tuple(offset.shape.as_list())}, x with shape {static}"
    )
    if rows is not None and batch is not None:
        if rows != batch:
            raise ValueError(message)
        return []
    return [tf.debugging.assert_equal(tf.shape(offset)[0], tf.shape(x)[0], message=message + "; sizes at run time")]


def _positions_checks(
    positions: tf.Tensor | None, x: tf.Tensor, static: tuple[int | None, ...], sequence: int, feature: int
) -> list[tf.Operation]:
    """Validates explicit positions ``(S,)`` / ``(B, S)`` against ``x``: statically if possible, else at run time."""
    if positions is None:
        return []
    pos_static = tuple(positions.shape.as_list())
    expected = "(S,)" if len(pos_static) == 1 else "(B, S)"
    if len(pos_static) == 2 and 0 in (sequence, feature):
        raise ValueError(
            "`positions` of shape (B, S) needs axis 0 of `x` to be a batch axis, distinct from its sequence and feature axes. "
            f"Received: positions with shape {pos_static}, x with shape {static}"
        )
    wanted = (static[sequence],) if len(pos_static) == 1 else (static[0], static[sequence])
    message = (
        f"`positions` must have shape {expected} matching `x` (S = size of the sequence axis, B = size of axis 0). "
        f"Received: positions with shape {pos_static}, x with shape {static}"
    )
    if all(p is not None and w is not None for p, w in zip(pos_static, wanted)):
        if pos_static != wanted:
            raise ValueError(message)
        return []
    if any(p is not None and w is not None and p != w for p, w in zip(pos_static, wanted)):
        raise ValueError(message)
    runtime = tf.shape(x)
    wanted_runtime = tf.stack([runtime[sequence]] if len(pos_static) == 1 else [runtime[0], runtime[sequence]])
    return [tf.debugging.assert_equal(tf.shape(positions), wanted_runtime, message=message + "; sizes at run time")]


def rotate(
    x: tf.Tensor,
    sequence_axis: int = 1,
    feature_axis: int = -1,
    offset: Offset = 0,
    max_wavelength: float = 10_000,
    scaling_factor: float = 1.0,
    interleaved: bool = False,
    positions: Any = None,
) -> tf.Tensor:
    """Applies the rotary position embedding along ``sequence_axis`` to the features of ``feature_axis``.

    With ``R = D - D % 2`` rotated features and ``j < R / 2``, the pair
    ``(a, b) = (j, j + R / 2)`` (or ``(2j, 2j + 1)`` when ``interleaved``) at
    position ``p`` along ``sequence_axis`` becomes
    ``out_a = x_a cos - x_b sin``, ``out_b = x_b cos + x_a sin`` with the angle
    ``(p + offset) / scaling_factor * max_wavelength ** (-2j / R)``. An odd last
    feature passes through unchanged. Every other axis (batch, heads, ...) shares
    the same angles, except axis 0 with a per-row ``offset``.

    The two pairings are related by a fixed permutation: with
    ``order = [0, R/2, 1, R/2 + 1, ..., R/2 - 1, R - 1] (+ [R] for odd D)``,
    ``rotate(x[..., order], interleaved=True) == rotate(x)[..., order]``.

    Args:
        x: a floating tensor of known rank >= 2 whose ``feature_axis`` size is
            known; other dimensions may be unknown.
        sequence_axis: the axis holding the positions.
        feature_axis: the axis holding the features to rotate; may be before or
            after ``sequence_axis``, with any axes in between.
        offset: the position of the first element along ``sequence_axis``: a
            Python int, a scalar integer tensor, or an integer tensor of shape
            ``(B,)`` with one offset per row of axis 0 (rows decoded at
            different positions).
        max_wavelength: the base of the wavelengths, a finite number > 0.
        scaling_factor: positions are divided by it (linear position
            interpolation), a finite number > 0.
        interleaved: pair features ``(2j, 2j + 1)`` instead of ``(j, j + R / 2)``.
        positions: optional explicit positions, replacing ``p`` (the index along
            ``sequence_axis``): an integer or float tensor of shape ``(S,)``
            (shared by every row) or ``(B, S)`` (one per row of axis 0, e.g. a
            left-padded batch). ``offset`` is added to them.

    Returns:
        A tensor of the dtype and shape of ``x``.

    Raises:
        TypeError: ``x`` is not floating, an argument has the wrong type.
        ValueError: the axes are out of range or equal, the feature dimension is
            unknown, ``max_wavelength`` / ``scaling_factor`` is not > 0, or
            ``offset`` has a shape other than ``()`` or ``(B,)``.
        tf.errors.InvalidArgumentError: at run time (not under XLA, which drops
            assertions), a per-row ``offset`` whose size differs from axis 0.

    Example:
        >>> x = tf.ones((2, 3, 5))
        >>> rotate(x, offset=2).shape
        TensorShape([2, 3, 5])
    """
    x = tf.convert_to_tensor(x)
    if x.shape.rank is None:
        raise ValueError(f"The rank of `x` must be known. Received: x with shape {x.shape}")
    if not x.dtype.is_floating:
        raise TypeError(f"`x` must be a floating tensor. Received: x with dtype {x.dtype.name}")
    static = tuple(x.shape.as_list())
    sequence, feature = rotation_axes(static, sequence_axis, feature_axis)
    check_arguments(max_wavelength, scaling_factor, interleaved)
    feature_dim = static[feature]
    if feature_dim is None:
        raise ValueError(
            f"The size of the feature axis must be known when tracing. Received: feature_axis={feature_axis}, "
            f"x with shape {static}"
        )
    offset = normalize_offset(offset)
    explicit = normalize_positions(positions)
    checks = _offset_checks(offset, x, static, sequence, feature) + _positions_checks(explicit, x, static, sequence, feature)
    rotated = rotated_dim(feature_dim)
    if rotated == 0:
        with tf.control_dependencies(checks):
            return tf.identity(x) if checks else x
    half = rotated // 2
    tail = None
    if rotated < feature_dim:
        x, tail = tf.split(x, [rotated, feature_dim - rotated], axis=feature)
    # the feature axis becomes (pair, frequency) in the expanded view, of rank + 1 axes
    pair_axis, frequency_axis = (feature + 1, feature) if interleaved else (feature, feature + 1)
    expanded_sequence = sequence + 1 if sequence > feature else sequence
    dims = reshaping.dynamic_dims(x)
    split = [half, 2] if interleaved else [2, half]
    pairs = tf.reshape(x, dims[:feature] + split + dims[feature + 1 :])  # (B, S, N, 2, R / 2) or (B, S, N, R / 2, 2)

    # tables laid out to broadcast: S on the sequence axis, (2, R / 2) on the (pair, frequency) axes, and B
    # on axis 0 for per-row offsets; the sign of the sine is folded into the frequencies (sin(-a) = -sin(a))
    with tf.control_dependencies(checks):
        if explicit is None:
            steps = _layout_positions(dims[sequence], offset, len(static) + 1, expanded_sequence)  # (1, S, 1, 1, 1)
        else:
            steps = _layout_explicit(explicit, offset, len(static) + 1, expanded_sequence)  # (1 or B, S, 1, 1, 1)
    frequencies = _signed_frequencies(rotated, max_wavelength, scaling_factor, len(static) + 1, pair_axis, frequency_axis)
    angles = steps * frequencies  # (1, S, 1, 2, R / 2) for a (B, S, N, H) input, half-split
    cos, signed_sin = _cos_sin(angles)  # x_a takes -x_b sin, x_b takes +x_a sin
    if x.dtype != tf.float32:
        cos, signed_sin = tf.cast(cos, x.dtype), tf.cast(signed_sin, x.dtype)

    swapped = tf.reverse(pairs, [pair_axis]) * signed_sin
    # scaling `pairs` only once the swap has read them lets TensorFlow reuse their buffer for the
    # result when nothing else holds it, so the rotation allocates one new tensor instead of two
    with tf.control_dependencies([swapped]):
        turned = pairs * cos + swapped
    result = tf.reshape(turned, dims)  # back to the input shape
    if tail is not None:
        result = tf.concat([result, tail], axis=feature)
    return result


__all__ = [
    "check_arguments",
    "inverse_frequencies",
    "normalize_offset",
    "normalize_positions",
    "positions",
    "rotate",
    "rotated_dim",
    "rotation_axes",
    "tables",
]

"""Bits per byte and bits per character of byte-level language models.

A byte-level model predicts a distribution over the 256 byte values at every
position. Its bits per byte (BPB) on a target text is the information it needs
to encode that text, divided by the text's length in UTF-8 bytes::

    BPB = sum over target bytes of -log2 p(byte) / number of UTF-8 bytes of the text

and its bits per character (BPC) divides the same sum by the number of
characters. Dividing by the UTF-8 length, whatever bytes the model predicts,
makes models with different byte layouts comparable.

Two layouts of the targets are supported (``encoding``):

- ``"utf-32-be"``: 4 bytes per character, as ``ByteDecoder`` produces them:
  every 4 consecutive bytes along the last axis are one big-endian code point.
  The numerator sums the bits of all 4 bytes of each character; the
  denominator counts the UTF-8 length of its code point (1 below ``0x80``,
  2 below ``0x800``, 3 below ``0x10000``, else 4) and 1 per character.
- ``"utf-8"``: plain UTF-8 bytes; every byte counts 1 in the byte denominator,
  continuation bytes (``0x80`` to ``0xBF``) included, and every byte that is not
  a continuation byte counts 1 in the character denominator.

In both layouts the value 0 is padding: a NUL character (4 zero bytes) in
UTF-32-BE, a zero byte in UTF-8. Padding counts neither in the numerator nor
in the denominators.

Shape letters used in this module:

- ``S``: the bytes along the last axis of the targets (a multiple of 4 in UTF-32-BE).
- ``C``: the classes of the predictions, i.e. the 256 byte values.

Every op works eagerly, inside ``tf.function`` with dimensions unknown until
run time, and under ``jit_compile=True``. Static shapes are validated in Python;
dimensions and byte values known only at run time are validated by
``tf.debugging`` assertions, which XLA drops.
"""

from __future__ import annotations

import math

import tensorflow as tf

from mlable_core import accuracy, reshaping, shapes
from mlable_core.accuracy import _check_divides, _check_same_shape, _known_rank, _reshape

ENCODINGS = ("utf-32-be", "utf-8")
PER = ("byte", "character")

BYTE_VALUES = 256
UTF32_WIDTH = 4
# the clip of probabilities read with `from_logits=False`, as Keras' crossentropies
EPSILON = 1e-7


def check_encoding(encoding: object) -> str:
    """Checks that ``encoding`` names a supported byte layout; case and ``_`` / ``-`` are free.

    Args:
        encoding: ``"utf-32-be"`` or ``"utf-8"`` (``"UTF_8"``, ``"utf8"`` and ``"utf32be"`` are accepted too).

    Returns:
        The canonical name: ``"utf-32-be"`` or ``"utf-8"``.

    Raises:
        TypeError: ``encoding`` is not a string.
        ValueError: ``encoding`` is not a supported layout.

    Example:
        >>> check_encoding("UTF-32-BE")
        'utf-32-be'
    """
    if not isinstance(encoding, str):
        raise TypeError(f"`encoding` must be a string. Received: encoding={encoding!r} of type {type(encoding).__name__}")
    canonical = {"utf32be": "utf-32-be", "utf8": "utf-8"}.get(encoding.lower().replace("_", "").replace("-", ""))
    if canonical is None:
        raise ValueError(f"`encoding` must be one of {ENCODINGS}. Received: encoding={encoding!r}")
    return canonical


def check_per(per: object) -> str:
    """Checks that ``per`` is ``"byte"`` or ``"character"``, the unit of a bits-per-unit rate.

    Raises:
        TypeError: ``per`` is not a string.
        ValueError: ``per`` is another string.
    """
    if not isinstance(per, str):
        raise TypeError(f"`per` must be a string. Received: per={per!r} of type {type(per).__name__}")
    if per not in PER:
        raise ValueError(f"`per` must be one of {PER}. Received: per={per!r}")
    return per


def _check_bool(value: object, name: str) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"`{name}` must be a bool. Received: {name}={value!r} of type {type(value).__name__}")
    return value


def _float_dtype(y_pred: tf.Tensor) -> tf.DType:
    # log-probabilities in float32 at least: a float16 log-softmax loses the small probabilities
    return tf.float64 if y_pred.dtype == tf.float64 else tf.float32


def _byte_targets(y_true: tf.Tensor, y_pred: tf.Tensor) -> tuple[tf.Tensor, list[tf.Operation]]:
    """The targets as int32 of shape ``(..., S)``, with the checks of their shape and values."""
    rank = _known_rank(y_pred, "y_pred", minimum=2)
    _known_rank(y_true, "y_true")
    if y_true.shape.rank == rank and y_true.shape[-1] == 1:
        y_true = tf.squeeze(y_true, axis=-1)  # (..., S, 1) -> (..., S)
    classes = y_pred.shape[-1]
    received = f"Received: y_true.shape={shapes.format_shape(y_true.shape)}, y_pred.shape={shapes.format_shape(y_pred.shape)}"
    if classes is not None and classes != BYTE_VALUES:
        raise ValueError(f"The last axis of `y_pred` must hold the {BYTE_VALUES} byte values. {received}")
    checks = _check_same_shape(y_true, y_pred, true_shape=y_pred.shape[:-1])
    if classes is None:
        checks.append(tf.debugging.Assert(
            tf.equal(tf.shape(y_pred)[-1], BYTE_VALUES),
            [f"The last axis of `y_pred` must hold the {BYTE_VALUES} byte values. {received}. Size at run time:", tf.shape(y_pred)[-1]],
        ))
    if not (y_true.dtype.is_integer or y_true.dtype.is_floating):
        raise TypeError(f"`y_true` must hold byte values as integers (or whole floats). Received: y_true.dtype={y_true.dtype.name}")
    targets = tf.cast(y_true, tf.int32)
    in_range = tf.reduce_all((targets >= 0) & (targets < BYTE_VALUES))
    checks.append(tf.debugging.Assert(in_range, [f"`y_true` must hold byte values in [0, {BYTE_VALUES}). {received}"]))
    return targets, checks


def byte_bits(y_true: tf.Tensor, y_pred: tf.Tensor, from_logits: bool = True) -> tf.Tensor:
    """The information of each target byte under the predictions: ``-log2 p(y_true)``, in bits.

    Logits go through a log-softmax; probabilities are normalized over the
    last axis and clipped to ``[1e-7, 1]``, as Keras' crossentropies do. Both
    are computed in float32 (float64 for float64 predictions), half-precision
    predictions included.

    Args:
        y_true: the target bytes, integers in ``[0, 256)`` of shape ``(..., S)`` (or ``(..., S, 1)``).
        y_pred: logits (or probabilities) over the byte values, shape ``(..., S, 256)``.
        from_logits: whether ``y_pred`` holds logits rather than probabilities.

    Returns:
        A float32 (float64 for float64 predictions) tensor of shape ``(..., S)``.

    Raises:
        ValueError: ``y_pred`` has rank < 2 or a last axis other than 256, or
            ``y_true`` does not have the shape of ``y_pred`` without its last axis.
        TypeError: ``from_logits`` is not a bool, or ``y_true`` is not numeric.

    Example:
        >>> byte_bits(tf.constant([1]), tf.fill((1, 256), 0.0)).numpy()
        array([8.], dtype=float32)
    """
    y_true = tf.convert_to_tensor(y_true)
    y_pred = tf.convert_to_tensor(y_pred)
    from_logits = _check_bool(from_logits, "from_logits")
    targets, checks = _byte_targets(y_true, y_pred)
    dtype = _float_dtype(y_pred)
    with tf.control_dependencies(checks):
        y_pred = tf.cast(y_pred, dtype)
        if from_logits:
            log_probabilities = tf.nn.log_softmax(y_pred, axis=-1)  # (..., S, C)
        else:
            probabilities = y_pred / tf.reduce_sum(y_pred, axis=-1, keepdims=True)
            log_probabilities = tf.math.log(tf.clip_by_value(probabilities, EPSILON, 1.0))
        # one-hot selection rather than a gather: the same graph eagerly, with unknown dims and under XLA
        selected = tf.reduce_sum(tf.one_hot(targets, BYTE_VALUES, dtype=dtype) * log_probabilities, axis=-1)  # (..., S)
        return -selected / tf.constant(math.log(2.0), dtype)


def _check_whole_characters(y_true: tf.Tensor) -> list[tf.Operation]:
    _known_rank(y_true, "y_true")
    return _check_divides(
        y_true, -1, UTF32_WIDTH,
        f"The last axis of `y_true` must hold whole UTF-32-BE characters ({UTF32_WIDTH} bytes each), "
        f"but has {{size}} bytes. Received: y_true.shape={shapes.format_shape(y_true.shape)}",
    )


def codepoints(y_true: tf.Tensor) -> tf.Tensor:
    """The code points of UTF-32-BE bytes: every 4 bytes along the last axis are one big-endian value.

    Args:
        y_true: bytes in ``[0, 256)``, shape ``(..., S)`` with ``S`` a multiple of 4.

    Returns:
        An int64 tensor of shape ``(..., S / 4)``.

    Raises:
        ValueError: ``y_true`` has rank 0, or ``S`` is not a multiple of 4.

    Example:
        >>> codepoints(tf.constant([0, 0, 0, 65, 0, 1, 246, 0])).numpy()
        array([    65, 128512])
    """
    y_true = tf.convert_to_tensor(y_true)
    with tf.control_dependencies(_check_whole_characters(y_true)):
        dims = reshaping.dynamic_dims(y_true)
        grouped = _reshape(tf.cast(y_true, tf.int64), dims[:-1] + [dims[-1] // UTF32_WIDTH, UTF32_WIDTH])  # (..., S / 4, 4)
        powers = tf.constant([1 << 24, 1 << 16, 1 << 8, 1], dtype=tf.int64)
        return tf.reduce_sum(grouped * powers, axis=-1)  # (..., S / 4)


def utf8_lengths(codepoints: tf.Tensor) -> tf.Tensor:
    """The UTF-8 length of each code point: 1 below ``0x80``, 2 below ``0x800``, 3 below ``0x10000``, else 4.

    Code points beyond Unicode (above ``0x10FFFF``) count 4, like the largest
    valid ones; surrogates count 3, as they would if encoded.

    Args:
        codepoints: integer code points of any shape.

    Returns:
        An int32 tensor of the shape of ``codepoints``.

    Example:
        >>> utf8_lengths(tf.constant([65, 0xE9, 0x20AC, 0x1F600])).numpy()
        array([1, 2, 3, 4], dtype=int32)
    """
    codepoints = tf.cast(tf.convert_to_tensor(codepoints), tf.int64)
    lengths = 1 + sum(tf.cast(codepoints >= bound, tf.int32) for bound in (0x80, 0x800, 0x10000))
    return tf.convert_to_tensor(lengths)


def _broadcast(weights: tf.Tensor, values: tf.Tensor, name: str, level: str, y_true: tf.Tensor) -> tf.Tensor:
    """``accuracy.broadcast_weights`` with an error that names the unit level and the targets."""
    try:
        return accuracy.broadcast_weights(weights, values, name=name)
    except ValueError as error:
        raise ValueError(
            f"`{name}` must broadcast to the {level} shape {shapes.format_shape(values.shape)}, aligned on the leading "
            f"axes (one weight per row, or per {level.split('-')[1]}). Received: {name}.shape="
            f"{shapes.format_shape(tf.convert_to_tensor(weights).shape)}, y_true.shape={shapes.format_shape(y_true.shape)}"
        ) from error


def _mask_weights(mask: tf.Tensor, values: tf.Tensor, y_true: tf.Tensor, encoding: str) -> tf.Tensor:
    """A mask as 0 / 1 weights of the unit level; byte-level UTF-32-BE masks count a character when any byte is unmasked."""
    mask = tf.convert_to_tensor(mask)
    byte_level = (
        encoding == "utf-32-be"
        and mask.shape.rank == y_true.shape.rank
        and mask.shape[-1] != 1
        and (mask.shape[-1] is None or mask.shape[-1] != values.shape[-1])
    )
    if byte_level:
        if mask.shape[-1] is not None and y_true.shape[-1] is not None and mask.shape[-1] != y_true.shape[-1]:
            raise ValueError(
                "`mask` must have the shape of `y_true` (one entry per byte) or broadcast to the per-character shape "
                f"{shapes.format_shape(values.shape)}. Received: mask.shape={shapes.format_shape(mask.shape)}, "
                f"y_true.shape={shapes.format_shape(y_true.shape)}"
            )
        # a Keras `mask_zero` on UTF-32-BE bytes masks the leading zeros of every ASCII character: any, not all
        mask = accuracy.group_any(mask, UTF32_WIDTH, axis=-1)  # (..., S / 4)
    level = "per-character" if encoding == "utf-32-be" else "per-byte"
    return _broadcast(tf.cast(mask, values.dtype), values, "mask", level, y_true)


def byte_log2_likelihood_sums(
    y_true: tf.Tensor,
    y_pred: tf.Tensor,
    encoding: str = "utf-32-be",
    sample_weight: tf.Tensor | None = None,
    from_logits: bool = True,
    mask: tf.Tensor | None = None,
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """The weighted bits of the targets, and their weighted lengths in UTF-8 bytes and in characters.

    ``bits / bytes`` is the bits per byte and ``bits / characters`` the bits
    per character; the three sums add up exactly across batches and replicas,
    which the ratios do not. Padding (a NUL character in UTF-32-BE, a zero byte
    in UTF-8) counts in none of them.

    Weights apply to units: characters in UTF-32-BE (all 4 bytes of a character
    share its weight), bytes in UTF-8. ``sample_weight`` aligns with the leading
    axes of the unit-level shape, Keras style: it has the shape ``U`` of the
    units (``y_true.shape[:-1] + (S / 4,)`` in UTF-32-BE, ``y_true.shape`` in
    UTF-8), or a prefix of it (``(B,)``: one weight per row), optionally with a
    trailing axis of 1, and each of its dimensions equals the one of ``U`` or is 1.

    ``mask`` (a Keras mask, booleans or 0 / 1) follows the same rule, and may
    also hold one entry per byte in UTF-32-BE (the shape of ``y_true``): a
    character then counts when any of its 4 bytes is unmasked, so that a
    ``mask_zero`` on bytes keeps the ASCII characters (whose first 3 bytes are 0).

    Args:
        y_true: the target bytes, integers in ``[0, 256)`` of shape ``(..., S)``
            (or ``(..., S, 1)``); ``S`` is a multiple of 4 in UTF-32-BE.
        y_pred: logits (or probabilities) over the byte values, shape ``(..., S, 256)``.
        encoding: the layout of the targets, ``"utf-32-be"`` or ``"utf-8"``.
        sample_weight: unit-level weights, see above; ``None`` weighs every unit 1.
        from_logits: whether ``y_pred`` holds logits rather than probabilities.
        mask: a unit-level (or, in UTF-32-BE, byte-level) mask, see above.

    Returns:
        Three scalars, float32 (float64 for float64 predictions): the total
        bits ``sum(w * -log2 p)``, the total UTF-8 bytes and the total characters.

    Raises:
        ValueError: ``encoding`` is not supported; ``y_pred`` has rank < 2 or a
            last axis other than 256; ``y_true`` does not have the shape of
            ``y_pred`` without its last axis; ``S`` is not a multiple of 4 in
            UTF-32-BE; ``sample_weight`` or ``mask`` does not broadcast to the units.
        TypeError: ``encoding`` is not a string or ``from_logits`` not a bool.

    Example:
        >>> text = tf.constant([0, 0, 0, 0xE9, 0, 0, 0, 0])  # "é" then a NUL padding character
        >>> bits, num_bytes, num_characters = byte_log2_likelihood_sums(text, tf.zeros((8, 256)))
        >>> float(bits), float(num_bytes), float(num_characters)  # 4 uniform bytes of 8 bits, 2 bytes in UTF-8
        (32.0, 2.0, 1.0)
    """
    encoding = check_encoding(encoding)
    y_true = tf.convert_to_tensor(y_true)
    y_pred = tf.convert_to_tensor(y_pred)
    if y_true.shape.rank is not None and y_true.shape.rank == y_pred.shape.rank and y_true.shape[-1] == 1:
        y_true = tf.squeeze(y_true, axis=-1)  # (..., S, 1) -> (..., S)
    bits = byte_bits(y_true, y_pred, from_logits=from_logits)  # (..., S)
    targets = tf.cast(y_true, tf.int64)
    dtype = bits.dtype
    if encoding == "utf-32-be":
        with tf.control_dependencies(_check_whole_characters(targets)):
            points = codepoints(targets)  # (..., S / 4)
            dims = reshaping.dynamic_dims(bits)
            bits = tf.reduce_sum(_reshape(bits, dims[:-1] + [dims[-1] // UTF32_WIDTH, UTF32_WIDTH]), axis=-1)  # (..., S / 4)
        counted = tf.cast(points != 0, dtype)
        lengths = tf.cast(utf8_lengths(points), dtype)
        characters = tf.ones_like(counted)
        level = "per-character"
    else:
        counted = tf.cast(targets != 0, dtype)
        lengths = tf.ones_like(counted)
        is_continuation = (targets >= 0x80) & (targets < 0xC0)
        characters = tf.cast(tf.logical_not(is_continuation), dtype)
        level = "per-byte"
    weights = counted
    if sample_weight is not None:
        weights = weights * _broadcast(tf.cast(tf.convert_to_tensor(sample_weight), dtype), counted, "sample_weight", level, y_true)
    if mask is not None:
        weights = weights * _mask_weights(mask, counted, targets, encoding)
    # padding has weight 0: `0 * bits` stays 0 even where a padded position has a probability 0
    total_bits = tf.reduce_sum(tf.where(weights != 0, weights * bits, tf.zeros_like(bits)))
    total_bytes = tf.reduce_sum(weights * lengths)
    total_characters = tf.reduce_sum(weights * characters)
    return total_bits, total_bytes, total_characters


__all__ = [
    "ENCODINGS",
    "PER",
    "byte_bits",
    "byte_log2_likelihood_sums",
    "check_encoding",
    "check_per",
    "codepoints",
    "utf8_lengths",
]

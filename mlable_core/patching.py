"""Dynamic patching for hierarchical byte models: boundaries, pooling between bytes and patches, masks.

A patch is a run of consecutive bytes that a hierarchical model (BLT, SpaceByte,
MegaByte) summarises into one vector for its global transformer. This module
finds the patches of each row and moves vectors between the two levels.

Shape letters: ``B`` rows, ``S`` bytes per row, ``P`` patches per row (the
static bound ``max_patches``), ``E`` features of a byte or a patch vector.

Conventions (every op here follows them):

- **A boundary starts a patch at the byte.** Each criterion marks the bytes that
  START a new patch (the boundary lies just before them); every other byte
  continues the patch of the byte before it.
- **The first byte** of a row (the first valid byte, with a mask) always starts
  patch 0, whatever the criterion says.
- **Causality.** Whether byte ``t`` starts a patch depends only on bytes (or
  entropies) ``0 .. t``, so the patch id of byte ``t`` never changes when later
  bytes change.
- **max_patch_length** ``m``: a patch never holds more than ``m`` bytes. A run of
  bytes without a criterion boundary is cut every ``m`` bytes, counted from its
  start (its bytes ``0, m, 2m, ...`` start patches). ``None`` means no limit.
- **Padding.** With ``mask`` (``(B, S)`` booleans, True for real bytes), padding
  bytes belong to no patch: their id is ``-1``, they count in no length, and the
  first real byte after padding starts a new patch (padding never joins two runs).
- **Patch ids** ``(B, S)`` int32: ``0, 1, ...`` in order along the row, ``-1`` for
  padding. **Lengths** ``(B, P)`` int32: the bytes of each patch, 0 for the
  patches a row does not use. **Counts** ``(B,)`` int32: the patches each row
  needs; ``counts <= max_patches`` unless the row overflowed.
- **Overflow** (a row needing more than ``max_patches`` patches): eagerly a
  ``ValueError``, in a ``tf.function`` graph an ``InvalidArgumentError`` (a
  ``tf.debugging`` assertion); under XLA (``jit_compile=True``, which drops
  assertions) and with ``allow_overflow=True``, the overflowing bytes join the
  last patch ``P - 1`` (whose length may then exceed ``max_patch_length``), and
  ``counts > max_patches`` says so.
- **Negative ids** in pooling, unpooling and masks mean "no patch": such a byte
  adds nothing to any patch, unpools to zeros and attends (or is attended by)
  nothing.

Criteria (each returns ``Patches(ids, lengths, counts)``):

- ``entropy_patches``: byte ``t`` starts a patch when ``H[t] > threshold`` (BLT's
  global threshold), ``H[t]`` being the entropy of the prediction of byte ``t``
  from the bytes before it (see ``entropy``).
- ``monotonic_patches``: when ``H[t] - H[t - 1] > threshold`` (BLT's
  monotonic, or relative, criterion).
- ``space_patches``: when byte ``t - 1`` is space-like and byte ``t`` is not
  (SpaceByte's rule): a patch is a word followed by its spaces. A UTF-8
  continuation byte never starts a patch, so no character is split.
- ``stride_patches``: every ``max_patch_length`` bytes (MegaByte's fixed patches;
  without a mask, the same as ``mlable_core.reshaping.divide``).
- ``patches_from_starts``: any boolean criterion of your own (e.g. learned).

Every op works eagerly, in ``tf.function`` (the sequence length may be unknown
until run time) and under ``jit_compile=True``, with static output shapes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import tensorflow as tf

from mlable_core import accuracy, shapes
from mlable_core.cache import in_xla_context

BYTE_VALUES = 256
# ASCII whitespace: tab, line feed, vertical tab, form feed, carriage return, space
WHITESPACE: tuple[int, ...] = (9, 10, 11, 12, 13, 32)
# SpaceByte's space-like bytes: neither an ASCII letter or digit nor a UTF-8 continuation byte (0x80 to 0xBF)
SPACELIKE: tuple[int, ...] = tuple(
    value
    for value in range(BYTE_VALUES)
    if not (chr(value).isascii() and chr(value).isalnum()) and not 0x80 <= value <= 0xBF
)
POOLING_MODES = ("mean", "sum", "max", "first", "last")
MASK_MODES = ("previous", "own")


class Patches(NamedTuple):
    """The patches of a batch of rows.

    Attributes:
        ids: ``(B, S)`` int32, the patch of each byte (``-1`` for padding).
        lengths: ``(B, P)`` int32, the bytes in each patch (0 for unused patches).
        counts: ``(B,)`` int32, the patches each row needs (``> P``: the row overflowed).
    """

    ids: tf.Tensor
    lengths: tf.Tensor
    counts: tf.Tensor


# argument checks -------------------------------------------------------------------------------


def check_max_patches(max_patches: object) -> int:
    """``max_patches`` as an int >= 1 (``TypeError`` / ``ValueError`` otherwise)."""
    return shapes.check_int(max_patches, "max_patches", minimum=1)


def check_max_patch_length(max_patch_length: object) -> int | None:
    """``max_patch_length`` as an int >= 1, or ``None`` (no limit)."""
    if max_patch_length is None:
        return None
    return shapes.check_int(max_patch_length, "max_patch_length", minimum=1)


def check_threshold(threshold: object) -> float:
    """``threshold`` as a finite Python float."""
    return accuracy.check_real(threshold, "threshold")


def check_space_bytes(space_bytes: object) -> tuple[int, ...]:
    """The space-like byte values as a sorted tuple of distinct ints in ``[0, 255]`` (``None``: ``SPACELIKE``)."""
    if space_bytes is None:
        return SPACELIKE
    if isinstance(space_bytes, (str, bytes)) or not isinstance(space_bytes, Sequence):
        raise TypeError(
            f"`space_bytes` must be a sequence of byte values (ints in [0, 255]). Received: space_bytes={space_bytes!r}"
        )
    values = []
    for value in space_bytes:
        value = shapes.check_int(value, "space_bytes")
        if not 0 <= value < BYTE_VALUES:
            raise ValueError(f"`space_bytes` must hold byte values in [0, 255]. Received: {value} in space_bytes={list(space_bytes)}")
        values.append(value)
    return tuple(sorted(set(values)))


def check_mode(mode: object, modes: Sequence[str], name: str = "mode") -> str:
    """``mode`` when it is one of ``modes``, else a ``ValueError`` naming ``name``, the choices and the value."""
    if not isinstance(mode, str) or mode not in modes:
        raise ValueError(f"`{name}` must be one of {list(modes)}. Received: {name}={mode!r}")
    return mode


def _rank2(x: Any, name: str) -> tf.Tensor:
    x = tf.convert_to_tensor(x)
    shapes.check_rank(x.shape, 2, name, "(B, S)")
    return x


def _check_mask(mask: Any, like: tf.Tensor) -> tf.Tensor | None:
    if mask is None:
        return None
    mask = tf.convert_to_tensor(mask)
    if mask.dtype != tf.bool:
        raise TypeError(f"`mask` must be a boolean tensor (True for real bytes). Received: mask with dtype {mask.dtype.name}")
    if mask.shape.rank != 2 or not mask.shape.is_compatible_with(like.shape):
        raise ValueError(
            f"`mask` must have the shape (B, S) of the bytes. Received: mask with shape {shapes.format_shape(mask.shape)}, "
            f"bytes with shape {shapes.format_shape(like.shape)}"
        )
    return mask


def runtime_check(condition: tf.Tensor, message: str, *values: tf.Tensor) -> list[tf.Operation]:
    """A check of values known only at run time.

    Eagerly: a ``ValueError`` with ``message`` and the values, raised at once. In a
    ``tf.function`` graph: a ``tf.debugging.Assert`` (``InvalidArgumentError`` at run
    time), returned for ``tf.control_dependencies``. Under XLA: nothing (XLA drops
    assertions), the callers document what happens instead.
    """
    if tf.executing_eagerly():
        if not bool(condition):
            details = ", ".join(str(value.numpy().tolist()) for value in values)
            raise ValueError(f"{message} {details}".rstrip())
        return []
    if in_xla_context():
        return []
    return [tf.debugging.Assert(condition, [message, *values])]


def check_bytes(data: Any, name: str = "data") -> tuple[tf.Tensor, list[tf.Operation]]:
    """Integer bytes as int32, with a run-time check that every value lies in ``[0, 255]``.

    Returns:
        ``(bytes as int32, checks)``: the checks are empty for ``uint8`` input.

    Raises:
        TypeError: ``data`` is not an integer tensor.
        ValueError: eagerly, a value lies outside ``[0, 255]``.
    """
    data = tf.convert_to_tensor(data)
    if not data.dtype.is_integer:
        raise TypeError(f"`{name}` must hold integer byte values in [0, 255]. Received: {name} with dtype {data.dtype.name}, shape {shapes.format_shape(data.shape)}")
    if data.dtype == tf.uint8:
        return tf.cast(data, tf.int32), []
    if data.dtype.size > 4 or data.dtype in (tf.uint32,):
        data = tf.cast(data, tf.int64)  # compare before narrowing, so that 2**32 + 65 is not read as 65
    smallest, largest = tf.reduce_min(data), tf.reduce_max(data)
    valid = tf.logical_and(smallest >= 0, largest <= 255)
    message = f"`{name}` must hold byte values in [0, 255]. Received: {name} with shape {shapes.format_shape(data.shape)}, smallest and largest values"
    checks = runtime_check(valid, message, smallest, largest)
    return tf.cast(data, tf.int32), checks


# boundaries ------------------------------------------------------------------------------------


def _shift_right(x: tf.Tensor, steps: int | tf.Tensor, fill: Any) -> tf.Tensor:
    """``x`` shifted ``steps`` places to the right along axis 1, ``fill`` coming in on the left."""
    length = x.shape[1]
    if length is not None and isinstance(steps, int):
        steps = min(steps, length)  # static sizes, as XLA wants them
    else:
        length = tf.shape(x)[1]
        steps = tf.minimum(steps, length)
    kept = x[:, : length - steps]
    return tf.pad(kept, [[0, 0], [steps, 0]], constant_values=fill)


def _cumulative_max(x: tf.Tensor) -> tf.Tensor:
    """Running maximum along axis 1 of a ``(B, S)`` int32 tensor of values >= -1 (log-depth doubling)."""
    length = x.shape[1]
    if length is not None:
        step = 1
        while step < length:
            x = tf.maximum(x, _shift_right(x, step, -1))
            step *= 2
        return x

    def body(step: tf.Tensor, value: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        return step * 2, tf.maximum(value, _shift_right(value, step, -1))

    _, x = tf.while_loop(lambda step, _: step < tf.shape(x)[1], body, (tf.constant(1), x))
    return x


def _run_starts(natural: tf.Tensor, positions: tf.Tensor) -> tf.Tensor:
    """The position of the last ``natural`` start at or before each byte (``(B, S)``; -1 or any value before the first).

    Under XLA one scatter of the start positions by run number and one gather (half the time of the log-depth
    running maximum there); elsewhere the running maximum, which is faster in TensorFlow's kernels.
    """
    if not in_xla_context():
        return _cumulative_max(tf.where(natural, positions, -1))
    rows, length = tf.shape(natural)[0], tf.shape(natural)[1]
    runs = tf.cumsum(tf.cast(natural, tf.int32), axis=1) - 1  # (B, S): the run of each byte, -1 before the first
    flat = tf.reshape(tf.where(runs >= 0, runs + tf.range(rows)[:, None] * length, -1), [-1])  # (B * S,)
    spread = tf.reshape(tf.broadcast_to(positions, tf.shape(natural)), [-1])
    first = tf.math.unsorted_segment_min(spread, flat, rows * length)  # (B * S,): where each run starts
    return tf.reshape(tf.gather(first, tf.maximum(flat, 0)), tf.shape(natural))


def patches_from_starts(
    starts: Any,
    max_patches: int,
    max_patch_length: int | None,
    mask: Any = None,
    allow_overflow: bool = False,
) -> Patches:
    """Patches from a per-byte criterion: ``starts[b, t]`` True when byte ``t`` starts a new patch.

    The first (real) byte of each row and the first real byte after padding start
    a patch whatever ``starts`` says; runs longer than ``max_patch_length`` are cut
    every ``max_patch_length`` bytes. See the module docstring for the conventions.

    Args:
        starts: ``(B, S)`` booleans, the criterion; it should depend on bytes
            ``0 .. t`` only, so that the patches are causal.
        max_patches: ``P``, the static number of patches per row.
        max_patch_length: the most bytes in one patch (an int >= 1), or ``None``.
        mask: optional ``(B, S)`` booleans, True for real bytes, False for padding.
        allow_overflow: do not raise when a row needs more than ``P`` patches: its
            last bytes join patch ``P - 1`` (always the behaviour under XLA).

    Returns:
        ``Patches(ids (B, S), lengths (B, P), counts (B,))``, all int32.

    Raises:
        ValueError: bad arguments or shapes; eagerly, a row needs more than
            ``max_patches`` patches (unless ``allow_overflow``).
        tf.errors.InvalidArgumentError: the same overflow in a ``tf.function`` graph.

    Example:
        >>> starts = tf.constant([[False, False, True, False, False, False]])
        >>> patches_from_starts(starts, max_patches=4, max_patch_length=3).ids.numpy().tolist()
        [[0, 0, 1, 1, 1, 2]]
    """
    starts = _rank2(starts, "starts")
    if starts.dtype != tf.bool:
        raise TypeError(f"`starts` must be a boolean tensor. Received: starts with dtype {starts.dtype.name}")
    max_patches = check_max_patches(max_patches)
    max_patch_length = check_max_patch_length(max_patch_length)
    mask = _check_mask(mask, starts)
    length = tf.shape(starts)[1]
    positions = tf.range(length)[None, :]  # (1, S)
    if mask is None:
        # the first byte starts patch 0
        natural = tf.logical_or(starts, positions == 0)  # (B, S)
        valid = None
    else:
        previous = _shift_right(mask, 1, False)
        natural = tf.logical_and(mask, tf.logical_or(starts, tf.logical_not(previous)))
        valid = mask
    if max_patch_length is not None:
        # offset of each byte from the start of its run (the last natural start at or before it)
        run_start = _run_starts(natural, positions)  # (B, S)
        cut = tf.equal(tf.math.floormod(positions - run_start, max_patch_length), 0)
        natural = cut if valid is None else tf.logical_and(cut, valid)
    number = tf.cumsum(tf.cast(natural, tf.int32), axis=1)  # (B, S): patches started so far
    counts = tf.reduce_sum(tf.cast(natural, tf.int32), axis=1)  # (B,)
    ids = number - 1
    if valid is not None:
        ids = tf.where(valid, ids, -1)
    checks = []
    if not allow_overflow:
        largest = tf.reduce_max(counts)  # the lowest int32 for an empty batch
        message = (
            f"A row needs more patches than `max_patches`={max_patches} (max_patch_length={max_patch_length}): raise "
            "`max_patches`, or pass allow_overflow=True to put the overflowing bytes in the last patch. "
            f"Received: bytes with shape {shapes.format_shape(starts.shape)}, patches needed per row:"
        )
        checks = runtime_check(largest <= max_patches, message, counts)
    with tf.control_dependencies(checks):
        ids = tf.minimum(ids, max_patches - 1)
    lengths = patch_lengths(ids, max_patches)
    return Patches(ids, lengths, counts)


def patch_lengths(ids: Any, max_patches: int) -> tf.Tensor:
    """The number of bytes of each patch: ``(B, S)`` ids to ``(B, P)`` int32 lengths (ids outside ``[0, P)`` count nowhere).

    Example:
        >>> patch_lengths(tf.constant([[0, 0, 1, -1]]), max_patches=3).numpy().tolist()
        [[2, 1, 0]]
    """
    ids = _rank2(ids, "ids")
    max_patches = check_max_patches(max_patches)
    flat, rows = _flat_ids(tf.cast(ids, tf.int32), max_patches)
    ones = tf.ones_like(flat)
    lengths = tf.math.unsorted_segment_sum(ones, flat, rows * max_patches)
    return tf.reshape(lengths, tf.stack([rows, max_patches]))


def entropy(logits: Any, axis: int = -1) -> tf.Tensor:
    """The entropy in nats of ``softmax(logits)`` along ``axis``, computed in float32.

    For BLT's criteria, ``H[t]`` must be the entropy of the prediction of byte ``t``
    from the bytes before it: with a next-byte model whose logits at ``t`` predict
    byte ``t + 1``, shift right by one, e.g.
    ``tf.pad(entropy(logits)[:, :-1], [[0, 0], [1, 0]])`` (byte 0 starts a patch anyway).

    Example:
        >>> float(entropy(tf.zeros((4,))))  # uniform over 4 values: log 4
        1.3862943649291992
    """
    logits = tf.cast(tf.convert_to_tensor(logits), tf.float32)
    log_probabilities = tf.nn.log_softmax(logits, axis=axis)
    probabilities = tf.exp(log_probabilities)
    # 0 * log 0 counts 0 (a -inf logit)
    terms = tf.where(probabilities > 0, probabilities * log_probabilities, tf.zeros_like(probabilities))
    return -tf.reduce_sum(terms, axis=axis)


def _check_entropies(entropies: Any) -> tf.Tensor:
    entropies = _rank2(entropies, "entropies")
    if not entropies.dtype.is_floating:
        raise TypeError(f"`entropies` must be a floating tensor. Received: entropies with dtype {entropies.dtype.name}, shape {shapes.format_shape(entropies.shape)}")
    return tf.cast(entropies, tf.float32) if entropies.dtype != tf.float64 else entropies


def entropy_patches(
    entropies: Any,
    threshold: float,
    max_patches: int,
    max_patch_length: int | None,
    mask: Any = None,
    allow_overflow: bool = False,
) -> Patches:
    """Patches from per-byte entropies with a global threshold (BLT): byte ``t`` starts a patch when ``H[t] > threshold``.

    Args:
        entropies: ``(B, S)`` floats, ``H[t]`` the entropy of the prediction of byte
            ``t`` from bytes ``0 .. t - 1`` (see ``entropy``), in the units of ``threshold``.
        threshold: a finite number; strictly greater entropies start a patch.
        max_patches, max_patch_length, mask, allow_overflow: as in ``patches_from_starts``.

    Returns:
        ``Patches(ids (B, S), lengths (B, P), counts (B,))``.

    Example:
        >>> h = tf.constant([[2.0, 0.1, 3.0, 0.2, 0.3]])
        >>> entropy_patches(h, threshold=1.0, max_patches=3, max_patch_length=None).ids.numpy().tolist()
        [[0, 0, 1, 1, 1]]
    """
    threshold = check_threshold(threshold)
    entropies = _check_entropies(entropies)
    starts = entropies > tf.constant(threshold, entropies.dtype)
    return patches_from_starts(starts, max_patches, max_patch_length, mask, allow_overflow)


def monotonic_patches(
    entropies: Any,
    threshold: float,
    max_patches: int,
    max_patch_length: int | None,
    mask: Any = None,
    allow_overflow: bool = False,
) -> Patches:
    """Patches with BLT's monotonic criterion: byte ``t >= 1`` starts a patch when ``H[t] - H[t - 1] > threshold``.

    Byte 0 (and the first real byte after padding) starts a patch in any case.

    Args:
        entropies: ``(B, S)`` floats, as in ``entropy_patches``.
        threshold: a finite number; a strictly greater rise of the entropy starts a patch.
        max_patches, max_patch_length, mask, allow_overflow: as in ``patches_from_starts``.

    Returns:
        ``Patches(ids (B, S), lengths (B, P), counts (B,))``.

    Example:
        >>> h = tf.constant([[2.0, 0.1, 3.0, 2.5, 2.9]])
        >>> monotonic_patches(h, threshold=0.3, max_patches=4, max_patch_length=None).ids.numpy().tolist()
        [[0, 0, 1, 1, 2]]
    """
    threshold = check_threshold(threshold)
    entropies = _check_entropies(entropies)
    rise = entropies - _shift_right(entropies, 1, 0.0)
    starts = rise > tf.constant(threshold, entropies.dtype)
    return patches_from_starts(starts, max_patches, max_patch_length, mask, allow_overflow)


def space_patches(
    data: Any,
    max_patches: int,
    max_patch_length: int | None,
    space_bytes: Sequence[int] | None = None,
    mask: Any = None,
    allow_overflow: bool = False,
) -> Patches:
    """Patches from a rule (SpaceByte): byte ``t`` starts a patch when byte ``t - 1`` is space-like and byte ``t`` is not.

    A run of space-like bytes stays in the patch before it: a patch is a word and
    the spaces after it. A UTF-8 continuation byte (``0x80`` to ``0xBF``) never
    starts a patch, so a multi-byte character (whose lead byte is space-like in
    ``SPACELIKE``) is never split. Bytes are looked up in a 256-entry table.

    Args:
        data: ``(B, S)`` integer bytes in ``[0, 255]``.
        max_patches, max_patch_length, mask, allow_overflow: as in ``patches_from_starts``.
        space_bytes: the space-like byte values; ``None``: ``SPACELIKE`` (SpaceByte's:
            not an ASCII letter or digit, not a UTF-8 continuation byte). For UTF-32
            bytes (three zero bytes per ASCII character) pass ``WHITESPACE``.

    Returns:
        ``Patches(ids (B, S), lengths (B, P), counts (B,))``.

    Raises:
        TypeError: ``data`` is not an integer tensor.
        ValueError: eagerly, a byte lies outside ``[0, 255]`` (an
            ``InvalidArgumentError`` in graphs; under XLA the lookup clamps it).

    Example:
        >>> data = tf.constant([list(b"to be  or")])
        >>> space_patches(data, max_patches=4, max_patch_length=None).ids.numpy().tolist()
        [[0, 0, 0, 1, 1, 1, 1, 2, 2]]
    """
    data = _rank2(data, "data")
    values, checks = check_bytes(data)
    spaces = set(check_space_bytes(space_bytes))
    # 0: other bytes, 1: space-like, 2: a continuation byte that is not space-like (it starts no patch)
    table = tf.constant([1 if value in spaces else 2 if 0x80 <= value <= 0xBF else 0 for value in range(BYTE_VALUES)], tf.int32)
    with tf.control_dependencies(checks):
        kinds = tf.gather(table, values)  # (B, S)
    spacelike = tf.equal(kinds, 1)
    starts = tf.logical_and(_shift_right(spacelike, 1, False), tf.equal(kinds, 0))
    return patches_from_starts(starts, max_patches, max_patch_length, mask, allow_overflow)


def stride_patches(
    data: Any,
    max_patch_length: int,
    max_patches: int,
    mask: Any = None,
    allow_overflow: bool = False,
) -> Patches:
    """Fixed patches of ``max_patch_length`` bytes (MegaByte); only the shape of ``data`` is read.

    Without a mask, byte ``t`` is in patch ``t // max_patch_length``; with a mask,
    the real bytes of each run are counted from the run's first byte.

    Args:
        data: any ``(B, S)`` tensor (e.g. the bytes).
        max_patch_length: the stride, an int >= 1.
        max_patches, mask, allow_overflow: as in ``patches_from_starts``.

    Returns:
        ``Patches(ids (B, S), lengths (B, P), counts (B,))``.

    Raises:
        ValueError: also when ``S`` is static, there is no mask and
            ``ceil(S / max_patch_length) > max_patches`` (unless ``allow_overflow``).

    Example:
        >>> stride_patches(tf.zeros((1, 5)), max_patch_length=2, max_patches=3).ids.numpy().tolist()
        [[0, 0, 1, 1, 2]]
    """
    data = _rank2(data, "data")
    if max_patch_length is None:
        raise ValueError("`max_patch_length` is the stride of `stride_patches`: an int >= 1. Received: max_patch_length=None")
    max_patch_length = check_max_patch_length(max_patch_length)
    max_patches = check_max_patches(max_patches)
    length = data.shape[1]
    if mask is None and length is not None and not allow_overflow and math.ceil(length / max_patch_length) > max_patches:
        raise ValueError(
            f"{length} bytes make {math.ceil(length / max_patch_length)} patches of max_patch_length={max_patch_length}, "
            f"more than `max_patches`={max_patches}. Received: data with shape {shapes.format_shape(data.shape)}"
        )
    starts = tf.zeros(tf.shape(data), tf.bool)
    return patches_from_starts(starts, max_patches, max_patch_length, mask, allow_overflow)


# pooling ---------------------------------------------------------------------------------------


def _flat_ids(ids: tf.Tensor, max_patches: int) -> tuple[tf.Tensor, tf.Tensor]:
    """``(B, S)`` patch ids to ``(B * S,)`` segment ids ``b * P + id``, ``-1`` where ``id`` is outside ``[0, P)``."""
    rows = tf.shape(ids)[0]
    valid = tf.logical_and(ids >= 0, ids < max_patches)
    offsets = tf.range(rows)[:, None] * max_patches  # (B, 1)
    flat = tf.where(valid, ids + offsets, -1)  # (B, S)
    return tf.reshape(flat, [-1]), rows


def _check_ids(ids: Any, max_patches: int, validate: bool) -> tuple[tf.Tensor, list[tf.Operation]]:
    ids = _rank2(ids, "ids")
    if not ids.dtype.is_integer:
        raise TypeError(f"`ids` must be an integer tensor. Received: ids with dtype {ids.dtype.name}")
    ids = tf.cast(ids, tf.int32)
    if not validate:
        return ids, []
    largest = tf.reduce_max(ids) if ids.shape.num_elements() != 0 else tf.constant(-1)
    message = f"`ids` must be < max_patches={max_patches} (negative ids mean no patch). Received: ids with shape {shapes.format_shape(ids.shape)} and largest id"
    return ids, runtime_check(largest < max_patches, message, largest)


def _check_features(x: Any, ids: tf.Tensor, name: str, letters: str) -> tf.Tensor:
    x = tf.convert_to_tensor(x)
    shapes.check_rank(x.shape, 3, name, letters)
    if not x.dtype.is_floating:
        raise TypeError(f"`{name}` must be a floating tensor. Received: {name} with dtype {x.dtype.name}")
    if x.shape[0] is not None and ids.shape[0] is not None and x.shape[0] != ids.shape[0]:
        raise ValueError(
            f"`{name}` and `ids` must have the same batch size B. Received: {name} with shape {shapes.format_shape(x.shape)}, "
            f"ids with shape {shapes.format_shape(ids.shape)}"
        )
    return x


def _pool_unsorted(values: tf.Tensor, flat: tf.Tensor, segments: tf.Tensor, mode: str) -> tf.Tensor:
    """``(B * S, E)`` values into ``(B * P, E)`` by any flat ids (negative: dropped); empty segments give 0."""
    if mode == "max":
        pooled = tf.math.unsorted_segment_max(values, flat, segments)
        present = tf.math.unsorted_segment_max(tf.ones_like(flat), flat, segments) > 0
        return tf.where(present[:, None], pooled, tf.zeros_like(pooled))
    pooled = tf.math.unsorted_segment_sum(values, flat, segments)
    if mode == "sum":
        return pooled
    counts = tf.math.unsorted_segment_sum(tf.ones_like(flat), flat, segments)
    return pooled / tf.cast(tf.maximum(counts, 1), values.dtype)[:, None]


def _pool_sorted(values: tf.Tensor, flat: tf.Tensor, segments: tf.Tensor, mode: str) -> tf.Tensor:
    """The same for ascending non-negative ids, with the sorted segment ops (empty segments give 0 there too)."""
    reduce = {"sum": tf.math.segment_sum, "mean": tf.math.segment_mean, "max": tf.math.segment_max}[mode]
    pooled = reduce(values, flat)  # (largest id + 1, E)
    return tf.pad(pooled, [[0, segments - tf.shape(pooled)[0]], [0, 0]])


def _pool_position(values: tf.Tensor, flat: tf.Tensor, segments: tf.Tensor, mode: str) -> tf.Tensor:
    """The vector of the first or last byte of each segment; zeros for empty segments."""
    positions = tf.range(tf.size(flat))  # (B * S,)
    if mode == "first":
        chosen = tf.math.unsorted_segment_min(positions, flat, segments)
    else:
        chosen = tf.math.unsorted_segment_max(positions, flat, segments)
    present = tf.logical_and(chosen >= 0, chosen < tf.size(flat))  # empty: the largest / smallest int32

    def gather() -> tf.Tensor:
        pooled = tf.gather(values, tf.where(present, chosen, 0))
        return tf.where(present[:, None], pooled, tf.zeros_like(pooled))

    def zeros() -> tf.Tensor:  # no byte at all: nothing to gather from
        return tf.zeros(tf.stack([segments, tf.shape(values)[1]]), values.dtype)

    if flat.shape[0] is not None:
        return gather() if flat.shape[0] else zeros()
    return tf.cond(tf.size(flat) > 0, gather, zeros)


def pool(x: Any, ids: Any, max_patches: int, mode: str = "mean", validate_ids: bool = True) -> tf.Tensor:
    """Pools byte vectors into patch vectors: ``(B, S, E)`` and ``(B, S)`` ids to ``(B, P, E)``.

    ``mean`` and ``sum`` reduce the bytes of each patch, ``max`` takes their
    elementwise maximum, ``first`` / ``last`` the vector of the patch's first / last
    byte. A patch without bytes (unused, or only padding) gives zeros, and bytes
    with a negative id add to no patch. Gradients are those of the reductions
    (``max`` splits a tie evenly, as ``tf.reduce_max``). Half-precision inputs are
    summed in float32, then cast back.

    Args:
        x: ``(B, S, E)`` floats.
        ids: ``(B, S)`` integer patch ids (``Patches.ids``); negative: no patch.
        max_patches: ``P``.
        mode: ``"mean"``, ``"sum"``, ``"max"``, ``"first"`` or ``"last"``.
        validate_ids: check at run time that every id is ``< max_patches``
            (eagerly ``ValueError``, in graphs ``InvalidArgumentError``; under XLA
            or unchecked, such bytes add to no patch).

    Returns:
        ``(B, P, E)`` in the dtype of ``x``.

    Example:
        >>> x = tf.constant([[[1.0], [3.0], [5.0]]])
        >>> pool(x, tf.constant([[0, 0, 1]]), max_patches=3).numpy()[..., 0].tolist()
        [[2.0, 5.0, 0.0]]
    """
    mode = check_mode(mode, POOLING_MODES)
    max_patches = check_max_patches(max_patches)
    ids, checks = _check_ids(ids, max_patches, validate_ids)
    x = _check_features(x, ids, "x", "(B, S, E)")
    dims = tf.shape(x)
    features = x.shape[-1] if x.shape[-1] is not None else dims[2]
    with tf.control_dependencies(checks):
        flat, rows = _flat_ids(ids, max_patches)  # (B * S,)
    segments = rows * max_patches
    values = tf.reshape(x, tf.stack([-1, features]))  # (B * S, E)
    if mode in ("first", "last"):
        pooled = _pool_position(values, flat, segments, mode)
    else:
        accumulate = tf.float32 if x.dtype in (tf.float16, tf.bfloat16) and mode != "max" else x.dtype
        values = tf.cast(values, accumulate)
        if in_xla_context():
            pooled = _pool_unsorted(values, flat, segments, mode)
        else:
            # the sorted segment ops are faster on CPU; ids from the patchers are sorted unless there is padding
            ascending = tf.logical_and(tf.reduce_all(flat[1:] >= flat[:-1]), tf.reduce_all(flat >= 0))
            pooled = tf.cond(
                ascending,
                lambda: _pool_sorted(values, flat, segments, mode),
                lambda: _pool_unsorted(values, flat, segments, mode),
            )
        pooled = tf.cast(pooled, x.dtype)
    return tf.reshape(pooled, tf.stack([rows, max_patches, features]))


def unpool(patches: Any, ids: Any, shift: int = 0) -> tf.Tensor:
    """Broadcasts patch vectors back to their bytes: ``(B, P, E)`` and ``(B, S)`` ids to ``(B, S, E)``.

    ``out[b, t] = patches[b, ids[b, t] - shift]``, zeros where that index is
    negative (padding, or the first patches with ``shift > 0``) or ``>= P``. With
    ``shift=1`` each byte reads the patch before its own: in a causal model, the
    last patch that holds no byte after it. The gradient sums over the bytes of
    each patch.

    Args:
        patches: ``(B, P, E)`` floats.
        ids: ``(B, S)`` integer patch ids.
        shift: an int >= 0, subtracted from the ids.

    Returns:
        ``(B, S, E)`` in the dtype of ``patches``.

    Example:
        >>> patches = tf.constant([[[1.0], [2.0]]])
        >>> unpool(patches, tf.constant([[0, 0, 1, -1]]))[..., 0].numpy().tolist()
        [[1.0, 1.0, 2.0, 0.0]]
    """
    shift = shapes.check_int(shift, "shift", minimum=0)
    ids = _rank2(ids, "ids")
    if not ids.dtype.is_integer:
        raise TypeError(f"`ids` must be an integer tensor. Received: ids with dtype {ids.dtype.name}")
    patches = _check_features(patches, ids, "patches", "(B, P, E)")
    ids = tf.cast(ids, tf.int32)
    if shift:
        ids = tf.where(ids >= 0, ids - shift, ids)
    count = patches.shape[1] if patches.shape[1] is not None else tf.shape(patches)[1]
    valid = tf.logical_and(ids >= 0, ids < count)  # (B, S)
    gathered = tf.gather(patches, tf.where(valid, ids, 0), batch_dims=1)  # (B, S, E)
    return tf.where(valid[..., None], gathered, tf.zeros_like(gathered))


# masks -----------------------------------------------------------------------------------------


def patch_to_byte_mask(ids: Any, max_patches: int) -> tf.Tensor:
    """Cross-attention mask of patches (queries) over bytes (keys): each patch sees its own bytes.

    ``mask[b, p, s] = ids[b, s] == p``; it is the ``attention_mask`` ``(B, T, S)``
    of ``CachedMultiHeadAttention`` / ``keras.layers.MultiHeadAttention`` with the
    ``T = P`` patches as the query and the ``S`` bytes as the value.

    Args:
        ids: ``(B, S)`` integer patch ids (negative: the byte is seen by no patch).
        max_patches: ``P``.

    Returns:
        ``(B, P, S)`` booleans.

    Example:
        >>> patch_to_byte_mask(tf.constant([[0, 0, 1]]), 2).numpy().astype(int).tolist()
        [[[1, 1, 0], [0, 0, 1]]]
    """
    max_patches = check_max_patches(max_patches)
    ids = _rank2(ids, "ids")
    return tf.equal(tf.cast(ids, tf.int32)[:, None, :], tf.range(max_patches)[None, :, None])


def byte_to_patch_mask(ids: Any, max_patches: int, mode: str = "previous") -> tf.Tensor:
    """Cross-attention mask of bytes (queries) over patches (keys).

    - ``"previous"``: byte ``t`` of patch ``p`` sees the patches ``< p`` (causal: they
      hold only bytes before ``t``; the bytes of patch 0 see nothing, and an
      attention layer gives such a row zero weights).
    - ``"own"``: it sees its own patch ``p`` only.

    It is the ``attention_mask`` ``(B, T, S)`` with the ``T`` bytes as the query
    and the ``P`` patches as the value. Padding bytes (negative ids) see nothing.

    Args:
        ids: ``(B, S)`` integer patch ids.
        max_patches: ``P``.
        mode: ``"previous"`` or ``"own"``.

    Returns:
        ``(B, S, P)`` booleans.

    Example:
        >>> byte_to_patch_mask(tf.constant([[0, 1, 2]]), 3).numpy().astype(int).tolist()
        [[[0, 0, 0], [1, 0, 0], [1, 1, 0]]]
    """
    mode = check_mode(mode, MASK_MODES)
    max_patches = check_max_patches(max_patches)
    ids = tf.cast(_rank2(ids, "ids"), tf.int32)[:, :, None]  # (B, S, 1)
    patches = tf.range(max_patches)[None, None, :]  # (1, 1, P)
    if mode == "previous":
        return tf.less(patches, ids)
    return tf.equal(patches, ids)


__all__ = [
    "MASK_MODES",
    "POOLING_MODES",
    "SPACELIKE",
    "WHITESPACE",
    "Patches",
    "byte_to_patch_mask",
    "check_bytes",
    "entropy",
    "entropy_patches",
    "monotonic_patches",
    "patch_lengths",
    "patch_to_byte_mask",
    "patches_from_starts",
    "pool",
    "runtime_check",
    "space_patches",
    "stride_patches",
    "unpool",
]

"""Multi-head dot-product attention on projected tensors: masks, plain attention, attention over a cache.

Shape letters follow the glossary of ``mlable_core``: ``B`` batch, ``T`` query
positions of one call (with a cache, also the new keys / values written at
``step``), ``S`` key / value positions (the cache slots), ``N`` query heads,
``K`` key / value heads (``K`` divides ``N``; ``K = N`` without grouping),
``H`` head size, ``W`` sliding window (the slots of a ring cache).

The key / value cache itself (allocate, write at a step, append, ring slots,
overflow checks) lives in ``mlable_core.cache``; its ops are re-exported here
(``attention.create_cache``, ``attention.update_cache``,
``attention.append_cache``, ``attention.in_xla_context``).

Attention over a cache
----------------------
``cached_attention`` writes the ``T`` new keys / values with
``cache.update_cache`` (slots ``[step, step + T)``) or ``cache.append_cache``
(``step=None``), then attends. Query ``i`` sits at absolute position
``step + i``; with the causal mask it sees the slots ``<= step + i``, without
it every written slot ``< step + T``; it never sees a slot at or beyond
``step + T`` ("empty" slots, whatever they hold); an optional user mask over
the ``S`` slots combines with all this.

Prefill (``T > 1``) and decode (``T = 1``) are the same call: prefill at
``step=0``, then decode one position at a time at ``step = T_prefill``,
``T_prefill + 1``, ... Decoding position by position gives the same outputs
as one causal pass over the whole sequence.

Which slots a call reads (``span``):

- Eagerly and in ``tf.function`` graphs (``"filled"``) only the filled slots
  ``cache[:, :, :step + T]`` (a dynamic slice), so the cost grows with the
  filled length, not with ``S``.
- Under XLA (``jit_compile=True``, detected while tracing) shapes must be
  static, so the attended length cannot be ``step + T``. The attention reads
  the smallest "bucket" of slots that holds ``step + T`` (powers of two from
  ``MIN_BUCKET`` and the midpoints between them, up to ``S``; see
  ``bucket_lengths``), picked at run time by a ``tf.switch_case``; the mask
  gives the slots in ``[step + T, bucket)`` a weight of exactly 0, so the
  result is the same and the cost stays within 1.5x of the filled length.
- ``"allocated"`` reads every slot, masked.

A write that does not fit raises (see ``mlable_core.cache``); under XLA,
where assertions are dropped, the whole output of the overflowing call is NaN,
so that the overflow shows instead of passing silently.

Checks: shapes known while tracing are checked in Python (``ValueError`` /
``TypeError`` naming the argument, the value and the shapes). Sizes known
only at run time (a ``tf.function`` traced with ``None`` dimensions) are
checked by graph assertions that the computation depends on, so a mismatched
batch, length or head size of ``query`` / ``key`` / ``value`` or of
``attention_mask`` raises a ``tf.errors.InvalidArgumentError`` naming the
argument and giving the shapes, instead of a raw einsum or broadcast error.
XLA drops assertions; it compiles every call with static shapes, so there a
mismatch fails in XLA's own shape checks, which name the op but not the
argument.

``ring_attention`` attends over a ring cache of ``W`` slots (a sliding window
of ``W``): memory ``O(W)`` and static shapes for a generation of any length.

Precision: for float16 / bfloat16 / float32 inputs the scores ``q . k`` are
summed and kept in float32, and so is the softmax; the weights are cast back
to the input dtype before they mix the values (float64 stays float64). A
float16 product would overflow: 64 entries of 100 give 640000, past float16's
65504, and a NaN row. Half-precision keys are cast to float32 whole only where
that copy is no larger than the float32 scores the softmax holds anyway
(``K * H <= N * T``, e.g. prefill and training), else one block of
``SCORE_BLOCK`` slots at a time (decoding): a cache is never copied whole to
float32.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any

import tensorflow as tf

from mlable_core import cache as kv_cache
from mlable_core import shapes
from mlable_core.cache import append_cache, create_cache, in_xla_context, update_cache
from mlable_core.reshaping import dynamic_dims, reshape_target

# smallest number of slots attended under XLA; below it, bucketing saves nothing
MIN_BUCKET = 64

SPANS = ("auto", "filled", "buckets", "allocated")

# added to masked scores before the float32 softmax; finite so that gradients stay finite
_MASKED_SCORE = -1e9

# half-precision keys are cast to float32 this many slots at a time to score them (see `_scores`)
SCORE_BLOCK = 512


@tf.autograph.experimental.do_not_convert
def build_attention_mask(
    query_length: int | tf.Tensor,
    key_length: int | tf.Tensor,
    step: int | tf.Tensor = 0,
    filled_length: int | tf.Tensor | None = None,
    use_causal_mask: bool = True,
    sliding_window: int | None = None,
    mask: tf.Tensor | None = None,
) -> tf.Tensor:
    """Which key slots each query position may attend to, as a boolean tensor.

    Query ``i`` sits at absolute position ``step + i`` and key slot ``j`` at
    position ``j``. Slot ``j`` is visible from query ``i`` when all of these hold:

    - ``j < filled_length`` (slots beyond are empty; ``None``: every slot is filled);
    - ``j <= step + i`` if ``use_causal_mask``;
    - ``|step + i - j| < sliding_window`` if a window is given;
    - ``mask[..., i, j]`` if a user mask is given.

    Args:
        query_length: ``T``, the number of query positions.
        key_length: ``S``, the number of key positions (cache slots).
        step: the absolute position of the first query.
        filled_length: slots at or beyond it are never visible.
        use_causal_mask: hide the positions after each query.
        sliding_window: a positive int, or ``None`` for no window.
        mask: an optional boolean (or 0 / 1) user mask of shape
            ``(B, T, S)``, where ``B``, ``T`` and ``S`` may be 1
            (broadcast; ``(B, T, 1)`` is a mask on the queries alone).

    Returns:
        A boolean tensor of shape ``(1, T, S)``, or ``(B, T, S)`` with a user mask.

    Raises:
        ValueError: the user mask has another rank or a mismatching static shape.

    Example:
        >>> build_attention_mask(2, 5, step=2, filled_length=4).numpy().astype(int)
        array([[[1, 1, 1, 0, 0],
                [1, 1, 1, 1, 0]]])
    """
    step = tf.cast(step, tf.int32)
    queries = tf.reshape(step + tf.range(query_length), (1, -1, 1))  # (1, T, 1)
    slots = tf.reshape(tf.range(key_length), (1, 1, -1))  # (1, 1, S)
    visible = tf.ones_like(queries, dtype=tf.bool) & tf.ones_like(slots, dtype=tf.bool)  # (1, T, S)
    if filled_length is not None:
        visible &= slots < tf.cast(filled_length, tf.int32)
    if use_causal_mask:
        visible &= slots <= queries
    if sliding_window is not None:
        window = shapes.check_int(sliding_window, "sliding_window", minimum=1)
        visible &= tf.abs(queries - slots) < window
    if mask is not None:
        visible &= _user_mask(mask, query_length, key_length)
    return visible


def _check_mask_batch(mask: Any, query: tf.Tensor) -> None:
    """A user mask's batch size must be 1 or the batch of ``query`` (checked when both are known while tracing)."""
    shape = getattr(mask, "shape", None)
    rows = None if shape is None or len(shape) != 3 else shape[0]
    batch = query.shape[0]
    if rows is not None and batch is not None and rows not in (1, batch):
        raise ValueError(
            f"`attention_mask` must have shape (B, T, S) with B={batch} (the batch of `query`) or 1. "
            f"Received: attention_mask with shape {shapes.format_shape(tuple(shape))}, query with shape {shapes.format_shape(query.shape)}"
        )


def _user_mask(
    mask: Any, query_length: int | tf.Tensor, key_length: int | tf.Tensor, query: tf.Tensor | None = None
) -> tf.Tensor:
    """The user mask as booleans, after checking its shape against ``(B, T, S)`` (each may be 1).

    Sizes known while tracing are checked in Python (``ValueError``). With
    ``query`` (whose batch is ``B``), the sizes known only at run time are
    checked too, by graph assertions with the same information, which the
    returned mask depends on (XLA drops them: there all shapes are static
    when compiled, and a mismatch fails in XLA's own shape checks).
    """
    mask = tf.convert_to_tensor(mask)
    static = shapes.check_rank(mask.shape, 3, "attention_mask", "(B, T, S) with S the key slots")
    if query is not None:
        _check_mask_batch(mask, query)
    queries = query_length if isinstance(query_length, int) else None
    keys = key_length if isinstance(key_length, int) else None
    bad_queries = static[1] is not None and queries is not None and static[1] not in (1, queries)
    bad_keys = static[2] is not None and keys is not None and static[2] not in (1, keys)
    if bad_queries or bad_keys:
        raise ValueError(
            f"`attention_mask` must have shape (B, T, S) with T={queries} query positions (or 1) and "
            f"S={keys} key slots (or 1). Received: attention_mask with shape {shapes.format_shape(static)}"
        )
    sizes = [None, None, None] if query is None else [dynamic_dims(query)[0], query_length, key_length]
    unknown = [axis for axis in range(3) if sizes[axis] is not None and (static[axis] is None or not isinstance(sizes[axis], int))]
    if unknown:
        runtime = tf.shape(mask)
        fits = [tf.logical_or(tf.equal(runtime[axis], 1), tf.equal(runtime[axis], tf.cast(sizes[axis], tf.int32))) for axis in unknown]
        message = (
            "`attention_mask` must have shape (B, T, S), each 1 or the size of the call: B the batch of `query`, T "
            "the query positions, S the key slots. Received at run time: attention_mask shape, then the sizes of "
            f"{', '.join('BTS'[axis] for axis in unknown)} ="
        )
        checks = _run_time_checks([(tf.reduce_all(fits), [message, runtime] + [sizes[axis] for axis in unknown])])
        with tf.control_dependencies(checks):
            mask = tf.identity(mask)
    if mask.dtype == tf.bool:
        return mask
    if mask.dtype.is_floating:
        # a float mask must hold 0 / 1: an additive mask (0 visible, -1e9 hidden) read as "nonzero = visible"
        # would be inverted silently (asserted eagerly and in graphs; XLA drops the assertion)
        binary = tf.reduce_all(tf.logical_or(tf.equal(mask, 0), tf.equal(mask, 1)))
        check = tf.debugging.Assert(
            binary,
            ["`attention_mask` of a float dtype must hold only 0 (hidden) and 1 (visible); an additive mask "
             "(0 visible, a large negative number hidden) must be converted first, e.g. `attention_mask == 0`. "
             "Received values with min and max:", tf.reduce_min(mask), tf.reduce_max(mask)],
        )
        with tf.control_dependencies([check]):
            return tf.not_equal(mask, tf.zeros((), mask.dtype))
    return tf.not_equal(mask, tf.zeros((), mask.dtype))


def _masked_softmax(scores: tf.Tensor, visible: tf.Tensor, dtype: tf.DType) -> tf.Tensor:
    """Softmax over the last axis of ``(B, N, T, S)`` scores where ``visible`` (``(B, 1, T, S)``), 0 elsewhere.

    It runs in float32 for the half types and float32 (float64 stays float64),
    then casts the weights to ``dtype``; a row with no visible slot is all zeros.
    """
    softmax_dtype = tf.float64 if dtype == tf.float64 else tf.float32
    scores = tf.where(visible, tf.cast(scores, softmax_dtype), tf.constant(_MASKED_SCORE, softmax_dtype))
    weights = tf.where(visible, tf.nn.softmax(scores, axis=-1), tf.zeros((), softmax_dtype))  # (B, N, T, S)
    return tf.cast(weights, dtype)


def _attend(
    query: tf.Tensor,
    key: tf.Tensor,
    value: tf.Tensor,
    visible: tf.Tensor,
    scale: float | tf.Tensor,
    dropout: Callable[[tf.Tensor], tf.Tensor] | None,
    return_scores: bool,
) -> tuple[tf.Tensor, tf.Tensor | None]:
    """Masked softmax attention of ``(B, T, N, H)`` queries over ``(B, S, K, H)`` keys / values.

    The scores ``q . k`` are accumulated and kept in float32 (float64 for
    float64 inputs), whatever the input dtype: see ``_scores``. The weights are
    cast back to the input dtype before they mix the values. With ``K < N``
    key / value heads (grouped-query attention), query head ``n`` reads key /
    value head ``n // (N / K)``; the keys and values are never repeated to ``N``
    heads.
    """
    dtype = query.dtype
    accumulator = tf.float64 if dtype == tf.float64 else tf.float32
    # a Python float goes straight to the accumulator dtype (tf.cast would round it through float32 first)
    scale = tf.constant(scale, accumulator) if isinstance(scale, float) else tf.cast(scale, accumulator)
    query = tf.cast(query, accumulator) * scale  # (B, T, N, H), small: cast once
    scores = _scores(query, key)  # (B, N, T, S) in the accumulator dtype
    weights = _masked_softmax(scores, visible[:, None], dtype)  # (B, N, T, S)
    mixed = weights if dropout is None else dropout(weights)
    return _mix(mixed, value), (weights if return_scores else None)


def _scores(query: tf.Tensor, key: tf.Tensor) -> tf.Tensor:
    """Scores ``(B, N, T, S)`` of scaled queries (in the accumulator dtype) on keys of any float dtype.

    Keys in the accumulator dtype are used as they are. Half-precision keys
    (float16, bfloat16) are cast up so that the products are summed in float32
    (a float16 dot product of 64 entries of 100 is 640000, past float16's
    65504), without a float32 copy of all the keys (or of a cache) wherever it
    would be larger than the scores themselves:

    - when the float32 keys are no larger than the float32 scores, which the
      softmax holds anyway (``K * H <= N * T``: prefill and training), or at
      most ``SCORE_BLOCK`` slots, they are cast whole;
    - otherwise (decoding, short chunks) they are cast one block of
      ``SCORE_BLOCK`` slots at a time: the extra memory is one block,
      ``B * SCORE_BLOCK * K * H`` floats. The blocks are unrolled when ``S`` is
      static (always under XLA), and a ``tf.while_loop`` otherwise.
    """
    if key.dtype == query.dtype:
        return _head_scores(query, key)
    slots = dynamic_dims(key)[1]
    dims = (query.shape[1], query.shape[2], key.shape[2], key.shape[3])  # T, N, K, H
    small_keys = None not in dims and dims[2] * dims[3] <= dims[0] * dims[1]
    if small_keys or (isinstance(slots, int) and slots <= SCORE_BLOCK):
        return _head_scores(query, tf.cast(key, query.dtype))
    if isinstance(slots, int):
        blocks = [key[:, start : start + SCORE_BLOCK] for start in range(0, slots, SCORE_BLOCK)]  # (B, <= block, K, H) each
        return tf.concat([_head_scores(query, tf.cast(part, query.dtype)) for part in blocks], axis=-1)  # (B, N, T, S)
    return _scores_in_loop(query, key, slots)


def _scores_in_loop(query: tf.Tensor, key: tf.Tensor, slots: tf.Tensor) -> tf.Tensor:
    """``_scores`` by blocks of ``SCORE_BLOCK`` slots in a ``tf.while_loop``, for ``S`` known at run time only."""
    size = tf.minimum(slots, SCORE_BLOCK)
    count = (slots + SCORE_BLOCK - 1) // SCORE_BLOCK

    def body(index: tf.Tensor, blocks: tf.TensorArray) -> tuple[tf.Tensor, tf.TensorArray]:
        start = tf.minimum(index * SCORE_BLOCK, slots - size)  # the last block ends at S (it may overlap the one before)
        part = tf.slice(key, tf.stack([0, start, 0, 0]), tf.stack([-1, size, -1, -1]))  # (B, size, K, H)
        part.set_shape([key.shape[0], None, key.shape[2], key.shape[3]])
        return index + 1, blocks.write(index, _head_scores(query, tf.cast(part, query.dtype)))  # (B, N, T, size)

    blocks = tf.TensorArray(query.dtype, size=count, element_shape=tf.TensorShape([query.shape[0], query.shape[2], query.shape[1], None]))
    _, blocks = tf.while_loop(lambda index, _: index < count, body, (tf.constant(0), blocks))
    batch, queries, heads, _ = dynamic_dims(query)
    stacked = tf.transpose(blocks.stack(), (1, 2, 3, 0, 4))  # (B, N, T, count, size)
    joined = tf.reshape(stacked, reshape_target([batch, heads, queries, count * size]))  # (B, N, T, count * size)
    # the last block overlaps the one before: keep its columns past the full blocks
    full = (count - 1) * size
    return tf.concat([joined[..., :full], joined[..., count * size - (slots - full) :]], axis=-1)  # (B, N, T, S)


def _head_scores(query: tf.Tensor, key: tf.Tensor) -> tf.Tensor:
    """Scores ``(B, N, T, S)`` of ``(B, T, N, H)`` queries on ``(B, S, K, H)`` keys of the same dtype."""
    batch, queries, heads, head_dim = dynamic_dims(query)
    groups, slots = key.shape[2], dynamic_dims(key)[1]
    known = isinstance(heads, int) and groups is not None
    grouped = known and groups != heads
    if query.shape[1] == 1 and known and isinstance(head_dim, int) and _block_diagonal(heads, groups):
        # one query (decoding): the keys, seen as (B, S, K * H), multiply a block-diagonal (K * H, N) matrix of
        # the queries (query head n in the block of its key head): one batched matmul scores every head without
        # transposing, repeating or multiplying out the keys
        blocks = query[:, 0, :, None, :] * _owners(heads, groups, query.dtype)[None, :, :, None]  # (B, N, K, H), zero outside the own block
        blocks = tf.transpose(tf.reshape(blocks, [batch, heads, groups * head_dim]), (0, 2, 1))  # (B, K * H, N)
        flat_keys = tf.reshape(key, [batch, slots, groups * head_dim])  # (B, S, K * H), a free reshape
        return tf.transpose(tf.matmul(flat_keys, blocks), (0, 2, 1))[:, :, None]  # (B, N, 1, S)
    if query.shape[1] == 1 and not grouped:
        # one query under XLA, which fuses the product into the reduction: in the cache layout, no transpose
        scores = tf.reduce_sum(key * query, axis=-1)  # (B, S, N)
        return tf.transpose(scores, (0, 2, 1))[:, :, None]  # (B, N, 1, S)
    if grouped:
        share = heads // groups
        grouped = tf.reshape(query, [batch, queries, groups, share, head_dim])  # (B, T, K, N / K, H)
        scores = tf.einsum("btkgh,bskh->bkgts", grouped, key)  # (B, K, N / K, T, S)
        return tf.reshape(scores, reshape_target([batch, heads, queries, slots]))  # (B, N, T, S), head n = k * N / K + g
    return tf.einsum("btnh,bsnh->bnts", query, key)  # (B, N, T, S)


def _mix(weights: tf.Tensor, value: tf.Tensor) -> tf.Tensor:
    """The attention output ``(B, T, N, Hv)``: ``(B, N, T, S)`` weights over ``(B, S, K, Hv)`` values."""
    batch, _, queries, slots = dynamic_dims(weights)
    heads, groups, value_dim = weights.shape[1], value.shape[2], dynamic_dims(value)[3]
    one = weights.shape[2] == 1
    known = heads is not None and groups is not None
    grouped = known and groups != heads
    if one and known and isinstance(value_dim, int) and _block_diagonal(heads, groups):
        # one query: every head weighs the values of every key head, and keeps its own block
        flat_values = tf.reshape(value, [batch, slots, groups * value_dim])  # (B, S, K * Hv)
        every = tf.reshape(tf.matmul(weights[:, :, 0], flat_values), [batch, heads, groups, value_dim])  # (B, N, K, Hv)
        return tf.reduce_sum(every * _owners(heads, groups, weights.dtype)[None, :, :, None], axis=2)[:, None]  # (B, 1, N, Hv)
    if one and not grouped:
        mixed_slots = tf.transpose(weights[:, :, 0], (0, 2, 1))[..., None]  # (B, S, N, 1)
        return tf.reduce_sum(mixed_slots * value, axis=1, keepdims=True)  # (B, 1, N, Hv)
    if grouped:
        share = heads // groups
        grouped = tf.reshape(weights, reshape_target([batch, groups, share, queries, slots]))  # (B, K, N / K, T, S)
        output = tf.einsum("bkgts,bskh->btkgh", grouped, value)  # (B, T, K, N / K, Hv)
        return tf.reshape(output, reshape_target([batch, queries, heads, value_dim]))  # (B, T, N, Hv)
    return tf.einsum("bnts,bsnh->btnh", weights, value)  # (B, T, N, Hv)


def _block_diagonal(heads: int, groups: int) -> bool:
    """Whether one query position is scored (and mixed) by block-diagonal matmuls rather than elementwise.

    Always with grouped heads. With ``K = N`` only outside XLA: there the
    matmul avoids the ``(B, S, N, H)`` product of the elementwise form (about
    0.7x the time of a decode step at 4096 slots), whereas XLA fuses that
    product into its reduction and runs the matmul form 3.5x slower on CPU.
    """
    return groups != heads or not in_xla_context()


def _owners(heads: int, groups: int, dtype: tf.DType) -> tf.Tensor:
    """``(N, K)`` one-hot: the key / value head of each of the ``N`` query heads."""
    return tf.one_hot(tf.range(heads) // (heads // groups), groups, dtype=dtype)


def _check_qkv(query: tf.Tensor, key: tf.Tensor, value: tf.Tensor) -> None:
    """Checks the static shapes and dtypes of ``(B, T, N, H)`` queries and ``(B, S, K, H)`` keys / values.

    ``ValueError`` / ``TypeError`` for what is known while tracing; the sizes
    known only at run time are for ``_with_run_time_checks``.
    """
    query_shape = shapes.check_rank(query.shape, 4, "query", "(B, T, N, H)")
    key_shape = shapes.check_rank(key.shape, 4, "key", "(B, S, K, H)")
    value_shape = shapes.check_rank(value.shape, 4, "value", "(B, S, K, H)")
    text = f"query {shapes.format_shape(query_shape)}, key {shapes.format_shape(key_shape)}, value {shapes.format_shape(value_shape)}"
    for tensor, name in ((query, "query"), (key, "key"), (value, "value")):
        if not tensor.dtype.is_floating:
            raise TypeError(f"`{name}` must be a floating-point tensor. Received: {name} with dtype {tensor.dtype.name}")
        if tensor.dtype != query.dtype:
            raise TypeError(f"`query`, `key` and `value` must share one dtype. Received: {text} with dtypes {query.dtype.name}, {key.dtype.name}, {value.dtype.name}")
    shapes.check_same_dims({"query B": query_shape[0], "key B": key_shape[0], "value B": value_shape[0]}, "batch sizes B", text)
    shapes.check_same_dims({"key S": key_shape[1], "value S": value_shape[1]}, "key and value lengths S", text)
    shapes.check_same_dims({"key K": key_shape[2], "value K": value_shape[2]}, "key and value head counts K", text)
    if query_shape[2] is not None and key_shape[2] is not None and query_shape[2] % key_shape[2]:
        raise ValueError(
            "The key / value head count K must divide the query head count N (grouped-query attention: each key / "
            f"value head serves N / K query heads). Received: {text}"
        )
    shapes.check_same_dims({"query H": query_shape[3], "key H": key_shape[3]}, "query and key head sizes H", text)


def _with_run_time_checks(query: tf.Tensor, key: tf.Tensor, value: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """``query``, ``key``, ``value`` depending on graph assertions for the sizes that must agree but are unknown while tracing."""
    tensors = {"query": query, "key": key, "value": value}
    rules = [  # what must agree, and the (argument, axis) of each size
        ("batch sizes B", [("query", 0), ("key", 0), ("value", 0)]),
        ("key / value lengths S", [("key", 1), ("value", 1)]),
        ("query and key head sizes H", [("query", 3), ("key", 3)]),
    ]
    conditions = []
    for what, dims in rules:
        if all(tensors[name].shape[axis] is not None for name, axis in dims):
            continue  # checked in Python
        sizes = [tf.shape(tensors[name])[axis] for name, axis in dims]
        same = tf.reduce_all(tf.stack([tf.equal(size, sizes[0]) for size in sizes[1:]]))
        names = ", ".join(f"`{name}`" for name, _ in dims)
        message = f"The {what} must agree. Received at run time: the shapes of {names} ="
        conditions.append((same, [message] + [tf.shape(tensors[name]) for name, _ in dims]))
    checks = _run_time_checks(conditions)
    if not checks:
        return query, key, value
    with tf.control_dependencies(checks):
        return tf.identity(query), tf.identity(key), tf.identity(value)


def _run_time_checks(conditions: Sequence[tuple[tf.Tensor, list[Any]]]) -> list[tf.Operation]:
    """Graph assertions ``(condition, message and data)``; none eagerly (every size is known, checked in
    Python) nor under XLA (which drops assertions)."""
    if tf.executing_eagerly() or in_xla_context():
        return []
    return [tf.debugging.Assert(condition, data, summarize=16) for condition, data in conditions]


def _scale(query: tf.Tensor, scale: float | tf.Tensor | None) -> float | tf.Tensor:
    """The score scale: a Python float, or a scalar tensor / ``tf.Variable`` kept as is (a learnable temperature
    keeps its gradient, and a symbolic tensor works inside ``tf.function``)."""
    if isinstance(scale, (tf.Tensor, tf.Variable)) or (scale is not None and hasattr(scale, "dtype") and hasattr(scale, "shape")):
        tensor = tf.convert_to_tensor(scale) if not isinstance(scale, tf.Variable) else scale
        if tensor.shape.rank not in (None, 0) or not tensor.dtype.is_floating:
            raise ValueError(
                f"`scale` must be a number or a floating scalar tensor. Received: scale with shape {tensor.shape} and dtype {tensor.dtype.name}"
            )
        return scale
    if scale is not None:
        if isinstance(scale, bool) or not isinstance(scale, (int, float)):
            raise TypeError(f"`scale` must be a number or a floating scalar tensor. Received: scale={scale!r}")
        return float(scale)
    head_dim = query.shape[-1]
    if head_dim is None:
        raise ValueError("The head size (last axis of `query`) must be known to derive the default `scale` = 1 / sqrt(H)")
    return 1.0 / math.sqrt(head_dim)


@tf.autograph.experimental.do_not_convert
def attention(
    query: tf.Tensor,
    key: tf.Tensor,
    value: tf.Tensor,
    attention_mask: tf.Tensor | None = None,
    use_causal_mask: bool = True,
    sliding_window: int | None = None,
    scale: float | tf.Tensor | None = None,
    dropout: Callable[[tf.Tensor], tf.Tensor] | None = None,
    return_scores: bool = False,
) -> tf.Tensor | tuple[tf.Tensor, tf.Tensor]:
    """Multi-head dot-product attention on projected queries, keys and values (no cache).

    ``softmax(scale * q . k + mask) . v`` per head, with the softmax in float32.
    The causal mask aligns the first query with the first key (query ``i``
    sees keys ``j <= i``), as ``keras.layers.MultiHeadAttention`` does. A row
    whose every key is masked gets all-zero weights.

    Args:
        query: ``(B, T, N, H)``.
        key: ``(B, S, K, H)`` (``K`` divides ``N``: grouped-query attention when ``K < N``).
        value: ``(B, S, K, Hv)``.
        attention_mask: optional boolean ``(B, T, S)`` (``B``, ``T`` may be 1).
        use_causal_mask: hide the keys after each query.
        sliding_window: optional positive int, keys farther than it are hidden.
        scale: the score scale, ``1 / sqrt(H)`` by default; a float, or a scalar tensor / ``tf.Variable`` (its gradient flows).
        dropout: optional callable applied to the attention weights before
            they mix the values (e.g. a bound Keras ``Dropout``).
        return_scores: also return the weights.

    Returns:
        ``(B, T, N, Hv)`` in the query dtype, and with ``return_scores`` the
        weights ``(B, N, T, S)`` (each visible row sums to 1).

    Example:
        >>> q = k = v = tf.random.normal((2, 5, 4, 8))
        >>> attention(q, k, v).shape
        TensorShape([2, 5, 4, 8])
    """
    query, key, value = (tf.convert_to_tensor(t) for t in (query, key, value))
    _check_qkv(query, key, value)
    query, key, value = _with_run_time_checks(query, key, value)
    query_length, key_length = dynamic_dims(query)[1], dynamic_dims(key)[1]
    visible = build_attention_mask(query_length, key_length, 0, None, use_causal_mask, sliding_window)  # (1, T, S)
    if attention_mask is not None:
        visible &= _user_mask(attention_mask, query_length, key_length, query)  # (B, T, S)
    output, scores = _attend(query, key, value, visible, _scale(query, scale), dropout, return_scores)
    return (output, scores) if return_scores else output


def bucket_lengths(cache_length: int, min_bucket: int = MIN_BUCKET) -> tuple[int, ...]:
    """The attended lengths used under XLA, each at most 1.5x the previous one.

    Powers of two from ``min_bucket`` and the midpoints ``3 * 2**k`` between
    them, below ``cache_length``, then ``cache_length`` itself: a call reads at
    most 1.5x the filled slots (beyond the first bucket), with about
    ``2 * log2(T / min_bucket)`` compiled branches.

    Example:
        >>> bucket_lengths(300)
        (64, 96, 128, 192, 256, 300)
    """
    cache_length = shapes.check_int(cache_length, "cache_length", minimum=1)
    power = shapes.check_int(min_bucket, "min_bucket", minimum=1)
    lengths = []
    while power < cache_length:
        lengths += [length for length in (power, power * 3 // 2) if length < cache_length]
        power *= 2
    return tuple(lengths) + (cache_length,)


@tf.autograph.experimental.do_not_convert
def cached_attention(
    query: tf.Tensor,
    key: tf.Tensor,
    value: tf.Tensor,
    cache: tf.Tensor,
    step: int | tf.Tensor | None,
    attention_mask: tf.Tensor | None = None,
    use_causal_mask: bool = True,
    sliding_window: int | None = None,
    scale: float | tf.Tensor | None = None,
    dropout: Callable[[tf.Tensor], tf.Tensor] | None = None,
    return_scores: bool = False,
    span: str = "auto",
) -> tuple[tf.Tensor, tf.Tensor] | tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """One attention step with a key/value cache: write the new keys / values, then attend.

    See the module docstring for the convention, and ``mlable_core.cache``
    for the cache. Prefill (``T > 1``) and decode (``T = 1``) are the same call;
    decoding a sequence in chunks of any sizes gives the outputs of one causal
    pass over it.

    Args:
        query: ``(B, T, N, H)`` projected queries.
        key: ``(B, T, K, H)`` projected keys of the same ``T`` positions (``K`` divides ``N``).
        value: ``(B, T, K, H)`` projected values.
        cache: ``(2, B, S, K, H)`` in the dtype of the projections; a tensor,
            or a ``tf.Variable``, written in place and returned as is (for a
            decode step called from Python: see ``mlable_core.cache``).
        step: absolute position of the first new position (Python int or int
            scalar tensor); ``None`` appends after the existing slots (the
            cache grows by ``T``, and every slot counts as filled; not for a variable).
        attention_mask: optional boolean ``(B, T, S)`` over the cache slots
            (with ``step=None``: over the ``S + T`` slots after the append).
        use_causal_mask: query ``i`` sees slots ``<= step + i`` only.
        sliding_window: optional positive int; slots at distance ``>=`` it are hidden.
        scale: score scale, ``1 / sqrt(H)`` by default; a float, or a scalar tensor / ``tf.Variable``.
        dropout: optional callable applied to the attention weights.
        return_scores: also return the weights ``(B, N, T, S)``.
        span: which slots the attention reads: ``"auto"`` (``"filled"``
            outside XLA, ``"buckets"`` under XLA), ``"filled"``, ``"buckets"``
            or ``"allocated"``; every choice gives the same result.

    Returns:
        ``(output, new_cache)``, or ``(output, scores, new_cache)`` with
        ``return_scores``: ``output`` is ``(B, T, N, H)``; ``scores`` is
        ``(B, N, T, S)`` with exactly 0 on masked and empty slots.

    Raises:
        ValueError: mismatching shapes, an unknown ``span``, ``"filled"`` under
            XLA, or a write past the end known eagerly or while tracing.
        TypeError: dtypes differ or ``step`` is not an integer.
        tf.errors.InvalidArgumentError: in a graph, a write past the end at run time.

    Example:
        >>> cache = create_cache(batch_size=2, cache_length=16, num_heads=4, head_dim=8)
        >>> q = k = v = tf.random.normal((2, 3, 4, 8))
        >>> output, cache = cached_attention(q, k, v, cache, step=0)  # prefill 3 positions
        >>> q = k = v = tf.random.normal((2, 1, 4, 8))
        >>> output, cache = cached_attention(q, k, v, cache, step=3)  # decode the 4th
        >>> output.shape
        TensorShape([2, 1, 4, 8])
    """
    xla = in_xla_context()
    _check_span(span, xla)
    variable = cache if isinstance(cache, tf.Variable) else None
    if variable is not None and step is None:
        kv_cache.reject_variable(variable, "appending (step=None)")
    query, key, value = (tf.convert_to_tensor(t) for t in (query, key, value))
    _check_qkv(query, key, value)
    query, key, value = _with_run_time_checks(query, key, value)
    cache = variable if variable is not None else tf.convert_to_tensor(cache)
    _check_same_new_positions(query, key)
    new = dynamic_dims(query)[1]
    overflow = None
    if step is None:
        cache, step = append_cache(cache, key, value)  # (2, B, S + T, K, H), step = S
    else:
        cache = update_cache(cache, key, value, step)  # (2, B, S, K, H)
        if variable is not None:
            cache = tf.convert_to_tensor(variable)  # read after the write (ordered on the resource); no copy
        step = kv_cache.normalize_step(step)[0]
        if xla:  # XLA drops the overflow assertion: the flag turns the output into NaN instead
            overflow = kv_cache.write_overflows(step, new, dynamic_dims(cache)[2])
    read = functools.partial(
        _attend_slots, query, cache, step, step + tf.cast(new, tf.int32), _slot_mask(attention_mask, query, cache),
        use_causal_mask, sliding_window, _scale(query, scale), dropout, return_scores,
    )
    span = _resolve_span(span, xla, cache)
    if span == "buckets":
        output, scores = _attend_buckets(read, step + tf.cast(new, tf.int32), dynamic_dims(cache)[2], return_scores)
    else:
        output, scores = read(step + tf.cast(new, tf.int32) if span == "filled" else dynamic_dims(cache)[2])
    if overflow is not None:
        output = tf.where(overflow, tf.constant(float("nan"), output.dtype), output)
    if variable is not None:
        cache = variable
    return (output, scores, cache) if return_scores else (output, cache)


def _check_span(span: str, xla: bool) -> None:
    if span not in SPANS:
        raise ValueError(f"`span` must be one of {SPANS}. Received: span={span!r}")
    if span == "filled" and xla:
        raise ValueError('`span="filled"` slices the cache to a length known only at run time, which XLA cannot compile: use "buckets" or "allocated"')


def _resolve_span(span: str, xla: bool, cache: tf.Tensor) -> str:
    """The span a call reads: ``"auto"`` resolved, and ``"allocated"`` for buckets over a slot count unknown while tracing."""
    if span == "auto":
        span = "buckets" if xla else "filled"
    if span == "buckets" and cache.shape[2] is None:
        return "allocated"  # buckets need a static S
    return span


def _check_same_new_positions(query: tf.Tensor, key: tf.Tensor) -> None:
    queries, keys = query.shape[1], key.shape[1]
    if queries is not None and keys is not None and queries != keys:
        raise ValueError(
            "With a cache, `query`, `key` and `value` must cover the same T new positions. "
            f"Received: query with shape {shapes.format_shape(query.shape)}, key with shape {shapes.format_shape(key.shape)}"
        )


def _slot_mask(mask: Any, query: tf.Tensor, cache: tf.Tensor) -> tf.Tensor | None:
    """The user mask over the cache slots as booleans ``(B, T, S)``, checked against the full slot count."""
    return None if mask is None else _user_mask(mask, dynamic_dims(query)[1], dynamic_dims(cache)[2], query)


def _attend_slots(
    query: tf.Tensor,
    cache: tf.Tensor,
    step: tf.Tensor,
    filled: tf.Tensor,
    mask: tf.Tensor | None,
    use_causal_mask: bool,
    sliding_window: int | None,
    scale: float | tf.Tensor,
    dropout: Callable[[tf.Tensor], tf.Tensor] | None,
    return_scores: bool,
    length: int | tf.Tensor,
) -> tuple[tf.Tensor, tf.Tensor | None]:
    """Attention of ``(B, T, N, H)`` queries over the first ``length`` slots of a written cache.

    Slots at or beyond ``filled`` are hidden, so any ``length >= filled``
    gives the same output; the scores are padded with zeros to all ``S`` slots.
    """
    slots = dynamic_dims(cache)[2]
    queries = dynamic_dims(query)[1]
    visible = build_attention_mask(queries, length, step, filled, use_causal_mask, sliding_window)  # (1, T, length)
    if mask is not None:
        visible &= mask[:, :, :length]  # (B, T, length); a mask (B, T, 1) broadcasts over the slots
    keys, values = cache[0, :, :length], cache[1, :, :length]  # (B, length, K, H)
    output, scores = _attend(query, keys, values, visible, scale, dropout, return_scores)
    if scores is not None and not (isinstance(length, int) and isinstance(slots, int) and length == slots):
        scores = tf.pad(scores, [[0, 0], [0, 0], [0, 0], [0, slots - length]])  # (B, N, T, S)
    return output, scores


def _attend_buckets(
    read: Callable[[int], tuple[tf.Tensor, tf.Tensor | None]], filled: tf.Tensor, slots: int, return_scores: bool
) -> tuple[tf.Tensor, tf.Tensor | None]:
    """``read(length)`` for the smallest bucket length holding ``filled`` slots, picked at run time (XLA)."""
    lengths = bucket_lengths(slots)
    index = tf.reduce_sum(tf.cast(filled > tf.constant(lengths[:-1], tf.int32), tf.int32))
    branches = [functools.partial(_without_none, read, length) for length in lengths]
    result = tf.switch_case(index, branches)
    result = list(result) if isinstance(result, (tuple, list)) else [result]
    return result[0], (result[1] if return_scores else None)


def _without_none(read: Callable[[int], tuple[tf.Tensor, tf.Tensor | None]], length: int) -> tuple[tf.Tensor, ...]:
    """``read(length)`` without its ``None`` scores (the branches of ``tf.switch_case`` return tensors only)."""
    return tuple(item for item in read(length) if item is not None)


@tf.autograph.experimental.do_not_convert
def ring_attention(
    query: tf.Tensor,
    key: tf.Tensor,
    value: tf.Tensor,
    cache: tf.Tensor,
    step: int | tf.Tensor,
    attention_mask: tf.Tensor | None = None,
    use_causal_mask: bool = True,
    scale: float | tf.Tensor | None = None,
    dropout: Callable[[tf.Tensor], tf.Tensor] | None = None,
    return_scores: bool = False,
) -> tuple[tf.Tensor, ...]:
    """Sliding-window attention over a ring-buffer cache of ``W`` slots, for generation of any length.

    The cache ``(2, B, W, K, H)`` holds the keys / values of the last ``W``
    positions written, position ``p`` in slot ``p % W`` (see
    ``mlable_core.cache.update_ring_cache``); the window is its size ``W``:
    query ``step + i`` sees the positions ``q`` with
    ``step + i - W < q <= step + i`` (``|.| < W`` without the causal mask),
    never a position not written yet. The ``T`` new positions are attended
    together with the ring as it was (so a chunk longer than ``W`` is exact
    too), then the last ``min(T, W)`` of them are written into their slots.
    Memory is ``O(W)`` whatever the length, and the shapes are static, so a
    compiled loop runs with one trace. While ``step + T <= W`` it equals
    ``cached_attention`` with ``sliding_window=W`` on a ``W``-slot cache.

    Args:
        query: ``(B, T, N, H)`` projected queries at positions ``[step, step + T)``.
        key: ``(B, T, K, H)`` projected keys of the same positions (``K`` divides ``N``).
        value: ``(B, T, K, H)`` projected values.
        cache: ``(2, B, W, K, H)``, from ``create_cache(batch, W, K, H)``.
        step: the position of the first new query: an int or an integer scalar tensor, ``>= 0``.
        attention_mask: optional boolean ``(B, T, W + T)`` over the ring slots
            followed by the new positions (``B``, ``T`` may be 1).
        use_causal_mask: hide the positions after each query.
        scale: the score scale, ``1 / sqrt(H)`` by default.
        dropout: optional callable applied to the attention weights.
        return_scores: also return the weights ``(B, N, T, W + T)`` (ring slots, then new positions).

    Returns:
        ``(output (B, T, N, H), new_cache)``, or ``(output, scores, new_cache)``.

    Example:
        >>> ring = create_cache(batch_size=1, cache_length=4, num_heads=2, head_dim=8)  # a window of 4
        >>> for position in range(10):  # any length, constant memory
        ...     x = tf.random.normal((1, 1, 2, 8))
        ...     output, ring = ring_attention(x, x, x, ring, position)
        >>> ring.shape
        TensorShape([2, 1, 4, 2, 8])
    """
    kv_cache.reject_variable(cache, "a ring cache")
    query, key, value, cache = (tf.convert_to_tensor(t) for t in (query, key, value, cache))
    _check_qkv(query, key, value)
    query, key, value = _with_run_time_checks(query, key, value)
    kv_cache.check_update(cache, key, value)
    window = kv_cache.ring_window(cache)
    step_tensor, step_value = kv_cache.normalize_step(step)
    if step_value is not None and step_value < 0:
        raise ValueError(f"`step` must be >= 0. Received: step={step_value}")
    new = dynamic_dims(query)[1]
    visible = _ring_mask(step_tensor, new, window, use_causal_mask)  # (1, T, W + T)
    if attention_mask is not None:
        visible &= _user_mask(attention_mask, new, window + new, query)  # (B, T, W + T)
    keys = tf.concat([cache[0], key], axis=1)  # (B, W + T, K, H)
    values = tf.concat([cache[1], value], axis=1)
    output, scores = _attend(query, keys, values, visible, _scale(query, scale), dropout, return_scores)
    cache = kv_cache.update_ring_cache(cache, key, value, step_tensor)
    return (output, scores, cache) if return_scores else (output, cache)


def _ring_mask(step: tf.Tensor, new: int | tf.Tensor, window: int, use_causal_mask: bool) -> tf.Tensor:
    """Which of the ``W`` ring slots and ``T`` new positions each new query sees: ``(1, T, W + T)``."""
    queries = step + tf.range(new, dtype=tf.int32)  # (T,) absolute positions of the new queries
    held = kv_cache.ring_positions(step, window)  # (W,)
    positions = tf.concat([held, queries], axis=0)  # (W + T,)
    written = tf.concat([held >= 0, tf.ones_like(queries, dtype=tf.bool)], axis=0)  # (W + T,)
    distance = queries[:, None] - positions[None, :]  # (T, W + T)
    visible = written[None, :] & (tf.abs(distance) < window)
    if use_causal_mask:
        visible &= distance >= 0
    return visible[None]  # (1, T, W + T)


__all__ = [
    "MIN_BUCKET",
    "SPANS",
    "append_cache",
    "attention",
    "build_attention_mask",
    "bucket_lengths",
    "cached_attention",
    "create_cache",
    "in_xla_context",
    "ring_attention",
    "update_cache",
]

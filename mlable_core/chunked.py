"""Attention over long sequences in bounded memory: blocks of queries and keys, an online softmax.

``chunked_attention`` takes the inputs of ``mlable_core.attention.attention``
and returns its output, to float tolerance, without ever building the
``(B, N, T, S)`` scores: queries are processed ``query_chunk_size`` at a time,
and for each block of queries the keys ``key_chunk_size`` at a time, keeping a
running maximum, a running sum of the exponentials and a running weighted sum
of the values per query row (the online softmax of Milakov and Gimelshein,
2018, as used by FlashAttention). The memory beyond the inputs and the output
is ``O(B * N * query_chunk_size * key_chunk_size)``, whatever ``T`` and ``S``.

Key blocks that the causal mask or the sliding window hide entirely from a
block of queries are never visited, so causal attention does about half the
work of full attention. The user mask is sliced per block (any broadcastable
``(B, T, S)`` form).

The gradient is exact and also runs in bounded memory: the forward pass keeps
only its output and the log-sum-exp of each query row, and the backward pass
recomputes the weights block by block (the FlashAttention backward): with
``P`` the weights, ``dV = P^T dO``, ``dP = dO V^T``, ``D = rowsum(dO * O)``,
``dS = P * (dP - D)``, ``dQ = scale * dS K`` and ``dK = scale * dS^T Q``.

Shape letters (the project's glossary): ``B`` batch, ``T`` query positions,
``S`` key / value positions, ``N`` query heads, ``K`` key / value heads
(``K`` divides ``N``; ``N / K`` query heads share one key / value head),
``H`` head size, ``W`` sliding window. Inside the kernel a block holds
``query_chunk`` queries (``key_chunk`` keys); for each key / value head its
queries are laid out as ``rows = N / K * query_chunk`` rows.
"""

from __future__ import annotations

from typing import Any

import tensorflow as tf

from mlable_core import attention as plain
from mlable_core import shapes
from mlable_core.cache import in_xla_context
from mlable_core.reshaping import dynamic_dims

# default block sizes: a (B, N, 512, 512) float32 score block is 8 MiB for B * N = 8
QUERY_CHUNK_SIZE = 512
KEY_CHUNK_SIZE = 512

# the running maximum starts here: finite, so that a row with no visible key yet keeps exp(m - m_new) = 1
_START = -1e30

# blocks in flight per loop: 1 keeps the memory to one block's temporaries (each matmul already uses every core)
_PARALLEL = 1


def _compute_dtype(dtype: tf.DType) -> tf.DType:
    """key_chunkores, softmax and accumulators run in float32 (float64 stays float64)."""
    return tf.float64 if dtype == tf.float64 else tf.float32


def _to_blocks(x: tf.Tensor, size: int, count: Any, groups: Any) -> tf.Tensor:
    """``(B, L, N, H)`` padded to ``count * size`` positions, as blocks ``(count, B, K, N / K * size, H)``.

    Query head ``n = k * N / K + g`` becomes row ``g * size + i`` of the block of
    its key / value head ``k`` (keys and values: ``groups = 1``).
    """
    batch, length, heads, features = dynamic_dims(x)
    x = tf.pad(x, [[0, 0], [0, count * size - length], [0, 0], [0, 0]])  # (B, count * size, N, H)
    x = tf.reshape(x, [batch, count, size, heads // groups, groups, features])  # (B, count, size, K, N / K, H)
    x = tf.transpose(x, (1, 0, 3, 4, 2, 5))  # (count, B, K, N / K, size, H)
    return tf.reshape(x, [count, batch, heads // groups, groups * size, features])  # (count, B, K, N / K * size, H)


def _from_blocks(x: tf.Tensor, size: int, length: Any, groups: Any) -> tf.Tensor:
    """The inverse of ``_to_blocks``: ``(count, B, K, N / K * size, H)`` to ``(B, L, N, H)``."""
    count, batch, kv_heads, _, features = dynamic_dims(x)
    x = tf.reshape(x, [count, batch, kv_heads, groups, size, features])  # (count, B, K, N / K, size, H)
    x = tf.transpose(x, (1, 0, 4, 2, 3, 5))  # (B, count, size, K, N / K, H)
    x = tf.reshape(x, [batch, count * size, kv_heads * groups, features])  # (B, count * size, N, H)
    return x[:, :length]  # (B, L, N, H)


def _block_count(length: Any, size: int) -> Any:
    return (length + size - 1) // size


class _Plan:
    """Sizes, block counts and the visibility rules of one call, shared by the forward and backward passes."""

    def __init__(
        self, query: tf.Tensor, key: tf.Tensor, value: tf.Tensor, mask: tf.Tensor | None, causal: bool,
        window: int | None, query_chunk: int, key_chunk: int,
    ) -> None:
        self.batch, self.queries, self.heads, self.head_dim = dynamic_dims(query)
        self.keys, self.kv_heads = dynamic_dims(key)[1:3]
        self.value_dim = dynamic_dims(value)[3]
        self.groups = self.heads // self.kv_heads
        # a block never needs to be longer than the sequence when that length is static
        self.query_chunk = min(query_chunk, self.queries) if isinstance(self.queries, int) and self.queries > 0 else query_chunk
        self.key_chunk = min(key_chunk, self.keys) if isinstance(self.keys, int) and self.keys > 0 else key_chunk
        self.query_blocks = _block_count(self.queries, self.query_chunk)
        self.key_blocks = _block_count(self.keys, self.key_chunk)
        self.causal, self.window, self.mask = causal, window, mask
        if mask is not None:
            mask_dims = dynamic_dims(mask)
            self.mask_last_row, self.mask_last_col = mask_dims[1] - 1, mask_dims[2] - 1

    def block_shape(self, *dims: Any) -> tf.TensorShape:
        """A block's static shape: the Python ints among ``dims``, ``None`` for the rest (an empty stack keeps its rank)."""
        return tf.TensorShape([dim if isinstance(dim, int) else None for dim in dims])

    def stack(self, blocks: tf.TensorArray, count: Any, *dims: Any) -> tf.Tensor:
        """``blocks.stack()``, also for zero blocks (an empty sequence), whose stack needs a static element shape."""
        if isinstance(count, int) and count > 0:
            return blocks.stack()
        empty = lambda: tf.zeros(tf.stack([0, *dims]), blocks.dtype)  # noqa: E731
        if isinstance(count, int):
            return empty()
        return tf.cond(count > 0, blocks.stack, empty)

    def key_range(self, block: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """The key blocks ``[low, high)`` that may be visible from query block ``block``."""
        first = block * self.query_chunk
        last = tf.minimum(first + self.query_chunk, self.queries) - 1
        low, high = tf.zeros_like(block), tf.convert_to_tensor(self.keys - 1, tf.int32)
        if self.window is not None:
            low = tf.maximum(low, first - self.window + 1)
        if self.causal:
            high = tf.minimum(high, last)
        elif self.window is not None:
            high = tf.minimum(high, last + self.window - 1)
        return self._blocks_between(low, high, self.key_chunk, self.key_blocks)

    def query_range(self, block: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """The query blocks ``[low, high)`` that may see key block ``block``."""
        first = block * self.key_chunk
        last = tf.minimum(first + self.key_chunk, self.keys) - 1
        low, high = tf.zeros_like(block), tf.convert_to_tensor(self.queries - 1, tf.int32)
        if self.causal:
            low = tf.maximum(low, first)
        elif self.window is not None:
            low = tf.maximum(low, first - self.window + 1)
        if self.window is not None:
            high = tf.minimum(high, last + self.window - 1)
        return self._blocks_between(low, high, self.query_chunk, self.query_blocks)

    @staticmethod
    def _blocks_between(low: tf.Tensor, high: tf.Tensor, size: int, count: Any) -> tuple[tf.Tensor, tf.Tensor]:
        first = tf.minimum(low // size, tf.cast(count, tf.int32))
        return first, tf.maximum(first, tf.minimum(high // size + 1, tf.cast(count, tf.int32)))

    def mask_rows(self, block: tf.Tensor) -> tf.Tensor | None:
        """The user mask's rows of query block ``block``: ``(B or 1, query_chunk, S or 1)``."""
        if self.mask is None:
            return None
        rows = tf.minimum(block * self.query_chunk + tf.range(self.query_chunk), self.mask_last_row)
        return tf.gather(self.mask, rows, axis=1)

    def mask_cols(self, block: tf.Tensor) -> tf.Tensor | None:
        """The user mask's columns of key block ``block``: ``(B or 1, T or 1, key_chunk)``."""
        if self.mask is None:
            return None
        cols = tf.minimum(block * self.key_chunk + tf.range(self.key_chunk), self.mask_last_col)
        return tf.gather(self.mask, cols, axis=2)

    def visible(self, query_block: tf.Tensor, key_block: tf.Tensor, rows: tf.Tensor | None, cols: tf.Tensor | None) -> tf.Tensor:
        """Which pairs of the two blocks are visible: ``(B or 1, 1, 1, query_chunk, key_chunk)``.

        ``rows`` (from ``mask_rows``) or ``cols`` (from ``mask_cols``) carries the user mask, sliced along the other axis here.
        """
        positions = query_block * self.query_chunk + tf.range(self.query_chunk)  # (query_chunk,)
        slots = key_block * self.key_chunk + tf.range(self.key_chunk)  # (key_chunk,)
        queries, keys = positions[:, None], slots[None, :]  # (query_chunk, 1), (1, key_chunk)
        visible = keys < self.keys  # the padding of the last key block
        if self.causal:
            visible &= keys <= queries
        if self.window is not None:
            visible &= tf.abs(queries - keys) < self.window
        visible = visible[None]  # (1, query_chunk, key_chunk)
        if rows is not None:
            visible &= tf.gather(rows, tf.minimum(slots, self.mask_last_col), axis=2)
        elif cols is not None:
            visible &= tf.gather(cols, tf.minimum(positions, self.mask_last_row), axis=1)
        return visible[:, None, None]  # (B or 1, 1, 1, query_chunk, key_chunk)

    def masked_scores(self, scores: tf.Tensor, visible: tf.Tensor) -> tf.Tensor:
        """``(B, K, rows, key_chunk)`` scores with ``-inf`` where hidden."""
        batch, kv_heads, rows, cols = dynamic_dims(scores)
        grouped = tf.reshape(scores, [batch, kv_heads, self.groups, self.query_chunk, cols])  # (B, K, N / K, query_chunk, key_chunk)
        grouped = tf.where(visible, grouped, tf.constant(-float("inf"), scores.dtype))
        return tf.reshape(grouped, [batch, kv_heads, rows, cols])  # (B, K, rows, key_chunk)


def _forward(plan: _Plan, query: tf.Tensor, key: tf.Tensor, value: tf.Tensor, scale: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Blocks ``(query blocks, B, K, rows, Hv)`` of the output and ``(query blocks, B, K, rows)`` of the log-sum-exp, in the compute dtype."""
    dtype = scale.dtype
    batch, kv_heads, rows = plan.batch, plan.kv_heads, plan.groups * plan.query_chunk

    def query_step(block: tf.Tensor, outputs: tf.TensorArray, sums: tf.TensorArray) -> tuple[Any, ...]:
        scaled = tf.cast(tf.gather(query, block), dtype) * scale  # (B, K, rows, H)
        low, high = plan.key_range(block)
        mask_rows = plan.mask_rows(block)

        def key_step(index: tf.Tensor, peak: tf.Tensor, total: tf.Tensor, mixed: tf.Tensor) -> tuple[tf.Tensor, ...]:
            keys = tf.cast(tf.gather(key, index), dtype)  # (B, K, key_chunk, H)
            values = tf.cast(tf.gather(value, index), dtype)  # (B, K, key_chunk, Hv)
            scores = tf.matmul(scaled, keys, transpose_b=True)  # (B, K, rows, key_chunk)
            scores = plan.masked_scores(scores, plan.visible(block, index, mask_rows, None))
            new_peak = tf.maximum(peak, tf.reduce_max(scores, axis=-1))  # (B, K, rows)
            weights = tf.exp(scores - new_peak[..., None])  # (B, K, rows, key_chunk), 0 where hidden
            decay = tf.exp(peak - new_peak)
            total = total * decay + tf.reduce_sum(weights, axis=-1)
            mixed = mixed * decay[..., None] + tf.matmul(weights, values)  # (B, K, rows, Hv)
            return index + 1, new_peak, total, mixed

        start = (
            low,
            tf.fill(tf.stack([batch, kv_heads, rows]), tf.constant(_START, dtype)),
            tf.zeros(tf.stack([batch, kv_heads, rows]), dtype),
            tf.zeros(tf.stack([batch, kv_heads, rows, plan.value_dim]), dtype),
        )
        _, peak, total, mixed = tf.while_loop(lambda index, *_: index < high, key_step, start, parallel_iterations=_PARALLEL)
        output = tf.math.divide_no_nan(mixed, total[..., None])  # a row with no visible key: zeros
        # log-sum-exp of the visible scores; a row with no visible key gets 0 (its weights recompute to 0)
        lse = tf.where(total > 0, peak + tf.math.log(tf.maximum(total, tf.constant(1e-30, dtype))), tf.zeros((), dtype))
        return block + 1, outputs.write(block, output), sums.write(block, lse)

    outputs = tf.TensorArray(dtype, size=plan.query_blocks, element_shape=plan.block_shape(batch, kv_heads, rows, plan.value_dim))
    sums = tf.TensorArray(dtype, size=plan.query_blocks, element_shape=plan.block_shape(batch, kv_heads, rows))
    _, outputs, sums = tf.while_loop(
        lambda block, *_: block < plan.query_blocks, query_step, (tf.constant(0), outputs, sums), parallel_iterations=_PARALLEL
    )
    return plan.stack(outputs, plan.query_blocks, batch, kv_heads, rows, plan.value_dim), plan.stack(sums, plan.query_blocks, batch, kv_heads, rows)


def _backward(
    plan: _Plan, query: tf.Tensor, key: tf.Tensor, value: tf.Tensor, scale: tf.Tensor,
    output: tf.Tensor, lse: tf.Tensor, upstream: tf.Tensor, with_scale: bool,
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor | None]:
    """Blocks of ``dQ``, ``dK``, ``dV`` (compute dtype) and ``d scale`` (or ``None``), recomputing the weights.

    Two passes, each writing its own blocks once: over query blocks for ``dQ``
    (and ``d scale``), then over key blocks for ``dK`` and ``dV``.
    """
    dtype = scale.dtype
    delta = tf.reduce_sum(upstream * output, axis=-1)  # (query blocks, B, K, rows): D = rowsum(dO * O)

    def weights_and_score_grads(block_q, block_k, scaled, keys, values, grads, mask_rows, mask_cols):
        scores = tf.matmul(scaled, keys, transpose_b=True)  # (B, K, rows, key_chunk)
        scores = plan.masked_scores(scores, plan.visible(block_q, block_k, mask_rows, mask_cols))
        weights = tf.exp(scores - tf.gather(lse, block_q)[..., None])  # P, 0 where hidden
        weight_grads = tf.matmul(grads, values, transpose_b=True)  # dP = dO V^T
        return weights, weights * (weight_grads - tf.gather(delta, block_q)[..., None])  # P, dS

    def query_step(block, query_grads, scale_grad):
        raw = tf.cast(tf.gather(query, block), dtype)  # (B, K, rows, H)
        scaled = raw * scale
        grads = tf.gather(upstream, block)  # (B, K, rows, Hv)
        low, high = plan.key_range(block)
        mask_rows = plan.mask_rows(block)

        def key_step(index, total):
            keys = tf.cast(tf.gather(key, index), dtype)
            values = tf.cast(tf.gather(value, index), dtype)
            _, score_grads = weights_and_score_grads(block, index, scaled, keys, values, grads, mask_rows, None)
            return index + 1, total + tf.matmul(score_grads, keys)  # sum over keys of dS K

        _, total = tf.while_loop(lambda index, _: index < high, key_step, (low, tf.zeros_like(raw)), parallel_iterations=_PARALLEL)
        if with_scale:
            scale_grad += tf.reduce_sum(total * raw)  # d scale = sum dS * (q . k) = sum_i q_i . (dS K)_i
        return block + 1, query_grads.write(block, total * scale), scale_grad

    def key_step_outer(block, key_grads, value_grads):
        keys = tf.cast(tf.gather(key, block), dtype)  # (B, K, key_chunk, H)
        values = tf.cast(tf.gather(value, block), dtype)  # (B, K, key_chunk, Hv)
        low, high = plan.query_range(block)
        mask_cols = plan.mask_cols(block)

        def query_step_inner(index, key_total, value_total):
            scaled = tf.cast(tf.gather(query, index), dtype) * scale
            grads = tf.gather(upstream, index)
            weights, score_grads = weights_and_score_grads(index, block, scaled, keys, values, grads, None, mask_cols)
            value_total += tf.matmul(weights, grads, transpose_a=True)  # P^T dO, summed over the N / K query heads of the key head
            key_total += tf.matmul(score_grads, scaled, transpose_a=True)  # dS^T (scale * Q)
            return index + 1, key_total, value_total

        start = (low, tf.zeros_like(keys), tf.zeros_like(values))
        _, key_total, value_total = tf.while_loop(lambda index, *_: index < high, query_step_inner, start, parallel_iterations=_PARALLEL)
        return block + 1, key_grads.write(block, key_total), value_grads.write(block, value_total)

    rows = plan.groups * plan.query_chunk
    query_grads = tf.TensorArray(dtype, size=plan.query_blocks, element_shape=plan.block_shape(plan.batch, plan.kv_heads, rows, plan.head_dim))
    _, query_grads, scale_grad = tf.while_loop(
        lambda block, *_: block < plan.query_blocks, query_step,
        (tf.constant(0), query_grads, tf.zeros((), dtype)), parallel_iterations=_PARALLEL,
    )
    key_grads = tf.TensorArray(dtype, size=plan.key_blocks, element_shape=plan.block_shape(plan.batch, plan.kv_heads, plan.key_chunk, plan.head_dim))
    value_grads = tf.TensorArray(dtype, size=plan.key_blocks, element_shape=plan.block_shape(plan.batch, plan.kv_heads, plan.key_chunk, plan.value_dim))
    _, key_grads, value_grads = tf.while_loop(
        lambda block, *_: block < plan.key_blocks, key_step_outer, (tf.constant(0), key_grads, value_grads),
        parallel_iterations=_PARALLEL,
    )
    return (
        plan.stack(query_grads, plan.query_blocks, plan.batch, plan.kv_heads, rows, plan.head_dim),
        plan.stack(key_grads, plan.key_blocks, plan.batch, plan.kv_heads, plan.key_chunk, plan.head_dim),
        plan.stack(value_grads, plan.key_blocks, plan.batch, plan.kv_heads, plan.key_chunk, plan.value_dim),
        scale_grad if with_scale else None,
    )


def _check_bool(value: Any, name: str) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"`{name}` must be a bool. Received: {name}={value!r} of type {type(value).__name__}")
    return value


def _runtime_checks(query: tf.Tensor, key: tf.Tensor, value: tf.Tensor, mask: tf.Tensor | None) -> list[tf.Operation]:
    """Assertions on the sizes known only at run time (none eagerly, where every size is static)."""
    if tf.executing_eagerly() or in_xla_context():
        return []
    query_dims, key_dims, value_dims = (tf.shape(t) for t in (query, key, value))
    text = "chunked_attention: query (B, T, N, H), key (B, S, K, H), value (B, S, K, Hv) must agree on"
    checks = [
        tf.debugging.assert_equal(key_dims[0], query_dims[0], message=f"{text} the batch size B; key B, query B ="),
        tf.debugging.assert_equal(value_dims[0], query_dims[0], message=f"{text} the batch size B; value B, query B ="),
        tf.debugging.assert_equal(value_dims[1], key_dims[1], message=f"{text} the key length S; value S, key S ="),
        tf.debugging.assert_equal(value_dims[2], key_dims[2], message=f"{text} the key / value heads K; value K, key K ="),
        tf.debugging.assert_equal(query_dims[2] % key_dims[2], 0, message=f"{text} heads: K must divide N; N mod K ="),
        tf.debugging.assert_equal(key_dims[3], query_dims[3], message=f"{text} the head size H; key H, query H ="),
    ]
    if mask is not None:
        mask_dims = tf.shape(mask)
        for axis, size, letter in ((0, query_dims[0], "B"), (1, query_dims[1], "T"), (2, key_dims[1], "S")):
            checks.append(
                tf.debugging.Assert(
                    (mask_dims[axis] == 1) | (mask_dims[axis] == size),
                    [f"chunked_attention: `attention_mask` must have shape (B, T, S) (each may be 1); axis {axis} must be 1 or {letter} =", size, "received", mask_dims],
                )
            )
    return checks


@tf.autograph.experimental.do_not_convert
def chunked_attention(
    query: tf.Tensor,
    key: tf.Tensor,
    value: tf.Tensor,
    attention_mask: tf.Tensor | None = None,
    use_causal_mask: bool = True,
    sliding_window: int | None = None,
    scale: float | tf.Tensor | None = None,
    query_chunk_size: int = QUERY_CHUNK_SIZE,
    key_chunk_size: int = KEY_CHUNK_SIZE,
) -> tf.Tensor:
    """Multi-head attention on projected tensors in bounded memory: blocks and an online softmax.

    Equal, to float tolerance, to ``mlable_core.attention.attention`` with the
    same arguments: ``softmax(scale * q . k, masked) . v`` per head, the causal
    mask aligning the first query with the first key, a query that sees no key
    giving zeros. It never builds the ``(B, N, T, S)`` scores: the extra memory
    is a few ``(B, N, query_chunk_size, key_chunk_size)`` blocks. Key blocks
    hidden by the causal mask or the window are skipped (causal attention costs
    about half of full attention). key_chunkores, softmax and accumulators run in
    float32 for half-precision inputs (float64 stays float64), one block at a
    time, so no half-precision ``q . k`` can overflow. The gradients with
    respect to ``query``, ``key``, ``value`` (and a tensor ``scale``) are exact
    and recomputed block by block in the backward pass, in bounded memory too.

    Works eagerly, in ``tf.function`` with unknown ``B``, ``T``, ``S`` (the last
    blocks are padded and the padding masked), and under ``jit_compile=True``
    (static block shapes, ``tf.while_loop`` over the blocks). There is no
    attention dropout and the weights are not returned; use ``attention`` for those.

    Args:
        query: ``(B, T, N, H)`` projected queries.
        key: ``(B, S, K, H)`` projected keys, ``K`` dividing ``N`` (grouped-query
            attention: query head ``n`` reads key head ``n // (N / K)``).
        value: ``(B, S, K, Hv)`` projected values.
        attention_mask: optional boolean (or 0 / 1) ``(B, T, S)`` mask, where
            ``B``, ``T`` and ``S`` may be 1 (broadcast); True means visible.
        use_causal_mask: hide the keys after each query (query ``i`` sees keys ``j <= i``).
        sliding_window: optional positive int ``W``: keys with ``|i - j| >= W`` are hidden.
        scale: the score scale, ``1 / sqrt(H)`` by default; a float, or a
            floating scalar tensor / ``tf.Variable`` (its gradient flows).
        query_chunk_size: queries per block, a positive int (clamped to ``T`` when ``T`` is static).
        key_chunk_size: keys per block, a positive int (clamped to ``S`` when ``S`` is static).

    Returns:
        ``(B, T, N, Hv)`` in the dtype of ``query``.

    Raises:
        ValueError: mismatching shapes, a bad mask shape, a window or chunk size below 1.
        TypeError: non-floating or mixed dtypes, a non-bool ``use_causal_mask``, a non-int size.

    Example:
        >>> q = tf.random.normal((1, 4096, 8, 64))
        >>> k = v = tf.random.normal((1, 4096, 2, 64))  # 2 key / value heads shared by 8 query heads
        >>> chunked_attention(q, k, v, query_chunk_size=512, key_chunk_size=512).shape
        TensorShape([1, 4096, 8, 64])
    """
    query, key, value = (tf.convert_to_tensor(t) for t in (query, key, value))
    plain._check_qkv(query, key, value)
    plain._check_mask_batch(attention_mask, query)
    causal = _check_bool(use_causal_mask, "use_causal_mask")
    window = None if sliding_window is None else shapes.check_int(sliding_window, "sliding_window", minimum=1)
    query_chunk = shapes.check_int(query_chunk_size, "query_chunk_size", minimum=1)
    key_chunk = shapes.check_int(key_chunk_size, "key_chunk_size", minimum=1)
    scale = plain._scale(query, scale)
    dtype = _compute_dtype(query.dtype)
    scale_is_tensor = not isinstance(scale, float)
    scale_tensor = tf.cast(tf.convert_to_tensor(scale), dtype) if scale_is_tensor else tf.constant(scale, dtype)
    mask = None
    if attention_mask is not None:
        query_length, key_length = dynamic_dims(query)[1], dynamic_dims(key)[1]
        mask = plain._user_mask(attention_mask, query_length, key_length)  # boolean (B or 1, T or 1, S or 1)
    checks = _runtime_checks(query, key, value, mask)
    with tf.control_dependencies(checks):
        query = tf.identity(query)
    plan = _Plan(query, key, value, mask, causal, window, query_chunk, key_chunk)
    groups, queries = plan.groups, plan.queries

    @tf.custom_gradient
    def run(query: tf.Tensor, key: tf.Tensor, value: tf.Tensor, scale: tf.Tensor) -> tuple[tf.Tensor, Any]:
        query_blocks = _to_blocks(query, plan.query_chunk, plan.query_blocks, groups)  # (query blocks, B, K, rows, H)
        key_blocks = _to_blocks(key, plan.key_chunk, plan.key_blocks, 1)  # (key blocks, B, K, key_chunk, H)
        value_blocks = _to_blocks(value, plan.key_chunk, plan.key_blocks, 1)  # (key blocks, B, K, key_chunk, Hv)
        output_blocks, lse = _forward(plan, query_blocks, key_blocks, value_blocks, scale)
        output = tf.cast(_from_blocks(output_blocks, plan.query_chunk, queries, groups), query.dtype)  # (B, T, N, Hv)

        def gradient(upstream: tf.Tensor) -> tuple[tf.Tensor, ...]:
            upstream_blocks = _to_blocks(tf.cast(upstream, dtype), plan.query_chunk, plan.query_blocks, groups)
            grads = _backward(
                plan, query_blocks, key_blocks, value_blocks, scale, output_blocks, lse, upstream_blocks, scale_is_tensor
            )
            query_grad = _from_blocks(grads[0], plan.query_chunk, queries, groups)  # (B, T, N, H)
            key_grad = _from_blocks(grads[1], plan.key_chunk, plan.keys, 1)  # (B, S, K, H)
            value_grad = _from_blocks(grads[2], plan.key_chunk, plan.keys, 1)  # (B, S, K, Hv)
            return (
                tf.cast(query_grad, query.dtype), tf.cast(key_grad, key.dtype), tf.cast(value_grad, value.dtype),
                grads[3],
            )

        return output, gradient

    if scale_is_tensor:
        original = tf.convert_to_tensor(scale)
        return run(query, key, value, tf.cast(original, dtype))
    return run(query, key, value, scale_tensor)


__all__ = ["KEY_CHUNK_SIZE", "QUERY_CHUNK_SIZE", "chunked_attention"]

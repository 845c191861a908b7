"""Samplers: pick indices from logits (greedy, temperature, top-k, top-p) or integers from bits.

Every op works over the LAST axis (``V``, the vocabulary: e.g. 256 byte values)
of a tensor of any leading shape (``...``), eagerly, in ``tf.function`` and
under ``jit_compile=True`` (e.g. inside the ``tf.while_loop`` of a compiled
generation loop); shapes stay static. Logits may contain ``-inf`` (forbidden
indices), never NaN or ``+inf``.

What ``sample`` keeps: top-k keeps exactly ``k`` logits (on ties, the lower
index first, as ``tf.math.top_k``); top-p keeps the smallest prefix of the
sorted logits whose probability reaches ``p``, and the logits tied with its
last one, i.e. every index whose logit is >= a threshold; ``candidates``
shows the kept set. The order is the logits' own: the temperature changes
the probabilities, not the order (mlable 0.21 ordered ``logits / temperature``
in float32, where two logits one ulp apart can round to a tie). The index is
drawn from the kept probabilities, renormalised, exactly (up to float
rounding).

How: one uniform per row drawn by inverse CDF, no noise per logit and no sort
of the vocabulary. The rows are cut into blocks of about ``sqrt(V)`` logits;
a max pass and an exp pass give the mass of every block, the uniform picks a
block from the block masses, then an index inside the block (rows of at most
``SMALL_VOCABULARY`` logits use one cumulative sum instead). Each pass first
combines ``SLICES`` slices of the row element by element, then reduces what
is left: XLA on CPU spreads an elementwise loop over its threads but runs a
reduction on one. Top-k on ``V >= 64 k`` looks for its ``k`` logits among
the ``k`` blocks with the largest maxima (a block-max pass, then
``tf.math.top_k`` on ``32 k`` block maxima): alone, it draws from the
softmax of those ``V / 32`` candidates and keeps the first of
``TOP_K_DRAWS`` draws ranked below ``k`` among them; before top-p, it ranks
them with ``tf.math.top_k``. On smaller vocabularies top-k draws from the
whole softmax and keeps the first of ``TOP_K_DRAWS`` draws that lies in the
top k. Either way only the rows that every draw misses are sorted. Top-p is rejection
sampling: an index drawn from the whole softmax is kept when the probability
of the logits strictly above it is below ``p`` (which is exactly the nucleus
rule), else the row draws again; at least a fraction ``p`` of the draws are
kept. On large vocabularies the check first reads the columns of the slices
(``V / SLICES`` maxima and sums, kept from the passes): the weight above a
drawn logit lies between two bounds from the columns whose maximum is above
it, which settle most draws; the others take a masked sum over their row.
After top-k, top-p works on the ``k`` sorted candidates.

Randomness is stateless and counter-based: ``seed`` is an int32 / int64 tensor
of shape ``(2,)`` (one seed for the call; row ``r`` of the flattened leading
axes uses counter ``r``) or ``(*prefix, 2)`` where ``prefix`` is a leading
prefix of ``logits.shape[:-1]`` (one seed per row of the prefix, e.g.
``(B, 2)`` for logits ``(B, 4, 256)``; the rows below a seed use counters
``0, 1, ...``). The uniforms come from the splitmix64 finalizer of
``(seed, counter, draw)``, in int64 arithmetic, so the same seed gives the same
samples eagerly, in a graph and under XLA, and a row's sample depends only on
its seed, its counter and its own logits: a row sampled alone equals the same
row inside a batch (with per-row seeds). Eager and compiled calls may round
``softmax`` differently in the last bit, which changes a draw only when the
uniform falls within that rounding of a boundary between two indices. A
generation loop derives one seed per step, e.g.
``tf.random.experimental.stateless_fold_in(seed, step)``.
"""

from __future__ import annotations

import functools
import math
import numbers
from typing import Any

import numpy as np
import tensorflow as tf

from mlable_core import shapes
from mlable_core.cache import in_xla_context
from mlable_core.reshaping import dynamic_dims, reshape_target

# int32 outputs hold at most 31 bits
MAX_DEPTH = 31
# at most this many choices per row: temperature alone samples with one cumulative sum over the row
SMALL_VOCABULARY = 2048
# top-p and top-k: the rows still drawing after the first round are handled this many at a time
RETRY_ROWS = 16
# top-p: the relative rounding allowed for when bounds from the columns decide a draw
CERTIFY_MARGIN = 1e-4
# top-p: the rows drawing again, when at most this many are left
FEW_ROWS = 8
# top-p: the most draws a retried row makes per round
RETRY_DRAWS = 8
# top-k on vocabularies below 64 k: draws checked against the top k before sorting the row
TOP_K_DRAWS = 4
# the block size of the block path when the vocabulary is only known at run time
DYNAMIC_BLOCK = 256
# the block path's passes combine this many slices of a row element by element before reducing
SLICES = 8

# splitmix64 constants, as signed int64 (not every device multiplies uint64)
_GOLDEN = -7046029254386353131  # 0x9E3779B97F4A7C15
_MIX_FIRST = -4658895280553007687  # 0xBF58476D1CE4E5B9
_MIX_SECOND = -7723592293110705685  # 0x94D049BB133111EB
_SALT = 0x5851F42D4C957F2D  # separates the two seed words


def _check_logits(logits: Any, name: str = "logits") -> tf.Tensor:
    logits = tf.convert_to_tensor(logits)
    if logits.shape.rank is None or logits.shape.rank < 1:
        raise ValueError(f"`{name}` must have rank >= 1 (the choices on the last axis). Received: shape={logits.shape}")
    if not logits.dtype.is_floating:
        raise TypeError(f"`{name}` must be a float tensor. Received: dtype={logits.dtype.name}, shape={logits.shape}")
    if logits.shape[-1] == 0:
        raise ValueError(f"`{name}` must have at least one choice on the last axis. Received: shape={shapes.format_shape(logits.shape)}")
    return logits


def _convert_seed(seed: Any, expected: str) -> tf.Tensor:
    if seed is None:
        raise ValueError(f"`seed` must be {expected} int32 / int64 tensor to sample. Received: seed=None")
    if isinstance(seed, tf.Tensor) or hasattr(seed, "dtype"):
        seed = tf.convert_to_tensor(seed)
    else:
        seed = tf.convert_to_tensor(np.asarray(seed))
    if seed.dtype not in (tf.int32, tf.int64):
        raise TypeError(f"`seed` must hold int32 or int64 values. Received: dtype={seed.dtype.name}, shape={shapes.format_shape(seed.shape)}")
    return seed


def _check_seed(seed: Any) -> tf.Tensor:
    """A seed of shape ``(2,)`` (``gumbel``, ``binary``)."""
    seed = _convert_seed(seed, "a shape (2,)")
    if seed.shape.rank is not None and not seed.shape.is_compatible_with([2]):
        raise ValueError(f"`seed` must have shape (2,). Received: shape={shapes.format_shape(seed.shape)}")
    return seed


def _check_row_seed(seed: Any, logits: tf.Tensor | tf.TensorShape) -> tuple[tf.Tensor, list[tf.Operation]]:
    """A seed of shape ``(2,)`` or ``(*prefix, 2)``, ``prefix`` leading ``logits.shape[:-1]``.

    Returns the seed and the run-time checks of the prefix dims unknown while
    tracing (``logits`` may be a fully known shape, which needs none).
    """
    seed = _convert_seed(seed, "a shape (2,) or (*prefix, 2)")
    shape = logits if isinstance(logits, tf.TensorShape) else logits.shape
    leading = tuple(shape.as_list()[:-1])
    expected = f"(2,) or (*prefix, 2) with `prefix` a leading prefix of the logits' leading shape {shapes.format_shape(leading)}"
    if seed.shape.rank is None:
        raise ValueError(f"`seed` must have a known rank: shape {expected}. Received: shape=<unknown rank>")
    static = tuple(seed.shape.as_list())
    prefix = static[:-1]
    if seed.shape.rank == 0 or static[-1] not in (2, None) or len(prefix) > len(leading):
        raise ValueError(f"`seed` must have shape {expected}. Received: seed shape={shapes.format_shape(static)}, logits shape={shapes.format_shape(shape)}")
    checks = []
    message = f"`seed` must have shape {expected}. Received: seed shape={shapes.format_shape(static)}, logits shape={shapes.format_shape(shape)}"
    for axis, (dim, expected_dim) in enumerate(zip(prefix, leading)):
        if dim is not None and expected_dim is not None:
            if dim != expected_dim:
                raise ValueError(message)
        else:
            checks.append(tf.debugging.assert_equal(tf.shape(seed)[axis], tf.shape(logits)[axis], message=message))
    if static[-1] is None:
        checks.append(tf.debugging.assert_equal(tf.shape(seed)[-1], 2, message=message))
    return seed, checks


def _check_number(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"`{name}` must be a Python float. Received: {name}={value!r} of type {type(value).__name__}")
    value = float(value)
    if math.isnan(value):
        raise ValueError(f"`{name}` must not be NaN. Received: {name}={value}")
    return value


def _check_temperature(temperature: Any) -> float:
    temperature = _check_number(temperature, "temperature")
    if temperature < 0 or math.isinf(temperature):
        raise ValueError(f"`temperature` must be a finite float >= 0 (0 means greedy). Received: temperature={temperature}")
    return temperature


def _check_top_k(top_k: Any) -> int | None:
    return None if top_k is None else shapes.check_int(top_k, "top_k", minimum=1)


def _check_top_p(top_p: Any) -> float | None:
    if top_p is None:
        return None
    top_p = _check_number(top_p, "top_p")
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"`top_p` must be in (0, 1]. Received: top_p={top_p}")
    return top_p


def greedy(logits: Any) -> tf.Tensor:
    """The index of the largest logit over the last axis (the first one on ties).

    Args:
        logits: a float tensor of shape ``(..., V)``.

    Returns:
        An int32 tensor of shape ``(...)``.

    Example:
        >>> greedy(tf.constant([[0.1, 2.0, -1.0], [3.0, 0.0, 3.0]])).numpy().tolist()
        [1, 0]
    """
    logits = _check_logits(logits)
    return tf.argmax(logits, axis=-1, output_type=tf.int32)



def _scale(logits: tf.Tensor, temperature: float) -> tf.Tensor:
    scaled = tf.cast(logits, tf.float32)
    return scaled if temperature == 1.0 else scaled / temperature



def _count(requested: int, vocabulary: int | tf.Tensor) -> int | tf.Tensor:
    """``min(requested, V)``, a Python int when ``V`` is static."""
    return min(requested, vocabulary) if isinstance(vocabulary, int) else tf.minimum(requested, vocabulary)


def _kept_weights(values: tf.Tensor, temperature: float, top_p: float | None) -> tuple[tf.Tensor, tf.Tensor]:
    """The float64 weights of sorted candidates and the nucleus among them.

    Args:
        values: ``(..., K)`` float32 logits in decreasing order (before the temperature).
        temperature: a float > 0.
        top_p: ``None`` or a float in ``(0, 1)``.

    Returns:
        ``(weights, kept)``: ``exp((value - max) / temperature)`` in float64, 0
        outside the nucleus, and the boolean nucleus: the smallest prefix whose
        probability reaches ``p``, with every value tied with its last one.
    """
    scores = tf.cast(values, tf.float64)
    top = tf.reduce_max(scores, axis=-1, keepdims=True)
    weights = tf.exp((scores - tf.where(top > -np.inf, top, 0.0)) / temperature)  # -inf logits weigh 0
    if top_p is None:
        return weights, tf.ones_like(values, tf.bool)
    before = tf.cumsum(weights, axis=-1, exclusive=True)
    total = tf.reduce_sum(weights, axis=-1, keepdims=True)
    # a reduction rather than a slice: XLA then still sees top_k as a TopK, not as a full sort
    threshold = tf.reduce_min(tf.where(before < top_p * total, values, tf.constant(np.inf, values.dtype)), axis=-1, keepdims=True)
    kept = values >= threshold
    return tf.where(kept, weights, 0.0), kept


def candidates(
    logits: Any, temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None
) -> tuple[tf.Tensor, tf.Tensor]:
    """The logits ``sample`` draws from, sorted in decreasing order, with their indices.

    The steps run in this order, each on the result of the previous one:

    1. order the logits (float32), largest first; on ties the lower index
       comes first (``tf.math.top_k``); the temperature changes no order;
    2. top-k: keep the ``k`` first; ``k >= V`` keeps all;
    3. top-p (nucleus): with the probabilities ``softmax(logits / temperature)``
       over what is left, keep the smallest prefix whose probability reaches
       ``p`` and the logits equal to its last one; the others become ``-inf``.
       ``p = 1`` keeps all.

    This sorts the whole vocabulary for top-p without top-k; ``sample`` avoids it.

    ``sample`` draws from ``softmax(values)`` and returns ``indices`` at the drawn position.

    Args:
        logits: a float tensor of shape ``(..., V)``; may contain ``-inf``.
        temperature: a Python float > 0.
        top_k: ``None`` (no top-k) or an int >= 1.
        top_p: ``None`` (no top-p) or a Python float in ``(0, 1]``.

    Returns:
        ``(values, indices)``: float32 and int32 tensors of shape ``(..., K)``,
        ``K = min(top_k, V)`` with top-k, else ``V``; ``values`` are
        ``logits / temperature``, ``-inf`` where dropped.

    Raises:
        TypeError: ``logits`` is not a float tensor, or an argument has the wrong type.
        ValueError: ``temperature <= 0``, ``top_k < 1`` or ``top_p`` outside ``(0, 1]``.

    Example:
        >>> values, indices = candidates(tf.math.log([[0.2, 0.5, 0.3]]), top_p=0.6)
        >>> indices.numpy().tolist(), [round(float(value), 2) for value in values[0]]
        ([[1, 2, 0]], [-0.69, -1.2, -inf])
    """
    logits = _check_logits(logits)
    temperature = _check_temperature(temperature)
    if temperature == 0:
        raise ValueError("`temperature` must be > 0 for `candidates` (`sample` reads temperature=0 as greedy). Received: temperature=0.0")
    top_k, top_p = _check_top_k(top_k), _check_top_p(top_p)
    values = tf.cast(logits, tf.float32)
    vocabulary = dynamic_dims(values)[-1]
    values, indices = tf.math.top_k(values, k=vocabulary if top_k is None else _count(top_k, vocabulary))  # (..., K)
    _, kept = _kept_weights(values, temperature, top_p if top_p is not None and top_p < 1.0 else None)
    return tf.where(kept, _scale(values, temperature), tf.constant(-np.inf, tf.float32)), indices


def gumbel(shape: Any, seed: Any) -> tf.Tensor:
    """Standard Gumbel noise ``-log(-log(u))``, ``u`` uniform in ``(0, 1)``, from a stateless seed.

    For the Gumbel-max trick (``argmax(logits + gumbel(...))`` draws from
    ``softmax(logits)``) or Gumbel-top-k. ``sample`` no longer uses it: it
    needs one random number per logit, where the inverse CDF needs one per row.
    The noise comes from ``tf.random.stateless_uniform`` (Philox), whose stream
    differs under XLA.

    Args:
        shape: the output shape (a list of ints or a 1-D int tensor).
        seed: a shape ``(2,)`` int32 / int64 tensor.

    Returns:
        A float32 tensor of shape ``shape``; the same seed gives the same noise.
    """
    seed = _check_seed(seed)
    tiny = np.finfo(np.float32).tiny  # keeps log(u) finite
    uniform = tf.random.stateless_uniform(shape, seed=seed, minval=tiny, maxval=1.0, dtype=tf.float32, alg="philox")
    return -tf.math.log(-tf.math.log(uniform))


def _shift_right(value: tf.Tensor, bits: int) -> tf.Tensor:
    """Logical right shift of int64 bits (``tf.bitwise.right_shift`` is arithmetic on signed types)."""
    shifted = tf.bitwise.right_shift(value, tf.constant(bits, tf.int64))
    return tf.bitwise.bitwise_and(shifted, tf.constant((1 << (64 - bits)) - 1, tf.int64))


def _mix(value: tf.Tensor) -> tf.Tensor:
    """The splitmix64 finalizer on int64 bits (products wrap modulo 2**64)."""
    value = tf.bitwise.bitwise_xor(value, _shift_right(value, 30)) * tf.constant(_MIX_FIRST, tf.int64)
    value = tf.bitwise.bitwise_xor(value, _shift_right(value, 27)) * tf.constant(_MIX_SECOND, tf.int64)
    return tf.bitwise.bitwise_xor(value, _shift_right(value, 31))


def _row_keys(seed: tf.Tensor, leading: list[int | tf.Tensor]) -> tf.Tensor:
    """One int64 key per row of the flattened leading axes, from the seed(s) and the row's counter.

    Args:
        seed: ``(*prefix, 2)`` int32 / int64, ``prefix`` leading ``leading``.
        leading: the leading dims of the logits (ints or scalar tensors).

    Returns:
        ``(R,)`` int64, ``R`` the product of ``leading``: ``mix(key + (counter + 1) * golden)``
        with ``key = mix((seed[0] ^ salt) * golden + seed[1])``.
    """
    words = tf.reshape(tf.cast(seed, tf.int64), [-1, 2])  # (P, 2)
    golden = tf.constant(_GOLDEN, tf.int64)
    keys = _mix(tf.bitwise.bitwise_xor(words[:, 0], tf.constant(_SALT, tf.int64)) * golden + words[:, 1])  # (P,)
    below = leading[seed.shape.rank - 1 :]
    count = math.prod(below) if all(isinstance(dim, int) for dim in below) else tf.reduce_prod(tf.stack([tf.cast(dim, tf.int64) for dim in below]))
    counters = tf.range(1, tf.cast(count, tf.int64) + 1, dtype=tf.int64)  # (Q,), from 1
    return tf.reshape(_mix(keys[:, None] + counters[None, :] * golden), [-1])  # (P * Q,)


def _uniform(keys: tf.Tensor, draw: int | tf.Tensor) -> tf.Tensor:
    """Float64 uniforms in ``[0, 1 - 2**-52]`` (52 random bits), one per (row key, draw number) pair (broadcast).

    Draw 0 reads the row key itself (already a hash); draw ``d > 0`` hashes ``key + d * golden``.
    The largest value, ``1 - 2**-52``, times a positive float64 is strictly below it.
    """
    if isinstance(draw, int) and draw == 0:
        bits = keys
    else:
        draw = tf.cast(draw, tf.int64)
        bits = tf.where(draw == 0, keys, _mix(keys + draw * tf.constant(_GOLDEN, tf.int64)))
    return tf.cast(_shift_right(bits, 12), tf.float64) * (2.0**-52)


def uniform(seed: Any, shape: Any, draw: int = 0) -> tf.Tensor:
    """The uniforms ``sample`` draws with: float64 in ``[0, 1)``, one per row of ``shape``.

    ``uniform(seed, logits.shape[:-1])`` holds the uniform of every row's first
    draw; ``draw=d`` gives the ``d``-th one (top-p draws again when it rejects).
    They come from a counter-based hash (the splitmix64 finalizer) of the seed,
    the row's counter and ``draw``, in int64 arithmetic: identical eagerly, in
    graphs and under XLA, and on any device. Row ``r`` of the rows below a seed
    (C order) has counter ``r``.

    Args:
        seed: int32 / int64, ``(2,)`` or ``(*prefix, 2)`` with ``prefix`` leading ``shape``.
        shape: the leading shape (a list of ints).
        draw: the draw number, an int >= 0.

    Returns:
        A float64 tensor of shape ``shape``, multiples of ``2**-52``.

    Example:
        >>> u = uniform(tf.constant([1, 2]), [2, 3])
        >>> u.shape, bool(tf.reduce_all((u >= 0) & (u < 1)))
        (TensorShape([2, 3]), True)
    """
    shape = [shapes.check_int(dim, "shape", minimum=0) for dim in shape]
    draw = shapes.check_int(draw, "draw", minimum=0)
    seed, checks = _check_row_seed(seed, tf.TensorShape(shape + [1]))
    with tf.control_dependencies(checks):
        return tf.reshape(_uniform(_row_keys(seed, shape), draw), shape)


# fractions stay below 1, so that a target is always below its cumulative total
_LAST_FRACTION = 1.0 - 2.0**-52


def _inverse_cdf(masses: tf.Tensor, fractions: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """The entry whose cumulative interval holds ``fraction * total``, and where in it.

    Args:
        masses: ``(..., n)`` float64 masses >= 0 (NaN only in a row without any valid choice).
        fractions: ``(..., D)`` float64 in ``[0, 1 - 2**-52]``.

    Returns:
        ``(index, inside)``, both ``(..., D)``: the first index whose cumulative
        mass exceeds the target (so never an index of mass 0 when the row has
        mass), and the target's fraction of the way through that entry's mass,
        itself a valid fraction for the next stage.
    """
    cumulative = tf.cumsum(masses, axis=-1)
    targets = fractions * cumulative[..., -1:]  # (..., D), below the total
    count = dynamic_dims(masses)[-1]
    index = tf.minimum(tf.reduce_sum(tf.cast(cumulative[..., None, :] <= targets[..., None], tf.int32), axis=-1), count - 1)  # all-zero rows
    batch = len(masses.shape) - 1
    before = tf.gather(cumulative - masses, index, batch_dims=batch)
    inside = (targets - before) / tf.gather(masses, index, batch_dims=batch)
    return index, tf.minimum(tf.maximum(inside, 0.0), _LAST_FRACTION)


def _layout(size: int | tf.Tensor, target: int) -> tuple[int, int | tf.Tensor, int | tf.Tensor]:
    """Blocks for a row of ``size`` entries: ``(block, count, padding)`` with ``block * count = size + padding``.

    A divisor of ``size`` in ``[target / 2, target]`` when there is one (no
    padding), else blocks of ``target`` and a padded last block.
    """
    if isinstance(size, int):
        for block in range(min(target, size), max(target // 2, 1) - 1, -1):
            if size % block == 0:
                return block, size // block, 0
        padding = -size % target
        return target, (size + padding) // target, padding
    padding = tf.math.floormod(-size, target)
    return target, (size + padding) // target, padding


def _pad(values: tf.Tensor, padding: int | tf.Tensor) -> tf.Tensor:
    """``(R, V) -> (R, V + padding)`` with ``-inf`` logits (probability 0) at the end."""
    if isinstance(padding, int) and padding == 0:
        return values
    return tf.pad(values, [[0, 0], [0, padding]], constant_values=-np.inf)


def _sample_candidates(values: tf.Tensor, indices: tf.Tensor | None, keys: tf.Tensor, temperature: float, top_p: float | None, draw: int = 0) -> tf.Tensor:
    """Draws from a few candidates per row, in float64.

    Args:
        values: ``(R, K)`` float32 logits (before the temperature), sorted in decreasing order when ``top_p`` is set.
        indices: ``(R, K)`` int32 vocabulary index of each candidate, or ``None`` (the position).
        keys: ``(R,)`` row keys.
        temperature: a float > 0.
        top_p: ``None`` or a float in ``(0, 1)``: the nucleus among the candidates.
        draw: the number of the row's uniform to use.

    Returns:
        ``(R,)`` int32 indices.
    """
    weights, _ = _kept_weights(values, temperature, top_p)
    position, _ = _inverse_cdf(weights, _uniform(keys, draw)[:, None])  # (R, 1)
    if indices is None:
        return position[:, 0]
    return tf.gather(indices, position, batch_dims=1)[:, 0]


def _ascending(values: tf.Tensor) -> tf.Tensor:
    """``tf.sort`` of a few distinct int32 values a row ``(R, k)``, by ranks (XLA's sort on CPU costs a millisecond here)."""
    ranks = tf.reduce_sum(tf.cast(values[:, None, :] < values[:, :, None], tf.int32), axis=-1)  # (R, k): the values below each
    places = tf.range(dynamic_dims(values)[-1], dtype=tf.int32)
    return tf.reduce_sum(tf.where(ranks[:, :, None] == places, values[:, :, None], 0), axis=1)  # (R, k)


def _candidate_blocks(logits: tf.Tensor, top_k: int) -> tuple[tf.Tensor, tf.Tensor, int]:
    """The ``k`` blocks of ``(R, V)`` logits with the largest maxima, in index order (static ``V >= 64 k``).

    Every logit of the top k lies in one of them (ties between blocks to the
    lower block, as between logits): there are fewer than ``k`` logits above
    the k-th largest, hence fewer than ``k`` blocks holding one, and the tied
    logits kept (the lower indices) lie in the lowest of the blocks whose
    maximum equals it.

    Returns:
        ``(logits, starts, block)``: the blocks' logits ``(R, k, block)``, the
        index of each block's first logit ``(R, k)`` int32, increasing, and the
        block size (about ``V / (32 k)``).
    """
    vocabulary = dynamic_dims(logits)[-1]
    block, blocks, padding = _layout(vocabulary, vocabulary // (32 * top_k))
    rows = dynamic_dims(logits)[0]
    grouped = tf.reshape(_pad(logits, padding), reshape_target([rows, blocks, block]))  # (R, V / block, block)
    _, chosen = tf.math.top_k(tf.reduce_max(grouped, axis=-1), k=top_k)  # (R, k)
    chosen = _ascending(chosen)  # index order, so that ties go to the lower indices
    return tf.gather(grouped, chosen, batch_dims=1), chosen * block, block


def _largest(logits: tf.Tensor, top_k: int) -> tuple[tf.Tensor, tf.Tensor]:
    """``tf.math.top_k(logits, min(top_k, V))`` on ``(R, V)``, faster on large vocabularies.

    On ``V >= 64 k``, ``top_k`` runs on the ``k`` blocks of ``_candidate_blocks``
    (which hold the top k), gathered in index order, instead of on the whole row.
    """
    vocabulary = dynamic_dims(logits)[-1]
    count = min(top_k, vocabulary) if isinstance(vocabulary, int) else tf.minimum(top_k, vocabulary)
    if not isinstance(vocabulary, int) or vocabulary < 64 * top_k:
        return tf.math.top_k(logits, k=count)
    gathered, starts, block = _candidate_blocks(logits, top_k)
    rows = dynamic_dims(logits)[0]
    values, positions = tf.math.top_k(tf.reshape(gathered, reshape_target([rows, top_k * block])), k=top_k)  # (R, k)
    return values, tf.gather(starts, positions // block, batch_dims=1) + positions % block


def _draws(top_p: float) -> int:
    """Draws per retried row and round: enough that a round fails with odds below 1 in 100."""
    if top_p >= 1.0 - 1e-6:
        return 1
    return max(1, min(RETRY_DRAWS, math.ceil(math.log(0.01) / math.log1p(-top_p))))


def _parts(logits: tf.Tensor) -> list[tf.Tensor]:
    """``(R, SLICES * C)`` as ``SLICES`` consecutive slices ``(R, C)``."""
    return tf.unstack(tf.reshape(logits, reshape_target([dynamic_dims(logits)[0], SLICES, -1])), axis=1)


def _fold(combine: Any, values: list[tf.Tensor]) -> tf.Tensor:
    """``combine`` over ``values`` element by element: ``combine(combine(v0, v1), v2) ...``."""
    return functools.reduce(combine, values)


class _Blocks:
    """A softmax over ``(R, V)`` cut into blocks: the logits, each row's shift, each block's mass, each row's total.

    Each pass over the rows first combines ``SLICES`` slices of the row
    element by element (their maxima, the sums of their weights), then
    reduces the ``V / SLICES`` results: XLA runs an elementwise loop on every
    thread, a reduction on one, so the costly part (the exps) runs in
    parallel. A block is ``width`` consecutive columns of the slices,
    ``SLICES * width`` logits, about ``sqrt(V)``.

    The weights ``exp(logits / temperature - shift)`` (unnormalised, the shift
    being the row's largest scaled logit) are written as expressions of the
    logits, each pass recomputing them; XLA keeps the slices' weights in
    memory when a later pass reads them too. The columns (``tops`` and
    ``columns``, one per column of the slices) stay for top-p's bounds.
    """

    def __init__(
        self,
        logits: tf.Tensor,
        shift: tf.Tensor,
        masses: tf.Tensor,
        totals: tf.Tensor,
        width: int | tf.Tensor,
        temperature: float,
        tops: tf.Tensor,
        columns: tf.Tensor,
    ):
        self.logits = logits  # (R, V'), float32, padded with -inf: V' = SLICES * C, C = count * width
        self.shift = shift  # (R, 1), float32: the largest scaled logit of the row
        self.masses = masses  # (R, count), float64: the block sums of the weights
        self.totals = totals  # (R,), float64; NaN for a row without a finite logit
        self.width = width  # the columns of a block: block b holds columns [b * width, (b + 1) * width) of every slice
        self.temperature = temperature
        self.tops = tops  # (R, C), float32: each column's largest logit (column c: the logits c, C + c, 2 C + c, ...)
        self.columns = columns  # (R, C), float32: each column's sum of weights

    @classmethod
    def of(cls, logits: tf.Tensor, temperature: float) -> _Blocks:
        """A max pass and one fused exp and block-sum pass over float32 ``logits`` ``(R, V)``."""
        rows, vocabulary = dynamic_dims(logits)
        target = DYNAMIC_BLOCK if not isinstance(vocabulary, int) else 1 << max(2, math.ceil(math.log2(math.sqrt(vocabulary))))
        columns = -(-vocabulary // SLICES)  # ceil(V / SLICES)
        width, count, padding = _layout(columns, max(1, target // SLICES))
        logits = _pad(logits, SLICES * (columns + padding) - vocabulary)  # (R, V')
        parts = _parts(logits)  # SLICES x (R, C)
        tops = _fold(tf.maximum, parts)  # (R, C)
        shift = _scale(tf.reduce_max(tops, axis=-1, keepdims=True), temperature)  # (R, 1): max(x) / t == max(x / t)
        summed = _fold(tf.add, [tf.exp(_scale(part, temperature) - shift) for part in parts])  # (R, C)
        masses = tf.cast(tf.reduce_sum(tf.reshape(summed, reshape_target([rows, count, width])), axis=-1), tf.float64)  # (R, count)
        return cls(logits, shift, masses, tf.reduce_sum(masses, axis=-1), width, temperature, tops, summed)

    def weights(self, logits: tf.Tensor) -> tf.Tensor:
        """``exp(logits / temperature - shift)`` for float32 logits ``(R, ...)`` of these rows."""
        shift = tf.reshape(self.shift, reshape_target([-1] + [1] * (len(logits.shape) - 1)))
        return tf.exp(_scale(logits, self.temperature) - shift)

    def rows(self, picked: tf.Tensor) -> _Blocks:
        """The same for the rows ``picked`` ``(N,)`` only, gathered once."""
        logits, shift, masses, totals, tops, columns = (tf.gather(value, picked) for value in (self.logits, self.shift, self.masses, self.totals, self.tops, self.columns))
        return _Blocks(logits, shift, masses, totals, self.width, self.temperature, tops, columns)

    def draw(self, keys: tf.Tensor, draws: int | tf.Tensor) -> tf.Tensor:
        """Indices ``(R, D)`` drawn from the softmax, for draw numbers ``(R or 1, D)`` (the int 0: ``D = 1``)."""
        block, inside = _inverse_cdf(self.masses, _uniform(keys[:, None], draws))  # (R, D): a block, where in it
        rows, count = dynamic_dims(self.masses)
        view = tf.reshape(self.logits, reshape_target([rows, SLICES, count, self.width]))
        gathered = tf.transpose(tf.gather(view, block, axis=2, batch_dims=1), [0, 2, 1, 3])  # (R, D, SLICES, width)
        weights = tf.cast(self.weights(tf.reshape(gathered, reshape_target([rows, -1, SLICES * self.width]))), tf.float64)
        position, _ = _inverse_cdf(weights, inside[..., None])  # (R, D, 1): slice-major within the block
        part, column = position[..., 0] // self.width, position[..., 0] % self.width
        return part * (count * self.width) + block * self.width + column

    def in_nucleus(self, indices: tf.Tensor, top_p: float) -> tf.Tensor:
        """Whether each drawn index ``(R, D)`` is in the nucleus: the probability strictly above its logit is below ``p``.

        The masses above two draws travel as the real and imaginary parts of
        one complex sum, so that a pass computes each weight once for both.
        """
        draws = dynamic_dims(indices)[-1]
        if draws == 1:
            drawn = tf.gather(self.logits, indices, batch_dims=1)  # (R, 1)
            above = tf.reduce_sum(_fold(tf.add, [tf.where(part > drawn, self.weights(part), 0.0) for part in _parts(self.logits)]), axis=-1, keepdims=True)
            return self._below(above, top_p)
        if draws % 2:
            indices = tf.concat([indices, indices[:, -1:]], axis=-1)  # an even count, the last one checked twice
        drawn = tf.gather(self.logits, indices, batch_dims=1)  # (R, D')
        pairs = tf.reshape(drawn, reshape_target([dynamic_dims(drawn)[0], -1, 2]))[..., None]  # (R, D' / 2, 2, 1)
        terms = []
        for part in _parts(self.logits):
            weights = self.weights(part)[:, None, :]  # (R, 1, C)
            above = [tf.where(part[:, None, :] > pairs[:, :, pair], weights, 0.0) for pair in (0, 1)]  # 2 x (R, D' / 2, C)
            terms.append(tf.complex(*above))
        summed = tf.reduce_sum(_fold(tf.add, terms), axis=-1)  # (R, D' / 2)
        above = tf.reshape(tf.stack([tf.math.real(summed), tf.math.imag(summed)], axis=-1), reshape_target([dynamic_dims(drawn)[0], -1]))[:, :draws]
        return self._below(above, top_p)

    def certify(self, indices: tf.Tensor, top_p: float) -> tuple[tf.Tensor, tf.Tensor]:
        """Which draws ``(R, D)`` are surely in the nucleus, and which surely outside, from the columns alone.

        The weight above a drawn logit lies in the columns whose largest logit
        is above it: at most their whole weight, at least their largest
        weights. When the first bound is below ``p`` times the total the draw
        is in; when the second reaches it, out; else (from none to about 1
        draw in 10 on normal logits of spread 3 to 10 over 50 000 entries)
        only the masked sum over the row (``in_nucleus``) tells. A pass over
        ``V / SLICES`` columns instead of ``V`` logits.
        """
        drawn = tf.gather(self.logits, indices, batch_dims=1)  # (R, D)
        bounds = []
        for draw in range(indices.shape[-1]):  # a few draws: a sum over (R, C) each, no (R, D, C) broadcast
            above = self.tops > drawn[:, draw : draw + 1]  # (R, C)
            bounds.append(tf.reduce_sum(tf.complex(tf.where(above, self.columns, 0.0), tf.where(above, self.weights(self.tops), 0.0)), axis=-1))
        bounds = tf.stack(bounds, axis=-1)  # (R, D): the most as the real part, the least as the imaginary part
        most, least = tf.math.real(bounds), tf.math.imag(bounds)
        target = top_p * self.totals[:, None]  # (R, 1), float64
        # a margin for the rounding of the two sums; NaN bounds (a row without a valid choice) decide nothing
        inside = tf.cast(most, tf.float64) * (1.0 + CERTIFY_MARGIN) < target
        outside = tf.cast(least, tf.float64) >= target * (1.0 + CERTIFY_MARGIN)
        return inside, outside

    def _below(self, above: tf.Tensor, top_p: float) -> tf.Tensor:
        """Whether the float32 masses above ``(R, D)`` are below ``p`` times the total."""
        # a row without a valid choice (NaN total) keeps its first draw
        return (tf.cast(above, tf.float64) < top_p * self.totals[:, None]) | ~(self.totals > 0.0)[:, None]


def _first(accepted: tf.Tensor, indices: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """The first accepted index of each row of ``(N, D)``, and whether there is one."""
    position = tf.argmax(tf.cast(accepted, tf.int32), axis=-1, output_type=tf.int32)
    return tf.gather(indices, position[:, None], batch_dims=1)[:, 0], tf.reduce_any(accepted, axis=-1)


def _in_top_k(logits: tf.Tensor, positions: tf.Tensor, top_k: int) -> tf.Tensor:
    """Whether the drawn positions ``(R, D)`` of ``(R, V)`` logits are among the ``k`` largest (ties: the lower positions)."""
    drawn = tf.gather(logits, positions, batch_dims=1)[..., None]  # (R, D, 1)
    values = logits[:, None, :]  # (R, 1, V)
    places = tf.range(dynamic_dims(logits)[-1], dtype=positions.dtype)
    before = (values > drawn) | ((values == drawn) & (places < positions[..., None]))  # (R, D, V)
    return tf.reduce_sum(tf.cast(before, tf.int32), axis=-1) < top_k


def _rank_missing(chosen: tf.Tensor, logits: tf.Tensor, keys: tf.Tensor, top_k: int, temperature: float, index: Any = None) -> tf.Tensor:
    """Top-k's fallback: the rows whose draws all missed (``chosen < 0``) rank their logits and draw among the top k.

    ``tf.math.top_k`` on those rows of ``(R, V)`` logits, ``RETRY_ROWS`` rows
    at a time, then a draw with uniform number ``TOP_K_DRAWS``; ``index``
    maps ``(rows picked (N,), positions (N, k))`` to vocabulary indices (by
    default the positions are the indices).
    """
    rows = dynamic_dims(logits)[0]
    count = min(RETRY_ROWS, rows) if isinstance(rows, int) else tf.minimum(RETRY_ROWS, rows)

    def exact(chosen: tf.Tensor) -> tuple[tf.Tensor]:
        missing = chosen < 0
        _, picked = tf.math.top_k(tf.cast(missing, tf.int32), k=count)  # rows still drawing, lower rows first
        values, positions = tf.math.top_k(tf.gather(logits, picked), k=top_k)  # (N, k)
        indices = positions if index is None else index(picked, positions)
        drawn = _sample_candidates(values, indices, tf.gather(keys, picked), temperature, None, draw=TOP_K_DRAWS)
        return (tf.tensor_scatter_nd_update(chosen, picked[:, None], tf.where(tf.gather(missing, picked), drawn, tf.gather(chosen, picked))),)

    return tf.while_loop(lambda chosen: tf.reduce_any(chosen < 0), exact, (chosen,))[0]


def _sample_top_k(blocks: _Blocks, keys: tf.Tensor, top_k: int) -> tf.Tensor:
    """Top-k without sorting every row: ``TOP_K_DRAWS`` draws from the whole softmax, the first in the top k wins.

    A row whose draws all fall outside (its top k hold little probability) then
    draws exactly, with ``tf.math.top_k`` on its row, ``RETRY_ROWS`` such rows
    at a time. Either way the draw follows the top k's renormalised softmax,
    and depends on the row's seed and logits only.
    """
    first = blocks.draw(keys, tf.range(TOP_K_DRAWS, dtype=tf.int32)[None, :])  # (R, D)
    chosen, found = _first(_in_top_k(blocks.logits, first, top_k), first)
    return _rank_missing(tf.where(found, chosen, -1), blocks.logits, keys, top_k, blocks.temperature)


def _sample_top_k_blocks(logits: tf.Tensor, keys: tf.Tensor, top_k: int, temperature: float) -> tf.Tensor:
    """Top-k on ``V >= 64 k`` without ranking the candidates: draws from the candidate blocks, the first in the top k wins.

    ``TOP_K_DRAWS`` draws per row from the softmax of the logits of the ``k``
    blocks of ``_candidate_blocks`` (a block by its mass, then a logit in it);
    a draw is kept when fewer than ``k`` candidates come before it (larger, or
    tied at a lower index). That decides as the rank in the row would. Let
    ``m`` be the smallest chosen block maximum: the blocks left out have
    maxima at most ``m``, and those equal to ``m`` come after the chosen ones
    of maximum ``m``. A drawn logit above ``m`` has every logit at or above
    it among the candidates. A drawn logit equal to ``m`` has every larger
    logit among them, and a tied logit left out lies either in a higher block
    than the draw, or in a block below it but above every chosen block of
    maximum ``m``, whose maxima then rank, with the larger ones, ``k``
    candidates before the draw. A drawn logit below ``m`` has the ``k``
    chosen maxima above it. So a draw is kept exactly when it is in the top k.
    This replaces ``tf.math.top_k`` on the ``k * block`` candidates (on CPU a
    partial sort, half a millisecond on ``(64, 1550)``). A row whose draws all
    miss (its top k hold little of its candidates' probability) then ranks its
    candidates with ``tf.math.top_k`` and draws with the next uniform,
    ``RETRY_ROWS`` such rows at a time. Either way the draw follows the top
    k's renormalised softmax, and depends on the row's seed and logits only.
    """
    gathered, starts, block = _candidate_blocks(logits, top_k)  # (R, k, block), (R, k)
    rows = dynamic_dims(logits)[0]
    scaled = _scale(gathered, temperature)
    top = tf.reduce_max(scaled, axis=[1, 2], keepdims=True)  # (R, 1, 1): the row's largest logit
    weights = tf.cast(tf.exp(scaled - tf.where(top > -np.inf, top, 0.0)), tf.float64)  # a row of -inf only weighs 0
    which, inside = _inverse_cdf(tf.reduce_sum(weights, axis=-1), _uniform(keys[:, None], tf.range(TOP_K_DRAWS, dtype=tf.int32)[None, :]))  # (R, D)
    position, _ = _inverse_cdf(tf.gather(weights, which, batch_dims=1), inside[..., None])  # (R, D, 1)
    slots = which * block + position[..., 0]  # (R, D): places among the k * block candidates, in index order
    candidates = tf.reshape(gathered, reshape_target([rows, top_k * block]))  # (R, k * block)

    def index(starts: tf.Tensor, slots: tf.Tensor) -> tf.Tensor:
        return tf.gather(starts, slots // block, batch_dims=1) + slots % block

    chosen, found = _first(_in_top_k(candidates, slots, top_k), index(starts, slots))
    return _rank_missing(tf.where(found, chosen, -1), candidates, keys, top_k, temperature, lambda picked, positions: index(tf.gather(starts, picked), positions))


def _order_keys(values: tf.Tensor) -> tf.Tensor:
    """int32 keys in the order of the float32 ``values`` (``-0.0`` counted as ``+0.0``, ``-inf`` lowest)."""
    bits = tf.bitcast(values + 0.0, tf.int32)  # x + 0.0 turns -0.0 into +0.0
    # negative floats: the larger the magnitude bits, the smaller the value
    return tf.where(bits < 0, tf.bitwise.bitwise_xor(bits, tf.constant(0x7FFFFFFF, tf.int32)), bits)


def _exact_nucleus(blocks: _Blocks, keys: tf.Tensor, draws: tf.Tensor, top_p: float) -> tf.Tensor:
    """Draws from the nucleus of each row found exactly: the rows whose draws kept missing it.

    The nucleus is every logit whose key is >= ``T``, the smallest int32 key
    with a probability strictly above it below ``p``: found by bisection, 32
    masked sums over the row, no sort.

    Args:
        blocks: the rows (a few, gathered).
        keys: ``(N,)`` row keys.
        draws: ``(N,)`` the number of the uniform each row uses.
    """
    order = tf.cast(_order_keys(blocks.logits), tf.int64)  # (N, V')
    weights = blocks.weights(blocks.logits)  # (N, V')
    target = top_p * blocks.totals

    def halve(step: tf.Tensor, low: tf.Tensor, high: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        # the mass above low reaches p, the mass above high does not
        middle = low + (high - low) // 2
        above = tf.reduce_sum(tf.where(order > middle[:, None], weights, 0.0), axis=-1)
        inside = tf.cast(above, tf.float64) < target
        return step + 1, tf.where(inside, low, middle), tf.where(inside, middle, high)

    low, high = tf.reduce_min(order, axis=-1) - 1, tf.reduce_max(order, axis=-1)
    _, _, high = tf.while_loop(lambda step, low, high: step < 32, halve, (tf.constant(0), low, high))
    kept = tf.cast(tf.where(order >= high[:, None], weights, 0.0), tf.float64)  # (N, V')
    index, _ = _inverse_cdf(kept, _uniform(keys, draws)[:, None])
    return index[:, 0]


def _sample_nucleus(blocks: _Blocks, keys: tf.Tensor, top_p: float) -> tf.Tensor:
    """Rejection sampling of the nucleus: every row draws, the rows whose draw is outside draw again.

    Row ``r`` keeps its first draw (number 0, 1, ...) that lies in the
    nucleus, so the result does not depend on the other rows. The first round
    checks ``_draws(p)`` draws of every row with masked sums on small
    vocabularies; on large ones it checks one draw a row with the column
    bounds (``certify``), which settle most draws: a row keeps its draw when
    surely inside, and draws again from it when undecided, from the next one
    when surely outside (a second draw a row cost more in bound sums than the
    rows it saved from the next round). The next rounds take the rows still
    drawing, ``FEW_ROWS`` at a time when at most that many are left, else
    ``RETRY_ROWS``, and check ``_draws(p)`` draws each from the first one not
    settled, with masked sums, twice at most; a row still outside then draws
    from its nucleus found exactly (``_exact_nucleus``), which costs 32 masked
    sums over the row. Either way the draw follows the nucleus's renormalised
    softmax, whichever rows share the call.
    """
    rows, vocabulary = dynamic_dims(blocks.logits)
    draws = _draws(top_p)
    # large vocabularies: one draw a row, which the column bounds settle mostly without a pass over the row
    first_draws = draws if isinstance(vocabulary, int) and vocabulary <= SMALL_VOCABULARY else 1
    budget = first_draws + 2 * draws
    first = blocks.draw(keys, 0 if first_draws == 1 else tf.range(first_draws, dtype=tf.int32)[None, :])  # (R, D)
    if isinstance(vocabulary, int) and vocabulary <= SMALL_VOCABULARY:
        chosen, found = _first(blocks.in_nucleus(first, top_p), first)
        chosen = tf.where(found, chosen, -1)
        tries = tf.fill(tf.shape(chosen), first_draws)
    else:
        # the columns decide most draws: a draw surely inside is taken; an undecided one is checked again with the
        # masked sums (the row's next round starts at draw 0), a row whose draw is surely outside goes on from draw 1
        inside, outside = blocks.certify(tf.reshape(first, [-1, 1]), top_p)  # (R, 1) each
        chosen = tf.where(inside[:, 0], first[:, 0], -1)
        tries = tf.cast(outside[:, 0], tf.int32)
    count = min(RETRY_ROWS, rows) if isinstance(rows, int) else tf.minimum(RETRY_ROWS, rows)
    few = min(FEW_ROWS, rows) if isinstance(rows, int) else tf.minimum(FEW_ROWS, rows)

    def pick(candidates: tf.Tensor, size: int | tf.Tensor = count) -> tuple[tf.Tensor, tf.Tensor]:
        _, picked = tf.math.top_k(tf.cast(candidates, tf.int32), k=size)  # lower rows first
        return picked, tf.gather(candidates, picked)

    def redraw(chosen: tf.Tensor, tries: tf.Tensor, size: int | tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        picked, valid = pick((chosen < 0) & (tries < budget), size)
        subset = blocks.rows(picked)
        indices = subset.draw(tf.gather(keys, picked), tf.gather(tries, picked)[:, None] + tf.range(draws, dtype=tf.int32)[None, :])  # (N, D)
        found_index, found = _first(subset.in_nucleus(indices, top_p), indices)
        chosen = tf.tensor_scatter_nd_update(chosen, picked[:, None], tf.where(valid & found, found_index, tf.gather(chosen, picked)))
        tries = tf.tensor_scatter_nd_add(tries, picked[:, None], tf.where(valid, draws, 0))
        return chosen, tries

    def retry(chosen: tf.Tensor, tries: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        if isinstance(rows, int) and rows <= FEW_ROWS:
            return redraw(chosen, tries, count)
        # the usual case, a few rows outside: a pass over FEW_ROWS rows rather than RETRY_ROWS
        waiting = tf.reduce_sum(tf.cast((chosen < 0) & (tries < budget), tf.int32))
        return tf.cond(waiting <= FEW_ROWS, lambda: redraw(chosen, tries, few), lambda: redraw(chosen, tries, count))

    def exact(chosen: tf.Tensor, tries: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        picked, valid = pick(chosen < 0)
        drawn = _exact_nucleus(blocks.rows(picked), tf.gather(keys, picked), tf.gather(tries, picked), top_p)
        return tf.tensor_scatter_nd_update(chosen, picked[:, None], tf.where(valid, drawn, tf.gather(chosen, picked))), tries

    chosen, tries = tf.while_loop(lambda chosen, tries: tf.reduce_any((chosen < 0) & (tries < budget)), retry, (chosen, tries))
    chosen, _ = tf.while_loop(lambda chosen, tries: tf.reduce_any(chosen < 0), exact, (chosen, tries))
    return chosen


def sample(
    logits: Any, seed: Any, temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None
) -> tf.Tensor:
    """Draws one index over the last axis, after temperature, top-k and top-p.

    The filters combine as described in ``candidates`` (temperature, then the
    ``k`` largest logits, then the nucleus of probability ``p`` among them) and
    the index is drawn from ``softmax`` of what is left, renormalised.
    ``temperature=0`` means greedy (``top_k`` / ``top_p`` then change nothing,
    the largest logit being in every kept set). Indices whose logit is
    ``-inf`` are never drawn, unless a whole row is ``-inf`` (no valid choice;
    some index is returned).

    Each row uses one uniform (by inverse CDF), or a few when a draw is
    checked against the kept set and drawn again (see the module docstring),
    from a counter-based hash of its seed: see ``uniform``.

    Cost on ``(R, V)`` logits: a max pass, an exp and block-sum pass and
    work on ``sqrt(V)`` entries per row; top-k with ``V >= 64 k`` is instead
    a block-max pass, ``tf.math.top_k`` on ``32 k`` block maxima and work on
    the ``V / 32`` logits of the chosen blocks per row (ranked with another
    ``tf.math.top_k`` before top-p), below ``64 k`` one comparison pass per
    checked draw; top-p without top-k adds a pass over ``V / 8`` column bounds and a
    masked-sum pass over the few rows they leave undecided or outside.

    Args:
        logits: a float tensor of shape ``(..., V)``; may contain ``-inf``.
        seed: an int32 / int64 tensor of shape ``(2,)`` (one seed for the call)
            or ``(*prefix, 2)`` with ``prefix`` a leading prefix of
            ``logits.shape[:-1]`` (one seed per row of the prefix). The same
            seed gives the same samples; with per-row seeds, a row's sample
            depends only on its seed and its own logits.
        temperature: a Python float >= 0; 0 is greedy.
        top_k: ``None`` or an int >= 1: sample among the ``k`` largest logits.
        top_p: ``None`` or a float in ``(0, 1]``: sample in the nucleus of probability ``p``.

    Returns:
        An int32 tensor of shape ``(...)``.

    Raises:
        TypeError: ``logits`` is not a float tensor, ``seed`` not an integer
            tensor, or an argument has the wrong type (``top_k=2.0``).
        ValueError: ``seed`` of the wrong shape, ``temperature`` negative or
            not finite, ``top_k < 1`` or ``top_p`` outside ``(0, 1]``.
        tf.errors.InvalidArgumentError: in a graph, a seed prefix dim that
            differs from the logits' at run time.

    Example:
        >>> logits = tf.math.log([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]])
        >>> sample(logits, seed=tf.constant([1, 2]), top_k=2).shape
        TensorShape([2])
        >>> sample(logits, seed=tf.constant([[1, 2], [3, 4]]), top_p=0.9).shape  # a seed per row
        TensorShape([2])
    """
    logits = _check_logits(logits)
    seed, checks = _check_row_seed(seed, logits)
    temperature = _check_temperature(temperature)
    top_k, top_p = _check_top_k(top_k), _check_top_p(top_p)
    if temperature == 0:
        return greedy(logits)
    dims = dynamic_dims(logits)
    leading, vocabulary = dims[:-1], dims[-1]
    with tf.control_dependencies(checks):
        keys = _row_keys(seed, leading)  # (R,)
    rows = tf.reshape(tf.cast(logits, tf.float32), reshape_target([-1, vocabulary]))  # (R, V)
    nucleus = top_p if top_p is not None and top_p < 1.0 else None
    if tf.executing_eagerly() or in_xla_context():
        index = _draw(rows, keys, temperature, top_k, nucleus)
    else:
        index = _compiled_draw(temperature, top_k, nucleus)(rows, keys)
    return tf.reshape(index, reshape_target(leading))  # (...)


@functools.lru_cache(maxsize=64)
def _compiled_draw(temperature: float, top_k: int | None, nucleus: float | None) -> Any:
    """``_draw`` for one setting as an XLA-compiled function, for calls inside a ``tf.function`` graph.

    Outside XLA, TensorFlow runs every op of the sampler as its own kernel, each
    writing a new tensor: the scaling, the exp, the block sums and the nucleus
    check over ``(R, V)`` logits each cost a full pass and a full-size output
    (5x to 11x ``tf.argmax`` on ``(64, 50000)`` for top-p). Compiled, XLA fuses
    the elementwise work of each pass into one loop and runs the loops over the
    slices of the rows on all its threads, as it does when the whole caller is
    compiled. The function is built once per setting and compiled by XLA once
    per logits shape, at the first call.
    """

    @tf.function(jit_compile=True, autograph=False)
    def draw(rows: tf.Tensor, keys: tf.Tensor) -> tf.Tensor:
        return _draw(rows, keys, temperature, top_k, nucleus)

    return draw


def _draw(rows: tf.Tensor, keys: tf.Tensor, temperature: float, top_k: int | None, nucleus: float | None) -> tf.Tensor:
    """The sampled index ``(R,)`` of each row of ``(R, V)`` float32 logits, with the row keys ``(R,)`` of ``_row_keys``."""
    vocabulary = dynamic_dims(rows)[-1]
    if top_k is not None and not (isinstance(vocabulary, int) and top_k >= vocabulary):
        if nucleus is None and isinstance(vocabulary, int) and vocabulary < 64 * top_k:
            index = _sample_top_k(_Blocks.of(rows, temperature), keys, top_k)
        elif nucleus is None and isinstance(vocabulary, int):
            index = _sample_top_k_blocks(rows, keys, top_k, temperature)
        else:
            values, indices = _largest(rows, top_k)  # (R, K)
            index = _sample_candidates(values, indices, keys, temperature, nucleus)
    elif nucleus is None and isinstance(vocabulary, int) and vocabulary <= SMALL_VOCABULARY:
        index = _sample_candidates(rows, None, keys, temperature, None)
    else:
        blocks = _Blocks.of(rows, temperature)
        if nucleus is None:
            index = blocks.draw(keys, 0)[:, 0]
        else:
            index = _sample_nucleus(blocks, keys, nucleus)
    return index


def binary(
    values: Any,
    depth: int,
    threshold: float = 0.5,
    seed: Any = None,
    from_logits: bool = False,
) -> tf.Tensor:
    """Turns groups of ``depth`` bit predictions into integers, most significant bit first.

    The last axis holds one prediction per bit: the PROBABILITY that the bit is
    1 (``from_logits=False``, the default, e.g. after a sigmoid) or its LOGIT
    (``from_logits=True``). Each group of ``depth`` consecutive bits becomes
    ``sum(bit[j] * 2 ** (depth - 1 - j))``: with ``depth=8`` a byte, the
    counterpart of ``BinaryGroupAccuracy``.

    - Without ``seed``, a bit is 1 when its probability is above ``threshold``
      (``p > threshold``; with logits, ``sigmoid(logit) > threshold``).
    - With ``seed``, each bit is drawn: 1 with its probability (``threshold`` is unused).

    Args:
        values: a float tensor of shape ``(..., G * depth)``.
        depth: bits per integer, in ``[1, 31]``; it must divide the last axis.
        threshold: a Python float in ``(0, 1)``.
        seed: ``None`` (threshold) or a shape ``(2,)`` int tensor (sample).
        from_logits: whether ``values`` are logits instead of probabilities.

    Returns:
        An int32 tensor of shape ``(..., G)``.

    Raises:
        TypeError: ``values`` is not a float tensor, or an argument has the wrong type.
        ValueError: ``depth`` out of range or not dividing the last axis,
            ``threshold`` outside ``(0, 1)``, or a bad ``seed``.
        tf.errors.InvalidArgumentError: in graph mode, ``depth`` does not divide a
            last axis unknown while tracing.

    Example:
        >>> binary(tf.constant([[0.9, 0.1, 0.8, 0.7]]), depth=2).numpy().tolist()
        [[2, 3]]
    """
    values = _check_logits(values, "values")
    depth = shapes.check_int(depth, "depth", minimum=1)
    if depth > MAX_DEPTH:
        raise ValueError(f"`depth` must be at most {MAX_DEPTH} (int32 outputs). Received: depth={depth}")
    threshold = _check_number(threshold, "threshold")
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"`threshold` must be in (0, 1). Received: threshold={threshold}")
    static = tuple(values.shape.as_list())
    dims = dynamic_dims(values)
    message = f"`depth` must divide the last axis of `values`. Received: depth={depth}, shape={static}"
    checks = []
    if isinstance(dims[-1], int):
        if dims[-1] % depth:
            raise ValueError(message)
    else:
        checks.append(tf.debugging.Assert(tf.equal(tf.math.floormod(dims[-1], depth), 0), [message, "last axis:", dims[-1]]))
    values = tf.cast(values, tf.float32)
    if seed is None:
        cut = math.log(threshold / (1.0 - threshold)) if from_logits else threshold
        bits = values > cut
    else:
        probabilities = tf.sigmoid(values) if from_logits else values
        uniform = tf.random.stateless_uniform(tf.shape(values), seed=_check_seed(seed), dtype=tf.float32, alg="philox")
        bits = uniform < probabilities
    with tf.control_dependencies(checks):
        groups = dims[:-1] + [dims[-1] // depth, depth]
        target = groups if all(isinstance(dim, int) for dim in groups) else tf.stack([tf.cast(dim, tf.int32) for dim in groups])
        bits = tf.reshape(tf.cast(bits, tf.int32), target)  # (..., G, depth)
    weights = tf.constant([1 << (depth - 1 - position) for position in range(depth)], dtype=tf.int32)
    return tf.reduce_sum(bits * weights, axis=-1)  # (..., G)


__all__ = ["binary", "candidates", "greedy", "gumbel", "sample", "uniform"]

"""Samplers: pick indices from logits (greedy, temperature, top-k, top-p) or integers from bits.

Every op works over the LAST axis (``V``, the vocabulary: e.g. 256 byte values)
of a tensor of any leading shape (``...``), eagerly, in ``tf.function`` and
under ``jit_compile=True`` (e.g. inside the ``tf.while_loop`` of a compiled
generation loop); shapes stay static. Logits may contain ``-inf`` (forbidden
indices), never NaN.

Randomness is stateless: ``seed`` is a shape ``(2,)`` int32 / int64 tensor and
the same seed gives the same samples, call after call. A generation loop
derives one seed per step, e.g. ``tf.random.experimental.stateless_fold_in(seed, step)``.
Top-k keeps exactly ``k`` logits (on ties, the lower index first, as
``tf.math.top_k``); top-p keeps the smallest prefix of the sorted logits whose
probability reaches ``p``, and the logits tied with its last one;
``candidates`` shows what is kept. Sampling is the Gumbel-max trick: ``argmax(logits + g)`` with
``g = -log(-log(u))`` and ``u`` uniform from ``tf.random.stateless_uniform``
(Philox), which draws exactly from ``softmax(logits)``; with top-k / top-p the
noise is only drawn for the kept candidates. Note that TensorFlow's
stateless generators give a different (equally distributed) stream under XLA
than outside it, so a compiled call and an eager call with the same seed may
pick different indices; each is reproducible on its own.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np
import tensorflow as tf

from mlable_core import shapes
from mlable_core.reshaping import dynamic_dims

# int32 outputs hold at most 31 bits
MAX_DEPTH = 31
# top-p looks for the nucleus among this many largest logits first, and among all only when it is larger
NUCLEUS_CANDIDATES = 1024


def _check_logits(logits: Any, name: str = "logits") -> tf.Tensor:
    logits = tf.convert_to_tensor(logits)
    if logits.shape.rank is None or logits.shape.rank < 1:
        raise ValueError(f"`{name}` must have rank >= 1 (the choices on the last axis). Received: shape={logits.shape}")
    if not logits.dtype.is_floating:
        raise TypeError(f"`{name}` must be a float tensor. Received: dtype={logits.dtype.name}, shape={logits.shape}")
    return logits


def _check_seed(seed: Any) -> tf.Tensor:
    if seed is None:
        raise ValueError("`seed` must be a shape (2,) int32 / int64 tensor to sample. Received: seed=None")
    seed = tf.convert_to_tensor(seed)
    if seed.dtype not in (tf.int32, tf.int64):
        raise TypeError(f"`seed` must hold int32 or int64 values. Received: dtype={seed.dtype.name}, shape={seed.shape}")
    if seed.shape.rank is not None and not seed.shape.is_compatible_with([2]):
        raise ValueError(f"`seed` must have shape (2,). Received: shape={tuple(seed.shape.as_list())}")
    return seed


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


def _nucleus(values: tf.Tensor, log_total: tf.Tensor, top_p: float) -> tuple[tf.Tensor, tf.Tensor]:
    """Sets to ``-inf`` the sorted ``values`` below the nucleus of probability ``top_p``.

    ``values`` are in decreasing order and ``log_total`` is the log of the
    normalizer (over every logit still in play). The prefix grows while the
    probability before its next position stays below ``p`` (so the first
    position is always in); then every value at least as large as the last one
    in it is kept (ties included).

    Returns:
        The masked values and the threshold (the last kept value), ``(..., 1)``.
    """
    probabilities = tf.exp(values - log_total)
    before = tf.cumsum(probabilities, axis=-1, exclusive=True)
    # a reduction rather than a slice: XLA then still sees top_k as a TopK, not as a full sort
    threshold = tf.reduce_min(tf.where(before < top_p, values, tf.constant(np.inf, tf.float32)), axis=-1, keepdims=True)
    return tf.where(values >= threshold, values, tf.constant(-np.inf, tf.float32)), threshold


def _order_keys(values: tf.Tensor) -> tf.Tensor:
    """int32 keys in the order of the float32 ``values`` (``-0.0`` counted as ``+0.0``)."""
    bits = tf.bitcast(values + 0.0, tf.int32)  # x + 0.0 turns -0.0 into +0.0
    # negative floats: the larger the magnitude bits, the smaller the value
    return tf.where(bits < 0, tf.bitwise.bitwise_xor(bits, tf.constant(0x7FFFFFFF, tf.int32)), bits)


def _nucleus_keys(scaled: tf.Tensor, top_p: float) -> tuple[tf.Tensor, tf.Tensor]:
    """Threshold of the nucleus found by bisection on the logits' order keys, without sorting.

    Finds the largest key ``t`` such that the logits with a key ``>= t`` hold a
    probability ``>= p``: 32 halvings of the int32 key range, each one masked
    sum over the vocabulary. Same set as ``_nucleus`` on the sorted logits.

    Returns:
        The keys of ``scaled`` and the threshold key ``(..., 1)``.
    """
    keys = _order_keys(scaled)
    weights = tf.exp(scaled - tf.reduce_max(scaled, axis=-1, keepdims=True))
    target = top_p * tf.reduce_sum(weights, axis=-1, keepdims=True)
    # the bounds in int64, where their difference cannot overflow
    low = tf.cast(tf.reduce_min(keys, axis=-1, keepdims=True), tf.int64)  # every logit: probability 1 >= p
    high = tf.cast(tf.reduce_max(keys, axis=-1, keepdims=True), tf.int64)
    for _ in range(32):
        middle = low + (high - low + 1) // 2
        above = keys >= tf.cast(middle, tf.int32)
        reached = tf.reduce_sum(tf.where(above, weights, 0.0), axis=-1, keepdims=True) >= target
        low = tf.where(reached, middle, low)
        high = tf.where(reached, high, middle - 1)
    return keys, tf.cast(low, tf.int32)


def _pick(values: tf.Tensor, indices: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """Gumbel-max over the candidates ``values``, mapped back to vocabulary ``indices``."""
    position = tf.argmax(values + gumbel(tf.shape(values), seed), axis=-1, output_type=tf.int32)
    return tf.gather(indices, position[..., None], batch_dims=len(values.shape) - 1)[..., 0]


def candidates(
    logits: Any, temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None
) -> tuple[tf.Tensor, tf.Tensor]:
    """The logits ``sample`` draws from, sorted in decreasing order, with their indices.

    The steps run in this order, each on the result of the previous one:

    1. ``logits / temperature``, in float32;
    2. top-k: keep the ``k`` largest logits (``tf.math.top_k``: on ties the
       lower index comes first); ``k >= V`` keeps all;
    3. top-p (nucleus): with the probabilities ``softmax`` over what is left,
       keep the smallest prefix of the sorted logits whose probability reaches
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
        ``K = min(top_k, V)`` with top-k, else ``V``.

    Raises:
        TypeError: ``logits`` is not a float tensor, or an argument has the wrong type.
        ValueError: ``temperature <= 0``, ``top_k < 1`` or ``top_p`` outside ``(0, 1]``.

    Example:
        >>> values, indices = candidates(tf.math.log([[0.2, 0.5, 0.3]]), top_p=0.6)
        >>> indices.numpy().tolist(), values.numpy().round(2).tolist()
        ([[1, 2, 0]], [[-0.69, -1.2, -inf]])
    """
    logits = _check_logits(logits)
    temperature = _check_temperature(temperature)
    if temperature == 0:
        raise ValueError("`temperature` must be > 0 for `candidates` (`sample` reads temperature=0 as greedy). Received: temperature=0.0")
    top_k, top_p = _check_top_k(top_k), _check_top_p(top_p)
    scaled = _scale(logits, temperature)
    vocabulary = dynamic_dims(scaled)[-1]
    values, indices = tf.math.top_k(scaled, k=vocabulary if top_k is None else _count(top_k, vocabulary))  # (..., K)
    if top_p is not None and top_p < 1.0:
        log_total = tf.reduce_logsumexp(values if top_k else scaled, axis=-1, keepdims=True)
        values, _ = _nucleus(values, log_total, top_p)
    return values, indices


def _sample_nucleus(scaled: tf.Tensor, seed: tf.Tensor, top_p: float) -> tf.Tensor:
    """Top-p sampling without sorting the whole vocabulary.

    The nucleus of a trained model usually fits in a few hundred tokens: the
    ``NUCLEUS_CANDIDATES`` largest logits (``tf.math.top_k``) are enough when
    their nucleus ends strictly above the smallest of them for every row.
    Otherwise (``tf.cond``) the threshold comes from a bisection over the whole
    vocabulary, which costs 32 masked sums but no sort (XLA on CPU sorts slowly).
    """
    vocabulary = dynamic_dims(scaled)[-1]
    log_total = tf.reduce_logsumexp(scaled, axis=-1, keepdims=True)
    values, indices = tf.math.top_k(scaled, k=_count(NUCLEUS_CANDIDATES, vocabulary))  # (..., K)
    kept, threshold = _nucleus(values, log_total, top_p)
    if isinstance(vocabulary, int) and vocabulary <= NUCLEUS_CANDIDATES:
        return _pick(kept, indices, seed)

    def everywhere() -> tf.Tensor:
        keys, limit = _nucleus_keys(scaled, top_p)
        masked = tf.where(keys >= limit, scaled, tf.constant(-np.inf, tf.float32))
        return tf.argmax(masked + gumbel(tf.shape(masked), seed), axis=-1, output_type=tf.int32)

    # the candidates suffice when the threshold is above their smallest value (its ties are all in),
    # or when a row has no finite logit at all
    inside = (threshold > tf.reduce_min(values, axis=-1, keepdims=True)) | tf.math.is_inf(log_total)
    if isinstance(vocabulary, int):
        return tf.cond(tf.reduce_all(inside), lambda: _pick(kept, indices, seed), everywhere)
    everything = tf.greater_equal(NUCLEUS_CANDIDATES, vocabulary)
    return tf.cond(everything | tf.reduce_all(inside), lambda: _pick(kept, indices, seed), everywhere)


def gumbel(shape: Any, seed: Any) -> tf.Tensor:
    """Standard Gumbel noise ``-log(-log(u))``, ``u`` uniform in ``(0, 1)``, from a stateless seed.

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


def sample(
    logits: Any, seed: Any, temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None
) -> tf.Tensor:
    """Draws one index over the last axis, after temperature, top-k and top-p.

    The filters combine as described in ``candidates`` (temperature, then the
    ``k`` largest logits, then the nucleus of probability ``p`` among them) and
    the index is drawn from ``softmax`` of what is left. ``temperature=0``
    means greedy (``top_k`` / ``top_p`` then change nothing, the largest logit
    being in every kept set). Indices whose logit is ``-inf`` are never drawn,
    unless a whole row is ``-inf`` (no valid choice; some index is returned).

    Cost: plain and top-k sampling read the logits a few times; top-p without
    top-k looks for the nucleus among the ``NUCLEUS_CANDIDATES`` (1024) largest
    logits, and when it is larger, finds its threshold by bisection (32 masked
    sums over the vocabulary) rather than by sorting.

    Args:
        logits: a float tensor of shape ``(..., V)``; may contain ``-inf``.
        seed: a shape ``(2,)`` int32 / int64 tensor; the same seed gives the same samples.
        temperature: a Python float >= 0; 0 is greedy.
        top_k: ``None`` or an int >= 1: sample among the ``k`` largest logits.
        top_p: ``None`` or a float in ``(0, 1]``: sample in the nucleus of probability ``p``.

    Returns:
        An int32 tensor of shape ``(...)``.

    Raises:
        TypeError: ``logits`` is not a float tensor, ``seed`` not an integer tensor,
            or an argument has the wrong type.
        ValueError: ``seed`` is not of shape ``(2,)``, ``temperature < 0``,
            ``top_k < 1`` or ``top_p`` outside ``(0, 1]``.

    Example:
        >>> logits = tf.math.log([[0.7, 0.2, 0.1]])
        >>> sample(logits, seed=tf.constant([1, 2]), top_k=2).shape
        TensorShape([1])
    """
    logits = _check_logits(logits)
    seed = _check_seed(seed)
    temperature = _check_temperature(temperature)
    top_k, top_p = _check_top_k(top_k), _check_top_p(top_p)
    if temperature == 0:
        return greedy(logits)
    scaled = _scale(logits, temperature)
    vocabulary = dynamic_dims(scaled)[-1]
    nucleus = top_p is not None and top_p < 1.0
    if top_k is not None and not (isinstance(vocabulary, int) and top_k >= vocabulary):
        values, indices = tf.math.top_k(scaled, k=_count(top_k, vocabulary))  # (..., K)
        if nucleus:
            values, _ = _nucleus(values, tf.reduce_logsumexp(values, axis=-1, keepdims=True), top_p)
        return _pick(values, indices, seed)
    if nucleus:
        return _sample_nucleus(scaled, seed, top_p)
    return tf.argmax(scaled + gumbel(tf.shape(scaled), seed), axis=-1, output_type=tf.int32)


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


__all__ = ["binary", "candidates", "greedy", "gumbel", "sample"]

"""Samplers: pick indices from logits (greedy, temperature, top-k, top-p) or integers from bits.

Every op works over the LAST axis (``V``, the vocabulary: e.g. 256 byte values)
of a tensor of any leading shape (``...``), eagerly, in ``tf.function`` and
under ``jit_compile=True`` (e.g. inside the ``tf.while_loop`` of a compiled
generation loop); shapes stay static. Logits may contain ``-inf`` (forbidden
indices), never NaN.

Randomness is stateless: ``seed`` is a shape ``(2,)`` int32 / int64 tensor and
the same seed gives the same samples, call after call. A generation loop
derives one seed per step, e.g. ``tf.random.experimental.stateless_fold_in(seed, step)``.
Sampling is the Gumbel-max trick: ``argmax(logits + g)`` with
``g = -log(-log(u))`` and ``u`` uniform from ``tf.random.stateless_uniform``
(Philox), which draws exactly from ``softmax(logits)``. Note that TensorFlow's
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


def _keep_from(logits: tf.Tensor, threshold: tf.Tensor) -> tf.Tensor:
    return tf.where(logits >= threshold, logits, tf.constant(-np.inf, logits.dtype))


def filter_logits(logits: Any, temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None) -> tf.Tensor:
    """Scales by the temperature and sets to ``-inf`` every logit that top-k / top-p rule out.

    The steps run in this order, each on the result of the previous one:

    1. ``logits / temperature``, in float32;
    2. top-k: keep the logits at least as large as the ``k``-th largest (ties
       with it included, so more than ``k`` may stay); ``k >= V`` keeps all;
    3. top-p (nucleus): with the probabilities ``softmax`` of what is left,
       keep the smallest set of largest logits whose probability reaches ``p``
       (the next ones are kept when tied with the last one); ``p = 1`` keeps all.

    ``sample`` draws from ``softmax`` of the result.

    Args:
        logits: a float tensor of shape ``(..., V)``; may contain ``-inf``.
        temperature: a Python float > 0.
        top_k: ``None`` (no top-k) or an int >= 1.
        top_p: ``None`` (no top-p) or a Python float in ``(0, 1]``.

    Returns:
        A float32 tensor of shape ``(..., V)``.

    Raises:
        TypeError: ``logits`` is not a float tensor, or an argument has the wrong type.
        ValueError: ``temperature <= 0``, ``top_k < 1`` or ``top_p`` outside ``(0, 1]``.

    Example:
        >>> filter_logits(tf.math.log([[0.5, 0.3, 0.2]]), top_p=0.6).numpy().round(2).tolist()
        [[-0.69, -1.2, -inf]]
    """
    logits = _check_logits(logits)
    temperature = _check_temperature(temperature)
    if temperature == 0:
        raise ValueError("`temperature` must be > 0 to filter logits (`sample` reads temperature=0 as greedy). Received: temperature=0.0")
    top_k, top_p = _check_top_k(top_k), _check_top_p(top_p)
    scaled = tf.cast(logits, tf.float32)
    if temperature != 1.0:
        scaled = scaled / temperature
    vocabulary = dynamic_dims(scaled)[-1]
    ranked = None  # the largest logits in decreasing order, (..., K)
    if top_k is not None and not (isinstance(vocabulary, int) and top_k >= vocabulary):
        k = top_k if isinstance(vocabulary, int) else tf.minimum(top_k, vocabulary)
        ranked = tf.math.top_k(scaled, k=k, sorted=True).values  # (..., K)
        scaled = _keep_from(scaled, ranked[..., -1:])
    if top_p is not None and top_p < 1.0:
        if ranked is None:
            ranked = tf.sort(scaled, axis=-1, direction="DESCENDING")  # (..., V)
        # normalized over every logit left, also the ties of the k-th one beyond `ranked`
        probabilities = tf.exp(ranked - tf.reduce_logsumexp(scaled, axis=-1, keepdims=True))
        before = tf.cumsum(probabilities, axis=-1, exclusive=True)  # probability of the larger logits
        # the first logit is always kept (0 < p), then each while the set before it stays below p
        kept = before < top_p
        threshold = tf.reduce_min(tf.where(kept, ranked, tf.constant(np.inf, tf.float32)), axis=-1, keepdims=True)
        scaled = _keep_from(scaled, threshold)
    return scaled


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
    """Draws one index over the last axis from ``softmax(filter_logits(logits, ...))``.

    Temperature, top-k and top-p combine as described in ``filter_logits``;
    ``temperature=0`` means greedy (``top_k`` / ``top_p`` then change nothing,
    the largest logit being in every kept set). Indices whose logit is ``-inf``
    are never drawn, unless a whole row is ``-inf`` (no valid choice: index 0).

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
    filtered = filter_logits(logits, temperature, top_k, top_p)
    return tf.argmax(filtered + gumbel(tf.shape(filtered), seed), axis=-1, output_type=tf.int32)


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


__all__ = ["binary", "filter_logits", "greedy", "gumbel", "sample"]

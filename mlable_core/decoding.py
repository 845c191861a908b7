"""Autoregressive generation with a KV cache, in one compiled loop: greedy, sampled or beam search.

Shape letters (the project glossary): ``B`` batch, ``S`` prompt positions,
``T`` positions given to one step call, ``M`` new tokens, ``G`` values per
token (``token_shape``, flattened), ``C`` classes (the scores of one value).

The step convention: a model that can generate exposes

    step_fn(inputs, cache, step) -> (logits, cache)
    step_fn(inputs, cache, step, padding=padding) -> (logits, cache)   # ragged batches

- ``inputs``: ``(B, T, *token_shape)`` the ``T`` tokens written at cache slots
  ``[step, step + T)`` (the prompt at prefill, one token afterwards);
- ``cache``: any nested structure of tensors (typically one ``(2, B, S, K, H)``
  tensor per attention layer, see ``mlable_core.cache``), allocated for at
  least ``S + M`` slots and returned updated, with the same structure, shapes
  and dtypes;
- ``step``: an int32 scalar tensor, the slot of ``inputs[:, 0]``;
- ``padding`` (only passed for ragged batches): an int32 ``(B,)`` tensor, the
  number of pad slots at the start of each row. The model must hide the slots
  ``< padding[b]`` from every query of row ``b`` and place slot ``t`` of row
  ``b`` at position ``t - padding[b]`` (its RoPE position), so that a row
  computes exactly what it computes alone;
- ``logits``: ``(B, T, *token_shape, C)``, scores of the token that FOLLOWS
  each input position.

Ragged batches: prompts of different lengths are LEFT-padded to one length
``S`` with ``pad_value`` and given with their ``lengths``; their last tokens
then share one slot, so one prefill and one slot per step serve every row.

``generate`` traces once per prompt shape: wrap it (or the model method that
calls it) in one ``tf.function(jit_compile=True)`` built once, and pad prompt
lengths up to a few buckets (``bucket_length``) so that it compiles once per
bucket.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from typing import Any

import numpy as np
import tensorflow as tf

from mlable_core import sampling, shapes
from mlable_core.cache import in_xla_context

StepFn = Callable[..., tuple[tf.Tensor, Any]]
Sampler = Callable[[tf.Tensor, tf.Tensor], tf.Tensor]

# the smallest prompt bucket: shorter prompts are padded up to it
MIN_BUCKET = 16


def argmax_sampler(logits: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:  # noqa: ARG001
    """Greedy choice over the last axis (``mlable_core.sampling.greedy``); the default sampler of ``generate``."""
    return sampling.greedy(logits)


def make_sampler(temperature: float = 0.0, top_k: int | None = None, top_p: float | None = None) -> Sampler:
    """A ``Sampler`` for ``generate``: greedy when ``temperature == 0``, else ``mlable_core.sampling.sample``.

    The arguments are validated here, once, rather than at every step. The
    sampler takes one ``(2,)`` seed for the whole batch or one seed per row
    ``(B, 2)`` (a row's draws then depend only on its own seed).

    Args:
        temperature: 0 for greedy decoding, else the softmax temperature (> 0).
        top_k: keep the ``k`` largest logits, or ``None``.
        top_p: keep the smallest set whose probability reaches ``p``, or ``None``.

    Returns:
        ``sampler(logits, seed) -> int32 indices`` over the last axis.

    Raises:
        TypeError, ValueError: an argument has the wrong type or value (named in the message).

    Example:
        >>> sampler = make_sampler(temperature=0.8, top_p=0.9)
        >>> sampler(tf.math.log([[0.5, 0.3, 0.2]]), tf.constant([1, 2])).shape
        TensorShape([1])
    """
    check_sampling(temperature, top_k, top_p)
    if temperature == 0:
        return argmax_sampler

    def sampler(logits: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
        # a (B, 2) seed is a per-row prefix seed of `sampling.sample`: row b's draws depend on seed[b] alone
        return sampling.sample(logits, seed, temperature=temperature, top_k=top_k, top_p=top_p)

    return sampler


def check_sampling(temperature: Any, top_k: Any, top_p: Any) -> None:
    """Raises the ``ValueError`` / ``TypeError`` of ``sampling.sample`` for bad sampling settings, in Python."""
    # one tiny eager call runs every check of the sampler itself (no compilation, no model)
    sampling.sample(tf.zeros((1, 2)), tf.zeros((2,), tf.int32), temperature=temperature, top_k=top_k, top_p=top_p)


def stop_at(value: int, group: int = 1) -> Callable[[tf.Tensor], tf.Tensor]:
    """A stop condition for ``generate``: some ``group`` consecutive values of the token all equal ``value``.

    For UTF-32-BE bytes, ``stop_at(0, group=4)`` stops a row at its first NUL
    character (a single zero byte is common: most code points start with zeros).
    Groups are aligned: the token's values are read in chunks of ``group``.

    Args:
        value: the stop value.
        group: how many consecutive values must equal it; must divide the token size.

    Returns:
        ``stop(token) -> (B,) bool`` for tokens of shape ``(B, *token_shape)``.
    """
    group = shapes.check_int(group, "group", minimum=1)

    def stop(token: tf.Tensor) -> tf.Tensor:
        size = token.shape[1:].num_elements()
        if size is not None and size % group:
            raise ValueError(f"`group` must divide the token size. Received: group={group}, token shape={token.shape}")
        chunks = tf.reshape(tf.equal(token, tf.cast(value, token.dtype)), [tf.shape(token)[0], -1, group])  # (B, G / group, group)
        return tf.reduce_any(tf.reduce_all(chunks, axis=-1), axis=-1)  # (B,)

    return stop


def bucket_length(length: int, minimum: int = MIN_BUCKET) -> int:
    """The prompt length a prompt of ``length`` tokens is padded to: one compiled loop per bucket.

    Buckets are ``minimum`` and then the powers of two and their midpoints
    ``3 * 2**k`` above it, so a prompt is padded by less than half its length
    (beyond ``minimum``) and ``n`` distinct lengths compile about ``2 log2 n`` loops.

    Example:
        >>> [bucket_length(n) for n in (1, 16, 17, 25, 64, 65)]
        [16, 16, 24, 32, 64, 96]
    """
    length = shapes.check_int(length, "length", minimum=1)
    bucket = shapes.check_int(minimum, "minimum", minimum=1)
    while bucket < length:
        half = bucket * 3 // 2
        if half >= length and half > bucket:
            return half
        bucket *= 2
    return bucket


def _static_values(tensor: Any) -> np.ndarray | None:
    """The values of ``tensor`` when known in Python (eager, numpy or constant), else ``None``."""
    if isinstance(tensor, np.ndarray):
        return tensor
    if tf.is_tensor(tensor):
        if tf.executing_eagerly() and hasattr(tensor, "numpy"):
            return tensor.numpy()
        return tf.get_static_value(tensor)
    return np.asarray(tensor)


def _length_message(detail: str) -> str:
    return (
        "`lengths` must give each row's prompt length, its tokens being the LAST `lengths[b]` positions of the "
        f"left-padded `prompt` (the positions before them hold `pad_value`), 1 <= lengths[b] <= S. {detail}"
    )


def check_lengths(prompt: tf.Tensor, lengths: Any, pad_value: int = 0) -> tuple[tf.Tensor, list[tf.Operation]]:
    """Validates the per-row prompt lengths of a left-padded ``prompt`` ``(B, S, *token_shape)``.

    Each row must hold ``pad_value`` before its last ``lengths[b]`` tokens, with
    ``1 <= lengths[b] <= S``. Known values (numpy, eager tensors) are checked in
    Python; symbolic ones get ``tf.debugging`` assertions (dropped under XLA).

    Returns:
        ``(lengths as int32 (B,), assertions to depend on)``.

    Raises:
        ValueError: a length is out of range, a pad position does not hold
            ``pad_value``, or ``lengths`` does not have shape ``(B,)``.
        TypeError: ``lengths`` is not an integer array.
    """
    shape = tuple(prompt.shape.as_list())
    values = _static_values(lengths)
    tensor = tf.convert_to_tensor(lengths)
    if not tensor.dtype.is_integer:
        raise TypeError(f"`lengths` must hold integers, shape (B,). Received: lengths with dtype {tensor.dtype.name}")
    if tensor.shape.rank != 1 or (shape[0] is not None and tensor.shape[0] is not None and tensor.shape[0] != shape[0]):
        raise ValueError(
            f"`lengths` must have shape (B,) for a prompt of shape {shapes.format_shape(shape)}. "
            f"Received: lengths with shape {shapes.format_shape(tensor.shape.as_list())}"
        )
    tokens = _static_values(prompt)
    width = shape[1]
    if values is not None and width is not None:
        bad = [(row, int(value)) for row, value in enumerate(values.tolist()) if not 1 <= value <= width]
        if bad:
            row, value = bad[0]
            raise ValueError(_length_message(f"Received: lengths[{row}]={value} with S={width} (prompt shape {shapes.format_shape(shape)})"))
        if tokens is not None:
            for row, value in enumerate(values.tolist()):
                pads = np.asarray(tokens[row, : width - value])
                if np.any(pads != pad_value):
                    position = int(np.argwhere(pads != pad_value)[0][0])
                    raise ValueError(_length_message(
                        f"Received: lengths[{row}]={value} with S={width}, but position {position} of row {row} holds "
                        f"{pads[position].tolist()}, not pad_value={pad_value} (prompt shape {shapes.format_shape(shape)})"
                    ))
            return tf.cast(tensor, tf.int32), []
    tensor = tf.cast(tensor, tf.int32)
    if in_xla_context():
        return tensor, []  # XLA drops assertions: check the values before compiling (as ByteDecoder.generate does)
    size = tf.shape(prompt)[1]
    positions = tf.range(size)[tf.newaxis, :]  # (1, S)
    pad = positions < (size - tensor)[:, tf.newaxis]  # (B, S)
    same = tf.reshape(tf.equal(prompt, tf.cast(pad_value, prompt.dtype)), [tf.shape(prompt)[0], size, -1])
    padded_right = tf.reduce_all(tf.logical_or(tf.logical_not(pad), tf.reduce_all(same, axis=-1)))
    in_range = tf.reduce_all(tf.logical_and(tensor >= 1, tensor <= size))
    checks = [
        tf.debugging.Assert(in_range, [_length_message("Received at run time: lengths and S ="), tensor, size]),
        tf.debugging.Assert(padded_right, [_length_message("Received at run time a pad position that does not hold pad_value; lengths ="), tensor]),
    ]
    return tensor, checks


def _check_prompt(prompt: Any) -> tf.Tensor:
    prompt = tf.convert_to_tensor(prompt)
    if prompt.shape.rank is None or prompt.shape.rank < 2:
        raise ValueError(f"`prompt` must have shape (B, S, ...) with S >= 1. Received: prompt with shape {prompt.shape}")
    if prompt.shape[1] == 0:
        raise ValueError(f"`prompt` must hold at least one token (S >= 1). Received: prompt with shape {prompt.shape}")
    if prompt.shape[0] == 0:
        raise ValueError(f"`prompt` must hold at least one row (B >= 1). Received: prompt with shape {prompt.shape}")
    if not prompt.dtype.is_integer:
        raise TypeError(f"`prompt` must hold integer tokens. Received: prompt with dtype {prompt.dtype.name}")
    return prompt


def _check_cache(cache: Any, cache_axes: tuple[int, int | None] | None, batch: int | None, needed: int | None) -> None:
    """Static checks of every cache tensor: its batch axis holds ``B`` rows and its slot axis ``>= S + M`` slots."""
    if cache_axes is None:
        return
    if not isinstance(cache_axes, (tuple, list)) or len(cache_axes) != 2:
        raise ValueError(f"`cache_axes` must be (batch axis, slot axis or None), or None. Received: cache_axes={cache_axes!r}")
    batch_axis, slot_axis = cache_axes
    for leaf in tf.nest.flatten(cache):
        shape = getattr(leaf, "shape", None)
        if shape is None or shape.rank is None:
            continue
        dims = shape.as_list()
        if batch_axis >= len(dims) or (slot_axis is not None and slot_axis >= len(dims)):
            raise ValueError(
                f"`cache_axes` {tuple(cache_axes)} (batch axis, slot axis) must index every cache tensor. "
                f"Received: a cache tensor of shape {shapes.format_shape(dims)}"
            )
        if batch is not None and dims[batch_axis] is not None and dims[batch_axis] != batch:
            raise ValueError(
                f"Every cache tensor must hold B={batch} rows (the prompt's batch) on its batch axis {batch_axis} "
                f"(`cache_axes`={tuple(cache_axes)}). Received: a cache tensor of shape {shapes.format_shape(dims)}"
            )
        if slot_axis is not None and needed is not None and dims[slot_axis] is not None and dims[slot_axis] < needed:
            raise ValueError(
                f"The cache must have room for the prompt and the new tokens: S + max_new_tokens = {needed} slots on its slot "
                f"axis {slot_axis} (`cache_axes`={tuple(cache_axes)}), so that no row is cut short. "
                f"Received: a cache tensor of shape {shapes.format_shape(dims)}"
            )


def _check_number(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(float(value)):
        raise ValueError(f"`{name}` must be a finite float. Received: {name}={value!r}")
    return float(value)


def _seed_schedule(seed: Any, batch: int | tf.Tensor) -> Callable[[tf.Tensor], tf.Tensor]:
    """``index -> seed`` of the ``index``-th new token: ``fold_in(seed, index)``, per row for ``(B, 2)`` seeds."""
    seed = tf.zeros((2,), tf.int32) if seed is None else tf.cast(tf.convert_to_tensor(seed), tf.int32)
    if seed.shape.rank == 1 and seed.shape.is_compatible_with([2]):
        return lambda index: tf.random.experimental.stateless_fold_in(seed, index)
    if seed.shape.rank != 2 or not seed.shape[1:].is_compatible_with([2]) or (
        isinstance(batch, int) and seed.shape[0] is not None and seed.shape[0] != batch
    ):
        raise ValueError(
            f"`seed` must have shape (2,) (one seed for the batch) or (B, 2) with B={batch} (one seed per row). "
            f"Received: seed with shape {shapes.format_shape(seed.shape.as_list())}"
        )
    # fold_in(s, i) is [h(s), i] with h(s) independent of i: h once per row, then one stack per step
    heads = tf.map_fn(lambda row: tf.random.experimental.stateless_fold_in(row, 0)[0], seed)  # (B,)
    return lambda index: tf.stack([heads, tf.fill(tf.shape(heads), tf.cast(index, tf.int32))], axis=-1)  # (B, 2)


def _call_step(step_fn: StepFn, inputs: tf.Tensor, cache: Any, step: tf.Tensor, padding: tf.Tensor | None) -> tuple[tf.Tensor, Any]:
    if padding is None:
        return step_fn(inputs, cache, step)
    return step_fn(inputs, cache, step, padding=padding)


def _prepare(
    prompt: Any, cache: Any, max_new_tokens: int, lengths: Any, pad_value: int, cache_axes: tuple[int, int | None] | None
) -> tuple[tf.Tensor, tf.Tensor | None, list[tf.Operation], int | tf.Tensor]:
    max_new_tokens = shapes.check_int(max_new_tokens, "max_new_tokens", minimum=1)
    prompt = _check_prompt(prompt)
    batch = prompt.shape[0] if prompt.shape[0] is not None else tf.shape(prompt)[0]  # static when known: loop shapes stay fixed
    needed = None if prompt.shape[1] is None else prompt.shape[1] + max_new_tokens
    _check_cache(cache, cache_axes, prompt.shape[0], needed)
    padding, checks = None, []
    if lengths is not None:
        lengths, checks = check_lengths(prompt, lengths, pad_value)
        padding = tf.shape(prompt)[1] - lengths  # (B,)
    return prompt, padding, checks, batch


def generate(
    step_fn: StepFn,
    prompt: tf.Tensor,
    cache: Any,
    max_new_tokens: int,
    sampler: Sampler = argmax_sampler,
    seed: tf.Tensor | None = None,
    stop: Callable[[tf.Tensor], tf.Tensor] | None = None,
    pad_value: int = 0,
    lengths: tf.Tensor | None = None,
    num_beams: int = 1,
    length_penalty: float = 1.0,
    cache_axes: tuple[int, int | None] | None = (1, 2),
) -> tuple[tf.Tensor, tf.Tensor]:
    """Generates up to ``max_new_tokens`` tokens after ``prompt``: prefill once, then one step per token.

    A row stops when ``stop(newest_token)`` is true for it (e.g. ``stop_at(0, 4)``:
    a NUL character in UTF-32-BE bytes); its later tokens are ``pad_value``. The
    loop ends when every row has stopped or after ``max_new_tokens`` steps.
    No row is ever cut short by the cache: it must hold ``S + max_new_tokens``
    slots (checked before tracing), so a row either ends with its stop token
    (``lengths[b] <= M``) or has all ``M`` new tokens.

    Ragged batches: give ``lengths`` and LEFT-pad the shorter prompts with
    ``pad_value``; each row then gets its own positions, never reads a pad slot
    and generates exactly what it generates alone (``step_fn`` receives ``padding``,
    see the module docstring).

    Beam search (``num_beams > 1``) is ``beam_search``; this returns its best
    sequence and length.

    Args:
        step_fn: the model's step function (see the module docstring).
        prompt: ``(B, S, *token_shape)`` integer tokens, ``S >= 1``.
        cache: the empty cache, with at least ``S + max_new_tokens`` slots.
        max_new_tokens: ``M``, how many tokens to generate at most (``>= 1``).
        sampler: ``sampler(logits, seed) -> tokens``: from ``(B, *token_shape, C)``
            scores to ``(B, *token_shape)`` int32 values, e.g. ``make_sampler(...)``.
        seed: an int32 ``(2,)`` tensor, or ``(B, 2)`` (one seed per row: a row then
            draws the same values alone or in any batch); the ``i``-th new token
            (from 1) is drawn with ``tf.random.experimental.stateless_fold_in(seed, i)``
            (per row). Default ``[0, 0]``.
        stop: ``stop(token) -> (B,) bool`` on ``(B, *token_shape)`` tokens (see
            ``stop_at``), or ``None`` to always run ``max_new_tokens`` steps.
        pad_value: what fills a row after it stopped, and the left padding of ragged prompts.
        lengths: optional ``(B,)`` prompt lengths of a left-padded ragged ``prompt``.
        num_beams: ``1`` for greedy / sampled decoding, more for beam search
            (greedy ``sampler`` only).
        length_penalty: beam search only, see ``beam_search``.
        cache_axes: ``(batch axis, slot axis)`` of every cache tensor (``(1, 2)``
            for ``mlable_core.cache`` caches ``(2, B, S, K, H)``), checked before
            tracing; the slot axis may be ``None`` for a cache without a length
            limit (a ring buffer), and ``cache_axes=None`` skips the checks (then
            nothing guards the cache length; beam search needs the batch axis).

    Returns:
        ``(tokens, lengths)``: ``(B, S + M, *token_shape)`` tokens in the prompt's
        dtype (the prompt as given, then the new tokens), and the ``(B,)`` int32
        number of generated tokens of each row, the stopping one included.

    Raises:
        ValueError, TypeError: bad arguments, before anything is traced: an empty
            prompt, a cache too short for ``S + M``, ``num_beams < 1``, ``lengths``
            that disagree with the padding (at run time for symbolic inputs), ...

    Example:
        >>> tokens, lengths = tf.function(generate, jit_compile=True)(model.step, prompt, cache, 32)
    """
    num_beams = shapes.check_int(num_beams, "num_beams", minimum=1)
    if num_beams > 1:
        if sampler is not argmax_sampler:
            raise ValueError(
                "Beam search keeps the `num_beams` most likely sequences and draws nothing: pass no `sampler` "
                f"(greedy) with num_beams > 1. Received: num_beams={num_beams}, sampler={sampler!r}"
            )
        tokens, lengths, _ = beam_search(
            step_fn, prompt, cache, max_new_tokens, num_beams, length_penalty=length_penalty, stop=stop,
            pad_value=pad_value, lengths=lengths, cache_axes=cache_axes,
        )
        return tokens, lengths
    _check_number(length_penalty, "length_penalty")
    prompt, padding, checks, batch = _prepare(prompt, cache, max_new_tokens, lengths, pad_value, cache_axes)
    seeds = _seed_schedule(seed, batch)
    token_shape = prompt.shape[2:]

    def choose(logits: tf.Tensor, index: tf.Tensor) -> tf.Tensor:
        return tf.cast(sampler(logits[:, -1], seeds(index)), prompt.dtype)  # (B, *token_shape)

    def stops(token: tf.Tensor) -> tf.Tensor:
        return tf.zeros([batch], tf.bool) if stop is None else tf.cast(stop(token), tf.bool)

    with tf.control_dependencies(checks):
        prompt_length = tf.shape(prompt)[1]
    logits, cache = _call_step(step_fn, prompt, cache, tf.constant(0, tf.int32), padding)  # prefill: (B, S, *token_shape, C)
    token = choose(logits, tf.constant(1, tf.int32))
    done = stops(token)
    lengths = tf.ones([batch], tf.int32)
    outputs = tf.TensorArray(prompt.dtype, size=max_new_tokens, element_shape=token.shape).write(0, token)

    def condition(index, token, cache, done, lengths, outputs):  # noqa: ARG001
        return tf.logical_and(index < max_new_tokens, tf.logical_not(tf.reduce_all(done)))

    def body(index, token, cache, done, lengths, outputs):
        step = prompt_length + index - 1  # the slot of the token fed now
        logits, cache = _call_step(step_fn, token[:, tf.newaxis], cache, step, padding)
        fresh = choose(logits, index + 1)
        mask = tf.reshape(done, [-1] + [1] * len(token_shape))
        fresh = tf.where(mask, tf.cast(pad_value, fresh.dtype), fresh)
        lengths = lengths + tf.cast(tf.logical_not(done), tf.int32)
        done = tf.logical_or(done, stops(fresh))
        return index + 1, fresh, cache, done, lengths, outputs.write(index, fresh)

    _, _, _, _, lengths, outputs = tf.while_loop(
        condition,
        body,
        (tf.constant(1, tf.int32), token, cache, done, lengths, outputs),
        maximum_iterations=max_new_tokens,
    )
    generated = tf.transpose(outputs.stack(), [1, 0] + list(range(2, 2 + len(token_shape))))  # (B, M, ...)
    # steps skipped once every row had stopped were never written: pad everything past each row's length
    valid = tf.range(max_new_tokens)[tf.newaxis, :] < lengths[:, tf.newaxis]  # (B, M)
    valid = tf.reshape(valid, [batch, max_new_tokens] + [1] * len(token_shape))
    generated = tf.where(valid, generated, tf.cast(pad_value, generated.dtype))
    return tf.concat([prompt, generated], axis=1), lengths


def top_tokens(log_probs: tf.Tensor, k: int) -> tuple[tf.Tensor, tf.Tensor]:
    """The ``k`` most likely tokens of ``G`` independent values: the top ``k`` of the product distribution.

    A token is ``G`` values predicted at once, value ``g`` drawn from its own
    distribution ``log_probs[..., g, :]``; the log-probability of a token is the
    sum of its values' log-probabilities. The ``k`` best are found without
    enumerating the ``C ** G`` tokens: the ``k`` best prefixes of ``g + 1``
    values are among the ``k * k`` extensions of the ``k`` best prefixes of
    ``g`` values by the ``k`` best values ``g`` (a prefix outside its top ``k``
    has ``k`` better prefixes, each as good with the same suffix).

    Args:
        log_probs: ``(..., G, C)`` float log-probabilities.
        k: how many tokens, ``1 <= k <= C``.

    Returns:
        ``(scores (..., k), tokens (..., k, G) int32)``, best first (ties: the
        lower value first, then the lower earlier values).

    Example:
        >>> scores, tokens = top_tokens(tf.math.log([[[0.6, 0.4], [0.9, 0.1]]]), 2)
        >>> tokens.numpy().tolist()
        [[[0, 0], [1, 0]]]
    """
    log_probs = tf.convert_to_tensor(log_probs)
    if log_probs.shape.rank is None or log_probs.shape.rank < 2 or log_probs.shape[-2] is None:
        raise ValueError(f"`log_probs` must have shape (..., G, C) with G known. Received: shape {log_probs.shape}")
    k = shapes.check_int(k, "k", minimum=1)
    classes = log_probs.shape[-1]
    if classes is not None and k > classes:
        raise ValueError(f"`k` must be at most C={classes} (the values of one position). Received: k={k}")
    batch_dims = log_probs.shape.rank - 2
    scores, tokens = tf.math.top_k(log_probs[..., 0, :], k)  # (..., k)
    tokens = tokens[..., tf.newaxis]  # (..., k, 1)
    for index in range(1, log_probs.shape[-2]):
        values, indices = tf.math.top_k(log_probs[..., index, :], k)  # (..., k)
        sums = scores[..., :, tf.newaxis] + values[..., tf.newaxis, :]  # (..., k, k): prefix x value
        flat = tf.reshape(sums, tf.concat([tf.shape(sums)[:-2], [k * k]], 0))
        scores, chosen = tf.math.top_k(flat, k)  # (..., k)
        prefixes = tf.gather(tokens, chosen // k, batch_dims=batch_dims)  # (..., k, index)
        suffixes = tf.gather(indices, chosen % k, batch_dims=batch_dims)  # (..., k)
        tokens = tf.concat([prefixes, suffixes[..., tf.newaxis]], axis=-1)
    return scores, tokens


def _repeat_rows(cache: Any, times: int, axis: int) -> Any:
    return tf.nest.map_structure(lambda leaf: tf.repeat(leaf, times, axis=axis), cache)


def beam_search(
    step_fn: StepFn,
    prompt: tf.Tensor,
    cache: Any,
    max_new_tokens: int,
    num_beams: int,
    length_penalty: float = 1.0,
    stop: Callable[[tf.Tensor], tf.Tensor] | None = None,
    pad_value: int = 0,
    lengths: tf.Tensor | None = None,
    cache_axes: tuple[int, int | None] | None = (1, 2),
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """Beam search in one compiled loop: the ``num_beams`` most likely continuations, cache rows reordered per step.

    Scoring: a token's log-probability is the sum of the log-softmax of its
    ``G`` values (each value has its own ``C``-way distribution, as the bytes of a
    ``ByteDecoder`` token); a sequence's is the sum over its tokens.

    Each step (the prompt's prefill gives the first), for every row:

    1. every live beam proposes its ``num_beams`` most likely next tokens
       (``top_tokens``: the best of the product distribution), scored
       ``beam log-probability + token log-probability``; a finished beam
       proposes itself once, unchanged (its next token is ``pad_value``);
    2. the ``num_beams`` best proposals become the beams (ties: the lower beam,
       then the better token), and each new beam's cache row is its parent's
       (one gather along the cache's batch axis);
    3. a beam whose new token satisfies ``stop`` is finished.

    The loop ends after ``max_new_tokens`` tokens or when every beam of every
    row is finished. The answer of a row is its beam with the best
    ``log_probability / length ** length_penalty``, ``length`` counting the
    generated tokens (the stop token included); ``length_penalty`` does not
    change which beams are kept, only the final choice (``> 0`` favours longer
    sequences, ``0`` ranks by log-probability). ``num_beams=1`` is greedy
    decoding, stop included.

    The prompt is prefilled once for ``B`` rows and its cache repeated
    ``num_beams`` times; ``step_fn`` then runs on ``B * num_beams`` rows (row
    ``b * num_beams + j`` is beam ``j`` of row ``b``).

    Args:
        step_fn, prompt, cache, max_new_tokens, stop, pad_value, lengths, cache_axes:
            as in ``generate`` (the cache is allocated for ``B`` rows).
        num_beams: ``>= 1``, at most ``C``.
        length_penalty: a finite float, the exponent of the length in the final choice.

    Returns:
        ``(tokens (B, S + M, *token_shape), lengths (B,) int32, log_probs (B,) float32)``:
        the best beam of each row, its generated length and its log-probability
        (unpenalized), its tokens after the length being ``pad_value``.

    Example:
        >>> tokens, lengths, log_probs = tf.function(beam_search, jit_compile=True)(model.step, prompt, cache, 32, 4)
    """
    num_beams = shapes.check_int(num_beams, "num_beams", minimum=1)
    length_penalty = _check_number(length_penalty, "length_penalty")
    prompt, padding, checks, batch = _prepare(prompt, cache, max_new_tokens, lengths, pad_value, cache_axes)
    max_new_tokens = int(max_new_tokens)
    token_shape = prompt.shape[2:].as_list()
    if any(dim is None for dim in token_shape):
        raise ValueError(f"Beam search needs a static token shape. Received: prompt with shape {prompt.shape}")
    values = int(np.prod(token_shape, dtype=np.int64))  # G
    beams, rows = num_beams, batch * num_beams
    if cache_axes is None:
        raise ValueError("Beam search reorders the cache rows: `cache_axes` must give the batch axis of the cache tensors. Received: cache_axes=None")
    batch_axis = cache_axes[0]

    def log_probs(logits: tf.Tensor) -> tf.Tensor:
        logits = tf.cast(logits[:, -1], tf.float32)  # (R, *token_shape, C)
        classes = logits.shape[-1]
        if classes is not None and beams > classes:
            raise ValueError(f"`num_beams` must be at most C={classes} (the classes of one value). Received: num_beams={beams}")
        return tf.reshape(tf.nn.log_softmax(logits, axis=-1), [batch, beams, values, -1])  # (B, k, G, C)

    def select(scores, finished, lengths, history, lp, index):
        """One beam step: ``lp`` ``(B, k, G, C)`` -> the kept beams and the parent of each."""
        token_scores, tokens = top_tokens(lp, beams)  # (B, k, k), (B, k, k, G)
        live = scores[..., tf.newaxis] + token_scores
        frozen = tf.concat([scores[..., tf.newaxis], tf.fill([batch, beams, beams - 1], float("-inf"))], axis=-1)
        proposals = tf.where(finished[..., tf.newaxis], frozen, live)  # (B, k, k)
        tokens = tf.where(finished[..., tf.newaxis, tf.newaxis], tf.cast(pad_value, tokens.dtype), tokens)
        scores, chosen = tf.math.top_k(tf.reshape(proposals, [batch, beams * beams]), beams)  # (B, k)
        parent = chosen // beams  # (B, k)
        token = tf.gather(tf.reshape(tokens, [batch, beams * beams, values]), chosen, batch_dims=1)  # (B, k, G)
        token = tf.cast(tf.reshape(token, [batch, beams] + token_shape), prompt.dtype)
        was_finished = tf.gather(finished, parent, batch_dims=1)
        lengths = tf.gather(lengths, parent, batch_dims=1) + tf.cast(tf.logical_not(was_finished), tf.int32)
        stopped = tf.zeros([batch, beams], tf.bool) if stop is None else tf.reshape(
            tf.cast(stop(tf.reshape(token, [rows] + token_shape)), tf.bool), [batch, beams]
        )
        finished = tf.logical_or(was_finished, stopped)
        history = tf.gather(history, parent, batch_dims=1)  # (B, k, M, *token_shape)
        here = tf.reshape(tf.equal(tf.range(max_new_tokens), index), [1, 1, max_new_tokens] + [1] * len(token_shape))
        history = tf.where(here, token[:, :, tf.newaxis], history)
        return scores, finished, lengths, history, parent, token

    with tf.control_dependencies(checks):
        prompt_length = tf.shape(prompt)[1]
    logits, cache = _call_step(step_fn, prompt, cache, tf.constant(0, tf.int32), padding)  # prefill: B rows
    lp = tf.reshape(tf.nn.log_softmax(tf.cast(logits[:, -1], tf.float32), axis=-1), [batch, 1, values, -1])
    if lp.shape[-1] is not None and beams > lp.shape[-1]:
        raise ValueError(f"`num_beams` must be at most C={lp.shape[-1]} (the classes of one value). Received: num_beams={beams}")
    lp = tf.repeat(lp, beams, axis=1)  # (B, k, G, C): every beam starts as the prompt
    start = tf.concat([tf.zeros([batch, 1]), tf.fill([batch, beams - 1], float("-inf"))], axis=1)  # only beam 0 proposes
    history = tf.fill([batch, beams, max_new_tokens] + token_shape, tf.cast(pad_value, prompt.dtype))
    scores, finished, lengths, history, _, token = select(
        start, tf.zeros([batch, beams], tf.bool), tf.zeros([batch, beams], tf.int32), history, lp, 0
    )
    cache = _repeat_rows(cache, beams, batch_axis)  # (.., B * k, ..): beam j of row b is row b * k + j
    if padding is not None:
        padding = tf.repeat(padding, beams)
    offsets = tf.range(batch)[:, tf.newaxis] * beams  # (B, 1)

    def condition(index, scores, finished, lengths, history, token, cache):  # noqa: ARG001
        return tf.logical_and(index < max_new_tokens, tf.logical_not(tf.reduce_all(finished)))

    def body(index, scores, finished, lengths, history, token, cache):
        step = prompt_length + index - 1  # the slot of the token fed now
        logits, cache = _call_step(step_fn, tf.reshape(token, [rows, 1] + token_shape), cache, step, padding)
        scores, finished, lengths, history, parent, token = select(scores, finished, lengths, history, log_probs(logits), index)
        order = tf.reshape(offsets + parent, [rows])  # the cache row each new beam continues
        cache = tf.nest.map_structure(lambda leaf: tf.gather(leaf, order, axis=batch_axis), cache)
        return index + 1, scores, finished, lengths, history, token, cache

    _, scores, finished, lengths, history, _, _ = tf.while_loop(
        condition, body, (tf.constant(1, tf.int32), scores, finished, lengths, history, token, cache),
        maximum_iterations=max_new_tokens,
    )
    penalized = scores / tf.pow(tf.cast(tf.maximum(lengths, 1), tf.float32), length_penalty)  # (B, k)
    best = tf.argmax(penalized, axis=1, output_type=tf.int32)  # (B,): ties, the lower beam
    tokens = tf.gather(history, best, batch_dims=1)  # (B, M, *token_shape)
    return (
        tf.concat([prompt, tokens], axis=1),
        tf.gather(lengths, best, batch_dims=1),
        tf.gather(scores, best, batch_dims=1),
    )


def generate_uncached(
    model_fn: Callable[[tf.Tensor], tf.Tensor],
    prompt: tf.Tensor,
    max_new_tokens: int,
    sampler: Sampler = argmax_sampler,
    seed: tf.Tensor | None = None,
) -> tf.Tensor:
    """The reference for ``generate``: recomputes the whole sequence at every step, without a cache.

    The tokens live in a buffer of static shape ``(B, S + M, *token_shape)``
    (zeros past the current position), so one compiled loop serves every step;
    ``model_fn`` must be causal (position ``i`` of its output may only depend on
    inputs ``<= i``), which makes the zeros past the position irrelevant. With
    the same sampler and seed, a correct cached model gives the same tokens as
    ``generate`` (when no row stops early).

    Args:
        model_fn: ``model_fn(tokens) -> logits``: ``(B, S, *token_shape)`` to
            ``(B, S, *token_shape, C)``, causal.
        prompt: ``(B, S, *token_shape)`` integer tokens (dense: no ragged rows).
        max_new_tokens: ``M``, how many tokens to generate.
        sampler: as in ``generate``.
        seed: as in ``generate`` (``(2,)`` or ``(B, 2)``); step ``i`` uses the same folded seed.

    Returns:
        ``(B, S + M, *token_shape)`` tokens in the prompt's dtype.
    """
    max_new_tokens = shapes.check_int(max_new_tokens, "max_new_tokens", minimum=1)
    prompt = _check_prompt(prompt)
    batch = prompt.shape[0] if prompt.shape[0] is not None else tf.shape(prompt)[0]
    seeds = _seed_schedule(seed, batch)
    prompt_length = tf.shape(prompt)[1]
    token_rank = prompt.shape.rank - 2
    padding = [[0, 0], [0, max_new_tokens]] + [[0, 0]] * token_rank
    tokens = tf.pad(prompt, padding)  # (B, S + M, *token_shape)
    total = tf.shape(tokens)[1]

    def body(index, tokens):
        position = prompt_length + index - 2  # the last known token; the new one goes right after it
        logits = model_fn(tokens)  # (B, S + M, *token_shape, C)
        chosen = sampler(tf.gather(logits, position, axis=1), seeds(index))
        chosen = tf.cast(chosen, tokens.dtype)[:, tf.newaxis]  # (B, 1, *token_shape)
        here = tf.reshape(tf.equal(tf.range(total), position + 1), [1, -1] + [1] * token_rank)
        return index + 1, tf.where(here, chosen, tokens)

    _, tokens = tf.while_loop(
        lambda index, tokens: index <= max_new_tokens, body, (tf.constant(1, tf.int32), tokens), maximum_iterations=max_new_tokens
    )
    return tokens


__all__ = [
    "MIN_BUCKET",
    "Sampler",
    "StepFn",
    "argmax_sampler",
    "beam_search",
    "bucket_length",
    "check_lengths",
    "check_sampling",
    "generate",
    "generate_uncached",
    "make_sampler",
    "stop_at",
    "top_tokens",
]

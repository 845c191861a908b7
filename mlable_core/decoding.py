"""Autoregressive generation with a KV cache, in one compiled loop.

The cache convention: a model that can generate exposes a step function

    step_fn(inputs, cache, step) -> (logits, cache)

- ``inputs``: ``(B, F, *token_shape)`` the ``F`` tokens at absolute positions
  ``[step, step + F)`` (the prompt at prefill, one token afterwards);
- ``cache``: any nested structure of tensors (typically one ``(2, B, T, N, H)``
  tensor per attention layer, see ``mlable_core.attention``), allocated for at
  least ``P + max_new_tokens`` positions and returned updated, with the same
  structure, shapes and dtypes;
- ``step``: an int32 scalar tensor, the position of ``inputs[:, 0]``;
- ``logits``: ``(B, F, *token_shape, C)``, scores of the token that FOLLOWS
  each input position.

``generate`` prefills the prompt once, then produces one token per iteration
of a single ``tf.while_loop`` with the cache threaded through. It traces once
per prompt shape: wrap it (or the model method that calls it) in one
``tf.function(jit_compile=True)`` built once, not per call.

Shape letters: ``B`` batch, ``P`` prompt length, ``N`` new tokens, ``C`` classes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import tensorflow as tf

from mlable_core import sampling, shapes

StepFn = Callable[[tf.Tensor, Any, tf.Tensor], tuple[tf.Tensor, Any]]
Sampler = Callable[[tf.Tensor, tf.Tensor], tf.Tensor]


def argmax_sampler(logits: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:  # noqa: ARG001
    """Greedy choice over the last axis (``mlable_core.sampling.greedy``); the default sampler of ``generate``."""
    return sampling.greedy(logits)


def make_sampler(temperature: float = 0.0, top_k: int | None = None, top_p: float | None = None) -> Sampler:
    """A ``Sampler`` for ``generate``: greedy when ``temperature == 0``, else ``mlable_core.sampling.sample``.

    The arguments are validated here, once, rather than at every step.

    Args:
        temperature: 0 for greedy decoding, else the softmax temperature (> 0).
        top_k: keep the ``k`` largest logits, or ``None``.
        top_p: keep the smallest set whose probability reaches ``p``, or ``None``.

    Returns:
        ``sampler(logits, seed) -> int32 indices`` over the last axis.
    """
    probe = tf.zeros((1, 2))
    sampling.sample(probe, tf.zeros((2,), tf.int32), temperature=temperature, top_k=top_k, top_p=top_p)  # validates
    if temperature == 0:
        return argmax_sampler

    def sampler(logits: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
        return sampling.sample(logits, seed, temperature=temperature, top_k=top_k, top_p=top_p)

    return sampler


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
        chunks = tf.reshape(tf.equal(token, tf.cast(value, token.dtype)), [tf.shape(token)[0], -1, group])  # (B, K, group)
        return tf.reduce_any(tf.reduce_all(chunks, axis=-1), axis=-1)  # (B,)

    return stop


def generate(
    step_fn: StepFn,
    prompt: tf.Tensor,
    cache: Any,
    max_new_tokens: int,
    sampler: Sampler = argmax_sampler,
    seed: tf.Tensor | None = None,
    stop: Callable[[tf.Tensor], tf.Tensor] | None = None,
    pad_value: int = 0,
) -> tuple[tf.Tensor, tf.Tensor]:
    """Generates ``max_new_tokens`` tokens after ``prompt``: prefill once, then one step per token.

    A row stops when ``stop(newest_token)`` is true for it (e.g. ``stop_at(0, 4)``:
    a NUL character in UTF-32-BE bytes); its later tokens are ``pad_value``. The
    loop ends when every row has stopped or after ``max_new_tokens`` steps.

    Args:
        step_fn: the model's step function (see the module docstring).
        prompt: ``(B, P, *token_shape)`` integer tokens, ``P >= 1``.
        cache: the empty cache, allocated for at least ``P + max_new_tokens`` positions.
        max_new_tokens: how many tokens to generate at most (``>= 1``).
        sampler: ``sampler(logits, seed) -> tokens``: from ``(B, *token_shape, C)``
            scores to ``(B, *token_shape)`` int32 values, e.g. ``mlable_core.sampling.sample``.
        seed: an int32 ``(2,)`` tensor; the ``i``-th new token (from 1) is sampled with
            ``tf.random.experimental.stateless_fold_in(seed, i)``. Default ``[0, 0]``.
        stop: ``stop(token) -> (B,) bool`` on ``(B, *token_shape)`` tokens (see
            ``stop_at``), or ``None`` to always run ``max_new_tokens`` steps.
        pad_value: what fills a row after it stopped.

    Returns:
        ``(tokens, lengths)``: ``(B, P + max_new_tokens, *token_shape)`` tokens in the
        prompt's dtype, and the ``(B,)`` int32 number of generated tokens of each row,
        the stopping one included.

    Example:
        >>> tokens, lengths = tf.function(generate, jit_compile=True)(model.step, prompt, cache, 32)
    """
    max_new_tokens = shapes.check_int(max_new_tokens, "max_new_tokens", minimum=1)
    prompt = tf.convert_to_tensor(prompt)
    if prompt.shape.rank is None or prompt.shape.rank < 2:
        raise ValueError(f"`prompt` must have shape (B, P, ...) with P >= 1. Received: prompt with shape {prompt.shape}")
    if prompt.shape[1] == 0:
        raise ValueError(f"`prompt` must hold at least one token (P >= 1). Received: prompt with shape {prompt.shape}")
    seed = tf.zeros((2,), tf.int32) if seed is None else tf.cast(tf.convert_to_tensor(seed), tf.int32)
    batch = prompt.shape[0] if prompt.shape[0] is not None else tf.shape(prompt)[0]  # static when known: loop shapes stay fixed
    token_shape = prompt.shape[2:]

    def choose(logits: tf.Tensor, index: tf.Tensor) -> tf.Tensor:
        step_seed = tf.random.experimental.stateless_fold_in(seed, index)
        return tf.cast(sampler(logits[:, -1], step_seed), prompt.dtype)  # (B, *token_shape)

    def stops(token: tf.Tensor) -> tf.Tensor:
        return tf.zeros([batch], tf.bool) if stop is None else tf.cast(stop(token), tf.bool)

    prompt_length = tf.shape(prompt)[1]
    logits, cache = step_fn(prompt, cache, tf.constant(0, tf.int32))  # prefill: (B, P, *token_shape, C)
    token = choose(logits, tf.constant(1, tf.int32))
    done = stops(token)
    lengths = tf.ones([batch], tf.int32)
    outputs = tf.TensorArray(prompt.dtype, size=max_new_tokens, element_shape=token.shape).write(0, token)

    def condition(index, token, cache, done, lengths, outputs):  # noqa: ARG001
        return tf.logical_and(index < max_new_tokens, tf.logical_not(tf.reduce_all(done)))

    def body(index, token, cache, done, lengths, outputs):
        step = prompt_length + index - 1  # absolute position of the token fed now
        logits, cache = step_fn(token[:, tf.newaxis], cache, step)
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
    generated = tf.transpose(outputs.stack(), [1, 0] + list(range(2, 2 + len(token_shape))))  # (B, N, ...)
    # steps skipped once every row had stopped were never written: pad everything past each row's length
    valid = tf.range(max_new_tokens)[tf.newaxis, :] < lengths[:, tf.newaxis]  # (B, N)
    valid = tf.reshape(valid, [batch, max_new_tokens] + [1] * len(token_shape))
    generated = tf.where(valid, generated, tf.cast(pad_value, generated.dtype))
    return tf.concat([prompt, generated], axis=1), lengths


def generate_uncached(
    model_fn: Callable[[tf.Tensor], tf.Tensor],
    prompt: tf.Tensor,
    max_new_tokens: int,
    sampler: Sampler = argmax_sampler,
    seed: tf.Tensor | None = None,
) -> tf.Tensor:
    """The reference for ``generate``: recomputes the whole sequence at every step, without a cache.

    The tokens live in a buffer of static shape ``(B, P + N, *token_shape)``
    (zeros past the current position), so one compiled loop serves every step;
    ``model_fn`` must be causal (position ``i`` of its output may only depend on
    inputs ``<= i``), which makes the zeros past the position irrelevant. With
    the same sampler and seed, a correct cached model gives the same tokens as
    ``generate`` (when no row stops early).

    Args:
        model_fn: ``model_fn(tokens) -> logits``: ``(B, L, *token_shape)`` to
            ``(B, L, *token_shape, C)``, causal.
        prompt: ``(B, P, *token_shape)`` integer tokens.
        max_new_tokens: ``N``, how many tokens to generate.
        sampler: as in ``generate``.
        seed: as in ``generate``; step ``i`` uses the same folded seed.

    Returns:
        ``(B, P + N, *token_shape)`` tokens in the prompt's dtype.
    """
    max_new_tokens = shapes.check_int(max_new_tokens, "max_new_tokens", minimum=1)
    prompt = tf.convert_to_tensor(prompt)
    if prompt.shape.rank is None or prompt.shape.rank < 2 or prompt.shape[1] == 0:
        raise ValueError(f"`prompt` must have shape (B, P, ...) with P >= 1. Received: prompt with shape {prompt.shape}")
    seed = tf.zeros((2,), tf.int32) if seed is None else tf.cast(tf.convert_to_tensor(seed), tf.int32)
    prompt_length = tf.shape(prompt)[1]
    token_rank = prompt.shape.rank - 2
    padding = [[0, 0], [0, max_new_tokens]] + [[0, 0]] * token_rank
    tokens = tf.pad(prompt, padding)  # (B, P + N, *token_shape)
    total = tf.shape(tokens)[1]

    def body(index, tokens):
        position = prompt_length + index - 2  # the last known token; the new one goes right after it
        logits = model_fn(tokens)  # (B, P + N, *token_shape, C)
        chosen = sampler(tf.gather(logits, position, axis=1), tf.random.experimental.stateless_fold_in(seed, index))
        chosen = tf.cast(chosen, tokens.dtype)[:, tf.newaxis]  # (B, 1, *token_shape)
        here = tf.reshape(tf.equal(tf.range(total), position + 1), [1, -1] + [1] * token_rank)
        return index + 1, tf.where(here, chosen, tokens)

    _, tokens = tf.while_loop(
        lambda index, tokens: index <= max_new_tokens, body, (tf.constant(1, tf.int32), tokens), maximum_iterations=max_new_tokens
    )
    return tokens


__all__ = ["Sampler", "StepFn", "argmax_sampler", "generate", "generate_uncached", "make_sampler", "stop_at"]

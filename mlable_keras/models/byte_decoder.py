"""A small byte-level decoder-only language model built from mlable's layers.

Text is encoded as UTF-32-BE bytes and grouped into tokens of ``token_size``
bytes (``token_size / 4`` characters). Each position predicts every byte of the
NEXT token at once, with a 256-way softmax per byte.

Shape letters (the project glossary): ``B`` batch, ``S`` tokens along the
sequence (and cache slots), ``T`` tokens given to one cached call, ``G`` bytes
per token (``token_size``), ``E`` embedding per byte, ``D = G * E`` model
width, ``N`` heads, ``H`` head size, ``C = 256`` byte values scored by the
head, ``M`` new tokens of a generation.

The path of a batch (``call``):
    tokens ``(B, S, G)`` -> ``TokunEmbedding`` ``(B, S, D)`` -> per block:
    RMS norm, ``CachedMultiHeadAttention`` (causal, RoPE on its projected
    queries and keys, so scores depend on relative positions only) + residual, RMS norm,
    ``FeedForwardGate`` + residual -> RMS norm -> byte head ``(B, S, G * C)`` ->
    ``Divide`` ``(B, S, G, C)`` float32 logits.

Cache convention (``mlable_core.decoding``): ``step(tokens, cache, position, padding=None)``
returns ``(logits, cache)``; the cache is a tuple with one ``(2, B, S, N, H)``
tensor per block, in the compute dtype, allocated by ``create_cache``.

Generation (``generate``): greedy, sampled or beam search in one compiled loop,
on prompts of different lengths in one batch (left-padded, each row with its
own positions and its pad slots hidden), compiled once per (batch size,
prompt-length bucket).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from mlable_core import cache as kv_cache
from mlable_core import decoding, reshaping, shapes, text
from mlable_keras.layers.embedding import TokunEmbedding
from mlable_keras.layers.reshaping import Divide
from mlable_keras.layers.transformer import CachedMultiHeadAttention, FeedForwardGate

BYTES = 256


def encode_tokens(texts: Any, num_tokens: int, token_size: int) -> tf.Tensor:
    """Strings to ``(B, S, G)`` int32 byte tokens (UTF-32-BE, zero-padded or cut to ``S * G / 4`` characters).

    Args:
        texts: a string, a list of strings or a string tensor ``(B,)``.
        num_tokens: ``S``, the tokens per row.
        token_size: ``G``, the bytes per token, a multiple of 4.
    """
    num_tokens = shapes.check_int(num_tokens, "num_tokens", minimum=1)
    token_size = _check_token_size(token_size)
    data = text.encode(texts, size=num_tokens * token_size // 4)  # (B, S * G) uint8
    tokens = reshaping.divide(data, input_axis=-2, output_axis=-1, factor=token_size, insert=True)  # (B, S, G)
    return tf.cast(tokens, tf.int32)


def decode_tokens(tokens: tf.Tensor, errors: str = "replace") -> list[str]:
    """``(B, S, G)`` byte tokens back to Python strings, trailing NUL padding removed."""
    data = reshaping.merge(tf.convert_to_tensor(tokens), left_axis=-2, right_axis=-1)  # (B, S * G)
    return [value.decode("utf-8") for value in text.decode(data, errors=errors).numpy().tolist()]


def _check_token_size(token_size: int) -> int:
    token_size = shapes.check_int(token_size, "token_size", minimum=4)
    if token_size % 4:
        raise ValueError(f"`token_size` must be a multiple of 4 (UTF-32 characters). Received: token_size={token_size}")
    return token_size


@keras.saving.register_keras_serializable(package="mlable")
class ByteDecoder(keras.Model):
    """A decoder-only byte-level language model: tokens of ``token_size`` bytes in, next-token byte logits out.

    Args:
        token_size: ``G``, bytes per token (a multiple of 4: ``G / 4`` UTF-32 characters).
        embed_dim: ``E``, the embedding size of one byte; the model width is ``D = G * E``.
        num_layers: the number of attention + feed-forward blocks.
        num_heads: ``N``, attention heads.
        head_dim: ``H``, the size of one head (default ``D / N``).
        hidden_dim: the hidden size of the gated feed-forward (default ``2 * D``).
        dropout_rate: dropout in the attention and the feed-forward.
        max_wavelength: the RoPE base wavelength.
        **kwargs: ``keras.Model`` arguments (``name``, ``dtype``, ...); a ``dtype`` policy such as
            ``"mixed_bfloat16"`` applies to every sublayer but the head, whose logits stay float32.

    Call arguments:
        inputs: ``(B, S, G)`` integer bytes.
        training: whether dropout is active.

    Output shape:
        ``(B, S, G, 256)`` float32 logits of the bytes of the token after each position.

    Example:
        >>> model = ByteDecoder(token_size=16, embed_dim=8, num_layers=1, num_heads=2)
        >>> model(encode_tokens(["hello world"], num_tokens=4, token_size=16)).shape
        TensorShape([1, 4, 16, 256])
    """

    def __init__(
        self,
        token_size: int = 16,
        embed_dim: int = 16,
        num_layers: int = 2,
        num_heads: int = 4,
        head_dim: int | None = None,
        hidden_dim: int | None = None,
        dropout_rate: float = 0.0,
        max_wavelength: float = 10_000.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.token_size = _check_token_size(token_size)
        self.embed_dim = shapes.check_int(embed_dim, "embed_dim", minimum=1)
        self.num_layers = shapes.check_int(num_layers, "num_layers", minimum=1)
        self.num_heads = shapes.check_int(num_heads, "num_heads", minimum=1)
        width = self.token_size * self.embed_dim
        if head_dim is None and width % self.num_heads:
            raise ValueError(
                f"`num_heads` must divide the model width token_size * embed_dim = {width} when `head_dim` is not given. "
                f"Received: num_heads={num_heads}"
            )
        self.head_dim = shapes.check_int(width // self.num_heads if head_dim is None else head_dim, "head_dim", minimum=1)
        self.hidden_dim = shapes.check_int(2 * width if hidden_dim is None else hidden_dim, "hidden_dim", minimum=1)
        if not 0.0 <= float(dropout_rate) < 1.0:
            raise ValueError(f"`dropout_rate` must be in [0, 1). Received: dropout_rate={dropout_rate}")
        self.dropout_rate = float(dropout_rate)
        self.max_wavelength = float(max_wavelength)
        self.width = width
        # the model's policy (e.g. mixed_bfloat16) reaches every sublayer; the head keeps float32 logits, so that
        # the loss, the metrics and the samplers see full-precision scores
        dtype = self.dtype_policy
        self.embedding = TokunEmbedding(BYTES, self.embed_dim, name="embedding", dtype=dtype)
        self.attention_norms = [keras.layers.RMSNormalization(name=f"attention_norm_{index}", dtype=dtype) for index in range(self.num_layers)]
        self.attentions = [
            CachedMultiHeadAttention(
                self.num_heads, self.head_dim, dropout=self.dropout_rate, rotary={"max_wavelength": self.max_wavelength},
                name=f"attention_{index}", dtype=dtype,
            )
            for index in range(self.num_layers)
        ]
        self.feedforward_norms = [keras.layers.RMSNormalization(name=f"feedforward_norm_{index}", dtype=dtype) for index in range(self.num_layers)]
        self.feedforwards = [
            FeedForwardGate(width, self.hidden_dim, dropout_rate=self.dropout_rate, name=f"feedforward_{index}", dtype=dtype)
            for index in range(self.num_layers)
        ]
        self.final_norm = keras.layers.RMSNormalization(name="final_norm", dtype=dtype)
        self.head = keras.layers.Dense(self.token_size * BYTES, name="head", dtype="float32")
        self.split = Divide(input_axis=3, output_axis=2, factor=self.token_size, insert=True, name="split", dtype="float32")

    def build(self, input_shape: Sequence[int | None]) -> None:
        input_shape = tuple(input_shape)
        self.embedding.build(input_shape)
        hidden = input_shape[:-1] + (self.width,)
        for norm, layer, ffn_norm, ffn in zip(self.attention_norms, self.attentions, self.feedforward_norms, self.feedforwards):
            norm.build(hidden)
            layer.build(hidden, hidden, hidden)
            ffn_norm.build(hidden)
            ffn.build(hidden)
        self.final_norm.build(hidden)
        self.head.build(hidden)
        self.built = True

    def forward(
        self,
        inputs: tf.Tensor,
        cache: Sequence[tf.Tensor] | None = None,
        step: int | tf.Tensor | None = None,
        training: bool | None = None,
        positions: Any = None,
        attention_mask: Any = None,
    ) -> tuple[tf.Tensor, tuple[tf.Tensor, ...] | None]:
        """The model with an optional cache: ``(logits, cache)``.

        Args:
            inputs: ``(B, T, G)`` byte tokens at positions ``[step, step + T)``.
            cache: ``None`` (a plain causal pass from position 0) or the tuple of
                per-block caches from ``create_cache``.
            step: the position of ``inputs[:, 0]`` (required with a cache).
            training: whether dropout is active.
            positions: optional RoPE positions of the ``T`` tokens, ``(T,)`` or
                ``(B, T)`` (default ``step + i``, or ``i`` without a cache). The
                logits do not change when every position shifts by the same amount.
            attention_mask: optional boolean mask combined with the causal one,
                ``(B, T, S)`` over the cache slots with a cache (``(B, 1, S)``
                hides slots from every query), ``(B, T, T)`` without.

        Returns:
            ``(B, T, G, 256)`` float32 logits and the updated cache (``None`` without one).
        """
        if cache is not None and step is None:
            raise ValueError("`step` is required with a `cache`: the position of the first input token.")
        if cache is not None and len(cache) != self.num_layers:
            raise ValueError(f"`cache` must hold one tensor per block ({self.num_layers}). Received: {len(cache)} tensors")
        hidden = self.embedding(inputs)  # (B, T, D)
        updated = []
        for index in range(self.num_layers):
            normed = self.attention_norms[index](hidden)
            # RoPE turns the projected queries and keys inside the attention (at step + i), so that the
            # scores depend on relative positions only; rotating `normed` would let W_q / W_k mix the pairs
            if cache is None:
                mixed = self.attentions[index](
                    normed, normed, training=training, use_causal_mask=True, positions=positions, attention_mask=attention_mask
                )
            else:
                mixed, layer_cache = self.attentions[index](
                    normed, normed, cache=cache[index], step=step, training=training, use_causal_mask=True,
                    positions=positions, attention_mask=attention_mask,
                )
                updated.append(layer_cache)
            hidden = hidden + mixed
            hidden = hidden + self.feedforwards[index](self.feedforward_norms[index](hidden), training=training)
        logits = self.split(self.head(self.final_norm(hidden)))  # (B, T, G, C)
        return tf.cast(logits, tf.float32), (None if cache is None else tuple(updated))

    def call(self, inputs: tf.Tensor, training: bool | None = None) -> tf.Tensor:
        return self.forward(inputs, training=training)[0]

    def compute_output_shape(self, input_shape: Sequence[int | None]) -> tuple[int | None, ...]:
        return tuple(input_shape) + (BYTES,)

    def step(
        self, inputs: tf.Tensor, cache: Sequence[tf.Tensor], position: tf.Tensor, padding: tf.Tensor | None = None
    ) -> tuple[tf.Tensor, tuple[tf.Tensor, ...]]:
        """The ``mlable_core.decoding`` step function: ``(logits, cache)`` for tokens written at slot ``position``.

        Args:
            inputs: ``(B, T, G)`` byte tokens written at slots ``[position, position + T)``.
            cache: the per-block caches (``create_cache``).
            position: the slot of ``inputs[:, 0]``, an int32 scalar.
            padding: optional ``(B,)`` int32, the pad slots at the start of each row
                (ragged batches): row ``b`` never reads its slots ``< padding[b]``
                and its slot ``t`` sits at RoPE position ``t - padding[b]``, so a
                left-padded row computes what it computes alone.
        """
        if padding is None:
            return self.forward(inputs, cache=cache, step=position, training=False)
        padding = tf.cast(padding, tf.int32)
        new = tf.shape(inputs)[1]
        slots = cache[0].shape[2] if cache[0].shape[2] is not None else tf.shape(cache[0])[2]
        positions = position + tf.range(new)[tf.newaxis, :] - padding[:, tf.newaxis]  # (B, T)
        visible = tf.range(slots)[tf.newaxis, :] >= padding[:, tf.newaxis]  # (B, S): pad slots hidden
        return self.forward(
            inputs, cache=cache, step=position, training=False, positions=positions, attention_mask=visible[:, tf.newaxis, :]
        )

    def create_cache(self, batch_size: int, length: int) -> tuple[tf.Tensor, ...]:
        """Empty caches, one ``(2, B, S, N, H)`` tensor per block, in the compute dtype, for ``length`` slots."""
        return tuple(
            kv_cache.create_cache(batch_size, length, self.num_heads, self.head_dim, dtype=self.compute_dtype)
            for _ in range(self.num_layers)
        )

    def _generation_function(
        self, cached: bool, max_new_tokens: int, temperature: float, top_k: int | None, top_p: float | None,
        stop_at_nul: bool, jit_compile: bool, num_beams: int = 1, length_penalty: float = 1.0,
    ) -> Callable[..., Any]:
        # one tf.function per generation setting, built once and kept; it traces once per input shape, i.e. per
        # (batch size, prompt-length bucket) for the cached loop, whose prompts are padded up to a bucket
        key = (cached, max_new_tokens, temperature, top_k, top_p, stop_at_nul, jit_compile, num_beams, length_penalty)
        functions = self.__dict__.setdefault("_generation_functions", {})
        if key not in functions:
            sampler = decoding.make_sampler(temperature, top_k, top_p)
            stop = decoding.stop_at(0, group=4) if stop_at_nul else None
            if not cached:

                def run(prompt: tf.Tensor, seed: tf.Tensor) -> Any:
                    model_fn = lambda tokens: self.forward(tokens, training=False)[0]  # noqa: E731
                    return decoding.generate_uncached(model_fn, prompt, max_new_tokens, sampler=sampler, seed=seed)

            else:

                def run(prompt: tf.Tensor, lengths: tf.Tensor, seed: tf.Tensor) -> Any:
                    cache = self.create_cache(prompt.shape[0], prompt.shape[1] + max_new_tokens)
                    return decoding.generate(
                        self.step, prompt, cache, max_new_tokens, sampler=sampler, seed=seed, stop=stop, lengths=lengths,
                        num_beams=num_beams, length_penalty=length_penalty,
                    )

            functions[key] = tf.function(run, jit_compile=jit_compile)
        return functions[key]

    def _check_prompt(self, prompt: Any) -> np.ndarray:
        """A dense ``(B, S, G)`` prompt as int32 numpy bytes, checked."""
        if isinstance(prompt, (str, bytes)):
            raise TypeError(
                "`prompt` must be byte tokens (B, S, token_size) or a list of prompts (strings or (S_b, token_size) "
                f"arrays). Received: a single {type(prompt).__name__}; wrap it in a list"
            )
        tokens = np.asarray(prompt.numpy() if tf.is_tensor(prompt) else prompt)
        if tokens.ndim != 3 or tokens.shape[-1] != self.token_size:
            raise ValueError(
                f"`prompt` must be byte tokens of shape (B, S, token_size={self.token_size}). "
                f"Received: prompt with shape {shapes.format_shape(tokens.shape)}"
            )
        if tokens.shape[0] == 0 or tokens.shape[1] == 0:
            raise ValueError(
                f"`prompt` must hold at least one row and one token (B >= 1, S >= 1). Received: prompt with shape {shapes.format_shape(tokens.shape)}"
            )
        if not np.issubdtype(tokens.dtype, np.integer):
            raise TypeError(f"`prompt` must hold integer bytes. Received: prompt with dtype {tokens.dtype}")
        if tokens.min() < 0 or tokens.max() >= BYTES:
            raise ValueError(
                f"`prompt` must hold bytes in [0, {BYTES}). Received: values from {tokens.min()} to {tokens.max()} "
                f"in a prompt of shape {shapes.format_shape(tokens.shape)}"
            )
        return tokens.astype(np.int32)

    def _ragged_prompt(self, prompt: Any, lengths: Any) -> tuple[np.ndarray, np.ndarray]:
        """``(left-padded tokens (B, S, G), lengths (B,))`` from a dense prompt (+ lengths) or a list of prompts."""
        listed = isinstance(prompt, (list, tuple)) and len(prompt) > 0 and all(
            isinstance(item, str) or np.ndim(item.numpy() if tf.is_tensor(item) else item) == 2 for item in prompt
        )
        if isinstance(prompt, (list, tuple)) and len(prompt) == 0:
            raise ValueError("`prompt` must hold at least one prompt. Received: an empty list")
        if not listed:
            tokens = self._check_prompt(prompt)
            if lengths is None:
                return tokens, np.full((tokens.shape[0],), tokens.shape[1], np.int32)
            lengths = np.asarray(lengths.numpy() if tf.is_tensor(lengths) else lengths)
            decoding.check_lengths(tf.constant(tokens), lengths)
            return tokens, lengths.astype(np.int32)
        if lengths is not None:
            raise ValueError("`lengths` goes with a left-padded (B, S, token_size) prompt; a list of prompts gives its own lengths")
        rows = []
        for index, item in enumerate(prompt):
            if isinstance(item, str):
                if not item:
                    raise ValueError(f"Every prompt must hold at least one character. Received: an empty string at prompt[{index}]")
                count = -(-len(item) * 4 // self.token_size)  # tokens holding every character, the last one NUL-padded
                rows.append(encode_tokens([item], count, self.token_size).numpy()[0])
            else:
                row = self._check_prompt(np.asarray(item.numpy() if tf.is_tensor(item) else item)[np.newaxis])[0]
                rows.append(row)
        width = max(len(row) for row in rows)
        tokens = np.zeros((len(rows), width, self.token_size), np.int32)
        for index, row in enumerate(rows):
            tokens[index, width - len(row):] = row  # left padding: the last tokens of every row share a slot
        return tokens, np.array([len(row) for row in rows], np.int32)

    def _check_seed(self, seed: Any, batch: int) -> tf.Tensor:
        values = np.asarray(seed.numpy() if tf.is_tensor(seed) else seed)
        if not np.issubdtype(values.dtype, np.integer) or values.shape not in ((2,), (batch, 2)):
            raise ValueError(
                f"`seed` must be two ints (2,) or one pair per row (B={batch}, 2). Received: seed with shape "
                f"{shapes.format_shape(values.shape)} and dtype {values.dtype}"
            )
        return tf.constant(values, tf.int32)

    def generate(
        self,
        prompt: Any,
        max_new_tokens: int,
        temperature: float = 0.0,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: Sequence[int] | tf.Tensor = (0, 0),
        stop_at_nul: bool = False,
        jit_compile: bool = True,
        lengths: Any = None,
        num_beams: int = 1,
        length_penalty: float = 1.0,
    ) -> tuple[tf.Tensor, tf.Tensor]:
        """Generates tokens after ``prompt`` with the KV cache, in one compiled loop.

        Prompts may have different lengths: pass a list of strings or of
        ``(S_b, G)`` byte arrays, or a left-padded ``(B, S, G)`` array with its
        ``lengths``. Every row is computed as if alone (its own positions, pad
        slots hidden, its own stop) in one prefill for the batch. Prompt lengths
        are padded up to a bucket (``mlable_core.decoding.bucket_length``), so the
        loop compiles once per (batch size, bucket) and setting. Every argument is
        checked before anything is compiled.

        Args:
            prompt: ``(B, S, G)`` byte tokens, or a list of ``B`` prompts (strings,
                encoded as UTF-32-BE with the last token NUL-padded, or ``(S_b, G)`` arrays).
            max_new_tokens: ``M``, how many tokens to add.
            temperature: 0 for greedy decoding, else the sampling temperature.
            top_k: keep the ``k`` best bytes when sampling.
            top_p: keep the smallest set of bytes whose probability reaches ``p`` when sampling.
            seed: two ints, the stateless sampling seed, or ``(B, 2)``: one seed per row
                (a row then draws the same bytes alone or in any batch).
            stop_at_nul: stop a row at its first NUL character (its later tokens are zeros).
            jit_compile: compile the loop with XLA.
            lengths: with a left-padded ``(B, S, G)`` prompt, each row's prompt
                length (its first ``S - lengths[b]`` tokens must be zeros).
            num_beams: beam search with this many beams (greedy only; see
                ``mlable_core.decoding.beam_search`` for how tokens of ``G`` bytes are scored).
            length_penalty: beam search: the best beam maximizes ``log_prob / length ** length_penalty``.

        Returns:
            ``(tokens, lengths)``: ``(B, S + M, G)`` bytes, the prompts LEFT-padded to
            ``S`` (the longest prompt) then the new tokens, and the ``(B,)`` number of
            generated tokens (the stopping one included; ``M`` for a row that did not stop).

        Example:
            >>> tokens, lengths = model.generate(["Hello", "Hi, how are"], 16)  # ragged: two prompt lengths
            >>> tokens.shape  # (2, 11 + 16, 4) with token_size=4: "Hello" is left-padded by 6 tokens
        """
        max_new_tokens = shapes.check_int(max_new_tokens, "max_new_tokens", minimum=1)
        decoding.check_sampling(temperature, top_k, top_p)
        num_beams = shapes.check_int(num_beams, "num_beams", minimum=1)
        if num_beams > 1 and temperature != 0:
            raise ValueError(
                f"Beam search is deterministic: use temperature=0 with num_beams > 1. Received: num_beams={num_beams}, temperature={temperature}"
            )
        if num_beams > BYTES:
            raise ValueError(f"`num_beams` must be at most {BYTES} (the values of one byte). Received: num_beams={num_beams}")
        if isinstance(length_penalty, bool) or not isinstance(length_penalty, (int, float)) or not np.isfinite(length_penalty):
            raise ValueError(f"`length_penalty` must be a finite float. Received: length_penalty={length_penalty!r}")
        tokens, lengths = self._ragged_prompt(prompt, lengths)
        seed = self._check_seed(seed, tokens.shape[0])
        width = tokens.shape[1]
        bucket = decoding.bucket_length(width)
        padded = np.pad(tokens, [(0, 0), (bucket - width, 0), (0, 0)])  # (B, bucket, G), left padding
        run = self._generation_function(
            True, max_new_tokens, float(temperature), top_k, top_p, bool(stop_at_nul), bool(jit_compile), num_beams,
            float(length_penalty),
        )
        generated, counts = run(tf.constant(padded), tf.constant(lengths), seed)
        return generated[:, bucket - width:], counts

    def generate_uncached(
        self,
        prompt: tf.Tensor,
        max_new_tokens: int,
        temperature: float = 0.0,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: Sequence[int] | tf.Tensor = (0, 0),
        jit_compile: bool = True,
    ) -> tf.Tensor:
        """The reference of ``generate``: the whole sequence recomputed at every step, no cache.

        Same arguments as ``generate`` for a dense ``(B, S, G)`` prompt (no stop, no
        beams); with the same sampling settings and seed it returns the same tokens
        as ``generate``'s first output when the cache is correct.
        """
        max_new_tokens = shapes.check_int(max_new_tokens, "max_new_tokens", minimum=1)
        decoding.check_sampling(temperature, top_k, top_p)
        tokens = self._check_prompt(prompt)
        seed = self._check_seed(seed, tokens.shape[0])
        run = self._generation_function(False, max_new_tokens, float(temperature), top_k, top_p, False, bool(jit_compile))
        return run(tf.constant(tokens), seed)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            token_size=self.token_size,
            embed_dim=self.embed_dim,
            num_layers=self.num_layers,
            num_heads=self.num_heads,
            head_dim=self.head_dim,
            hidden_dim=self.hidden_dim,
            dropout_rate=self.dropout_rate,
            max_wavelength=self.max_wavelength,
        )
        return config


__all__ = ["BYTES", "ByteDecoder", "decode_tokens", "encode_tokens"]

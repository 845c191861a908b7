"""A small byte-level decoder-only language model built from mlable's layers.

Text is encoded as UTF-32-BE bytes and grouped into tokens of ``token_size``
bytes (``token_size / 4`` characters). Each position predicts every byte of the
NEXT token at once, with a 256-way softmax per byte.

Shape letters: ``B`` batch, ``L`` tokens, ``K`` bytes per token (``token_size``),
``E`` embedding per byte, ``D = K * E`` model width, ``N`` heads, ``H`` head
dimension, ``T`` cache slots, ``V = 256`` byte values.

The path of a batch (``call``):
    tokens ``(B, L, K)`` -> ``TokunEmbedding`` ``(B, L, D)`` -> per block:
    RMS norm, ``CachedMultiHeadAttention`` (causal, RoPE on its projected
    queries and keys, so scores depend on relative positions only) + residual, RMS norm,
    ``FeedForwardGate`` + residual -> RMS norm -> byte head ``(B, L, K * V)`` ->
    ``Divide`` ``(B, L, K, V)`` float32 logits.

Cache convention (``mlable_core.decoding``): ``step(tokens, cache, position)``
returns ``(logits, cache)``; the cache is a tuple with one ``(2, B, T, N, H)``
tensor per block, in the compute dtype, allocated by ``create_cache``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import keras
import tensorflow as tf

from mlable_core import attention, decoding, reshaping, shapes, text
from mlable_keras.layers.embedding import TokunEmbedding
from mlable_keras.layers.reshaping import Divide
from mlable_keras.layers.transformer import CachedMultiHeadAttention, FeedForwardGate

BYTES = 256


def encode_tokens(texts: Any, num_tokens: int, token_size: int) -> tf.Tensor:
    """Strings to ``(B, L, K)`` int32 byte tokens (UTF-32-BE, zero-padded or cut to ``L * K / 4`` characters).

    Args:
        texts: a string, a list of strings or a string tensor ``(B,)``.
        num_tokens: ``L``, the tokens per row.
        token_size: ``K``, the bytes per token, a multiple of 4.
    """
    num_tokens = shapes.check_int(num_tokens, "num_tokens", minimum=1)
    token_size = _check_token_size(token_size)
    data = text.encode(texts, size=num_tokens * token_size // 4)  # (B, 4S) uint8
    tokens = reshaping.divide(data, input_axis=-2, output_axis=-1, factor=token_size, insert=True)  # (B, L, K)
    return tf.cast(tokens, tf.int32)


def decode_tokens(tokens: tf.Tensor, errors: str = "replace") -> list[str]:
    """``(B, L, K)`` byte tokens back to Python strings, trailing NUL padding removed."""
    data = reshaping.merge(tf.convert_to_tensor(tokens), left_axis=-2, right_axis=-1)  # (B, L * K)
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
        token_size: ``K``, bytes per token (a multiple of 4: ``K / 4`` UTF-32 characters).
        embed_dim: ``E``, the embedding size of one byte; the model width is ``D = K * E``.
        num_layers: the number of attention + feed-forward blocks.
        num_heads: ``N``, attention heads.
        head_dim: ``H``, the size of one head (default ``D / N``).
        hidden_dim: the hidden size of the gated feed-forward (default ``2 * D``).
        dropout_rate: dropout in the attention and the feed-forward.
        max_wavelength: the RoPE base wavelength.
        **kwargs: ``keras.Model`` arguments (``name``, ``dtype``, ...).

    Call arguments:
        inputs: ``(B, L, K)`` integer bytes.
        training: whether dropout is active.

    Output shape:
        ``(B, L, K, 256)`` float32 logits of the bytes of the token after each position.

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
        self.embedding = TokunEmbedding(BYTES, self.embed_dim, name="embedding")
        self.attention_norms = [keras.layers.RMSNormalization(name=f"attention_norm_{index}") for index in range(self.num_layers)]
        self.attentions = [
            CachedMultiHeadAttention(
                self.num_heads, self.head_dim, dropout=self.dropout_rate, rotary={"max_wavelength": self.max_wavelength},
                name=f"attention_{index}",
            )
            for index in range(self.num_layers)
        ]
        self.feedforward_norms = [keras.layers.RMSNormalization(name=f"feedforward_norm_{index}") for index in range(self.num_layers)]
        self.feedforwards = [
            FeedForwardGate(width, self.hidden_dim, dropout_rate=self.dropout_rate, name=f"feedforward_{index}")
            for index in range(self.num_layers)
        ]
        self.final_norm = keras.layers.RMSNormalization(name="final_norm")
        self.head = keras.layers.Dense(self.token_size * BYTES, name="head")
        self.split = Divide(input_axis=3, output_axis=2, factor=self.token_size, insert=True, name="split")

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
    ) -> tuple[tf.Tensor, tuple[tf.Tensor, ...] | None]:
        """The model with an optional cache: ``(logits, cache)``.

        Args:
            inputs: ``(B, F, K)`` byte tokens at positions ``[step, step + F)``.
            cache: ``None`` (a plain causal pass from position 0) or the tuple of
                per-block caches from ``create_cache``.
            step: the position of ``inputs[:, 0]`` (required with a cache).
            training: whether dropout is active.
            positions: optional RoPE positions of the ``F`` tokens, ``(F,)`` or
                ``(B, F)`` (default ``step + i``, or ``i`` without a cache). The
                logits do not change when every position shifts by the same amount.

        Returns:
            ``(B, F, K, 256)`` float32 logits and the updated cache (``None`` without one).
        """
        if cache is not None and step is None:
            raise ValueError("`step` is required with a `cache`: the position of the first input token.")
        if cache is not None and len(cache) != self.num_layers:
            raise ValueError(f"`cache` must hold one tensor per block ({self.num_layers}). Received: {len(cache)} tensors")
        hidden = self.embedding(inputs)  # (B, F, D)
        updated = []
        for index in range(self.num_layers):
            normed = self.attention_norms[index](hidden)
            # RoPE turns the projected queries and keys inside the attention (at step + i), so that the
            # scores depend on relative positions only; rotating `normed` would let W_q / W_k mix the pairs
            if cache is None:
                mixed = self.attentions[index](normed, normed, training=training, use_causal_mask=True, positions=positions)
            else:
                mixed, layer_cache = self.attentions[index](
                    normed, normed, cache=cache[index], step=step, training=training, use_causal_mask=True,
                    positions=positions,
                )
                updated.append(layer_cache)
            hidden = hidden + mixed
            hidden = hidden + self.feedforwards[index](self.feedforward_norms[index](hidden), training=training)
        logits = self.split(self.head(self.final_norm(hidden)))  # (B, F, K, V)
        return tf.cast(logits, tf.float32), (None if cache is None else tuple(updated))

    def call(self, inputs: tf.Tensor, training: bool | None = None) -> tf.Tensor:
        return self.forward(inputs, training=training)[0]

    def compute_output_shape(self, input_shape: Sequence[int | None]) -> tuple[int | None, ...]:
        return tuple(input_shape) + (BYTES,)

    def step(self, inputs: tf.Tensor, cache: Sequence[tf.Tensor], position: tf.Tensor) -> tuple[tf.Tensor, tuple[tf.Tensor, ...]]:
        """The ``mlable_core.decoding`` step function: ``(logits, cache)`` for tokens at ``position``."""
        return self.forward(inputs, cache=cache, step=position, training=False)

    def create_cache(self, batch_size: int, length: int) -> tuple[tf.Tensor, ...]:
        """Empty caches, one ``(2, B, T, N, H)`` tensor per block, in the compute dtype, for ``length`` positions."""
        return tuple(
            attention.create_cache(batch_size, length, self.num_heads, self.head_dim, dtype=self.compute_dtype)
            for _ in range(self.num_layers)
        )

    def _generation_function(
        self, cached: bool, max_new_tokens: int, temperature: float, top_k: int | None, top_p: float | None,
        stop_at_nul: bool, jit_compile: bool,
    ) -> Callable[[tf.Tensor, tf.Tensor], Any]:
        # one tf.function per generation setting, built once and kept; it traces once per distinct prompt shape (B, P)
        key = (cached, max_new_tokens, temperature, top_k, top_p, stop_at_nul, jit_compile)
        functions = self.__dict__.setdefault("_generation_functions", {})
        if key not in functions:
            sampler = decoding.make_sampler(temperature, top_k, top_p)
            stop = decoding.stop_at(0, group=4) if stop_at_nul else None

            def run(prompt: tf.Tensor, seed: tf.Tensor) -> Any:
                if not cached:
                    model_fn = lambda tokens: self.forward(tokens, training=False)[0]  # noqa: E731
                    return decoding.generate_uncached(model_fn, prompt, max_new_tokens, sampler=sampler, seed=seed)
                cache = self.create_cache(prompt.shape[0], prompt.shape[1] + max_new_tokens)
                return decoding.generate(self.step, prompt, cache, max_new_tokens, sampler=sampler, seed=seed, stop=stop)

            functions[key] = tf.function(run, jit_compile=jit_compile)
        return functions[key]

    def _check_prompt(self, prompt: Any) -> tf.Tensor:
        prompt = tf.convert_to_tensor(prompt, tf.int32)
        if prompt.shape.rank != 3 or prompt.shape[-1] != self.token_size:
            raise ValueError(
                f"`prompt` must be byte tokens of shape (B, P, token_size={self.token_size}). "
                f"Received: prompt with shape {shapes.format_shape(prompt.shape)}"
            )
        return prompt

    def generate(
        self,
        prompt: tf.Tensor,
        max_new_tokens: int,
        temperature: float = 0.0,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: Sequence[int] | tf.Tensor = (0, 0),
        stop_at_nul: bool = False,
        jit_compile: bool = True,
    ) -> tuple[tf.Tensor, tf.Tensor]:
        """Generates tokens after ``prompt`` with the KV cache, in one compiled loop.

        Args:
            prompt: ``(B, P, K)`` byte tokens.
            max_new_tokens: how many tokens to add.
            temperature: 0 for greedy decoding, else the sampling temperature.
            top_k: keep the ``k`` best bytes when sampling.
            top_p: keep the smallest set of bytes whose probability reaches ``p`` when sampling.
            seed: two ints, the stateless sampling seed.
            stop_at_nul: stop a row at its first NUL character (its later tokens are zeros).
            jit_compile: compile the loop with XLA.

        Returns:
            ``(tokens, lengths)`` as ``mlable_core.decoding.generate``.
        """
        max_new_tokens = shapes.check_int(max_new_tokens, "max_new_tokens", minimum=1)
        run = self._generation_function(True, max_new_tokens, temperature, top_k, top_p, stop_at_nul, jit_compile)
        return run(self._check_prompt(prompt), tf.constant(seed, tf.int32))

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

        Same arguments as ``generate`` (no stop); with the same sampling settings and seed it returns the
        same tokens as ``generate``'s first output when the cache is correct.
        """
        max_new_tokens = shapes.check_int(max_new_tokens, "max_new_tokens", minimum=1)
        run = self._generation_function(False, max_new_tokens, temperature, top_k, top_p, False, jit_compile)
        return run(self._check_prompt(prompt), tf.constant(seed, tf.int32))

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

"""A small two-level byte language model with dynamic patches (in the manner of BLT, SpaceByte and MegaByte).

Shape letters: ``B`` rows, ``S`` bytes per row, ``P`` patches per row (the
static ``max_patches``), ``E`` local width (bytes), ``D`` global width
(patches), ``C = 256`` byte values.

The path of a batch (``call``), every step causal:
    bytes ``(B, S)`` -> ``PatchBoundaries`` (space rule or fixed stride): patch ids
    ``(B, S)`` -> ``HashNgramEmbedding`` ``(B, S, E)`` -> local encoder (causal
    attention over the bytes + feed-forward) -> ``PatchPooling`` (mean) ``(B, P, E)``
    -> dense ``(B, P, D)`` -> global transformer (causal over the patches) ->
    dense ``(B, P, E)`` -> ``PatchUnpooling(shift=1)``: each byte reads the global
    output of the patch BEFORE its own ``(B, S, E)``, added to the encoder's
    output -> local decoder (causal attention over the bytes) -> head
    ``(B, S, C)`` float32 logits; the logits at byte ``t`` predict byte ``t + 1``.

Why it cannot see the future: whether a byte starts a patch depends on bytes
``0 .. t`` only, so the patch ``p`` of byte ``t`` is fixed by them; the global
output of patch ``p - 1`` depends on the patches ``0 .. p - 1``, whose bytes all
come before the first byte of patch ``p``, hence before ``t``; the hashes and
both local stacks are causal. The tests check that changing the bytes after
``t`` leaves the logits at ``t`` unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras
import tensorflow as tf

from mlable_core import hashing, patching, shapes
from mlable_keras.layers.patching import HashNgramEmbedding, PatchBoundaries, PatchPooling, PatchUnpooling
from mlable_keras.layers.transformer import CachedMultiHeadAttention, FeedForwardGate

BYTES = 256
PATCHING = ("space", "stride")


class _Stack:
    """Pre-norm causal transformer blocks (attention with RoPE, gated feed-forward), as lists Keras tracks."""

    def __init__(
        self, owner: keras.Model, prefix: str, count: int, width: int, heads: int, hidden: int, dropout: float, wavelength: float
    ) -> None:
        dtype = owner.dtype_policy  # the model's policy (e.g. mixed_bfloat16) reaches every sublayer
        if width % heads:
            raise ValueError(f"`num_heads`={heads} must divide the width {width} of the {prefix} blocks")
        head_dim = width // heads
        self.norms = [keras.layers.RMSNormalization(name=f"{prefix}_attention_norm_{index}", dtype=dtype) for index in range(count)]
        self.attentions = [
            CachedMultiHeadAttention(
                heads, head_dim, dropout=dropout, rotary={"max_wavelength": wavelength}, name=f"{prefix}_attention_{index}", dtype=dtype
            )
            for index in range(count)
        ]
        self.feedforward_norms = [
            keras.layers.RMSNormalization(name=f"{prefix}_feedforward_norm_{index}", dtype=dtype) for index in range(count)
        ]
        self.feedforwards = [
            FeedForwardGate(width, hidden, dropout_rate=dropout, name=f"{prefix}_feedforward_{index}", dtype=dtype) for index in range(count)
        ]
        # attributes of the model, so that Keras tracks, builds and saves them
        for name in ("norms", "attentions", "feedforward_norms", "feedforwards"):
            setattr(owner, f"{prefix}_{name}", getattr(self, name))

    def build(self, shape: tuple[int | None, ...]) -> None:
        for norm, layer, feedforward_norm, feedforward in zip(self.norms, self.attentions, self.feedforward_norms, self.feedforwards):
            norm.build(shape)
            layer.build(shape, shape, shape)
            feedforward_norm.build(shape)
            feedforward.build(shape)

    def __call__(self, hidden: tf.Tensor, training: bool | None) -> tf.Tensor:
        for norm, layer, feedforward_norm, feedforward in zip(self.norms, self.attentions, self.feedforward_norms, self.feedforwards):
            normed = norm(hidden)
            hidden = hidden + layer(normed, normed, training=training, use_causal_mask=True)
            hidden = hidden + feedforward(feedforward_norm(hidden), training=training)
        return hidden


@keras.saving.register_keras_serializable(package="mlable")
class PatchDecoder(keras.Model):
    """A causal byte language model in two levels: bytes grouped into dynamic patches for a global transformer.

    Args:
        max_patches: ``P``, the patches per row (overflowing bytes join the last
            patch; the model never raises on overflow, see ``mlable_core.patching``).
        max_patch_length: the most bytes in one patch (the stride with ``patching="stride"``).
        patching: ``"space"`` (a patch starts after a space-like byte, SpaceByte) or ``"stride"``.
        space_bytes: the space-like bytes of ``"space"``; default ASCII whitespace
            (``mlable_core.patching.WHITESPACE``), which suits UTF-8 and UTF-32 alike.
        embed_dim: ``E``, the local width.
        global_dim: ``D``, the global width.
        num_buckets: hash buckets per n-gram size.
        ngram_sizes: the hashed n-gram sizes.
        encoder_layers, global_layers, decoder_layers: blocks in each stack.
        num_heads: attention heads of the local blocks; ``global_heads`` of the global ones.
        dropout_rate: dropout in the attention and the feed-forward layers.
        max_wavelength: the RoPE base wavelength (bytes locally, patches globally).
        **kwargs: ``keras.Model`` arguments; ``dtype`` (e.g. ``"mixed_bfloat16"``) applies to every sublayer.

    Call arguments:
        inputs: ``(B, S)`` integer bytes in ``[0, 255]``.
        training: whether dropout is active.

    Output shape:
        ``(B, S, 256)`` float32 logits; position ``t`` predicts byte ``t + 1``.

    Example:
        >>> model = PatchDecoder(max_patches=8, max_patch_length=8, embed_dim=16, global_dim=32, num_buckets=64)
        >>> model(tf.constant([list(b"hello world, hello")])).shape
        TensorShape([1, 18, 256])
    """

    def __init__(
        self,
        max_patches: int = 64,
        max_patch_length: int = 32,
        patching: str = "space",
        space_bytes: Sequence[int] | None = None,
        embed_dim: int = 64,
        global_dim: int = 256,
        num_buckets: int = 4096,
        ngram_sizes: Sequence[int] = hashing.NGRAM_SIZES,
        encoder_layers: int = 1,
        global_layers: int = 2,
        decoder_layers: int = 1,
        num_heads: int = 4,
        global_heads: int = 4,
        dropout_rate: float = 0.0,
        max_wavelength: float = 10_000.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.patching = patching_mode = _check_patching(patching)
        self.max_patches = shapes.check_int(max_patches, "max_patches", minimum=1)
        self.max_patch_length = shapes.check_int(max_patch_length, "max_patch_length", minimum=1)
        if space_bytes is not None and patching_mode != "space":
            raise ValueError(f"`space_bytes` is for patching='space' only. Received: space_bytes={space_bytes!r}, patching={patching!r}")
        self.space_bytes = None if patching_mode != "space" else list(_space_bytes(space_bytes))
        self.embed_dim = shapes.check_int(embed_dim, "embed_dim", minimum=1)
        self.global_dim = shapes.check_int(global_dim, "global_dim", minimum=1)
        self.num_buckets = shapes.check_int(num_buckets, "num_buckets", minimum=1)
        self.ngram_sizes = list(hashing.check_ngram_sizes(ngram_sizes))
        self.encoder_layers = shapes.check_int(encoder_layers, "encoder_layers", minimum=0)
        self.global_layers = shapes.check_int(global_layers, "global_layers", minimum=1)
        self.decoder_layers = shapes.check_int(decoder_layers, "decoder_layers", minimum=0)
        self.num_heads = shapes.check_int(num_heads, "num_heads", minimum=1)
        self.global_heads = shapes.check_int(global_heads, "global_heads", minimum=1)
        if not 0.0 <= float(dropout_rate) < 1.0:
            raise ValueError(f"`dropout_rate` must be in [0, 1). Received: dropout_rate={dropout_rate}")
        self.dropout_rate = float(dropout_rate)
        self.max_wavelength = float(max_wavelength)

        dtype = self.dtype_policy  # every sublayer follows the model's policy
        self.boundaries = PatchBoundaries(
            patching_mode, self.max_patches, self.max_patch_length, space_bytes=self.space_bytes, allow_overflow=True, name="boundaries"
        )
        self.embedding = HashNgramEmbedding(self.embed_dim, self.num_buckets, self.ngram_sizes, name="embedding", dtype=dtype)
        local = dict(heads=self.num_heads, hidden=2 * self.embed_dim, dropout=self.dropout_rate, wavelength=self.max_wavelength)
        self.encoder = _Stack(self, "encoder", self.encoder_layers, self.embed_dim, **local)
        self.pooling = PatchPooling(self.max_patches, "mean", name="pooling", dtype=dtype)
        self.up = keras.layers.Dense(self.global_dim, name="up", dtype=dtype)
        self.globe = _Stack(
            self, "global", self.global_layers, self.global_dim, self.global_heads, 2 * self.global_dim, self.dropout_rate, self.max_wavelength
        )
        self.global_norm = keras.layers.RMSNormalization(name="global_norm", dtype=dtype)
        self.down = keras.layers.Dense(self.embed_dim, name="down", dtype=dtype)
        self.unpooling = PatchUnpooling(shift=1, name="unpooling", dtype=dtype)
        self.decoder = _Stack(self, "decoder", self.decoder_layers, self.embed_dim, **local)
        self.final_norm = keras.layers.RMSNormalization(name="final_norm", dtype=dtype)
        self.head = keras.layers.Dense(BYTES, name="head", dtype=dtype)

    def build(self, input_shape: Sequence[int | None]) -> None:
        batch, length = tuple(input_shape)
        local = (batch, length, self.embed_dim)
        patches = (batch, self.max_patches, self.global_dim)
        self.embedding.build((batch, length))
        self.encoder.build(local)
        self.up.build((batch, self.max_patches, self.embed_dim))
        self.globe.build(patches)
        self.global_norm.build(patches)
        self.down.build(patches)
        self.decoder.build(local)
        self.final_norm.build(local)
        self.head.build(local)
        self.built = True

    def call(self, inputs: tf.Tensor, training: bool | None = None) -> tf.Tensor:
        ids, _, _ = self.boundaries(inputs)  # (B, S)
        hidden = self.encoder(self.embedding(inputs), training)  # (B, S, E)
        patches = self.up(self.pooling(hidden, ids))  # (B, P, D)
        patches = self.down(self.global_norm(self.globe(patches, training)))  # (B, P, E)
        # each byte reads the patch before its own: the last one that holds no byte after it
        hidden = hidden + self.unpooling(patches, ids)  # (B, S, E)
        logits = self.head(self.final_norm(self.decoder(hidden, training)))  # (B, S, C)
        return tf.cast(logits, tf.float32)

    def patches(self, inputs: tf.Tensor) -> patching.Patches:
        """The patches the model uses for ``inputs``: ``Patches(ids (B, S), lengths (B, P), counts (B,))``."""
        return patching.Patches(*self.boundaries(inputs))

    def compute_output_shape(self, input_shape: Sequence[int | None]) -> tuple[int | None, ...]:
        return tuple(input_shape) + (BYTES,)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            max_patches=self.max_patches,
            max_patch_length=self.max_patch_length,
            patching=self.patching,
            space_bytes=self.space_bytes,
            embed_dim=self.embed_dim,
            global_dim=self.global_dim,
            num_buckets=self.num_buckets,
            ngram_sizes=list(self.ngram_sizes),
            encoder_layers=self.encoder_layers,
            global_layers=self.global_layers,
            decoder_layers=self.decoder_layers,
            num_heads=self.num_heads,
            global_heads=self.global_heads,
            dropout_rate=self.dropout_rate,
            max_wavelength=self.max_wavelength,
        )
        return config


def _check_patching(patching_mode: object) -> str:
    if patching_mode not in PATCHING:
        raise ValueError(f"`patching` must be one of {list(PATCHING)}. Received: patching={patching_mode!r}")
    return str(patching_mode)


def _space_bytes(space_bytes: Sequence[int] | None) -> tuple[int, ...]:
    return patching.WHITESPACE if space_bytes is None else patching.check_space_bytes(space_bytes)


__all__ = ["PatchDecoder"]

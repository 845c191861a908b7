"""Dynamic patching layers: patch boundaries, pooling between bytes and patches, masks, hash n-gram embeddings.

Shape letters: ``B`` rows, ``S`` bytes per row, ``P`` patches per row (the
static ``max_patches``), ``E`` features.

Each layer holds its config and calls ``mlable_core.patching`` or
``mlable_core.hashing``; the conventions (a boundary starts a patch at the
byte, ``-1`` ids for padding, overflow into the last patch under XLA) are
those of ``mlable_core.patching``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras
import tensorflow as tf

from mlable_core import hashing, patching, shapes

CRITERIA = ("entropy", "monotonic", "space", "stride")
QUERIES = ("patches", "bytes")


def _int_spec(shape: tuple[int | None, ...], dtype: str = "int32") -> keras.KerasTensor:
    return keras.KerasTensor(shape, dtype=dtype)


@keras.saving.register_keras_serializable(package="mlable")
class PatchBoundaries(keras.layers.Layer):
    """Finds the patches of each row: ``(B, S)`` entropies or bytes to patch ids, lengths and counts.

    Criteria (see ``mlable_core.patching``; byte ``t`` STARTS a patch when):

    - ``"entropy"``: ``H[t] > threshold`` (BLT's global threshold); inputs are the
      ``(B, S)`` entropies, ``H[t]`` that of the prediction of byte ``t``;
    - ``"monotonic"``: ``H[t] - H[t - 1] > threshold`` (BLT's relative criterion);
    - ``"space"``: byte ``t - 1`` is space-like and byte ``t`` is not (SpaceByte);
      inputs are ``(B, S)`` bytes; ``space_bytes`` lists the space-like values
      (default ``mlable_core.patching.SPACELIKE``);
    - ``"stride"``: every ``max_patch_length`` bytes (MegaByte); any ``(B, S)`` input.

    The first byte starts patch 0, runs are cut every ``max_patch_length`` bytes,
    and a Keras mask on the inputs (or ``mask``) marks padding, whose bytes get
    the id ``-1``. A row that needs more than ``max_patches`` patches raises
    (``ValueError`` eagerly, ``InvalidArgumentError`` in graphs) unless
    ``allow_overflow``; under XLA (e.g. ``jit_compile=True`` training) its extra
    bytes join the last patch and ``counts > max_patches`` tells.

    The layer has no weights and does not autocast its inputs (entropies are
    compared in float32 under mixed precision).

    Args:
        criterion: ``"entropy"``, ``"monotonic"``, ``"space"`` or ``"stride"``.
        max_patches: ``P``, the static number of patches per row.
        max_patch_length: the most bytes per patch, an int >= 1 (the stride for
            ``"stride"``), or ``None`` for no limit (not with ``"stride"``).
        threshold: a finite number, required by the entropy criteria only.
        space_bytes: the space-like byte values (``"space"`` only), or ``None``.
        allow_overflow: never raise on overflow (the XLA behaviour everywhere).
        **kwargs: base ``keras.layers.Layer`` arguments.

    Call arguments:
        inputs: ``(B, S)`` float entropies or integer bytes.
        mask: optional ``(B, S)`` booleans, True for real bytes (filled in by Keras
            from the inputs' mask).

    Output shape:
        ``(ids (B, S), lengths (B, P), counts (B,))``, int32.

    Example:
        >>> layer = PatchBoundaries("space", max_patches=4, max_patch_length=8)
        >>> ids, lengths, counts = layer(tf.constant([list(b"to be or")]))
        >>> ids.numpy().tolist(), lengths.numpy().tolist(), counts.numpy().tolist()
        ([[0, 0, 0, 1, 1, 1, 2, 2]], [[3, 3, 2, 0]], [3])
    """

    def __init__(
        self,
        criterion: str,
        max_patches: int,
        max_patch_length: int | None,
        threshold: float | None = None,
        space_bytes: Sequence[int] | None = None,
        allow_overflow: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.criterion = patching.check_mode(criterion, CRITERIA, "criterion")
        self.max_patches = patching.check_max_patches(max_patches)
        self.max_patch_length = patching.check_max_patch_length(max_patch_length)
        if self.criterion == "stride" and self.max_patch_length is None:
            raise ValueError("`max_patch_length` is the stride of criterion='stride': an int >= 1. Received: max_patch_length=None")
        if self.criterion in ("entropy", "monotonic"):
            if threshold is None:
                raise ValueError(f"criterion={self.criterion!r} needs a finite `threshold`. Received: threshold=None")
            self.threshold = patching.check_threshold(threshold)
        elif threshold is not None:
            raise ValueError(f"`threshold` is for the entropy criteria only. Received: threshold={threshold!r} with criterion={self.criterion!r}")
        else:
            self.threshold = None
        if space_bytes is not None and self.criterion != "space":
            raise ValueError(f"`space_bytes` is for criterion='space' only. Received: space_bytes={space_bytes!r} with criterion={self.criterion!r}")
        self.space_bytes = None if space_bytes is None else list(patching.check_space_bytes(space_bytes))
        self.allow_overflow = bool(allow_overflow)
        self.autocast = False  # entropies near the threshold must not be rounded to float16
        self.built = True

    def call(self, inputs: Any, mask: Any = None) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        options = dict(max_patches=self.max_patches, mask=mask, allow_overflow=self.allow_overflow)
        if self.criterion == "entropy":
            result = patching.entropy_patches(inputs, self.threshold, max_patch_length=self.max_patch_length, **options)
        elif self.criterion == "monotonic":
            result = patching.monotonic_patches(inputs, self.threshold, max_patch_length=self.max_patch_length, **options)
        elif self.criterion == "space":
            result = patching.space_patches(inputs, max_patch_length=self.max_patch_length, space_bytes=self.space_bytes, **options)
        else:
            result = patching.stride_patches(inputs, self.max_patch_length, **options)
        return tuple(result)

    def compute_output_shape(self, input_shape: Any) -> tuple[tuple[int | None, ...], ...]:
        batch, length = shapes.check_rank(input_shape, 2, "inputs", "(B, S)")
        return (batch, length), (batch, self.max_patches), (batch,)

    def compute_output_spec(self, inputs: Any, mask: Any = None) -> tuple[keras.KerasTensor, ...]:
        return tuple(_int_spec(shape) for shape in self.compute_output_shape(inputs.shape))

    def compute_mask(self, inputs: Any, mask: Any = None) -> None:
        return None  # padding is in the ids (-1)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            criterion=self.criterion,
            max_patches=self.max_patches,
            max_patch_length=self.max_patch_length,
            threshold=self.threshold,
            space_bytes=self.space_bytes,
            allow_overflow=self.allow_overflow,
        )
        return config


@keras.saving.register_keras_serializable(package="mlable")
class PatchPooling(keras.layers.Layer):
    """Pools byte vectors into patch vectors by patch id: ``(B, S, E)`` and ``(B, S)`` ids to ``(B, P, E)``.

    ``mean`` / ``sum`` / ``max`` over the bytes of each patch, or the vector of
    its ``first`` / ``last`` byte; empty patches give zeros, negative ids (padding)
    add to no patch. See ``mlable_core.patching.pool``.

    Args:
        max_patches: ``P``.
        mode: ``"mean"``, ``"sum"``, ``"max"``, ``"first"`` or ``"last"``.
        **kwargs: base ``keras.layers.Layer`` arguments.

    Call arguments:
        inputs: ``(B, S, E)`` floats.
        ids: ``(B, S)`` integer patch ids (``PatchBoundaries``' first output).

    Output shape:
        ``(B, P, E)``.

    Example:
        >>> layer = PatchPooling(max_patches=3, mode="max")
        >>> layer(tf.constant([[[1.0], [3.0], [5.0]]]), tf.constant([[0, 0, 1]]))[..., 0].numpy().tolist()
        [[3.0, 5.0, 0.0]]
    """

    def __init__(self, max_patches: int, mode: str = "mean", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.max_patches = patching.check_max_patches(max_patches)
        self.mode = patching.check_mode(mode, patching.POOLING_MODES)
        self.built = True

    def call(self, inputs: Any, ids: Any) -> tf.Tensor:
        return patching.pool(inputs, ids, self.max_patches, self.mode)

    def compute_output_shape(self, inputs_shape: Any, ids_shape: Any = None) -> tuple[int | None, ...]:
        batch, _, features = shapes.check_rank(inputs_shape, 3, "inputs", "(B, S, E)")
        return batch, self.max_patches, features

    def compute_mask(self, inputs: Any, mask: Any = None) -> None:
        return None  # a byte mask does not apply to patches

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(max_patches=self.max_patches, mode=self.mode)
        return config


@keras.saving.register_keras_serializable(package="mlable")
class PatchUnpooling(keras.layers.Layer):
    """Broadcasts patch vectors back to their bytes: ``(B, P, E)`` and ``(B, S)`` ids to ``(B, S, E)``.

    ``out[b, t] = inputs[b, ids[b, t] - shift]``, zeros where that index is
    negative or ``>= P``. ``shift=1`` gives each byte the patch before its own,
    which a causal model may read (see ``mlable_core.patching.unpool``).

    Args:
        shift: an int >= 0.
        **kwargs: base ``keras.layers.Layer`` arguments.

    Call arguments:
        inputs: ``(B, P, E)`` floats.
        ids: ``(B, S)`` integer patch ids.

    Output shape:
        ``(B, S, E)``.

    Example:
        >>> PatchUnpooling()(tf.constant([[[1.0], [2.0]]]), tf.constant([[0, 1, 1]]))[..., 0].numpy().tolist()
        [[1.0, 2.0, 2.0]]
    """

    def __init__(self, shift: int = 0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.shift = shapes.check_int(shift, "shift", minimum=0)
        self.built = True

    def call(self, inputs: Any, ids: Any) -> tf.Tensor:
        return patching.unpool(inputs, ids, self.shift)

    def compute_output_shape(self, inputs_shape: Any, ids_shape: Any) -> tuple[int | None, ...]:
        batch, _, features = shapes.check_rank(inputs_shape, 3, "inputs", "(B, P, E)")
        ids_batch, length = shapes.check_rank(ids_shape, 2, "ids", "(B, S)")
        return batch if batch is not None else ids_batch, length, features

    def compute_mask(self, inputs: Any, mask: Any = None) -> None:
        return None

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(shift=self.shift)
        return config


@keras.saving.register_keras_serializable(package="mlable")
class PatchAttentionMask(keras.layers.Layer):
    """The cross-attention mask between bytes and patches, from the patch ids ``(B, S)``.

    - ``queries="patches"``: ``(B, P, S)``, each patch sees its own bytes;
    - ``queries="bytes"``, ``mode="previous"``: ``(B, S, P)``, each byte sees the
      patches before its own (causal); ``mode="own"``: its own patch.

    The result is the ``attention_mask`` ``(B, T, S)`` of ``CachedMultiHeadAttention``
    (``T`` query positions, ``S`` key positions) with ``use_causal_mask=False``.

    Args:
        max_patches: ``P``.
        queries: ``"patches"`` or ``"bytes"``, which side asks.
        mode: ``"previous"`` or ``"own"``, for ``queries="bytes"`` only.
        **kwargs: base ``keras.layers.Layer`` arguments.

    Call arguments:
        ids: ``(B, S)`` integer patch ids.

    Output shape:
        ``(B, P, S)`` or ``(B, S, P)`` booleans.

    Example:
        >>> PatchAttentionMask(2, queries="patches")(tf.constant([[0, 0, 1]])).shape
        TensorShape([1, 2, 3])
    """

    def __init__(self, max_patches: int, queries: str = "bytes", mode: str = "previous", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.max_patches = patching.check_max_patches(max_patches)
        self.queries = patching.check_mode(queries, QUERIES, "queries")
        self.mode = patching.check_mode(mode, patching.MASK_MODES)
        self.built = True

    def call(self, ids: Any) -> tf.Tensor:
        if self.queries == "patches":
            return patching.patch_to_byte_mask(ids, self.max_patches)
        return patching.byte_to_patch_mask(ids, self.max_patches, self.mode)

    def compute_output_shape(self, input_shape: Any) -> tuple[int | None, ...]:
        batch, length = shapes.check_rank(input_shape, 2, "ids", "(B, S)")
        if self.queries == "patches":
            return batch, self.max_patches, length
        return batch, length, self.max_patches

    def compute_output_spec(self, ids: Any) -> keras.KerasTensor:
        return _int_spec(self.compute_output_shape(ids.shape), "bool")

    def compute_mask(self, inputs: Any, mask: Any = None) -> None:
        return None

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(max_patches=self.max_patches, queries=self.queries, mode=self.mode)
        return config


@keras.saving.register_keras_serializable(package="mlable")
class HashNgramEmbedding(keras.layers.Layer):
    """Byte embeddings plus hash n-gram embeddings (BLT): ``(..., S)`` bytes to ``(..., S, E)``.

    ``out[t] = byte_table[x[t]] + sum_n ngram_table_n[hash_n(t) mod num_buckets]``, where
    ``hash_n(t)`` is the polynomial hash of the n-gram ending at byte ``t`` (see
    ``mlable_core.hashing``: exact int64 arithmetic, the same on every backend and
    under XLA; n-grams reaching before the first byte use a "before the start"
    symbol). The 256 byte rows and the ``len(ngram_sizes) * num_buckets``
    n-gram rows live in one table, ``embeddings`` of shape ``(V, E)`` with
    ``V = 256 + len(ngram_sizes) * num_buckets``.

    Args:
        output_dim: ``E``.
        num_buckets: the buckets per n-gram size.
        ngram_sizes: the sizes ``n`` (default 3 to 8, as in BLT).
        base: the polynomial base of the hash.
        modulus: the hash modulus, < ``2 ** 31``.
        embeddings_initializer: a Keras initializer for the table.
        **kwargs: base ``keras.layers.Layer`` arguments.

    Call arguments:
        inputs: integer bytes in ``[0, 255]``, shape ``(..., S)``.

    Output shape:
        ``(..., S, E)``.

    Example:
        >>> layer = HashNgramEmbedding(output_dim=16, num_buckets=1024)
        >>> layer(tf.constant([list(b"hello world")])).shape
        TensorShape([1, 11, 16])
    """

    def __init__(
        self,
        output_dim: int,
        num_buckets: int,
        ngram_sizes: Sequence[int] = hashing.NGRAM_SIZES,
        base: int = hashing.BASE,
        modulus: int = hashing.MODULUS,
        embeddings_initializer: Any = "uniform",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.output_dim = shapes.check_int(output_dim, "output_dim", minimum=1)
        self.num_buckets, self.base, self.modulus = hashing.check_hash_arguments(num_buckets, base, modulus)
        self.ngram_sizes = list(hashing.check_ngram_sizes(ngram_sizes))
        self.embeddings_initializer = keras.initializers.get(embeddings_initializer)
        self.input_dim = patching.BYTE_VALUES + len(self.ngram_sizes) * self.num_buckets

    def build(self, input_shape: Any = None) -> None:
        self.embeddings = self.add_weight(
            shape=(self.input_dim, self.output_dim), initializer=self.embeddings_initializer, name="embeddings",
        )
        self.built = True

    def call(self, inputs: Any) -> tf.Tensor:
        values, checks = patching.check_bytes(inputs, "inputs")
        with tf.control_dependencies(checks):
            ngrams = hashing.ngram_ids(
                values, self.num_buckets, self.ngram_sizes, self.base, self.modulus, offset=patching.BYTE_VALUES
            )  # (..., S, len(ngram_sizes))
        table = tf.cast(self.embeddings, self.compute_dtype)
        # one gather per size, summed: gathering all the rows at once then reducing is 2x (graph) to 10x (XLA) slower
        lookups = [tf.gather(table, values)] + [tf.gather(table, ngrams[..., index]) for index in range(len(self.ngram_sizes))]
        return tf.add_n(lookups)  # (..., S, E)

    def compute_output_shape(self, input_shape: Any) -> tuple[int | None, ...]:
        shape = shapes.normalize_shape(input_shape)
        if not shape:
            raise ValueError("`inputs` must have rank >= 1, bytes on the last axis (..., S). Received: inputs with shape ()")
        return shape + (self.output_dim,)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            output_dim=self.output_dim,
            num_buckets=self.num_buckets,
            ngram_sizes=list(self.ngram_sizes),
            base=self.base,
            modulus=self.modulus,
            embeddings_initializer=keras.initializers.serialize(self.embeddings_initializer),
        )
        return config


__all__ = ["CRITERIA", "HashNgramEmbedding", "PatchAttentionMask", "PatchBoundaries", "PatchPooling", "PatchUnpooling"]

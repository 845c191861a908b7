"""Embedding layers: TokunEmbedding (byte embeddings combined per token) and RotaryPositionalEmbedding.

Shape letters (the glossary of ``mlable_core``): ``B`` batch, ``S`` sequence
length in bytes, ``G`` bytes per token, ``V`` vocabulary, ``E`` embedding size
of one byte (TokunEmbedding), ``D`` the features RoPE rotates (``H`` per head),
``R`` the rotated features, ``N`` heads. Axes count the batch axis (axis 0).

Both layers delegate to ``mlable_core.embedding.combine`` and
``mlable_core.rotary.rotate``.
"""

from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf

from mlable_core import embedding, reshaping, rotary, shapes


@keras.saving.register_keras_serializable(package="mlable")
class TokunEmbedding(keras.layers.Embedding):
    """Embeds the ``G`` bytes of each token and concatenates their embeddings.

    A ``keras.layers.Embedding`` (same arguments, same ``(input_dim, output_dim)``
    table, same initializers, regularizers, constraints and LoRA, and the same
    ``int8`` / ``int4`` quantization through ``dtype="int8_from_float32"`` or
    ``Model.quantize``) whose output merges the last two axes: indices of shape ``(..., S / G, G)``
    give ``(..., S / G, G * E)`` with
    ``out[..., s, g * E:(g + 1) * E] = embeddings[inputs[..., s, g]]``. It equals
    ``keras.layers.Embedding`` followed by a reshape, in one gather.

    An index outside ``[0, input_dim)`` raises ``tf.errors.InvalidArgumentError``
    (a ``tf.debugging`` assertion, eagerly and in graphs, on CPU and GPU).
    TensorFlow's gather alone does not check on GPU (it returns zeros), and XLA
    (``jit_compile=True``) drops the assertion: there, an out-of-range index
    reads a clamped row (XLA's gather clamps its indices).

    With ``mask_zero=True`` the mask has one value per token, shape
    ``(..., S / G)``: a token is masked when all its ``G`` indices are 0.

    Args:
        input_dim: the vocabulary size ``V`` (256 for bytes).
        output_dim: ``E``, the embedding size of one byte.
        **kwargs: every other argument of ``keras.layers.Embedding``
            (``embeddings_initializer``, ``embeddings_regularizer``,
            ``embeddings_constraint``, ``mask_zero``, ``weights``, ``lora_rank``,
            ``lora_alpha``, ...) and of ``keras.layers.Layer``.

    Call arguments:
        inputs: integer indices of shape ``(..., S / G, G)``, rank >= 2.

    Input shape:
        ``(..., S / G, G)``.

    Output shape:
        ``(..., S / G, G * E)``.

    Example:
        >>> layer = TokunEmbedding(input_dim=256, output_dim=128)
        >>> layer(tf.zeros((2, 64, 16), dtype=tf.int32)).shape
        TensorShape([2, 64, 2048])
    """

    def __init__(self, input_dim: int, output_dim: int, **kwargs: Any) -> None:
        # checked here, with Keras' wording: Keras before 3.11 accepts non-positive sizes silently
        for name, value in (("input_dim", input_dim), ("output_dim", output_dim)):
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"`{name}` must be a positive integer. Received: {name}={value!r}")
        super().__init__(input_dim, output_dim, **kwargs)

    def quantize(self, mode: Any = None, type_check: bool = True, **kwargs: Any) -> None:
        """``keras.layers.Embedding.quantize`` (int8, and int4 where Keras has it), which Keras limits to its own class.

        The quantized table is the ``Embedding`` one, so the parent's method
        applies unchanged: ``Model.quantize`` then reaches this layer too.
        """
        del type_check  # this subclass changes only the reshape after the lookup
        super().quantize(mode, type_check=False, **kwargs)

    def quantized_call(self, inputs: Any, *args: Any, **kwargs: Any) -> tf.Tensor:
        """The call under an ``int8`` / ``int4`` policy or after ``quantize``: Keras' dequantized lookup, then the combine.

        Keras routes a quantized layer's call here instead of ``call``. Its
        lookup gives ``(..., S / G, G, E)``; the index check and the merge to
        ``(..., S / G, G * E)`` follow, as in ``call``.
        """
        if inputs.dtype not in ("int32", "int64"):
            inputs = tf.cast(inputs, "int32")
        vocabulary = self.input_dim
        check = embedding.check_indices(inputs, vocabulary)
        with tf.control_dependencies([check]):
            looked_up = super().quantized_call(inputs, *args, **kwargs)  # (..., S / G, G, E)
        dims = reshaping.dynamic_dims(looked_up)
        return tf.reshape(looked_up, dims[:-2] + [dims[-2] * dims[-1]])  # (..., S / G, G * E)

    def call(self, inputs: Any) -> tf.Tensor:
        if inputs.dtype not in ("int32", "int64"):
            inputs = tf.cast(inputs, "int32")
        # casting the (V, E) table rather than the (..., G * E) output: same values, far fewer bytes
        table = tf.cast(self.embeddings, self.compute_dtype)
        return embedding.combine(inputs, table)

    def compute_mask(self, inputs: Any, mask: Any = None) -> tf.Tensor | None:
        if not self.mask_zero:
            return None
        return keras.ops.any(keras.ops.not_equal(inputs, 0), axis=-1)  # keras.ops: also runs on symbolic inputs

    def compute_output_shape(self, input_shape: Any) -> tuple[int | None, ...]:
        return embedding.combine_shape(input_shape, self.output_dim)


@keras.saving.register_keras_serializable(package="mlable")
class RotaryPositionalEmbedding(keras.layers.Layer):
    """Rotary position embedding (RoPE), for any sequence and feature axes.

    With ``R = D - D % 2`` rotated features and ``j < R / 2``, the feature pair
    ``(a, b) = (j, j + R / 2)`` (or ``(2j, 2j + 1)`` when ``interleaved``) at
    position ``p`` along ``sequence_axis`` turns by the angle
    ``(p + offset) / scaling_factor * max_wavelength ** (-2j / R)``:
    ``out_a = x_a cos - x_b sin``, ``out_b = x_b cos + x_a sin``. An odd last
    feature passes through unchanged. The tables are computed in float32 and
    cast to the compute dtype, so ``mixed_float16`` / ``mixed_bfloat16`` stay
    accurate at long positions. See ``mlable_core.rotary.rotate``.

    Args:
        sequence_axis: the axis holding the positions.
        feature_axis: the axis holding the features to rotate (before or after
            ``sequence_axis``, other axes such as heads may lie in between).
        max_wavelength: the base of the wavelengths, a finite number > 0.
        scaling_factor: positions are divided by it, a finite number > 0.
        interleaved: pair features ``(2j, 2j + 1)`` (RoFormer) instead of
            ``(j, j + R / 2)`` (GPT-NeoX, Llama, keras-hub).
        **kwargs: base ``keras.layers.Layer`` arguments (``name``, ``dtype``, ...).

    Call arguments:
        inputs: a floating tensor of rank >= 2 with a known feature dimension.
        offset: the position of the first element along ``sequence_axis``: an
            int, a scalar integer tensor, or one offset per row of axis 0
            (shape ``(B,)``), e.g. the decoding step of each row. Default 0.
        positions: optional explicit positions replacing the indices along
            ``sequence_axis``: integers or floats of shape ``(S,)`` or ``(B, S)``
            (one per row, e.g. a left-padded batch); ``offset`` is added.

    Input shape:
        Any shape with distinct sequence and feature axes, e.g. ``(B, S, D)`` or ``(B, S, N, H)``.

    Output shape:
        The input shape.

    Example:
        >>> layer = RotaryPositionalEmbedding(sequence_axis=1, feature_axis=-1)
        >>> layer(tf.ones((2, 3, 5)), offset=2).shape
        TensorShape([2, 3, 5])
    """

    def __init__(
        self,
        sequence_axis: int = 1,
        feature_axis: int = -1,
        max_wavelength: float = 10_000,
        scaling_factor: float = 1.0,
        interleaved: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.sequence_axis = shapes.check_int(sequence_axis, "sequence_axis")
        self.feature_axis = shapes.check_int(feature_axis, "feature_axis")
        if self.sequence_axis == self.feature_axis:
            raise ValueError(
                "`sequence_axis` and `feature_axis` must be two different axes. "
                f"Received: sequence_axis={sequence_axis}, feature_axis={feature_axis}"
            )
        rotary.check_arguments(max_wavelength, scaling_factor, interleaved)
        # plain Python numbers, so that the config is JSON (numpy scalars are not)
        self.max_wavelength = max_wavelength if isinstance(max_wavelength, int) else float(max_wavelength)
        self.scaling_factor = scaling_factor if isinstance(scaling_factor, int) else float(scaling_factor)
        self.interleaved = bool(interleaved)
        self.built = True

    def call(self, inputs: Any, offset: Any = 0, positions: Any = None) -> tf.Tensor:
        return rotary.rotate(
            inputs, self.sequence_axis, self.feature_axis, offset, self.max_wavelength, self.scaling_factor, self.interleaved,
            positions=positions,
        )

    def compute_output_shape(self, input_shape: Any) -> tuple[int | None, ...]:
        shape = shapes.normalize_shape(input_shape)
        rotary.rotation_axes(shape, self.sequence_axis, self.feature_axis)
        return shape

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            sequence_axis=self.sequence_axis,
            feature_axis=self.feature_axis,
            max_wavelength=self.max_wavelength,
            scaling_factor=self.scaling_factor,
            interleaved=self.interleaved,
        )
        return config


__all__ = ["RotaryPositionalEmbedding", "TokunEmbedding"]

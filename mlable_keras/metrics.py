"""Group accuracy metrics: Binary, Categorical, SparseCategorical and Raw.

Hierarchical models are scored on entities, not on elementary predictions: a
UTF-32-BE character is right only when its 4 bytes are, a byte only when its 8
bits are. Each metric scores groups of ``group`` consecutive values along
``axis`` and reports the weighted share of correct groups over everything seen
since the last reset:

``result = sum(weight * correct) / sum(weight)`` over every group of every batch.

Each metric is a ``keras.metrics.MeanMetricWrapper`` around a module-level
function of ``mlable_core.accuracy`` with its keyword arguments, so that the
config and ``.keras`` files round-trip. The state is two sums (``total``,
``count``) aggregated by summing across replicas, so that a
``tf.distribute`` strategy gives the result of one device.

Weights: ``sample_weight`` broadcasts to the group-level shape
``(..., S / G)``, aligned on the leading axes like in Keras: one weight per row
``(B,)``, or one per group (a padding mask over groups) both work. A Keras mask
carried by ``y_pred`` is applied too (see ``mlable_core.accuracy.group_mask``:
a group counts when all its elements are unmasked).

Differences with ``keras.metrics.Mean``-based accuracies: Keras averages the
per-row means, so that batches of different lengths weigh by rows; these
metrics count groups, so a row of 8 groups weighs twice a row of 4. Both agree
whenever every batch has the same shape. The sums are kept in ``dtype``
(float32 by default): counts stay exact up to 2**24 groups per sum; pass
``dtype="float64"`` for longer exact runs.
"""

from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf

from mlable_core import accuracy, bits, shapes
from mlable_keras._compat import get_keras_mask as _get_keras_mask


class _GroupAccuracy(keras.metrics.MeanMetricWrapper):
    """Base of the group accuracies: counts groups, broadcasts weights to the group-level shape."""

    def __init__(self, fn: Any, name: str, dtype: Any, **kwargs: Any) -> None:
        super().__init__(fn=fn, name=name, dtype=dtype, **kwargs)
        self._direction = "up"  # to maximize

    def update_state(self, y_true: Any, y_pred: Any, sample_weight: Any = None) -> None:
        """Accumulates the correct groups of one batch.

        Args:
            y_true: the targets.
            y_pred: the predictions (may carry a Keras mask).
            sample_weight: weights broadcastable to the group-level shape
                (aligned on the leading axes), e.g. ``(B,)`` or ``(B, S / G)``.
        """
        mask = _get_keras_mask(y_pred)
        values = tf.cast(self._fn(y_true, y_pred, **self._fn_kwargs), self.dtype)  # (..., S / G)
        weights = None
        if sample_weight is not None:
            weights = accuracy.broadcast_weights(sample_weight, values, name="sample_weight")
        if mask is not None:
            masked = accuracy.group_mask(mask, values, axis=self._fn_kwargs["axis"])
            weights = masked if weights is None else weights * masked
        if weights is None:
            self.total.assign_add(tf.reduce_sum(values))
            self.count.assign_add(tf.cast(tf.size(values), self.dtype))
        else:
            self.total.assign_add(tf.reduce_sum(values * weights))
            self.count.assign_add(tf.reduce_sum(weights))

    def _base_config(self) -> dict[str, Any]:
        # the base Metric config (name, dtype): the wrapped function is fixed by the class
        return keras.metrics.Metric.get_config(self)


@keras.saving.register_keras_serializable(package="mlable")
class BinaryGroupAccuracy(_GroupAccuracy):
    """Share of groups whose bits all agree, for binary predictions.

    ``y_true`` and ``y_pred`` have the shape ``(..., S * depth, ...)`` with the bits
    along ``axis``: ``depth`` consecutive bits make one value (big-endian)
    and ``G = group`` consecutive values make one group, so a group is correct
    when all of its ``G * depth`` bits agree. A bit is 1 where the value is
    strictly above ``threshold``, for ``y_true`` and ``y_pred`` alike (use
    ``threshold=0.0`` for logits, with 0 / 1 targets).

    Args:
        group: the values ``G`` per group, e.g. 4 bytes per UTF-32-BE character.
        depth: the bits per value, e.g. 8 bits per byte.
        threshold: the bit threshold applied to both tensors.
        axis: the axis holding the bits.
        name: the metric name.
        dtype: the dtype of the sums and of the result.

    Call arguments (``update_state``):
        y_true: the target bits, shape ``(..., S * depth, ...)``.
        y_pred: the predicted probabilities, same shape.
        sample_weight: weights broadcastable to ``(..., S / G, ...)``, aligned on the leading axes.

    Example:
        >>> metric = BinaryGroupAccuracy(group=2, depth=2)
        >>> metric.update_state([[0, 1, 1, 1, 0, 0, 1, 1]], [[0.1, 0.9, 0.8, 0.7, 0.2, 0.6, 0.9, 0.9]])
        >>> float(metric.result())
        0.5
    """

    def __init__(
        self,
        group: int = 4,
        depth: int = 8,
        threshold: float = 0.5,
        axis: int = -1,
        name: str = "binary_group_accuracy",
        dtype: Any = None,
    ) -> None:
        self.group = shapes.check_int(group, "group", minimum=1)
        self.depth = shapes.check_int(depth, "depth", minimum=1)
        self.threshold = accuracy.check_real(threshold, "threshold")
        self.axis = shapes.check_int(axis, "axis")
        super().__init__(
            fn=accuracy.binary_group_accuracy, name=name, dtype=dtype,
            group=self.group, depth=self.depth, threshold=self.threshold, axis=self.axis,
        )

    def get_config(self) -> dict[str, Any]:
        config = self._base_config()
        config.update(group=self.group, depth=self.depth, threshold=self.threshold, axis=self.axis)
        return config


@keras.saving.register_keras_serializable(package="mlable")
class CategoricalGroupAccuracy(_GroupAccuracy):
    """Share of groups whose argmax values all match, for one-hot targets.

    ``y_true`` and ``y_pred`` have the shape ``(..., S, C)``: one-hot vectors,
    probabilities or logits over the ``C`` classes; the values are the argmax
    over ``C``. Groups are ``G = group`` consecutive values along ``axis``, an
    axis of the values ``(..., S)`` (``-1`` is ``S``). For integer targets, use
    ``SparseCategoricalGroupAccuracy``.

    Args:
        group: the values ``G`` per group, e.g. 4 bytes per UTF-32-BE character.
        axis: the axis of the values along which groups run.
        name: the metric name.
        dtype: the dtype of the sums and of the result.

    Call arguments (``update_state``):
        y_true: one-hot targets, shape ``(..., S, C)``.
        y_pred: probabilities or logits, same shape.
        sample_weight: weights broadcastable to ``(..., S / G)``, aligned on the leading axes.

    Example:
        >>> metric = CategoricalGroupAccuracy(group=2)
        >>> metric.update_state(tf.one_hot([[1, 2, 3, 0]], 4), tf.one_hot([[1, 2, 0, 0]], 4))
        >>> float(metric.result())
        0.5
    """

    def __init__(self, group: int = 4, axis: int = -1, name: str = "categorical_group_accuracy", dtype: Any = None) -> None:
        self.group = shapes.check_int(group, "group", minimum=1)
        self.axis = shapes.check_int(axis, "axis")
        super().__init__(fn=accuracy.categorical_group_accuracy, name=name, dtype=dtype, group=self.group, axis=self.axis)

    def get_config(self) -> dict[str, Any]:
        config = self._base_config()
        config.update(group=self.group, axis=self.axis)
        return config


@keras.saving.register_keras_serializable(package="mlable")
class SparseCategoricalGroupAccuracy(_GroupAccuracy):
    """Share of groups whose argmax values all match, for integer targets (e.g. byte values).

    The sparse form of ``CategoricalGroupAccuracy``, for heads trained with a
    sparse categorical cross-entropy: ``y_true`` holds the class indices,
    shape ``(..., S)`` (or ``(..., S, 1)``), and ``y_pred`` the probabilities or
    logits, shape ``(..., S, C)``. It avoids materializing one-hot targets.

    Args:
        group: the values ``G`` per group.
        axis: the axis of the values ``(..., S)`` along which groups run.
        name: the metric name.
        dtype: the dtype of the sums and of the result.

    Call arguments (``update_state``):
        y_true: class indices, shape ``(..., S)`` or ``(..., S, 1)``.
        y_pred: probabilities or logits, shape ``(..., S, C)``.
        sample_weight: weights broadcastable to ``(..., S / G)``, aligned on the leading axes.

    Example:
        >>> metric = SparseCategoricalGroupAccuracy(group=2)
        >>> metric.update_state([[1, 2, 3, 0]], tf.one_hot([[1, 2, 0, 0]], 4))
        >>> float(metric.result())
        0.5
    """

    def __init__(
        self, group: int = 4, axis: int = -1, name: str = "sparse_categorical_group_accuracy", dtype: Any = None
    ) -> None:
        self.group = shapes.check_int(group, "group", minimum=1)
        self.axis = shapes.check_int(axis, "axis")
        super().__init__(
            fn=accuracy.sparse_categorical_group_accuracy, name=name, dtype=dtype, group=self.group, axis=self.axis
        )

    def get_config(self) -> dict[str, Any]:
        config = self._base_config()
        config.update(group=self.group, axis=self.axis)
        return config


@keras.saving.register_keras_serializable(package="mlable")
class RawGroupAccuracy(_GroupAccuracy):
    """Share of groups whose rounded values all match, for raw (regressed) predictions.

    Both tensors are scaled by ``factor`` and rounded (half to even) before the
    comparison: with ``factor=256`` a prediction in ``[0, 1)`` is read as a byte.

    Args:
        group: the values ``G`` per group.
        factor: the positive scale applied to both tensors before rounding.
        axis: the axis along which groups run.
        name: the metric name.
        dtype: the dtype of the sums and of the result.

    Call arguments (``update_state``):
        y_true: the targets, shape ``(..., S, ...)``.
        y_pred: the predictions, same shape.
        sample_weight: weights broadcastable to ``(..., S / G, ...)``, aligned on the leading axes.

    Example:
        >>> metric = RawGroupAccuracy(group=1, factor=256.0)
        >>> metric.update_state([[0.25, 0.5]], [[0.251, 0.52]])
        >>> float(metric.result())
        0.5
    """

    def __init__(
        self, group: int = 1, factor: float = 256.0, axis: int = -1, name: str = "raw_group_accuracy", dtype: Any = None
    ) -> None:
        self.group = shapes.check_int(group, "group", minimum=1)
        self.factor = accuracy.check_real(factor, "factor", positive=True)
        self.axis = shapes.check_int(axis, "axis")
        super().__init__(
            fn=accuracy.raw_group_accuracy, name=name, dtype=dtype, group=self.group, factor=self.factor, axis=self.axis
        )

    def get_config(self) -> dict[str, Any]:
        config = self._base_config()
        config.update(group=self.group, factor=self.factor, axis=self.axis)
        return config


@keras.saving.register_keras_serializable(package="mlable")
class BitsPerByte(keras.metrics.Metric):
    """Bits per byte (or per character) of a byte-level language model.

    Accumulates two sums over every batch, and replica: the bits
    ``sum(-log2 p(target byte))`` and the length of the targets in UTF-8 bytes
    (or in characters with ``per="character"``); the result is their ratio, 0
    before any target was seen. Padding (a NUL character in UTF-32-BE, a zero
    byte in UTF-8) counts in neither sum; see ``mlable_core.bits`` for the layouts.

    Args:
        encoding: the layout of the targets: ``"utf-32-be"`` (4 bytes per
            character, as ``ByteDecoder`` produces them) or ``"utf-8"``.
        from_logits: whether the predictions are logits rather than probabilities.
        per: ``"byte"`` for bits per UTF-8 byte, ``"character"`` for bits per character.
        name: the metric name.
        dtype: the dtype of the sums and of the result (float32 by default;
            float64 keeps long evaluations exact).

    Call arguments (``update_state``):
        y_true: the target bytes, shape ``(..., S)`` (``S`` a multiple of 4 in UTF-32-BE).
        y_pred: logits or probabilities over the 256 byte values, shape
            ``(..., S, 256)``; a Keras mask on it (of the shape of ``y_true``, of
            the per-character shape, or of leading axes) removes the masked units.
        sample_weight: weights of the units (characters in UTF-32-BE, bytes in
            UTF-8), broadcastable to ``y_true.shape[:-1] + (S / 4,)`` (UTF-32-BE)
            or ``y_true.shape`` (UTF-8), aligned on the leading axes.

    Example:
        >>> metric = BitsPerByte(encoding="utf-8")
        >>> metric.update_state([[104, 105, 0]], tf.zeros((1, 3, 256)))  # "hi" and a padding byte
        >>> float(metric.result())
        8.0
    """

    def __init__(
        self,
        encoding: str = "utf-32-be",
        from_logits: bool = True,
        per: str = "byte",
        name: str = "bits_per_byte",
        dtype: Any = None,
    ) -> None:
        self.encoding = bits.check_encoding(encoding)
        if not isinstance(from_logits, bool):
            raise TypeError(f"`from_logits` must be a bool. Received: from_logits={from_logits!r} of type {type(from_logits).__name__}")
        self.from_logits = from_logits
        self.per = bits.check_per(per)
        super().__init__(name=name, dtype=dtype)
        self._direction = "down"  # to minimize
        # sums, not means: they add up exactly across batches and across replicas
        self.bits = self.add_variable(shape=(), initializer="zeros", dtype=self.dtype, aggregation="sum", name="bits")
        self.denominator = self.add_variable(
            shape=(), initializer="zeros", dtype=self.dtype, aggregation="sum", name="denominator"
        )

    def update_state(self, y_true: Any, y_pred: Any, sample_weight: Any = None) -> None:
        """Adds the bits and the bytes (or characters) of one batch to the sums."""
        mask = _get_keras_mask(y_pred)
        total_bits, total_bytes, total_characters = bits.byte_log2_likelihood_sums(
            y_true, y_pred, encoding=self.encoding, sample_weight=sample_weight, from_logits=self.from_logits, mask=mask
        )
        denominator = total_bytes if self.per == "byte" else total_characters
        self.bits.assign_add(tf.cast(total_bits, self.dtype))
        self.denominator.assign_add(tf.cast(denominator, self.dtype))

    def result(self) -> tf.Tensor:
        return tf.math.divide_no_nan(self.bits, self.denominator)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(encoding=self.encoding, from_logits=self.from_logits, per=self.per)
        return config


__all__ = [
    "BinaryGroupAccuracy",
    "BitsPerByte",
    "CategoricalGroupAccuracy",
    "RawGroupAccuracy",
    "SparseCategoricalGroupAccuracy",
]

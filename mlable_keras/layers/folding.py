"""Hilbert folding layers: a flat axis laid on a grid along the Hilbert curve, and back.

Axes count the batch axis (axis 0); negative axes count from the end. Both
layers are stateless and delegate to ``mlable_core.hilbert``: one ``tf.gather``
with a cached constant permutation and a reshape, under XLA too.

Shape letters: ``S = 2 ** (order * rank)`` the flat length, ``side = 2 ** order`` the grid side.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras

from mlable_core import hilbert, shapes


class _FoldingLayer(keras.layers.Layer):
    """Base of the stateless folding layers: validated and built at construction.

    Float inputs are cast to the compute dtype like in any Keras layer; integer
    inputs (byte indices) pass through unchanged.
    """

    def __init__(self, order: int, rank: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.order = shapes.check_int(order, "order", minimum=1)
        self.rank = shapes.check_int(rank, "rank", minimum=1)
        hilbert.fold_shape((1 << (self.order * self.rank),), self.order, self.rank)  # checks order * rank
        self.built = True


@keras.saving.register_keras_serializable(package="mlable")
class HilbertFold(_FoldingLayer):
    """Folds one axis of length ``2 ** (order * rank)`` into ``rank`` axes along the Hilbert curve.

    Element ``i`` of ``axis`` goes to the grid point of index ``i`` on the
    Hilbert curve (``densecurves.hilbert.point(i, order, rank)``), so that
    neighbours on the axis stay neighbours on the grid: e.g. a sequence of
    ``4 ** 5`` bytes folded into a ``32 x 32`` image. ``HilbertUnfold`` is the inverse.

    Args:
        order: bits per grid coordinate; each new axis has ``side = 2 ** order``.
        rank: the number of new axes.
        axis: the axis to fold (default: the last).
        **kwargs: base ``keras.layers.Layer`` arguments (``name``, ``dtype``, ...).

    Call arguments:
        inputs: a tensor whose ``axis`` has length ``S = 2 ** (order * rank)``.

    Input shape:
        ``(..., S, ...)`` with ``S`` at ``axis``.

    Output shape:
        ``(..., side, ..., side, ...)``: ``axis`` replaced by ``rank`` axes of side ``2 ** order``.

    Example:
        >>> HilbertFold(order=3, rank=2, axis=1)(tf.ones((2, 64, 5))).shape
        TensorShape([2, 8, 8, 5])
    """

    def __init__(self, order: int, rank: int, axis: int = -1, **kwargs: Any) -> None:
        super().__init__(order, rank, **kwargs)
        self.axis = shapes.check_int(axis, "axis")

    def call(self, inputs: Any) -> Any:
        return hilbert.fold(inputs, self.order, self.rank, self.axis)

    def compute_output_shape(self, input_shape: Any) -> tuple[int | None, ...]:
        return hilbert.fold_shape(input_shape, self.order, self.rank, self.axis)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(order=self.order, rank=self.rank, axis=self.axis)
        return config


@keras.saving.register_keras_serializable(package="mlable")
class HilbertUnfold(_FoldingLayer):
    """Unfolds ``rank`` grid axes of side ``2 ** order`` into one axis along the Hilbert curve.

    The inverse of ``HilbertFold``: position ``i`` of the output axis reads the
    grid point of index ``i`` on the curve, whose coordinate ``c`` indexes
    ``axes[c]``. The flat axis stands where the smallest of ``axes`` was; the
    other axes keep their order.

    Args:
        order: bits per grid coordinate; each grid axis has ``side = 2 ** order``.
        rank: the number of grid axes.
        axes: the ``rank`` distinct grid axes, coordinate 0 first; ``None``
            (default) means the last ``rank`` axes.
        **kwargs: base ``keras.layers.Layer`` arguments.

    Call arguments:
        inputs: a tensor whose ``axes`` all have length ``side = 2 ** order``.

    Input shape:
        ``(..., side, ..., side, ...)`` with the ``side`` axes at ``axes``.

    Output shape:
        ``(..., S, ...)`` with ``S = 2 ** (order * rank)`` where ``min(axes)`` was.

    Example:
        >>> HilbertUnfold(order=3, rank=2, axes=(1, 2))(tf.ones((2, 8, 8, 5))).shape
        TensorShape([2, 64, 5])
    """

    def __init__(self, order: int, rank: int, axes: Sequence[int] | None = None, **kwargs: Any) -> None:
        super().__init__(order, rank, **kwargs)
        if axes is not None:
            if isinstance(axes, (str, bytes)) or not isinstance(axes, Sequence):
                raise TypeError(f"`axes` must be a sequence of {self.rank} ints or None. Received: axes={axes!r}")
            axes = [shapes.check_int(item, "axes") for item in axes]
            if len(axes) != self.rank or len(set(axes)) != self.rank:
                raise ValueError(f"`axes` must list rank={self.rank} distinct axes. Received: axes={tuple(axes)}")
        # a list, so that the config is the same before and after JSON
        self.axes = None if axes is None else list(axes)

    def call(self, inputs: Any) -> Any:
        return hilbert.unfold(inputs, self.order, self.rank, self.axes)

    def compute_output_shape(self, input_shape: Any) -> tuple[int | None, ...]:
        return hilbert.unfold_shape(input_shape, self.order, self.rank, self.axes)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(order=self.order, rank=self.rank, axes=self.axes)
        return config


__all__ = ["HilbertFold", "HilbertUnfold"]

"""Relative reshaping layers: Divide, Merge, Swap and Move.

Axes count the batch axis (axis 0), as in ``tf.reshape``; negative axes count
from the end. Each layer is stateless and delegates to ``mlable_core.reshaping``.
"""

from __future__ import annotations

from typing import Any

import keras

from mlable_core import reshaping, shapes


class _ReshapingLayer(keras.layers.Layer):
    """Base of the stateless reshaping layers: built at construction.

    Float inputs are cast to the compute dtype like in any Keras layer; integer
    inputs (byte indices) pass through unchanged.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.built = True


@keras.saving.register_keras_serializable(package="mlable")
class Divide(_ReshapingLayer):
    """Divides one axis by ``factor`` and multiplies another by the same factor.

    Both axes index the OUTPUT shape (batch axis included). With ``insert=True`` a
    new axis of size 1 is first inserted at ``output_axis``, so that
    ``Divide(input_axis=1, output_axis=2, factor=4, insert=True)`` splits axis 1
    into ``(d / 4, 4)``. For any pair of axes the ``factor`` part moves as
    described in ``mlable_core.reshaping.divide``; neighbours are a plain reshape.

    Args:
        input_axis: the axis divided by ``factor``.
        output_axis: the axis multiplied by ``factor``.
        factor: a positive int dividing the ``input_axis`` dimension.
        insert: whether to insert a new axis at ``output_axis`` first.
        **kwargs: base ``keras.layers.Layer`` arguments (``name``, ``dtype``, ...).

    Input shape:
        Any tensor of rank >= 1 (>= 2 without ``insert``).

    Output shape:
        ``mlable_core.shapes.divide_shape(input_shape, input_axis, output_axis, factor, insert)``.

    Example:
        >>> Divide(input_axis=2, output_axis=-1, factor=3)(tf.ones((2, 4, 6, 8))).shape
        TensorShape([2, 4, 2, 24])
    """

    def __init__(self, input_axis: int, output_axis: int, factor: int, insert: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.input_axis = shapes.check_int(input_axis, "input_axis")
        self.output_axis = shapes.check_int(output_axis, "output_axis")
        self.factor = shapes.check_int(factor, "factor", minimum=1)
        self.insert = bool(insert)

    def call(self, inputs: Any) -> Any:
        return reshaping.divide(inputs, self.input_axis, self.output_axis, self.factor, self.insert)

    def compute_output_shape(self, input_shape: Any) -> tuple[int | None, ...]:
        return shapes.divide_shape(input_shape, self.input_axis, self.output_axis, self.factor, self.insert)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            input_axis=self.input_axis, output_axis=self.output_axis, factor=self.factor, insert=self.insert
        )
        return config


@keras.saving.register_keras_serializable(package="mlable")
class Merge(_ReshapingLayer):
    """Merges two axes into one.

    The merged index is ``index(left_axis) * dim(right_axis) + index(right_axis)``;
    the merged axis stands where ``left_axis`` was (``left=True``) or where
    ``right_axis`` was (``left=False``). Any two distinct axes; neighbours are a
    plain reshape.

    Args:
        left_axis: the axis giving the major part of the merged index.
        right_axis: the axis giving the minor part of the merged index.
        left: whether the merged axis replaces ``left_axis`` (else ``right_axis``).
        **kwargs: base ``keras.layers.Layer`` arguments.

    Input shape:
        Any tensor of rank >= 2.

    Output shape:
        ``mlable_core.shapes.merge_shape(input_shape, left_axis, right_axis, left)``, one axis fewer.

    Example:
        >>> Merge(left_axis=1, right_axis=-1, left=False)(tf.ones((2, 4, 6, 8))).shape
        TensorShape([2, 6, 32])
    """

    def __init__(self, left_axis: int, right_axis: int, left: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.left_axis = shapes.check_int(left_axis, "left_axis")
        self.right_axis = shapes.check_int(right_axis, "right_axis")
        self.left = bool(left)

    def call(self, inputs: Any) -> Any:
        return reshaping.merge(inputs, self.left_axis, self.right_axis, self.left)

    def compute_output_shape(self, input_shape: Any) -> tuple[int | None, ...]:
        return shapes.merge_shape(input_shape, self.left_axis, self.right_axis, self.left)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(left_axis=self.left_axis, right_axis=self.right_axis, left=self.left)
        return config


@keras.saving.register_keras_serializable(package="mlable")
class Swap(_ReshapingLayer):
    """Exchanges two axes.

    Args:
        left_axis: one axis.
        right_axis: the other axis.
        **kwargs: base ``keras.layers.Layer`` arguments.

    Input shape:
        Any tensor of rank >= 1.

    Output shape:
        The input shape with the two dimensions exchanged.

    Example:
        >>> Swap(left_axis=1, right_axis=-1)(tf.ones((2, 3, 5))).shape
        TensorShape([2, 5, 3])
    """

    def __init__(self, left_axis: int, right_axis: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.left_axis = shapes.check_int(left_axis, "left_axis")
        self.right_axis = shapes.check_int(right_axis, "right_axis")

    def call(self, inputs: Any) -> Any:
        return reshaping.swap(inputs, self.left_axis, self.right_axis)

    def compute_output_shape(self, input_shape: Any) -> tuple[int | None, ...]:
        return shapes.swap_shape(input_shape, self.left_axis, self.right_axis)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(left_axis=self.left_axis, right_axis=self.right_axis)
        return config


@keras.saving.register_keras_serializable(package="mlable")
class Move(_ReshapingLayer):
    """Moves one axis to a new position, keeping the others in order (``numpy.moveaxis``).

    Args:
        from_axis: the axis to move.
        to_axis: its index in the output.
        **kwargs: base ``keras.layers.Layer`` arguments.

    Input shape:
        Any tensor of rank >= 1.

    Output shape:
        The input shape with ``from_axis`` moved to ``to_axis``.

    Example:
        >>> Move(from_axis=1, to_axis=-1)(tf.ones((2, 3, 5))).shape
        TensorShape([2, 5, 3])
    """

    def __init__(self, from_axis: int, to_axis: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.from_axis = shapes.check_int(from_axis, "from_axis")
        self.to_axis = shapes.check_int(to_axis, "to_axis")

    def call(self, inputs: Any) -> Any:
        return reshaping.move(inputs, self.from_axis, self.to_axis)

    def compute_output_shape(self, input_shape: Any) -> tuple[int | None, ...]:
        return shapes.move_shape(input_shape, self.from_axis, self.to_axis)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(from_axis=self.from_axis, to_axis=self.to_axis)
        return config


__all__ = ["Divide", "Merge", "Move", "Swap"]

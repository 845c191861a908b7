"""Byte-embedding combination (tokun): one embedding row per byte, concatenated per token.

Shape letters: ``S`` sequence length in bytes, ``G`` bytes per token (so a
sequence holds ``S / G`` tokens), ``V`` vocabulary size (rows of the table),
``E`` embedding size per byte.

The op is one ``tf.gather`` and one reshape (no copy): the ``G`` embeddings of
a token are laid side by side in the feature axis, which becomes ``G * E``
wide. It works eagerly, inside ``tf.function`` with unknown dimensions and
under ``jit_compile=True``.

Index checks: TensorFlow's gather raises for an out-of-range index on CPU (with
a message from deep inside the kernel), returns zeros on GPU, and under XLA
clamps the index silently. ``combine`` therefore asserts ``0 <= index < V``
with ``tf.debugging.Assert`` before gathering, which gives one clear
``InvalidArgumentError`` eagerly and in graphs, on CPU and GPU alike. XLA drops
assertions: inside ``jit_compile=True`` nothing is checked and an out-of-range
index reads a clamped row (XLA's gather clamps its indices; seen on CPU, GPU
not checked here).
"""

from __future__ import annotations

import tensorflow as tf

from mlable_core import reshaping, shapes

_INDEX_DTYPES = (tf.int32, tf.int64)


def combine_shape(indices_shape: shapes.Shape | tuple, embedding_dim: int | None) -> shapes.Shape:
    """Shape of ``combine``: ``(..., S / G, G)`` indices and ``E`` give ``(..., S / G, G * E)``.

    Args:
        indices_shape: the shape of the indices, rank >= 2 (``None`` for unknown dims).
        embedding_dim: ``E``, or ``None`` when unknown.

    Returns:
        The output shape, ``None`` where a dimension is unknown.

    Raises:
        ValueError: the indices have rank < 2.

    Example:
        >>> combine_shape((128, 1024, 16), 128)
        (128, 1024, 2048)
    """
    shape = shapes.normalize_shape(indices_shape)
    if len(shape) < 2:
        raise ValueError(
            "`indices` must have rank >= 2, shaped (..., S / G, G) with the G bytes of each token on the last axis. "
            f"Received: indices with shape {shape}"
        )
    token_dim = shape[-1]
    merged = None if token_dim is None or embedding_dim is None else token_dim * embedding_dim
    return shape[:-1] + (merged,)


def check_indices(indices: tf.Tensor, vocabulary: int | tf.Tensor) -> tf.Operation:
    """A run-time assertion that every index lies in ``[0, vocabulary)``."""
    smallest = tf.reduce_min(indices)
    largest = tf.reduce_max(indices)
    bound = tf.cast(vocabulary, indices.dtype)
    valid = tf.logical_and(smallest >= 0, largest < bound)
    rows = f"{vocabulary}" if isinstance(vocabulary, int) else "V"
    message = (
        f"`indices` must be in [0, {rows}), {rows} being the number of rows of the embedding table "
        "(`input_dim` of the layer). Received: indices with smallest and largest values"
    )
    return tf.debugging.Assert(valid, [message, smallest, largest, "table rows:", bound])


def combine(indices: tf.Tensor, table: tf.Tensor, validate_indices: bool = True) -> tf.Tensor:
    """Embeds each byte and lays the ``G`` embeddings of a token side by side.

    ``out[..., s, t * E:(t + 1) * E] = table[indices[..., s, t]]``: one gather of
    shape ``(..., S / G, G, E)`` followed by a reshape (no copy) that merges the
    last two axes.

    Args:
        indices: integer tensor of shape ``(..., S / G, G)``, rank >= 2; any
            dimension may be unknown. Integer dtypes other than int32 / int64
            (e.g. uint8 bytes) are cast to int32.
        table: tensor of shape ``(V, E)``, the embedding of each of the ``V`` values.
        validate_indices: assert at run time that every index lies in ``[0, V)``
            (one min and one max over the indices; dropped under XLA).

    Returns:
        A tensor of ``table``'s dtype and shape ``(..., S / G, G * E)``.

    Raises:
        TypeError: ``indices`` is not an integer tensor.
        ValueError: ``indices`` has rank < 2 or ``table`` does not have rank 2.
        tf.errors.InvalidArgumentError: at run time (eagerly or in a graph, not
            under XLA), an index lies outside ``[0, V)``.

    Example:
        >>> table = tf.reshape(tf.range(6.0), (3, 2))
        >>> combine(tf.constant([[[0, 2], [1, 1]]]), table).numpy().tolist()
        [[[0.0, 1.0, 4.0, 5.0], [2.0, 3.0, 2.0, 3.0]]]
    """
    indices = tf.convert_to_tensor(indices)
    table = tf.convert_to_tensor(table)
    if not indices.dtype.is_integer:
        raise TypeError(f"`indices` must be an integer tensor. Received: indices with dtype {indices.dtype.name}")
    if indices.shape.rank is None or table.shape.rank is None:
        raise ValueError(
            f"The ranks of `indices` and `table` must be known. Received: indices with shape {indices.shape}, "
            f"table with shape {table.shape}"
        )
    if table.shape.rank != 2:
        raise ValueError(f"`table` must have rank 2, shaped (V, E). Received: table with shape {tuple(table.shape.as_list())}")
    combine_shape(indices.shape, table.shape[-1])  # validates the rank of the indices
    if indices.dtype not in _INDEX_DTYPES:
        indices = tf.cast(indices, tf.int32)
    checks = [check_indices(indices, reshaping.dynamic_dims(table)[0])] if validate_indices else []
    with tf.control_dependencies(checks):
        gathered = tf.gather(table, indices)  # (..., S / G, G, E)
    rank = indices.shape.rank + 1
    combined = reshaping.merge(gathered, rank - 2, rank - 1)  # (..., S / G, G * E)
    return combined


__all__ = [
    "check_indices","combine", "combine_shape"]

"""Group accuracies: ``update_state`` against Keras' own accuracies on the same tensors.

Goal (issue 5): ``CategoricalGroupAccuracy`` on ``(64, 1024, 256)`` and
``BinaryGroupAccuracy`` on ``(64, 4096 * 8)`` cost at most 1.5x
``keras.metrics.CategoricalAccuracy`` / ``BinaryAccuracy``. Each timed call is
one ``update_state`` followed by ``result()`` (read back, so that the clock
stops after the work), eagerly, in a ``tf.function`` and under XLA. The bytes
moved are the two inputs, read once.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable

import keras
import tensorflow as tf

from benchmarks import timing
from mlable_keras import metrics

# config
CATEGORICAL_SHAPE = (64, 1024, 256)  # (B, K, C): 64 rows of 1024 bytes, 256 classes
BINARY_SHAPE = (64, 4096 * 8)  # (B, K * D): 64 rows of 4096 bytes, 8 bits each
GROUPS = (1, 4)  # bytes, UTF-32-BE characters


def _step(metric: keras.metrics.Metric, y_true: tf.Tensor, y_pred: tf.Tensor, mode: str) -> Callable[[], tf.Tensor]:
    def update() -> tf.Tensor:
        metric.update_state(y_true, y_pred)
        return metric.result()

    if mode == "eager":
        return update
    return tf.function(update, jit_compile=mode == "xla")


def _categorical_data(shape: tuple[int, ...]) -> tuple[tf.Tensor, tf.Tensor]:
    y_pred = tf.random.stateless_uniform(shape, seed=(1, 2))  # (B, K, C)
    labels = tf.random.stateless_uniform(shape[:-1], seed=(3, 4), maxval=shape[-1], dtype=tf.int32)  # (B, K)
    return tf.one_hot(labels, shape[-1]), y_pred


def _binary_data(shape: tuple[int, ...]) -> tuple[tf.Tensor, tf.Tensor]:
    y_pred = tf.random.stateless_uniform(shape, seed=(5, 6))  # (B, K * D)
    y_true = tf.cast(tf.random.stateless_uniform(shape, seed=(7, 8)) > 0.5, tf.float32)
    return y_true, y_pred


def run(quick: bool = False) -> list[timing.Row]:
    tiny = timing.tiny()  # smoke tests (MLABLE_BENCH_TINY=1): tiny shapes, one repeat
    rows: list[timing.Row] = []
    repeats = 1 if tiny else (6 if quick else 15)
    categorical_shape = (2, 16, 256) if tiny else CATEGORICAL_SHAPE
    binary_shape = (2, 64 * 8) if tiny else BINARY_SHAPE
    modes = ("graph",) if tiny else (("eager", "graph", "xla") if not quick else ("eager", "graph"))
    cases = [
        ("CategoricalGroupAccuracy", _categorical_data(categorical_shape), categorical_shape,
         lambda group: metrics.CategoricalGroupAccuracy(group=group), keras.metrics.CategoricalAccuracy),
        ("BinaryGroupAccuracy", _binary_data(binary_shape), binary_shape,
         lambda group: metrics.BinaryGroupAccuracy(group=group, depth=8 if group > 1 else 1), keras.metrics.BinaryAccuracy),
    ]
    for name, (y_true, y_pred), shape, make_ours, make_reference in cases:
        label = "x".join(map(str, shape))
        nbytes = 2 * 4 * math.prod(shape)  # both float32 inputs, read once
        for mode in modes:
            for group in GROUPS:
                ours = _step(make_ours(group), y_true, y_pred, mode)
                reference = _step(make_reference(), y_true, y_pred, mode)
                ours_timing, reference_timing = timing.compare(ours, reference, repeats=repeats)
                op = f"{name}(group={group}{', depth=8' if name.startswith('Binary') and group > 1 else ''})"
                rows.append(
                    timing.row(
                        "metrics", op, label, "float32", mode, ours_timing, f"keras {make_reference.__name__}",
                        reference_timing, "<= 1.5x", nbytes,
                    )
                )
    return rows


if __name__ == "__main__":
    print(timing.markdown_table(run(quick="--quick" in sys.argv)))

"""TokunEmbedding against ``keras.layers.Embedding`` followed by ``keras.layers.Reshape``.

Goal (issue 3): on ``(32, 1024, 16)`` byte indices with ``E = 64`` (a 128 MiB
float32 output), at most 1.1x the time of the Keras pair, under ``tf.function``
and under XLA. A second row prices the index check of
``mlable_core.embedding.combine`` (``validate_indices=True``, the default)
against the same op without it.

How it is timed: each function embeds ``STEPS`` batches in a ``tf.while_loop``
(batch ``k`` is ``(indices + k) % 256``, so nothing can be hoisted out of the
loop) inside one ``tf.function`` and returns one element of the last output,
so that handing 128 MiB to numpy is not what gets timed.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

from benchmarks import timing  # noqa: E402
from mlable_core import embedding  # noqa: E402
from mlable_keras.layers.embedding import TokunEmbedding  # noqa: E402

# config
SHAPE = (32, 1024, 16)  # (B, S / T, T)
VOCABULARY, WIDTH = 256, 64  # V, E
STEPS = 4
TINY_SHAPE = (2, 8, 4)


def _loop(embed: object, indices: tf.Tensor, output_shape: tuple[int, ...], steps: int, jit: bool) -> tf.types.experimental.GenericFunction:
    """Embeds ``steps`` shifted copies of ``indices`` in a while loop and returns one element of the last output."""

    def run() -> tf.Tensor:
        def body(index: tf.Tensor, _: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
            return index + 1, tf.ensure_shape(embed((indices + index) % VOCABULARY), output_shape)

        start = (tf.constant(0), tf.zeros(output_shape))
        _, value = tf.while_loop(lambda index, _: index < steps, body, start)
        return value[(-1,) * len(output_shape)]

    return tf.function(run, jit_compile=jit)


def run(quick: bool = False) -> list[timing.Row]:
    tiny = timing.tiny()  # smoke tests (MLABLE_BENCH_TINY=1): tiny shapes, one repeat
    rows: list[timing.Row] = []
    repeats = 1 if tiny else (4 if quick else 15)
    steps = 1 if tiny else STEPS
    shape = TINY_SHAPE if tiny else SHAPE
    indices = tf.random.uniform(shape, 0, VOCABULARY, dtype=tf.int32)
    output_shape = shape[:-1] + (shape[-1] * WIDTH,)
    nbytes = 4 * (indices.shape.num_elements() + indices.shape.num_elements() * WIDTH)  # read indices, write the output
    label = "x".join(map(str, shape)) + f", E={WIDTH}"
    ours = TokunEmbedding(VOCABULARY, WIDTH)
    ours.build()
    builtin = keras.layers.Embedding(VOCABULARY, WIDTH)
    builtin.build()
    builtin.set_weights(ours.get_weights())
    reshape = keras.layers.Reshape(output_shape[1:])
    table = ours.embeddings
    for mode, jit in (("graph", False), ("xla", True)):
        mine = _loop(ours, indices, output_shape, steps, jit)
        theirs = _loop(lambda batch: reshape(builtin(batch)), indices, output_shape, steps, jit)
        ours_timing, theirs_timing = timing.compare(mine, theirs, repeats=repeats)
        per_call = lambda item: timing.Timing(item.median_s / steps, item.min_s / steps, item.repeats, item.compile_s)  # noqa: E731
        rows.append(
            timing.row(
                "embedding", "TokunEmbedding", label, "float32", mode, per_call(ours_timing),
                "keras Embedding + Reshape", per_call(theirs_timing), "<= 1.1", nbytes,
            )
        )
        if jit:
            continue  # XLA drops the assertion: both functions compile to the same program
        checked = _loop(lambda batch: embedding.combine(batch, table), indices, output_shape, steps, jit)
        unchecked = _loop(lambda batch: embedding.combine(batch, table, validate_indices=False), indices, output_shape, steps, jit)
        checked_timing, unchecked_timing = timing.compare(checked, unchecked, repeats=repeats)
        rows.append(
            timing.row(
                "embedding", "combine, index check on", label, "float32", mode, per_call(checked_timing),
                "combine, index check off", per_call(unchecked_timing), "cost of the check", nbytes,
            )
        )
    return rows


if __name__ == "__main__":
    print(f"copy bandwidth: {timing.copy_bandwidth() / 1e9:.1f} GB/s")
    print(timing.markdown_table(run(quick="--quick" in sys.argv)))

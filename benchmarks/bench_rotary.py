"""RoPE: ``mlable_core.rotary.rotate`` against ``keras_hub.layers.RotaryEmbedding``.

Goals (issue 3): at least 1.5x faster than keras-hub under ``tf.function`` and
under XLA, on ``(8, 2048, 8, 64)`` float32 and on a decode-shaped ``(8, 1, 8, 64)``
call with an offset; an effective bandwidth (bytes read + written / time) of at
least 40% of the machine's copy bandwidth, measured in the same run.

How it is timed: each function applies the rotation ``STEPS`` times in a
``tf.while_loop`` (the output of one step is the input of the next, the loop
counter is the offset), inside one ``tf.function``, and returns one element.
That keeps the tables from being hoisted out of the loop, keeps XLA from
computing only the element returned, and leaves out the cost of handing a
32 MiB tensor to numpy, which would otherwise dominate both sides. The
``one pass`` rows time ``-x`` the same way: the cost of a single elementwise
pass in that mode, the floor for any implementation.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import tensorflow as tf  # noqa: E402

from benchmarks import timing  # noqa: E402
from mlable_core import rotary  # noqa: E402

# config
SHAPES = {"prefill": (8, 2048, 8, 64), "decode": (8, 1, 8, 64)}  # (B, S, N, H)
STEPS = {"prefill": 8, "decode": 64}  # rotations per timed call
TINY_SHAPES = {"prefill": (2, 16, 2, 8), "decode": (2, 1, 2, 8)}


def _chain(step: object, steps: int, jit: bool) -> tf.types.experimental.GenericFunction:
    """``x -> step(step(... step(x, 0) ..., steps - 1))[-1, ..., -1]`` as one compiled function."""

    def run(x: tf.Tensor) -> tf.Tensor:
        def body(index: tf.Tensor, value: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
            return index + 1, tf.ensure_shape(step(value, index), x.shape)

        _, value = tf.while_loop(lambda index, _: index < steps, body, (tf.constant(0), x))
        return value[(-1,) * x.shape.rank]

    return tf.function(run, jit_compile=jit)


def run(quick: bool = False) -> list[timing.Row]:
    tiny = timing.tiny()  # smoke tests (MLABLE_BENCH_TINY=1): tiny shapes, one repeat
    rows: list[timing.Row] = []
    repeats = 1 if tiny else (6 if quick else 15)
    keras_hub = timing.optional("keras_hub")
    keras_hub_layer = None if keras_hub is None else keras_hub.layers.RotaryEmbedding(max_wavelength=10_000, sequence_axis=1, feature_axis=-1)
    for name, shape in (TINY_SHAPES if tiny else SHAPES).items():
        steps = 2 if tiny else STEPS[name]
        x = tf.random.normal(shape)
        nbytes = 2 * x.shape.num_elements() * 4  # read x, write the output
        label = "x".join(map(str, shape))
        for mode, jit in (("graph", False), ("xla", True)):
            ours = _chain(lambda value, index: rotary.rotate(value, 1, -1, offset=index), steps, jit)
            per_call = lambda item: timing.Timing(item.median_s / steps, item.min_s / steps, item.repeats, item.compile_s)  # noqa: E731
            if keras_hub_layer is None:
                ours_timing, theirs_timing = timing.measure(lambda: ours(x), repeats=repeats), None  # noqa: B023
            else:
                theirs = _chain(lambda value, index: keras_hub_layer(value, start_index=index), steps, jit)
                ours_timing, theirs_timing = timing.compare(lambda: ours(x), lambda: theirs(x), repeats=repeats)  # noqa: B023
            rows.append(
                timing.row(
                    "rotary", f"rotate ({name}, offset = step)", label, "float32", mode, per_call(ours_timing),
                    "" if theirs_timing is None else "keras_hub RotaryEmbedding",
                    None if theirs_timing is None else per_call(theirs_timing), "<= 0.67 (1.5x faster), >= 40% copy bw", nbytes,
                )
            )
            one_pass = _chain(lambda value, index: -value, steps, jit)
            floor = timing.measure(lambda: one_pass(x), repeats=repeats)
            rows.append(
                timing.row(
                    "rotary", "one pass (-x), the floor", label, "float32", mode, per_call(floor), bytes_moved=nbytes,
                    note="context: one elementwise pass in this mode",
                )
            )
    return rows


if __name__ == "__main__":
    print(f"copy bandwidth: {timing.copy_bandwidth() / 1e9:.1f} GB/s")
    print(timing.markdown_table(run(quick="--quick" in sys.argv)))

"""A serving loop from Python: one decode step per call, the cache in a ``tf.Variable`` written in place.

Goals (issue 13): B=4, d=512, 8 heads of 64, a cache of 4096 slots, one
token per call from Python (a ``tf.function`` in graph mode, no XLA loop):
at least 4x faster than keras-hub's ``CachedMultiHeadAttention`` called per
token at 512 filled slots, at least 1.5x at 4095.

Ours: ``CachedMultiHeadAttention`` given a variable cache
(``tf.Variable(create_cache(...))``): each call writes its slot into the
variable's buffer and reads only the filled slots; the step function returns
the outputs alone, so the buffer is reused (the note says whether its address
stayed the same over the timed calls). The alternative is the per-call row of
``bench_attention.py``: keras-hub's layer compiled with XLA, which returns a
new cache per call (same setup code and weights); the second row compares with
our own tensor cache called per call, which also returns a new cache.

Each call rewrites the slot ``filled`` and attends over ``filled + 1`` slots,
so every call costs one decode step at that filled length.
"""

from __future__ import annotations

import sys

import numpy as np
import tensorflow as tf

from benchmarks import bench_attention, timing

# config
BATCH, WIDTH, HEADS, HEAD_DIM, SLOTS = bench_attention.BATCH, bench_attention.WIDTH, bench_attention.HEADS, bench_attention.HEAD_DIM, bench_attention.SLOTS
FILLED = (512, 4095)
GOALS = {512: ">= 4x faster (ratio <= 0.25)", 4095: ">= 1.5x faster (ratio <= 0.67)"}


class _Exported:
    """A tensor seen through the DLPack protocol, so that numpy can view its buffer without a copy."""

    def __init__(self, tensor: tf.Tensor) -> None:
        self.tensor = tensor

    def __dlpack__(self, **_: object) -> object:
        return tf.experimental.dlpack.to_dlpack(self.tensor)

    def __dlpack_device__(self) -> tuple[int, int]:
        return (1, 0)  # kDLCPU, device 0


def buffer_address(variable: tf.Variable) -> int:
    """The address of the buffer that holds ``variable``'s value now (CPU); no reference to it is kept."""
    view = np.from_dlpack(_Exported(variable.read_value()))
    return int(view.__array_interface__["data"][0])


def run(quick: bool = False) -> list[timing.Row]:
    tiny = timing.tiny()  # smoke tests (MLABLE_BENCH_TINY=1): tiny shapes, one repeat
    if tiny:
        batch, width, heads, head_dim, slots, filled_levels, repeats = 2, 32, 2, 16, 1024, (64, 1023), 1  # a 512 KiB cache
    else:
        batch, width, heads, head_dim, slots = BATCH, WIDTH, HEADS, HEAD_DIM, SLOTS
        filled_levels, repeats = FILLED, (9 if quick else 15)
    ours, hub = bench_attention._layers(batch, width, heads, head_dim)
    x = tf.random.normal((batch, 1, width))
    tensor_cache, hub_cache = bench_attention.caches(batch, slots, heads, head_dim)  # (2, B, S, N, H), (B, 2, S, N, H)
    variable = tf.Variable(tensor_cache, trainable=False)  # the serving cache, written in place
    step_variable = tf.function(lambda step: ours(x, x, cache=variable, step=step)[0])  # outputs only
    step_tensor = tf.function(lambda cache, step: ours(x, x, cache=cache, step=step)[0])
    hub_call = None if hub is None else bench_attention.keras_hub_per_call(hub, x, slots)
    shape = f"B={batch} d={width} {heads}x{head_dim} S={slots}"
    rows = []
    for filled in filled_levels:
        step = tf.constant(filled)
        read = 2 * batch * (filled + 1) * heads * head_dim * 4  # keys and values up to the new slot
        step_variable(step)  # trace before taking the buffer's address
        address = buffer_address(variable)
        if hub_call is None:
            ours_t, hub_t = timing.measure(lambda: step_variable(step), repeats=repeats), None  # noqa: B023
        else:
            ours_t, hub_t = timing.compare(lambda: step_variable(step), lambda: hub_call(hub_cache, step), repeats=repeats)  # noqa: B023
        ours_again, tensor_t = timing.compare(lambda: step_variable(step), lambda: step_tensor(tensor_cache, step), repeats=repeats)  # noqa: B023
        reused = buffer_address(variable) == address
        note = f"variable buffer {'reused' if reused else 'REPLACED'} over the timed calls"
        extra = {"filled": filled, "slots": slots, "buffer_reused": reused}
        rows.append(
            timing.row(
                "serving", "decode 1 token per call, variable cache", f"{shape} filled={filled}", "float32", "graph per call",
                ours_t, "" if hub_t is None else "keras-hub CachedMHA (xla per call)", hub_t, GOALS.get(filled, ""), read,
                note=note + ("" if hub_t is None else "; keras-hub returns a new cache per call"), extra=extra,
            )
        )
        rows.append(
            timing.row(
                "serving", "decode 1 token per call, variable cache", f"{shape} filled={filled}", "float32", "graph per call",
                ours_again, "our tensor cache (graph per call)", tensor_t, "", read,
                note=note + "; the tensor cache returns a new cache per call", extra=extra,
            )
        )
    return rows


if __name__ == "__main__":
    results = run(quick="--quick" in sys.argv)
    print(timing.markdown_table(results))

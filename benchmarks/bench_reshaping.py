"""Divide / Merge: neighbouring axes cost nothing (a reshape), others one transpose.

Goals (issue 2): the neighbouring divide / merge cost stays flat as the tensor
grows (no copy); a non-neighbouring divide / merge costs at most 1.2x a plain
``tf.transpose`` of the same tensor.
"""

from __future__ import annotations

import sys

import tensorflow as tf

from benchmarks import timing
from mlable_core import reshaping

# config
SIZES_MB = (1, 16, 128)
SIZES_MB_QUICK = (1, 16)


def _shape(megabytes: float) -> tuple[int, int, int, int]:
    # (B, S, N, H) with S growing: float32, 64 * 8 * 64 * 4 bytes = 128 KiB per unit of S
    units = max(1, int(megabytes * 2**20 / (8 * 8 * 64 * 4)))
    return (8, units, 8, 64)


def run(quick: bool = False) -> list[timing.Row]:
    tiny = timing.tiny()  # smoke tests (MLABLE_BENCH_TINY=1): tiny shapes, one repeat
    rows: list[timing.Row] = []
    repeats = 1 if tiny else (5 if quick else 15)
    sizes = (0.1,) if tiny else (SIZES_MB_QUICK if quick else SIZES_MB)
    for megabytes in sizes:
        shape = _shape(megabytes)
        x = tf.random.normal(shape)
        nbytes = x.shape.num_elements() * 4
        label = "x".join(map(str, shape))
        for mode, jit in (("graph", False), ("xla", True)):
            # neighbouring: (B, S, N, H) -> (B, S, N * H): a reshape, compared with tf.reshape itself;
            # one element is read back so that handing the whole output to numpy is not what gets timed
            neighbour = tf.function(lambda t: reshaping.merge(t, 2, 3)[-1, -1, -1], jit_compile=jit)
            plain = tf.function(lambda t: tf.reshape(t, (shape[0], shape[1], shape[2] * shape[3]))[-1, -1, -1], jit_compile=jit)
            ours, ref = timing.compare(lambda: neighbour(x), lambda: plain(x), repeats=repeats)
            rows.append(timing.row("reshaping", "merge(2, 3) neighbours", label, "float32", mode, ours, "tf.reshape", ref, "flat in size"))
            # non-neighbouring: merge heads into the sequence axis, divide the sequence into the features
            far_merge = tf.function(lambda t: reshaping.merge(t, 2, 1, left=False), jit_compile=jit)
            transpose = tf.function(lambda t: tf.transpose(t, (0, 2, 1, 3)), jit_compile=jit)
            ours, ref = timing.compare(lambda: far_merge(x), lambda: transpose(x), repeats=repeats)
            rows.append(timing.row("reshaping", "merge(2, 1) far", label, "float32", mode, ours, "tf.transpose", ref, "<= 1.2x", 2 * nbytes))
            far_divide = tf.function(lambda t: reshaping.divide(t, 1, 3, 2), jit_compile=jit)
            ours, ref = timing.compare(lambda: far_divide(x), lambda: transpose(x), repeats=repeats)
            rows.append(timing.row("reshaping", "divide(1, 3, 2) far", label, "float32", mode, ours, "tf.transpose", ref, "<= 1.2x", 2 * nbytes))
    return rows


if __name__ == "__main__":
    print(timing.markdown_table(run(quick="--quick" in sys.argv)))

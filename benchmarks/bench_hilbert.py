"""Hilbert fold / unfold against a plain ``tf.gather`` + ``tf.reshape``, and the permutation build.

Goals (issue 6): ``fold`` and ``unfold`` cost at most 1.2x a plain ``tf.gather``
with the same precomputed permutation followed by ``tf.reshape`` (what a user
would write by hand); the permutation of order 10, rank 2 (2 ** 20 points)
builds in under 2 s, vectorised, where ``densecurves`` maps one point at a time.
"""

from __future__ import annotations

import sys

import densecurves.hilbert
import numpy as np
import tensorflow as tf

from benchmarks import timing
from mlable_core import hilbert

# config: (order, rank, shape, axis) with the folded axis of length 2 ** (order * rank)
CASES = (
    (5, 2, (16, 1024, 128), 1),  # a 32 x 32 image of 128-feature tokens, 8 MiB
    (10, 2, (8, 1 << 20), -1),  # a megapixel of bytes per row, 32 MiB
)
CASES_QUICK = CASES[:1]
CASES_TINY = ((2, 2, (2, 16, 4), 1),)
LOOP_ORDER = 7  # densecurves is timed point by point on 2 ** 14 points


def _fold_rows(order: int, rank: int, shape: tuple[int, ...], axis: int, repeats: int) -> list[timing.Row]:
    rows = []
    x = tf.random.normal(shape)
    nbytes = x.shape.num_elements() * 4
    position = axis % len(shape)
    side = 1 << order
    folded_shape = shape[:position] + (side,) * rank + shape[position + 1 :]
    flat_shape = shape
    fold_index = np.array(hilbert.fold_permutation(order, rank))
    unfold_index = np.array(hilbert.unfold_permutation(order, rank))
    label = "x".join(map(str, shape))
    grid = tf.reshape(x, folded_shape)
    for mode, jit in (("graph", False), ("xla", True)):
        ours = tf.function(lambda t: hilbert.fold(t, order, rank, axis), jit_compile=jit)
        plain = tf.function(lambda t: tf.reshape(tf.gather(t, fold_index, axis=position), folded_shape), jit_compile=jit)
        mine, reference = timing.compare(lambda: ours(x), lambda: plain(x), repeats=repeats)
        rows.append(timing.row("hilbert", f"fold(order={order}, rank={rank})", label, "float32", mode, mine, "tf.gather + tf.reshape", reference, "<= 1.2x", 2 * nbytes))
        axes = tuple(range(position, position + rank))
        ours = tf.function(lambda t: hilbert.unfold(t, order, rank, axes), jit_compile=jit)
        plain = tf.function(lambda t: tf.gather(tf.reshape(t, flat_shape), unfold_index, axis=position), jit_compile=jit)
        mine, reference = timing.compare(lambda: ours(grid), lambda: plain(grid), repeats=repeats)
        rows.append(timing.row("hilbert", f"unfold(order={order}, rank={rank})", label, "float32", mode, mine, "tf.reshape + tf.gather", reference, "<= 1.2x", 2 * nbytes))
    return rows


def _permutation_rows(repeats: int) -> list[timing.Row]:
    tiny = timing.tiny()  # smoke tests (MLABLE_BENCH_TINY=1): tiny shapes, one repeat
    rows = []
    # the cached functions keep the uncached one as __wrapped__: time a fresh build every call
    build = hilbert.fold_permutation.__wrapped__
    order = 2 if tiny else LOOP_ORDER
    points = 1 << (2 * order)

    def densecurves_loop() -> list[int]:
        return [densecurves.hilbert.index(densecurves.hilbert.point(position, order=order, rank=2), order=order, rank=2) for position in range(points)]

    def vectorised() -> tuple[np.ndarray, np.ndarray]:
        return build(order, 2), hilbert.unfold_permutation.__wrapped__(order, 2)

    mine, reference = timing.compare(vectorised, densecurves_loop, repeats=repeats, warmup=1, rounds=1)
    rows.append(timing.row("hilbert", f"permutations(order={order}, rank=2)", f"{points} points", "int32", "numpy", mine, "densecurves point + index loop", reference, "vectorised"))
    if not tiny:
        full = timing.measure(lambda: (build(10, 2), hilbert.unfold_permutation.__wrapped__(10, 2)), repeats=repeats, warmup=1)
        rows.append(timing.row("hilbert", "permutations(order=10, rank=2)", f"{1 << 20} points", "int32", "numpy", full, goal="< 2 s (both)"))
    return rows


def run(quick: bool = False) -> list[timing.Row]:
    tiny = timing.tiny()  # smoke tests (MLABLE_BENCH_TINY=1): tiny shapes, one repeat
    repeats = 1 if tiny else (6 if quick else 15)
    cases = CASES_TINY if tiny else (CASES_QUICK if quick else CASES)
    rows: list[timing.Row] = []
    for order, rank, shape, axis in cases:
        rows.extend(_fold_rows(order, rank, shape, axis, repeats))
    rows.extend(_permutation_rows(1 if tiny else 3))
    return rows


if __name__ == "__main__":
    print(timing.markdown_table(run(quick="--quick" in sys.argv)))

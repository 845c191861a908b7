"""Sampling against greedy decoding: temperature, top-k, top-p and their combinations.

Goal (issue 13): every sampler within 3x the time of greedy decoding
(``tf.argmax``) of the same ``(64, 50_000)`` float32 logits, in graph mode and
under XLA, measured side by side (interleaved repeats, medians). Also reported:
plain sampling against ``tf.random.stateless_categorical`` (what a user would
call), the share of the copy bandwidth (the logits read once per call), and
the byte decoder's per-step case, logits ``(B, 4, 256)`` at B = 1, 8, 32.
The note of each row gives two ratios that a shared machine moves less than
the medians: that of the fastest calls, and that of the processor time spent
(all threads of the process, interleaved calls).

Logits are ``normal * scale``: with scale 3 the nucleus of p = 0.9 holds about
3000 tokens, with scale 6 a few hundred, like a trained model's.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

import tensorflow as tf

from benchmarks import timing
from mlable_core import sampling

# config
SHAPE = (64, 50_000)
SHAPE_TINY = (4, 3000)  # above SMALL_VOCABULARY: the block path
SEED = tf.constant([1, 2], dtype=tf.int32)
ROUNDS = 6  # interleaved rounds of ours and the reference
SCALES = (3.0, 6.0)
GOAL = "<= 3x argmax"
VARIANTS = (
    ("sample(temperature=0.8)", dict(temperature=0.8)),
    ("sample(top_k=50)", dict(top_k=50)),
    ("sample(top_p=0.9)", dict(top_p=0.9)),
    ("sample(top_k=50, top_p=0.9)", dict(top_k=50, top_p=0.9)),
    ("sample(temperature=0.8, top_p=0.9)", dict(temperature=0.8, top_p=0.9)),
)
# the scale-6 rows: the samplers whose cost depends on the spread of the logits
PEAKED = ("sample(top_p=0.9)", "sample(temperature=0.8, top_p=0.9)")
# the byte decoder: (B, 4 bytes a token, 256 byte values) logits per generation step
BYTE_BATCHES = (1, 8, 32)
BYTE_BATCHES_TINY = (1,)
BYTE_VARIANTS = (
    ("sample(temperature=0.8)", dict(temperature=0.8)),
    ("sample(top_k=50)", dict(top_k=50)),
    ("sample(top_p=0.9)", dict(top_p=0.9)),
)


def _compare(kwargs: dict, values: tf.Tensor, jit: bool, repeats: int) -> tuple[timing.Timing, timing.Timing, str]:
    """Wall times of ``sample`` and ``tf.argmax`` (interleaved rounds), and a note with two steadier ratios."""
    ours = tf.function(lambda t, s: sampling.sample(t, s, **kwargs), jit_compile=jit)
    greedy = tf.function(lambda t: tf.argmax(t, axis=-1, output_type=tf.int32), jit_compile=jit)
    mine, reference = timing.compare(lambda: ours(values, SEED), lambda: greedy(values), repeats=repeats, rounds=ROUNDS if repeats >= ROUNDS else 1)
    processor = _processor_ratio(lambda: ours(values, SEED), lambda: greedy(values), repeats)
    return mine, reference, f"{_fastest(mine, reference)}; processor time: {processor:.2f}x"


def _fastest(mine: timing.Timing, reference: timing.Timing) -> str:
    """The ratio of the fastest calls: on a loaded machine, closer to what the code costs than the medians."""
    return f"fastest calls: {mine.min_s / reference.min_s:.2f}x"


def _processor_ratio(ours: Callable[[], Any], reference: Callable[[], Any], repeats: int) -> float:
    """Processor time (all threads of this process) of ``ours`` over ``reference``, interleaved.

    Waiting for a core that another job holds counts in wall time, not here:
    on a shared machine this ratio moves less between runs than the medians.
    """
    spent = {ours: 0.0, reference: 0.0}
    for _ in range(repeats):
        for function in (ours, reference):
            start = time.process_time()
            timing.block(function())
            spent[function] += time.process_time() - start
    return spent[ours] / spent[reference]


def run(quick: bool = False) -> list[timing.Row]:
    tiny = timing.tiny()  # smoke tests (MLABLE_BENCH_TINY=1): tiny shapes, one repeat
    repeats = 1 if tiny else (6 if quick else 30)
    shape = SHAPE_TINY if tiny else SHAPE
    logits = {scale: tf.random.stateless_normal(shape, seed=[3, 4]) * scale for scale in SCALES}
    nbytes = shape[0] * shape[1] * 4
    label = "x".join(map(str, shape))
    variants = VARIANTS[1:3] if quick else VARIANTS
    rows: list[timing.Row] = []
    for mode, jit in (("graph", False), ("xla", True)):
        cases = [(name, kwargs, SCALES[0]) for name, kwargs in variants]
        cases += [(name, kwargs, SCALES[1]) for name, kwargs in variants if name in PEAKED]
        for name, kwargs, scale in cases:
            mine, reference, note = _compare(kwargs, logits[scale], jit, repeats)
            rows.append(timing.row("sampling", name, f"{label}, scale {scale:g}", "float32", mode, mine, "greedy (tf.argmax)", reference, GOAL, nbytes, note=note))
        ours = tf.function(lambda t, s: sampling.sample(t, s), jit_compile=jit)
        categorical = tf.function(lambda t, s: tf.random.stateless_categorical(t, 1, s)[:, 0], jit_compile=jit)
        flat = logits[SCALES[0]]
        mine, reference = timing.compare(lambda: ours(flat, SEED), lambda: categorical(flat, SEED), repeats=repeats)  # noqa: B023
        rows.append(timing.row("sampling", "sample()", f"{label}, scale {SCALES[0]:g}", "float32", mode, mine, "tf.random.stateless_categorical", reference, "report", nbytes))
        for batch in BYTE_BATCHES_TINY if tiny else BYTE_BATCHES:
            values = tf.random.stateless_normal((batch, 4, 256), seed=[5, 6]) * SCALES[0]
            for name, kwargs in BYTE_VARIANTS[:1] if quick else BYTE_VARIANTS:
                mine, reference, note = _compare(kwargs, values, jit, repeats)
                rows.append(timing.row("sampling", name, f"B={batch} x4x256 (byte decoder step)", "float32", mode, mine, "greedy (tf.argmax)", reference, "report", batch * 4 * 256 * 4, note=note))
    return rows


if __name__ == "__main__":
    print(timing.markdown_table(run(quick="--quick" in sys.argv)))

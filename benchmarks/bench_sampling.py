"""Sampling over a large vocabulary: top-p, top-k, temperature against greedy.

Goal (issue 6): report the time of top-p (nucleus) sampling on ``(64, 50_000)``
logits against greedy decoding (``argmax``) of the same logits, and plain
sampling against ``tf.random.stateless_categorical`` (what a user would call).

Logits are ``normal * scale``: with scale 3 the nucleus of p = 0.9 holds about
3000 tokens (more than the 1024 candidates: the bisection path), with scale 6
it holds a few hundred, like a trained model's (the candidates path).
"""

from __future__ import annotations

import sys

import tensorflow as tf

from benchmarks import timing
from mlable_core import sampling

# config
SHAPE = (64, 50_000)
SHAPE_TINY = (4, 100)
SEED = tf.constant([1, 2], dtype=tf.int32)
SCALES = (3.0, 6.0)
VARIANTS = (
    ("sample(top_p=0.9)", dict(top_p=0.9)),
    ("sample(top_k=50, top_p=0.9)", dict(top_k=50, top_p=0.9)),
    ("sample(top_k=50)", dict(top_k=50)),
    ("sample(temperature=0.8)", dict(temperature=0.8)),
)


def run(quick: bool = False) -> list[timing.Row]:
    tiny = timing.tiny()  # smoke tests (MLABLE_BENCH_TINY=1): tiny shapes, one repeat
    repeats = 1 if tiny else (6 if quick else 15)
    shape = SHAPE_TINY if tiny else SHAPE
    flat, peaked = (tf.random.stateless_normal(shape, seed=[3, 4]) * scale for scale in SCALES)
    nbytes = shape[0] * shape[1] * 4
    label = "x".join(map(str, shape))
    rows: list[timing.Row] = []
    for mode, jit in (("graph", False), ("xla", True)):
        greedy = tf.function(sampling.greedy, jit_compile=jit)
        variants = VARIANTS[:2] if quick else VARIANTS
        cases = [(name, kwargs, flat, SCALES[0]) for name, kwargs in variants] + [(VARIANTS[0][0], VARIANTS[0][1], peaked, SCALES[1])]
        for name, kwargs, values, scale in cases:
            ours = tf.function(lambda t, s, kwargs=kwargs: sampling.sample(t, s, **kwargs), jit_compile=jit)
            mine, reference = timing.compare(lambda: ours(values, SEED), lambda: greedy(values), repeats=repeats)  # noqa: B023
            rows.append(timing.row("sampling", name, f"{label}, scale {scale:g}", "float32", mode, mine, "greedy (argmax)", reference, "report", nbytes))
        ours = tf.function(lambda t, s: sampling.sample(t, s), jit_compile=jit)
        categorical = tf.function(lambda t, s: tf.random.stateless_categorical(t, 1, s)[:, 0], jit_compile=jit)
        mine, reference = timing.compare(lambda: ours(flat, SEED), lambda: categorical(flat, SEED), repeats=repeats)
        rows.append(timing.row("sampling", "sample()", f"{label}, scale {SCALES[0]:g}", "float32", mode, mine, "tf.random.stateless_categorical", reference, "report", nbytes))
    return rows


if __name__ == "__main__":
    print(timing.markdown_table(run(quick="--quick" in sys.argv)))

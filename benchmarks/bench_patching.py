"""Dynamic patching: boundaries plus pooling against one segment sum, hash n-gram embeddings against plain lookups.

Goals (issue 16):

- patching plus mean pooling of ``(32, 8192)`` bytes (``E = 64`` float32 features
  per byte) costs at most 2x one segment sum of the same ``(B * S, E)`` data into
  the same patches, in graph mode and under XLA. The alternative is
  ``tf.math.segment_sum`` in graph mode; XLA cannot compile it (its output size
  depends on the data), so under XLA it is ``tf.math.unsorted_segment_sum`` with
  the static number of segments, the form XLA accepts. Rows: the space rule
  (SpaceByte) and the entropy threshold (BLT).
- ``HashNgramEmbedding`` (the byte plus the sizes 3 to 8: 7 rows per byte)
  costs at most 1.5x a plain ``keras.layers.Embedding`` lookup per n, i.e. 7
  lookups of precomputed ids, summed.

How it is timed: ``timing.compare`` (10 interleaved rounds, medians: on a shared
machine fewer rounds let one side catch a busy moment). Both sides
start from the same tensors (the ``(B, S, E)`` features, reshaped inside the
timed function; the alternative gets the flat sorted patch ids precomputed)
and return the sum of their result, so that XLA cannot compute one element
only and handing a large tensor to numpy is not timed. Bytes are text-like:
letters with a space about every 6 bytes.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from benchmarks import timing  # noqa: E402
from mlable_core import patching  # noqa: E402
from mlable_keras.layers.patching import HashNgramEmbedding  # noqa: E402

# config
SHAPE = (32, 8192)  # (B, S) bytes
FEATURES = 64  # E
MAX_PATCHES = 4096  # P: a patch holds at least 2 bytes ("a "), so no row overflows
MAX_PATCH_LENGTH = 16
THRESHOLD = 2.0  # nats, for the entropy rows (uniform entropies in [0, 2.5])
HASH_SHAPE = (32, 1024)
HASH_BUCKETS = 4096
NGRAM_SIZES = (3, 4, 5, 6, 7, 8)
TINY_SHAPE = (2, 64)
TINY_MAX_PATCHES = 32


def text_like_bytes(shape: tuple[int, int], seed: int = 0) -> np.ndarray:
    """Lower-case letters with a space on about one byte in 6."""
    rng = np.random.default_rng(seed)
    letters = rng.integers(ord("a"), ord("z") + 1, size=shape)
    return np.where(rng.random(shape) < 1 / 6, ord(" "), letters).astype(np.int32)


def _total(x: tf.Tensor) -> tf.Tensor:
    # a sum over the whole result, on both sides: returning one element would let XLA compute that element only
    return tf.reduce_sum(x)


def _patching_rows(quick: bool, tiny: bool) -> list[timing.Row]:
    rows: list[timing.Row] = []
    repeats, rounds = (1, 1) if tiny else ((6, 3) if quick else (30, 10))
    shape = TINY_SHAPE if tiny else SHAPE
    max_patches = TINY_MAX_PATCHES if tiny else MAX_PATCHES
    data = tf.constant(text_like_bytes(shape))
    entropies = tf.random.stateless_uniform(shape, (0, 1), 0.0, 2.5)
    x = tf.random.stateless_normal(shape + (FEATURES,), (0, 2))
    # the same patches, as the sorted flat segment ids the alternative takes
    reference_ids = patching.space_patches(data, max_patches, MAX_PATCH_LENGTH).ids
    flat = tf.reshape(reference_ids + tf.range(shape[0])[:, None] * max_patches, [-1])
    segments = shape[0] * max_patches
    label = "x".join(map(str, shape)) + f", E={FEATURES}, P={max_patches}"
    nbytes = 4 * (x.shape.num_elements() + segments * FEATURES)  # read the features, write the patches
    criteria = {
        "space": lambda: patching.space_patches(data, max_patches, MAX_PATCH_LENGTH, space_bytes=patching.WHITESPACE),
        "entropy": lambda: patching.entropy_patches(entropies, THRESHOLD, max_patches, MAX_PATCH_LENGTH),
    }
    for mode, jit in (("graph", False), ("xla", True)):
        if jit:
            theirs = tf.function(lambda: _total(tf.math.unsorted_segment_sum(tf.reshape(x, (-1, FEATURES)), flat, segments)), jit_compile=True)
            reference = "tf.math.unsorted_segment_sum (XLA)"
        else:
            theirs = tf.function(lambda: _total(tf.math.segment_sum(tf.reshape(x, (-1, FEATURES)), flat)))
            reference = "tf.math.segment_sum"
        for name, boundaries in criteria.items():

            def ours(boundaries=boundaries) -> tf.Tensor:
                return _total(patching.pool(x, boundaries().ids, max_patches, "mean"))

            ours_timing, theirs_timing = timing.compare(tf.function(ours, jit_compile=jit), theirs, repeats=repeats, rounds=rounds)
            rows.append(
                timing.row(
                    "patching", f"{name} patches + mean pooling", label, "float32", mode, ours_timing,
                    reference, theirs_timing, "<= 2", nbytes,
                )
            )
    return rows


def _hash_rows(quick: bool, tiny: bool) -> list[timing.Row]:
    rows: list[timing.Row] = []
    repeats, rounds = (1, 1) if tiny else ((6, 3) if quick else (30, 10))
    shape = TINY_SHAPE if tiny else HASH_SHAPE
    data = tf.constant(text_like_bytes(shape, seed=1))
    ours_layer = HashNgramEmbedding(FEATURES, HASH_BUCKETS, NGRAM_SIZES)
    ours_layer.build(shape)
    lookups = len(NGRAM_SIZES) + 1
    plain = [keras.layers.Embedding(HASH_BUCKETS, FEATURES) for _ in range(lookups)]
    for layer in plain:
        layer.build(shape)
    rng = np.random.default_rng(2)
    ids = [tf.constant(rng.integers(0, HASH_BUCKETS if index else 256, size=shape), tf.int32) for index in range(lookups)]
    label = "x".join(map(str, shape)) + f", E={FEATURES}, {HASH_BUCKETS} buckets, n=3..8"
    nbytes = 4 * (data.shape.num_elements() * (1 + lookups * FEATURES) + data.shape.num_elements() * FEATURES)
    for mode, jit in (("graph", False), ("xla", True)):
        ours = tf.function(lambda: _total(ours_layer(data)), jit_compile=jit)
        theirs = tf.function(lambda: _total(tf.add_n([layer(index) for layer, index in zip(plain, ids)])), jit_compile=jit)
        ours_timing, theirs_timing = timing.compare(ours, theirs, repeats=repeats, rounds=rounds)
        rows.append(
            timing.row(
                "patching", "HashNgramEmbedding (byte + 6 sizes)", label, "float32", mode, ours_timing,
                f"{lookups} keras Embedding lookups, summed", theirs_timing, "<= 1.5", nbytes,
                note=f"per n: {lookups} lookups either way",
            )
        )
    return rows


def run(quick: bool = False) -> list[timing.Row]:
    tiny = timing.tiny()  # smoke tests (MLABLE_BENCH_TINY=1): tiny shapes, one repeat
    return _patching_rows(quick, tiny) + _hash_rows(quick, tiny)


if __name__ == "__main__":
    print(f"copy bandwidth: {timing.copy_bandwidth() / 1e9:.1f} GB/s")
    print(timing.markdown_table(run(quick="--quick" in sys.argv)))

"""FeedForwardGate against the same block written by hand with three ``keras.layers.Dense``.

Goal (issue 4): FeedForwardGate costs at most 1.1x the hand-written block
(same weights, same shapes), in graph mode and under XLA. The share of the
machine's matmul throughput (measured in the same run) is reported too.
"""

from __future__ import annotations

import sys

import keras
import tensorflow as tf

from benchmarks import timing
from mlable_keras.layers.transformer import FeedForwardGate

# config: (batch, sequence, width, hidden)
SHAPES = ((4, 128, 512, 2048), (8, 256, 512, 2048))
SHAPES_QUICK = ((4, 128, 512, 2048),)


def _by_hand(width: int, hidden: int) -> keras.layers.Layer:
    gate = keras.layers.Dense(hidden, activation="gelu")
    linear = keras.layers.Dense(hidden)
    output = keras.layers.Dense(width)

    def block(x: tf.Tensor) -> tf.Tensor:
        return output(gate(x) * linear(x))

    block.layers = (gate, linear, output)  # type: ignore[attr-defined]
    return block


def run(quick: bool = False) -> list[timing.Row]:
    tiny = timing.tiny()  # smoke tests (MLABLE_BENCH_TINY=1): tiny shapes, one repeat
    rows: list[timing.Row] = []
    shapes = ((2, 8, 16, 32),) if tiny else (SHAPES_QUICK if quick else SHAPES)
    repeats = 1 if tiny else (5 if quick else 15)
    for batch, sequence, width, hidden in shapes:
        x = tf.random.normal((batch, sequence, width))
        ours = FeedForwardGate(input_dim=width, hidden_dim=hidden)
        ours(x)
        hand = _by_hand(width, hidden)
        hand(x)
        for mine, theirs in zip((ours._gate, ours._linear, ours._output), hand.layers):
            theirs.set_weights(mine.get_weights())
        flops = 2 * batch * sequence * width * hidden * 3
        label = f"({batch}, {sequence}, {width}) hidden={hidden}"
        for mode, jit in (("graph", False), ("xla", True)):
            ours_fn = tf.function(lambda t: ours(t), jit_compile=jit)
            hand_fn = tf.function(lambda t: hand(t), jit_compile=jit)
            ours_t, hand_t = timing.compare(lambda: ours_fn(x), lambda: hand_fn(x), repeats=repeats)
            rows.append(timing.row("feedforward", "FeedForwardGate", label, "float32", mode, ours_t, "3x keras Dense by hand", hand_t, "<= 1.1x", flops=flops))
    return rows


if __name__ == "__main__":
    print(timing.markdown_table(run(quick="--quick" in sys.argv)))

"""The main job: ``python -m mlable_keras.demo``.

For now, a short tour of the reshaping layers on a batch of UTF-32-BE bytes;
the byte-level language model demo replaces it when its parts land.
"""

from __future__ import annotations

import sys

import numpy as np
import tensorflow as tf

from mlable_keras.layers import reshaping


def main(argv: list[str] | None = None) -> int:
    text = ["hello, world", "mlable"]
    size = 16  # characters per row, padded with zeros
    codes = np.zeros((len(text), size * 4), dtype=np.int32)
    for row, line in enumerate(text):
        data = np.frombuffer(line.encode("utf-32-be"), dtype=np.uint8)[: size * 4]
        codes[row, : data.size] = data
    x = tf.constant(codes)  # (B, 4S) bytes
    tokens = reshaping.Divide(input_axis=1, output_axis=2, factor=16, insert=True)(x)  # (B, 4S / 16, 16)
    back = reshaping.Merge(left_axis=1, right_axis=2, left=True)(tokens)  # (B, 4S)
    far = reshaping.Divide(input_axis=0, output_axis=2, factor=2)(tokens)  # (B / 2, 4S / 16, 2 * 16)
    print(f"bytes {tuple(x.shape)} -> tokens of 16 bytes {tuple(tokens.shape)} -> bytes {tuple(back.shape)}")
    print(f"rows folded into the token axis: {tuple(far.shape)}")
    assert np.array_equal(back.numpy(), codes), "Merge did not undo Divide"
    decoded = [bytes(row.astype(np.uint8)).decode("utf-32-be").rstrip("\x00") for row in back.numpy()]
    print(f"round trip: {decoded}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

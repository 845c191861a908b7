"""Bits per byte / per character: core sums and the Keras metric against a float64 NumPy reference."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given
from hypothesis import strategies as st

from mlable_core import bits
from mlable_keras import metrics
from mlable_keras._compat import set_keras_mask
from tests import strategies
from tests.harness import check_config_round_trip

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLES = ["hello world", "café", "10 €", "😀!", "é€😀a", "日本語 text"]


# the independent reference ----------------------------------------------------------------------


def _log2_softmax(logits: np.ndarray) -> np.ndarray:
    logits = np.asarray(logits, np.float64)
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return (shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))) / np.log(2.0)


def reference_sums(y_true, logits, encoding: str, weights=None) -> tuple[float, float, float]:
    """(bits, UTF-8 bytes, characters) by a Python loop; ``weights`` broadcasts (NumPy rules) to the units (or None)."""
    y_true = np.asarray(y_true, np.int64)
    log2 = _log2_softmax(logits)
    rows = y_true.reshape(-1, y_true.shape[-1])
    log2 = log2.reshape(rows.shape + (256,))
    width = 4 if encoding == "utf-32-be" else 1
    units = rows.shape[-1] // width
    if weights is None:
        weights = 1.0
    weights = np.broadcast_to(np.asarray(weights, np.float64), y_true.shape[:-1] + (units,)).reshape(rows.shape[0], units)
    total_bits = total_bytes = total_characters = 0.0
    for row, (values, scores) in enumerate(zip(rows, log2)):
        for unit in range(units):
            chunk = values[unit * width : (unit + 1) * width]
            if encoding == "utf-32-be":
                point = int.from_bytes(bytes(int(value) for value in chunk), "big")
                if point == 0:
                    continue
                length, characters = len(chr(point).encode("utf-8")), 1
            else:
                if chunk[0] == 0:
                    continue
                length, characters = 1, int(not 0x80 <= chunk[0] < 0xC0)
            weight = weights[row, unit]
            information = -sum(scores[unit * width + index, chunk[index]] for index in range(width))
            total_bits += weight * information
            total_bytes += weight * length
            total_characters += weight * characters
    return total_bits, total_bytes, total_characters


def encode(texts: list[str], encoding: str, length: int | None = None) -> np.ndarray:
    """Rows of bytes, padded with 0 (NUL characters in UTF-32-BE) to ``length`` characters / bytes."""
    codec = "utf-32-be" if encoding == "utf-32-be" else "utf-8"
    width = 4 if encoding == "utf-32-be" else 1
    rows = [np.frombuffer(text.encode(codec), np.uint8) for text in texts]
    size = width * length if length is not None else max([len(row) for row in rows] + [width])
    return np.stack([np.pad(row, (0, size - len(row))) for row in rows]).astype(np.int32)


def random_logits(shape: tuple[int, ...], seed: int = 0, scale: float = 3.0) -> np.ndarray:
    return (np.random.default_rng(seed).normal(size=shape + (256,)) * scale).astype(np.float32)


def _sums(*args, **kwargs) -> np.ndarray:
    return np.array([float(value) for value in bits.byte_log2_likelihood_sums(*args, **kwargs)])


# core sums --------------------------------------------------------------------------------------


@pytest.mark.parametrize("encoding", bits.ENCODINGS)
@pytest.mark.parametrize("text", SAMPLES)
def test_sums_match_the_reference(text, encoding):
    y_true = encode([text, text[::-1] + "x"], encoding)
    logits = random_logits(y_true.shape, seed=len(text))
    np.testing.assert_allclose(_sums(y_true, logits, encoding=encoding), reference_sums(y_true, logits, encoding), rtol=1e-5)


@pytest.mark.parametrize("encoding", bits.ENCODINGS)
def test_denominators_are_the_utf8_bytes_and_the_characters(encoding):
    text = "aé€😀"  # 1 + 2 + 3 + 4 UTF-8 bytes, 4 characters
    y_true = encode([text], encoding, length=16)  # padded
    _, total_bytes, total_characters = _sums(y_true, np.zeros(y_true.shape + (256,), np.float32), encoding=encoding)
    assert (total_bytes, total_characters) == (len(text.encode("utf-8")), len(text)) == (10, 4)


def test_uniform_predictions_cost_8_bits_per_predicted_byte():
    y_true = encode(["aé€😀"], "utf-32-be")
    total_bits, total_bytes, total_characters = _sums(y_true, np.zeros(y_true.shape + (256,), np.float32))
    assert total_bits == pytest.approx(4 * 4 * 8) and total_bytes == 10 and total_characters == 4


@pytest.mark.parametrize("encoding", bits.ENCODINGS)
@given(text=strategies.texts(min_size=1, max_size=8), padding=st.integers(0, 3), seed=st.integers(0, 2**16))
def test_random_text_matches_the_reference_and_padding_changes_nothing(encoding, text, padding, seed):
    width = 4 if encoding == "utf-32-be" else 1
    y_true = encode([text], encoding)
    padded = np.pad(y_true, ((0, 0), (0, width * padding)))
    logits = random_logits(padded.shape, seed=seed)
    expected = reference_sums(y_true, logits[:, : y_true.shape[1]], encoding)
    np.testing.assert_allclose(_sums(padded, logits, encoding=encoding), expected, rtol=1e-5)
    np.testing.assert_allclose(_sums(y_true, logits[:, : y_true.shape[1]], encoding=encoding), expected, rtol=1e-5)


def test_nul_padding_counts_nowhere_even_with_impossible_predictions():
    y_true = encode(["ab", ""], "utf-32-be", length=3)
    logits = random_logits(y_true.shape)
    logits[y_true == 0] = -1e9  # padding bytes predicted with probability 0: still excluded
    logits[y_true == 0, 1] = 0.0
    result = _sums(y_true, logits)
    assert np.all(np.isfinite(result))
    np.testing.assert_allclose(result, reference_sums(y_true, logits, "utf-32-be"), rtol=1e-5)
    assert result[1:].tolist() == [2.0, 2.0]


def test_an_embedded_zero_byte_is_not_padding_in_utf32():
    # U+0100 is 00 00 01 00: zero bytes inside a character are predicted and counted
    y_true = encode(["\u0100"], "utf-32-be")
    logits = random_logits(y_true.shape)
    np.testing.assert_allclose(_sums(y_true, logits), reference_sums(y_true, logits, "utf-32-be"), rtol=1e-5)


WEIGHTS = {
    "rows": lambda rng, units: rng.random(2).astype("float32"),
    "units": lambda rng, units: rng.random((2, units)).astype("float32"),
    "units_trailing_one": lambda rng, units: rng.random((2, units, 1)).astype("float32"),
    "binary_units": lambda rng, units: (rng.random((2, units)) < 0.5).astype("float32"),
}


@pytest.mark.parametrize("encoding", bits.ENCODINGS)
@pytest.mark.parametrize("kind", sorted(WEIGHTS))
def test_sample_weights(encoding, kind):
    y_true = encode(["aé€😀 hi", "😀😀"], encoding)
    units = y_true.shape[1] // (4 if encoding == "utf-32-be" else 1)
    weights = WEIGHTS[kind](np.random.default_rng(3), units)
    logits = random_logits(y_true.shape, seed=4)
    expected = reference_sums(y_true, logits, encoding, weights.reshape(weights.shape[0], -1))
    np.testing.assert_allclose(_sums(y_true, logits, encoding=encoding, sample_weight=weights), expected, rtol=1e-5)


@pytest.mark.parametrize("encoding", bits.ENCODINGS)
def test_probabilities_equal_logits(encoding):
    y_true = encode(SAMPLES, encoding)
    logits = random_logits(y_true.shape, seed=5, scale=1.0)  # no probability below the 1e-7 clip
    probabilities = tf.nn.softmax(logits).numpy()
    np.testing.assert_allclose(
        _sums(y_true, probabilities, encoding=encoding, from_logits=False), _sums(y_true, logits, encoding=encoding), rtol=1e-4
    )


def test_dtypes_half_inputs_float32_and_float64_inputs_float64():
    y_true = encode(SAMPLES, "utf-32-be")
    logits = random_logits(y_true.shape, seed=6)
    expected = reference_sums(y_true, logits, "utf-32-be")
    for dtype, result_dtype, tolerance in ((tf.float16, tf.float32, 2e-3), (tf.bfloat16, tf.float32, 2e-2), (tf.float64, tf.float64, 1e-12)):
        half = tf.cast(logits, dtype)
        sums = bits.byte_log2_likelihood_sums(y_true, half)
        assert all(value.dtype == result_dtype for value in sums)
        reference = reference_sums(y_true, tf.cast(half, tf.float64).numpy(), "utf-32-be")
        np.testing.assert_allclose([float(value) for value in sums], reference, rtol=tolerance)
    np.testing.assert_allclose(_sums(y_true, logits.astype("float64")), expected, rtol=1e-12)


def test_targets_with_a_trailing_axis_of_one_and_unsigned_bytes():
    y_true = encode(SAMPLES, "utf-8")
    logits = random_logits(y_true.shape, seed=7)
    expected = _sums(y_true, logits, encoding="utf-8")
    np.testing.assert_allclose(_sums(y_true[..., None], logits, encoding="utf-8"), expected, rtol=1e-6)
    np.testing.assert_allclose(_sums(y_true.astype(np.uint8), logits, encoding="utf-8"), expected, rtol=1e-6)


def test_higher_rank_targets():
    y_true = encode(SAMPLES, "utf-32-be").reshape(2, 3, -1)  # (B, S, K)
    logits = random_logits(y_true.shape, seed=8)
    np.testing.assert_allclose(_sums(y_true, logits), reference_sums(y_true, logits, "utf-32-be"), rtol=1e-5)
    weights = np.array([1.0, 0.5], np.float32)
    np.testing.assert_allclose(
        _sums(y_true, logits, sample_weight=weights),
        reference_sums(y_true, logits, "utf-32-be", weights[:, None, None]), rtol=1e-5,
    )


@pytest.mark.parametrize("encoding", bits.ENCODINGS)
def test_tf_function_with_unknown_dims_and_jit_compile_equal_eager(encoding):
    y_true = encode(SAMPLES, encoding)
    logits = random_logits(y_true.shape, seed=9)
    weights = np.random.default_rng(9).random(len(SAMPLES)).astype("float32")
    eager = _sums(y_true, logits, encoding=encoding, sample_weight=weights)

    def run(a, b, c):
        return bits.byte_log2_likelihood_sums(a, b, encoding=encoding, sample_weight=c)

    signature = [tf.TensorSpec((None, None), tf.int32), tf.TensorSpec((None, None, 256), tf.float32), tf.TensorSpec((None,), tf.float32)]
    for function in (tf.function(run, input_signature=signature), tf.function(run, jit_compile=True)):
        np.testing.assert_allclose([float(value) for value in function(y_true, logits, weights)], eager, rtol=1e-5)


def test_unknown_length_is_checked_at_run_time():
    function = tf.function(
        lambda a, b: bits.byte_log2_likelihood_sums(a, b),
        input_signature=[tf.TensorSpec((None, None), tf.int32), tf.TensorSpec((None, None, 256), tf.float32)],
    )
    with pytest.raises(tf.errors.InvalidArgumentError, match="whole UTF-32-BE characters"):
        function(tf.ones((1, 6), tf.int32), tf.zeros((1, 6, 256)))


def test_codepoints_and_utf8_lengths_match_python():
    text = "a\x7f\x80é\u07ff\u0800€\uffff\U00010000😀\U0010ffff"
    points = bits.codepoints(encode([text], "utf-32-be")).numpy()[0]
    assert points.tolist() == [ord(character) for character in text]
    assert bits.utf8_lengths(points).numpy().tolist() == [len(character.encode("utf-8")) for character in text]


# the Keras metric -------------------------------------------------------------------------------


def _metric_result(metric: keras.metrics.Metric, *batches: tuple) -> float:
    metric.reset_state()
    for batch in batches:
        metric.update_state(*batch)
    return float(metric.result())


@pytest.mark.parametrize("encoding", bits.ENCODINGS)
@pytest.mark.parametrize("per", bits.PER)
def test_metric_is_the_ratio_of_the_reference_sums(encoding, per):
    y_true = encode(SAMPLES, encoding)
    logits = random_logits(y_true.shape, seed=10)
    weights = np.random.default_rng(10).random(len(SAMPLES)).astype("float32")
    total_bits, total_bytes, total_characters = reference_sums(y_true, logits, encoding, weights[:, None])
    metric = metrics.BitsPerByte(encoding=encoding, per=per)
    expected = total_bits / (total_bytes if per == "byte" else total_characters)
    assert _metric_result(metric, (y_true, logits, weights)) == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("encoding", bits.ENCODINGS)
@given(splits=st.lists(st.integers(1, 3), min_size=3, max_size=3), seed=st.integers(0, 2**16))
def test_accumulating_three_batches_equals_one_call_on_their_concatenation(encoding, splits, seed):
    rows = sum(splits)
    texts = [SAMPLES[(seed + index) % len(SAMPLES)] for index in range(rows)]
    y_true = encode(texts, encoding)
    logits = random_logits(y_true.shape, seed=seed)
    weights = np.random.default_rng(seed).random(rows).astype("float32")
    bounds = np.cumsum([0] + splits)
    batches = [(y_true[start:stop], logits[start:stop], weights[start:stop]) for start, stop in zip(bounds[:-1], bounds[1:])]
    metric = metrics.BitsPerByte(encoding=encoding, dtype="float64")
    assert _metric_result(metric, *batches) == pytest.approx(_metric_result(metric, (y_true, logits, weights)), rel=1e-6)
    expected = reference_sums(y_true, logits, encoding, weights[:, None])
    assert float(metric.result()) == pytest.approx(expected[0] / expected[1], rel=1e-5)


def test_metric_under_jit_compile_equals_eager():
    y_true = encode(SAMPLES, "utf-32-be")
    logits = random_logits(y_true.shape, seed=11)
    eager = _metric_result(metrics.BitsPerByte(), (y_true, logits))
    metric = metrics.BitsPerByte()

    @tf.function(jit_compile=True)
    def step(a, b):
        metric.update_state(a, b)
        return metric.result()

    assert float(step(y_true, logits)) == pytest.approx(eager, rel=1e-6)


def test_empty_targets_give_zero_and_reset_clears_the_sums():
    metric = metrics.BitsPerByte()
    assert float(metric.result()) == 0.0
    metric.update_state(np.zeros((2, 8), np.int32), random_logits((2, 8)))  # only padding
    assert float(metric.result()) == 0.0
    metric.update_state(encode(["a"], "utf-32-be"), np.zeros((1, 4, 256), np.float32))
    assert float(metric.result()) == pytest.approx(32.0)
    metric.reset_state()
    assert float(metric.result()) == 0.0 and float(metric.bits) == 0.0 and float(metric.denominator) == 0.0


def test_keras_masks_byte_level_any_and_per_character():
    y_true = encode(["aé€😀", "b"], "utf-32-be")  # (2, 16)
    logits = random_logits(y_true.shape, seed=12)
    character_mask = np.array([[True, False, True, True], [True, True, True, True]])
    expected = reference_sums(y_true, logits, "utf-32-be", character_mask.astype("float64"))
    expected = expected[0] / expected[1]
    # a byte-level mask_zero keeps a character when any of its bytes is non-zero
    byte_mask = (y_true != 0) & np.repeat(character_mask, 4, axis=1)
    for mask in (character_mask, byte_mask, tf.constant(byte_mask)):
        predictions = tf.constant(logits)
        set_keras_mask(predictions, tf.constant(mask))
        assert _metric_result(metrics.BitsPerByte(), (y_true, predictions)) == pytest.approx(expected, rel=1e-5)
    # mask_zero alone changes nothing: padding is already excluded
    predictions = tf.constant(logits)
    set_keras_mask(predictions, tf.constant(y_true != 0))
    assert _metric_result(metrics.BitsPerByte(), (y_true, predictions)) == pytest.approx(
        _metric_result(metrics.BitsPerByte(), (y_true, logits)), rel=1e-6
    )


@pytest.mark.parametrize(
    "kwargs",
    [{}, dict(encoding="utf-8", from_logits=False, per="character", name="bpc", dtype="float64")],
)
def test_config_round_trip(kwargs):
    metric = metrics.BitsPerByte(**kwargs)
    check_config_round_trip(metric, kwargs)
    clone = metrics.BitsPerByte.from_config(metric.get_config())
    assert clone.get_config() == metric.get_config()
    assert (clone.encoding, clone.from_logits, clone.per) == (metric.encoding, metric.from_logits, metric.per)


def test_seed_namespace_reexports_the_metric():
    import mlable.metrics

    assert mlable.metrics.BitsPerByte is metrics.BitsPerByte
    assert "BitsPerByte" in metrics.__all__


def _byte_model(mask_zero: bool = False) -> keras.Model:
    keras.utils.set_random_seed(0)
    return keras.Sequential([keras.Input((None,), dtype="int32"), keras.layers.Embedding(256, 8, mask_zero=mask_zero), keras.layers.Dense(256)])


@pytest.mark.parametrize("mask_zero", [False, True])
def test_compile_fit_and_evaluate_equal_the_reference_on_the_model_predictions(mask_zero):
    texts = ["hello wörld", "€ 10", "😀 ok", "abc", "日本", "xyz!", "naïve", "z"]
    y_true = encode(texts, "utf-8", length=16)  # (8, 16)
    x = np.pad(y_true[:, :-1], ((0, 0), (1, 0)))  # next-byte prediction
    model = _byte_model(mask_zero)
    model.compile(
        optimizer="adam",
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=[metrics.BitsPerByte(encoding="utf-8"), metrics.BitsPerByte(encoding="utf-8", per="character", name="bpc")],
        jit_compile=True,
    )
    history = model.fit(x, y_true, batch_size=4, epochs=1, verbose=0)
    assert np.isfinite(history.history["bits_per_byte"][0])
    logs = model.evaluate(x, y_true, batch_size=4, verbose=0, return_dict=True)
    logits = np.asarray(model(x))
    # the Embedding's mask is the one of the inputs: it drops the first target of each row, after the 0 start byte
    weights = (x != 0).astype("float64") if mask_zero else None
    total_bits, total_bytes, total_characters = reference_sums(y_true, logits, "utf-8", weights)
    assert logs["bits_per_byte"] == pytest.approx(total_bits / total_bytes, rel=1e-5)
    assert logs["bpc"] == pytest.approx(total_bits / total_characters, rel=1e-5)


# distribution: two logical CPUs must be set before TensorFlow initializes, so in a fresh process

MIRRORED = textwrap.dedent(
    """
    import json, sys
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import numpy as np
    import keras
    from mlable_keras import metrics

    data = dict(np.load(sys.argv[1]))
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    report = {"replicas": strategy.num_replicas_in_sync}
    single = metrics.BitsPerByte()
    single.update_state(data["y_true"], data["logits"], data["weights"])
    report["single"] = float(single.result())
    with strategy.scope():
        mirrored = metrics.BitsPerByte()
    dataset = tf.data.Dataset.from_tensor_slices((data["y_true"], data["logits"], data["weights"])).batch(4)

    @tf.function
    def step(a, b, c):
        strategy.run(lambda a, b, c: mirrored.update_state(a, b, sample_weight=c), args=(a, b, c))

    for batch in strategy.experimental_distribute_dataset(dataset):
        step(*batch)
    report["mirrored"] = float(mirrored.result())
    print("REPORT " + json.dumps(report))
    """
)


def test_mirrored_strategy_gives_the_single_device_result(tmp_path):
    texts = [SAMPLES[index % len(SAMPLES)] * (1 + index % 2) for index in range(12)]
    y_true = encode(texts, "utf-32-be")
    logits = random_logits(y_true.shape, seed=13)
    weights = np.random.default_rng(13).random((12, y_true.shape[1] // 4)).astype("float32")
    path = str(tmp_path / "data.npz")
    np.savez(path, y_true=y_true, logits=logits, weights=weights)
    environment = dict(os.environ, PYTHONPATH=ROOT, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="3")
    completed = subprocess.run([sys.executable, "-c", MIRRORED, path], capture_output=True, text=True, env=environment, timeout=600)
    assert completed.returncode == 0, completed.stderr[-4000:]
    report = json.loads([line for line in completed.stdout.splitlines() if line.startswith("REPORT ")][-1][len("REPORT "):])
    assert report["replicas"] == 2
    expected = reference_sums(y_true, logits, "utf-32-be", weights)
    assert report["single"] == pytest.approx(expected[0] / expected[1], rel=1e-5)
    assert report["mirrored"] == pytest.approx(report["single"], rel=1e-6)


# errors -----------------------------------------------------------------------------------------

ERRORS = [
    (lambda: bits.byte_log2_likelihood_sums(tf.ones((2, 8), tf.int32), tf.zeros((2, 8, 255))), ValueError,
     r"The last axis of `y_pred` must hold the 256 byte values\. Received: y_true\.shape=\(2, 8\), y_pred\.shape=\(2, 8, 255\)"),
    (lambda: bits.byte_log2_likelihood_sums(tf.ones((2, 6), tf.int32), tf.zeros((2, 6, 256))), ValueError,
     r"The last axis of `y_true` must hold whole UTF-32-BE characters \(4 bytes each\), but has 6 bytes\. Received: y_true\.shape=\(2, 6\)"),
    (lambda: bits.byte_log2_likelihood_sums(tf.ones((2, 8), tf.int32), tf.zeros((2, 4, 256))), ValueError,
     r"`y_true` and `y_pred` must have the same shape \(up to the class axis of y_pred\)\. Received: y_true\.shape=\(2, 8\), y_pred\.shape=\(2, 4, 256\)"),
    (lambda: bits.byte_log2_likelihood_sums(tf.ones((2, 8), tf.int32), tf.zeros((2, 8, 256)), encoding="latin-1"), ValueError,
     r"`encoding` must be one of \('utf-32-be', 'utf-8'\)\. Received: encoding='latin-1'"),
    (lambda: bits.byte_log2_likelihood_sums(tf.ones((2, 8), tf.int32), tf.zeros((2, 8, 256)), sample_weight=tf.ones((2, 8))), ValueError,
     r"`sample_weight` must broadcast to the per-character shape \(2, 2\), aligned on the leading axes .* Received: sample_weight\.shape=\(2, 8\), y_true\.shape=\(2, 8\)"),
    (lambda: bits.byte_log2_likelihood_sums(tf.ones((2, 8), tf.int32), tf.zeros((2, 8, 256)), encoding="utf-8", sample_weight=tf.ones((3,))), ValueError,
     r"`sample_weight` must broadcast to the per-byte shape \(2, 8\).* Received: sample_weight\.shape=\(3,\)"),
    (lambda: bits.byte_log2_likelihood_sums(tf.ones((2, 8), tf.int32), tf.zeros((2, 8, 256)), mask=tf.ones((2, 12), tf.bool)), ValueError,
     r"`mask` must have the shape of `y_true` \(one entry per byte\) or broadcast to the per-character shape \(2, 2\)\. Received: mask\.shape=\(2, 12\)"),
    (lambda: bits.byte_log2_likelihood_sums(tf.ones((8,), tf.int32), tf.zeros((8,))), ValueError,
     r"`y_pred` must have rank >= 2\. Received: y_pred\.shape=\(8,\)"),
    (lambda: bits.byte_log2_likelihood_sums(tf.ones((2, 4), tf.int32), tf.zeros((2, 4, 256)), from_logits="yes"), TypeError,
     r"`from_logits` must be a bool\. Received: from_logits='yes'"),
    (lambda: bits.byte_log2_likelihood_sums(tf.constant([[300, 0, 0, 0]]), tf.zeros((1, 4, 256))), tf.errors.InvalidArgumentError,
     r"`y_true` must hold byte values in \[0, 256\)"),
    (lambda: metrics.BitsPerByte(encoding="utf-16"), ValueError, r"`encoding` must be one of \('utf-32-be', 'utf-8'\)\. Received: encoding='utf-16'"),
    (lambda: metrics.BitsPerByte(encoding=8), TypeError, r"`encoding` must be a string\. Received: encoding=8"),
    (lambda: metrics.BitsPerByte(per="word"), ValueError, r"`per` must be one of \('byte', 'character'\)\. Received: per='word'"),
    (lambda: metrics.BitsPerByte(from_logits=1), TypeError, r"`from_logits` must be a bool\. Received: from_logits=1"),
    (lambda: metrics.BitsPerByte().update_state(tf.ones((2, 6), tf.int32), tf.zeros((2, 6, 256))), ValueError,
     r"whole UTF-32-BE characters \(4 bytes each\), but has 6 bytes"),
]


@pytest.mark.parametrize("call,error,message", ERRORS)
def test_errors(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_encoding_names_are_normalized():
    assert [bits.check_encoding(name) for name in ("UTF-32-BE", "utf32be", "utf_8", "UTF8")] == ["utf-32-be", "utf-32-be", "utf-8", "utf-8"]


def test_docstring_examples():
    import doctest

    result = doctest.testmod(bits, extraglobs={"tf": tf}, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0 and result.attempted > 0

"""The public testing toolkit: every checker catches the bug it claims, and passes on correct code."""

from __future__ import annotations

import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mlable_core import attention, rotary
from mlable_core import testing as core_testing
from mlable_core import text as codec
from mlable_keras import testing
from mlable_keras.layers.reshaping import Divide
from mlable_keras.layers.transformer import FeedForwardGate

FAST = settings(max_examples=5, deadline=None, suppress_health_check=[HealthCheck.too_slow])

CONFIG_ONLY = dict(json=False, symbolic=False, compiled=False, fit=False, mixed_precision=False, saving=False)
SYMBOLIC_ONLY = dict(config=False, json=False, compiled=False, fit=False, mixed_precision=False, saving=False)


# layers with one deliberate bug each ------------------------------------------------------------


@keras.saving.register_keras_serializable(package="mlable_testing_tests")
class Scale(keras.layers.Layer):
    """Multiplies by a constant: correct config and shapes."""

    def __init__(self, scale: float = 2.0, **kwargs):
        super().__init__(**kwargs)
        self.scale = float(scale)

    def call(self, inputs):
        return inputs * self.scale

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        return {**super().get_config(), "scale": self.scale}


@keras.saving.register_keras_serializable(package="mlable_testing_tests")
class ForgetfulScale(Scale):
    """Forgets ``scale`` in its config: a reloaded layer silently gets the default."""

    def get_config(self):
        config = super().get_config()
        del config["scale"]
        return config


@keras.saving.register_keras_serializable(package="mlable_testing_tests")
class WrongShape(Scale):
    """Keeps half of the last axis, but claims to keep the input shape."""

    def call(self, inputs):
        return inputs[..., : inputs.shape[-1] // 2] * self.scale


def test_check_layer_passes_a_correct_layer():
    testing.check_layer(Scale, dict(scale=3.0), np.ones((2, 3, 4), "float32"), saving=False)


def test_check_layer_config_catches_a_missing_argument():
    with pytest.raises(AssertionError, match=r"check_layer\[config\] ForgetfulScale: get_config\(\) misses the constructor arguments \['scale'\]"):
        testing.check_layer(ForgetfulScale, dict(scale=3.0), np.ones((2, 4), "float32"), **CONFIG_ONLY)


def test_check_layer_symbolic_catches_a_wrong_compute_output_shape():
    with pytest.raises(AssertionError, match=r"check_layer\[symbolic\] WrongShape: .*\(2, 3, 2\).*\(2, 3, 4\)"):
        testing.check_layer(WrongShape, dict(scale=3.0), np.ones((2, 3, 4), "float32"), **SYMBOLIC_ONLY)


def test_check_layer_restores_the_dtype_policy():
    before = keras.config.dtype_policy().name
    testing.check_layer(Scale, dict(), np.ones((2, 4), "float32"), **{**SYMBOLIC_ONLY, "symbolic": False, "mixed_precision": True})
    assert keras.config.dtype_policy().name == before


SAVING_ONLY = dict(config=False, json=False, symbolic=False, compiled=False, fit=False, mixed_precision=False)


def test_check_layer_saving_reloads_a_layer_of_a_test_module_in_a_fresh_process():
    # the fresh process imports this test module (Scale.__module__) to find the class
    testing.check_layer(Scale, dict(scale=3.0), np.ones((2, 4), "float32"), **SAVING_ONLY)


def test_check_layer_saving_catches_a_config_that_loses_an_argument():
    with pytest.raises(AssertionError, match=r"check_layer\[saving\] ForgetfulScale: the reloaded model \(same process\): output 0 differs by max \|difference\| = [0-9.]+ > atol=1e-05"):
        testing.check_layer(ForgetfulScale, dict(scale=3.0), np.ones((2, 4), "float32"), **SAVING_ONLY)


def test_check_layer_on_library_layers_with_fresh_process_saving():
    data = np.random.default_rng(0).normal(size=(2, 3, 5)).astype("float32")
    layer = testing.check_layer(FeedForwardGate, dict(input_dim=4, hidden_dim=8), data, saving=True)
    assert tuple(layer(data).shape) == (2, 3, 4)
    testing.check_layer(Divide, dict(input_axis=2, output_axis=1, factor=2), data[..., :4], saving=False)


# cached decoding --------------------------------------------------------------------------------


def _full_pass(inputs):
    x = tf.convert_to_tensor(inputs)
    return attention.attention(x, x, x, use_causal_mask=True)


def _cached_step(chunk, cache, step):
    x = tf.convert_to_tensor(chunk)
    return attention.cached_attention(x, x, x, cache, step=step)


def _accumulating_step(chunk, cache, step):
    # the bug: the written slots hold old + new instead of new (harmless only on a zero cache)
    x = tf.convert_to_tensor(chunk)
    size = x.shape[1]
    keys = x + cache[0, :, step : step + size]
    values = x + cache[1, :, step : step + size]
    output, _ = attention.cached_attention(x, keys, values, cache, step=step)
    return output, attention.update_cache(cache, keys, values, step)


@st.composite
def decode_cases(draw):
    batch, length, heads, head_dim = draw(st.integers(1, 2)), draw(st.integers(2, 6)), draw(st.integers(1, 2)), draw(st.integers(1, 4))
    inputs = draw(core_testing.float_arrays((batch, length, heads, head_dim), min_value=-2, max_value=2))
    cuts = sorted(draw(st.sets(st.integers(1, length - 1), min_size=1, max_size=length - 1)))
    chunks = tuple(right - left for left, right in zip([0, *cuts], [*cuts, length]))
    cache = draw(core_testing.caches(batch, length + draw(st.integers(0, 2)), heads, head_dim, min_value=1, max_value=4))
    return inputs, chunks, cache


@FAST
@given(decode_cases())
def test_check_cached_decoding_passes_the_library_cache(case):
    inputs, chunks, cache = case
    core_testing.check_cached_decoding(_cached_step, _full_pass, inputs, chunks, tf.constant(cache), atol=1e-5)


@FAST
@given(decode_cases())
def test_check_cached_decoding_catches_an_accumulating_cache(case):
    inputs, chunks, cache = case
    with pytest.raises(AssertionError, match=r"check_cached_decoding: decoding in chunks differs from one full pass: max \|difference\| = .* > atol=1e-05"):
        core_testing.check_cached_decoding(_accumulating_step, _full_pass, inputs, chunks, tf.constant(cache), atol=1e-5)


def test_check_cached_decoding_rejects_chunks_that_do_not_cover_the_inputs():
    with pytest.raises(ValueError, match=r"`chunk_sizes` must be positive ints summing to the length L=4"):
        core_testing.check_cached_decoding(_cached_step, _full_pass, np.zeros((1, 4, 1, 2), "float32"), (1, 2), None)


# relative positions -----------------------------------------------------------------------------

WIDTH, HEADS = 8, 2
QUERY = keras.layers.Dense(WIDTH, use_bias=False, kernel_initializer=keras.initializers.GlorotUniform(seed=1))
KEY = keras.layers.Dense(WIDTH, use_bias=False, kernel_initializer=keras.initializers.GlorotUniform(seed=2))


def _scores(query, key):
    query = tf.reshape(query, (query.shape[0], query.shape[1], HEADS, -1))  # (B, L, N, H)
    key = tf.reshape(key, (key.shape[0], key.shape[1], HEADS, -1))  # (B, L, N, H)
    return tf.einsum("bqnh,bknh->bnqk", query, key)


def _rope_after_projection(x, positions):
    x = tf.convert_to_tensor(x)
    query = rotary.rotate(tf.reshape(QUERY(x), (*x.shape[:2], HEADS, -1)), positions=positions)
    key = rotary.rotate(tf.reshape(KEY(x), (*x.shape[:2], HEADS, -1)), positions=positions)
    return _scores(query, key)


def _rope_before_projection(x, positions):
    rotated = rotary.rotate(tf.convert_to_tensor(x), positions=positions)
    return _scores(QUERY(rotated), KEY(rotated))


@FAST
@given(core_testing.float_arrays(st.tuples(st.integers(1, 2), st.integers(2, 5), st.just(WIDTH)), min_value=-1, max_value=1))
def test_check_relative_positions_passes_rope_on_queries_and_keys(x):
    core_testing.check_relative_positions(_rope_after_projection, x, shifts=(1, 5, 32), atol=1e-4)


def test_check_relative_positions_catches_rope_before_the_projection():
    x = np.random.default_rng(0).normal(size=(2, 4, WIDTH)).astype("float32")
    with pytest.raises(AssertionError, match=r"check_relative_positions: outputs for positions arange\(L\) \+ 1 differ .* > atol=0.0001"):
        core_testing.check_relative_positions(_rope_before_projection, x, shifts=(1, 5, 32), atol=1e-4)


# metrics ----------------------------------------------------------------------------------------


class MeanOfBatchMeans(keras.metrics.Metric):
    """Mean absolute error computed wrongly: the mean of the batch means."""

    def __init__(self, name="mean_of_batch_means", **kwargs):
        super().__init__(name=name, **kwargs)
        self.total = self.add_variable(shape=(), initializer="zeros", name="total")
        self.batches = self.add_variable(shape=(), initializer="zeros", name="batches")

    def update_state(self, y_true, y_pred, sample_weight=None):
        self.total.assign_add(tf.reduce_mean(tf.abs(tf.cast(y_true, "float32") - tf.cast(y_pred, "float32"))))
        self.batches.assign_add(1.0)

    def result(self):
        return tf.math.divide_no_nan(self.total, self.batches)


class NoReset(keras.metrics.MeanAbsoluteError):
    """Forgets to clear its state."""

    def reset_state(self):
        pass


def _mean_absolute_error(y_true, y_pred, sample_weight):
    rows = np.abs(y_true - y_pred).mean(axis=-1)
    weights = np.ones_like(rows) if sample_weight is None else sample_weight
    return float((rows * weights).sum() / weights.sum())


METRIC_DATA = np.random.default_rng(0).normal(size=(2, 7, 3)).astype("float32")


@pytest.mark.parametrize("sample_weight", [None, np.linspace(0.5, 2.0, 7).astype("float32")])
def test_check_metric_passes_a_keras_metric(sample_weight):
    testing.check_metric(keras.metrics.MeanAbsoluteError, METRIC_DATA[0], METRIC_DATA[1], _mean_absolute_error, sample_weight, splits=3, atol=1e-5)


def test_check_metric_catches_a_mean_of_batch_means():
    with pytest.raises(AssertionError, match=r"check_metric\[split\] MeanOfBatchMeans: feeding batches of sizes \[1, 2, 4\] gives"):
        testing.check_metric(MeanOfBatchMeans, METRIC_DATA[0], METRIC_DATA[1], _mean_absolute_error, splits=3, atol=1e-5)


def test_check_metric_catches_a_missing_reset():
    with pytest.raises(AssertionError, match=r"check_metric\[reset\] NoReset: after reset_state the result is"):
        testing.check_metric(NoReset, METRIC_DATA[0], METRIC_DATA[1], _mean_absolute_error, atol=1e-5)


def test_check_metric_catches_a_wrong_reference():
    with pytest.raises(AssertionError, match=r"check_metric\[reference\] MeanAbsoluteError: the result .* differs from the reference"):
        testing.check_metric(keras.metrics.MeanAbsoluteError, METRIC_DATA[0], METRIC_DATA[1], lambda *_: 0.0, atol=1e-5)


# strategies -------------------------------------------------------------------------------------


@FAST
@given(core_testing.shapes(min_rank=2, max_rank=3, max_side=4, none_probability=0.5))
def test_shapes_have_the_rank_and_sides_asked(shape):
    assert 2 <= len(shape) <= 3 and all(side is None or 1 <= side <= 4 for side in shape)


def test_shapes_give_none_dims():
    from hypothesis import find

    assert None in find(core_testing.shapes(none_probability=0.3), lambda shape: None in shape)


@FAST
@given(st.integers(2, 5).flatmap(lambda rank: st.tuples(st.just(rank), core_testing.axis_pairs(rank, signed=True))))
def test_axis_pairs_are_distinct(case):
    rank, (first, second) = case
    assert -rank <= first < rank and -rank <= second < rank and first % rank != second % rank


@FAST
@given(st.integers(1, 60).flatmap(lambda n: st.tuples(st.just(n), core_testing.divisors_of(n))))
def test_divisors_of_divide(case):
    n, divisor = case
    assert n % divisor == 0


@FAST
@given(core_testing.float_arrays(core_testing.shapes(max_rank=3), "float16", -100, 100))
def test_float_arrays_are_finite_and_in_range(array):
    assert array.dtype == np.float16 and np.isfinite(array).all() and (np.abs(array) <= 100).all()


def test_utf8_texts_reach_the_astral_planes_only_when_asked():
    from hypothesis import find

    assert max(map(ord, find(core_testing.utf8_texts(), lambda text: any(ord(c) > 0xFFFF for c in text)))) > 0xFFFF

    @FAST
    @given(core_testing.utf8_texts(astral=False))
    def bmp_only(text):
        assert all(ord(character) <= 0xFFFF for character in text) and "\x00" not in text

    bmp_only()


@FAST
@given(core_testing.byte_tokens(token_size=6))
def test_byte_tokens_decode_back_to_the_text(case):
    text, tokens = case
    assert tokens.dtype == np.uint8 and tokens.shape[-1] == 6
    assert codec.decode(tokens.reshape(-1)).numpy() == text.encode("utf-8")


@FAST
@given(core_testing.logits(), core_testing.caches(2, 5, 3, 4), core_testing.positions(3, 4, max_offset=9))
def test_logits_caches_and_positions(logits, cache, positions):
    assert logits.dtype == np.float32 and np.isfinite(logits).any(axis=-1).all()
    assert cache.shape == (2, 2, 5, 3, 4) and cache.dtype == np.float32
    assert positions.shape == (3, 4) and (np.diff(positions, axis=-1) == 1).all() and (positions[:, 0] <= 9).all()


@FAST
@given(core_testing.boolean_masks((2, 3)))
def test_boolean_masks(mask):
    assert mask.dtype == np.bool_ and mask.shape == (2, 3)


@pytest.mark.parametrize(
    ("module", "strategy"),
    [(core_testing, "shapes"), (core_testing, "float_arrays"), (testing, "shapes"), (testing, "caches")],
)
def test_strategies_without_hypothesis_say_how_to_install_it(monkeypatch, module, strategy):
    for name in [name for name in sys.modules if name == "hypothesis" or name.startswith("hypothesis.")]:
        monkeypatch.setitem(sys.modules, name, None)
    expected = f"{module.__name__} needs hypothesis: pip install 'mlable[test]'"
    with pytest.raises(ImportError, match=expected.replace("[", r"\[").replace("]", r"\]").replace(".", r"\.")):
        getattr(module, strategy)((2, 3)) if strategy == "float_arrays" else getattr(module, strategy)()
    # the checkers need no hypothesis
    core_testing.check_relative_positions(lambda x, p: x, np.zeros((1, 2)), shifts=(1,))

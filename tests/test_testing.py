"""The public testing toolkit: every checker catches the bug it claims, and passes on correct code.

Each broken layer, cache, RoPE placement or metric below has one planted bug and
a correct twin; the checker must fail on the first with a message that names the
property and the numbers, and pass on the second.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mlable_core import attention, pytest_plugin, rotary
from mlable_core import testing as core_testing
from mlable_core import text as codec
from mlable_keras import testing
from mlable_keras.layers.reshaping import Divide
from mlable_keras.layers.transformer import FeedForwardGate
from tests.test_reshaping import numpy_divide

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAST = settings(max_examples=5, deadline=None, suppress_health_check=[HealthCheck.too_slow])
PACKAGE = "mlable_testing_tests"

ONLY = {part: dict({other: other == part for other in testing.PARTS}) for part in testing.PARTS}
NOTHING = {part: False for part in testing.PARTS}  # the eager call and its expectations only

RNG = np.random.default_rng(0)
X = RNG.normal(size=(2, 3, 4)).astype("float32")  # (B, S, D)
IDS = RNG.integers(0, 10, size=(2, 5)).astype("int32")  # (B, S)

# the correct twins are saved in this queue and reloaded together in one fresh process (the last test)
RELOADS = testing.ReloadQueue()


def only(*parts: str) -> dict[str, bool]:
    return {part: part in parts for part in testing.PARTS}


# correct layers ----------------------------------------------------------------------------------


@keras.saving.register_keras_serializable(package=PACKAGE)
class Scale(keras.layers.Layer):
    """Multiplies by a constant: no weights, correct config and shapes."""

    def __init__(self, scale: float = 2.0, **kwargs):
        super().__init__(**kwargs)
        self.scale = float(scale)

    def call(self, inputs):
        return inputs * self.scale

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        return {**super().get_config(), "scale": self.scale}


@keras.saving.register_keras_serializable(package=PACKAGE)
class Linear(keras.layers.Layer):
    """``x @ kernel + bias``: the weights are built in ``build``."""

    def __init__(self, units: int = 3, **kwargs):
        super().__init__(**kwargs)
        self.units = int(units)

    def build(self, input_shape):
        self.kernel = self.add_weight(shape=(input_shape[-1], self.units), initializer="glorot_uniform", name="kernel")
        self.bias = self.add_weight(shape=(self.units,), initializer="zeros", name="bias")

    def call(self, inputs):
        return keras.ops.matmul(inputs, self.kernel) + self.bias

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)[:-1] + (self.units,)

    def get_config(self):
        return {**super().get_config(), "units": self.units}


@keras.saving.register_keras_serializable(package=PACKAGE)
class GatedSum(keras.layers.Layer):
    """Two inputs and an optional mask: ``(a * w + b) * mask``; dropout in training."""

    def __init__(self, rate: float = 0.5, **kwargs):
        super().__init__(**kwargs)
        self.rate = float(rate)
        self.supports_masking = True
        self.dropout = keras.layers.Dropout(self.rate, dtype=self.dtype_policy)

    def build(self, first_shape, second_shape=None):
        self.weight = self.add_weight(shape=(first_shape[-1],), initializer="ones", name="weight")

    def call(self, first, second, mask=None, training=None):
        outputs = self.dropout(first * self.weight, training=training) + second
        if mask is not None:
            outputs = outputs * keras.ops.cast(mask, outputs.dtype)[..., None]
        return outputs

    def compute_output_shape(self, first_shape, second_shape=None):
        return tuple(first_shape)

    def get_config(self):
        return {**super().get_config(), "rate": self.rate}


@keras.saving.register_keras_serializable(package=PACKAGE)
class TwoHeads(keras.layers.Layer):
    """A dict of two outputs, each from its own sublayer (so each weight feeds one output only)."""

    def __init__(self, units: int = 2, **kwargs):
        super().__init__(**kwargs)
        self.units = int(units)
        self.left = keras.layers.Dense(units, name="left", dtype=self.dtype_policy)
        self.right = keras.layers.Dense(units + 1, name="right", dtype=self.dtype_policy)

    def build(self, input_shape):
        self.left.build(input_shape)
        self.right.build(input_shape)

    def call(self, inputs):
        return {"left": self.left(inputs), "right": self.right(inputs)}

    def compute_output_shape(self, input_shape):
        return {"left": self.left.compute_output_shape(input_shape), "right": self.right.compute_output_shape(input_shape)}

    def get_config(self):
        return {**super().get_config(), "units": self.units}


@keras.saving.register_keras_serializable(package=PACKAGE)
class GuideStyleBlock(keras.layers.Layer):
    """The Keras guide's style: sublayers made in ``__init__``, no ``build`` (Keras builds it by tracing ``call``)."""

    def __init__(self, units: int = 4, **kwargs):
        super().__init__(**kwargs)
        self.units = int(units)
        self.first = keras.layers.Dense(units, activation="relu", dtype=self.dtype_policy)
        self.second = keras.layers.Dense(units, dtype=self.dtype_policy)

    def call(self, inputs):
        return self.second(self.first(inputs))

    def get_config(self):
        return {**super().get_config(), "units": self.units}


@keras.saving.register_keras_serializable(package=PACKAGE)
class LowRank(keras.layers.Layer):
    """LoRA-style ``x @ (a @ b)`` with ``b`` initialised to zeros: ``a`` starts with an all-zero gradient, legitimately."""

    def __init__(self, units: int = 3, rank: int = 2, **kwargs):
        super().__init__(**kwargs)
        self.units, self.rank = int(units), int(rank)

    def build(self, input_shape):
        self.a = self.add_weight(shape=(input_shape[-1], self.rank), initializer="glorot_uniform", name="a")
        self.b = self.add_weight(shape=(self.rank, self.units), initializer="zeros", name="b")

    def call(self, inputs):
        return keras.ops.matmul(keras.ops.matmul(inputs, self.a), self.b)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)[:-1] + (self.units,)

    def get_config(self):
        return {**super().get_config(), "units": self.units, "rank": self.rank}


@keras.saving.register_keras_serializable(package=PACKAGE)
class StableSoftmax(keras.layers.Layer):
    """``softmax(x * temperature)`` computed in float32, then cast to the compute dtype."""

    def __init__(self, temperature: float = 1.0, **kwargs):
        super().__init__(**kwargs)
        self.temperature = float(temperature)

    def call(self, inputs):
        scores = keras.ops.cast(inputs, "float32") * self.temperature
        exponentials = keras.ops.exp(scores - keras.ops.max(scores, axis=-1, keepdims=True))
        return keras.ops.cast(exponentials / keras.ops.sum(exponentials, axis=-1, keepdims=True), self.compute_dtype)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        return {**super().get_config(), "temperature": self.temperature}


@keras.saving.register_keras_serializable(package=PACKAGE)
class SineFeatures(keras.layers.Layer):
    """``x + sin(position * frequency)``, the angles computed in float32 (long sequences stay accurate in float16)."""

    def call(self, inputs):
        positions = keras.ops.cast(keras.ops.arange(keras.ops.shape(inputs)[1]), "float32")
        frequencies = keras.ops.cast(keras.ops.arange(inputs.shape[-1]) + 1, "float32") / 7.0
        angles = self._angles(positions[:, None] * frequencies[None, :])
        return inputs + keras.ops.cast(keras.ops.sin(angles), self.compute_dtype)[None]

    def _angles(self, angles):
        return angles

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)


CORRECT_LAYERS = [
    pytest.param(Scale, dict(scale=3.0), X, None, id="weightless"),
    pytest.param(Linear, dict(units=5), X, None, id="weights"),
    pytest.param(keras.layers.Embedding, dict(input_dim=10, output_dim=3), IDS, None, id="integer-inputs-keras-embedding"),
    pytest.param(GatedSum, dict(rate=0.5), (X, X[::-1] + 1), dict(mask=np.asarray([[1, 1, 0], [1, 0, 0]], bool)), id="two-inputs-mask-dropout"),
    pytest.param(TwoHeads, dict(units=2), X, None, id="dict-outputs"),
    pytest.param(keras.layers.Add, dict(), ([X, X[::-1]],), None, id="list-input-keras-add"),
    pytest.param(GuideStyleBlock, dict(units=4), X, None, id="sublayers-without-build"),
    pytest.param(keras.layers.BatchNormalization, dict(), X, None, id="non-trainable-state-keras-batchnorm"),
    pytest.param(LowRank, dict(units=3, rank=2), X, None, id="zero-initialised-factor"),
    pytest.param(StableSoftmax, dict(temperature=1.0), X, None, id="softmax-in-float32"),
    pytest.param(SineFeatures, dict(), RNG.normal(size=(1, 300, 4)).astype("float32"), None, id="long-trigonometry-in-float32"),
]


@pytest.mark.parametrize(("layer_cls", "init_kwargs", "inputs", "call_kwargs"), CORRECT_LAYERS)
def test_check_layer_passes_correct_layers(layer_cls, init_kwargs, inputs, call_kwargs):
    layer = testing.check_layer(layer_cls, init_kwargs, inputs, call_kwargs, fresh_process=RELOADS)
    assert layer.built


def test_check_layer_passes_library_layers_and_their_expectations():
    data = RNG.normal(size=(2, 3, 5)).astype("float32")
    layer = testing.check_layer(
        FeedForwardGate, dict(input_dim=4, hidden_dim=8), data, fresh_process=RELOADS,
        expected_output_shape=(2, 3, 4), expected_num_trainable_weights=6, expected_num_non_trainable_weights=0,
    )
    assert tuple(layer(data).shape) == (2, 3, 4)
    divide = dict(input_axis=2, output_axis=1, factor=2)
    testing.check_layer(
        Divide, divide, data[..., :4], saving=False,
        reference_fn=lambda layer, x: numpy_divide(x, 2, 1, 2, False),
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(expected_output_shape=(2, 3, 5)), r"check_layer\[call\] Linear: output 0 has the shape \(2, 3, 3\), expected \(2, 3, 5\); inputs float32 \(2, 3, 4\)"),
        (dict(expected_num_trainable_weights=1), r"check_layer\[call\] Linear: the layer has 2 trainable weights .*, expected 1"),
        (dict(reference_fn=lambda layer, x: x[..., :3]), r"check_layer\[call\] Linear: the layer against reference_fn: output 0 differs by max \|difference\| = [0-9.e+-]+ > "),
    ],
)
def test_check_layer_checks_the_expectations(kwargs, message):
    with pytest.raises(AssertionError, match=message):
        testing.check_layer(Linear, dict(units=3), X, **NOTHING, **kwargs)


# layers with one planted bug each ----------------------------------------------------------------


@keras.saving.register_keras_serializable(package=PACKAGE)
class ForgetfulScale(Scale):
    """Bug: ``get_config`` forgets ``scale``; a rebuilt layer silently gets the default."""

    def get_config(self):
        config = super().get_config()
        del config["scale"]
        return config


@keras.saving.register_keras_serializable(package=PACKAGE)
class RoundingScale(Scale):
    """Bug: ``get_config`` stores ``scale`` rounded to an int."""

    def get_config(self):
        return {**super().get_config(), "scale": round(self.scale)}


@keras.saving.register_keras_serializable(package=PACKAGE)
class RenamedUnits(Linear):
    """Bug: ``get_config`` stores ``units`` under another name, which ``__init__`` does not take."""

    def get_config(self):
        config = super().get_config()
        config["num_units"] = config.pop("units")
        return config


class UnregisteredScale(Scale):
    """Bug: not registered with ``keras.saving.register_keras_serializable`` (the parent is, the subclass is not)."""


@keras.saving.register_keras_serializable(package=PACKAGE)
class LazyParent(keras.layers.Layer):
    """Bug: ``build`` creates its own weight but leaves the sublayer to the first call."""

    def __init__(self, units: int = 3, **kwargs):
        super().__init__(**kwargs)
        self.units = int(units)
        self.dense = keras.layers.Dense(units, dtype=self.dtype_policy)

    def build(self, input_shape):
        self.scale = self.add_weight(shape=(self.units,), initializer="ones", name="scale")

    def call(self, inputs):
        return self.dense(inputs) * self.scale

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)[:-1] + (self.units,)

    def get_config(self):
        return {**super().get_config(), "units": self.units}


@keras.saving.register_keras_serializable(package=PACKAGE)
class HalfWidth(Scale):
    """Bug: keeps half of the last axis, but ``compute_output_shape`` claims the input shape."""

    def call(self, inputs):
        return inputs[..., : inputs.shape[-1] // 2] * self.scale


@keras.saving.register_keras_serializable(package=PACKAGE)
class WrongRank(Scale):
    """Bug: ``compute_output_shape`` drops the last axis."""

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)[:-1]


@keras.saving.register_keras_serializable(package=PACKAGE)
class DoubleLength(Scale):
    """Bug: repeats the sequence, but ``compute_output_shape`` breaks on an unknown length (``None * 2``)."""

    def call(self, inputs):
        return keras.ops.concatenate([inputs, inputs], axis=1) * self.scale

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[1] * 2, *input_shape[2:])


@keras.saving.register_keras_serializable(package=PACKAGE)
class GuessedLength(Scale):
    """Bug: ``compute_output_shape`` writes a length of 1 when the length is unknown."""

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[1] or 1, *input_shape[2:])


@keras.saving.register_keras_serializable(package=PACKAGE)
class ArgMax(keras.layers.Layer):
    """Bug: returns int32 indices, but has no ``compute_output_spec``, so Keras announces the float compute dtype."""

    def call(self, inputs):
        return keras.ops.cast(keras.ops.argmax(inputs, axis=-1), "int32")

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)[:-1]


@keras.saving.register_keras_serializable(package=PACKAGE)
class Counting(Scale):
    """Bug: a Python side effect in ``call`` (a call counter) changes the outputs, so traced != eager."""

    def __init__(self, scale: float = 2.0, **kwargs):
        super().__init__(scale, **kwargs)
        self.calls = 0

    def call(self, inputs):
        self.calls += 1
        return inputs * (self.scale + self.calls)


@keras.saving.register_keras_serializable(package=PACKAGE)
class StaticLength(Scale):
    """Bug: reads the sequence length in Python (``x.shape[1] or 1``), which is None when traced with unknown dims."""

    def call(self, inputs):
        return inputs * float(inputs.shape[1] or 1)


@keras.saving.register_keras_serializable(package=PACKAGE)
class RandomAtInference(Scale):
    """Bug: adds noise at inference too (not only in training)."""

    def call(self, inputs):
        return inputs + keras.random.uniform(keras.ops.shape(inputs))


@keras.saving.register_keras_serializable(package=PACKAGE)
class ArrayInConfig(Scale):
    """Bug: ``get_config`` holds a numpy array, which does not come back from JSON as ``__init__`` expects."""

    def __init__(self, scale: float = 2.0, table=None, **kwargs):
        super().__init__(scale, **kwargs)
        self.table = np.ones(4, "float32") if table is None else table

    def call(self, inputs):
        return inputs * self.table[: inputs.shape[-1]]

    def get_config(self):
        return {**super().get_config(), "table": self.table}


@keras.saving.register_keras_serializable(package=PACKAGE)
class FunctionInConfig(Scale):
    """Bug: ``get_config`` holds a function object, which the JSON round trip turns into a dict."""

    def __init__(self, scale: float = 2.0, activation=tf.nn.relu, **kwargs):
        super().__init__(scale, **kwargs)
        self.activation = activation

    def call(self, inputs):
        return self.activation(inputs) * self.scale

    def get_config(self):
        return {**super().get_config(), "activation": self.activation}


@keras.saving.register_keras_serializable(package=PACKAGE)
class ReadsNumpy(Scale):
    """Bug: reads a tensor value with ``.numpy()`` in ``call`` (works eagerly only)."""

    def call(self, inputs):
        return inputs * float(keras.ops.max(inputs).numpy())


@keras.saving.register_keras_serializable(package=PACKAGE)
class BranchesOnValue(Scale):
    """Bug: Python branching on a tensor value (``bool(tensor)``), which a graph cannot decide."""

    def call(self, inputs):
        if bool(keras.ops.max(inputs) > 0):
            return inputs * self.scale
        return inputs


@keras.saving.register_keras_serializable(package=PACKAGE)
class HostCallback(Scale):
    """Bug: goes through a Python callback (``tf.numpy_function``): fine in tf.function, impossible under XLA."""

    def call(self, inputs):
        doubled = tf.numpy_function(lambda array: array * 2, [inputs], inputs.dtype)
        return tf.ensure_shape(doubled, inputs.shape) * self.scale


@keras.saving.register_keras_serializable(package=PACKAGE)
class FrozenKernel(Linear):
    """Bug: ``tf.stop_gradient`` on the kernel: fit trains the bias only."""

    def call(self, inputs):
        return keras.ops.matmul(inputs, keras.ops.stop_gradient(self.kernel)) + self.bias


@keras.saving.register_keras_serializable(package=PACKAGE)
class ZeroedKernel(Linear):
    """Bug: the kernel is multiplied by a zero mask: its gradient is zero forever, only the bias learns."""

    def call(self, inputs):
        return keras.ops.matmul(inputs, self.kernel * keras.ops.zeros_like(self.kernel)) + self.bias


@keras.saving.register_keras_serializable(package=PACKAGE)
class NonTrainable(Linear):
    """Bug: its weights are created with ``trainable=False`` by mistake."""

    def build(self, input_shape):
        self.kernel = self.add_weight(shape=(input_shape[-1], self.units), initializer="glorot_uniform", trainable=False, name="kernel")
        self.bias = self.add_weight(shape=(self.units,), initializer="zeros", trainable=False, name="bias")


@keras.saving.register_keras_serializable(package=PACKAGE)
class Float32Output(Linear):
    """Bug: ignores its dtype policy, returning float32 under mixed precision."""

    def call(self, inputs):
        return keras.ops.cast(super().call(inputs), "float32")


@keras.saving.register_keras_serializable(package=PACKAGE)
class HalfVariables(Linear):
    """Bug: creates its variables in the compute dtype (float16) instead of the variable dtype."""

    def build(self, input_shape):
        self.kernel = self.add_weight(shape=(input_shape[-1], self.units), initializer="glorot_uniform", dtype=self.compute_dtype, name="kernel")
        self.bias = self.add_weight(shape=(self.units,), initializer="zeros", dtype=self.compute_dtype, name="bias")


@keras.saving.register_keras_serializable(package=PACKAGE)
class KeepsSublayerDtype(TwoHeads):
    """Bug: does not hand its dtype policy to its sublayers, which stay float32 under ``dtype='mixed_bfloat16'``."""

    def __init__(self, units: int = 2, **kwargs):
        keras.layers.Layer.__init__(self, **kwargs)
        self.units = int(units)
        self.left = keras.layers.Dense(units, name="left")
        self.right = keras.layers.Dense(units + 1, name="right")


@keras.saving.register_keras_serializable(package=PACKAGE)
class NaiveSoftmax(StableSoftmax):
    """Bug: ``exp(x) / sum(exp(x))`` in the compute dtype: float16 overflows from x > 11."""

    def call(self, inputs):
        exponentials = keras.ops.exp(inputs * self.temperature)
        return exponentials / keras.ops.sum(exponentials, axis=-1, keepdims=True)


@keras.saving.register_keras_serializable(package=PACKAGE)
class HalfAngles(SineFeatures):
    """Bug: the angles are rounded to the compute dtype: float16 loses them along a long sequence."""

    def _angles(self, angles):
        return keras.ops.cast(keras.ops.cast(angles, self.compute_dtype), "float32")


@keras.saving.register_keras_serializable(package=PACKAGE)
class WeightInCall(Scale):
    """Bug: creates its weight in ``call``."""

    def call(self, inputs):
        if not hasattr(self, "offset"):
            self.offset = self.add_weight(shape=(inputs.shape[-1],), initializer="ones", name="offset")
        return inputs + self.offset


@keras.saving.register_keras_serializable(package=PACKAGE)
class UnsavedWeights(Linear):
    """Bug: saves none of its weights, so a reloaded layer keeps a fresh random initialisation."""

    def save_own_variables(self, store):
        pass

    def load_own_variables(self, store):
        pass


@keras.saving.register_keras_serializable(package=PACKAGE)
class ReturnsNone(Linear):
    """Bug: returns ``None`` for an absent extra output, which functional models reject."""

    def call(self, inputs):
        return super().call(inputs), None


@keras.saving.register_keras_serializable(package=PACKAGE)
class RandomTable(Scale):
    """Bug: holds a random table outside its weights (built in ``build``), which no config or save keeps."""

    def build(self, input_shape):
        self.table = np.random.default_rng().normal(size=(input_shape[-1],)).astype("float32")

    def call(self, inputs):
        return inputs * self.table


BROKEN_LAYERS = [
    pytest.param(ForgetfulScale, dict(scale=3.0), X, only("config"), r"check_layer\[config\] ForgetfulScale: get_config\(\) misses the constructor arguments \['scale'\]", id="config-omits-argument"),
    pytest.param(RoundingScale, dict(scale=2.5), X, only("config"), r"check_layer\[config\] RoundingScale: get_config\(\) stores the argument 'scale' wrongly: the object has scale=2.5, the one rebuilt by from_config\(get_config\(\)\) has scale=2.0", id="config-mis-stores-argument"),
    pytest.param(RenamedUnits, dict(units=3), X, only("config"), r"check_layer\[config\] RenamedUnits: get_config\(\) misses the constructor arguments \['units'\]", id="config-renames-argument"),
    pytest.param(RenamedUnits, dict(), X, only("config"), r"check_layer\[config\] RenamedUnits: from_config\(get_config\(\)\) raised TypeError: .*num_units", id="from-config-fails"),
    pytest.param(UnregisteredScale, dict(scale=3.0), X, only("json"), r"check_layer\[json\] UnregisteredScale: the class is not registered with Keras .*register_keras_serializable", id="not-registered"),
    pytest.param(LazyParent, dict(units=3), X, {**only("saving"), "fresh_process": False}, r"check_layer\[saving\] LazyParent: build\(\) creates 1 weights \['scale \(3,\)'\], a call creates 3 .*the sublayers \['dense.*'\] stay unbuilt: build\(\) must create every weight", id="build-skips-sublayer"),
    pytest.param(HalfWidth, dict(scale=3.0), X, only("symbolic"), r"check_layer\[symbolic\] HalfWidth: the symbolic call \(compute_output_shape / compute_output_spec\) on keras.Input of shapes \[\(2, 3, 4\)\] gives output 0 the shape \(2, 3, 4\), the call returns \(2, 3, 2\); inputs float32 \(2, 3, 4\)", id="output-shape-wrong-dim"),
    pytest.param(WrongRank, dict(scale=3.0), X, only("symbolic"), r"check_layer\[symbolic\] WrongRank: .* gives output 0 the shape \(2, 3\), the call returns \(2, 3, 4\)", id="output-shape-wrong-rank"),
    pytest.param(DoubleLength, dict(), X, only("symbolic"), r"check_layer\[symbolic\] DoubleLength: the symbolic call .* on keras.Input of shapes \[\(None, None, 4\)\] raised TypeError: .*NoneType.*\(a shape computation does not handle unknown \(None\) dims", id="output-shape-crashes-on-none"),
    pytest.param(GuessedLength, dict(), X, only("symbolic"), r"check_layer\[symbolic\] GuessedLength: .* of shapes \[\(None, None, 4\)\] gives output 0 the shape \(None, 1, 4\), the call returns \(2, 3, 4\)", id="output-shape-wrong-on-none"),
    pytest.param(ArgMax, dict(), X, only("symbolic"), r"check_layer\[symbolic\] ArgMax: .* gives output 0 the dtype float32, the call returns int32", id="output-spec-wrong-dtype"),
    pytest.param(Counting, dict(), X, only(), r"check_layer\[call\] Counting: a second eager call on the same inputs: output 0 differs by max \|difference\| = [0-9.]+ > .*: call\(\) is not deterministic at inference \(training=False\): .*a Python counter", id="python-side-effect"),
    pytest.param(RandomAtInference, dict(), X, only(), r"check_layer\[call\] RandomAtInference: a second eager call on the same inputs: output 0 differs .*random ops outside training", id="random-at-inference"),
    pytest.param(StaticLength, dict(), X, only("compiled"), r"check_layer\[compiled\] StaticLength: tf.function against the eager call: output 0 differs by max \|difference\| = [0-9.]+ > .* at index \([0-9, ]+\): [0-9.-]+ instead of [0-9.-]+ \(call\(\) reads a static size that is None when traced", id="eager-differs-from-tf-function"),
    pytest.param(ArrayInConfig, dict(), X, only("json"), r"check_layer\[json\] ArrayInConfig: calling the layer rebuilt by the JSON round trip raised TypeError: .*; get_config\(\) holds objects at the keys \['table'\] \(ndarray\): store plain data", id="config-holds-an-array"),
    pytest.param(FunctionInConfig, dict(), X, only("json"), r"check_layer\[json\] FunctionInConfig: calling the layer rebuilt by the JSON round trip raised TypeError: .*not callable.*get_config\(\) holds objects at the keys \['activation'\]", id="config-holds-a-function"),
    pytest.param(ReadsNumpy, dict(), X, only("symbolic"), r"check_layer\[symbolic\] ReadsNumpy: tracing call\(\) in tf.function on inputs of shapes \[\(None, None, 4\)\] raised .*call\(\) reads tensor values in Python", id="numpy-in-call"),
    pytest.param(ReadsNumpy, dict(), X, only("compiled"), r"check_layer\[compiled\] ReadsNumpy: tf.function raised .*call\(\) reads tensor values in Python", id="numpy-in-call-compiled"),
    pytest.param(BranchesOnValue, dict(), X, only("compiled"), r"check_layer\[compiled\] BranchesOnValue: tf.function raised .*call\(\) reads tensor values in Python", id="python-branch-on-tensor"),
    pytest.param(HostCallback, dict(), X, only("compiled"), r"check_layer\[compiled\] HostCallback: tf.function\(jit_compile=True\) \(XLA\) raised ", id="not-xla-compatible"),
    pytest.param(FrozenKernel, dict(), X, only("fit"), r"check_layer\[fit\] FrozenKernel: the trainable weight .*kernel \(4, 3\) of the layer gets no gradient from the outputs \(tf.stop_gradient", id="stop-gradient"),
    pytest.param(ZeroedKernel, dict(), X, only("fit"), r"check_layer\[fit\] ZeroedKernel: the trainable weight .*kernel \(4, 3\) of the layer gets an all-zero gradient before and after a gradient step", id="zero-gradient"),
    pytest.param(NonTrainable, dict(), X, only("fit"), r"check_layer\[fit\] NonTrainable: none of the layer's 2 weights .* is trainable, so fit cannot change it", id="non-trainable-by-mistake"),
    pytest.param(Float32Output, dict(), X, only("mixed_precision"), r"check_layer\[mixed_precision\] Float32Output: mixed_float16 \(global policy\): output 0 has the dtype float32, not the compute dtype float16 \(the layer ignores its dtype policy\)", id="ignores-dtype-policy"),
    pytest.param(HalfVariables, dict(), X, only("mixed_precision"), r"check_layer\[mixed_precision\] HalfVariables: mixed_float16 \(global policy\): the variable .*kernel is float16, not float32", id="half-precision-variables"),
    pytest.param(KeepsSublayerDtype, dict(), X, only("mixed_precision"), r"check_layer\[mixed_precision\] KeepsSublayerDtype: mixed_bfloat16 \(dtype='mixed_bfloat16' argument\): output 0 has the dtype float32, not the compute dtype bfloat16", id="sublayers-ignore-dtype"),
    pytest.param(NaiveSoftmax, dict(), X, only("mixed_precision"), r"check_layer\[mixed_precision\] NaiveSoftmax: mixed_float16 \(global policy\): with the float inputs multiplied by -?[0-9.]+ \(max \|x\| = 16\) float32 gives finite outputs .* but output 0 has [0-9]+ non-finite values.*overflows float16", id="softmax-overflows-float16"),
    pytest.param(HalfAngles, dict(), RNG.normal(size=(1, 300, 4)).astype("float32"), only("mixed_precision"), r"check_layer\[mixed_precision\] HalfAngles: mixed_b?float16 \(.*\): against float32 with the same weights: output 0 differs by max \|difference\| = [0-9.]+ > .*\(precision lost: compute trigonometry", id="trigonometry-in-float16"),
    pytest.param(WeightInCall, dict(), X, only(), r"check_layer\[call\] WeightInCall: raised ValueError: .*\(weights are created in call\(\): create them in build\(\)\)", id="weight-created-in-call"),
    pytest.param(UnsavedWeights, dict(), X, {**only("saving"), "fresh_process": False}, r"check_layer\[saving\] UnsavedWeights: the LayerModel model reloaded in this process: output 0 differs by max \|difference\| = [0-9.]+ > ", id="outputs-change-after-reload"),
    pytest.param(ReturnsNone, dict(), X, only(), r"check_layer\[call\] ReturnsNone: the outputs \[1\] are not tensors \(\['NoneType'\]\)", id="non-tensor-output"),
    pytest.param(RandomTable, dict(), X, only("config"), r"check_layer\[config\] RandomTable: the layer rebuilt by from_config\(get_config\(\)\) with the same weights: output 0 differs", id="state-outside-weights"),
]


@pytest.mark.parametrize(("layer_cls", "init_kwargs", "inputs", "parts", "message"), BROKEN_LAYERS)
def test_check_layer_catches_each_planted_bug(layer_cls, init_kwargs, inputs, parts, message):
    with pytest.raises(AssertionError, match=message):
        testing.check_layer(layer_cls, init_kwargs, inputs, **parts)


def test_check_layer_on_degenerate_inputs_trusts_larger_random_ones_for_training():
    # x = 0 leaves the kernels of a bias-free layer without a gradient, and a softmax over one key leaves
    # the query and key kernels of an attention without one: not bugs of the layers
    testing.check_layer(LowRank, dict(units=3, rank=2), np.zeros((2, 3, 4), "float32"), **only("fit"))
    testing.check_layer(keras.layers.MultiHeadAttention, dict(num_heads=2, key_dim=2), (X[:1, :1], X[1:, :1]), **only("fit"))
    with pytest.raises(AssertionError, match=r"check_layer\[fit\] ZeroedKernel: .*all-zero gradient .*\(on random inputs of shapes \[\(4, 6, 4\)\] too\); inputs float32 \(2, 3, 4\)"):
        testing.check_layer(ZeroedKernel, dict(), np.zeros((2, 3, 4), "float32"), **only("fit"))


def test_check_layer_restores_the_dtype_policy_after_a_failure():
    before = keras.config.dtype_policy().name
    with pytest.raises(AssertionError, match="mixed_precision"):
        testing.check_layer(Float32Output, dict(), X, **only("mixed_precision"))
    assert keras.config.dtype_policy().name == before


def _registered_at_run_time():
    # registered only when this function runs: a fresh process that imports the module does not see it
    @keras.saving.register_keras_serializable(package="mlable_testing_runtime")
    class RuntimeScale(Scale):
        pass

    return RuntimeScale


def test_check_layer_queues_the_fresh_process_reload():
    # same process: the class is registered and the in-process reload works; the fresh interpreter of the
    # last test cannot find it (one fresh process for every layer of this file)
    testing.check_layer(_registered_at_run_time(), dict(scale=3.0), X, **only("saving"), fresh_process=RELOADS)
    assert [case["name"] for case in RELOADS.cases[-2:]] == ["RuntimeScale-LayerModel", "RuntimeScale-functional"]


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda: testing.check_layer(Scale, dict(), X, symbolic_shapes=[(None, 5, 4)]), ValueError, r"`symbolic_shapes` must match the inputs. Received: symbolic shape \(None, 5, 4\) for an input of shape \(2, 3, 4\)"),
        (lambda: testing.check_layer(Scale, dict(), X, symbolic_shapes=[(None, 4)]), ValueError, r"`symbolic_shapes` must match the inputs. Received: symbolic shape \(None, 4\) for an input of shape \(2, 3, 4\)"),
        (lambda: testing.check_layer(GatedSum, dict(), (X, X), symbolic_shapes=[(None, 3, 4)]), ValueError, r"`symbolic_shapes` must hold one shape per input. Received: 1 shapes for inputs float32 \(2, 3, 4\), float32 \(2, 3, 4\)"),
        (lambda: testing.check_layer(keras.metrics.Mean, dict(), X), TypeError, r"`layer_cls` must be a keras.layers.Layer subclass. Received: layer_cls=<class 'keras"),
        (lambda: testing.check_layer(Scale(), dict(), X), TypeError, r"`layer_cls` must be a keras.layers.Layer subclass. Received: layer_cls=<Scale"),
        (lambda: testing.check_layer(Scale, dict(), ()), ValueError, r"`inputs` must hold at least one array. Received: inputs=\(\)"),
        (lambda: testing.check_metric(keras.metrics.Mean, np.zeros((3, 2)), np.zeros((4, 2)), lambda *_: 0.0), ValueError, r"`y_true` and `y_pred` must share axis 0 \(the batch\). Received: shapes \(3, 2\) and \(4, 2\)"),
        (lambda: core_testing.check_relative_positions(lambda x, p: x, np.zeros(3)), ValueError, r"`inputs` must have rank >= 2, shape \(B, S, ...\). Received: inputs with shape \(3,\)"),
        (lambda: core_testing.chunk_sizes(0), ValueError, r"`length` must be >= 1. Received: length=0"),
        (lambda: core_testing.chunk_sizes(3, min_chunks=1.5), TypeError, r"`min_chunks` must be an int. Received: min_chunks=1.5"),
    ],
)
def test_checkers_reject_bad_arguments(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_check_config_on_a_metric():
    testing.check_config(keras.metrics.MeanAbsoluteError(name="mae"), dict(name="mae"))
    with pytest.raises(AssertionError, match=r"check_config\[config\] ForgetfulMetric: get_config\(\) misses the constructor arguments \['threshold'\]"):
        testing.check_config(ForgetfulMetric(threshold=0.2), dict(threshold=0.2))


# cached decoding --------------------------------------------------------------------------------


def _full_pass(inputs):
    x = tf.convert_to_tensor(inputs)
    return attention.attention(x, x, x, use_causal_mask=True)


def _cached_step(chunk, cache, step):
    x = tf.convert_to_tensor(chunk)
    return attention.cached_attention(x, x, x, cache, step=step)


def _accumulating_step(chunk, cache, step):
    # the bug: the written slots hold old + new instead of new
    x = tf.convert_to_tensor(chunk)
    size = x.shape[1]
    keys = x + cache[0, :, step : step + size]
    values = x + cache[1, :, step : step + size]
    output, _ = attention.cached_attention(x, keys, values, cache, step=step)
    return output, attention.update_cache(cache, keys, values, step)


def _shifted_slot_step(chunk, cache, step):
    # the bug: the keys and values are written one slot late, so every query also sees the empty slot 0
    x = tf.convert_to_tensor(chunk)
    return attention.cached_attention(x, x, x, cache, step=step + 1)


def _leaky_prefill_step(chunk, cache, step):
    # the bug: a prefill of several positions forgets the causal mask (one position at a time is right)
    x = tf.convert_to_tensor(chunk)
    if x.shape[1] > 1:
        return attention.attention(x, x, x, use_causal_mask=False), attention.update_cache(cache, x, x, step)
    return attention.cached_attention(x, x, x, cache, step=step)


@st.composite
def decode_cases(draw, zero_cache=False):
    batch, length, heads, head_dim = draw(st.integers(1, 2)), draw(st.integers(2, 6)), draw(st.integers(1, 2)), draw(st.integers(1, 4))
    # values away from 0: an all-zero input makes old + new == new whatever the cache holds
    magnitudes = draw(core_testing.float_arrays((batch, length, heads, head_dim), min_value=0.5, max_value=2))
    inputs = magnitudes * draw(st.sampled_from([1.0, -1.0]))
    chunks = draw(core_testing.chunk_sizes(length))
    slots = length + 1 + draw(st.integers(0, 2))
    cache = np.zeros((2, batch, slots, heads, head_dim), "float32") if zero_cache else draw(core_testing.caches(batch, slots, heads, head_dim, min_value=1, max_value=4))
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
    with pytest.raises(AssertionError, match=r"check_cached_decoding: decoding in chunks differs from one full pass: max \|difference\| = .* > [0-9.e-]+ \(atol=1e-05, rtol=1e-05\) .*the first differing position is [0-9]+, in chunk [0-9]+ \(step=[0-9]+, size=[0-9]+\); inputs array of shape"):
        core_testing.check_cached_decoding(_accumulating_step, _full_pass, inputs, chunks, tf.constant(cache), atol=1e-5)


@FAST
@given(decode_cases(zero_cache=True))
def test_check_cached_decoding_catches_an_accumulating_cache_from_zeros(case):
    # from a zero cache old + new == new: only writing a step twice shows the bug
    inputs, chunks, cache = case
    with pytest.raises(AssertionError, match=r"check_cached_decoding: writing the first chunk \(step=0, size=[0-9]+\) a second time changes its outputs .*the cache accumulates"):
        core_testing.check_cached_decoding(_accumulating_step, _full_pass, inputs, chunks, tf.constant(cache), atol=1e-5)


@FAST
@given(decode_cases(zero_cache=True))
def test_check_cached_decoding_catches_a_slot_written_at_the_wrong_step(case):
    inputs, chunks, cache = case
    with pytest.raises(AssertionError, match=r"check_cached_decoding: decoding in chunks differs from one full pass: .*the first differing position is 0, in chunk 0 \(step=0"):
        core_testing.check_cached_decoding(_shifted_slot_step, _full_pass, inputs, chunks, tf.constant(cache), atol=1e-5)


@pytest.mark.parametrize(("chunks", "message_chunks"), [((3, 1, 1), r"\(3, 1, 1\)"), ((1, 1, 1, 1, 1), r"\(5,\)")])
def test_check_cached_decoding_catches_a_prefill_that_differs_from_step_by_step(chunks, message_chunks):
    # steps of one position are right, a prefill of several is not: a one-prefill pass is always tried too
    inputs = RNG.normal(size=(2, 5, 2, 3)).astype("float32")
    cache = tf.zeros((2, 2, 6, 2, 3))
    with pytest.raises(AssertionError, match=r"the first differing position is 0, in chunk 0 \(step=0, size=[35]\); inputs array of shape \(2, 5, 2, 3\) and dtype float32, chunk_sizes=" + message_chunks):
        core_testing.check_cached_decoding(_leaky_prefill_step, _full_pass, inputs, chunks, cache)


@pytest.mark.parametrize(
    ("chunks", "message"),
    [((1, 2), r"`chunk_sizes` must be positive ints summing to the length S=4"), ((0, 4), r"`chunk_sizes` must be positive ints"), ((2.0, 2), r"`chunk_sizes` must be positive ints")],
)
def test_check_cached_decoding_rejects_chunks_that_do_not_cover_the_inputs(chunks, message):
    with pytest.raises(ValueError, match=message):
        core_testing.check_cached_decoding(_cached_step, _full_pass, np.zeros((1, 4, 1, 2), "float32"), chunks, None)


# relative positions -----------------------------------------------------------------------------

WIDTH, HEADS = 8, 2
QUERY = keras.layers.Dense(WIDTH, use_bias=False, kernel_initializer=keras.initializers.GlorotUniform(seed=1))
KEY = keras.layers.Dense(WIDTH, use_bias=False, kernel_initializer=keras.initializers.GlorotUniform(seed=2))


def _scores(query, key):
    query = tf.reshape(query, (query.shape[0], query.shape[1], HEADS, -1))  # (B, S, N, H)
    key = tf.reshape(key, (key.shape[0], key.shape[1], HEADS, -1))  # (B, S, N, H)
    return tf.einsum("bqnh,bknh->bnqk", query, key)


def _unrotated_scores(x):
    x = tf.convert_to_tensor(x)
    return _scores(QUERY(x), KEY(x))


def _rope_after_projection(x, positions, query_offset=0):
    x = tf.convert_to_tensor(x)
    query = rotary.rotate(tf.reshape(QUERY(x), (*x.shape[:2], HEADS, -1)), positions=positions + query_offset)
    key = rotary.rotate(tf.reshape(KEY(x), (*x.shape[:2], HEADS, -1)), positions=positions)
    return _scores(query, key)


def _rope_before_projection(x, positions):
    rotated = rotary.rotate(tf.convert_to_tensor(x), positions=positions)
    return _scores(QUERY(rotated), KEY(rotated))


@FAST
@given(core_testing.float_arrays(st.tuples(st.integers(1, 2), st.integers(2, 5), st.just(WIDTH)), min_value=-1, max_value=1))
def test_check_relative_positions_passes_rope_on_queries_and_keys(x):
    core_testing.check_relative_positions(_rope_after_projection, x, shifts=(1, 5, 32), atol=1e-4, same_position_fn=_unrotated_scores)


POSITION_BUGS = [
    pytest.param(_rope_before_projection, None, r"check_relative_positions: outputs for positions arange\(S\) \+ 1 differ .* > [0-9.e-]+ \(atol=0.0001, rtol=1e-05\) .*depend on absolute positions \(e.g. RoPE applied before the query / key projections\); inputs array of shape \(2, 4, 8\)", id="rope-before-projection"),
    pytest.param(lambda x, positions: _unrotated_scores(x), None, r"check_relative_positions: the outputs do not depend on the positions: doubling every distance .*are the positions applied", id="positions-ignored"),
    pytest.param(lambda x, positions: _rope_after_projection(x, positions, query_offset=1), _unrotated_scores, r"check_relative_positions: with every element at position 5 the outputs differ from same_position_fn's .*an off-by-one between their positions", id="query-key-off-by-one"),
]


@pytest.mark.parametrize(("fn", "same_position_fn", "message"), POSITION_BUGS)
def test_check_relative_positions_catches_each_planted_bug(fn, same_position_fn, message):
    x = RNG.normal(size=(2, 4, WIDTH)).astype("float32")
    with pytest.raises(AssertionError, match=message):
        core_testing.check_relative_positions(fn, x, shifts=(1, 5, 32), atol=1e-4, same_position_fn=same_position_fn)


# metrics ----------------------------------------------------------------------------------------


def _mean_absolute_error(y_true, y_pred, sample_weight):
    rows = np.abs(y_true - y_pred).mean(axis=-1)
    weights = np.ones_like(rows) if sample_weight is None else sample_weight
    return float((rows * weights).sum() / weights.sum())


def _rate_above(threshold):
    def reference(y_true, y_pred, sample_weight):
        rows = (np.abs(y_true - y_pred) > threshold).mean(axis=-1)
        weights = np.ones_like(rows) if sample_weight is None else sample_weight
        return float((rows * weights).sum() / weights.sum())

    return reference


def _rate_above_fn(y_true, y_pred, threshold=0.5):
    return keras.ops.mean(keras.ops.cast(keras.ops.abs(y_true - y_pred) > threshold, "float32"), axis=-1)


@keras.saving.register_keras_serializable(package=PACKAGE)
class RateAbove(keras.metrics.MeanMetricWrapper):
    """The share of errors above ``threshold``: a correct custom metric with an argument."""

    def __init__(self, threshold: float = 0.5, name: str = "rate_above", dtype=None):
        super().__init__(_rate_above_fn, name=name, dtype=dtype, threshold=threshold)
        self.threshold = threshold

    def get_config(self):
        return {"name": self.name, "dtype": self.dtype, "threshold": self.threshold}


@keras.saving.register_keras_serializable(package=PACKAGE)
class ForgetfulMetric(RateAbove):
    """Bug: ``get_config`` forgets ``threshold``."""

    def get_config(self):
        return {"name": self.name, "dtype": self.dtype}


class UnregisteredMetric(RateAbove):
    """Bug: not registered with Keras."""


@keras.saving.register_keras_serializable(package=PACKAGE)
class MeanOfBatchMeans(keras.metrics.Metric):
    """Bug: the mean absolute error as the mean of the batch means."""

    def __init__(self, name="mean_of_batch_means", **kwargs):
        super().__init__(name=name, **kwargs)
        self.total = self.add_variable(shape=(), initializer="zeros", name="total")
        self.batches = self.add_variable(shape=(), initializer="zeros", name="batches")

    def update_state(self, y_true, y_pred, sample_weight=None):
        rows = keras.ops.mean(keras.ops.abs(keras.ops.cast(y_true, "float32") - keras.ops.cast(y_pred, "float32")), axis=-1)
        weights = keras.ops.ones_like(rows) if sample_weight is None else keras.ops.cast(sample_weight, "float32")
        self.total.assign_add(keras.ops.sum(rows * weights) / keras.ops.sum(weights))
        self.batches.assign_add(1.0)

    def result(self):
        return keras.ops.divide_no_nan(self.total, self.batches)


@keras.saving.register_keras_serializable(package=PACKAGE)
class IgnoresWeights(keras.metrics.MeanAbsoluteError):
    """Bug: drops ``sample_weight``."""

    def update_state(self, y_true, y_pred, sample_weight=None):
        return super().update_state(y_true, y_pred)


@keras.saving.register_keras_serializable(package=PACKAGE)
class NoReset(keras.metrics.MeanAbsoluteError):
    """Bug: forgets to clear its state."""

    def reset_state(self):
        pass


@keras.saving.register_keras_serializable(package=PACKAGE)
class EagerOnly(keras.metrics.MeanAbsoluteError):
    """Bug: reads a value with ``.numpy()`` in ``update_state`` (fails inside a compiled fit)."""

    def update_state(self, y_true, y_pred, sample_weight=None):
        scale = float(keras.ops.max(keras.ops.abs(y_true)).numpy()) * 0 + 1
        return super().update_state(y_true, y_pred * scale, sample_weight=sample_weight)


METRIC_DATA = RNG.normal(size=(2, 7, 3)).astype("float32")
WEIGHTS = np.linspace(0.5, 2.0, 7).astype("float32")


def _binary_accuracy(y_true, y_pred, sample_weight):
    rows = ((y_pred > 0.5) == (y_true > 0.5)).mean(axis=-1)
    weights = np.ones_like(rows) if sample_weight is None else sample_weight
    return float((rows * weights).sum() / weights.sum())


@pytest.mark.parametrize("sample_weight", [None, WEIGHTS])
@pytest.mark.parametrize(
    ("factory", "reference"),
    [
        (keras.metrics.MeanAbsoluteError, _mean_absolute_error),
        (lambda: RateAbove(threshold=0.8), _rate_above(0.8)),
        (keras.metrics.BinaryAccuracy, _binary_accuracy),
    ],
)
def test_check_metric_passes_correct_metrics(factory, reference, sample_weight):
    y_true, y_pred = METRIC_DATA
    if reference is _binary_accuracy:
        y_true, y_pred = (y_true > 0).astype("float32"), 1 / (1 + np.exp(-y_pred))
    testing.check_metric(factory, y_true, y_pred, reference, sample_weight, splits=3, atol=1e-5)


METRIC_BUGS = [
    pytest.param(MeanOfBatchMeans, _mean_absolute_error, r"check_metric\[split\] MeanOfBatchMeans: feeding batches of sizes \[1, 2, 4\] gives [0-9.]+, one batch gives [0-9.]+ \(atol=1e-05\): the metric must accumulate totals and counts, not average batch results; y_true float32 \(7, 3\), y_pred float32 \(7, 3\)", id="mean-of-batch-means"),
    pytest.param(IgnoresWeights, _mean_absolute_error, r"check_metric\[weights\] IgnoresWeights: sample_weight=\[2, 0, 1, 3, 2, 0, 1\] gives [0-9.]+, repeating each row that many times without weights gives [0-9.]+ .*ignores or mis-applies sample_weight", id="ignores-sample-weight"),
    pytest.param(NoReset, _mean_absolute_error, r"check_metric\[reset\] NoReset: after reset_state the result is [0-9.]+, a new metric gives 0.0", id="no-reset"),
    pytest.param(EagerOnly, _mean_absolute_error, r"check_metric\[compiled\] EagerOnly: raised .*call\(\) reads tensor values in Python", id="eager-only-update"),
    pytest.param(UnregisteredMetric, _rate_above(0.5), r"check_metric\[json\] UnregisteredMetric: the class is not registered with Keras", id="not-registered"),
    pytest.param(lambda: ForgetfulMetric(threshold=0.8), _rate_above(0.8), r"check_metric\[serialization\] ForgetfulMetric: the metric rebuilt by from_config\(get_config\(\)\) gives [0-9.]+ instead of [0-9.]+: get_config\(\) misses or mis-stores an argument", id="config-loses-argument"),
    pytest.param(keras.metrics.MeanAbsoluteError, lambda *_: 0.0, r"check_metric\[reference\] MeanAbsoluteError: the result [0-9.]+ differs from the reference 0.0", id="wrong-value"),
]


@pytest.mark.parametrize(("factory", "reference", "message"), METRIC_BUGS)
def test_check_metric_catches_each_planted_bug(factory, reference, message):
    with pytest.raises(AssertionError, match=message):
        testing.check_metric(factory, METRIC_DATA[0], METRIC_DATA[1], reference, splits=3, atol=1e-5)


def test_check_metric_with_a_weighted_reference_catches_ignored_weights():
    with pytest.raises(AssertionError, match=r"check_metric\[reference\] IgnoresWeights: the result [0-9.]+ differs from the reference [0-9.]+ .*sample_weight float32 \(7,\)"):
        testing.check_metric(IgnoresWeights, METRIC_DATA[0], METRIC_DATA[1], _mean_absolute_error, WEIGHTS, atol=1e-5)


@pytest.mark.parametrize("module", [core_testing, testing])
def test_docstring_examples_run(module):
    import doctest

    result = doctest.testmod(module, extraglobs={"np": np}, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0


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
@given(st.integers(1, 9).flatmap(lambda n: st.tuples(st.just(n), core_testing.chunk_sizes(n))))
def test_chunk_sizes_cover_the_length(case):
    length, chunks = case
    assert sum(chunks) == length and all(size >= 1 for size in chunks) and len(chunks) >= min(2, length)


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


# without hypothesis -----------------------------------------------------------------------------

WITHOUT_HYPOTHESIS = textwrap.dedent(
    """
    import importlib.abc, sys

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "hypothesis" or name.startswith("hypothesis."):
                raise ImportError(f"No module named {name!r} (blocked)")

    sys.meta_path.insert(0, Block())
    import numpy as np
    from mlable_core import testing as core_testing
    from mlable_keras import testing
    from mlable_keras.layers.reshaping import Divide

    assert "hypothesis" not in sys.modules
    for module, strategy in ((core_testing, core_testing.shapes), (testing, testing.float_arrays)):
        try:
            strategy((2, 3)) if strategy.__name__ == "float_arrays" else strategy()
        except ImportError as error:
            expected = f"{module.__name__} needs hypothesis: pip install 'mlable[test]'"
            assert str(error) == expected, str(error)
        else:
            raise AssertionError("no ImportError")
    x = np.arange(24, dtype="float32").reshape(2, 3, 4)
    testing.check_layer(Divide, dict(input_axis=2, output_axis=1, factor=2), x, fit=False, saving=False)
    testing.check_metric(lambda: __import__("keras").metrics.MeanAbsoluteError(), x, x + 1, lambda *_: 1.0)
    core_testing.check_cached_decoding(lambda chunk, cache, step: (chunk, cache), lambda inputs: inputs, x, (2, 1), None)
    core_testing.check_relative_positions(lambda inputs, positions: inputs * 0 + np.diff(positions).sum(), x, shifts=(1,), require_dependence=False)
    print("ok")
    """
)


def test_without_hypothesis_the_checkers_work_and_the_strategies_name_the_extra():
    environment = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run([sys.executable, "-c", WITHOUT_HYPOTHESIS], capture_output=True, text=True, env=environment, cwd=ROOT, timeout=600, check=False)
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stdout[-2000:] + result.stderr[-4000:]


# last: the layers saved above reload in one fresh process ----------------------------------------


def test_zz_saved_layers_reload_in_one_fresh_process():
    # every correct layer reloads; the class registered only at run time is the one failure, named
    cases = len(RELOADS.cases)
    if not any(case["name"].startswith("RuntimeScale") for case in RELOADS.cases):
        testing.check_layer(_registered_at_run_time(), dict(scale=3.0), X, **only("saving"), fresh_process=RELOADS)
        cases += 2
    expected = (
        rf"(?s)check_layer\[saving\] fresh process: 2 of {cases} saved models failed to reload in a fresh interpreter:\n"
        r"  RuntimeScale-LayerModel: TypeError: Could not locate class 'RuntimeScale' \(the class is not registered: .*\n"
        r"  RuntimeScale-functional: TypeError: Could not locate class 'RuntimeScale' \(the class is not registered: [^\n]*$"
    )
    with pytest.raises(AssertionError, match=expected):
        RELOADS.check()


# the pytest plugin ------------------------------------------------------------------------------


def plugin_options() -> list[str]:
    """``-p mlable_core.pytest_plugin`` unless the installed package already registers it (pytest refuses it twice)."""
    from importlib.metadata import entry_points

    installed = any(point.value == "mlable_core.pytest_plugin" for point in entry_points(group="pytest11"))
    return [] if installed else ["-p", "mlable_core.pytest_plugin"]

PROFILE_PROBE = textwrap.dedent(
    """
    import sys
    from hypothesis import settings

    def test_profile():
        from conftest import BEFORE

        current = settings.default
        heavy = sorted(name for name in ("tensorflow", "keras", "mlable_keras") if name in sys.modules)
        print(f"PROFILE before={BEFORE} now: derandomize={current.derandomize} max_examples={current.max_examples} heavy={heavy}")
    """
)


@pytest.mark.parametrize(
    ("environ", "expected"),
    [({"CI": "true"}, "ci"), ({}, "dev"), ({"CI": ""}, "dev"), ({"CI": "1", "HYPOTHESIS_PROFILE": "dev"}, "dev"), ({"HYPOTHESIS_PROFILE": "mine"}, "mine")],
)
def test_pytest_plugin_selects_the_profile_from_the_environment(environ, expected):
    assert pytest_plugin.selected_profile(environ) == expected


def test_pytest_plugin_profiles_are_deterministic_in_ci_and_thorough_locally():
    from hypothesis import settings

    assert pytest_plugin.register_profiles(load=False) is None
    ci, dev = settings.get_profile("ci"), settings.get_profile("dev")
    assert (ci.derandomize, ci.deadline, ci.database, ci.max_examples) == (True, None, None, 15)
    assert (dev.derandomize, dev.deadline, dev.max_examples) == (False, None, 120)


PROFILE_CONFTEST = textwrap.dedent(
    """
    from hypothesis import settings

    # what the plugin loaded before this conftest was imported; then a profile of the suite's own wins
    BEFORE = (settings.default.derandomize, settings.default.max_examples, settings.default.deadline)
    settings.register_profile("mine", max_examples=3)
    settings.load_profile("mine")
    """
)


def test_pytest_plugin_in_a_pytest_run(tmp_path):
    # the plugin as pytest loads it (the pytest11 entry point, or -p where the package is not installed with it)
    (tmp_path / "test_profile_probe.py").write_text(PROFILE_PROBE)
    (tmp_path / "conftest.py").write_text(PROFILE_CONFTEST)
    env = {key: value for key, value in os.environ.items() if key not in ("CI", "HYPOTHESIS_PROFILE", "PYTEST_ADDOPTS")}
    env.update(CI="true", PYTHONPATH=ROOT)
    command = [sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider", *plugin_options(), str(tmp_path)]
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300, check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    # before the conftest: the plugin's ci profile; after: the conftest's (derandomize follows hypothesis' CI default)
    assert re.search(r"PROFILE before=\(True, 15, None\) now: derandomize=\w+ max_examples=3 heavy=\[\]", result.stdout), result.stdout[-3000:]


# the README's example suite ---------------------------------------------------------------------


def readme_suite() -> dict[str, str]:
    """The files of the README section "A regression suite for your own model": ``{file name: code}``."""
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as handle:
        text = handle.read()
    section = text.split("## A regression suite for your own model", 1)[1].split("\n## ", 1)[0]
    files = {}
    for block in section.split("```python\n")[1:]:
        code = block.split("\n```", 1)[0]
        first = code.splitlines()[0]
        if first.startswith("# ") and first.split()[1].endswith(".py"):
            files[first.split()[1]] = code + "\n"
    return files


def test_the_readme_suite_runs(tmp_path, monkeypatch):
    # run directly (one TensorFlow import less than a pytest subprocess); the plugin-and-conftest pairing is
    # tested above in a real pytest run
    from hypothesis import settings

    files = readme_suite()
    assert sorted(files) == ["conftest.py", "test_my_model.py"]
    for name, code in files.items():
        (tmp_path / name).write_text(code)
    monkeypatch.syspath_prepend(str(tmp_path))  # the fresh process of check_layer imports test_my_model too
    try:
        exec(compile(files["conftest.py"], str(tmp_path / "conftest.py"), "exec"), {})
        expected = (True, 15) if os.environ.get("CI") else (False, 120)
        assert (settings.default.derandomize, settings.default.max_examples, settings.default.deadline) == (*expected, None)
        module = __import__("test_my_model")
        tests = [getattr(module, name) for name in dir(module) if name.startswith("test_")]
        assert len(tests) == 4
        for test in tests:
            # the README's profile, at most the ci profile's 15 examples (each example compiles a layer)
            limited = settings(settings.default, max_examples=min(15, settings.default.max_examples))(test) if hasattr(test, "hypothesis") else test
            limited()
    finally:
        pytest_plugin.register_profiles()  # back to this session's profiles

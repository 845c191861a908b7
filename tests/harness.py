"""The shared layer-test harness: every Layer test of the library starts with ``run_layer_test``.

It uses the public Keras API only and checks, for one layer class and one set
of constructor arguments:

1. config round trip (``get_config`` -> ``from_config`` -> same config, every
   constructor argument present) and JSON serialize / deserialize round trip;
2. a symbolic call on ``keras.Input`` with ``None`` dimensions, whose shape
   matches ``compute_output_shape``;
3. an eager call: output shape (against ``compute_output_shape`` and the
   expected shape), optional reference values, weight counts;
4. one compiled ``fit`` step (``jit_compile=True``) with the layer inside a
   trainable model: the loss is finite and the weights move;
5. ``mixed_float16`` and ``mixed_bfloat16``: float32 variables, outputs in the
   compute dtype, values close to the float32 layer with the same weights;
6. ``.keras`` save / load in this process with equal outputs, and the saved
   file queued for ``tests/test_zz_fresh_process.py``, which reloads every
   queued model in a fresh interpreter (where only registration or the
   module path can find the classes).

Layers with several inputs take a tuple of positional arrays; layers with
several outputs give ``output_fn`` to pick the tensor that is trained and compared.
"""

from __future__ import annotations

import atexit
import json
import os
import pickle
import shutil
import tempfile
from collections.abc import Callable, Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf

# models saved by the harness, reloaded in a fresh process by test_zz_fresh_process.py
FRESH_LOAD_DIR = tempfile.mkdtemp(prefix="mlable-harness-")
atexit.register(shutil.rmtree, FRESH_LOAD_DIR, ignore_errors=True)  # no temp folder left behind by the suite
FRESH_LOAD_CASES: list[dict[str, str]] = []


def _as_tuple(inputs: Any) -> tuple[Any, ...]:
    return tuple(inputs) if isinstance(inputs, (tuple, list)) else (inputs,)


def _to_numpy(value: Any) -> np.ndarray:
    return np.asarray(keras.ops.convert_to_numpy(value))


def _is_float(dtype: Any) -> bool:
    return tf.as_dtype(keras.backend.standardize_dtype(dtype)).is_floating


@keras.saving.register_keras_serializable(package="mlable_tests")
class HarnessModel(keras.Model):
    """Wraps one layer (optionally after a Dense, so that stateless layers get weights)."""

    def __init__(
        self,
        layer: keras.layers.Layer | dict,
        call_kwargs: dict | None = None,
        output_index: int | None = None,
        dense_units: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.layer = keras.saving.deserialize_keras_object(layer) if isinstance(layer, dict) else layer
        self.call_kwargs = dict(call_kwargs or {})
        self.output_index = output_index
        self.dense_units = dense_units
        self.dense = None if dense_units is None else keras.layers.Dense(dense_units, name="pre_dense")

    def call(self, inputs: Any) -> Any:
        inputs = _as_tuple(inputs)
        if self.dense is not None:
            inputs = (self.dense(inputs[0]),) + inputs[1:]
        outputs = self.layer(*inputs, **self.call_kwargs)
        return outputs if self.output_index is None else outputs[self.output_index]

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            layer=keras.saving.serialize_keras_object(self.layer),
            call_kwargs=self.call_kwargs,
            output_index=self.output_index,
            dense_units=self.dense_units,
        )
        return config


def check_config_round_trip(layer: keras.layers.Layer, init_kwargs: dict[str, Any]) -> None:
    """``get_config`` holds every constructor argument and survives ``from_config`` and JSON."""
    config = layer.get_config()
    for key in init_kwargs:
        assert key in config, f"get_config() of {type(layer).__name__} misses the constructor argument {key!r}"
    clone = type(layer).from_config(config)
    assert clone.get_config() == config, "from_config(get_config()) changed the config"
    text = json.dumps(keras.saving.serialize_keras_object(layer))
    restored = keras.saving.deserialize_keras_object(json.loads(text))
    assert type(restored) is type(layer)
    assert restored.get_config() == config, "the JSON round trip changed the config"


def _default_symbolic_shape(shape: Sequence[int]) -> tuple[int | None, ...]:
    # everything unknown but the last axis, which layers commonly read at build
    return tuple([None] * (len(shape) - 1) + [shape[-1]]) if len(shape) else ()


def check_symbolic_call(
    layer_cls: type,
    init_kwargs: dict[str, Any],
    inputs: tuple[np.ndarray, ...],
    symbolic_shapes: Sequence[tuple[int | None, ...]] | None,
    call_kwargs: dict[str, Any],
    output_fn: Callable[[Any], Any],
    output_index: int | None = None,
) -> None:
    """A call on ``keras.Input`` with unknown dims agrees with ``compute_output_shape``."""
    shapes = symbolic_shapes or [_default_symbolic_shape(array.shape) for array in inputs]
    layer = layer_cls(**init_kwargs)
    symbols = [keras.Input(batch_shape=shape, dtype=array.dtype) for shape, array in zip(shapes, inputs)]
    if output_index is None:
        outputs = output_fn(layer(*symbols, **call_kwargs))
    else:
        # a layer with several outputs may return a non-tensor among them (e.g. an absent cache as
        # None), which Keras functional graphs reject: call it through the model that picks one output
        outputs = HarnessModel(layer, call_kwargs, output_index)(symbols if len(symbols) > 1 else symbols[0])
    expected = output_fn(layer.compute_output_shape(*shapes) if len(shapes) > 1 else layer.compute_output_shape(shapes[0]))
    assert tuple(outputs.shape) == tuple(expected), f"symbolic shape {outputs.shape} != compute_output_shape {expected}"


def _mixed_precision_check(
    layer_cls: type,
    init_kwargs: dict[str, Any],
    inputs: tuple[np.ndarray, ...],
    call_kwargs: dict[str, Any],
    output_fn: Callable[[Any], Any],
    reference_layer: keras.layers.Layer,
    reference_output: np.ndarray,
    policy: str,
    tolerance: float,
) -> None:
    inputs = tuple(tf.convert_to_tensor(array) for array in inputs)
    layer = layer_cls(**init_kwargs, dtype=policy)
    layer(*inputs, **call_kwargs)  # build
    layer.set_weights(reference_layer.get_weights())
    for variable in layer.weights:
        if _is_float(variable.dtype):
            assert variable.dtype == "float32", f"{policy}: variable {variable.path} is {variable.dtype}, not float32"
    outputs = output_fn(layer(*inputs, **call_kwargs))
    if _is_float(outputs.dtype):
        assert outputs.dtype == tf.as_dtype(layer.compute_dtype), f"{policy}: output dtype {outputs.dtype}"
        scale = max(1.0, float(np.max(np.abs(reference_output)))) if reference_output.size else 1.0
        np.testing.assert_allclose(
            _to_numpy(tf.cast(outputs, tf.float32)), reference_output, atol=tolerance * scale, rtol=tolerance,
            err_msg=f"{policy} output differs from float32",
        )
    else:
        np.testing.assert_array_equal(_to_numpy(outputs), reference_output)


def _check_training(model: keras.Model, inputs: tuple[np.ndarray, ...], outputs: np.ndarray) -> None:
    rng = np.random.default_rng(0)
    target = rng.normal(size=outputs.shape).astype("float32")
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=0.01), loss="mse", jit_compile=True)
    tensors = tuple(tf.convert_to_tensor(array) for array in inputs)
    model(tensors if len(tensors) > 1 else tensors[0])  # build, so that the weights exist before fit
    before = [_to_numpy(weight) for weight in model.trainable_weights]
    assert before, "the model under training has no trainable weight"
    batch = inputs[0].shape[0]
    history = model.fit(inputs if len(inputs) > 1 else inputs[0], target, batch_size=batch, epochs=1, verbose=0)
    loss = history.history["loss"][-1]
    assert np.isfinite(loss), f"the compiled fit step gave a non-finite loss {loss}"
    after = [_to_numpy(weight) for weight in model.trainable_weights]
    assert any(not np.array_equal(b, a) for b, a in zip(before, after)), "no trainable weight moved in fit"


def _check_saving(model: keras.Model, inputs: tuple[np.ndarray, ...], name: str) -> None:
    tensors = tuple(tf.convert_to_tensor(array) for array in inputs)
    expected = _to_numpy(model(tensors if len(tensors) > 1 else tensors[0]))
    path = os.path.join(FRESH_LOAD_DIR, f"{name}-{len(FRESH_LOAD_CASES)}.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    actual = _to_numpy(loaded(tensors if len(tensors) > 1 else tensors[0]))
    np.testing.assert_allclose(actual, expected, rtol=1e-6, atol=1e-6, err_msg=".keras reload changed the outputs")
    data_path = path + ".pkl"
    with open(data_path, "wb") as handle:
        pickle.dump({"inputs": inputs, "expected": expected}, handle)
    FRESH_LOAD_CASES.append({"model": path, "data": data_path, "name": name})


def run_layer_test(
    layer_cls: type,
    init_kwargs: dict[str, Any],
    input_data: np.ndarray | Sequence[np.ndarray],
    *,
    call_kwargs: dict[str, Any] | None = None,
    expected_output_shape: tuple[int, ...] | None = None,
    symbolic_shapes: Sequence[tuple[int | None, ...]] | None = None,
    expected_num_trainable_weights: int | None = None,
    expected_num_non_trainable_weights: int | None = None,
    reference_fn: Callable[..., np.ndarray] | None = None,
    reference_tolerance: float = 1e-5,
    output_index: int | None = None,
    run_training: bool = True,
    run_mixed_precision: bool = True,
    mixed_precision_tolerance: float = 2e-2,
    run_saving: bool = True,
) -> keras.layers.Layer:
    """Runs the shared checks on one layer configuration and returns the built float32 layer.

    Args:
        layer_cls: the Layer class under test.
        init_kwargs: its constructor arguments.
        input_data: one array, or a tuple of arrays passed as positional call arguments.
        call_kwargs: extra keyword arguments for every call.
        expected_output_shape: the shape the eager call must return, if known.
        symbolic_shapes: full shapes (batch included, ``None`` for unknown) of the
            symbolic inputs; default: every axis unknown but the last.
        expected_num_trainable_weights: number of trainable weights after build.
        expected_num_non_trainable_weights: number of non-trainable weights after build.
        reference_fn: ``reference_fn(layer, *inputs) -> ndarray``, an independent
            computation of the output (numpy, a Keras built-in, ...).
        reference_tolerance: absolute and relative tolerance against ``reference_fn``.
        output_index: which output to check when the layer returns a tuple.
        run_training: run the compiled ``fit`` step.
        run_mixed_precision: run the ``mixed_float16`` / ``mixed_bfloat16`` checks.
        mixed_precision_tolerance: relative tolerance of mixed precision against float32.
        run_saving: run the ``.keras`` save / load checks.
    """
    call_kwargs = dict(call_kwargs or {})
    inputs = tuple(np.asarray(array) for array in _as_tuple(input_data))

    def output_fn(outputs: Any) -> Any:
        return outputs if output_index is None else outputs[output_index]

    layer = layer_cls(**init_kwargs)
    check_config_round_trip(layer, init_kwargs)
    check_symbolic_call(layer_cls, init_kwargs, inputs, symbolic_shapes, call_kwargs, output_fn, output_index)

    outputs = output_fn(layer(*(tf.convert_to_tensor(array) for array in inputs), **call_kwargs))
    shape_in = [array.shape for array in inputs]
    computed = output_fn(layer.compute_output_shape(*shape_in) if len(inputs) > 1 else layer.compute_output_shape(shape_in[0]))
    assert tuple(outputs.shape) == tuple(computed), f"eager shape {outputs.shape} != compute_output_shape {computed}"
    if expected_output_shape is not None:
        assert tuple(outputs.shape) == tuple(expected_output_shape)
    if expected_num_trainable_weights is not None:
        assert len(layer.trainable_weights) == expected_num_trainable_weights
    if expected_num_non_trainable_weights is not None:
        assert len(layer.non_trainable_weights) == expected_num_non_trainable_weights
    reference_output = _to_numpy(outputs)
    if reference_fn is not None:
        np.testing.assert_allclose(
            reference_output, np.asarray(reference_fn(layer, *inputs)), atol=reference_tolerance, rtol=reference_tolerance,
            err_msg="the layer differs from the reference",
        )

    float_inputs = _is_float(inputs[0].dtype)
    if run_mixed_precision and (float_inputs or layer.weights):
        for policy in ("mixed_float16", "mixed_bfloat16"):
            tolerance = mixed_precision_tolerance * (4 if policy == "mixed_bfloat16" else 1)
            _mixed_precision_check(
                layer_cls, init_kwargs, inputs, call_kwargs, output_fn, layer, reference_output, policy, tolerance
            )

    # a stateless layer on float inputs gets a Dense in front so that the model has something to train
    dense_units = None if layer.trainable_weights or not float_inputs else int(inputs[0].shape[-1])
    trainable = _is_float(outputs.dtype) and (layer.trainable_weights or dense_units is not None)
    if run_training and trainable:
        model = HarnessModel(layer_cls(**init_kwargs), call_kwargs, output_index, dense_units)
        _check_training(model, inputs, reference_output)
    if run_saving:
        model = HarnessModel(layer_cls(**init_kwargs), call_kwargs, output_index, dense_units)
        _check_saving(model, inputs, layer_cls.__name__)
        if output_index is None and len(inputs) == 1 and not call_kwargs:
            functional_input = keras.Input(batch_shape=inputs[0].shape, dtype=inputs[0].dtype)
            functional = keras.Model(functional_input, layer_cls(**init_kwargs)(functional_input))
            _check_saving(functional, inputs, f"{layer_cls.__name__}-functional")
    return layer


__all__ = ["FRESH_LOAD_CASES", "FRESH_LOAD_DIR", "HarnessModel", "check_config_round_trip", "run_layer_test"]

"""A testing toolkit for Keras layers and metrics: the checks every custom layer should pass.

- ``check_layer`` runs, on one layer class and one set of constructor arguments,
  the checks that catch the usual breakages of a Keras 3 layer (keras-hub
  ``tests/test_case.py`` style): config and JSON round trips, a symbolic call
  with unknown dims against ``compute_output_shape``, eager against
  ``tf.function`` and XLA, one compiled ``fit`` step, mixed precision, and a
  ``.keras`` save reloaded in a fresh Python process.
- ``check_metric`` compares a metric with a reference function and checks that
  feeding the data in several batches, of unequal sizes, gives the result of one
  batch (the bug of metrics that average batch means), and that ``reset_state``
  works.

Every failure raises ``AssertionError("check_layer[<part>] <LayerName>: ...")``
(or ``check_metric[<part>] ...``) with the numbers. The hypothesis strategies and
Keras-free checkers of ``mlable_core.testing`` are re-exported here.

Example:
    >>> from mlable_keras import testing
    >>> from mlable_keras.layers.reshaping import Divide
    >>> testing.check_layer(Divide, dict(input_axis=2, output_axis=1, factor=2), np.ones((2, 3, 4), "float32"))
"""

from __future__ import annotations

import functools
import json as json_module
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from mlable_core import testing as _core
from mlable_core.testing import SPECIAL_CHARACTERS, check_cached_decoding, check_relative_positions, divisors

HYPOTHESIS_MESSAGE = _core.HYPOTHESIS_MESSAGE.replace("mlable_core.testing", "mlable_keras.testing")

PARTS = ("config", "json", "symbolic", "compiled", "fit", "mixed_precision", "saving")

# relative tolerance of each mixed policy against float32, scaled by max(1, max |float32 output|)
MIXED_PRECISION_TOLERANCES = {"mixed_float16": 2e-2, "mixed_bfloat16": 8e-2}

# seconds a fresh process gets to import TensorFlow, load the model and run it
SUBPROCESS_TIMEOUT = 300


def _require_hypothesis() -> None:
    try:
        import hypothesis  # noqa: F401
    except ImportError as error:
        raise ImportError(HYPOTHESIS_MESSAGE) from error


def _reexport(strategy: Callable[..., Any]) -> Callable[..., Any]:
    """``mlable_core.testing``'s strategy, whose missing-hypothesis error names this module."""

    @functools.wraps(strategy)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        _require_hypothesis()
        return strategy(*args, **kwargs)

    return wrapper


axis_pairs = _reexport(_core.axis_pairs)
boolean_masks = _reexport(_core.boolean_masks)
byte_tokens = _reexport(_core.byte_tokens)
caches = _reexport(_core.caches)
divisors_of = _reexport(_core.divisors_of)
float_arrays = _reexport(_core.float_arrays)
logits = _reexport(_core.logits)
positions = _reexport(_core.positions)
shapes = _reexport(_core.shapes)
utf8_texts = _reexport(_core.utf8_texts)


def _fail(part: str, name: str, message: str) -> AssertionError:
    return AssertionError(f"check_layer[{part}] {name}: {message}")


def _as_tuple(inputs: Any) -> tuple[Any, ...]:
    return tuple(inputs) if isinstance(inputs, (tuple, list)) else (inputs,)


def _to_numpy(value: Any) -> np.ndarray:
    array = np.asarray(keras.ops.convert_to_numpy(value))
    if array.dtype.name in ("bfloat16", "float16") or array.dtype.kind == "V":
        array = array.astype(np.float32)
    return array


def _is_float(dtype: Any) -> bool:
    return tf.as_dtype(keras.backend.standardize_dtype(dtype)).is_floating


def _flat_outputs(outputs: Any) -> list[Any]:
    return list(keras.tree.flatten(outputs))


def _flat_shapes(shapes_: Any) -> list[tuple[int | None, ...]]:
    """``compute_output_shape``'s result as a list of shape tuples (one per output)."""
    if isinstance(shapes_, tf.TensorShape):
        return [tuple(shapes_.as_list())]
    if isinstance(shapes_, (tuple, list)) and all(item is None or isinstance(item, (int, np.integer)) for item in shapes_):
        return [tuple(None if item is None else int(item) for item in shapes_)]
    if isinstance(shapes_, dict):
        return [shape for key in sorted(shapes_) for shape in _flat_shapes(shapes_[key])]
    return [shape for item in shapes_ for shape in _flat_shapes(item)]


def _compute_output_shape(layer: keras.layers.Layer, input_shapes: Sequence[tuple[int | None, ...]]) -> list[tuple[int | None, ...]]:
    return _flat_shapes(layer.compute_output_shape(*input_shapes))


def _largest_difference(actual: np.ndarray, expected: np.ndarray) -> float:
    if actual.shape != expected.shape:
        return float("inf")
    if actual.dtype.kind not in "fc" and expected.dtype.kind not in "fc":
        return 0.0 if np.array_equal(actual, expected) else float("inf")
    actual, expected = actual.astype(np.float64), expected.astype(np.float64)
    same = (actual == expected) | (np.isnan(actual) & np.isnan(expected))
    difference = np.where(same, 0.0, np.abs(actual - expected))
    return float(np.nan_to_num(difference, nan=np.inf).max()) if difference.size else 0.0


def _compare(part: str, name: str, what: str, actual: list[np.ndarray], expected: list[np.ndarray], atol: float) -> None:
    if len(actual) != len(expected):
        raise _fail(part, name, f"{what}: {len(actual)} outputs instead of {len(expected)}")
    for index, (left, right) in enumerate(zip(actual, expected)):
        if left.shape != right.shape:
            raise _fail(part, name, f"{what}: output {index} has shape {left.shape} instead of {right.shape}")
        largest = _largest_difference(left, right)
        if largest > atol:
            raise _fail(part, name, f"{what}: output {index} differs by max |difference| = {largest:.3g} > atol={atol:g}")


@keras.saving.register_keras_serializable(package="mlable_testing")
class LayerModel(keras.Model):
    """Wraps one layer for ``fit`` and saving, optionally after a ``Dense`` that gives it weights to train.

    Args:
        layer: the wrapped layer (or its serialized config, on reload).
        call_kwargs: keyword arguments for every call of the layer.
        dense_units: when set, a ``Dense(dense_units)`` is applied to the first input first.
        **kwargs: base ``keras.Model`` arguments.

    Call arguments:
        inputs: one tensor, or a tuple of the layer's positional inputs.

    Output shape:
        The first output of the layer (a layer with several outputs is trained on its first).
    """

    def __init__(self, layer: keras.layers.Layer | dict, call_kwargs: dict | None = None, dense_units: int | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.layer = keras.saving.deserialize_keras_object(layer) if isinstance(layer, dict) else layer
        self.call_kwargs = dict(call_kwargs or {})
        self.dense_units = dense_units
        self.dense = None if dense_units is None else keras.layers.Dense(dense_units, name="pre_dense")

    def call(self, inputs: Any) -> Any:
        inputs = _as_tuple(inputs)
        if self.dense is not None:
            inputs = (self.dense(inputs[0]),) + inputs[1:]
        return _flat_outputs(self.layer(*inputs, **self.call_kwargs))[0]

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            layer=keras.saving.serialize_keras_object(self.layer), call_kwargs=self.call_kwargs, dense_units=self.dense_units
        )
        return config


def _check_config(layer_cls: type, init_kwargs: dict[str, Any], name: str) -> None:
    layer = layer_cls(**init_kwargs)
    config = layer.get_config()
    missing = sorted(key for key in init_kwargs if key not in config)
    if missing:
        raise _fail("config", name, f"get_config() misses the constructor arguments {missing}; it has keys {sorted(config)}")
    clone_config = layer_cls.from_config(config).get_config()
    if clone_config != config:
        changed = sorted(key for key in set(config) | set(clone_config) if config.get(key) != clone_config.get(key))
        raise _fail("config", name, f"from_config(get_config()) changed the config at keys {changed}")


def _check_json(layer_cls: type, init_kwargs: dict[str, Any], name: str) -> None:
    layer = layer_cls(**init_kwargs)
    config = layer.get_config()
    try:
        text = json_module.dumps(keras.saving.serialize_keras_object(layer))
        restored = keras.saving.deserialize_keras_object(json_module.loads(text))
    except Exception as error:  # any failure here is the finding
        raise _fail("json", name, f"the JSON round trip raised {type(error).__name__}: {error}") from error
    if type(restored) is not layer_cls:
        raise _fail("json", name, f"the JSON round trip gave a {type(restored).__name__}, not a {layer_cls.__name__}")
    restored_config = restored.get_config()
    if restored_config != config:
        changed = sorted(key for key in set(config) | set(restored_config) if config.get(key) != restored_config.get(key))
        raise _fail("json", name, f"the JSON round trip changed the config at keys {changed}")


def _symbolic_shape(shape: tuple[int, ...]) -> tuple[int | None, ...]:
    # every axis unknown but the last, which layers commonly read at build
    return tuple([None] * (len(shape) - 1) + [int(shape[-1])]) if shape else ()


def _compatible(actual: tuple[int | None, ...], expected: tuple[int | None, ...]) -> bool:
    return len(actual) == len(expected) and all(a is None or e is None or a == e for a, e in zip(actual, expected))


def _check_symbolic(
    layer_cls: type, init_kwargs: dict[str, Any], inputs: tuple[np.ndarray, ...], call_kwargs: dict[str, Any], name: str
) -> None:
    symbolic_shapes = [_symbolic_shape(array.shape) for array in inputs]
    layer = layer_cls(**init_kwargs)
    # Keras derives a symbolic output from compute_output_shape when a layer defines it, so the
    # real shapes come from an eager call and from tracing call() on TensorSpecs with unknown dims
    eager = _flat_outputs(layer(*(tf.convert_to_tensor(array) for array in inputs), **call_kwargs))
    eager_shapes = [tuple(tensor.shape) for tensor in eager]
    computed = _compute_output_shape(layer, [tuple(array.shape) for array in inputs])
    if eager_shapes != computed:
        raise _fail(
            "symbolic", name,
            f"on inputs of shapes {[array.shape for array in inputs]} the call returns shapes {eager_shapes} but "
            f"compute_output_shape gives {computed}",
        )
    expected = _compute_output_shape(layer, symbolic_shapes)
    symbols = [keras.Input(batch_shape=shape, dtype=array.dtype.name) for shape, array in zip(symbolic_shapes, inputs)]
    outputs = [tuple(tensor.shape) for tensor in _flat_outputs(layer(*symbols, **call_kwargs))]
    if outputs != expected:
        raise _fail(
            "symbolic", name,
            f"the call on keras.Input of shapes {symbolic_shapes} gives shapes {outputs} but compute_output_shape gives {expected}",
        )
    signature = [tf.TensorSpec(shape, tf.as_dtype(array.dtype)) for shape, array in zip(symbolic_shapes, inputs)]
    traced = tf.function(lambda *args: layer(*args, **call_kwargs)).get_concrete_function(*signature)
    traced_shapes = [tuple(tensor.shape.as_list()) for tensor in _flat_outputs(traced.structured_outputs)]
    if len(traced_shapes) != len(expected) or not all(_compatible(t, e) for t, e in zip(traced_shapes, expected)):
        raise _fail(
            "symbolic", name,
            f"the call traced on inputs of shapes {symbolic_shapes} returns shapes {traced_shapes} but "
            f"compute_output_shape gives {expected}",
        )


def _check_compiled(layer: keras.layers.Layer, inputs: tuple[np.ndarray, ...], call_kwargs: dict[str, Any], eager: list[np.ndarray], atol: float, name: str) -> None:
    tensors = tuple(tf.convert_to_tensor(array) for array in inputs)
    for jit_compile in (False, True):
        function = tf.function(lambda *args: layer(*args, **call_kwargs), jit_compile=jit_compile)
        try:
            outputs = [_to_numpy(tensor) for tensor in _flat_outputs(function(*tensors))]
        except Exception as error:
            raise _fail("compiled", name, f"tf.function(jit_compile={jit_compile}) raised {type(error).__name__}: {error}") from error
        _compare("compiled", name, f"tf.function(jit_compile={jit_compile}) against eager", outputs, eager, atol)


def _dense_units(layer: keras.layers.Layer, inputs: tuple[np.ndarray, ...]) -> int | None:
    """The width of a Dense put in front of a weightless layer with float inputs, else None."""
    if layer.trainable_weights or not _is_float(inputs[0].dtype):
        return None
    return int(inputs[0].shape[-1])


def _check_fit(
    layer_cls: type, init_kwargs: dict[str, Any], inputs: tuple[np.ndarray, ...], call_kwargs: dict[str, Any], dense_units: int | None, name: str
) -> None:
    model = LayerModel(layer_cls(**init_kwargs), call_kwargs, dense_units)
    tensors = tuple(tf.convert_to_tensor(array) for array in inputs)
    outputs = model(tensors if len(tensors) > 1 else tensors[0])  # builds, so that the weights exist before fit
    if not _is_float(outputs.dtype):
        raise _fail("fit", name, f"the first output has dtype {outputs.dtype.name}, which a loss cannot train; pass fit=False")
    before = [_to_numpy(weight) for weight in model.trainable_weights]
    if not before:
        raise _fail("fit", name, "the model has no trainable weight (the layer has none and its inputs are not float); pass fit=False")
    target = np.random.default_rng(0).normal(size=tuple(outputs.shape)).astype("float32")
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=0.01), loss="mse", jit_compile=True)
    batch = int(inputs[0].shape[0])
    history = model.fit(inputs if len(inputs) > 1 else inputs[0], target, batch_size=batch, epochs=1, verbose=0)
    loss = float(history.history["loss"][-1])
    if not np.isfinite(loss):
        raise _fail("fit", name, f"the compiled fit step gave the loss {loss}")
    after = [_to_numpy(weight) for weight in model.trainable_weights]
    if all(np.array_equal(b, a) for b, a in zip(before, after)):
        raise _fail("fit", name, f"no trainable weight of the {len(before)} moved in the compiled fit step (loss {loss:.4g})")


def _check_mixed_precision(
    layer_cls: type,
    init_kwargs: dict[str, Any],
    inputs: tuple[np.ndarray, ...],
    call_kwargs: dict[str, Any],
    reference: keras.layers.Layer,
    expected: list[np.ndarray],
    name: str,
) -> None:
    tensors = tuple(tf.convert_to_tensor(array) for array in inputs)
    previous = keras.config.dtype_policy()
    try:
        for policy, tolerance in MIXED_PRECISION_TOLERANCES.items():
            keras.config.set_dtype_policy(policy)
            layer = layer_cls(**init_kwargs)
            layer(*tensors, **call_kwargs)  # builds
            layer.set_weights(reference.get_weights())
            for variable in layer.weights:
                if _is_float(variable.dtype) and keras.backend.standardize_dtype(variable.dtype) != "float32":
                    raise _fail("mixed_precision", name, f"{policy}: the variable {variable.path} is {variable.dtype}, not float32")
            outputs = _flat_outputs(layer(*tensors, **call_kwargs))
            for index, (tensor, target) in enumerate(zip(outputs, expected)):
                if _is_float(tensor.dtype) and _is_float(target.dtype):
                    if keras.backend.standardize_dtype(tensor.dtype) != layer.compute_dtype:
                        raise _fail(
                            "mixed_precision", name,
                            f"{policy}: output {index} has dtype {keras.backend.standardize_dtype(tensor.dtype)}, not the compute dtype {layer.compute_dtype}",
                        )
                    scale = max(1.0, float(np.max(np.abs(target)))) if target.size else 1.0
                    largest = _largest_difference(_to_numpy(tensor), target)
                    if largest > tolerance * scale:
                        raise _fail(
                            "mixed_precision", name,
                            f"{policy}: output {index} differs from float32 by max |difference| = {largest:.3g} "
                            f"> {tolerance:g} * {scale:.3g}",
                        )
                else:
                    _compare("mixed_precision", name, f"{policy}: output {index}", [_to_numpy(tensor)], [target], 0.0)
    finally:
        keras.config.set_dtype_policy(previous)


# runs in a fresh interpreter: import the module of the layer (its registration), load, compare
_RELOAD_SCRIPT = """
import importlib, sys
import numpy as np
importlib.import_module(sys.argv[1])
import keras
import mlable_keras.testing
directory = sys.argv[2]
data = np.load(directory + "/data.npz")
inputs = [data[f"input_{index}"] for index in range(int(data["count"]))]
model = keras.saving.load_model(directory + "/model.keras")
outputs = model(tuple(inputs) if len(inputs) > 1 else inputs[0])
actual = np.asarray(keras.ops.convert_to_numpy(outputs)).astype(np.float64)
expected = data["expected"].astype(np.float64)
if actual.shape != expected.shape:
    print(f"the reloaded model returns shape {actual.shape} instead of {expected.shape}")
    sys.exit(3)
print(f"{float(np.max(np.abs(actual - expected), initial=0.0)):.17g}")
"""


def _check_saving(
    layer_cls: type, init_kwargs: dict[str, Any], inputs: tuple[np.ndarray, ...], call_kwargs: dict[str, Any], dense_units: int | None, atol: float, name: str
) -> None:
    module = layer_cls.__module__
    if module == "__main__":
        raise _fail("saving", name, "the class is defined in __main__, which a fresh process cannot import; move it to a module")
    model = LayerModel(layer_cls(**init_kwargs), call_kwargs, dense_units)
    tensors = tuple(tf.convert_to_tensor(array) for array in inputs)
    expected = _to_numpy(model(tensors if len(tensors) > 1 else tensors[0]))
    with tempfile.TemporaryDirectory(prefix="mlable-check-layer-") as directory:
        path = os.path.join(directory, "model.keras")
        model.save(path)
        try:
            loaded = keras.saving.load_model(path)
        except Exception as error:
            raise _fail("saving", name, f"keras.saving.load_model raised {type(error).__name__}: {error}") from error
        actual = _to_numpy(loaded(tensors if len(tensors) > 1 else tensors[0]))
        _compare("saving", name, "the reloaded model (same process)", [actual], [expected], atol)
        arrays = {f"input_{index}": array for index, array in enumerate(inputs)}
        np.savez(os.path.join(directory, "data.npz"), count=len(inputs), expected=expected, **arrays)
        environment = dict(os.environ)
        # the fresh process finds the modules this one found (a test directory, a source checkout)
        environment["PYTHONPATH"] = os.pathsep.join([entry for entry in sys.path if entry] + [environment.get("PYTHONPATH", "")])
        environment.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        try:
            result = subprocess.run(
                [sys.executable, "-c", _RELOAD_SCRIPT, module, directory],
                capture_output=True, text=True, env=environment, timeout=SUBPROCESS_TIMEOUT, check=False,
            )
        except subprocess.TimeoutExpired as error:
            raise _fail("saving", name, f"the fresh process did not finish in {SUBPROCESS_TIMEOUT} s") from error
    if result.returncode != 0:
        tail = (result.stdout + result.stderr).strip().splitlines()[-5:]
        raise _fail("saving", name, f"reloading in a fresh process (importing {module!r}) failed with code {result.returncode}: {' | '.join(tail)}")
    largest = float(result.stdout.strip().splitlines()[-1])
    if not largest <= atol:
        raise _fail("saving", name, f"the model reloaded in a fresh process differs by max |difference| = {largest:.3g} > atol={atol:g}")


def check_layer(
    layer_cls: type,
    init_kwargs: dict[str, Any],
    inputs: Any,
    call_kwargs: dict[str, Any] | None = None,
    *,
    config: bool = True,
    json: bool = True,
    symbolic: bool = True,
    compiled: bool = True,
    fit: bool = True,
    mixed_precision: bool = True,
    saving: bool = True,
    atol: float = 1e-5,
) -> keras.layers.Layer:
    """Runs the standard checks of a Keras layer on one configuration; each part can be switched off.

    Parts, in order:

    - ``config``: every constructor argument is a key of ``get_config()``, and
      ``from_config(get_config())`` has an equal config;
    - ``json``: ``serialize_keras_object`` -> ``json.dumps`` -> ``json.loads`` ->
      ``deserialize_keras_object`` gives a layer of the same class and config;
    - ``symbolic``: the output shapes of an eager call, of a call on ``keras.Input``
      and of ``call`` traced on inputs whose axes are unknown (``None``, all but
      the last) agree with ``compute_output_shape``;
    - ``compiled``: ``tf.function`` and ``tf.function(jit_compile=True)`` give the
      eager outputs within ``atol``;
    - ``fit``: one ``fit`` step compiled with XLA, in a model around the layer (after
      a ``Dense`` when the layer has no weights and float inputs), gives a finite
      loss and moves the weights;
    - ``mixed_precision``: under the global policies ``mixed_float16`` and
      ``mixed_bfloat16``, with the float32 layer's weights, the variables stay
      float32, the outputs are in the compute dtype and close to float32
      (``MIXED_PRECISION_TOLERANCES``, relative to the output scale); the global
      policy is restored afterwards;
    - ``saving``: the model saved as ``.keras`` (in a temporary directory, removed
      afterwards) reloads in this process and in a fresh Python process, which
      imports ``layer_cls.__module__`` first, with outputs within ``atol``.

    Args:
        layer_cls: the layer class (registered with
            ``keras.saving.register_keras_serializable`` for ``json`` and ``saving``).
        init_kwargs: its constructor arguments.
        inputs: one array or a tuple of arrays, the positional call arguments;
            axis 0 is the batch.
        call_kwargs: keyword arguments for every call.
        config: run the config part.
        json: run the JSON part.
        symbolic: run the symbolic part.
        compiled: run the ``tf.function`` / XLA part (switch it off for string inputs).
        fit: run the training part.
        mixed_precision: run the mixed precision part.
        saving: run the ``.keras`` part (a few seconds: a fresh interpreter imports TensorFlow).
        atol: the absolute tolerance of the ``compiled`` and ``saving`` comparisons.

    Returns:
        The float32 layer, built by an eager call on ``inputs``.

    Raises:
        AssertionError: ``"check_layer[<part>] <LayerName>: <what broke>, <numbers>"``.
    """
    name = layer_cls.__name__
    call_kwargs = dict(call_kwargs or {})
    arrays = tuple(np.asarray(array) for array in _as_tuple(inputs))
    if config:
        _check_config(layer_cls, init_kwargs, name)
    if json:
        _check_json(layer_cls, init_kwargs, name)
    if symbolic:
        _check_symbolic(layer_cls, init_kwargs, arrays, call_kwargs, name)
    layer = layer_cls(**init_kwargs)
    eager = [_to_numpy(tensor) for tensor in _flat_outputs(layer(*(tf.convert_to_tensor(array) for array in arrays), **call_kwargs))]
    if compiled:
        _check_compiled(layer, arrays, call_kwargs, eager, atol, name)
    dense_units = _dense_units(layer, arrays)
    if fit:
        _check_fit(layer_cls, init_kwargs, arrays, call_kwargs, dense_units, name)
    if mixed_precision:
        _check_mixed_precision(layer_cls, init_kwargs, arrays, call_kwargs, layer, eager, name)
    if saving:
        _check_saving(layer_cls, init_kwargs, arrays, call_kwargs, dense_units, atol, name)
    return layer


def _split_sizes(total: int, splits: int) -> list[int]:
    """Batch sizes in proportion 1 : 2 : ... : splits (unequal, so that a mean of batch means shows)."""
    splits = max(1, min(splits, total))
    weights = np.arange(1, splits + 1, dtype=np.float64)
    sizes = np.maximum(1, np.floor(total * weights / weights.sum()).astype(int))
    sizes[-1] = total - sizes[:-1].sum()
    if sizes[-1] < 1:  # too few rows for the proportions: one row per batch but the last
        sizes = np.asarray([1] * (splits - 1) + [total - splits + 1])
    return [int(size) for size in sizes]


def _metric_fail(part: str, name: str, message: str) -> AssertionError:
    return AssertionError(f"check_metric[{part}] {name}: {message}")


def check_metric(
    metric_factory: Callable[[], keras.metrics.Metric],
    y_true: Any,
    y_pred: Any,
    reference_fn: Callable[[np.ndarray, np.ndarray, np.ndarray | None], Any],
    sample_weight: Any = None,
    splits: int = 3,
    atol: float = 1e-6,
) -> None:
    """Checks a metric against a reference, its invariance to batch splits, and its reset.

    Parts:

    - ``reference``: one ``update_state`` on all the data gives
      ``reference_fn(y_true, y_pred, sample_weight)``;
    - ``split``: feeding the data in ``splits`` batches along axis 0, of unequal
      sizes in proportion ``1 : 2 : ... : splits``, gives the one-batch result
      (a metric that averages batch means fails this);
    - ``reset``: after ``reset_state`` the result is that of a new metric, and
      feeding the data again gives the one-batch result.

    Args:
        metric_factory: a callable returning a new metric, e.g. ``lambda: MyMetric(axis=-1)``.
        y_true: the targets, axis 0 the batch.
        y_pred: the predictions, same batch size.
        reference_fn: ``reference_fn(y_true, y_pred, sample_weight) -> float``,
            an independent computation (numpy, a naive loop).
        sample_weight: optional weights, axis 0 the batch.
        splits: the number of batches of the ``split`` part (at most the batch size).
        atol: the largest absolute difference allowed.

    Raises:
        AssertionError: ``"check_metric[<part>] <MetricName>: ..."`` with the numbers.
    """
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    weights = None if sample_weight is None else np.asarray(sample_weight)
    metric = metric_factory()
    name = type(metric).__name__
    fresh = _to_numpy(metric.result())
    metric.update_state(y_true, y_pred, sample_weight=weights)
    whole = float(_to_numpy(metric.result()))
    expected = float(np.asarray(reference_fn(y_true, y_pred, weights)))
    if not abs(whole - expected) <= atol:
        raise _metric_fail("reference", name, f"the result {whole!r} differs from the reference {expected!r} by {abs(whole - expected):.3g} > atol={atol:g}")

    sizes = _split_sizes(int(y_true.shape[0]), splits)
    split = metric_factory()
    start = 0
    for size in sizes:
        part = slice(start, start + size)
        split.update_state(y_true[part], y_pred[part], sample_weight=None if weights is None else weights[part])
        start += size
    in_batches = float(_to_numpy(split.result()))
    if not abs(in_batches - whole) <= atol:
        raise _metric_fail(
            "split", name,
            f"feeding batches of sizes {sizes} gives {in_batches!r}, one batch gives {whole!r} "
            f"(difference {abs(in_batches - whole):.3g} > atol={atol:g})",
        )

    metric.reset_state()
    after_reset = _to_numpy(metric.result())
    if not np.array_equal(after_reset, fresh, equal_nan=True):
        raise _metric_fail("reset", name, f"after reset_state the result is {after_reset!r}, a new metric gives {fresh!r}")
    metric.update_state(y_true, y_pred, sample_weight=weights)
    again = float(_to_numpy(metric.result()))
    if not abs(again - whole) <= atol:
        raise _metric_fail("reset", name, f"after reset_state and the same data the result is {again!r} instead of {whole!r}")


__all__ = [
    "HYPOTHESIS_MESSAGE",
    "LayerModel",
    "MIXED_PRECISION_TOLERANCES",
    "PARTS",
    "SPECIAL_CHARACTERS",
    "axis_pairs",
    "boolean_masks",
    "byte_tokens",
    "caches",
    "check_cached_decoding",
    "check_layer",
    "check_metric",
    "check_relative_positions",
    "divisors",
    "divisors_of",
    "float_arrays",
    "logits",
    "positions",
    "shapes",
    "utf8_texts",
]

"""A testing toolkit for Keras layers and metrics: the checks every custom layer should pass.

- ``check_layer`` runs, on one layer class, one set of constructor arguments and
  one set of inputs, the checks that catch the usual breakages of a Keras 3 layer
  (keras-hub ``tests/test_case.py`` style): config and JSON round trips, symbolic
  calls (known and unknown dims) against ``compute_output_shape`` /
  ``compute_output_spec``, eager against ``tf.function`` and XLA, one compiled
  ``fit`` step in which every weight gets a gradient, ``mixed_float16`` and
  ``mixed_bfloat16``, and a ``.keras`` save reloaded in this process and in a
  fresh Python process.
- ``check_metric`` compares a metric with a reference function, and checks that
  batch splits of unequal sizes give the one-batch result (the bug of metrics
  that average batch means), that ``sample_weight`` acts like repeating rows,
  that ``reset_state`` works, that ``update_state`` traces in ``tf.function``,
  and that the config and JSON round trips keep the results.
- ``check_config`` is the config / JSON part alone, for any Keras object.
- ``ReloadQueue`` collects the models that ``check_layer`` saves and reloads them
  all in one fresh process (one TensorFlow import instead of one per layer).

Every failure raises ``AssertionError("check_layer[<part>] <LayerName>: <what broke>;
inputs <shapes and dtypes>")`` (``check_metric[<part>] ...`` for metrics) with the
numbers. The hypothesis strategies and the Keras-free checkers of
``mlable_core.testing`` are re-exported here.

Example:
    >>> import numpy as np
    >>> from mlable_keras import testing
    >>> from mlable_keras.layers.reshaping import Divide
    >>> x = np.arange(24, dtype="float32").reshape(2, 3, 4)
    >>> layer = testing.check_layer(Divide, dict(input_axis=2, output_axis=1, factor=2), x, fresh_process=False)
    >>> layer(x).shape
    TensorShape([2, 6, 2])
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import json as json_module
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from mlable_core import testing as _core
from mlable_core.testing import SPECIAL_CHARACTERS, check_cached_decoding, check_relative_positions, divisors

HYPOTHESIS_MESSAGE = _core.HYPOTHESIS_MESSAGE.replace("mlable_core.testing", "mlable_keras.testing")

PARTS = ("config", "json", "symbolic", "compiled", "fit", "mixed_precision", "saving")

# relative tolerance of each mixed policy against float32, scaled by max(1, max |float32 output|);
# bfloat16 keeps 8 mantissa bits against float16's 11
MIXED_PRECISION_TOLERANCES = {"mixed_float16": 2e-2, "mixed_bfloat16": 8e-2}

# the float inputs of the overflow probe are scaled up to this largest magnitude: exp(16), 16² summed
# over a few hundred features, or scores of such vectors overflow float16 (65504) when computed in it
OVERFLOW_PROBE_MAGNITUDE = 16.0
FLOAT16_MAX = 65504.0

# seconds a fresh process gets to import TensorFlow, load the models and run them
SUBPROCESS_TIMEOUT = 600

# what to look for in an error raised by Keras or TensorFlow, and what it usually means
_HINTS = (
    (r"cannot add new elements of state|only supports singleton tf\.Variables", "weights are created in call(): create them in build()"),
    (r"numpy\(\)|has no attribute 'numpy'|OperatorNotAllowedInGraphError|not allowed in Graph execution|symbolic tf\.Tensor as a Python bool",
     "call() reads tensor values in Python (.numpy(), float(x), `if x > 0:`), which only works eagerly: use tf.cond / keras.ops.where"),
    (r"Could not locate function",
     "get_config() holds a function Keras cannot find by name: store its name (keras.activations.serialize) or register it"),
    (r"Could not locate class", "the class is not registered: decorate it with @keras.saving.register_keras_serializable(package=...)"),
    (r"could not be deserialized", "a value of get_config() does not come back as from_config expects, or a class is not registered"),
    (r"expected to be a (half|bfloat16) tensor but is a float tensor|expected to be a float tensor but is a (half|bfloat16) tensor",
     "a float32 constant or weight meets the compute dtype: cast it with keras.ops.cast(..., self.compute_dtype)"),
    (r"unsupported operand type\(s\) for .*'NoneType'|'NoneType' object cannot be interpreted as an integer|must be .*not 'NoneType'",
     "a shape computation does not handle unknown (None) dims: read run-time sizes with tf.shape / keras.ops.shape"),
)


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
chunk_sizes = _reexport(_core.chunk_sizes)
divisors_of = _reexport(_core.divisors_of)
float_arrays = _reexport(_core.float_arrays)
logits = _reexport(_core.logits)
positions = _reexport(_core.positions)
shapes = _reexport(_core.shapes)
utf8_texts = _reexport(_core.utf8_texts)


# small helpers -----------------------------------------------------------------------------------


def _to_numpy(value: Any) -> np.ndarray:
    """A numpy array (half precision read as float32, sparse gradients densified)."""
    if isinstance(value, tf.IndexedSlices):
        value = tf.convert_to_tensor(value)
    if hasattr(value, "numpy"):  # eager tensors and variables (np.asarray on them warns under NumPy 2)
        value = value.numpy()
    array = np.asarray(value)
    if array.dtype.name in ("bfloat16", "float16") or array.dtype.kind == "V":
        array = array.astype(np.float32)
    return array


def _dtype_name(dtype: Any) -> str:
    return keras.backend.standardize_dtype(dtype)


def _is_float(dtype: Any) -> bool:
    return tf.as_dtype(_dtype_name(dtype)).is_floating


def _is_tensor(value: Any) -> bool:
    return isinstance(value, (np.ndarray, tf.Tensor, tf.Variable)) or keras.ops.is_tensor(value)


def _flat(outputs: Any) -> list[Any]:
    return list(keras.tree.flatten(outputs))


def _describe_arrays(arrays: Sequence[np.ndarray], names: Sequence[str] | None = None) -> str:
    names = names or [""] * len(arrays)
    return ", ".join(f"{name}{' ' if name else ''}{_dtype_name(array.dtype)} {tuple(array.shape)}" for name, array in zip(names, arrays))


def _difference(actual: np.ndarray, expected: np.ndarray) -> tuple[float, tuple[int, ...]]:
    """The largest |actual - expected| (inf where only one side is finite or NaN) and where it is."""
    if actual.dtype.kind not in "fc" and expected.dtype.kind not in "fc":
        unequal = actual != expected
        if not unequal.any():
            return 0.0, ()
        index = np.unravel_index(int(np.argmax(unequal)), unequal.shape)
        return float("inf"), tuple(int(i) for i in index)
    actual, expected = actual.astype(np.float64), expected.astype(np.float64)
    same = (actual == expected) | (np.isnan(actual) & np.isnan(expected))
    difference = np.where(same, 0.0, np.abs(actual - expected))
    difference = np.where(np.isnan(difference), np.inf, difference)
    if difference.size == 0:
        return 0.0, ()
    index = np.unravel_index(int(np.argmax(difference)), difference.shape)
    return float(difference[index]), tuple(int(i) for i in index)


def _scale(array: np.ndarray) -> float:
    """``max(1, max |finite value|)``: tolerances are relative to the size of an output."""
    if array.dtype.kind not in "fc" or array.size == 0:
        return 1.0
    finite = np.abs(array[np.isfinite(array)])
    return max(1.0, float(finite.max())) if finite.size else 1.0


def _compare_outputs(
    actual: Sequence[np.ndarray], expected: Sequence[np.ndarray | None], atol: float, rtol: float, what: str
) -> str | None:
    """``None`` when the outputs agree (|difference| <= atol + rtol * scale), else what differs, with the numbers.

    ``expected`` may hold ``None`` for an output that is not compared.
    """
    if len(actual) != len(expected):
        return f"{what}: {len(actual)} outputs instead of {len(expected)}"
    for index, (left, right) in enumerate(zip(actual, expected)):
        if right is None:
            continue
        left, right = np.asarray(left), np.asarray(right)
        if left.shape != right.shape:
            return f"{what}: output {index} has shape {left.shape} instead of {right.shape}"
        largest, where = _difference(left, right)
        bound = atol + rtol * _scale(right)
        if largest > bound:
            return (
                f"{what}: output {index} differs by max |difference| = {largest:.4g} > {bound:.3g} "
                f"(atol={atol:g}, rtol={rtol:g}) at index {where}: {_value(left[where])} instead of {_value(right[where])}"
            )
    return None


def _value(item: Any) -> str:
    item = np.asarray(item)
    return f"{float(item):.6g}" if item.dtype.kind == "f" else repr(item.item())


def _hint(error: BaseException) -> str:
    text = f"{type(error).__name__}: {error}"
    for pattern, hint in _HINTS:
        if re.search(pattern, text):
            return f" ({hint})"
    return ""


def _first_line(error: BaseException, limit: int = 400) -> str:
    text = " ".join(str(error).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _error_summary(error: BaseException, limit: int = 600) -> str:
    """``Type: message`` of an error, with the innermost cause (Keras wraps the useful one) and a hint."""
    chain, current = [error], error
    while (current.__cause__ or current.__context__) is not None and len(chain) < 10:
        current = current.__cause__ or current.__context__
        chain.append(current)
    matches = (re.search(r"Could not locate (class|function) '[^']*'", str(item)) for item in chain)
    located = next((match.group(0) for match in matches if match), None)
    if located:
        return f"{type(error).__name__}: {located}{_hint(LookupError(located))}; {_first_line(error, limit // 2)}"
    text = f"{type(error).__name__}: {_first_line(error, limit)}"
    if len(chain) > 1:
        text += f" (caused by {type(chain[-1]).__name__}: {_first_line(chain[-1], limit // 2)})"
    return text + _hint(error)


# the layer under test ----------------------------------------------------------------------------


def _rebuild(structure: Sequence[int] | None, values: Sequence[Any]) -> list[Any]:
    """The positional arguments from their flat list: ``-1`` takes one value, ``n >= 0`` a list of ``n``."""
    if structure is None:
        return list(values)
    arguments, start = [], 0
    for size in structure:
        if size < 0:
            arguments.append(values[start])
            start += 1
        else:
            arguments.append(list(values[start : start + size]))
            start += size
    return arguments


class _Case:
    """One layer configuration and its inputs: positional arrays (or lists of arrays), array keyword arguments (masks), the rest."""

    def __init__(self, layer_cls: type, init_kwargs: Mapping[str, Any], inputs: Any, call_kwargs: Mapping[str, Any] | None) -> None:
        if not isinstance(layer_cls, type) or not issubclass(layer_cls, keras.layers.Layer):
            raise TypeError(f"`layer_cls` must be a keras.layers.Layer subclass. Received: layer_cls={layer_cls!r}")
        self.layer_cls = layer_cls
        self.name = layer_cls.__name__
        self.init_kwargs = dict(init_kwargs)
        items = tuple(inputs) if isinstance(inputs, (tuple, list)) else (inputs,)
        if not items:
            raise ValueError("`inputs` must hold at least one array. Received: inputs=()")
        self.structure: list[int] = []
        self.flat_positional: list[np.ndarray] = []
        for item in items:
            group = isinstance(item, (list, tuple))
            members = list(item) if group else [item]
            self.structure.append(len(members) if group else -1)
            self.flat_positional += [member if isinstance(member, np.ndarray) else _to_numpy(member) for member in members]
        self.tensor_kwargs: dict[str, np.ndarray] = {}
        self.static_kwargs: dict[str, Any] = {}
        for key, value in dict(call_kwargs or {}).items():
            if _is_tensor(value):
                self.tensor_kwargs[key] = value if isinstance(value, np.ndarray) else _to_numpy(value)
            else:
                self.static_kwargs[key] = value.item() if isinstance(value, np.generic) else value
        self.training_given = "training" in self.static_kwargs

    @property
    def positional(self) -> list[Any]:
        """The positional arguments: arrays, or lists of arrays."""
        return _rebuild(self.structure, self.flat_positional)

    @property
    def arrays(self) -> list[np.ndarray]:
        """Every input array, flat: the positional ones, then the array keyword arguments."""
        return list(self.flat_positional) + list(self.tensor_kwargs.values())

    def describe(self) -> str:
        parts = [
            f"[{_describe_arrays(item)}]" if isinstance(item, list) else _describe_arrays([item]) for item in self.positional
        ] + [f"{key}={_describe_arrays([array])}" for key, array in self.tensor_kwargs.items()]
        text = ", ".join(parts)
        if self.static_kwargs:
            text += ", " + ", ".join(f"{key}={value!r}" for key, value in self.static_kwargs.items())
        return f"inputs {text}"

    def new_layer(self, **overrides: Any) -> keras.layers.Layer:
        return self.layer_cls(**{**self.init_kwargs, **overrides})

    def call(self, layer: keras.layers.Layer, arrays: Sequence[Any] | None = None, training: bool | None = False) -> Any:
        """Calls ``layer`` on the inputs (or on ``arrays``, in the order of ``self.arrays``)."""
        values = list(self.arrays if arrays is None else arrays)
        count = len(self.flat_positional)
        kwargs = dict(self.static_kwargs)
        kwargs.update(zip(self.tensor_kwargs, values[count:]))
        if not self.training_given and training is not None:
            kwargs["training"] = training
        return layer(*_rebuild(self.structure, values[:count]), **kwargs)

    def tensors(self, arrays: Sequence[np.ndarray] | None = None) -> list[tf.Tensor]:
        return [tf.convert_to_tensor(array) for array in (self.arrays if arrays is None else arrays)]


def _failure(message: str) -> AssertionError:
    """An AssertionError marked as a finding of a checker (which ``_part`` lets through unchanged)."""
    error = AssertionError(message)
    error.mlable_finding = True  # type: ignore[attr-defined]
    return error


@contextlib.contextmanager
def _part(kind: str, part: str, name: str, context: Callable[[], str]) -> Iterator[Callable[[str], AssertionError]]:
    """Runs one part: ``fail(message)`` builds its AssertionError; any other exception becomes one."""

    def fail(message: str) -> AssertionError:
        return _failure(f"{kind}[{part}] {name}: {message}; {context()}")

    try:
        yield fail
    except Exception as error:  # noqa: BLE001 (any error of the code under test is the finding)
        if getattr(error, "mlable_finding", False):
            raise
        raise _failure(f"{kind}[{part}] {name}: raised {type(error).__name__}: {_first_line(error)}{_hint(error)}; {context()}") from error


# the wrapper model of the fit and saving parts ---------------------------------------------------


@keras.saving.register_keras_serializable(package="mlable_testing")
class LayerModel(keras.Model):
    """Wraps one layer for ``fit`` and ``.keras`` saving, optionally after a ``Dense`` that gives it weights to train.

    Args:
        layer: the wrapped layer (or its serialized config, on reload).
        call_kwargs: keyword arguments (JSON-able values) for every call of the layer.
        tensor_kwargs: names of keyword arguments given as tensors, after the positional inputs.
        dense_units: when set, a ``Dense(dense_units)`` is applied to the first input first.
        structure: how the flat positional inputs form the layer's arguments: ``-1`` one
            tensor, ``n >= 0`` a list of ``n`` tensors; ``None``: one tensor each.
        **kwargs: base ``keras.Model`` arguments.

    Call arguments:
        inputs: the flat list of the layer's positional inputs followed by the tensors of ``tensor_kwargs``.

    Output shape:
        The float outputs of the layer (one tensor, or a list when there are several);
        the first ``call_outputs`` of them when that attribute is set.
    """

    def __init__(
        self,
        layer: keras.layers.Layer | dict,
        call_kwargs: dict | None = None,
        tensor_kwargs: Sequence[str] = (),
        dense_units: int | None = None,
        structure: Sequence[int] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.structure = None if structure is None else [int(size) for size in structure]
        self.layer = keras.saving.deserialize_keras_object(layer) if isinstance(layer, dict) else layer
        self.call_kwargs = dict(call_kwargs or {})
        self.tensor_kwargs = list(tensor_kwargs)
        self.dense_units = dense_units
        self.dense = None if dense_units is None else keras.layers.Dense(dense_units, name="pre_dense")
        self.call_outputs: int | None = None  # how many float outputs call() returns (None: all)

    def all_outputs(self, inputs: Sequence[Any], training: bool | None = None) -> list[Any]:
        """Every output of the layer, flattened (``keras.tree.flatten``)."""
        inputs = list(inputs)
        count = len(inputs) - len(self.tensor_kwargs)
        if self.dense is not None:
            inputs[0] = self.dense(inputs[0])
        kwargs = dict(self.call_kwargs)
        kwargs.update(zip(self.tensor_kwargs, inputs[count:]))
        if training is not None and "training" not in self.call_kwargs:
            kwargs["training"] = training
        return _flat(self.layer(*_rebuild(self.structure, inputs[:count]), **kwargs))

    def call(self, inputs: Sequence[Any], training: bool | None = None) -> Any:
        outputs = [output for output in self.all_outputs(inputs, training) if _is_float(output.dtype)][: self.call_outputs]
        return outputs[0] if len(outputs) == 1 else outputs

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            layer=keras.saving.serialize_keras_object(self.layer),
            call_kwargs=self.call_kwargs,
            tensor_kwargs=self.tensor_kwargs,
            dense_units=self.dense_units,
            structure=self.structure,
        )
        return config


def _model_outputs(model: keras.Model, inputs: Sequence[Any]) -> list[np.ndarray]:
    """Every output of a saved model (a ``LayerModel`` or a functional model), flattened, as numpy."""
    tensors = [tf.convert_to_tensor(array) for array in inputs]
    if isinstance(model, LayerModel):
        outputs = model.all_outputs(tensors, training=False)
    else:
        outputs = _flat(model(tensors if len(tensors) > 1 else tensors[0], training=False))
    return [_to_numpy(output) for output in outputs]


# reloading in a fresh process --------------------------------------------------------------------

_RELOAD_SCRIPT = """
import importlib, json, sys, traceback
import numpy as np
cases = json.loads(sys.argv[1])
failures = []
for module in sorted({module for case in cases for module in case["modules"]}):
    try:
        importlib.import_module(module)
    except Exception as error:
        failures.append(f"importing {module!r} failed: {type(error).__name__}: {error}")
import keras
from mlable_keras import testing
for case in cases:
    try:
        model = keras.saving.load_model(case["model"])
        data = np.load(case["data"])
        inputs = [data[f"input_{i}"] for i in range(int(data["inputs"]))]
        expected = [data[f"expected_{i}"] for i in range(int(data["expected"]))]
        problem = testing._compare_outputs(testing._model_outputs(model, inputs), expected, case["atol"], case["rtol"], "outputs after the reload")
        if problem:
            failures.append(f"{case['name']}: {problem}")
    except Exception as error:
        failures.append(f"{case['name']}: {testing._error_summary(error)}")
print(json.dumps(failures))
"""


class ReloadQueue:
    """Saved ``.keras`` models to reload together in one fresh Python process.

    ``check_layer(..., fresh_process=queue)`` adds its saved models here instead
    of starting a process per layer; ``queue.check()`` then starts one
    interpreter that imports the layers' modules (as a user imports their
    package), loads every model and compares its outputs with those before saving.
    A fresh process is where a class registered only at run time, or a module
    that does not register its classes on import, shows up.

    Args:
        directory: where the models are saved; by default a temporary directory,
            removed when the interpreter exits.

    Example:
        >>> queue = ReloadQueue()
        >>> check_layer(MyLayer, {}, x, fresh_process=queue)  # doctest: +SKIP
        >>> queue.check()  # doctest: +SKIP
    """

    def __init__(self, directory: str | None = None) -> None:
        if directory is None:
            directory = tempfile.mkdtemp(prefix="mlable-reload-")
            atexit.register(shutil.rmtree, directory, ignore_errors=True)
        os.makedirs(directory, exist_ok=True)
        self.directory = directory
        self.cases: list[dict[str, Any]] = []

    def __len__(self) -> int:
        return len(self.cases)

    def add(
        self,
        model: keras.Model,
        inputs: Sequence[np.ndarray],
        expected: Sequence[np.ndarray],
        name: str,
        modules: Sequence[str] = (),
        atol: float = 1e-5,
        rtol: float = 1e-5,
    ) -> str:
        """Saves ``model`` and records what it must return on ``inputs``; returns the ``.keras`` path."""
        stem = os.path.join(self.directory, f"{len(self.cases):04d}-{re.sub(r'[^A-Za-z0-9_.-]', '_', name)}")
        model.save(stem + ".keras")
        arrays = {f"input_{index}": np.asarray(array) for index, array in enumerate(inputs)}
        arrays.update({f"expected_{index}": np.asarray(array) for index, array in enumerate(expected)})
        np.savez(stem + ".npz", inputs=len(inputs), expected=len(expected), **arrays)
        self.cases.append(
            dict(model=stem + ".keras", data=stem + ".npz", name=name, modules=[m for m in modules if m != "__main__"], atol=atol, rtol=rtol)
        )
        return stem + ".keras"

    def check(self, timeout: float = SUBPROCESS_TIMEOUT) -> None:
        """Reloads every queued model in one fresh interpreter; raises ``AssertionError`` listing the failures."""
        if not self.cases:
            return
        environment = dict(os.environ)
        # the fresh process finds the modules this one found (a test directory, a source checkout)
        environment["PYTHONPATH"] = os.pathsep.join([entry for entry in sys.path if entry] + [environment.get("PYTHONPATH", "")])
        environment.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        environment.setdefault("KERAS_BACKEND", "tensorflow")
        names = ", ".join(case["name"] for case in self.cases)
        try:
            result = subprocess.run(
                [sys.executable, "-c", _RELOAD_SCRIPT, json_module.dumps(self.cases)],
                capture_output=True, text=True, env=environment, cwd=self.directory, timeout=timeout, check=False,
            )
        except subprocess.TimeoutExpired as error:
            raise AssertionError(f"check_layer[saving] fresh process: reloading {names} took more than {timeout} s") from error
        lines = result.stdout.strip().splitlines()
        if result.returncode != 0 or not lines:
            tail = " | ".join((result.stdout + result.stderr).strip().splitlines()[-6:])
            raise AssertionError(f"check_layer[saving] fresh process: the reload of {names} exited with code {result.returncode}: {tail}")
        failures = json_module.loads(lines[-1])
        if failures:
            raise AssertionError(
                f"check_layer[saving] fresh process: {len(failures)} of {len(self.cases)} saved models failed to reload "
                f"in a fresh interpreter:\n  " + "\n  ".join(failures)
            )


# config and JSON ---------------------------------------------------------------------------------

_PLAIN = (bool, int, float, str, type(None))


def _comparable(value: Any) -> Any:
    """A config value as Keras saves it (objects and arrays serialized), so that equal settings compare equal."""
    if isinstance(value, Mapping):
        return {key: _comparable(item) for key, item in value.items()}
    if isinstance(value, (tuple, list)):
        return [_comparable(item) for item in value]
    if isinstance(value, _PLAIN):
        return value
    try:
        return _comparable(keras.saving.serialize_keras_object(value))
    except Exception:  # noqa: BLE001 (not serializable: compared as text, and the JSON part reports it)
        return repr(value)


def _changed_keys(config: Mapping[str, Any], other: Mapping[str, Any]) -> list[str]:
    absent = "<absent>"
    return sorted(key for key in set(config) | set(other) if _comparable(config.get(key, absent)) != _comparable(other.get(key, absent)))


def _is_plain(value: Any) -> bool:
    if isinstance(value, (tuple, list)):
        return all(_is_plain(item) for item in value)
    return isinstance(value, _PLAIN)


def _unregistered(cls: type) -> bool:
    """Whether Keras cannot find ``cls`` by name (Keras' own classes are found by module instead)."""
    if cls.__module__.split(".")[0] in ("keras", "keras_hub", "keras_nlp", "keras_cv", "tf_keras"):
        return False
    return keras.saving.get_registered_object(keras.saving.get_registered_name(cls)) is not cls


def check_config(obj: Any, init_kwargs: Mapping[str, Any] | None = None, *, json: bool = True) -> None:
    """Checks the config round trip of a Keras object (layer, metric, ...) and its JSON serialisation.

    - ``config``: every constructor argument of ``init_kwargs`` is a key of
      ``get_config()``; ``from_config(get_config())`` works and gives an equal
      config; the attributes named like the constructor arguments, when plain
      data (numbers, strings, tuples of them), are equal on the rebuilt object;
    - ``json``: the class is registered with Keras, the config is JSON, and
      ``serialize_keras_object`` -> ``json.dumps`` -> ``json.loads`` ->
      ``deserialize_keras_object`` gives an object of the same class and config.

    Args:
        obj: the object.
        init_kwargs: the constructor arguments it was built with.
        json: run the JSON part.

    Raises:
        AssertionError: ``"check_config[config|json] <ClassName>: ..."``.
    """
    init_kwargs = dict(init_kwargs or {})
    context = lambda: f"constructor arguments {init_kwargs}"  # noqa: E731
    _config_part(obj, init_kwargs, "check_config", context)
    if json:
        _json_part(obj, "check_config", context)


def _config_part(obj: Any, init_kwargs: Mapping[str, Any], kind: str, context: Callable[[], str]) -> None:
    cls, name = type(obj), type(obj).__name__
    with _part(kind, "config", name, context) as fail:
        config = obj.get_config()
        missing = sorted(key for key in init_kwargs if key not in config)
        if missing:
            raise fail(f"get_config() misses the constructor arguments {missing}; it has the keys {sorted(config)}")
        try:
            clone = cls.from_config(config)
        except Exception as error:
            raise fail(f"from_config(get_config()) raised {type(error).__name__}: {_first_line(error)}") from error
        clone_config = clone.get_config()
        changed = _changed_keys(config, clone_config)
        if changed:
            key = changed[0]
            raise fail(
                f"from_config(get_config()) changed the config at the keys {changed}: "
                f"{key}={config.get(key, '<absent>')!r} became {clone_config.get(key, '<absent>')!r}"
            )
        for key in init_kwargs:
            if hasattr(obj, key) and hasattr(clone, key):
                mine, theirs = getattr(obj, key), getattr(clone, key)
                if _is_plain(mine) and _is_plain(theirs) and _comparable(mine) != _comparable(theirs):
                    raise fail(
                        f"get_config() stores the argument {key!r} wrongly: the object has {key}={mine!r}, "
                        f"the one rebuilt by from_config(get_config()) has {key}={theirs!r} (config value {config[key]!r})"
                    )


def _json_part(obj: Any, kind: str, context: Callable[[], str]) -> None:
    cls, name = type(obj), type(obj).__name__
    with _part(kind, "json", name, context) as fail:
        if _unregistered(cls):
            raise fail(
                f"the class is not registered with Keras (keras.saving.get_registered_name gives "
                f"{keras.saving.get_registered_name(cls)!r}, which finds no such class): decorate it with "
                f"@keras.saving.register_keras_serializable(package=...), or .keras files holding it will not load"
            )
        config = obj.get_config()
        try:
            text = json_module.dumps(keras.saving.serialize_keras_object(obj))
        except TypeError as error:
            bad = [key for key, value in config.items() if not _json_ok(value)]
            raise fail(f"get_config() holds values JSON cannot encode at the keys {bad} ({error})") from error
        try:
            restored = keras.saving.deserialize_keras_object(json_module.loads(text))
        except Exception as error:
            raise fail(f"deserialize_keras_object of the JSON config raised {_error_summary(error)}{_objects_note(config)}") from error
        if type(restored) is not cls:
            raise fail(f"the JSON round trip gave a {type(restored).__name__}, not a {name}")
        changed = _changed_keys(config, restored.get_config())
        if changed:
            raise fail(f"the JSON round trip changed the config at the keys {changed}")


def _json_native(value: Any) -> bool:
    """Whether ``value`` is JSON data as is (no object that Keras has to serialize)."""
    if isinstance(value, Mapping):
        return all(isinstance(key, str) and _json_native(item) for key, item in value.items())
    if isinstance(value, (tuple, list)):
        return all(_json_native(item) for item in value)
    return isinstance(value, _PLAIN)


def _json_ok(value: Any) -> bool:
    try:
        json_module.dumps(keras.saving.serialize_keras_object(value))
    except TypeError:
        return False
    return True


def _objects_note(config: Mapping[str, Any]) -> str:
    """What to say about config values that are objects rather than JSON data."""
    raw = sorted(key for key, value in config.items() if not _json_native(value))
    if not raw:
        return ""
    kinds = ", ".join(type(config[key]).__name__ for key in raw)
    return (
        f"; get_config() holds objects at the keys {raw} ({kinds}): store plain data (numbers, strings, lists) "
        f"or keras.saving.serialize_keras_object(...), and rebuild the objects in __init__ / from_config"
    )


def _check_clone_outputs(
    case: _Case,
    layer: keras.layers.Layer,
    clone: keras.layers.Layer,
    label: str,
    eager: list[np.ndarray],
    atol: float,
    rtol: float,
    fail: Callable[[str], AssertionError],
) -> None:
    """A rebuilt layer (``from_config``, the JSON round trip), given the same weights, gives the same outputs."""
    try:
        case.call(clone)  # builds
    except Exception as error:
        raise fail(
            f"calling the layer rebuilt by {label} raised {_error_summary(error)}: a config value does not come back as the "
            f"constructor expects{_objects_note(layer.get_config())}"
        ) from error
    mine, theirs = layer.get_weights(), clone.get_weights()
    if [w.shape for w in mine] != [w.shape for w in theirs]:
        raise fail(
            f"the layer rebuilt by {label} has weights of shapes {[w.shape for w in theirs]}, "
            f"the original {[w.shape for w in mine]}: get_config() misses or mis-stores an argument that shapes the weights"
        )
    clone.set_weights(mine)
    outputs = [_to_numpy(output) for output in _flat(case.call(clone))]
    problem = _compare_outputs(outputs, eager, atol, rtol, f"the layer rebuilt by {label} with the same weights")
    if problem:
        raise fail(problem + ": get_config() misses or mis-stores an argument")


# symbolic calls and compiled functions -----------------------------------------------------------


def _default_symbolic_shape(shape: tuple[int, ...]) -> tuple[int | None, ...]:
    # every axis unknown but the last, which layers commonly read at build
    return tuple([None] * (len(shape) - 1) + [int(shape[-1])]) if shape else ()


def _symbolic_shapes(case: _Case, given: Sequence[Sequence[int | None]] | None) -> list[tuple[int | None, ...]]:
    arrays = case.arrays
    if given is None:
        return [_default_symbolic_shape(array.shape) for array in arrays]
    shapes_ = [tuple(shape) for shape in given]
    if len(shapes_) == len(case.flat_positional):  # the array keyword arguments keep the default
        shapes_ += [_default_symbolic_shape(array.shape) for array in arrays[len(shapes_) :]]
    if len(shapes_) != len(arrays):
        raise ValueError(f"`symbolic_shapes` must hold one shape per input. Received: {len(shapes_)} shapes for {case.describe()}")
    for shape, array in zip(shapes_, arrays):
        if len(shape) != array.ndim or any(dim is not None and dim != size for dim, size in zip(shape, array.shape)):
            raise ValueError(f"`symbolic_shapes` must match the inputs. Received: symbolic shape {shape} for an input of shape {array.shape}")
    return shapes_


def _specs(outputs: Sequence[Any]) -> list[tuple[tuple[int | None, ...], str]]:
    return [(tuple(None if dim is None else int(dim) for dim in output.shape), _dtype_name(output.dtype)) for output in outputs]


def _spec_problem(what: str, claimed: Sequence[tuple[tuple[int | None, ...], str]], actual: Sequence[tuple[tuple[int, ...], str]]) -> str | None:
    """What differs between symbolic output specs and the eager outputs; a ``None`` dim matches any size."""
    if len(claimed) != len(actual):
        return f"{what} gives {len(claimed)} outputs, the call returns {len(actual)}"
    for index, ((shape, dtype), (real_shape, real_dtype)) in enumerate(zip(claimed, actual)):
        if len(shape) != len(real_shape) or any(dim is not None and dim != size for dim, size in zip(shape, real_shape)):
            return f"{what} gives output {index} the shape {shape}, the call returns {real_shape}"
        if dtype != real_dtype:
            return f"{what} gives output {index} the dtype {dtype}, the call returns {real_dtype}"
    return None


def _functions(case: _Case, layer: keras.layers.Layer, signature: Sequence[tuple[int | None, ...]]) -> tuple[Any, Any]:
    """``tf.function`` and ``tf.function(jit_compile=True)`` of the layer's call, on inputs of shapes ``signature``."""

    def forward(*arrays: Any) -> Any:
        return case.call(layer, arrays)

    specs = [tf.TensorSpec(shape, tf.as_dtype(_dtype_name(array.dtype))) for shape, array in zip(signature, case.arrays)]
    return tf.function(forward, input_signature=specs), tf.function(forward, input_signature=specs, jit_compile=True)


def _check_symbolic(
    case: _Case,
    layer: keras.layers.Layer,
    actual: list[tuple[tuple[int, ...], str]],
    symbolic: list[tuple[int | None, ...]],
    graph_fn: Any,
    fail: Callable[[str], AssertionError],
) -> None:
    def spec_call(shapes_: Sequence[tuple[int | None, ...]]) -> None:
        symbols = [keras.Input(batch_shape=shape, dtype=_dtype_name(array.dtype)) for shape, array in zip(shapes_, case.arrays)]
        label = f"the symbolic call (compute_output_shape / compute_output_spec) on keras.Input of shapes {[tuple(s) for s in shapes_]}"
        try:
            outputs = _flat(case.call(layer, symbols, training=None))
        except Exception as error:
            raise fail(f"{label} raised {type(error).__name__}: {_first_line(error)}{_hint(error)}") from error
        problem = _spec_problem(label, _specs(outputs), actual)
        if problem:
            raise fail(problem)

    spec_call([tuple(array.shape) for array in case.arrays])
    spec_call(symbolic)
    try:
        traced = graph_fn.get_concrete_function()
    except Exception as error:
        raise fail(
            f"tracing call() in tf.function on inputs of shapes {symbolic} raised {type(error).__name__}: {_first_line(error)}{_hint(error)}"
        ) from error
    problem = _spec_problem(f"call() traced in tf.function on inputs of shapes {symbolic}", _specs(_flat(traced.structured_outputs)), actual)
    if problem:
        raise fail(problem)


def _check_compiled(
    case: _Case, functions: tuple[Any, Any], eager: list[np.ndarray], atol: float, rtol: float, fail: Callable[[str], AssertionError]
) -> None:
    tensors = case.tensors()
    for function, label in zip(functions, ("tf.function", "tf.function(jit_compile=True) (XLA)")):
        try:
            outputs = [_to_numpy(output) for output in _flat(function(*tensors))]
        except Exception as error:
            raise fail(f"{label} raised {type(error).__name__}: {_first_line(error)}{_hint(error)}") from error
        problem = _compare_outputs(outputs, eager, atol, rtol, f"{label} against the eager call")
        if problem:
            raise fail(
            problem + " (call() reads a static size that is None when traced, e.g. x.shape[1], or has a Python side effect, "
            "or an op behaves differently when traced)"
        )


# one compiled training step ----------------------------------------------------------------------


def _check_fit(case: _Case, main: keras.layers.Layer, eager: list[np.ndarray], fail: Callable[[str], AssertionError]) -> None:
    if not any(_is_float(array.dtype) for array in eager):
        return  # nothing a loss can train on
    if main.weights and not main.trainable_weights:
        raise fail(
            f"none of the layer's {len(main.weights)} weights {[weight.path for weight in main.weights]} is trainable, so fit cannot "
            f"change it: create them with trainable=True, or pass fit=False if the layer is frozen on purpose"
        )
    first = case.flat_positional[0]
    dense_units = None
    if not main.weights:
        if not _is_float(first.dtype) or not first.ndim:
            return  # a weightless layer on integer inputs: nothing to train
        dense_units = int(first.shape[-1])  # a Dense in front gives the model weights, which train through the layer
    problem = _train(case, case.arrays, dense_units, fail)
    if problem is None:
        return
    # all-zero inputs, or one key for a softmax, can leave weights without a gradient: the finding stands only if
    # random float inputs (integer ones tiled) twice as long on every axis but the last do not train either
    rng = np.random.default_rng(1)
    probe = []
    for array in case.arrays:
        reps = (2,) * (array.ndim - 1) + (1,) if array.ndim > 1 else (2,) * array.ndim
        tiled = np.tile(array, reps)
        probe.append(rng.standard_normal(tiled.shape).astype(array.dtype) if _is_float(array.dtype) else tiled)
    try:
        verdict = _train(case, probe, dense_units, fail)
    except Exception:  # noqa: BLE001 (the layer does not take these shapes: the given inputs decide)
        verdict = problem
    if verdict is None:
        return
    raise fail(problem + f" (on random inputs of shapes {[tuple(array.shape) for array in probe]} too)")


def _train(case: _Case, arrays: Sequence[np.ndarray], dense_units: int | None, fail: Callable[[str], AssertionError]) -> str | None:
    """Gradients and one compiled training step on ``arrays``: what depends on their values, or ``None``."""
    model = LayerModel(case.new_layer(), case.static_kwargs, list(case.tensor_kwargs), dense_units, case.structure)
    tensors = case.tensors(arrays)
    outputs = _flat(model(tensors, training=False))  # builds, so that the weights exist before the first gradient
    weights = list(model.layer.trainable_weights) + ([] if model.dense is None else list(model.dense.trainable_weights))
    dense_weights = [] if model.dense is None else list(model.dense.weights)
    owners = ["the Dense in front of the (weightless) layer" if any(weight is w for w in dense_weights) else "the layer" for weight in weights]
    rng = np.random.default_rng(0)
    targets = [rng.normal(size=tuple(output.shape)).astype("float32") for output in outputs]

    def gradients() -> list[Any]:
        # a loss on every float output, so that a weight feeding any of them counts
        with tf.GradientTape() as tape:
            predictions = _flat(model(tensors, training=True))
            loss = tf.add_n([tf.reduce_mean(tf.square(tf.cast(p, "float32") - t)) for p, t in zip(predictions, targets)])
        return tape.gradient(loss, weights)

    first_gradients = gradients()
    for weight, owner, gradient in zip(weights, owners, first_gradients):
        if gradient is None:
            raise fail(
                f"the trainable weight {weight.path} {tuple(weight.shape)} of {owner} gets no gradient from the outputs "
                f"(tf.stop_gradient, an integer cast, a non-differentiable op, or call() does not use it)"
            )
    # a zero gradient at the start can be legitimate (a zero-initialised LoRA factor); one that stays zero after
    # a plain gradient step on every weight cannot learn
    stuck = [index for index, gradient in enumerate(first_gradients) if not np.any(_to_numpy(gradient))]
    if stuck:
        for weight, gradient in zip(weights, first_gradients):
            weight.assign(weight - 0.01 * tf.convert_to_tensor(gradient))
        later = gradients()
        for index in stuck:
            if not np.any(_to_numpy(later[index])):
                weight = weights[index]
                return (
                    f"the trainable weight {weight.path} {tuple(weight.shape)} of {owners[index]} gets an all-zero gradient before "
                    f"and after a gradient step, so it never learns (multiplied by zero, a dead ReLU, a softmax over one position?)"
                )
    # the compiled step: train_on_batch runs the step that fit compiles, without fit's data pipeline and callbacks
    # (half the time), on the first float output (XLA compiles a smaller graph; every output had its gradients above)
    model.call_outputs = 1
    before = [_to_numpy(weight) for weight in weights]
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=0.01), loss="mse", jit_compile=True)
    value = float(np.asarray(model.train_on_batch(tensors, targets[0])).reshape(-1)[0])
    if not np.isfinite(value):
        raise fail(f"the compiled (XLA) training step gave the loss {value}")
    after = [_to_numpy(weight) for weight in weights]
    if all(np.array_equal(b, a) for b, a in zip(before, after)):
        return f"no trainable weight of the {len(weights)} moved in the compiled (XLA) training step (loss {value:.4g})"
    return None


# mixed precision ---------------------------------------------------------------------------------


def _probe_inputs(case: _Case) -> list[tuple[list[np.ndarray], float]]:
    """The inputs with the positional float arrays scaled to ``max |x| = OVERFLOW_PROBE_MAGNITUDE``, with both signs.

    Empty when the float inputs are already that large (the main comparison has seen them).
    """
    arrays = case.arrays
    floats = [index for index, array in enumerate(arrays[: len(case.flat_positional)]) if _is_float(array.dtype) and array.size]
    largest = max((float(np.max(np.abs(arrays[index]))) for index in floats), default=0.0)
    if not floats or not 0 < largest < OVERFLOW_PROBE_MAGNITUDE:
        return []
    probes = []
    for factor in (OVERFLOW_PROBE_MAGNITUDE / largest, -OVERFLOW_PROBE_MAGNITUDE / largest):
        probes.append(([array * np.asarray(factor, array.dtype) if index in floats else array for index, array in enumerate(arrays)], factor))
    return probes


def _check_mixed_precision(
    case: _Case, main: keras.layers.Layer, eager: list[np.ndarray], tolerances: Mapping[str, float], fail: Callable[[str], AssertionError]
) -> None:
    previous = keras.config.dtype_policy()
    reference_weights = main.get_weights()
    for policy, tolerance in tolerances.items():
        # mixed_float16 as the global policy (sublayers built without a dtype get it too),
        # mixed_bfloat16 as the layer's dtype argument (which the layer must hand to its sublayers)
        by_argument = policy != "mixed_float16" and "dtype" not in case.init_kwargs
        how = f"{policy} (dtype={policy!r} argument)" if by_argument else f"{policy} (global policy)"
        try:
            if not by_argument:
                keras.config.set_dtype_policy(policy)
            layer = case.new_layer(dtype=policy) if by_argument else case.new_layer()
            case.call(layer)  # builds
            layer.set_weights(reference_weights)
            for variable in layer.weights:
                if _is_float(variable.dtype) and _dtype_name(variable.dtype) != "float32":
                    raise fail(
                        f"{how}: the variable {variable.path} is {_dtype_name(variable.dtype)}, not float32 (variables stay float32 under mixed precision)"
                    )
            outputs = _flat(case.call(layer))
            _compare_mixed(how, layer, outputs, eager, tolerance, fail)
            for probe in _probe_inputs(case) if policy == "mixed_float16" else ():
                _overflow_probe(how, case, main, layer, probe, fail)
        finally:
            keras.config.set_dtype_policy(previous)


def _compare_mixed(
    how: str, layer: keras.layers.Layer, outputs: list[Any], eager: list[np.ndarray], tolerance: float, fail: Callable[[str], AssertionError]
) -> None:
    if len(outputs) != len(eager):
        raise fail(f"{how}: {len(outputs)} outputs instead of {len(eager)}")
    for index, (tensor, target) in enumerate(zip(outputs, eager)):
        dtype = _dtype_name(tensor.dtype)
        if not _is_float(target.dtype):
            problem = _compare_outputs([_to_numpy(tensor)], [target], 0.0, 0.0, f"{how}: the non-float output {index}")
            if problem:
                raise fail(problem)
            continue
        if dtype != layer.compute_dtype:
            raise fail(
                f"{how}: output {index} has the dtype {dtype}, not the compute dtype {layer.compute_dtype} (the layer ignores its dtype policy)"
            )
        actual = _to_numpy(tensor)
        broken = ~np.isfinite(actual) & np.isfinite(target)
        if broken.any():
            where = tuple(int(i) for i in np.argwhere(broken)[0])
            raise fail(
                f"{how}: output {index} has {int(broken.sum())} non-finite values where float32 is finite, e.g. {actual[where]} at "
                f"{where} instead of {target[where]:.6g}: an intermediate overflows {layer.compute_dtype} (exp, x², q·k, a -1e9 mask); "
                f"compute it in float32, then cast"
            )
        problem = _compare_outputs([actual], [target], 0.0, tolerance, f"{how}: against float32 with the same weights")
        if problem:
            raise fail(problem + " (precision lost: compute trigonometry, scores, softmax and norms in float32, then cast)")


def _overflow_probe(
    how: str,
    case: _Case,
    main: keras.layers.Layer,
    layer: keras.layers.Layer,
    probe: tuple[list[np.ndarray], float],
    fail: Callable[[str], AssertionError],
) -> None:
    scaled, factor = probe
    reference = [_to_numpy(output) for output in _flat(case.call(main, scaled))]
    outputs = [_to_numpy(output) for output in _flat(case.call(layer, scaled))]
    for index, (actual, target) in enumerate(zip(outputs, reference)):
        if target.dtype.kind != "f" or not np.isfinite(target).all() or (target.size and np.abs(target).max() >= FLOAT16_MAX):
            continue  # only outputs that float16 can hold tell an overflow inside the layer
        broken = ~np.isfinite(actual)
        if broken.any():
            where = tuple(int(i) for i in np.argwhere(broken)[0])
            raise fail(
                f"{how}: with the float inputs multiplied by {factor:.3g} (max |x| = {OVERFLOW_PROBE_MAGNITUDE:g}) float32 gives finite outputs "
                f"(max |y| = {np.abs(target).max():.4g}) but output {index} has {int(broken.sum())} non-finite values, "
                f"e.g. {actual[where]} at {where}: "
                f"an intermediate overflows float16 (exp, x², q·k, a -1e9 mask); compute it in float32, then cast"
            )


# saving ------------------------------------------------------------------------------------------


def _has_own_build(layer: keras.layers.Layer) -> bool:
    return type(layer).build is not keras.layers.Layer.build


def _check_build(case: _Case, main: keras.layers.Layer, fail: Callable[[str], AssertionError]) -> None:
    """``build_from_config`` (what ``load_model`` calls before loading the weights) creates every weight a call creates."""
    config = main.get_build_config()
    if not config or not _has_own_build(main):
        return  # Keras builds layers without a build() by running their call
    fresh = case.new_layer()
    fresh.build_from_config(config)
    built = sorted((tuple(weight.shape), weight.path.split("/")[-1]) for weight in fresh.weights)
    called = sorted((tuple(weight.shape), weight.path.split("/")[-1]) for weight in main.weights)
    if [shape for shape, _ in built] != [shape for shape, _ in called]:
        children = [item for value in vars(fresh).values() for item in (value if isinstance(value, (list, tuple)) else [value])]
        unbuilt = [child.name for child in children if isinstance(child, keras.layers.Layer) and not child.built]
        raise fail(
            f"build() creates {len(built)} weights {[f'{n} {s}' for s, n in built]}, a call creates {len(called)} {[f'{n} {s}' for s, n in called]}"
            + (f"; the sublayers {unbuilt} stay unbuilt" if unbuilt else "")
            + ": build() must create every weight, building each sublayer (e.g. self.dense.build(input_shape)); "
            "keras.saving.load_model calls build() alone before it loads the weights"
        )


def _check_saving(
    case: _Case,
    main: keras.layers.Layer,
    atol: float,
    rtol: float,
    fresh_process: bool | ReloadQueue,
    directory: str,
    fail: Callable[[str], AssertionError],
) -> None:
    _check_build(case, main, fail)
    subclassed = LayerModel(case.new_layer(), case.static_kwargs, list(case.tensor_kwargs), None, case.structure)
    subclassed(case.tensors(), training=False)  # builds
    symbols = [keras.Input(batch_shape=array.shape, dtype=_dtype_name(array.dtype)) for array in case.arrays]
    try:
        functional = keras.Model(symbols if len(symbols) > 1 else symbols[0], case.call(case.new_layer(), symbols, training=None))
    except Exception as error:
        raise fail(
            f"a functional model (keras.Model on keras.Input) around the layer could not be built: "
            f"{type(error).__name__}: {_first_line(error)}{_hint(error)}"
        ) from error
    queue = fresh_process if isinstance(fresh_process, ReloadQueue) else ReloadQueue(os.path.join(directory, "fresh")) if fresh_process else None
    for label, model in (("LayerModel", subclassed), ("functional", functional)):
        expected = _model_outputs(model, case.arrays)
        path = os.path.join(directory, f"{label}.keras")
        model.save(path)
        try:
            loaded = keras.saving.load_model(path)
        except Exception as error:
            raise fail(f"keras.saving.load_model of the {label} model raised {type(error).__name__}: {_first_line(error)}{_hint(error)}") from error
        problem = _compare_outputs(_model_outputs(loaded, case.arrays), expected, atol, rtol, f"the {label} model reloaded in this process")
        if problem:
            raise fail(problem + " (state that neither get_config() nor the saved weights hold)")
        if queue is not None:
            queue.add(model, case.arrays, expected, f"{case.name}-{label}", [case.layer_cls.__module__], atol, rtol)
    if fresh_process is True and queue is not None:
        try:
            queue.check()
        except AssertionError as error:
            raise fail(str(error).replace("check_layer[saving] ", "", 1)) from error


# the checkers ------------------------------------------------------------------------------------


def _per_output(value: Any, count: int, what: str) -> list[Any]:
    """One entry per flat output: a structure like the outputs', or a single entry for the first output (None = unchecked)."""
    if value is None:
        return [None] * count
    if isinstance(value, (tuple, list)) and value and all(item is None or isinstance(item, (int, np.integer)) for item in value) and what == "shape":
        entries = [tuple(value)]
    elif isinstance(value, np.ndarray) or _is_tensor(value):
        entries = [value]
    else:
        entries = list(keras.tree.flatten(value)) if what != "shape" else list(_flat_shapes(value))
    return entries + [None] * (count - len(entries))


def _flat_shapes(value: Any) -> list[Any]:
    if value is None or (isinstance(value, (tuple, list)) and all(item is None or isinstance(item, (int, np.integer)) for item in value)):
        return [None if value is None else tuple(value)]
    if isinstance(value, Mapping):
        return [shape for key in sorted(value) for shape in _flat_shapes(value[key])]
    return [shape for item in value for shape in _flat_shapes(item)]


def check_layer(
    layer_cls: type,
    init_kwargs: Mapping[str, Any],
    inputs: Any,
    call_kwargs: Mapping[str, Any] | None = None,
    *,
    config: bool = True,
    json: bool = True,
    symbolic: bool = True,
    compiled: bool = True,
    fit: bool = True,
    mixed_precision: bool = True,
    saving: bool = True,
    fresh_process: bool | ReloadQueue = True,
    symbolic_shapes: Sequence[Sequence[int | None]] | None = None,
    expected_output_shape: Any = None,
    expected_num_trainable_weights: int | None = None,
    expected_num_non_trainable_weights: int | None = None,
    reference_fn: Callable[..., Any] | None = None,
    reference_atol: float = 1e-5,
    reference_rtol: float = 1e-5,
    atol: float = 1e-5,
    rtol: float = 1e-5,
    mixed_precision_tolerances: Mapping[str, float] | None = None,
) -> keras.layers.Layer:
    """Runs the standard checks of a Keras layer on one configuration; each part can be switched off.

    The layer is first called eagerly on ``inputs`` (with ``training=False``
    unless ``call_kwargs`` says otherwise), twice: every output must be a tensor,
    the two calls must agree, and the optional expectations (output shapes,
    weight counts, ``reference_fn``) are checked (part ``call``). Then, in order:

    - ``config``: ``check_config`` (every constructor argument in ``get_config()``,
      ``from_config(get_config())`` equal, plain attributes equal), and the layer
      rebuilt by ``from_config(get_config())`` with the same weights gives the
      same outputs;
    - ``json``: the class is registered, the JSON round trip keeps class and
      config, and the layer it rebuilds gives the same outputs with the same weights;
    - ``symbolic``: calls on ``keras.Input`` (Keras uses ``compute_output_shape`` /
      ``compute_output_spec`` there) with the input shapes and with unknown dims
      (``symbolic_shapes``; by default every axis but the last is ``None``), and
      ``call`` traced in ``tf.function`` on the unknown dims, give the number,
      ranks, dims (a known dim must be the real one) and dtypes of the eager outputs;
    - ``compiled``: ``tf.function`` and ``tf.function(jit_compile=True)``, traced
      on the unknown dims of ``symbolic_shapes`` as ``fit`` traces its step, give
      the eager outputs within ``atol + rtol * scale`` (``scale = max(1, max |output|)``);
    - ``fit``: every trainable weight of the layer gets a gradient of a mean
      squared error on all its float outputs, and none an all-zero gradient both
      before and after a gradient step; one training step compiled with XLA
      (``train_on_batch``, the step ``fit`` runs, on the first float output)
      gives a finite loss and moves the weights. A layer with weights none of which is trainable fails; a
      weightless layer on float inputs trains a ``Dense`` in front of it (which
      needs a gradient through the layer); a layer with no float output, or
      weightless on integer inputs, skips this part;
    - ``mixed_precision``: ``mixed_float16`` (as the global policy) and
      ``mixed_bfloat16`` (as the layer's ``dtype`` argument) with the float32
      layer's weights keep float32 variables, give outputs in the compute dtype,
      finite where float32 is, within ``MIXED_PRECISION_TOLERANCES`` of float32;
      under ``mixed_float16`` the float inputs are also scaled up to
      ``max |x| = 16``, where no output may overflow when float32 stays finite
      and within the float16 range; the global policy is restored afterwards;
    - ``saving``: ``build()`` alone (what ``load_model`` calls) creates every
      weight that a call creates; a ``LayerModel`` and a functional model around
      the layer saved as ``.keras`` reload in this process with equal outputs,
      and in a fresh Python process (``fresh_process``), which imports
      ``layer_cls.__module__`` first.

    Args:
        layer_cls: the layer class (registered with
            ``keras.saving.register_keras_serializable`` for ``json`` and ``saving``).
        init_kwargs: its constructor arguments.
        inputs: one array or a tuple of the positional call arguments, each an
            array or a list of arrays (``([a, b],)`` for a layer called on a list,
            as Keras' merge layers are); axis 0 is the batch.
        call_kwargs: keyword arguments for every call; arrays among them (masks)
            are passed as tensors (inputs of the models), the rest as is.
        config: run the config part.
        json: run the JSON part.
        symbolic: run the symbolic part.
        compiled: run the ``tf.function`` / XLA part (switch it off for string inputs).
        fit: run the training part.
        mixed_precision: run the mixed precision part.
        saving: run the ``.keras`` part.
        fresh_process: ``True`` starts a fresh interpreter now (a few seconds:
            it imports TensorFlow); a ``ReloadQueue`` collects the models for one
            later ``queue.check()``; ``False`` reloads in this process only.
        symbolic_shapes: the shapes, with ``None`` for unknown dims, of the
            symbolic and compiled parts' inputs (concrete sizes where the layer
            needs them), one per input array (the arrays of a list one by one),
            optionally followed by one per array keyword argument.
        expected_output_shape: the shape of the output, or a structure of shapes
            like the outputs (``None`` for an output not checked).
        expected_num_trainable_weights: the number of trainable weights after the call.
        expected_num_non_trainable_weights: the number of non-trainable weights after the call.
        reference_fn: ``reference_fn(layer, *inputs) -> outputs``, an independent
            computation (numpy, a Keras built-in) from the built layer and the
            positional input arrays; an array is compared with the first output,
            a structure with the outputs (``None`` entries are skipped).
        reference_atol: the absolute tolerance against ``reference_fn``.
        reference_rtol: the tolerance against ``reference_fn`` relative to the output scale.
        atol: the absolute tolerance of the config, compiled and saving comparisons.
        rtol: their tolerance relative to the output scale.
        mixed_precision_tolerances: ``{policy: relative tolerance}``;
            ``MIXED_PRECISION_TOLERANCES`` by default.

    Returns:
        The float32 layer, built by the eager call.

    Raises:
        AssertionError: ``"check_layer[<part>] <LayerName>: <what broke, with the numbers>; inputs <dtypes and shapes>"``.
        ValueError: ``symbolic_shapes`` do not match the inputs.
    """
    case = _Case(layer_cls, init_kwargs, inputs, call_kwargs)
    signature = _symbolic_shapes(case, symbolic_shapes)
    tolerances = dict(MIXED_PRECISION_TOLERANCES if mixed_precision_tolerances is None else mixed_precision_tolerances)
    name = case.name
    context = case.describe

    with _part("check_layer", "call", name, context) as fail:
        layer = case.new_layer()
        outputs = _flat(case.call(layer))
        bad = [index for index, output in enumerate(outputs) if not _is_tensor(output)]
        if bad:
            raise fail(f"the outputs {bad} are not tensors ({[type(outputs[i]).__name__ for i in bad]}): Keras functional models reject them")
        actual = _specs(outputs)
        eager = [_to_numpy(output) for output in outputs]
        again = [_to_numpy(output) for output in _flat(case.call(layer))]
        problem = _compare_outputs(again, eager, atol, rtol, "a second eager call on the same inputs")
        if problem:
            raise fail(
                problem + ": call() is not deterministic at inference (training=False): random ops outside training, "
                "or a Python counter or other state that changes per call"
            )
        for index, shape in enumerate(_per_output(expected_output_shape, len(eager), "shape")):
            if shape is not None and tuple(eager[index].shape) != tuple(shape):
                raise fail(f"output {index} has the shape {eager[index].shape}, expected {tuple(shape)}")
        for label, count, weights in (
            ("trainable", expected_num_trainable_weights, layer.trainable_weights),
            ("non-trainable", expected_num_non_trainable_weights, layer.non_trainable_weights),
        ):
            if count is not None and len(weights) != count:
                raise fail(f"the layer has {len(weights)} {label} weights {[w.path for w in weights]}, expected {count}")
        if reference_fn is not None:
            expected = [None if item is None else _to_numpy(item) for item in _per_output(reference_fn(layer, *case.positional), len(eager), "value")]
            problem = _compare_outputs(eager, expected, reference_atol, reference_rtol, "the layer against reference_fn")
            if problem:
                raise fail(problem)
    if config:
        _config_part(layer, case.init_kwargs, "check_layer", context)
        with _part("check_layer", "config", name, context) as fail:
            clone = case.layer_cls.from_config(layer.get_config())
            _check_clone_outputs(case, layer, clone, "from_config(get_config())", eager, atol, rtol, fail)
    if json:
        _json_part(layer, "check_layer", context)
        with _part("check_layer", "json", name, context) as fail:
            restored = keras.saving.deserialize_keras_object(json_module.loads(json_module.dumps(keras.saving.serialize_keras_object(layer))))
            _check_clone_outputs(case, layer, restored, "the JSON round trip", eager, atol, rtol, fail)
    graph_fn = xla_fn = None
    if symbolic or compiled:
        graph_fn, xla_fn = _functions(case, layer, signature)
    if symbolic:
        with _part("check_layer", "symbolic", name, context) as fail:
            _check_symbolic(case, layer, actual, signature, graph_fn, fail)
    if compiled:
        with _part("check_layer", "compiled", name, context) as fail:
            _check_compiled(case, (graph_fn, xla_fn), eager, atol, rtol, fail)
    if fit:
        with _part("check_layer", "fit", name, context) as fail:
            _check_fit(case, layer, eager, fail)
    if mixed_precision:
        with _part("check_layer", "mixed_precision", name, context) as fail:
            _check_mixed_precision(case, layer, eager, tolerances, fail)
    if saving:
        with tempfile.TemporaryDirectory(prefix="mlable-check-layer-") as directory, _part("check_layer", "saving", name, context) as fail:
            _check_saving(case, layer, atol, rtol, fresh_process, directory, fail)
    return layer


# metrics -----------------------------------------------------------------------------------------


def _split_sizes(total: int, splits: int) -> list[int]:
    """Batch sizes in proportion 1 : 2 : ... : splits (unequal, so that a mean of batch means shows)."""
    splits = max(1, min(splits, total))
    weights = np.arange(1, splits + 1, dtype=np.float64)
    sizes = np.maximum(1, np.floor(total * weights / weights.sum()).astype(int))
    sizes[-1] = total - sizes[:-1].sum()
    if sizes[-1] < 1:  # too few rows for the proportions: one row per batch but the last
        sizes = np.asarray([1] * (splits - 1) + [total - splits + 1])
    return [int(size) for size in sizes]


def _result(metric: keras.metrics.Metric) -> np.ndarray:
    return _to_numpy(metric.result()).astype(np.float64)


def _show(value: np.ndarray) -> str:
    return repr(float(value)) if np.ndim(value) == 0 else np.array2string(np.asarray(value), precision=6)


def check_metric(
    metric_factory: Callable[[], keras.metrics.Metric],
    y_true: Any,
    y_pred: Any,
    reference_fn: Callable[[np.ndarray, np.ndarray, np.ndarray | None], Any],
    sample_weight: Any = None,
    splits: int = 3,
    atol: float = 1e-6,
    *,
    weights: bool = True,
    compiled: bool = True,
    serialization: bool = True,
) -> None:
    """Checks a metric against a reference, its accumulation, weights, reset, tracing and serialisation.

    Parts:

    - ``reference``: one ``update_state`` on all the data gives
      ``reference_fn(y_true, y_pred, sample_weight)``;
    - ``split``: feeding the data in ``splits`` batches along axis 0, of unequal
      sizes in proportion ``1 : 2 : ... : splits``, gives the one-batch result
      (a metric that averages batch means fails this); skipped for one row;
    - ``weights``: integer ``sample_weight`` (``2, 0, 1, 3, 2, 0, ...`` per row)
      gives the result of repeating each row that many times without weights
      (a metric that ignores or mis-applies ``sample_weight`` fails this);
    - ``reset``: after ``reset_state`` the result is that of a new metric, and
      the same data gives the same result again;
    - ``compiled``: ``update_state`` inside ``tf.function`` (as in a compiled
      ``fit``) gives the eager result;
    - ``serialization``: the class is registered, ``get_config`` round-trips
      (``check_config``), and the metrics rebuilt by ``from_config`` and by the
      JSON round trip give the same result on the data.

    Args:
        metric_factory: a callable returning a new metric, e.g. ``lambda: MyMetric(axis=-1)``.
        y_true: the targets, axis 0 the batch.
        y_pred: the predictions, same batch size.
        reference_fn: ``reference_fn(y_true, y_pred, sample_weight) -> value``,
            an independent computation (numpy, a naive loop).
        sample_weight: optional weights, axis 0 the batch.
        splits: the number of batches of the ``split`` part (at most the batch size).
        atol: the largest absolute difference allowed.
        weights: run the ``weights`` part.
        compiled: run the ``compiled`` part.
        serialization: run the ``serialization`` part.

    Raises:
        AssertionError: ``"check_metric[<part>] <MetricName>: ...; y_true ..., y_pred ..."`` with the numbers.

    Example:
        >>> reference = lambda y_true, y_pred, weights: 1.0  # |0 - 1| everywhere
        >>> check_metric(keras.metrics.MeanAbsoluteError, np.zeros((4, 3)), np.ones((4, 3)), reference)
    """
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    given = None if sample_weight is None else np.asarray(sample_weight)
    if y_true.ndim == 0 or y_pred.ndim == 0 or y_true.shape[0] != y_pred.shape[0]:
        raise ValueError(f"`y_true` and `y_pred` must share axis 0 (the batch). Received: shapes {y_true.shape} and {y_pred.shape}")
    metric = metric_factory()
    name = type(metric).__name__
    arrays = [y_true, y_pred] + ([] if given is None else [given])
    context = lambda: _describe_arrays(arrays, ["y_true", "y_pred", "sample_weight"][: len(arrays)])  # noqa: E731

    def differs(left: np.ndarray, right: np.ndarray) -> bool:
        return np.shape(left) != np.shape(right) or _difference(np.asarray(left), np.asarray(right))[0] > atol

    with _part("check_metric", "reference", name, context) as fail:
        fresh = _result(metric)
        metric.update_state(y_true, y_pred, sample_weight=given)
        whole = _result(metric)
        expected = np.asarray(reference_fn(y_true, y_pred, given), dtype=np.float64)
        if differs(whole, expected):
            raise fail(f"the result {_show(whole)} differs from the reference {_show(expected)} (atol={atol:g})")

    if y_true.shape[0] > 1:
        with _part("check_metric", "split", name, context) as fail:
            sizes = _split_sizes(int(y_true.shape[0]), splits)
            split = metric_factory()
            start = 0
            for size in sizes:
                rows = slice(start, start + size)
                split.update_state(y_true[rows], y_pred[rows], sample_weight=None if given is None else given[rows])
                start += size
            in_batches = _result(split)
            if differs(in_batches, whole):
                raise fail(
                    f"feeding batches of sizes {sizes} gives {_show(in_batches)}, one batch gives {_show(whole)} "
                    f"(atol={atol:g}): the metric must accumulate totals and counts, not average batch results"
                )

    if weights:
        with _part("check_metric", "weights", name, context) as fail:
            counts = np.resize(np.asarray([2, 0, 1, 3], dtype=np.int64), y_true.shape[0])
            if not counts.any():
                counts[0] = 1
            weighted = metric_factory()
            weighted.update_state(y_true, y_pred, sample_weight=counts.astype("float32"))
            repeated = metric_factory()
            repeated.update_state(np.repeat(y_true, counts, axis=0), np.repeat(y_pred, counts, axis=0))
            left, right = _result(weighted), _result(repeated)
            if differs(left, right):
                raise fail(
                    f"sample_weight={counts.tolist()} gives {_show(left)}, repeating each row that many times without weights "
                    f"gives {_show(right)} (atol={atol:g}): the metric ignores or mis-applies sample_weight"
                )

    with _part("check_metric", "reset", name, context) as fail:
        metric.reset_state()
        after_reset = _result(metric)
        if np.shape(after_reset) != np.shape(fresh) or not np.array_equal(after_reset, fresh, equal_nan=True):
            raise fail(f"after reset_state the result is {_show(after_reset)}, a new metric gives {_show(fresh)}")
        metric.update_state(y_true, y_pred, sample_weight=given)
        again = _result(metric)
        if differs(again, whole):
            raise fail(f"after reset_state and the same data the result is {_show(again)} instead of {_show(whole)}")

    if compiled:
        with _part("check_metric", "compiled", name, context) as fail:
            traced = metric_factory()
            update = tf.function(lambda *args: traced.update_state(*args[:2], sample_weight=None if len(args) < 3 else args[2]))
            update(*[tf.convert_to_tensor(array) for array in arrays])
            in_graph = _result(traced)
            if differs(in_graph, whole):
                raise fail(f"update_state in tf.function gives {_show(in_graph)}, eagerly {_show(whole)} (atol={atol:g})")

    if serialization:
        _config_part(metric, {}, "check_metric", context)
        _json_part(metric, "check_metric", context)
        with _part("check_metric", "serialization", name, context) as fail:
            rebuilt = {
                "from_config(get_config())": type(metric).from_config(metric.get_config()),
                "the JSON round trip": keras.saving.deserialize_keras_object(
                    json_module.loads(json_module.dumps(keras.saving.serialize_keras_object(metric)))
                ),
            }
            for label, other in rebuilt.items():
                other.update_state(y_true, y_pred, sample_weight=given)
                value = _result(other)
                if differs(value, whole):
                    raise fail(
                        f"the metric rebuilt by {label} gives {_show(value)} instead of {_show(whole)}: "
                        f"get_config() misses or mis-stores an argument"
                    )


__all__ = [
    "HYPOTHESIS_MESSAGE",
    "LayerModel",
    "MIXED_PRECISION_TOLERANCES",
    "OVERFLOW_PROBE_MAGNITUDE",
    "PARTS",
    "ReloadQueue",
    "SPECIAL_CHARACTERS",
    "axis_pairs",
    "boolean_masks",
    "byte_tokens",
    "caches",
    "check_cached_decoding",
    "check_config",
    "check_layer",
    "check_metric",
    "check_relative_positions",
    "chunk_sizes",
    "divisors",
    "divisors_of",
    "float_arrays",
    "logits",
    "positions",
    "shapes",
    "utf8_texts",
]

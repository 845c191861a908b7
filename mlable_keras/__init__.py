"""Keras 3 layers and metrics built on ``mlable_core`` (TensorFlow backend only).

Importing this package registers every serializable class of the library
(the modules under ``mlable_keras.layers``, ``mlable_keras.metrics`` and
``mlable_keras.models``) with Keras, so that ``keras.saving.load_model`` finds
them in a fresh process: import ``mlable_keras`` (or ``mlable``) before loading
a ``.keras`` file. Other submodules (e.g. the demo) load on first access.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import pkgutil

import keras

from mlable_core._lazy import submodule_getattr

__version__ = "0.21.0"

if not keras.__version__.startswith("3."):
    raise ImportError(f"mlable_keras needs Keras 3. Found keras=={keras.__version__}: run `pip install -U 'keras>=3'`.")

if keras.backend.backend() != "tensorflow":
    raise ImportError(
        "mlable_keras needs the TensorFlow backend of Keras 3, but Keras was loaded with the "
        f"{keras.backend.backend()!r} backend (KERAS_BACKEND={os.environ.get('KERAS_BACKEND')!r}). "
        "Set the environment variable KERAS_BACKEND=tensorflow before Python imports keras "
        "(or set \"backend\": \"tensorflow\" in ~/.keras/keras.json), then restart the interpreter."
    )


def _register_serializable_classes() -> None:
    for package in ("layers", "models"):
        try:
            module = importlib.import_module(f"{__name__}.{package}")
        except ModuleNotFoundError as error:
            if error.name != f"{__name__}.{package}":
                raise
            continue
        for info in pkgutil.iter_modules(getattr(module, "__path__", [])):
            if not info.name.startswith("_"):
                importlib.import_module(f"{module.__name__}.{info.name}")
    if importlib.util.find_spec(f"{__name__}.metrics") is not None:
        importlib.import_module(f"{__name__}.metrics")


_register_serializable_classes()

__getattr__ = submodule_getattr(__name__)

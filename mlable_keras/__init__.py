"""Keras 3 layers and metrics built on ``mlable_core`` (TensorFlow backend only).

Importing this package registers every serializable class of the library
(the modules under ``mlable_keras.layers``, ``mlable_keras.metrics`` and
``mlable_keras.models``) with Keras, so that ``keras.saving.load_model`` finds
them in a fresh process: import ``mlable_keras`` (or ``mlable``) before loading
a ``.keras`` file. Other submodules (e.g. the demo) load on first access.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import os
import pkgutil
import sys
from collections.abc import Iterator


def _running_the_demo() -> bool:
    """Whether this interpreter was started as ``python -m mlable_keras.demo`` (known before TensorFlow loads)."""
    argv = list(getattr(sys, "orig_argv", []))
    return any(flag == "-m" and module == "mlable_keras.demo" for flag, module in zip(argv, argv[1:]))


@contextlib.contextmanager
def _file_descriptor_2_silenced() -> Iterator[None]:
    """Sends what C++ code writes to the process' stderr (file descriptor 2) to the null device, then restores it.

    Python errors raised inside still print afterwards, to the restored stderr.
    """
    sys.stderr.flush()
    saved = os.dup(2)
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(null)


# the main job prints its own report: keep TensorFlow's C++ start-up lines (oneDNN, CUDA probing, CPU
# features, and "Ignoring Assert operator" under XLA later) out of it, unless the user set
# TF_CPP_MIN_LOG_LEVEL. TensorFlow 2.16 honours the variable alone; 2.21 writes its absl start-up lines
# while it loads, before reading it, so the import itself runs with file descriptor 2 silenced
_QUIET_START = _running_the_demo() and "TF_CPP_MIN_LOG_LEVEL" not in os.environ
if _QUIET_START:
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    with _file_descriptor_2_silenced():
        import tensorflow  # noqa: F401

import keras  # noqa: E402

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

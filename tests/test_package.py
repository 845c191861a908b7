"""Package layout: tier boundaries, the backend guard, version and typing markers."""

from __future__ import annotations

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(code: str, **environment: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="3", **environment)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)


def test_tiers_import_only_downwards():
    completed = _run(
        "import sys\n"
        "import mlable_core.shapes\n"
        "assert 'tensorflow' not in sys.modules, 'mlable_core.shapes imported tensorflow'\n"
        "import mlable_core.reshaping\n"
        "assert 'mlable_keras' not in sys.modules\n"
        "import mlable.layers.reshaping, mlable_keras.layers.reshaping\n"
        "assert mlable.layers.reshaping.Divide is mlable_keras.layers.reshaping.Divide\n"
        "import keras\n"
        "assert 'mlable>Divide' in keras.saving.get_custom_objects()\n"
        "print('ok')\n"
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert completed.stdout.strip().endswith("ok")


def test_core_sources_never_import_keras_or_upper_tiers():
    import ast

    forbidden = ("keras", "mlable_keras", "mlable", "tf_keras")
    for folder, _, files in os.walk(os.path.join(ROOT, "mlable_core")):
        for name in files:
            if not name.endswith(".py"):
                continue
            path = os.path.join(folder, name)
            with open(path, encoding="utf-8") as handle:
                tree = ast.parse(handle.read(), path)
            for node in ast.walk(tree):
                if isinstance(node, ast.Import):
                    modules = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0:
                    modules = [node.module or ""]
                else:
                    continue
                for module in modules:
                    assert module.split(".")[0] not in forbidden, f"{path} imports {module}"
                    assert not module.startswith("tensorflow.keras"), f"{path} imports {module}"


def test_other_keras_backend_gives_a_clear_import_error():
    # other backends need packages this machine lacks (jax, torch, scipy): stand in for one
    completed = _run(
        "import keras\n"
        "keras.backend.backend = lambda: 'jax'\n"
        "try:\n"
        "    import mlable_keras\n"
        "except ImportError as error:\n"
        "    print('IMPORT-ERROR:', error)\n",
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "IMPORT-ERROR: mlable_keras needs the TensorFlow backend of Keras 3" in completed.stdout
    assert "'jax' backend" in completed.stdout
    assert "KERAS_BACKEND=tensorflow" in completed.stdout


def test_typing_markers_ship():
    for package in ("mlable", "mlable_core", "mlable_keras"):
        assert os.path.isfile(os.path.join(ROOT, package, "py.typed"))

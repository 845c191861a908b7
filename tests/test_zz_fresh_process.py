"""Reloads, in a fresh interpreter, every ``.keras`` model that the harness saved in this run.

A fresh process is where unregistered classes, parents that do not build their
children and sublayers created in ``build`` show up (``Could not locate class``,
"layer was never built"): only the class registration and the module path
recorded in the file can find the classes there.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from tests import harness

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPT = textwrap.dedent(
    """
    import json, pickle, sys
    import numpy as np
    import keras
    import mlable_keras  # what a user imports before loading: it registers the library's classes
    import tests.harness  # registers the test-only wrapper model
    failures = []
    for case in json.loads(sys.argv[1]):
        try:
            model = keras.saving.load_model(case["model"])
            with open(case["data"], "rb") as handle:
                data = pickle.load(handle)
            inputs = [keras.ops.convert_to_tensor(array) for array in data["inputs"]]
            actual = keras.ops.convert_to_numpy(model(inputs if len(inputs) > 1 else inputs[0]))
            np.testing.assert_allclose(actual, data["expected"], rtol=1e-6, atol=1e-6)
        except Exception as error:
            failures.append(f"{case['name']} ({case['model']}): {type(error).__name__}: {error}")
    print(json.dumps(failures))
    """
)


@pytest.mark.fresh_process_last
def test_saved_models_reload_in_a_fresh_process():
    if not harness.FRESH_LOAD_CASES:
        pytest.skip("no layer test ran in this session, so there is nothing to reload")
    environment = dict(os.environ, PYTHONPATH=ROOT, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="3")
    completed = subprocess.run(
        [sys.executable, "-c", SCRIPT, json.dumps(harness.FRESH_LOAD_CASES)],
        capture_output=True, text=True, env=environment, cwd=harness.FRESH_LOAD_DIR, timeout=600,
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    failures = json.loads(completed.stdout.strip().splitlines()[-1])
    assert failures == [], "\n".join(failures)

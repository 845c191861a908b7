"""Reloads, in a fresh interpreter, every ``.keras`` model that the harness saved in this run.

A fresh process is where unregistered classes, parents that do not build their
children and sublayers created in ``build`` show up (``Could not locate class``,
"layer was never built"): only the class registration and the module path
recorded in the file can find the classes there.
"""

from __future__ import annotations

import pytest

from tests import harness


@pytest.mark.fresh_process_last
def test_saved_models_reload_in_a_fresh_process():
    if not harness.RELOADS.cases:
        pytest.skip("no layer test ran in this session, so there is nothing to reload")
    harness.RELOADS.check()

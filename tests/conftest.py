"""Test configuration: hypothesis profiles, quiet TensorFlow, and the fresh-process check last.

The ``ci`` and ``dev`` hypothesis profiles are those of the package's pytest
plugin (``mlable_core.pytest_plugin``, which users get through the ``pytest11``
entry point of ``mlable[test]``); registering them here again is harmless when
the plugin already did, and needed when the package is not installed with it:

- ``ci``: selected when the ``CI`` environment variable is set; deterministic
  (derandomized, i.e. a fixed seed), no deadline, few examples.
- ``dev``: the local default; random, no deadline, many examples.
``HYPOTHESIS_PROFILE=<name>`` overrides the choice.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

from mlable_core.pytest_plugin import register_profiles  # noqa: E402

register_profiles()


def pytest_collection_modifyitems(session, config, items):  # noqa: ARG001
    # the fresh-process reload check reads what every harness run saved: run it after them
    items.sort(key=lambda item: item.get_closest_marker("fresh_process_last") is not None)


def pytest_configure(config):
    config.addinivalue_line("markers", "fresh_process_last: runs after every other test")

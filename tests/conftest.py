"""Test configuration: hypothesis profiles, quiet TensorFlow, and the fresh-process check last.

Profiles:
- ``ci``: selected when the ``CI`` environment variable is set; deterministic
  (derandomized, i.e. a fixed seed), no deadline, few examples.
- ``dev``: the local default; random, no deadline, many examples.
``HYPOTHESIS_PROFILE=<name>`` overrides the choice.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

from hypothesis import HealthCheck, settings  # noqa: E402

_SLOW_CHECKS = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much]

settings.register_profile(
    "ci",
    derandomize=True,
    deadline=None,
    max_examples=15,
    database=None,
    print_blob=True,
    suppress_health_check=_SLOW_CHECKS,
)
settings.register_profile(
    "dev",
    deadline=None,
    max_examples=120,
    print_blob=True,
    suppress_health_check=_SLOW_CHECKS,
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE") or ("ci" if os.environ.get("CI") else "dev"))


def pytest_collection_modifyitems(session, config, items):  # noqa: ARG001
    # the fresh-process reload check reads what every harness run saved: run it after them
    items.sort(key=lambda item: item.get_closest_marker("fresh_process_last") is not None)


def pytest_configure(config):
    config.addinivalue_line("markers", "fresh_process_last: runs after every other test")

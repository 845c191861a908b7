"""A pytest plugin that registers the ``ci`` and ``dev`` hypothesis profiles for property-based suites.

``pip install "mlable[test]"`` registers it through the ``pytest11`` entry point,
so any test suite gets the profiles without a ``conftest.py``:

- ``ci``: deterministic (``derandomize=True``: a fixed seed, the same examples on
  every run), no deadline (TensorFlow's first trace of a function takes seconds),
  no example database, 15 examples;
- ``dev``: random, no deadline, 120 examples (thorough, for a local run).

The ``CI`` environment variable (set by every CI service) selects ``ci``, else
``dev``; ``HYPOTHESIS_PROFILE=<name>`` overrides the choice, and so do a
``conftest.py`` that loads a profile and hypothesis' ``--hypothesis-profile``
option, which both act later. The plugin imports hypothesis only (nothing when it
is not installed), never TensorFlow, so pytest starts as fast as without it.

Example:
    Without installing the package: ``pytest -p mlable_core.pytest_plugin``;
    in a ``conftest.py``: ``from mlable_core.pytest_plugin import register_profiles; register_profiles()``.
"""

from __future__ import annotations

import os
from typing import Any

PROFILES: dict[str, dict[str, Any]] = {
    "ci": dict(derandomize=True, deadline=None, max_examples=15, database=None, print_blob=True),
    # derandomize spelled out: hypothesis derandomizes by default when it detects a CI
    "dev": dict(derandomize=False, deadline=None, max_examples=120, print_blob=True),
}

# TensorFlow makes single examples slow (tracing, compiling): not a sign of a bad strategy
SUPPRESSED_HEALTH_CHECKS = ("too_slow", "data_too_large", "filter_too_much")


def selected_profile(environ: dict[str, str] | None = None) -> str:
    """The profile to load: ``HYPOTHESIS_PROFILE`` if set, else ``ci`` when ``CI`` is set, else ``dev``."""
    environ = os.environ if environ is None else environ
    return environ.get("HYPOTHESIS_PROFILE") or ("ci" if environ.get("CI") else "dev")


def register_profiles(load: bool = True) -> str | None:
    """Registers the ``ci`` and ``dev`` profiles and, with ``load``, loads the selected one.

    Returns:
        The name of the loaded profile, or ``None`` when hypothesis is not installed,
        ``load`` is false, or ``HYPOTHESIS_PROFILE`` names a profile not registered yet.
    """
    try:
        from hypothesis import HealthCheck, settings
        from hypothesis.errors import InvalidArgument
    except ImportError:
        return None
    suppressed = [getattr(HealthCheck, name) for name in SUPPRESSED_HEALTH_CHECKS]
    for name, options in PROFILES.items():
        settings.register_profile(name, suppress_health_check=suppressed, **options)
    if not load:
        return None
    name = selected_profile()
    try:
        settings.get_profile(name)
    except InvalidArgument:  # a profile of the user's own, registered later by their conftest
        return None
    settings.load_profile(name)
    return name


def pytest_load_initial_conftests(early_config: Any, parser: Any, args: Any) -> None:  # noqa: ARG001
    # runs before the conftest files are imported, so that a conftest loading its own profile wins
    register_profiles()


__all__ = ["PROFILES", "SUPPRESSED_HEALTH_CHECKS", "register_profiles", "selected_profile"]

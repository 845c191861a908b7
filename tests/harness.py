"""The shared layer-test harness: every Layer test of the library starts with ``run_layer_test``.

A thin user of the public toolkit: ``run_layer_test`` is
``mlable_keras.testing.check_layer`` with the project's defaults and argument
names, so the toolkit is exercised by every layer of the library. It checks the
config and JSON round trips, symbolic calls with ``None`` dims against
``compute_output_shape`` / ``compute_output_spec``, eager == ``tf.function`` ==
XLA, a compiled ``fit`` step, ``mixed_float16`` / ``mixed_bfloat16``, and
``.keras`` save / reload. The reload in a fresh interpreter is queued in
``RELOADS`` and runs once for the whole session, in
``tests/test_zz_fresh_process.py``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import keras
import numpy as np

from mlable_keras import testing

# models saved by run_layer_test, reloaded together in one fresh process by test_zz_fresh_process.py
RELOADS = testing.ReloadQueue()

check_config_round_trip = testing.check_config


def run_layer_test(
    layer_cls: type,
    init_kwargs: dict[str, Any],
    input_data: np.ndarray | Sequence[np.ndarray],
    *,
    call_kwargs: dict[str, Any] | None = None,
    expected_output_shape: tuple[int, ...] | None = None,
    symbolic_shapes: Sequence[tuple[int | None, ...]] | None = None,
    expected_num_trainable_weights: int | None = None,
    expected_num_non_trainable_weights: int | None = None,
    reference_fn: Callable[..., np.ndarray] | None = None,
    reference_tolerance: float = 1e-5,
    output_index: int | None = None,
    run_training: bool = True,
    run_mixed_precision: bool = True,
    mixed_precision_tolerance: float = 2e-2,
    run_saving: bool = True,
) -> keras.layers.Layer:
    """Runs ``check_layer`` on one layer configuration and returns the built float32 layer.

    Args:
        layer_cls: the Layer class under test.
        init_kwargs: its constructor arguments.
        input_data: one array, or a tuple of arrays passed as positional call arguments.
        call_kwargs: extra keyword arguments for every call.
        expected_output_shape: the shape the eager call must return, if known.
        symbolic_shapes: full shapes (batch included, ``None`` for unknown) of the
            symbolic inputs; default: every axis unknown but the last.
        expected_num_trainable_weights: number of trainable weights after build.
        expected_num_non_trainable_weights: number of non-trainable weights after build.
        reference_fn: ``reference_fn(layer, *inputs) -> ndarray``, an independent
            computation of the output (numpy, a Keras built-in, ...).
        reference_tolerance: absolute tolerance, and tolerance relative to the
            output scale, against ``reference_fn``.
        output_index: which output ``expected_output_shape`` and ``reference_fn``
            describe when the layer returns several (all of them are checked otherwise).
        run_training: run the compiled ``fit`` step.
        run_mixed_precision: run the ``mixed_float16`` / ``mixed_bfloat16`` checks.
        mixed_precision_tolerance: relative tolerance of ``mixed_float16``
            against float32 (``mixed_bfloat16`` gets four times as much).
        run_saving: run the ``.keras`` save / reload checks.
    """
    padding = [None] * (output_index or 0)
    expected_shapes = None if expected_output_shape is None else padding + [tuple(expected_output_shape)]
    reference = None
    if reference_fn is not None:
        reference = lambda layer, *inputs: padding + [reference_fn(layer, *inputs)]  # noqa: E731
    return testing.check_layer(
        layer_cls,
        init_kwargs,
        input_data,
        call_kwargs,
        fit=run_training,
        mixed_precision=run_mixed_precision,
        saving=run_saving,
        fresh_process=RELOADS,
        symbolic_shapes=symbolic_shapes,
        expected_output_shape=expected_shapes,
        expected_num_trainable_weights=expected_num_trainable_weights,
        expected_num_non_trainable_weights=expected_num_non_trainable_weights,
        reference_fn=reference,
        reference_atol=reference_tolerance,
        reference_rtol=reference_tolerance,
        mixed_precision_tolerances={"mixed_float16": mixed_precision_tolerance, "mixed_bfloat16": 4 * mixed_precision_tolerance},
    )


__all__ = ["RELOADS", "check_config_round_trip", "run_layer_test"]

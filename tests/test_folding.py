"""Hilbert folding layers: HilbertFold, HilbertUnfold."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from mlable_core import hilbert
from mlable_keras.layers import folding
from tests import strategies
from tests.harness import run_layer_test
from tests.test_hilbert import numpy_fold

LAYER_CASES = [
    (folding.HilbertFold, dict(order=2, rank=2), (2, 16), None),
    (folding.HilbertFold, dict(order=2, rank=2, axis=1), (2, 16, 3), [(None, None, 3)]),
    (folding.HilbertFold, dict(order=1, rank=3, axis=-2), (2, 8, 5), [(None, 8, 5)]),
    (folding.HilbertUnfold, dict(order=2, rank=2), (2, 4, 4), [(None, 4, 4)]),
    (folding.HilbertUnfold, dict(order=2, rank=2, axes=(2, 1)), (2, 4, 4, 3), None),
    (folding.HilbertUnfold, dict(order=1, rank=2, axes=[1, 3]), (2, 2, 5, 2), [(None, 2, 5, 2)]),
]


@pytest.mark.parametrize("layer_cls,kwargs,shape,symbolic", LAYER_CASES)
def test_layer_harness(layer_cls, kwargs, shape, symbolic):
    x = np.random.default_rng(0).normal(size=shape).astype("float32")
    core = hilbert.fold if layer_cls is folding.HilbertFold else hilbert.unfold
    run_layer_test(
        layer_cls,
        kwargs,
        x,
        expected_num_trainable_weights=0,
        expected_num_non_trainable_weights=0,
        reference_fn=lambda layer, inputs: core(inputs, **kwargs).numpy(),
        reference_tolerance=0.0,
        symbolic_shapes=symbolic,
    )


def test_fold_layer_matches_the_reference_and_unfold_layer_inverts_it():
    x = strategies.arange((2, 64, 3))
    folded = folding.HilbertFold(order=3, rank=2, axis=1)(x)
    np.testing.assert_array_equal(folded.numpy(), numpy_fold(x, 3, 2, 1))
    restored = folding.HilbertUnfold(order=3, rank=2, axes=(1, 2))(folded)
    np.testing.assert_array_equal(restored.numpy(), x)


def test_layers_in_a_functional_model_and_integer_inputs():
    inputs = keras.Input(shape=(256,), dtype="int32")
    grid = folding.HilbertFold(order=4, rank=2, axis=1, dtype="mixed_float16")(inputs)
    flat = folding.HilbertUnfold(order=4, rank=2, axes=(1, 2))(grid)
    model = keras.Model(inputs, [grid, flat])
    data = np.arange(512, dtype=np.int32).reshape(2, 256)
    grid_out, flat_out = model(data)
    assert grid_out.shape == (2, 16, 16) and grid_out.dtype == tf.int32
    np.testing.assert_array_equal(flat_out.numpy(), data)


ERRORS = [
    (lambda: folding.HilbertFold(order=0, rank=2), ValueError, r"`order` must be an int >= 1\. Received: order=0"),
    (lambda: folding.HilbertFold(order=2, rank=2, axis=1.5), TypeError, r"`axis` must be an int\. Received: axis=1\.5"),
    (lambda: folding.HilbertFold(order=20, rank=2), ValueError, r"`order \* rank` must be at most 30"),
    (lambda: folding.HilbertFold(order=2, rank=2)(tf.zeros((2, 15))), ValueError, r"Axis 1 of `x` must have length 2 \*\* \(order \* rank\) = 16 to be folded"),
    (lambda: folding.HilbertFold(order=2, rank=2).compute_output_shape((2, 15)), ValueError, r"must have length 2 \*\* \(order \* rank\) = 16"),
    (lambda: folding.HilbertUnfold(order=2, rank=2, axes=(1,)), ValueError, r"`axes` must list rank=2 distinct axes\. Received: axes=\(1,\)"),
    (lambda: folding.HilbertUnfold(order=2, rank=2, axes=(1, 1)), ValueError, r"`axes` must list rank=2 distinct axes\. Received: axes=\(1, 1\)"),
    (lambda: folding.HilbertUnfold(order=2, rank=2, axes="12"), TypeError, r"`axes` must be a sequence of 2 ints or None\. Received: axes='12'"),
    (lambda: folding.HilbertUnfold(order=2, rank=2)(tf.zeros((2, 4, 5))), ValueError, r"Axis 2 of `x` must have length 2 \*\* order = 4 to be unfolded"),
]


@pytest.mark.parametrize("call,error,message", ERRORS)
def test_errors(call, error, message):
    with pytest.raises(error, match=message):
        call()

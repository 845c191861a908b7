"""Keras' own MultiHeadAttention test file, run against CachedMultiHeadAttention.

The installed Keras ships ``keras/src/layers/attention/multi_head_attention_test.py``
(not every wheel does: the module is skipped when it is absent). It is loaded
as is, and its name ``layers.MultiHeadAttention`` is pointed at a subclass of
``CachedMultiHeadAttention`` whose only change is Keras' default
``use_causal_mask=False`` (ours is True), with Keras' call signature restated.
Every test of that file is then a test of our layer: it is the contract of a
drop-in. Keras' skips (flash attention on CPU, other backends) stay skips.
"""

from __future__ import annotations

import importlib.util
import pathlib
import sys
import types
from typing import Any

import keras
import pytest

from mlable_keras.layers.transformer import CachedMultiHeadAttention

KERAS_TEST_FILE = pathlib.Path(keras.__file__).parent / "src" / "layers" / "attention" / "multi_head_attention_test.py"


@keras.saving.register_keras_serializable(package="mlable_conformance")
class KerasDefaultCachedMultiHeadAttention(CachedMultiHeadAttention):
    """``CachedMultiHeadAttention`` with Keras' call signature and defaults (``use_causal_mask=False``)."""

    def call(
        self,
        query: Any,
        value: Any,
        key: Any = None,
        query_mask: Any = None,
        value_mask: Any = None,
        key_mask: Any = None,
        attention_mask: Any = None,
        return_attention_scores: bool = False,
        training: Any = None,
        use_causal_mask: bool = False,
    ) -> Any:
        return super().call(
            query, value, key=key, training=training, attention_mask=attention_mask,
            return_attention_scores=return_attention_scores, use_causal_mask=use_causal_mask,
            query_mask=query_mask, value_mask=value_mask, key_mask=key_mask,
        )

    def compute_output_spec(
        self,
        query: Any,
        value: Any,
        key: Any = None,
        query_mask: Any = None,
        value_mask: Any = None,
        key_mask: Any = None,
        attention_mask: Any = None,
        return_attention_scores: bool = False,
        training: Any = None,
        use_causal_mask: bool = False,
    ) -> Any:
        return super().compute_output_spec(
            query, value, key=key, attention_mask=attention_mask, return_attention_scores=return_attention_scores,
            training=training, use_causal_mask=use_causal_mask,
        )


def _load_keras_tests() -> types.ModuleType | None:
    if not KERAS_TEST_FILE.exists():
        return None
    spec = importlib.util.spec_from_file_location("keras_multi_head_attention_test_on_mlable", KERAS_TEST_FILE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    real_layers = module.layers

    class Layers(types.ModuleType):
        MultiHeadAttention = KerasDefaultCachedMultiHeadAttention

        def __getattr__(self, name: str) -> Any:
            return getattr(real_layers, name)

    module.layers = Layers("layers")
    return module


_MODULE = _load_keras_tests()

# Keras' tests feed dict inputs whose keys are not the tensors' names: its own warnings, not ours
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

if _MODULE is None:

    def test_keras_multi_head_attention_suite_is_installed():
        pytest.skip(f"this Keras wheel ships no {KERAS_TEST_FILE.name}: the conformance run needs it")

else:
    TestKerasMultiHeadAttentionOnMlable = _MODULE.MultiHeadAttentionTest

    def test_the_keras_suite_builds_our_layer():
        layer = _MODULE.layers.MultiHeadAttention(num_heads=2, key_dim=2)
        assert isinstance(layer, CachedMultiHeadAttention)
        assert _MODULE.layers.Dense is keras.layers.Dense  # every other name is Keras' own

"""The dynamic patching layers and the two-level PatchDecoder.

Every layer goes through the shared harness (config and JSON round trips, a
symbolic call with unknown dims, a compiled fit step where it has something to
train, mixed precision, ``.keras`` reload here and in a fresh process) against
an independent reference: numpy loops, Python-integer hashes, and a float64
numpy attention loop for the masks inside ``CachedMultiHeadAttention``.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from mlable_core import hashing, patching
from mlable_keras.layers.patching import HashNgramEmbedding, PatchAttentionMask, PatchBoundaries, PatchPooling, PatchUnpooling
from mlable_keras.layers.transformer import CachedMultiHeadAttention
from mlable_keras.models import PatchDecoder
from tests.harness import run_layer_test
from tests.test_patching import entropy_starts, loop_patches, loop_pool, python_ngram_hashes, space_starts

TEXT = [b"the cat sat on the mat, and then", b"a b  c   d    e     f      g  h "]


def text_bytes() -> np.ndarray:
    return np.array([list(row) for row in TEXT], np.int32)  # (2, 32)


# layers through the harness ------------------------------------------------------------------------


def test_patch_boundaries_space_layer():
    data = text_bytes()
    expected = loop_patches(space_starts(data, patching.WHITESPACE), 12, 4)
    layer = run_layer_test(
        PatchBoundaries, dict(criterion="space", max_patches=12, max_patch_length=4, space_bytes=list(patching.WHITESPACE)), data,
        output_index=0, expected_output_shape=(2, 32), reference_fn=lambda layer, data: expected[0],
    )
    ids, lengths, counts = layer(data)
    assert ids.dtype == lengths.dtype == counts.dtype == tf.int32
    np.testing.assert_array_equal(lengths.numpy(), expected[1])
    np.testing.assert_array_equal(counts.numpy(), expected[2])


def test_patch_boundaries_entropy_layer_compares_in_float32():
    entropies = np.random.default_rng(0).uniform(0, 2, size=(2, 10)).astype(np.float32)
    entropies[0, 3] = 1.0001  # above the threshold in float32, equal to it once rounded to float16
    expected = loop_patches(entropy_starts(entropies, 1.0), 10, None)[0]
    # the harness also runs it under mixed_float16 / bfloat16 and compares the ids exactly
    run_layer_test(
        PatchBoundaries, dict(criterion="entropy", max_patches=10, max_patch_length=None, threshold=1.0), entropies,
        output_index=0, reference_fn=lambda layer, entropies: expected, run_saving=False,
    )


def test_patch_boundaries_take_a_keras_mask_and_say_overflow():
    data = text_bytes()
    mask = np.ones(data.shape, bool)
    mask[:, -5:] = False
    ids, lengths, counts = PatchBoundaries("stride", max_patches=8, max_patch_length=4)(data, mask=mask)
    expected = loop_patches(np.zeros(data.shape, bool), 8, 4, mask)
    for actual, reference in zip((ids, lengths, counts), expected):
        np.testing.assert_array_equal(actual.numpy(), reference)
    layer = PatchBoundaries("space", max_patches=3, max_patch_length=4)
    with pytest.raises(ValueError, match=r"A row needs more patches than `max_patches`=3"):
        layer(data)
    ids, _, counts = PatchBoundaries("space", max_patches=3, max_patch_length=4, allow_overflow=True)(data)
    assert ids.numpy().max() == 2 and (counts.numpy() > 3).all()


@pytest.mark.parametrize("mode", ["mean", "max"])
def test_patch_pooling_layer(mode):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, 9, 4)).astype(np.float32)
    ids = np.array([[0, 0, 1, 1, 1, 2, 3, 3, 3], [0, 0, 0, -1, -1, 1, 1, 2, 2]], np.int32)
    run_layer_test(
        PatchPooling, dict(max_patches=5, mode=mode), (x, ids), expected_output_shape=(2, 5, 4),
        symbolic_shapes=[(None, None, 4), (None, None)], reference_fn=lambda layer, x, ids: loop_pool(x, ids, 5, mode),
    )


def test_patch_unpooling_layer():
    rng = np.random.default_rng(2)
    patches = rng.normal(size=(2, 3, 4)).astype(np.float32)
    ids = np.array([[0, 0, 1, 2, 2], [-1, 0, 1, 1, 2]], np.int32)

    def reference(layer, patches, ids):
        out = np.zeros((2, 5, 4), np.float32)
        for row, t in np.ndindex(2, 5):
            if ids[row, t] >= 1:
                out[row, t] = patches[row, ids[row, t] - 1]
        return out

    run_layer_test(
        PatchUnpooling, dict(shift=1), (patches, ids), expected_output_shape=(2, 5, 4),
        symbolic_shapes=[(None, None, 4), (None, None)], reference_fn=reference,
    )


@pytest.mark.parametrize("queries,mode", [("patches", "previous"), ("bytes", "previous"), ("bytes", "own")])
def test_patch_attention_mask_layer(queries, mode):
    ids = np.array([[0, 0, 1, 2, 2, -1], [0, 1, 1, 1, 2, 3]], np.int32)
    core = patching.patch_to_byte_mask(ids, 4) if queries == "patches" else patching.byte_to_patch_mask(ids, 4, mode)
    layer = run_layer_test(
        PatchAttentionMask, dict(max_patches=4, queries=queries, mode=mode), ids, symbolic_shapes=[(None, None)],
        reference_fn=lambda layer, ids: core.numpy(),
    )
    assert layer(ids).dtype == tf.bool


def test_hash_ngram_embedding_layer():
    data = text_bytes()
    sizes, buckets = (3, 4, 5), 64

    def reference(layer, data):
        table = layer.embeddings.numpy().astype(np.float64)
        rows = python_ngram_hashes(data, sizes, buckets) + 256 + np.arange(len(sizes)) * buckets  # (B, S, N)
        return table[data] + table[rows].sum(-2)

    layer = run_layer_test(
        HashNgramEmbedding, dict(output_dim=8, num_buckets=buckets, ngram_sizes=list(sizes)), data, expected_output_shape=(2, 32, 8),
        expected_num_trainable_weights=1, reference_fn=reference,
    )
    assert layer.embeddings.shape == (256 + 3 * 64, 8)
    # uint8 bytes give the same result; a byte outside 0-255 is refused
    np.testing.assert_array_equal(layer(data.astype(np.uint8)).numpy(), layer(data).numpy())
    with pytest.raises(ValueError, match=r"`inputs` must hold byte values in \[0, 255\]"):
        layer(np.array([[1, 300]], np.int32))


BAD_LAYERS = [
    (lambda: PatchBoundaries("words", 4, 2), ValueError, r"`criterion` must be one of \['entropy', 'monotonic', 'space', 'stride'\]. Received: criterion='words'"),
    (lambda: PatchBoundaries("entropy", 4, 2), ValueError, r"criterion='entropy' needs a finite `threshold`"),
    (lambda: PatchBoundaries("monotonic", 4, 2, threshold=float("nan")), ValueError, r"`threshold` must be a finite number. Received: threshold=nan"),
    (lambda: PatchBoundaries("space", 4, 2, threshold=1.0), ValueError, r"`threshold` is for the entropy criteria only"),
    (lambda: PatchBoundaries("stride", 4, 0), ValueError, r"`max_patch_length` must be an int >= 1. Received: max_patch_length=0"),
    (lambda: PatchBoundaries("stride", 4, None), ValueError, r"`max_patch_length` is the stride"),
    (lambda: PatchBoundaries("entropy", 0, 2, threshold=1.0), ValueError, r"`max_patches` must be an int >= 1. Received: max_patches=0"),
    (lambda: PatchBoundaries("stride", 4, 2, space_bytes=[32]), ValueError, r"`space_bytes` is for criterion='space' only"),
    (lambda: PatchBoundaries("entropy", 4, 2, threshold=1.0)(tf.zeros((2, 3, 1))), ValueError, r"`entropies` must have rank 2, shape \(B, S\).*shape \(2, 3, 1\)"),
    (lambda: PatchPooling(4, "median"), ValueError, r"`mode` must be one of"),
    (lambda: PatchUnpooling(shift=-1), ValueError, r"`shift` must be an int >= 0"),
    (lambda: PatchAttentionMask(4, queries="keys"), ValueError, r"`queries` must be one of \['patches', 'bytes'\]"),
    (lambda: HashNgramEmbedding(8, 0), ValueError, r"`num_buckets` must be an int >= 1"),
    (lambda: HashNgramEmbedding(8, 16, ngram_sizes=[3, 3]), ValueError, r"`ngram_sizes` must not repeat a size"),
    (lambda: PatchDecoder(patching="entropy"), ValueError, r"`patching` must be one of \['space', 'stride'\]"),
]


@pytest.mark.parametrize("make,error,message", BAD_LAYERS)
def test_bad_layer_arguments(make, error, message):
    with pytest.raises(error, match=message):
        make()


# the masks inside cross-attention ------------------------------------------------------------------


def loop_attention(layer: CachedMultiHeadAttention, query: np.ndarray, value: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """One query at a time in float64: softmax over the keys the mask allows (no key: zero weights)."""
    weights = {v.path.split("/")[-2] + "/" + v.name: v.numpy().astype(np.float64) for v in layer.weights}
    q = np.einsum("bte,enh->btnh", query, weights["query/kernel"]) + weights["query/bias"]
    k = np.einsum("bse,enh->bsnh", value, weights["key/kernel"]) + weights["key/bias"]
    v = np.einsum("bse,enh->bsnh", value, weights["value/kernel"]) + weights["value/bias"]
    rows, queries, heads, size = q.shape
    mixed = np.zeros((rows, queries, heads, size))
    for row, t, head in np.ndindex(rows, queries, heads):
        keys = [s for s in range(value.shape[1]) if mask[row, t, s]]
        if not keys:
            continue
        scores = np.array([q[row, t, head] @ k[row, s, head] for s in keys]) / np.sqrt(size)
        scores = np.exp(scores - scores.max())
        scores /= scores.sum()
        mixed[row, t, head] = sum(weight * v[row, s, head] for weight, s in zip(scores, keys))
    return np.einsum("btnh,nhe->bte", mixed, weights["attention_output/kernel"]) + weights["attention_output/bias"]


@pytest.mark.parametrize("queries,mode", [("patches", "previous"), ("bytes", "previous"), ("bytes", "own")])
def test_masks_plug_into_cached_attention(queries, mode):
    rng = np.random.default_rng(3)
    data = text_bytes()[:, :16]
    ids, _, _ = PatchBoundaries("space", max_patches=6, max_patch_length=4)(data)
    byte_vectors = rng.normal(size=(2, 16, 8)).astype(np.float32)
    patch_vectors = PatchPooling(6, "mean")(byte_vectors, ids).numpy()
    mask = PatchAttentionMask(6, queries=queries, mode=mode)(ids)
    query, value = (patch_vectors, byte_vectors) if queries == "patches" else (byte_vectors, patch_vectors)
    layer = CachedMultiHeadAttention(num_heads=2, key_dim=4)
    outputs = layer(query, value, attention_mask=mask, use_causal_mask=False)
    np.testing.assert_allclose(outputs.numpy(), loop_attention(layer, query, value, mask.numpy()), rtol=1e-4, atol=1e-5)
    if queries == "bytes" and mode == "previous":
        # the bytes of the first patch see no patch: zero weights, so their output is the output bias
        first = ids.numpy() == 0
        np.testing.assert_allclose(outputs.numpy()[first], np.broadcast_to(layer.output_dense.bias.numpy(), outputs.numpy()[first].shape), atol=1e-6)


# the two-level model -------------------------------------------------------------------------------

SMALL = dict(max_patches=12, max_patch_length=6, embed_dim=16, global_dim=32, num_buckets=64, num_heads=2, global_heads=2, global_layers=1)


@pytest.mark.parametrize("patching_mode", ["space", "stride"])
def test_patch_decoder_never_sees_the_future(patching_mode):
    model = PatchDecoder(patching=patching_mode, **SMALL)
    data = text_bytes()
    logits = model(data).numpy()
    assert logits.shape == (2, 32, 256) and logits.dtype == np.float32
    rng = np.random.default_rng(4)
    for cut in (0, 5, 13, 20, 30):
        changed = data.copy()
        # other bytes after `cut`, spaces included so that the patches after it move
        changed[:, cut + 1 :] = rng.choice([32, 97, 98, 10, 200], size=changed[:, cut + 1 :].shape)
        after = model(changed).numpy()
        np.testing.assert_array_equal(after[:, : cut + 1], logits[:, : cut + 1])
        assert np.abs(after[:, cut + 1 :] - logits[:, cut + 1 :]).max() > 0  # a check that can fail


def test_patch_decoder_trains_saves_and_reloads(tmp_path):
    model = PatchDecoder(**SMALL)
    data = text_bytes()
    inputs, targets = data[:, :-1], data[:, 1:]
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    optimizer = keras.optimizers.Adam(1e-2)
    losses = []
    for _ in range(6):  # eager steps: tracing a compiled fit costs far more (the demo's test compiles one with XLA)
        with tf.GradientTape() as tape:
            value = loss(targets, model(inputs, training=True))
        gradients = tape.gradient(value, model.trainable_variables)
        # every weight of the three stacks reaches the loss (the global one through the unpooling)
        assert all(gradient is not None and np.abs(tf.convert_to_tensor(gradient)).max() > 0 for gradient in gradients)
        optimizer.apply(gradients, model.trainable_variables)
        losses.append(float(value))
    assert losses[-1] < losses[0], losses
    path = tmp_path / "patch_decoder.keras"
    model.save(path)
    reloaded = keras.saving.load_model(path)
    np.testing.assert_array_equal(reloaded(inputs).numpy(), model(inputs).numpy())
    assert reloaded.get_config() == model.get_config()
    ids = model.patches(inputs).ids.numpy()
    np.testing.assert_array_equal(ids, loop_patches(space_starts(inputs, patching.WHITESPACE), 12, 6)[0])
    # the policy reaches every sublayer; float32 weights, logits close to the float32 model's
    for policy in ("mixed_float16", "mixed_bfloat16"):
        half = PatchDecoder(**SMALL, dtype=policy)
        half(inputs)
        half.set_weights(model.get_weights())
        assert {layer.compute_dtype for layer in half.layers if layer.weights} == {policy.split("_")[1]}
        assert all(weight.dtype == "float32" for weight in half.weights)
        logits = model(inputs).numpy()
        np.testing.assert_allclose(half(inputs).numpy(), logits, atol=0.05 * np.abs(logits).max())

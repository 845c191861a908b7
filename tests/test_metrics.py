"""Group accuracy metrics: Keras equivalence, weights, accumulation, compile / fit, saving, distribution."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given
from hypothesis import strategies as st

from mlable_core import accuracy
from mlable_keras import metrics
from tests import accuracy_reference as reference
from tests import strategies
from tests.harness import check_config_round_trip

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _result(metric: keras.metrics.Metric, *batches: tuple) -> float:
    metric.reset_state()
    for batch in batches:
        metric.update_state(*batch)
    return float(metric.result())


# seed README ----------------------------------------------------------------------------------

SEED_EXAMPLES = [
    """
import mlable.metrics

byte_accuracy = mlable.metrics.BinaryGroupAccuracy(group=1, depth=8, threshold=0.6, name='byte_accuracy')
character_accuracy = mlable.metrics.BinaryGroupAccuracy(group=4, depth=8, threshold=0.6, name='character_accuracy')
token_accuracy = mlable.metrics.BinaryGroupAccuracy(group=64, depth=8, threshold=0.6, name='token_accuracy')
""",
    """
import mlable.metrics

byte_accuracy = mlable.metrics.CategoricalGroupAccuracy(group=1, name='byte_accuracy')
character_accuracy = mlable.metrics.CategoricalGroupAccuracy(group=4, name='character_accuracy')
token_accuracy = mlable.metrics.CategoricalGroupAccuracy(group=64, name='token_accuracy')
""",
    """
import mlable.metrics

byte_accuracy = mlable.metrics.RawGroupAccuracy(group=1, factor=256.0, name='byte_accuracy')
character_accuracy = mlable.metrics.RawGroupAccuracy(group=4, factor=256.0, name='character_accuracy')
token_accuracy = mlable.metrics.RawGroupAccuracy(group=64, factor=256.0, name='token_accuracy')
""",
]


@pytest.mark.parametrize("source", SEED_EXAMPLES, ids=["binary", "categorical", "raw"])
def test_seed_readme_examples(source):
    namespace = {"tf": tf, "int32": tf.int32}
    exec(source, namespace)  # the README's lines, verbatim
    rng = np.random.default_rng(0)
    # 2 rows of 64 UTF-32-BE characters = 256 bytes: every metric of the example can score them
    labels, one_hot, probs = reference.categorical_data((2, 256), 256, rng, error=0.001)
    if "BinaryGroupAccuracy" in source:
        y_true = np.unpackbits(labels.astype(np.uint8), axis=-1).astype("float32")
        y_pred = np.unpackbits(np.argmax(probs, -1).astype(np.uint8), axis=-1) * 0.9 + 0.05
        expected = [reference.binary(y_true, y_pred, group, 8, 0.6, -1) for group in (1, 4, 64)]
    elif "CategoricalGroupAccuracy" in source:
        y_true, y_pred = one_hot, probs
        expected = [reference.categorical(y_true, y_pred, group, -1) for group in (1, 4, 64)]
    else:
        y_true, y_pred = reference.raw_data((2, 256), rng, error=0.01)
        expected = [reference.raw(y_true, y_pred, group, 256.0, -1) for group in (1, 4, 64)]
    for name, correct in zip(("byte_accuracy", "character_accuracy", "token_accuracy"), expected):
        metric = namespace[name]
        assert metric.name == name
        assert _result(metric, (y_true, y_pred)) == pytest.approx(correct.mean(), abs=1e-6)


def test_seed_namespace_exports_the_same_classes():
    import mlable.metrics

    for name in ("BinaryGroupAccuracy", "CategoricalGroupAccuracy", "RawGroupAccuracy", "SparseCategoricalGroupAccuracy"):
        assert getattr(mlable.metrics, name) is getattr(metrics, name)


# group = 1 is Keras' own accuracy -----------------------------------------------------------


def _keras_cases(rng: np.random.Generator):
    labels, one_hot, probs = reference.categorical_data((6, 10), 7, rng, error=0.3)
    bits_true, bits_pred = reference.binary_data((6, 10), rng, error=0.2)
    return [
        (metrics.CategoricalGroupAccuracy(group=1), keras.metrics.CategoricalAccuracy(), one_hot, probs),
        (metrics.SparseCategoricalGroupAccuracy(group=1), keras.metrics.SparseCategoricalAccuracy(), labels, probs),
        (metrics.BinaryGroupAccuracy(group=1, depth=1), keras.metrics.BinaryAccuracy(), bits_true, bits_pred),
        (metrics.BinaryGroupAccuracy(group=1, depth=1, threshold=0.7), keras.metrics.BinaryAccuracy(threshold=0.7), bits_true, bits_pred),
    ]


@pytest.mark.parametrize("weighting", ["none", "rows", "elements"])
def test_group_one_equals_the_keras_accuracies(weighting):
    rng = np.random.default_rng(11)
    for ours, theirs, y_true, y_pred in _keras_cases(rng):
        weights = {"none": None, "rows": rng.random(6), "elements": rng.random((6, 10)) * (rng.random((6, 10)) < 0.7)}[weighting]
        # two batches of the same shape, as Keras and these metrics agree on equal shapes
        batches = [(y_true[:3], y_pred[:3]), (y_true[3:], y_pred[3:])]
        if weights is not None:
            batches = [batch + (w,) for batch, w in zip(batches, (weights[:3], weights[3:]))]
        assert _result(ours, *batches) == pytest.approx(_result(theirs, *batches), abs=1e-6), type(ours).__name__


def test_sparse_labels_with_a_trailing_axis_of_one_match_keras():
    labels, _, probs = reference.categorical_data((12,), 4, np.random.default_rng(4), error=0.5)
    column = labels[:, None]  # (B, 1) labels for (B, C) scores, as Keras accepts
    ours = metrics.SparseCategoricalGroupAccuracy(group=1)
    assert _result(ours, (column, probs)) == pytest.approx(_result(keras.metrics.SparseCategoricalAccuracy(), (column, probs)))
    assert _result(ours, (column, probs)) == pytest.approx(_result(ours, (labels, probs)))


# properties -----------------------------------------------------------------------------------

KINDS = ["categorical", "sparse", "binary", "raw"]


def _kind_data(kind: str, case: strategies.GroupCase, depth: int = 3):
    """``(metric, y_true, y_pred, correct)`` for one kind, with ``correct`` from the NumPy reference."""
    rng = np.random.default_rng(case.seed)
    if kind in ("categorical", "sparse"):
        labels, one_hot, probs = reference.categorical_data(case.shape, 4, rng)
        correct = reference.categorical(one_hot, probs, case.group, case.axis)
        if kind == "sparse":
            return metrics.SparseCategoricalGroupAccuracy(case.group, case.given_axis), labels, probs, correct
        return metrics.CategoricalGroupAccuracy(case.group, case.given_axis), one_hot, probs, correct
    if kind == "binary":
        shape = list(case.shape)
        shape[case.axis] *= depth
        y_true, y_pred = reference.binary_data(tuple(shape), rng, threshold=0.6, error=0.05)
        correct = reference.binary(y_true, y_pred, case.group, depth, 0.6, case.axis)
        return metrics.BinaryGroupAccuracy(case.group, depth, 0.6, case.given_axis), y_true, y_pred, correct
    y_true, y_pred = reference.raw_data(case.shape, rng)
    correct = reference.raw(y_true, y_pred, case.group, 256.0, case.axis)
    return metrics.RawGroupAccuracy(case.group, 256.0, case.given_axis), y_true, y_pred, correct


@given(strategies.group_cases(), st.sampled_from(KINDS), st.sampled_from(["none", "rows", "groups"]))
def test_result_is_the_weighted_share_of_correct_groups(case, kind, weighting):
    metric, y_true, y_pred, correct = _kind_data(kind, case)
    rng = np.random.default_rng(case.seed + 1)
    weights = {"none": None, "rows": rng.random(correct.shape[:1]), "groups": (rng.random(correct.shape) < 0.6).astype("float32")}[weighting]
    batch = (y_true, y_pred) if weights is None else (y_true, y_pred, weights)
    assert _result(metric, batch) == pytest.approx(reference.weighted_share(correct, weights), abs=1e-6)


@given(strategies.group_cases(), st.sampled_from(KINDS), st.integers(1, 3))
def test_accumulating_batches_equals_one_call_on_their_concatenation(case, kind, splits):
    if case.axis == 0:
        case = strategies.GroupCase((3,) + case.shape, case.axis + 1, case.axis + 1, case.group, case.seed)
    metric, y_true, y_pred, _ = _kind_data(kind, case)
    weights = np.random.default_rng(case.seed).random(y_true.shape[:1]).astype("float32")
    bounds = np.linspace(0, len(y_true), splits + 1).astype(int)
    batches = [(y_true[a:b], y_pred[a:b], weights[a:b]) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]
    assert _result(metric, *batches) == pytest.approx(_result(metric, (y_true, y_pred, weights)), abs=1e-6)


@given(strategies.group_cases(max_group=3), st.sampled_from(KINDS), st.integers(2, 3))
def test_larger_groups_score_no_higher(case, kind, multiple):
    shape = list(case.shape)
    shape[case.axis] *= multiple
    case = strategies.GroupCase(tuple(shape), case.axis, case.given_axis, case.group, case.seed)
    small, y_true, y_pred, _ = _kind_data(kind, case)
    config = small.get_config()
    large = type(small).from_config({**config, "group": config["group"] * multiple})
    assert _result(large, (y_true, y_pred)) <= _result(small, (y_true, y_pred)) + 1e-7


def test_batches_of_different_lengths_weigh_by_groups():
    metric = metrics.CategoricalGroupAccuracy(group=2)
    short = reference.categorical_data((1, 4), 3, np.random.default_rng(0), error=0.0)  # 2 groups, all right
    long = reference.categorical_data((1, 12), 3, np.random.default_rng(1), error=1.0)
    long_pred = long[2][:, :, ::-1].copy()  # reversed scores: each argmax moves, most groups wrong
    correct_long = reference.categorical(long[1], long_pred, 2, -1)
    expected = (2 + correct_long.sum()) / (2 + correct_long.size)
    assert _result(metric, (short[1], short[2]), (long[1], long_pred)) == pytest.approx(expected)


def test_keras_mask_on_predictions_counts_fully_unmasked_groups():
    _, one_hot, probs = reference.categorical_data((2, 6), 4, np.random.default_rng(5), error=0.5)
    mask = np.array([[1, 1, 1, 1, 0, 0], [1, 1, 1, 0, 0, 0]], dtype=bool)
    y_pred = tf.constant(probs)
    y_pred._keras_mask = tf.constant(mask)  # what a masking layer leaves on its output
    correct = reference.categorical(one_hot, probs, 2, -1)
    groups = reference.group_all(mask, 2, -1)
    expected = reference.weighted_share(correct, groups.astype("float32"))
    assert _result(metrics.CategoricalGroupAccuracy(group=2), (one_hot, y_pred)) == pytest.approx(expected)


def test_custom_loop_update_result_reset():
    case = strategies.GroupCase((4, 8), 1, -1, 4, 3)
    metric, y_true, y_pred, correct = _kind_data("categorical", case)
    step = tf.function(lambda a, b: metric.update_state(a, b))
    step(y_true[:2], y_pred[:2])
    step(y_true[2:], y_pred[2:])
    assert float(metric.result()) == pytest.approx(correct.mean())
    metric.reset_state()
    assert float(metric.result()) == 0.0
    assert [variable.name for variable in metric.variables] == ["total", "count"]


def test_half_precision_predictions_and_float64_sums():
    case = strategies.GroupCase((3, 8), 1, -1, 2, 9)
    metric, y_true, y_pred, correct = _kind_data("categorical", case)
    for dtype in ("float16", "bfloat16"):
        cast = tf.cast(y_pred, dtype)
        expected = reference.categorical(y_true, cast.numpy().astype("float32"), 2, -1).mean()
        assert _result(metric, (y_true, cast)) == pytest.approx(expected)
        assert metric.result().dtype == tf.float32
    wide = metrics.CategoricalGroupAccuracy(group=2, dtype="float64")
    assert _result(wide, (y_true, y_pred)) == pytest.approx(correct.mean())
    assert wide.result().dtype == tf.float64


# config, compile, fit, saving -----------------------------------------------------------------

ALL_METRICS = [
    (metrics.BinaryGroupAccuracy, dict(group=2, depth=4, threshold=0.25, axis=1, name="bits")),
    (metrics.CategoricalGroupAccuracy, dict(group=4, axis=-1, name="characters")),
    (metrics.SparseCategoricalGroupAccuracy, dict(group=2, axis=1)),
    (metrics.RawGroupAccuracy, dict(group=2, factor=100.0, axis=-1, dtype="float64")),
]


@pytest.mark.parametrize("cls,kwargs", ALL_METRICS)
def test_config_round_trip(cls, kwargs):
    metric = cls(**kwargs)
    check_config_round_trip(metric, kwargs)
    config = metric.get_config()
    assert set(config) == {"name", "dtype"} | set(cls.__init__.__code__.co_varnames[1 : cls.__init__.__code__.co_argcount])
    for key, value in kwargs.items():
        assert config[key] == value
    assert "fn" not in config  # the wrapped function is fixed by the class, never a closure in the config
    assert metric._fn.__module__ == "mlable_core.accuracy"


def _model() -> keras.Model:
    inputs = keras.Input((8, 6))
    hidden = keras.layers.Dense(5, name="head", kernel_initializer=keras.initializers.RandomNormal(seed=1))(inputs)
    return keras.Model(inputs, {"probs": keras.layers.Softmax(name="probs")(hidden), "labels": keras.layers.Identity(name="labels")(hidden)})


def _metrics() -> dict[str, list[keras.metrics.Metric]]:
    return {
        "probs": [
            metrics.CategoricalGroupAccuracy(group=2, name="pairs"),
            metrics.BinaryGroupAccuracy(group=1, depth=5, threshold=0.3, name="bits"),
            metrics.RawGroupAccuracy(group=4, factor=2.0, axis=1, name="raw"),
        ],
        "labels": [metrics.SparseCategoricalGroupAccuracy(group=4, name="quads")],
    }


def _data(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 5, size=(16, 8))
    return {
        "x": rng.normal(size=(16, 8, 6)).astype("float32"),
        "labels": labels,
        "one_hot": np.eye(5, dtype="float32")[labels],
        "weights": rng.random((16, 1)).astype("float32"),
    }


def _expected(outputs: dict[str, np.ndarray], data: dict[str, np.ndarray], weighted: bool) -> dict[str, float]:
    probs, logits = outputs["probs"], outputs["labels"]
    weights = data["weights"][:, 0] if weighted else None
    return {
        "pairs": reference.weighted_share(reference.categorical(data["one_hot"], probs, 2, -1), weights),
        "bits": reference.weighted_share(reference.binary(data["one_hot"], probs, 1, 5, 0.3, -1), weights),
        "raw": reference.weighted_share(reference.raw(data["one_hot"], probs, 4, 2.0, 1), weights),
        "quads": reference.weighted_share(reference.sparse_categorical(data["labels"], logits, 4, -1), weights),
    }


def _scores(logs: dict[str, float]) -> dict[str, float]:
    return {name: logs[key] for key in logs for name in ("pairs", "bits", "raw", "quads") if key.endswith(name)}


@pytest.mark.parametrize("jit_compile", [False, True])
def test_compile_fit_and_evaluate(jit_compile):
    data = _data()
    model = _model()
    model.compile(
        optimizer="sgd",
        loss={"probs": "categorical_crossentropy", "labels": keras.losses.SparseCategoricalCrossentropy(from_logits=True)},
        metrics=_metrics(),
        weighted_metrics=_metrics(),
        jit_compile=jit_compile,
    )
    targets = {"probs": data["one_hot"], "labels": data["labels"]}
    history = model.fit(data["x"], targets, batch_size=8, epochs=1, verbose=0, sample_weight=data["weights"])
    assert all(0.0 <= value[0] <= 1.0 for key, value in history.history.items() if key.endswith(("pairs", "bits", "raw", "quads")))
    # evaluate over several batches (uneven ones without XLA, which would compile the last one again)
    # equals one NumPy pass over the whole data
    batch_size = 8 if jit_compile else 6
    logs = model.evaluate(data["x"], targets, batch_size=batch_size, verbose=0, return_dict=True, sample_weight=data["weights"])
    outputs = {key: np.asarray(value) for key, value in model(data["x"]).items()}
    expected_plain, expected_weighted = _expected(outputs, data, False), _expected(outputs, data, True)
    for key, value in logs.items():
        for name in ("pairs", "bits", "raw", "quads"):
            if key.endswith(name):
                expected = expected_weighted[name] if "weighted" in key else expected_plain[name]
                assert value == pytest.approx(expected, abs=1e-5), key
    assert len([key for key in logs if key.endswith(("pairs", "bits", "raw", "quads"))]) == 8


SUBPROCESS = textwrap.dedent(
    """
    import json, sys
    import tensorflow as tf
    # two logical CPUs, before TensorFlow initializes
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import numpy as np
    import keras
    import mlable_keras  # registers the metrics, as a user does before loading
    from mlable_keras import metrics

    path, data_path = sys.argv[1], sys.argv[2]
    data = dict(np.load(data_path))
    targets = {"probs": data["one_hot"], "labels": data["labels"]}
    report = {}

    # 1. the compiled .keras file, reloaded in a fresh process
    model = keras.saving.load_model(path)
    report["reloaded"] = model.evaluate(data["x"], targets, batch_size=6, verbose=0, return_dict=True, sample_weight=data["weights"])
    report["compile_config"] = json.dumps(model.get_compile_config())

    # 2. the same evaluation under MirroredStrategy with two replicas
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    report["replicas"] = strategy.num_replicas_in_sync
    with strategy.scope():
        mirrored = keras.saving.load_model(path)
    report["mirrored"] = mirrored.evaluate(data["x"], targets, batch_size=6, verbose=0, return_dict=True, sample_weight=data["weights"])

    # 3. a custom loop with strategy.run, per-row and per-group weights
    def make():
        return [metrics.CategoricalGroupAccuracy(group=2), metrics.SparseCategoricalGroupAccuracy(group=4),
                metrics.BinaryGroupAccuracy(group=2, depth=5, threshold=0.5, axis=1), metrics.RawGroupAccuracy(group=2, factor=4.0, axis=1)]
    def args(metric):
        if isinstance(metric, metrics.SparseCategoricalGroupAccuracy):
            return data["labels"], data["probs"], data["row_weights"]
        if isinstance(metric, metrics.BinaryGroupAccuracy):
            return data["one_hot"].reshape(16, 40), data["probs"].reshape(16, 40), data["row_weights"]
        if isinstance(metric, metrics.RawGroupAccuracy):
            return data["one_hot"], data["probs"], data["group_weights"]
        return data["one_hot"], data["probs"], data["pair_weights"]
    with strategy.scope():
        distributed = make()
    single = make()
    report["loop_single"], report["loop_mirrored"] = [], []
    for metric_single, metric_mirrored in zip(single, distributed):
        y_true, y_pred, weights = args(metric_single)
        metric_single.update_state(y_true, y_pred, sample_weight=weights)
        dataset = tf.data.Dataset.from_tensor_slices((y_true, y_pred, weights)).batch(6)
        @tf.function
        def step(a, b, c):
            strategy.run(lambda a, b, c: metric_mirrored.update_state(a, b, sample_weight=c), args=(a, b, c))
        for batch in strategy.experimental_distribute_dataset(dataset):
            step(*batch)
        report["loop_single"].append(float(metric_single.result()))
        report["loop_mirrored"].append(float(metric_mirrored.result()))
    print("REPORT " + json.dumps(report))
    """
)


@pytest.fixture(scope="module")
def fresh_and_mirrored(tmp_path_factory):
    """Saves a compiled model here, reloads and distributes it in a fresh process with two logical CPUs."""
    folder = tmp_path_factory.mktemp("metrics")
    data = _data(seed=1)
    model = _model()
    model.compile(
        optimizer="sgd",
        loss={"probs": "categorical_crossentropy", "labels": keras.losses.SparseCategoricalCrossentropy(from_logits=True)},
        metrics=_metrics(),
        weighted_metrics=_metrics(),
    )
    targets = {"probs": data["one_hot"], "labels": data["labels"]}
    here = model.evaluate(data["x"], targets, batch_size=6, verbose=0, return_dict=True, sample_weight=data["weights"])
    path = str(folder / "compiled.keras")
    model.save(path)
    loaded_here = keras.saving.load_model(path).evaluate(
        data["x"], targets, batch_size=6, verbose=0, return_dict=True, sample_weight=data["weights"]
    )
    outputs = {key: np.asarray(value) for key, value in model.predict(data["x"], verbose=0).items()}
    rng = np.random.default_rng(2)
    data.update(
        probs=outputs["probs"],
        row_weights=rng.random(16).astype("float32"),
        pair_weights=(rng.random((16, 4)) < 0.7).astype("float32"),
        group_weights=rng.random((16, 4, 1)).astype("float32"),  # per (row, group) on (B, 8 / 2, 5), last axis broadcast
    )
    data_path = str(folder / "data.npz")
    np.savez(data_path, **data)
    environment = dict(os.environ, PYTHONPATH=ROOT, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="3")
    completed = subprocess.run(
        [sys.executable, "-c", SUBPROCESS, path, data_path], capture_output=True, text=True, env=environment, timeout=600
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    line = [line for line in completed.stdout.splitlines() if line.startswith("REPORT ")][-1]
    return {"here": here, "loaded_here": loaded_here, "data": data, **json.loads(line[len("REPORT "):])}


def test_keras_file_reloads_compiled_metrics_here_and_in_a_fresh_process(fresh_and_mirrored):
    here = fresh_and_mirrored["here"]
    assert len(_scores(here)) == 4 and any("weighted" in key for key in here)
    for key, value in here.items():
        assert fresh_and_mirrored["loaded_here"][key] == pytest.approx(value, abs=1e-6), key
        assert fresh_and_mirrored["reloaded"][key] == pytest.approx(value, abs=1e-6), key
    for name in ("BinaryGroupAccuracy", "CategoricalGroupAccuracy", "RawGroupAccuracy", "SparseCategoricalGroupAccuracy"):
        assert f"mlable>{name}" in fresh_and_mirrored["compile_config"]


def test_mirrored_strategy_gives_the_single_device_result(fresh_and_mirrored):
    report = fresh_and_mirrored
    assert report["replicas"] == 2
    for key, value in report["reloaded"].items():
        if key.endswith(("pairs", "bits", "raw", "quads")):
            assert report["mirrored"][key] == pytest.approx(value, abs=1e-6), key
    data = report["data"]
    expected = [
        reference.weighted_share(reference.categorical(data["one_hot"], data["probs"], 2, -1), data["pair_weights"]),
        reference.weighted_share(reference.sparse_categorical(data["labels"], data["probs"], 4, -1), data["row_weights"]),
        reference.weighted_share(
            reference.binary(data["one_hot"].reshape(16, 40), data["probs"].reshape(16, 40), 2, 5, 0.5, 1), data["row_weights"]
        ),
        reference.weighted_share(reference.raw(data["one_hot"], data["probs"], 2, 4.0, 1), data["group_weights"]),
    ]
    np.testing.assert_allclose(report["loop_single"], expected, atol=1e-6)
    np.testing.assert_allclose(report["loop_mirrored"], expected, atol=1e-6)


# errors -------------------------------------------------------------------------------------

ERRORS = [
    (lambda: metrics.BinaryGroupAccuracy(group=0), ValueError, r"`group` must be an int >= 1\. Received: group=0"),
    (lambda: metrics.BinaryGroupAccuracy(depth=0), ValueError, r"`depth` must be an int >= 1\. Received: depth=0"),
    (lambda: metrics.CategoricalGroupAccuracy(group=-4), ValueError, r"`group` must be an int >= 1\. Received: group=-4"),
    (lambda: metrics.RawGroupAccuracy(factor=0.0), ValueError, r"`factor` must be a finite number > 0\. Received: factor=0\.0"),
    (lambda: metrics.RawGroupAccuracy(factor=-1.0), ValueError, r"`factor` must be a finite number > 0\. Received: factor=-1\.0"),
    (lambda: metrics.BinaryGroupAccuracy(threshold="0.5"), TypeError, r"`threshold` must be a real number\. Received: threshold='0\.5'"),
    (lambda: metrics.SparseCategoricalGroupAccuracy(axis=1.5), TypeError, r"`axis` must be an int\. Received: axis=1\.5"),
    (lambda: metrics.BinaryGroupAccuracy(group=1, depth=8).update_state(tf.ones((2, 30)), tf.ones((2, 30))), ValueError,
     r"`depth` must divide axis 1 of size 30 \(the bits\)\. Received: depth=8, y_true\.shape=\(2, 30\), y_pred\.shape=\(2, 30\)"),
    (lambda: metrics.BinaryGroupAccuracy(group=4, depth=8).update_state(tf.ones((2, 48)), tf.ones((2, 48))), ValueError,
     r"`group` must divide the number of values along axis 1 \(48 bits / depth 8\)\. Received: group=4, depth=8, y_true\.shape=\(2, 48\)"),
    (lambda: metrics.CategoricalGroupAccuracy(group=4).update_state(tf.ones((2, 6, 3)), tf.ones((2, 6, 3))), ValueError,
     r"`group` must divide the number of values along axis 1 \(6\)\. Received: group=4, y_true\.shape=\(2, 6, 3\), y_pred\.shape=\(2, 6, 3\)"),
    (lambda: metrics.CategoricalGroupAccuracy(group=1).update_state(tf.ones((2, 6, 3)), tf.ones((2, 6, 4))), ValueError,
     r"`y_true` and `y_pred` must have the same shape\. Received: y_true\.shape=\(2, 6, 3\), y_pred\.shape=\(2, 6, 4\)"),
    (lambda: metrics.RawGroupAccuracy(group=1).update_state(tf.ones((2, 6)), tf.ones((2, 5))), ValueError,
     r"`y_true` and `y_pred` must have the same shape\. Received: y_true\.shape=\(2, 6\), y_pred\.shape=\(2, 5\)"),
    (lambda: metrics.SparseCategoricalGroupAccuracy(group=1).update_state(tf.ones((2, 5)), tf.ones((2, 6, 3))), ValueError,
     r"`y_true` and `y_pred` must have the same shape \(up to the class axis of y_pred\)\. Received: y_true\.shape=\(2, 5\), y_pred\.shape=\(2, 6, 3\)"),
    (lambda: metrics.CategoricalGroupAccuracy(group=2).update_state(tf.ones((2, 6, 3)), tf.ones((2, 6, 3)), sample_weight=tf.ones((2, 6))), ValueError,
     r"`sample_weight` must broadcast to the group-level shape \(2, 3\), aligned on the leading axes .* Received: sample_weight\.shape=\(2, 6\)"),
    (lambda: metrics.CategoricalGroupAccuracy(group=2).update_state(tf.ones((2, 6, 3)), tf.ones((2, 6, 3)), sample_weight=tf.ones((3,))), ValueError,
     r"`sample_weight` must broadcast to the group-level shape \(2, 3\).* Received: sample_weight\.shape=\(3,\)"),
]


@pytest.mark.parametrize("call,error,message", ERRORS)
def test_errors(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_element_masks_are_reduced_with_the_core_helper():
    # the documented way to weight elements: reduce the element mask per group first
    element_mask = np.array([[1, 1, 0, 1, 1, 1]], dtype="float32")
    metric = metrics.CategoricalGroupAccuracy(group=2)
    one_hot = np.eye(3, dtype="float32")[[[0, 1, 2, 0, 1, 2]]]
    weights = accuracy.group_all(element_mask, 2)
    assert _result(metric, (one_hot, one_hot, weights)) == pytest.approx(1.0)
    np.testing.assert_array_equal(weights.numpy(), [[True, False, True]])


def test_readme_metrics_example():
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as handle:
        text = handle.read()
    section = text.split("\n## Metrics\n", 1)[1].split("\n## ", 1)[0]
    source = section.split("```python\n", 1)[1].split("```", 1)[0]
    namespace: dict = {}
    exec(source, namespace)
    assert float(namespace["byte_accuracy"].result()) == pytest.approx(0.75)
    assert float(namespace["character_accuracy"].result()) == 0.0

"""One process of the distributed training tests: a model of every mlable layer, trained with the group metrics.

    python -m tests.distributed_worker --task-index 0 --num-workers 2 --ports 23456,23457 --out worker0.npz
    python tests/distributed_worker.py --num-workers 1 --out single.npz
    python tests/distributed_worker.py --mode fit --out fit.npz

The model maps byte tokens ``(B, L, K)`` (``K = 4 * T`` UTF-32-BE bytes per
token of ``T`` characters) to byte logits ``(B, L * K, 256)``:
``TokunEmbedding`` -> ``RotaryPositionalEmbedding`` -> causal
``CachedMultiHeadAttention`` + residual -> ``FeedForwardGate`` + residual ->
``Dense(K * 256)`` -> ``Divide`` ``(B, L, K, 256)`` -> ``Merge`` ``(B, L * K, 256)``,
the flat byte sequence the metrics score by byte, character and token.

Modes:

- ``custom`` (default): a custom training step (``strategy.run`` in a
  ``tf.function``, the loss averaged over the global batch, the optimizer
  summing the gradients across replicas, the metrics updated per replica).
  With ``--num-workers 2`` each process is one worker of a
  ``MultiWorkerMirroredStrategy`` (ring all-reduce) on ``127.0.0.1``; it reads
  its half of every global batch. With ``--num-workers 1`` (no ``TF_CONFIG``) it
  is the single-process reference: the default strategy, the same global batches.
  Keras' own ``fit`` is not used here: Keras 3.15 fails under
  ``MultiWorkerMirroredStrategy`` before the first step (its
  ``_maybe_symbolic_build`` reduces the per-replica inputs).
- ``fit``: two logical CPUs, then ``compile`` + ``fit`` + ``evaluate`` once on
  one device (the default strategy) and once under ``MirroredStrategy`` with
  two replicas, on the same data.

The ``.npz`` written holds, per run prefix (``""`` in ``custom`` mode,
``single/`` and ``mirrored/`` in ``fit`` mode): ``{prefix}weight/{i}`` the final
weights in ``model.weights`` order, ``{prefix}train/{name}`` and
``{prefix}eval/{name}`` the metric results, ``{prefix}loss`` the loss of every
step (``custom``) or of the epoch (``fit``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

TOKEN_CHARACTERS = 2  # T
TOKEN_BYTES = 4 * TOKEN_CHARACTERS  # K, UTF-32-BE
NUM_TOKENS = 8  # L
EMBED_DIM = 4  # E per byte, the model width is K * E
NUM_HEADS = 2
HIDDEN_DIM = 64
GLOBAL_BATCH = 8
EVAL_ROWS = 16
ALPHABET = 4  # the characters are "a" .. "d"
LEARNING_RATE = 0.5
SEED = 7


def parse_arguments(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", choices=("custom", "fit"), default="custom")
    parser.add_argument("--task-index", type=int, default=0)
    parser.add_argument("--num-workers", type=int, default=1)
    parser.add_argument("--ports", default="", help="comma-separated ports of the workers on 127.0.0.1")
    parser.add_argument("--out", required=True, help="path of the .npz written at the end")
    parser.add_argument("--steps", type=int, default=4)
    arguments = parser.parse_args(argv)
    ports = [int(port) for port in arguments.ports.split(",") if port]
    if arguments.num_workers < 1:
        parser.error(f"--num-workers must be >= 1. Received: {arguments.num_workers}")
    if arguments.num_workers > 1 and len(ports) != arguments.num_workers:
        parser.error(f"--ports must name one port per worker. Received: ports={ports}, num_workers={arguments.num_workers}")
    if not 0 <= arguments.task_index < arguments.num_workers:
        parser.error(f"--task-index must be in [0, {arguments.num_workers}). Received: {arguments.task_index}")
    arguments.ports = ports
    return arguments


def make_data(rows: int, seed: int) -> tuple[Any, Any]:
    """Next-token prediction over a cyclic text: ``(inputs, targets)``, ``(rows, L, K)`` and ``(rows, L * K)`` int32."""
    import numpy as np

    rng = np.random.default_rng(seed)
    starts = rng.integers(0, ALPHABET, size=(rows, 1))
    positions = np.arange((NUM_TOKENS + 1) * TOKEN_CHARACTERS)[None, :]
    codes = ord("a") + (starts + positions) % ALPHABET  # (rows, (L + 1) * T) characters
    encoded = np.zeros(codes.shape + (4,), dtype="int32")
    encoded[..., 3] = codes  # UTF-32-BE: three zero bytes, then the code point (all below 256)
    tokens = encoded.reshape(rows, NUM_TOKENS + 1, TOKEN_BYTES)  # (rows, L + 1, K)
    return tokens[:, :-1], tokens[:, 1:].reshape(rows, NUM_TOKENS * TOKEN_BYTES)


def build_model() -> Any:
    import keras

    from mlable_keras.layers.embedding import RotaryPositionalEmbedding, TokunEmbedding
    from mlable_keras.layers.reshaping import Divide, Merge
    from mlable_keras.layers.transformer import CachedMultiHeadAttention, FeedForwardGate

    width = TOKEN_BYTES * EMBED_DIM
    inputs = keras.Input((NUM_TOKENS, TOKEN_BYTES), dtype="int32")
    x = TokunEmbedding(256, EMBED_DIM, name="embedding")(inputs)  # (B, L, K * E)
    x = RotaryPositionalEmbedding(sequence_axis=1, feature_axis=-1, name="rope")(x)
    x = x + CachedMultiHeadAttention(num_heads=NUM_HEADS, key_dim=width // NUM_HEADS, name="attention")(x, x)
    x = x + FeedForwardGate(input_dim=width, hidden_dim=HIDDEN_DIM, name="feed_forward")(x)
    x = keras.layers.Dense(TOKEN_BYTES * 256, name="head")(x)  # (B, L, K * 256)
    x = Divide(input_axis=3, output_axis=2, factor=TOKEN_BYTES, insert=True, name="split")(x)  # (B, L, K, 256)
    outputs = Merge(left_axis=1, right_axis=2, name="flatten")(x)  # (B, L * K, 256)
    return keras.Model(inputs, outputs, name="byte_model")


def make_metrics() -> list[Any]:
    """Byte, character and token accuracies (sparse targets), and the character accuracy on one-hot targets."""
    from mlable_keras.metrics import CategoricalGroupAccuracy, SparseCategoricalGroupAccuracy

    return [
        SparseCategoricalGroupAccuracy(group=1, name="byte"),
        SparseCategoricalGroupAccuracy(group=4, name="character"),
        SparseCategoricalGroupAccuracy(group=TOKEN_BYTES, name="token"),
        CategoricalGroupAccuracy(group=4, name="character_one_hot"),
    ]


def update_metrics(metrics: Sequence[Any], targets: Any, logits: Any) -> None:
    import tensorflow as tf

    one_hot = tf.one_hot(targets, 256)  # (B, L * K, 256)
    for metric in metrics:
        metric.update_state(one_hot if metric.name.endswith("one_hot") else targets, logits)


def weights_and_results(prefix: str, model: Any, train: dict[str, float], evaluation: dict[str, float], losses: Any) -> dict[str, Any]:
    import numpy as np

    report = {f"{prefix}weight/{index}": variable.numpy() for index, variable in enumerate(model.weights)}
    report.update({f"{prefix}train/{name}": np.float64(value) for name, value in train.items()})
    report.update({f"{prefix}eval/{name}": np.float64(value) for name, value in evaluation.items()})
    report[f"{prefix}loss"] = np.asarray(losses, dtype="float64")
    return report


def run_custom(arguments: argparse.Namespace) -> dict[str, Any]:
    """Trains with ``strategy.run``: multi-worker with ``--num-workers > 1``, else the single-process reference."""
    if arguments.num_workers > 1:
        # before TensorFlow reads it, i.e. before the strategy exists
        os.environ["TF_CONFIG"] = json.dumps(
            {
                "cluster": {"worker": [f"127.0.0.1:{port}" for port in arguments.ports]},
                "task": {"type": "worker", "index": arguments.task_index},
            }
        )
    else:
        os.environ.pop("TF_CONFIG", None)
    import keras
    import tensorflow as tf

    configure_threads(tf)
    if arguments.num_workers > 1:
        options = tf.distribute.experimental.CommunicationOptions(
            implementation=tf.distribute.experimental.CommunicationImplementation.RING
        )
        strategy = tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
    else:
        strategy = tf.distribute.get_strategy()
    if strategy.num_replicas_in_sync != arguments.num_workers:
        raise RuntimeError(f"expected {arguments.num_workers} replicas, got {strategy.num_replicas_in_sync}")

    train_x, train_y = make_data(GLOBAL_BATCH * arguments.steps, seed=SEED)
    eval_x, eval_y = make_data(EVAL_ROWS, seed=SEED + 1)

    keras.utils.set_random_seed(SEED)
    with strategy.scope():
        model = build_model()
        optimizer = keras.optimizers.SGD(learning_rate=LEARNING_RATE)
        optimizer.build(model.trainable_variables)  # no variable may be created inside strategy.run
        train_metrics, eval_metrics = make_metrics(), make_metrics()

    def dataset(inputs: Any, targets: Any) -> Any:
        def dataset_fn(context: tf.distribute.InputContext) -> tf.data.Dataset:
            # worker w reads the rows w, w + n, ...: its part of each global batch, in order
            rows = tf.data.Dataset.from_tensor_slices((inputs, targets))
            rows = rows.shard(context.num_input_pipelines, context.input_pipeline_id)
            return rows.batch(context.get_per_replica_batch_size(GLOBAL_BATCH), drop_remainder=True)

        return strategy.distribute_datasets_from_function(dataset_fn)

    def per_replica_train(inputs: Any, targets: Any) -> Any:
        with tf.GradientTape() as tape:
            logits = model(inputs, training=True)  # (B / n, L * K, 256)
            per_row = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(targets, logits, from_logits=True), axis=-1)
            # the mean over the global batch: the optimizer sums the gradients of the replicas
            loss = tf.nn.compute_average_loss(per_row, global_batch_size=GLOBAL_BATCH)
        gradients = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(gradients, model.trainable_variables))
        update_metrics(train_metrics, targets, logits)
        return loss

    def per_replica_eval(inputs: Any, targets: Any) -> None:
        update_metrics(eval_metrics, targets, model(inputs, training=False))

    @tf.function
    def train_step(batch: Any) -> Any:
        losses = strategy.run(per_replica_train, args=batch)
        return strategy.reduce(tf.distribute.ReduceOp.SUM, losses, axis=None)

    @tf.function
    def eval_step(batch: Any) -> None:
        strategy.run(per_replica_eval, args=batch)

    losses = [float(train_step(batch)) for batch in dataset(train_x, train_y)]
    for batch in dataset(eval_x, eval_y):
        eval_step(batch)
    with strategy.scope():
        # a cross-replica read of the summed states: a collective across the workers
        train = {metric.name: float(metric.result()) for metric in train_metrics}
        evaluation = {metric.name: float(metric.result()) for metric in eval_metrics}
    if len(losses) != arguments.steps:
        raise RuntimeError(f"expected {arguments.steps} steps, ran {len(losses)}")
    return weights_and_results("", model, train, evaluation, losses)


def run_fit(arguments: argparse.Namespace) -> dict[str, Any]:
    """Keras ``compile`` + ``fit`` + ``evaluate`` on one device, then under ``MirroredStrategy`` on two logical CPUs."""
    import tensorflow as tf

    # two logical CPUs, before TensorFlow initializes its devices
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    configure_threads(tf)
    import keras

    train_x, train_y = make_data(GLOBAL_BATCH * arguments.steps, seed=SEED)
    eval_x, eval_y = make_data(EVAL_ROWS, seed=SEED + 1)
    eval_one_hot = tf.one_hot(eval_y, 256).numpy()
    report = {}
    for prefix, strategy in (("single/", tf.distribute.get_strategy()), ("mirrored/", tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]))):
        keras.utils.set_random_seed(SEED)
        with strategy.scope():
            model = build_model()
            metrics = make_metrics()
            model.compile(
                optimizer=keras.optimizers.SGD(learning_rate=LEARNING_RATE),
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                metrics=[metric for metric in metrics if not metric.name.endswith("one_hot")],
                jit_compile=False,
            )
        history = model.fit(train_x, train_y, batch_size=GLOBAL_BATCH, epochs=1, shuffle=False, verbose=0)
        train = {name: values[-1] for name, values in history.history.items() if name != "loss"}
        evaluation = model.evaluate(eval_x, eval_y, batch_size=GLOBAL_BATCH, verbose=0, return_dict=True)
        evaluation.pop("loss")
        # the one-hot metric through a second evaluate: Keras gives one target per output
        one_hot = keras.Model(model.inputs, model.outputs)
        with strategy.scope():
            one_hot.compile(loss="categorical_crossentropy", metrics=[metrics[-1]], jit_compile=False)
        evaluation.update((name, value) for name, value in one_hot.evaluate(eval_x, eval_one_hot, batch_size=GLOBAL_BATCH, verbose=0, return_dict=True).items() if name != "loss")
        report.update(weights_and_results(prefix, model, train, evaluation, history.history["loss"]))
        report[f"{prefix}replicas"] = strategy.num_replicas_in_sync
    return report


def configure_threads(tf: Any) -> None:
    # one thread per op in every process: the runs share two cores, and their kernels reduce in one order
    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)


def main(argv: Sequence[str] | None = None) -> int:
    arguments = parse_arguments(argv)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if root not in sys.path:  # run as a path: the library sits next to tests/
        sys.path.insert(0, root)
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    report = run_fit(arguments) if arguments.mode == "fit" else run_custom(arguments)
    import numpy as np

    partial = arguments.out + ".partial.npz"  # the test reads complete files only
    np.savez(partial, **report)
    os.replace(partial, arguments.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

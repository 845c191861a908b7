"""Distributed training of a model of every layer, scored with the group metrics.

Each run is a subprocess of ``tests/distributed_worker.py`` (see its docstring
for the model and the two modes): the distribution settings (``TF_CONFIG``,
logical devices) must be in place before TensorFlow initializes, and this
process has TensorFlow initialized already.

- ``MultiWorkerMirroredStrategy``: two workers on ``127.0.0.1`` train with a
  custom ``strategy.run`` step, next to a single-process run of the same global
  batches; both workers end with the same weights, which are those of the
  single process, and the metrics (summed across the workers) equal its metrics.
- ``MirroredStrategy`` on two logical CPUs: Keras ``compile`` + ``fit`` +
  ``evaluate`` equal a one-device run. (``tests/test_metrics.py`` already
  evaluates the metrics of a reloaded model under this strategy; this test trains
  the layers with ``fit``.)
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
WORKER = Path(__file__).resolve().with_name("distributed_worker.py")
DEADLINE_S = 240  # for all the processes of one test, together
STEPS = 4
METRICS = ("byte", "character", "token", "character_one_hot")


def free_ports(count: int) -> list[int]:
    """Ports that were free a moment ago: the sockets stay bound until all are picked, so they differ."""
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for item in sockets:
            item.bind(("127.0.0.1", 0))
        return [item.getsockname()[1] for item in sockets]
    finally:
        for item in sockets:
            item.close()


def environment() -> dict[str, str]:
    variables = dict(os.environ, CUDA_VISIBLE_DEVICES="", TF_CPP_MIN_LOG_LEVEL="2", KERAS_BACKEND="tensorflow")
    variables["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    variables.pop("TF_CONFIG", None)  # the workers set their own; the reference must not see one
    return variables


def tail(path: Path, lines: int = 25) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def run_workers(runs: dict[str, Sequence[str]], folder: Path, deadline_s: float = DEADLINE_S) -> dict[str, dict[str, np.ndarray]]:
    """Starts one worker process per entry, all at once; returns what each wrote, or fails with their stderr.

    Every process still running at the deadline, or when one fails, is killed:
    a lone multi-worker process waits for its peer forever.
    """
    processes, logs = {}, {}
    end = time.monotonic() + deadline_s
    try:
        for name, arguments in runs.items():
            logs[name] = folder / f"{name}.log"
            with open(logs[name], "wb") as log:
                processes[name] = subprocess.Popen(
                    [sys.executable, str(WORKER), *arguments, "--out", str(folder / f"{name}.npz")],
                    stdout=log, stderr=subprocess.STDOUT, env=environment(), cwd=folder,
                )
        while any(process.poll() is None for process in processes.values()):
            failed = [name for name, process in processes.items() if process.poll() not in (None, 0)]
            if failed or time.monotonic() > end:
                break
            time.sleep(0.2)
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.kill()
            process.wait()
    report = "\n".join(f"--- {name} (exit {process.returncode}):\n{tail(logs[name])}" for name, process in processes.items())
    if any(process.returncode != 0 for process in processes.values()):
        pytest.fail(f"a worker failed or ran past {deadline_s} s:\n{report}")
    results = {}
    for name in runs:
        with np.load(folder / f"{name}.npz") as data:
            results[name] = {key: data[key] for key in data.files}
    return results


def strip(result: dict[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
    """The entries of one run of a file holding several, without their prefix."""
    return {key[len(prefix):]: value for key, value in result.items() if key.startswith(prefix)}


def weights(result: dict[str, np.ndarray]) -> list[np.ndarray]:
    count = len([key for key in result if key.startswith("weight/")])
    assert count == 17  # embedding 1, attention 8, feed-forward 6, head 2
    return [result[f"weight/{index}"] for index in range(count)]


def check_weights(result: dict[str, np.ndarray], reference: dict[str, np.ndarray], atol: float) -> None:
    for index, (left, right) in enumerate(zip(weights(result), weights(reference))):
        np.testing.assert_allclose(left, right, rtol=0, atol=atol, err_msg=f"weight {index}")


def metric_names(result: dict[str, np.ndarray]) -> list[str]:
    return sorted(key for key in result if key.startswith(("train/", "eval/")))


def check_metrics(result: dict[str, np.ndarray], reference: dict[str, np.ndarray]) -> None:
    assert metric_names(result) == metric_names(reference)
    for key in metric_names(reference):
        # shares of groups: equal up to float32 rounding, unless an argmax flips (1 / 1024 at least)
        assert float(result[key]) == pytest.approx(float(reference[key]), abs=1e-6), key
    # the comparison means something: the metrics are neither 0 nor 1
    assert all(0.0 < float(reference[key]) < 1.0 for key in metric_names(reference))


@pytest.mark.slow
def test_multi_worker_training_equals_one_process(tmp_path):
    ports = ",".join(str(port) for port in free_ports(2))
    common = ["--steps", str(STEPS)]
    results = run_workers(
        {
            "worker0": ["--task-index", "0", "--num-workers", "2", "--ports", ports, *common],
            "worker1": ["--task-index", "1", "--num-workers", "2", "--ports", ports, *common],
            "single": ["--num-workers", "1", *common],
        },
        tmp_path,
    )
    single = results["single"]
    assert single["loss"].shape == (STEPS,) and np.all(np.diff(single["loss"]) < 0)  # it learns
    assert metric_names(single) == [f"{stage}/{name}" for stage in ("eval", "train") for name in sorted(METRICS)]
    # the workers apply the same all-reduced gradients: identical weights (measured: 0.0)
    for left, right in zip(weights(results["worker0"]), weights(results["worker1"])):
        np.testing.assert_array_equal(left, right)
    # against one process only the summation order differs (measured: 4.5e-08 at most after 4 SGD steps)
    check_weights(results["worker0"], single, atol=1e-5)
    for name in ("worker0", "worker1"):
        np.testing.assert_allclose(results[name]["loss"], single["loss"], rtol=1e-6)
        check_metrics(results[name], single)


@pytest.mark.slow
def test_mirrored_fit_on_two_logical_cpus_equals_one_device(tmp_path):
    results = run_workers({"fit": ["--mode", "fit", "--steps", str(STEPS)]}, tmp_path)["fit"]
    single, mirrored = strip(results, "single/"), strip(results, "mirrored/")
    assert int(single["replicas"]) == 1 and int(mirrored["replicas"]) == 2
    # Keras fit takes the one-hot metric in a second evaluate only (one target per output)
    assert metric_names(single) == [f"eval/{name}" for name in sorted(METRICS)] + [f"train/{name}" for name in sorted(METRICS[:3])]
    # measured: 3.0e-08 at most after 4 SGD steps
    check_weights(mirrored, single, atol=1e-5)
    np.testing.assert_allclose(mirrored["loss"], single["loss"], rtol=1e-6)
    check_metrics(mirrored, single)

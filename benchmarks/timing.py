"""Shared timing helpers for the benchmark scripts.

Rules every script follows (see ``../README.md`` / "Performance"):
- warm-up calls (tracing, XLA compilation) run before and apart from the timed
  calls, and their cost is reported separately as ``compile_s``;
- each timed call ends with ``.numpy()`` (``block``) before the clock is read;
- the figure is the median of repeats, and it is only ever read as a ratio
  against an alternative measured in the same process, or as a share of the
  machine's own limits measured in the same run (``copy_bandwidth``,
  ``matmul_throughput``).
"""

from __future__ import annotations

import functools
import importlib
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np


TINY_VARIABLE = "MLABLE_BENCH_TINY"


def tiny() -> bool:
    """Whether the smoke-test mode is on (``MLABLE_BENCH_TINY=1``): tiny shapes, one repeat.

    Read at call time (inside each module's ``run``), so that a test can set the
    variable after the modules are imported.
    """
    return os.environ.get(TINY_VARIABLE) == "1"


@functools.lru_cache(maxsize=None)
def optional(module: str) -> Any:
    """Imports an optional dependency (``keras_hub``, ``matplotlib``), or returns ``None`` with a message.

    The comparisons against keras-hub need the ``bench`` extra; without it every
    benchmark still runs and reports our time with no alternative.
    """
    try:
        return importlib.import_module(module)
    except ImportError as error:
        print(
            f"note: {module} is not installed ({error}); its comparisons are skipped "
            f"(install the bench extra: pip install -e '.[bench]')",
            file=sys.stderr,
        )
        return None


def block(value: Any) -> Any:
    """Forces every tensor in ``value`` to be computed (``.numpy()``) and returns it."""
    if isinstance(value, (tuple, list)):
        return [block(item) for item in value]
    if isinstance(value, dict):
        return {key: block(item) for key, item in value.items()}
    return value.numpy() if hasattr(value, "numpy") else value


@dataclass
class Timing:
    """Median seconds per call over ``repeats`` timed calls, and the warm-up cost."""

    median_s: float
    min_s: float
    repeats: int
    compile_s: float
    samples: list[float] = field(default_factory=list, repr=False)


def measure(fn: Callable[[], Any], repeats: int = 10, warmup: int = 2, number: int = 1) -> Timing:
    """Times ``fn()``: ``warmup`` untimed calls, then the median of ``repeats`` timed batches.

    Args:
        fn: a function without arguments; its result is blocked on before the clock stops.
        repeats: timed batches.
        warmup: untimed calls first; the first one's duration is reported as compile time.
        number: calls per timed batch (for very short calls); the result is per call.
    """
    compile_s = 0.0
    for index in range(max(warmup, 1)):
        start = time.perf_counter()
        block(fn())
        if index == 0:
            compile_s = time.perf_counter() - start
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(number):
            result = fn()
        block(result)
        samples.append((time.perf_counter() - start) / number)
    return Timing(statistics.median(samples), min(samples), repeats, compile_s, samples)


def compare(ours: Callable[[], Any], reference: Callable[[], Any], repeats: int = 10, warmup: int = 2, rounds: int = 3) -> tuple[Timing, Timing]:
    """Times two functions interleaved in ``rounds``, so that machine drift hits both alike.

    Returns:
        ``(ours, reference)`` timings, each the median over every round's samples.
    """
    per_round = max(1, repeats // rounds)
    ours_all: list[Timing] = []
    reference_all: list[Timing] = []
    for index in range(rounds):
        ours_all.append(measure(ours, per_round, warmup if index == 0 else 1))
        reference_all.append(measure(reference, per_round, warmup if index == 0 else 1))

    def merge(timings: list[Timing]) -> Timing:
        samples = [sample for timing in timings for sample in timing.samples]
        return Timing(statistics.median(samples), min(samples), len(samples), timings[0].compile_s, samples)

    return merge(ours_all), merge(reference_all)


def copy_bandwidth(megabytes: int | None = None, repeats: int = 7) -> float:
    """The machine's copy bandwidth in bytes per second (bytes read + bytes written), with numpy.

    ``megabytes`` defaults to 256 (16 in the tiny mode); measured once per size and process.
    """
    return _copy_bandwidth((16 if tiny() else 256) if megabytes is None else megabytes, repeats)


@functools.lru_cache(maxsize=None)
def _copy_bandwidth(megabytes: int, repeats: int) -> float:
    source = np.ones(megabytes * 2**20 // 4, dtype=np.float32)
    target = np.empty_like(source)
    np.copyto(target, source)
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        np.copyto(target, source)
        samples.append(time.perf_counter() - start)
    return 2 * source.nbytes / statistics.median(samples)


def matmul_throughput(size: int | None = None, repeats: int = 5) -> float:
    """The machine's float32 matmul throughput in FLOP/s, with TensorFlow in graph mode.

    ``size`` (of the square matrices) defaults to 1024 (128 in the tiny mode); measured once per size and process.
    """
    return _matmul_throughput((128 if tiny() else 1024) if size is None else size, repeats)


@functools.lru_cache(maxsize=None)
def _matmul_throughput(size: int, repeats: int) -> float:
    import tensorflow as tf

    a = tf.random.normal((size, size))
    b = tf.random.normal((size, size))
    matmul = tf.function(lambda: tf.matmul(a, b))
    timing = measure(matmul, repeats=repeats, warmup=2)
    return 2 * size**3 / timing.median_s


@dataclass
class Row:
    """One line of the benchmark table."""

    benchmark: str
    op: str
    shape: str
    dtype: str
    mode: str
    ours_ms: float
    reference: str
    reference_ms: float | None
    ratio: float | None
    goal: str = ""
    bytes_moved: int | None = None
    bandwidth_share: float | None = None
    flops: int | None = None
    flops_share: float | None = None
    compile_s: float | None = None
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def row(
    benchmark: str,
    op: str,
    shape: str,
    dtype: str,
    mode: str,
    ours: Timing,
    reference_name: str = "",
    reference: Timing | None = None,
    goal: str = "",
    bytes_moved: int | None = None,
    flops: int | None = None,
    note: str = "",
    extra: dict[str, Any] | None = None,
) -> Row:
    """Builds a ``Row``: the ratio is ours / reference (below 1 means we are faster).

    ``bytes_moved`` (bytes read + written per call) and ``flops`` (per call) give
    the shares of the machine's copy bandwidth and matmul throughput; ``extra``
    holds structured fields for the plots (e.g. ``{"filled": 512}``).
    """
    share = None if bytes_moved is None else bytes_moved / ours.median_s / copy_bandwidth()
    flops_share = None if flops is None else flops / ours.median_s / matmul_throughput()
    return Row(
        benchmark=benchmark,
        op=op,
        shape=shape,
        dtype=dtype,
        mode=mode,
        ours_ms=ours.median_s * 1e3,
        reference=reference_name,
        reference_ms=None if reference is None else reference.median_s * 1e3,
        ratio=None if reference is None else ours.median_s / reference.median_s,
        goal=goal,
        bytes_moved=bytes_moved,
        bandwidth_share=share,
        flops=flops,
        flops_share=flops_share,
        compile_s=ours.compile_s,
        note=note,
        extra=dict(extra or {}),
    )


def markdown_table(rows: list[Row]) -> str:
    """The rows as one markdown table."""

    def fmt(value: float | None, digits: int = 3) -> str:
        return "" if value is None else f"{value:.{digits}g}"

    lines = [
        "| benchmark | op | shape | dtype | mode | ours (ms) | alternative | alt. (ms) | ours / alt. | goal | share of copy bw | share of matmul | note |",
        "|---|---|---|---|---|---:|---|---:|---:|---|---:|---:|---|",
    ]
    for item in rows:
        lines.append(
            f"| {item.benchmark} | {item.op} | {item.shape} | {item.dtype} | {item.mode} | {fmt(item.ours_ms)} | "
            f"{item.reference} | {fmt(item.reference_ms)} | {fmt(item.ratio)} | {item.goal} | "
            f"{'' if item.bandwidth_share is None else f'{item.bandwidth_share:.0%}'} | "
            f"{'' if item.flops_share is None else f'{item.flops_share:.0%}'} | {item.note} |"
        )
    return "\n".join(lines)

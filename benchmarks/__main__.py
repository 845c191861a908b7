"""Runs every ``benchmarks/bench_*.py`` and prints one markdown table; writes JSON and a PNG.

Usage:
    python -m benchmarks [--quick] [--only NAME ...] [--output DIR]

Each module's ``run(quick)`` returns rows; the table shows our median time, the
alternative's median measured in the same process, the ratio, the goal, and the
share of the machine's copy bandwidth and matmul throughput measured in the
same run. ``DIR`` (default ``benchmarks/results``) receives ``results.json``
and, when matplotlib is installed, ``results.png``: decode latency against the
filled cache length (ours and keras-hub) and the effective bandwidth of the
elementwise ops against the copy bandwidth.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import pkgutil
import platform
import sys
import time
from typing import Any

import benchmarks
from benchmarks import timing

ELEMENTWISE = ("rotary", "reshaping", "embedding")  # the ops whose bandwidth the plot compares with the copy


def discover() -> list[str]:
    """The names of the benchmark modules, ``bench_*``, sorted."""
    return sorted(info.name for info in pkgutil.iter_modules(benchmarks.__path__) if info.name.startswith("bench_"))


def machine_info() -> dict[str, Any]:
    """The machine, and its limits measured now: copy bandwidth and matmul throughput."""
    import tensorflow as tf

    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "python": sys.version.split()[0],
        "tensorflow": tf.__version__,
        "copy_bandwidth_GBps": timing.copy_bandwidth() / 1e9,
        "matmul_GFLOPs": timing.matmul_throughput() / 1e9,
    }


def plot(rows: list[dict[str, Any]], machine: dict[str, Any], path: str) -> str | None:
    """Writes the PNG; returns its path, or ``None`` (with a message) when matplotlib is missing."""
    matplotlib = timing.optional("matplotlib")
    if matplotlib is None:
        print("note: no PNG written (matplotlib is missing)", file=sys.stderr)
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(14, 5.5))
    decode = [item for item in rows if item["benchmark"] == "attention" and "filled" in item["extra"]]
    references_drawn = set()
    for mode in sorted({item["mode"] for item in decode}):
        points = sorted((item["extra"]["filled"], item["ours_ms"], item["reference_ms"]) for item in decode if item["mode"] == mode)
        reference = sorted({item["reference"] for item in decode if item["mode"] == mode and item["reference"]})
        (line,) = left.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=f"mlable, {mode}")
        # the per-call rows of both modes share one keras-hub reference: draw it once
        if reference and reference[0] not in references_drawn and all(p[2] is not None for p in points):
            references_drawn.add(reference[0])
            left.plot([p[0] for p in points], [p[2] for p in points], marker="x", linestyle="--", color=line.get_color(), label=reference[0] if "(" in reference[0] else f"{reference[0]}, {mode}")
    left.set(title="one cached attention step (decode latency)", xlabel="filled cache slots", ylabel="ms per token", xscale="log", yscale="log")
    left.grid(alpha=0.3, which="both")
    if decode:
        left.legend(fontsize=7)
    else:
        left.text(0.5, 0.5, "no attention rows in this run", ha="center", transform=left.transAxes)

    elementwise = [item for item in rows if item["benchmark"] in ELEMENTWISE and item["bytes_moved"]]
    labels = [f"{item['benchmark']}: {item['op']}\n{item['shape']} [{item['mode']}]" for item in elementwise]
    bandwidth = [item["bytes_moved"] / (item["ours_ms"] / 1e3) / 1e9 for item in elementwise]
    colors = ["tab:gray" if "floor" in item["op"] else "tab:blue" for item in elementwise]  # context rows in grey
    right.barh(range(len(bandwidth)), bandwidth, color=colors)
    right.axvline(machine["copy_bandwidth_GBps"], color="tab:red", linestyle="--", label=f"copy bandwidth {machine['copy_bandwidth_GBps']:.1f} GB/s")
    right.set_yticks(range(len(labels)), labels, fontsize=6)
    right.invert_yaxis()
    right.set(title="effective bandwidth of the elementwise ops", xlabel="GB/s (bytes read + written / time)")
    right.legend(fontsize=7)
    right.grid(alpha=0.3, axis="x")
    figure.suptitle(f"mlable benchmarks: {machine['cpus']} CPUs, TF {machine['tensorflow']}", fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer sizes and repeats (under 3 minutes on 2 cores)")
    parser.add_argument("--only", nargs="*", default=None, help="module names, e.g. bench_reshaping (or reshaping)")
    parser.add_argument("--output", default=os.path.join("benchmarks", "results"), help="folder for results.json and results.png")
    args = parser.parse_args(argv)
    available = discover()
    names = [name if name.startswith("bench_") else f"bench_{name}" for name in (args.only or available)]
    unknown = [name for name in names if name not in available]
    if unknown:
        parser.error(f"unknown benchmark(s) {unknown}; available: {available}")
    started = time.time()
    machine = machine_info()
    rows: list[timing.Row] = []
    for name in names:
        module = importlib.import_module(f"benchmarks.{name}")
        start = time.time()
        rows.extend(module.run(quick=args.quick))
        print(f"# {name}: {time.time() - start:.1f} s", file=sys.stderr)
    print(
        f"Machine: {machine['cpus']} CPUs, {machine['processor']}, TF {machine['tensorflow']}; copy bandwidth "
        f"{machine['copy_bandwidth_GBps']:.1f} GB/s, matmul {machine['matmul_GFLOPs']:.0f} GFLOP/s\n"
    )
    print(timing.markdown_table(rows))
    os.makedirs(args.output, exist_ok=True)
    records = [item.as_dict() for item in rows]
    path = os.path.join(args.output, "results.json")
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(
            {"machine": machine, "quick": args.quick, "tiny": timing.tiny(), "seconds": time.time() - started, "rows": records},
            handle,
            indent=1,
        )
    image = plot(records, machine, os.path.join(args.output, "results.png"))
    print(f"\nresults: {path}" + ("" if image is None else f", {image}") + f" ({time.time() - started:.0f} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

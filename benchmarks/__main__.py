"""Runs every ``benchmarks/bench_*.py`` and prints one markdown table; writes JSON.

Usage:
    python -m benchmarks [--quick] [--only NAME ...] [--output DIR]

Each module's ``run(quick)`` returns rows; the table shows our median time, the
alternative's median measured in the same process, the ratio, and the share of
the machine's copy bandwidth and matmul throughput measured in the same run.
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

import benchmarks
from benchmarks import timing


def discover() -> list[str]:
    return sorted(info.name for info in pkgutil.iter_modules(benchmarks.__path__) if info.name.startswith("bench_"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer sizes and repeats")
    parser.add_argument("--only", nargs="*", default=None, help="module names, e.g. bench_reshaping")
    parser.add_argument("--output", default=os.path.join("benchmarks", "results"), help="folder for results.json")
    args = parser.parse_args(argv)
    names = args.only or discover()
    started = time.time()
    machine = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "python": sys.version.split()[0],
        "copy_bandwidth_GBps": timing.copy_bandwidth() / 1e9,
        "matmul_GFLOPs": timing.matmul_throughput() / 1e9,
    }
    import tensorflow as tf

    machine["tensorflow"] = tf.__version__
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
    path = os.path.join(args.output, "results.json")
    with open(path, "w", encoding="utf-8") as handle:
        json.dump({"machine": machine, "quick": args.quick, "seconds": time.time() - started, "rows": [item.as_dict() for item in rows]}, handle, indent=1)
    print(f"\nresults: {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

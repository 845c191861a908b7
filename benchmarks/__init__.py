"""Benchmarks of mlable: ratios against the alternatives, measured side by side in one run.

Run them all with ``python -m benchmarks`` (``--quick`` for a short run); each
``benchmarks/bench_*.py`` module exposes ``run(quick: bool) -> list[Row]`` and
can also be run alone (``python -m benchmarks.bench_reshaping``).
"""

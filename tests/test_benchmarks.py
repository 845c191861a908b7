"""Smoke tests of the benchmark suite: every ``benchmarks/bench_*.py`` runs in its tiny mode.

They check that each benchmark runs and emits well-formed rows (types, positive
times, ``ratio == ours / alternative``, shares present exactly when bytes or
FLOPs are given), and that the runner writes valid JSON (and a PNG when
matplotlib is installed). They never check speed. keras-hub and matplotlib are
optional (the ``bench`` extra): without them every benchmark still runs and
reports our time alone, which ``test_runs_without_keras_hub`` checks by hiding
keras-hub even where it is installed.
"""

from __future__ import annotations

import importlib
import json
import math
import sys

import pytest

from benchmarks import __main__ as runner
from benchmarks import timing

MODULES = runner.discover()
TEXT_FIELDS = ("benchmark", "op", "shape", "dtype", "mode", "reference", "goal", "note")


@pytest.fixture(autouse=True)
def tiny_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(timing.TINY_VARIABLE, "1")


def _hide(monkeypatch: pytest.MonkeyPatch, *modules: str) -> None:
    """Makes ``import module`` raise ImportError for the test, as in CI where the bench extra is absent."""
    for module in modules:
        monkeypatch.setitem(sys.modules, module, None)
    timing.optional.cache_clear()


@pytest.fixture
def restore_optional():
    yield
    timing.optional.cache_clear()


def check_rows(rows: list[timing.Row], benchmark: str) -> None:
    assert isinstance(rows, list) and rows, f"{benchmark}: no rows"
    for item in rows:
        assert isinstance(item, timing.Row)
        assert item.benchmark == benchmark
        for name in TEXT_FIELDS:
            assert isinstance(getattr(item, name), str), (benchmark, name)
        assert item.op and item.shape and item.dtype and item.mode
        assert isinstance(item.ours_ms, float) and math.isfinite(item.ours_ms) and item.ours_ms > 0, item
        if item.reference_ms is None:
            assert item.ratio is None and item.reference == "", item
        else:
            assert item.reference, item
            assert math.isfinite(item.reference_ms) and item.reference_ms > 0, item
            assert item.ratio == pytest.approx(item.ours_ms / item.reference_ms, rel=1e-9), item
        assert (item.bytes_moved is None) == (item.bandwidth_share is None), item
        assert (item.flops is None) == (item.flops_share is None), item
        for share in (item.bandwidth_share, item.flops_share):
            assert share is None or (math.isfinite(share) and share > 0), item
        assert isinstance(item.extra, dict)
        json.dumps(item.as_dict())  # serialisable as is


_ROWS: dict[str, list[timing.Row]] = {}


@pytest.mark.parametrize("name", MODULES)
def test_benchmark_module_runs(name: str, restore_optional) -> None:
    module = importlib.import_module(f"benchmarks.{name}")
    rows = module.run(quick=True)
    check_rows(rows, name.removeprefix("bench_"))
    _ROWS[name] = rows
    if name == "bench_attention":
        assert all(isinstance(item.extra.get("filled"), int) for item in rows)
        assert {item.mode for item in rows} >= {"xla loop (marginal)", "graph per call", "xla per call"}
    if name == "bench_generation":
        assert rows[0].extra["tokens_per_second"] > 0
    if name in ("bench_rotary", "bench_embedding", "bench_attention", "bench_metrics", "bench_patching"):
        assert any(item.bandwidth_share is not None for item in rows), "these rows carry the bytes they move"
    if name == "bench_feedforward":
        assert all(item.flops_share is not None for item in rows), "the feed-forward rows carry their FLOPs"
    if name == "bench_serving":
        assert all(item.extra["buffer_reused"] for item in rows), "the variable cache was copied during the timed calls"
    if name == "bench_chunked":
        for item in rows:  # memory measured in fresh processes, for both kernels where plain runs
            assert item.extra["peak_bytes"] > 0 and item.extra["memory_method"], item
            if item.reference_ms is not None:
                assert item.extra["memory_ratio"] == pytest.approx(item.extra["peak_bytes"] / item.extra["plain_peak_bytes"]), item


def test_every_module_is_covered() -> None:
    expected = {"attention", "chunked", "embedding", "feedforward", "generation", "hilbert", "metrics", "patching", "reshaping", "rotary", "sampling", "serving"}
    assert {name.removeprefix("bench_") for name in MODULES} >= expected


@pytest.mark.parametrize("name", ["bench_rotary", "bench_attention", "bench_generation", "bench_serving"])
def test_runs_without_keras_hub(name: str, monkeypatch: pytest.MonkeyPatch, restore_optional, capsys) -> None:
    _hide(monkeypatch, "keras_hub")
    rows = importlib.import_module(f"benchmarks.{name}").run(quick=True)
    check_rows(rows, name.removeprefix("bench_"))
    # no keras-hub figure; a row may still compare against our own layer (e.g. GQA against our MHA)
    assert all("keras" not in item.reference.lower() and (item.reference_ms is None) == (item.reference == "") for item in rows)
    assert "keras_hub is not installed" in capsys.readouterr().err


def test_runner_writes_json_and_png(tmp_path, capsys) -> None:
    assert runner.main(["--only", "reshaping", "--output", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "| reshaping | merge(2, 3) neighbours |" in out
    assert out.count("| benchmark | op |") == 1  # one table
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["tiny"] is True and data["machine"]["copy_bandwidth_GBps"] > 0 and data["machine"]["matmul_GFLOPs"] > 0
    assert data["rows"] and all(set(item) >= {"op", "ours_ms", "reference_ms", "ratio", "extra"} for item in data["rows"])
    png = tmp_path / "results.png"
    if timing.optional("matplotlib") is None:
        assert not png.exists()
    else:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_of_attention_and_elementwise_rows(tmp_path, restore_optional) -> None:
    if timing.optional("matplotlib") is None:
        pytest.skip("matplotlib is not installed (the bench or plot extra): no PNG to check")
    rows = _ROWS.get("bench_attention") or importlib.import_module("benchmarks.bench_attention").run(quick=True)
    rows = rows + (_ROWS.get("bench_rotary") or importlib.import_module("benchmarks.bench_rotary").run(quick=True))
    machine = {"cpus": 2, "tensorflow": "x", "copy_bandwidth_GBps": 10.0}
    path = runner.plot([item.as_dict() for item in rows], machine, str(tmp_path / "plot.png"))
    assert path is not None and (tmp_path / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_runner_without_matplotlib(tmp_path, monkeypatch: pytest.MonkeyPatch, restore_optional, capsys) -> None:
    _hide(monkeypatch, "matplotlib")
    assert runner.main(["--only", "bench_reshaping", "--output", str(tmp_path)]) == 0
    assert (tmp_path / "results.json").exists() and not (tmp_path / "results.png").exists()
    assert "no PNG written (matplotlib is missing)" in capsys.readouterr().err


def test_runner_rejects_unknown_names(tmp_path) -> None:
    with pytest.raises(SystemExit):
        runner.main(["--only", "nope", "--output", str(tmp_path)])

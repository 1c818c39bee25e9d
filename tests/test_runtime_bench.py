"""pyfundus bench: well-formed rows from a real (tiny) run, speed-ups, the quick default sweep."""

from __future__ import annotations

import json

import pytest
import torch
from export_helpers import cli_fp32_export, default_model, export_cache, export_extra

from pyfundus.cli import main
from pyfundus.runtime_bench import ROW_KEYS, _add_speedups, format_table
from pyfundus.weights import InputSpec

export_extra("onnxruntime")  # the bench runs the onnxruntime backend


@pytest.fixture(scope="module")
def onnx_cached(tmp_path_factory):
    with export_cache(tmp_path_factory):
        yield cli_fp32_export(default_model(), tmp_path_factory)


def test_bench_json_rows_are_complete_and_measured(onnx_cached, capsys):
    argv = ["bench", "--json", "--backends", "torch", "onnxruntime", "--precisions", "fp32",
            "--batch", "1", "2", "--iters", "3", "--warmup", "1", "--time-box", "1"]  # fmt: skip
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["header"]["versions"]["torch"] and report["header"]["cores"] >= 1
    isas = report["header"]["cpu_instructions"]
    assert set(isas) == {"torch", "pyfundus window_attention", "pyfundus softpool"}
    assert isas["pyfundus window_attention"] in {"avx512", "avx2", "baseline"}
    rows = report["rows"]
    seen = {(r["backend"], r["batch"], r["mode"]) for r in rows}
    assert seen == {
        (backend, batch, mode)
        for backend in ("torch", "onnxruntime")
        for batch, mode in ((1, "model"), (2, "model"), (1, "end-to-end"))
    }
    for row in rows:
        assert set(ROW_KEYS) <= set(row), row
        assert row["precision"] == "fp32" and row["device"] == "cpu" and row["iters"] == 3
        assert 0 < row["p50_ms"] <= row["p95_ms"] <= row["p99_ms"]
        assert row["images_per_s"] > 0 and row["peak_mem_mb"] > 0
        assert row["first_call_ms"] > 0  # the warm-up call, timed apart
        assert row["vs_torch_fp32"] > 0
        # images/s and latency come from the same timed calls
        assert row["images_per_s"] == pytest.approx(row["batch"] * 1000 / row["mean_ms"], rel=0.02)
        if row["mode"] == "end-to-end":  # where the time goes, from the results' own timings
            assert row["read_ms"] > 0 and row["preprocess_ms"] > 0 and 0 < row["model_ms"] < row["p99_ms"]
        else:
            assert "read_ms" not in row
    for row in rows:
        if row["backend"] == "torch":
            assert row["vs_torch_fp32"] == 1.0


def test_speedups_are_against_torch_fp32_of_the_same_batch_and_mode():
    rows = [
        {"backend": "torch", "precision": "fp32", "device": "cpu", "batch": 1, "mode": "model", "p50_ms": 100.0},
        {"backend": "onnxruntime", "precision": "fp32", "device": "cpu", "batch": 1, "mode": "model", "p50_ms": 40.0},
        {"backend": "onnxruntime", "precision": "fp32", "device": "cpu", "batch": 8, "mode": "model", "p50_ms": 300.0},
        {"backend": "tensorrt", "precision": "fp16", "device": "cpu", "mode": "model", "error": "TensorRTUnavailable: x"},
    ]
    _add_speedups(rows)
    assert rows[0]["vs_torch_fp32"] == 1.0
    assert rows[1]["vs_torch_fp32"] == 2.5
    assert rows[2]["vs_torch_fp32"] is None  # no torch fp32 row at batch 8 in this run
    table = format_table(rows)
    assert "2.50x" in table and "skipped: TensorRTUnavailable: x" in table


def test_unavailable_backend_becomes_a_skipped_row(monkeypatch):
    from pyfundus import runtime_bench as bench
    from pyfundus.export import runtimes

    def missing():
        raise ImportError("no onnxruntime here")

    monkeypatch.setattr(runtimes, "_import_onnxruntime", missing)
    rows = bench.run_bench(backends=["onnxruntime"], precisions=["fp32"], batches=(1,), end_to_end=False, log=lambda m: None)
    assert rows == [{"backend": "onnxruntime", "precision": "fp32", "device": "cpu", "mode": "model",
                     "error": "ImportError: no onnxruntime here"}]  # fmt: skip


def test_the_default_sweep_is_quick_and_says_how_far_it_is(monkeypatch):
    """No options: batch 1, short rows, only the variants that make sense on this machine; a progress line
    per step with the step number, the total and the time left. (Its speed is measured in benchmarks,
    not here: this checks what it times and what it says.)"""
    from pyfundus import runtime_bench as bench
    from pyfundus.export import runtimes

    timed = []

    def fake_time(call, batch, sweep, device):
        timed.append((batch, sweep.time_box, sweep.iters))
        return {"p50_ms": 10.0, "p95_ms": 11.0, "p99_ms": 12.0, "mean_ms": 10.0, "images_per_s": 100.0,
                "iters": 3, "peak_mem_mb": 1.0, "first_call_ms": 20.0}  # fmt: skip

    class Loaded:  # what each variant loads: no model needed to check what is timed
        input = InputSpec()

    monkeypatch.setattr(bench, "_load", lambda model, variant, device, threads: Loaded())
    monkeypatch.setattr(bench, "_model_input", lambda jpeg, model: torch.zeros(3, 384, 384))
    monkeypatch.setattr(bench, "_time", fake_time)
    monkeypatch.setattr(bench, "_stage_medians", lambda stages: {})
    for native_bf16 in (False, True):
        monkeypatch.setattr(runtimes, "cpu_has_native_bf16", lambda: native_bf16)
        lines: list[str] = []
        timed.clear()
        rows = bench.run_bench(enhance=False, log=lines.append)  # the enhance row: test_enhance.py
        variants = {(r["backend"], r["precision"]) for r in rows}
        expected = {("torch", "fp32"), ("onnxruntime", "fp32")} | ({("torch", "bf16")} if native_bf16 else set())
        assert variants == expected  # never torch.compile, never emulated bf16
        assert {r["batch"] for r in rows} == {1} and {r["mode"] for r in rows} == {"model", "end-to-end"}
        assert timed and all(t == (1, bench.QUICK.time_box, bench.QUICK.iters) for t in timed)
        steps = [line for line in lines if "timing" in line]
        assert len(steps) == 2 * len(expected)
        assert steps[0].startswith(f"[1/{len(steps)},") and steps[-1].startswith(f"[{len(steps)}/{len(steps)},")
        assert "s left]" in steps[-1] and lines[-1].startswith(f"[{len(steps)}/{len(steps)},")
    full = {(v.backend, v.precision) for v in bench.variants(torch.device("cpu"))}
    assert ("torch.compile", "fp32") in full and bench.FULL.batches == (1, 8, 32)

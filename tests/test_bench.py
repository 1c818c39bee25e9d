"""pyfundus bench: well-formed rows from a real (tiny) run, speed-ups, and the --daemon hook."""

from __future__ import annotations

import json
import sys

import pytest
from export_helpers import cli_fp32_export, default_model, export_cache, export_extra

from pyfundus.bench import ROW_KEYS, _add_speedups, format_table
from pyfundus.cli import main

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
    from pyfundus import bench
    from pyfundus.export import runtimes

    def missing():
        raise ImportError("no onnxruntime here")

    monkeypatch.setattr(runtimes, "_import_onnxruntime", missing)
    rows = bench.run_bench(backends=["onnxruntime"], precisions=["fp32"], batches=(1,), end_to_end=False, log=lambda m: None)
    assert rows == [{"backend": "onnxruntime", "precision": "fp32", "device": "cpu", "mode": "model",
                     "error": "ImportError: no onnxruntime here"}]  # fmt: skip


def test_daemon_flag_without_the_daemon_bench_is_a_clear_error(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "pyfundus.daemon.bench", None)  # as if the module were absent
    monkeypatch.setattr("pyfundus.bench.run_bench", lambda *a, **k: [])
    assert main(["bench", "--daemon", "--json"]) == 2
    assert "--daemon needs pyfundus.daemon.bench.run_daemon_bench" in capsys.readouterr().err

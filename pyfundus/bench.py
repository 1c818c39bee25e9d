"""``pyfundus bench``: latency and throughput of every runtime backend, model-only and end-to-end.

For each backend variant available here (torch eager fp32 and bf16 autocast, torch.compile,
ONNX Runtime fp32/fp16, and on CUDA torch fp16/bf16, CUDA graphs, TensorRT) and each batch
size, a few warm-up calls and then timed calls of ``QualityModel.predict`` (the model and
the runtime, preprocessing excluded) until ``iters`` calls or the time box is used up.
The end-to-end row times ``QualityModel.score`` on a 2304x1728 JPEG on disk at batch 1:
read, decode, field-of-view crop, resize, normalise, the model, grading: the daemon's path.

Rows carry p50/p95/p99 latency per call, images/s, peak memory (resident set size on CPU,
reset per row through /proc/self/clear_refs; ``torch.cuda.max_memory_allocated`` on CUDA,
which does not see ONNX Runtime's or TensorRT's own allocations), the speed-up over
torch eager fp32 measured in the same run, and ``first_call_ms``: the first warm-up call, where
one-off costs land (for torch.compile, compiling for that batch size).
"""

from __future__ import annotations

import datetime
import os
import platform
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import __version__
from .ops._ext import cpu_kernels

ROW_KEYS = ("backend", "precision", "device", "batch", "mode", "p50_ms", "p95_ms", "p99_ms", "images_per_s")
DEFAULT_BATCHES = (1, 8, 32)
MIN_ITERS = 3  # below this p95/p99 mean nothing; the time box never cuts a row shorter


@dataclass(frozen=True)
class Variant:
    backend: str  # torch, torch.compile, torch+graphs, onnxruntime, tensorrt
    precision: str


def variants(device: torch.device) -> list[Variant]:
    """Every backend variant worth timing on ``device`` (availability is checked when loading)."""
    if device.type == "cuda":
        return [
            Variant("torch", "fp32"), Variant("torch", "fp16"), Variant("torch", "bf16"),
            Variant("torch+graphs", "fp16"), Variant("torch.compile", "fp16"),
            Variant("onnxruntime", "fp32"), Variant("onnxruntime", "fp16"), Variant("tensorrt", "fp16"),
        ]  # fmt: skip
    return [
        Variant("torch", "fp32"), Variant("torch", "bf16"), Variant("torch.compile", "fp32"),
        Variant("torch.compile", "bf16"), Variant("onnxruntime", "fp32"), Variant("onnxruntime", "fp16"),
    ]  # fmt: skip


def run_bench(
    model: str | None = None,
    *,
    device: str = "cpu",
    backends: list[str] | None = None,
    precisions: list[str] | None = None,
    batches: tuple[int, ...] = DEFAULT_BATCHES,
    iters: int = 50,
    warmup: int = 2,
    time_box: float = 20.0,
    end_to_end: bool = True,
    threads: int | None = None,
    log=None,
) -> list[dict[str, Any]]:
    """Time each variant; returns one dict per (variant, batch, mode), skipped variants with ``error`` set."""
    from .api import UntrainedModelWarning, _resolve_device

    log = log or (lambda message: print(f"bench: {message}", file=sys.stderr, flush=True))
    torch_device = _resolve_device(device)
    chosen = [
        v for v in variants(torch_device)
        if (not backends or v.backend in backends) and (not precisions or v.precision in precisions)
    ]  # fmt: skip
    rows: list[dict[str, Any]] = []
    with warnings.catch_warnings(), tempfile.TemporaryDirectory(prefix="pyfundus-bench-") as workspace:
        warnings.simplefilter("ignore", UntrainedModelWarning)
        jpeg = _capture_jpeg(Path(workspace)) if end_to_end else None
        sample = _model_input(jpeg) if jpeg else torch.randn(3, 384, 384)
        for variant in chosen:
            common = {"backend": variant.backend, "precision": variant.precision, "device": str(torch_device)}
            try:
                quality = _load(model, variant, torch_device, threads)
            except Exception as exc:  # not installed, not supported here: a row that says so
                log(f"{variant.backend} {variant.precision}: skipped ({exc})")
                rows.append({**common, "mode": "model", "error": f"{type(exc).__name__}: {exc}"})
                continue
            for batch in batches:
                inputs = sample.unsqueeze(0).expand(batch, -1, -1, -1).contiguous()
                log(f"{variant.backend} {variant.precision} batch {batch}: timing the model")
                stats = _time(lambda: quality.predict(inputs), batch, iters, warmup, time_box, torch_device)
                rows.append({**common, "batch": batch, "mode": "model", **stats})
            if jpeg:
                log(f"{variant.backend} {variant.precision}: timing end to end from a 2304x1728 JPEG")
                stages: list[dict[str, float]] = []
                stats = _time(
                    lambda: stages.append(quality.score([str(jpeg)], batch_size=1)[0].timing_ms),
                    1, iters, warmup, time_box, torch_device,
                )  # fmt: skip
                rows.append({**common, "batch": 1, "mode": "end-to-end", **stats, **_stage_medians(stages[warmup:])})
            quality = None  # free this runtime before the next one loads
    _add_speedups(rows)
    return rows


def header(model: str | None, device: str, threads: int | None) -> dict[str, Any]:
    """Machine and versions, so a table is never read without its context."""
    versions = {"python": platform.python_version(), "torch": torch.__version__, "pyfundus": __version__}
    for package in ("onnxruntime", "onnx", "tensorrt"):
        try:
            versions[package] = __import__(package).__version__
        except ImportError:
            versions[package] = "not installed"
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(["pyfundus", *sys.argv[1:]]) if sys.argv else "",
        "machine": platform.node(),
        "cpu": _cpu_name(),
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": threads or torch.get_num_threads(),
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        # Which vector instructions each side's CPU kernels use: capped to AVX2, a 2-core AVX-512 Xeon
        # ran FTHNet-S 1.3x slower (benchmarks/RESULTS.md), so a table must say.
        "cpu_instructions": cpu_instructions(),
        "model": model or "fthnet_s",
        "device": device,
        "versions": versions,
    }


def format_table(rows: list[dict[str, Any]]) -> str:
    columns = ("backend", "precision", "device", "mode", "batch", "p50_ms", "p95_ms", "p99_ms", "images_per_s",
               "peak_mem_mb", "vs_torch_fp32", "iters", "first_call_ms", "read_ms", "preprocess_ms")  # fmt: skip
    lines = [" | ".join(columns), " | ".join("---" for _ in columns)]
    for row in rows:
        if "error" in row:
            lines.append(" | ".join([row["backend"], row["precision"], row["device"], "skipped: " + row["error"]]))
            continue
        cells = []
        for column in columns:
            value = row.get(column)
            if column == "vs_torch_fp32" and value is not None:
                value = f"{value:.2f}x"
            elif isinstance(value, float):
                value = f"{value:.1f}"
            cells.append("-" if value is None else str(value))
        lines.append(" | ".join(cells))
    return "\n".join(lines)


def _load(model: str | None, variant: Variant, device: torch.device, threads: int | None):
    from .api import load_model
    from .export.runtimes import TorchRuntime

    backend = {"torch.compile": "torch", "torch+graphs": "torch"}.get(variant.backend, variant.backend)
    quality = load_model(
        model, device, backend=backend, precision=variant.precision, threads=threads,
        compile=variant.backend == "torch.compile",
    )  # fmt: skip
    if variant.backend == "torch+graphs":
        quality.runtime = TorchRuntime(quality.network, device, variant.precision, cuda_graphs=True)
    return quality


def _time(call, batch: int, iters: int, warmup: int, time_box: float, device: torch.device) -> dict[str, Any]:
    # The first warm-up call carries the one-off costs (torch.compile compiling for this shape,
    # allocator growth, lazy initialisation): reported apart, never in the percentiles.
    first_call_ms = None
    for i in range(warmup):
        t0 = time.perf_counter()
        call()
        if i == 0:
            first_call_ms = round((time.perf_counter() - t0) * 1000.0, 1)
    _reset_peak_memory(device)
    times: list[float] = []
    started = time.perf_counter()
    while len(times) < iters and (len(times) < MIN_ITERS or time.perf_counter() - started < time_box):
        t0 = time.perf_counter()
        call()  # predict() and score() return host values: the device has finished
        times.append(time.perf_counter() - t0)
    ms = np.asarray(times) * 1000.0
    return {
        "p50_ms": round(float(np.percentile(ms, 50)), 2),
        "p95_ms": round(float(np.percentile(ms, 95)), 2),
        "p99_ms": round(float(np.percentile(ms, 99)), 2),
        "mean_ms": round(float(ms.mean()), 2),
        "images_per_s": round(batch * len(ms) / (ms.sum() / 1000.0), 2),
        "iters": len(ms),
        "peak_mem_mb": _peak_memory_mb(device),
        "first_call_ms": first_call_ms,
    }


def _stage_medians(stages: list[dict[str, float]]) -> dict[str, float]:
    """Where an end-to-end call's time goes: median read, preprocess and model ms (from ScoreResult.timing_ms)."""
    return {
        f"{stage}_ms": round(float(np.median([timing[stage] for timing in stages])), 2)
        for stage in ("read", "preprocess", "model")
    }


def _add_speedups(rows: list[dict[str, Any]]) -> None:
    """vs_torch_fp32: torch eager fp32's p50 over this row's p50 (same device, batch, mode, run)."""
    baseline = {
        (r["device"], r["batch"], r["mode"]): r["p50_ms"]
        for r in rows
        if r["backend"] == "torch" and r["precision"] == "fp32" and "error" not in r
    }
    for row in rows:
        if "error" not in row:
            reference = baseline.get((row["device"], row["batch"], row["mode"]))
            row["vs_torch_fp32"] = round(reference / row["p50_ms"], 3) if reference else None


def _capture_jpeg(folder: Path) -> Path:
    """A 2304x1728 JPEG of a synthetic fundus, framed as a camera saves it."""
    from .daemon.demo import frame_jpeg
    from .data.synth import generate_fundus

    path = folder / "capture.jpg"
    path.write_bytes(frame_jpeg(generate_fundus(0, size=768)[0]))
    return path


def _model_input(jpeg: Path) -> torch.Tensor:
    from .io import read_image
    from .preprocess import preprocess

    tensor, _ = preprocess(read_image(jpeg, min_side=384).pixels, 384)
    return torch.from_numpy(tensor)


def _reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # Linux: reset the peak RSS (VmHWM) to the current RSS
    except OSError:
        pass  # elsewhere the peak is the process's, since start


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    import resource

    scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB elsewhere
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20, 1)


def cpu_instructions() -> dict[str, str]:
    """torch's CPU capability and the variant of each pyfundus CPU kernel on this machine."""
    found = {"torch": torch.backends.cpu.get_cpu_capability().lower()}
    try:
        found.update({f"pyfundus {op}": variant for op, variant in cpu_kernels().cpu_variants().items()})
    except ImportError:
        found["pyfundus"] = "not built"
    return found


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


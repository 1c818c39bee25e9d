"""``pyfundus bench``: latency and throughput of every runtime backend, model-only and end-to-end.

Two sweeps. The quick one (the default, at most about 2 minutes on two cores) answers "how
fast is this here": batch 1, short time boxes, and only the variants that make sense on this
machine (torch fp32, ONNX Runtime fp32 when installed, bf16 only where the CPU computes it
natively; fp16 and CUDA graphs on a GPU). The full one (``full=True``, ``pyfundus bench
--full``) times every variant (torch eager fp32 and bf16 autocast, torch.compile, ONNX Runtime
fp32/fp16, and on CUDA torch fp16/bf16, CUDA graphs, TensorRT) at batches 1, 8 and 32.

Each row: a few warm-up calls and then timed calls of ``QualityModel.predict`` (the model and
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

from .ops._ext import cpu_kernels
from .version import __version__

ROW_KEYS = ("backend", "precision", "device", "batch", "mode", "p50_ms", "p95_ms", "p99_ms", "images_per_s")
MIN_ITERS = 3  # below this p95/p99 mean nothing; the time box never cuts a row shorter


@dataclass(frozen=True)
class Sweep:
    """How much to time: which batches, how many calls at most and for how long per row."""

    batches: tuple[int, ...]
    iters: int
    time_box: float
    warmup: int = 2


QUICK = Sweep(batches=(1,), iters=20, time_box=4.0)
FULL = Sweep(batches=(1, 8, 32), iters=50, time_box=20.0)


@dataclass(frozen=True)
class Variant:
    backend: str  # torch, torch.compile, torch+graphs, onnxruntime, tensorrt
    precision: str


def quick_variants(device: torch.device) -> list[Variant]:
    """The variants worth a first look on ``device``: no compiling, no emulated precisions."""
    from .export.runtimes import cpu_has_native_bf16

    if device.type == "cuda":
        return [Variant("torch", "fp32"), Variant("torch", "fp16"), Variant("torch+graphs", "fp16"),
                Variant("tensorrt", "fp16")]  # fmt: skip
    # bf16 without native instructions is emulated: several times slower than fp32, not worth timing.
    bf16 = [Variant("torch", "bf16")] if cpu_has_native_bf16() else []
    return [Variant("torch", "fp32"), *bf16, Variant("onnxruntime", "fp32")]


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
    full: bool = False,
    backends: list[str] | None = None,
    precisions: list[str] | None = None,
    batches: tuple[int, ...] | None = None,
    iters: int | None = None,
    warmup: int | None = None,
    time_box: float | None = None,
    end_to_end: bool = True,
    enhance: bool | None = None,
    threads: int | None = None,
    log=None,
) -> list[dict[str, Any]]:
    """Time each variant; returns one dict per (variant, batch, mode), skipped variants with ``error`` set.

    ``full``: every variant at batches 1, 8 and 32 with 20 s time boxes (else the quick sweep).
    The other arguments narrow or override the sweep. ``log`` gets one line per step, each with
    the step number, the total and the time left (an estimate from the steps so far).
    ``enhance``: add a row for ``pyfundus enhance`` of the 2304x1728 JPEG (read, field of view, the
    shipped enhancer at 512 px, the correction applied at full size, JPEG written); by default when
    ``backends`` does not narrow the sweep.
    """
    from .api import UntrainedModelWarning
    from .export.runtimes import resolve_device

    log = log or (lambda message: print(f"bench: {message}", file=sys.stderr, flush=True))
    sweep = FULL if full else QUICK
    sweep = Sweep(
        batches=tuple(batches or sweep.batches),
        iters=iters or sweep.iters,
        time_box=sweep.time_box if time_box is None else time_box,
        warmup=sweep.warmup if warmup is None else warmup,
    )
    torch_device = resolve_device(device)
    chosen = [
        v for v in (variants(torch_device) if full or backends else quick_variants(torch_device))
        if (not backends or v.backend in backends) and (not precisions or v.precision in precisions)
    ]  # fmt: skip
    enhance = not backends if enhance is None else enhance
    progress = _Progress(len(chosen) * (len(sweep.batches) + int(end_to_end)) + int(enhance), log)
    rows: list[dict[str, Any]] = []
    with warnings.catch_warnings(), tempfile.TemporaryDirectory(prefix="pyfundus-bench-") as workspace:
        warnings.simplefilter("ignore", UntrainedModelWarning)
        jpeg = _capture_jpeg(Path(workspace)) if end_to_end else None
        for variant in chosen:
            common = {"backend": variant.backend, "precision": variant.precision, "device": str(torch_device)}
            name = f"{variant.backend} {variant.precision}"
            progress.say(f"{name}: loading")
            try:
                quality = _load(model, variant, torch_device, threads)
            except Exception as exc:  # not installed, not supported here: a row that says so
                progress.skip(len(sweep.batches) + int(end_to_end), f"{name}: skipped ({exc})")
                rows.append({**common, "mode": "model", "error": f"{type(exc).__name__}: {exc}"})
                continue
            sample = _model_input(jpeg, quality) if jpeg else torch.randn(3, quality.input.size, quality.input.size)
            for batch in sweep.batches:
                inputs = sample.unsqueeze(0).expand(batch, -1, -1, -1).contiguous()
                progress.step(f"{name} batch {batch}: timing the model")
                stats = _time(lambda: quality.predict(inputs), batch, sweep, torch_device)
                rows.append({**common, "batch": batch, "mode": "model", **stats})
            if jpeg:
                progress.step(f"{name}: timing end to end from a 2304x1728 JPEG")
                stages: list[dict[str, float]] = []
                stats = _time(
                    lambda: stages.append(quality.score([str(jpeg)], batch_size=1)[0].timing_ms),
                    1, sweep, torch_device,
                )  # fmt: skip
                rows.append(
                    {**common, "batch": 1, "mode": "end-to-end", **stats, **_stage_medians(stages[sweep.warmup :])}
                )
            quality = None  # free this runtime before the next one loads
        if enhance:
            progress.step("enhance: timing pyfundus enhance of a 2304x1728 JPEG, written as JPEG")
            try:
                rows.append(_enhance_row(jpeg or _capture_jpeg(Path(workspace)), Path(workspace), sweep, torch_device, threads))
            except Exception as exc:  # a row that says why, as for a backend that cannot run here
                rows.append({"backend": "torch", "precision": "fp32", "device": str(torch_device), "batch": 1, "mode": "enhance",
                             "error": f"{type(exc).__name__}: {exc}"})  # fmt: skip
    progress.say(f"done in {progress.elapsed():.0f} s")
    _add_speedups(rows)
    return rows


class _Progress:
    """The overall progress line: step k of n, time so far, and an estimate of the time left."""

    def __init__(self, total: int, log) -> None:
        self.total, self.done, self.log = total, 0, log
        self.started = time.monotonic()

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def say(self, message: str) -> None:
        self.log(f"[{self.done}/{self.total}, {self.elapsed():.0f} s{self._left()}] {message}")

    def step(self, message: str) -> None:
        self.done += 1
        self.say(message)

    def skip(self, steps: int, message: str) -> None:
        self.total -= steps
        self.say(message)

    def _left(self) -> str:
        if self.done <= 1:
            return ""
        per_step = self.elapsed() / (self.done - 1)  # steps before this one are finished
        return f", about {per_step * (self.total - self.done + 1):.0f} s left"


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


def _time(call, batch: int, sweep: Sweep, device: torch.device) -> dict[str, Any]:
    # The first warm-up call carries the one-off costs (torch.compile compiling for this shape,
    # allocator growth, lazy initialisation): reported apart, never in the percentiles.
    first_call_ms = None
    iters, time_box = sweep.iters, sweep.time_box
    for i in range(sweep.warmup):
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


def _enhance_row(jpeg: Path, workspace: Path, sweep: Sweep, device: torch.device, threads: int | None) -> dict[str, Any]:
    """``pyfundus enhance`` of one capture, end to end, with the shipped enhancer in torch fp32."""
    from .api import load_enhancer

    enhancer = load_enhancer(None, device, threads=threads)
    stages: list[dict[str, float]] = []

    def run() -> None:
        (result,) = enhancer.enhance([str(jpeg)], out_dir=workspace / "enhanced")
        if result.error:
            raise RuntimeError(result.error)
        stages.append(result.timing_ms)

    stats = _time(run, 1, sweep, device)
    stages = stages[sweep.warmup :]
    return {
        "backend": "torch", "precision": "fp32", "device": str(device), "batch": 1, "mode": "enhance", **stats,
        **_stage_medians(stages, ("read", "preprocess", "model", "correction", "write")),
        "model": enhancer.name, "model_sha256": enhancer.sha256, "trained": enhancer.trained,
    }  # fmt: skip


def _stage_medians(stages: list[dict[str, float]], names=("read", "preprocess", "model")) -> dict[str, float]:
    """Where an end-to-end call's time goes: median ms of each stage (from the results' own timing_ms)."""
    return {f"{stage}_ms": round(float(np.median([timing[stage] for timing in stages])), 2) for stage in names}


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
    from .data.synth import generate_fundus
    from .io import encode_jpeg

    path = folder / "capture.jpg"
    path.write_bytes(encode_jpeg(generate_fundus(0, size=768)[0]))
    return path


def _model_input(jpeg: Path, model: Any) -> torch.Tensor:
    from .io import read_image
    from .preprocess import preprocess

    tensor, _ = preprocess(read_image(jpeg, min_side=model.input.size).pixels, model.input)
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


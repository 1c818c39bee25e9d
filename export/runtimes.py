"""Runtime backends behind ``QualityModel``: torch, ONNX Runtime and TensorRT, one calling convention.

A runtime takes a preprocessed float32 batch (B, 3, 384, 384) on any device and
returns the model's heads as a dict of tensors ({"quality": (B,), ...}), exactly
as ``FTHNet.forward_with_heads`` would. Turning ``quality`` into a 0-100 score
stays in ``QualityModel``, so every backend is graded by the same code.

``backend="auto"`` (see :func:`create_runtime`):

* CUDA: TensorRT when it is installed and a valid engine for this model and GPU
  is cached, else torch fp16;
* CPU: each candidate that runs here (torch bf16 autocast with the fused kernels
  where the CPU has native bf16 arithmetic, AVX512-BF16 or AMX; torch fp32; ONNX
  Runtime fp32 when installed) is checked against torch fp32 on a probe batch, and
  the ones that match are timed on a batch of one; the fastest wins. Which one that
  is depends on the CPU: ONNX Runtime fp32 was the fastest fp32 backend on two Zen 5
  cores and half as fast as torch on two Xeon cores (benchmarks/RESULTS.md,
  "Backends"), so auto measures instead of assuming. ``torch.compile`` is never a
  candidate: compiling takes 20-60 s per input shape.

The choice and why are kept in ``runtime.choice``.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..paths import cache_dir, safe_file_stem
from ..weights import ModelConfig
from .onnx import DEFAULT_OPSET, INPUT_NAME, convert_to_fp16, export_onnx, fingerprint, read_metadata
from .tensorrt import (
    EngineInfo,
    EngineMismatch,
    Target,
    TensorRTUnavailable,
    build_engine,
    build_plan,
    check_engine,
    import_tensorrt,
    sidecar_path,
)

log = logging.getLogger(__name__)

__all__ = [
    "BACKENDS",
    "PARITY_TOLERANCE",
    "PRECISIONS",
    "OrtRuntime",
    "Runtime",
    "TensorRTRuntime",
    "TorchRuntime",
    "cached_engine",
    "cached_onnx_path",
    "create_runtime",
    "engine_for",
    "onnx_for",
    "parity",
    "resolve_device",
]

BACKENDS = ("torch", "onnxruntime", "tensorrt", "auto")
PRECISIONS = ("fp32", "fp16", "bf16")
# Largest |score difference| to torch eager fp32 (0-100 scale, before clamping) a backend may show.
PARITY_TOLERANCE = {"fp32": 0.05, "fp16": 0.5, "bf16": 1.0}
_AUTOCAST_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}
# oneDNN's ISA caps below AVX512_CORE_BF16: bf16 matmuls are emulated under them.
_ONEDNN_ISAS_WITHOUT_BF16 = {"SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI"}


class Runtime:
    """Base class: ``backend``, ``precision``, ``device``, ``choice`` and ``__call__(batch) -> heads``."""

    backend = ""
    precision = "fp32"
    device = torch.device("cpu")
    choice = ""  # set by backend="auto": what was picked and why

    def __call__(self, batch: torch.Tensor) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def describe(self) -> str:
        return f"{self.backend} {self.precision} on {self.device}"


class TorchRuntime(Runtime):
    """torch eager (or ``torch.compile``), optionally under autocast.

    CPU: fp32 or bf16 autocast; ``compile=True`` compiles with inductor's freezing, which
    treats the weights as constants (oneDNN packs them once, the relative-position biases
    are gathered at compile time), so the network must not change afterwards. CUDA: fp32,
    fp16 or bf16 autocast (LayerNorm and softmax stay fp32 under autocast), channels-last
    weights and input for the convolutions, pinned host buffers for the upload, and
    optional CUDA graphs: one graph captured per batch size seen, replayed afterwards (the
    capture costs a few forward passes).
    """

    def __init__(
        self,
        network: torch.nn.Module,
        device: torch.device,
        precision: str | None = None,
        *,
        compile: bool = False,
        channels_last: bool | None = None,
        cuda_graphs: bool = False,
    ):
        self.device = torch.device(device)
        cuda = self.device.type == "cuda"
        self.precision = precision or ("fp16" if cuda else "fp32")
        _check_precision(self.precision)
        if self.precision == "fp16" and not cuda:
            raise ValueError("fp16 is offered on CUDA only (on CPU torch computes many fp16 ops slowly); use bf16")
        if cuda_graphs and not cuda:
            raise ValueError("CUDA graphs need a CUDA device")
        self.backend = "torch.compile" if compile else "torch"
        self.channels_last = cuda if channels_last is None else channels_last
        self.network = network.eval().to(self.device)
        if self.channels_last:
            self.network = self.network.to(memory_format=torch.channels_last)
        forward = self.network.forward_with_heads
        if compile:
            forward = torch.compile(forward)
            if not cuda:
                forward = _with_freezing(forward)
        self._forward = forward
        self._dtype = _AUTOCAST_DTYPES.get(self.precision)
        self._graphs: dict[int, _CapturedGraph] | None = {} if cuda_graphs else None
        self._pinned: dict[tuple[int, ...], torch.Tensor] = {}

    def describe(self) -> str:
        extras = [name for name, on in (("channels-last", self.channels_last), ("CUDA graphs", self._graphs is not None)) if on]
        return super().describe() + (f" ({', '.join(extras)})" if extras else "")

    @torch.inference_mode()
    def __call__(self, batch: torch.Tensor) -> dict[str, torch.Tensor]:
        batch = self._upload(batch)
        if self._graphs is None:
            return self._run(batch)
        graph = self._graphs.get(batch.shape[0])
        if graph is None:
            graph = self._graphs[batch.shape[0]] = _CapturedGraph(self._run, batch)
        return graph(batch)

    def _run(self, batch: torch.Tensor) -> dict[str, torch.Tensor]:
        # No autocast weight cache under CUDA graphs: casts cached during capture would be freed behind the graph.
        with torch.autocast(
            self.device.type, dtype=self._dtype, enabled=self._dtype is not None, cache_enabled=self._graphs is None
        ):
            return self._forward(batch)

    def _upload(self, batch: torch.Tensor) -> torch.Tensor:
        if self.device.type == "cuda" and batch.device.type == "cpu":
            # Through a pinned buffer, so the copy is a real asynchronous DMA. The buffer
            # is reused by the next call only after QualityModel read the results (a sync).
            staging = self._pinned.get(tuple(batch.shape))
            if staging is None:
                staging = self._pinned[tuple(batch.shape)] = torch.empty(batch.shape, dtype=batch.dtype, pin_memory=True)
            staging.copy_(batch)
            batch = staging.to(self.device, non_blocking=True)
        else:
            batch = batch.to(self.device)
        return batch.contiguous(memory_format=torch.channels_last) if self.channels_last else batch


def _with_freezing(compiled):
    """``compiled`` (a torch.compile'd function) with inductor's freezing on whenever it runs.

    Each new input shape compiles inside a call, and inductor reads the setting there, so
    the patch wraps every call (``torch.compile(options={"freezing": True})`` did not take
    effect in torch 2.13). Measured on a 2-core Xeon with AMX, FTHNet-S batch 1 bf16:
    20.4 ms frozen, 33.4 ms compiled without freezing, 36.1 ms eager.
    """
    import torch._inductor.config as inductor_config

    def frozen(batch: torch.Tensor) -> dict[str, torch.Tensor]:
        with inductor_config.patch(freezing=True):
            return compiled(batch)

    return frozen


class _CapturedGraph:
    """One CUDA graph for one batch shape: static input and outputs, replay per call."""

    def __init__(self, run, example: torch.Tensor):
        self.input = example.clone()
        side = torch.cuda.Stream(example.device)
        side.wait_stream(torch.cuda.current_stream(example.device))
        with torch.cuda.stream(side):
            for _ in range(3):  # warm-up outside the capture: lazy inits, cuBLAS workspaces
                run(self.input)
        torch.cuda.current_stream(example.device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.outputs = run(self.input)

    def __call__(self, batch: torch.Tensor) -> dict[str, torch.Tensor]:
        self.input.copy_(batch)
        self.graph.replay()
        # Copies: the static outputs are overwritten by the next replay.
        return {name: out.clone() for name, out in self.outputs.items()}


class OrtRuntime(Runtime):
    """ONNX Runtime on an exported file: CPU provider, CUDA provider when installed and asked for.

    On CUDA the input and outputs are bound to torch tensors (IO binding), so the batch
    never goes through host memory; on CPU ``session.run`` already reads the numpy view
    of the batch without a copy, so binding would add nothing.
    """

    backend = "onnxruntime"

    def __init__(self, path: str | Path, device: torch.device, *, threads: int | None = None):
        ort = _import_onnxruntime()
        self.path = Path(path)
        self.device = torch.device(device)
        self.metadata = read_metadata(self.path)
        self.precision = self.metadata["precision"]
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = threads or 0  # 0: one per physical core
        options.inter_op_num_threads = 1  # the graph is a chain: parallel branches buy nothing
        providers = ["CPUExecutionProvider"]
        if self.device.type == "cuda":
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise RuntimeError(
                    "device 'cuda' with backend 'onnxruntime' needs onnxruntime-gpu (CUDAExecutionProvider); "
                    f"this onnxruntime has {', '.join(ort.get_available_providers())}"
                )
            providers.insert(0, ("CUDAExecutionProvider", {"device_id": self.device.index or 0}))
        self.session = ort.InferenceSession(str(self.path), options, providers=providers)
        self.input_name = INPUT_NAME
        self.output_names = [output.name for output in self.session.get_outputs()]
        self._output_shapes = {output.name: output.shape for output in self.session.get_outputs()}

    def describe(self) -> str:
        return super().describe() + f" ({self.session.get_providers()[0]})"

    def __call__(self, batch: torch.Tensor) -> dict[str, torch.Tensor]:
        batch = batch.float()
        if self.device.type == "cuda":
            return self._run_bound(batch)
        outputs = self.session.run(self.output_names, {self.input_name: batch.cpu().contiguous().numpy()})
        return {name: torch.from_numpy(value) for name, value in zip(self.output_names, outputs)}

    def _run_bound(self, batch: torch.Tensor) -> dict[str, torch.Tensor]:
        index = self.device.index or 0
        x = batch.to(self.device).contiguous()
        binding = self.session.io_binding()
        binding.bind_input(self.input_name, "cuda", index, np.float32, tuple(x.shape), x.data_ptr())
        outputs = {}
        for name in self.output_names:
            shape = tuple(x.shape[0] if isinstance(dim, str) else dim for dim in self._output_shapes[name])
            outputs[name] = torch.empty(shape, dtype=torch.float32, device=self.device)
            binding.bind_output(name, "cuda", index, np.float32, shape, outputs[name].data_ptr())
        torch.cuda.current_stream(self.device).synchronize()  # ORT runs on its own stream: x must be written
        self.session.run_with_iobinding(binding)
        return outputs


def create_runtime(
    backend: str,
    network: torch.nn.Module,
    config: ModelConfig,
    name: str,
    device: torch.device,
    *,
    precision: str | None = None,
    threads: int | None = None,
    compile: bool = False,
    cuda_graphs: bool = False,
) -> Runtime:
    """The runtime for ``backend`` (see the module docstring for ``"auto"``)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if precision is not None:
        _check_precision(precision)
    if threads:
        torch.set_num_threads(threads)
    if backend == "torch":
        return TorchRuntime(network, device, precision, compile=compile, cuda_graphs=cuda_graphs)
    if backend == "onnxruntime":
        if precision == "bf16":
            raise ValueError("onnxruntime runs fp32 or fp16 exports; bf16 is a torch option")
        return OrtRuntime(onnx_for(network, config, name, precision or "fp32"), device, threads=threads)
    if backend == "tensorrt":
        return engine_for(network, config, name, device, precision or "fp16")
    return _auto(network, config, name, device, precision=precision, threads=threads)


def _auto(network, config, name, device, *, precision, threads) -> Runtime:
    if device.type == "cuda":
        try:
            runtime = cached_engine(network, config, name, device, precision or "fp16")
            reason = "no valid cached engine for this model and GPU (build one with pyfundus export --format engine)"
        except TensorRTUnavailable:
            runtime, reason = None, "TensorRT is not installed"
        if runtime is not None:
            runtime.choice = "auto: tensorrt (a valid engine for this GPU is cached)"
            return runtime
        runtime = TorchRuntime(network, device, precision or "fp16")
        runtime.choice = f"auto: torch {runtime.precision} on CUDA ({reason})"
        return runtime
    return _auto_cpu(network, config, name, device, precision=precision, threads=threads)


# Timed calls per candidate in backend="auto" on CPU, after two warm-up calls: about 0.5 s each.
AUTO_TIMED_CALLS = 5


def _auto_cpu(network, config, name, device, *, precision, threads) -> Runtime:
    """The fastest CPU runtime, measured here, among those that match torch fp32 on the probe batch."""
    # A precision asked for limits the candidates; bf16 on a CPU without it falls back to fp32.
    candidates: list[Runtime] = []
    notes: list[str] = []
    native_bf16 = cpu_has_native_bf16()
    if precision == "bf16" and not native_bf16:
        notes.append("this CPU has no native bf16, so fp32")
        precision = "fp32"
    if precision in (None, "bf16") and native_bf16:
        candidates.append(TorchRuntime(network, device, "bf16"))
    if precision in (None, "fp32"):
        candidates.append(TorchRuntime(network, device, "fp32"))
    if precision != "bf16":
        try:
            _import_onnxruntime()
            ort_file = onnx_for(network, config, name, "fp16" if precision == "fp16" else "fp32")
            candidates.append(OrtRuntime(ort_file, device, threads=threads))
        except ImportError:
            notes.append("onnxruntime is not installed")
    timed: list[tuple[float, Runtime]] = []
    for runtime in candidates:
        difference = parity(runtime, network)
        if difference > PARITY_TOLERANCE[runtime.precision]:
            log.warning("backend auto: %s differed from torch fp32 by %.3f score points; not used", runtime.describe(), difference)
            notes.append(f"{runtime.backend} {runtime.precision} failed the parity check ({difference:.3f} points)")
            continue
        timed.append((_batch_one_latency_ms(runtime, network), runtime))
    if not timed:  # torch fp32 is its own reference, so this takes fp16 asked for without onnxruntime
        raise ValueError(f"backend auto found no CPU runtime for {precision}: {'; '.join(notes)}")
    timed.sort(key=lambda pair: pair[0])
    best = timed[0][1]
    measured = ", ".join(f"{runtime.backend} {runtime.precision} {ms:.1f} ms" for ms, runtime in timed)
    best.choice = f"auto: {best.backend} {best.precision} (fastest here at batch 1: {measured})" + (
        f"; {'; '.join(notes)}" if notes else ""
    )
    return best


def _batch_one_latency_ms(runtime: Runtime, network: torch.nn.Module) -> float:
    """Median milliseconds of ``AUTO_TIMED_CALLS`` batch-1 calls after two warm-up calls."""
    size = network.input_spec.size
    batch = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(1))
    for _ in range(2):
        runtime(batch)
    times = []
    for _ in range(AUTO_TIMED_CALLS):
        started = time.perf_counter()
        runtime(batch)
        times.append(time.perf_counter() - started)
    return float(np.median(times)) * 1000.0


def cpu_has_native_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether this CPU has bf16 instructions (the avx512_bf16 or amx_bf16 flag; Linux x86).

    oneDNN also runs bf16 on older AVX-512 CPUs, but by conversion, which is
    no faster than fp32, so only the flags count. oneDNN capped below bf16
    (``ONEDNN_MAX_CPU_ISA=AVX2``, as on a clinic PC stand-in) emulates it: False then too.
    """
    if os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper() in _ONEDNN_ISAS_WITHOUT_BF16:
        return False
    try:
        with open(cpuinfo) as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return False
    return not {"avx512_bf16", "amx_bf16"}.isdisjoint(flags)


def parity(runtime: Runtime, network: torch.nn.Module, batch: torch.Tensor | None = None) -> float:
    """Largest |score difference| between ``runtime`` and torch eager fp32 (reference kernels), 0-100 scale.

    Compared before clamping to 0-100: an untrained model scores below 0, where the
    clamped scores would all be 0 and agree whatever the runtime computed.
    """
    from ..ops.config import use_kernels

    if batch is None:
        size = network.input_spec.size
        batch = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    network = network.eval()
    first = next(network.parameters())
    with torch.inference_mode(), use_kernels("reference"):
        expected = network.forward_with_heads(batch.to(first.device, first.dtype))["quality"].float().cpu()
    got = runtime(batch)["quality"].float().cpu()
    return float((got - expected).abs().max()) * 100.0


def onnx_for(network: torch.nn.Module, config: ModelConfig, name: str, precision: str, *, progress: bool = True) -> Path:
    """The cached ONNX export of these weights: traced once; fp16 is converted from the cached fp32 file."""
    path = cached_onnx_path(network, config, name, precision)
    folder = path.parent
    if path.exists():
        return path
    source = onnx_for(network, config, name, "fp32", progress=progress) if precision == "fp16" else None
    log.warning("exporting %s to ONNX (%s) once; cached at %s", name, precision, path)
    folder.mkdir(parents=True, exist_ok=True)
    # Written under a temporary name and renamed, so a concurrent process never reads half a file.
    handle, temporary = tempfile.mkstemp(dir=folder, suffix=".onnx.part")
    os.close(handle)
    try:
        if source is None:
            export_onnx(network, config, name, temporary, progress=progress)
        else:
            convert_to_fp16(source, temporary, progress=progress)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)
    return path


def cached_onnx_path(network: torch.nn.Module, config: ModelConfig, name: str, precision: str) -> Path:
    """Where :func:`onnx_for` keeps the export of these weights (one file per weights, exporter and precision)."""
    return cache_dir() / "export" / f"{safe_file_stem(name)}-{fingerprint(network, config, DEFAULT_OPSET)[:16]}-{precision}.onnx"


# ---- TensorRT: a checked engine per weights, GPU and TensorRT version (pyfundus.export.tensorrt builds it)


class TensorRTRuntime(Runtime):
    """Runs a checked engine with torch tensors as bindings on torch's current stream."""

    backend = "tensorrt"

    def __init__(self, engine_path: str | Path, device: torch.device, *, fingerprint: str | None = None):
        trt = import_tensorrt()
        self.path = Path(engine_path)
        self.device = torch.device(device)
        self.info = EngineInfo.load(sidecar_path(self.path))
        check_engine(self.path, self.info, Target.current(self.device), fingerprint=fingerprint)
        self.precision = self.info.precision
        self.max_batch = self.info.batch[2]
        self.input_name = INPUT_NAME
        with torch.cuda.device(self.device):
            self._runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
            self._engine = self._runtime.deserialize_cuda_engine(self.path.read_bytes())
            if self._engine is None:
                raise EngineMismatch(f"TensorRT could not deserialise {self.path}")
            self._context = self._engine.create_execution_context()
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        self.output_names = [n for n in names if self._engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        dtypes = {trt.float32: torch.float32, trt.float16: torch.float16, trt.int32: torch.int32}
        self._dtypes = {n: dtypes[self._engine.get_tensor_dtype(n)] for n in self.output_names}

    def __call__(self, batch: torch.Tensor) -> dict[str, torch.Tensor]:
        x = batch.to(self.device, torch.float32).contiguous()
        parts = [self._run(chunk) for chunk in x.split(self.max_batch)]
        return {name: torch.cat([part[name] for part in parts]) for name in self.output_names}

    def _run(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        context = self._context
        context.set_input_shape(self.input_name, tuple(x.shape))
        context.set_tensor_address(self.input_name, x.data_ptr())
        outputs = {}
        for name in self.output_names:
            outputs[name] = torch.empty(tuple(context.get_tensor_shape(name)), dtype=self._dtypes[name], device=self.device)
            context.set_tensor_address(name, outputs[name].data_ptr())
        if not context.execute_async_v3(torch.cuda.current_stream(self.device).cuda_stream):
            raise RuntimeError(f"TensorRT failed to run {self.path}")
        return outputs


def _engine_path(name: str, key: str, device: torch.device, precision: str) -> Path:
    capability = "".join(map(str, torch.cuda.get_device_capability(device)))
    return cache_dir() / "export" / f"{safe_file_stem(name)}-{key[:16]}-{precision}-sm{capability}.engine"


def cached_engine(network, config: ModelConfig, name: str, device: torch.device, precision: str) -> TensorRTRuntime | None:
    """The cached engine for these weights on this GPU, or None when there is none or it is stale or foreign."""
    import_tensorrt()
    key = fingerprint(network, config, DEFAULT_OPSET)
    path = _engine_path(name, key, device, precision)
    if not path.exists():
        return None
    try:
        return TensorRTRuntime(path, device, fingerprint=key)
    except EngineMismatch as exc:
        log.warning("%s", exc)
        return None


def engine_for(network, config: ModelConfig, name: str, device: torch.device, precision: str) -> TensorRTRuntime:
    """The cached engine, built (minutes, once) when absent or stale."""
    trt = import_tensorrt()
    runtime = cached_engine(network, config, name, device, precision)
    if runtime is not None:
        return runtime
    key = fingerprint(network, config, DEFAULT_OPSET)
    path = _engine_path(name, key, device, precision)
    onnx_path = onnx_for(network, config, name, build_plan(trt.__version__, precision)["onnx_precision"])
    build_engine(onnx_path, path, precision=precision, device=device, timing_cache=path.with_suffix(".timing"))
    return TensorRTRuntime(path, device, fingerprint=key)


def resolve_device(device: str | torch.device) -> torch.device:
    """"auto" -> CUDA when torch sees a GPU, else CPU; "cuda" without a GPU is an error, not a silent CPU run."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' was asked for but torch sees no CUDA device")
    return device


def _check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")


def _import_onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError as exc:
        raise ImportError(f"backend 'onnxruntime' needs the export extra: pip install 'pyfundus[export]' ({exc})") from exc
    return onnxruntime

"""TensorRT engines: built from the exported ONNX, valid for one GPU and TensorRT version, run on torch's stream.

An engine is specific to the TensorRT version and the GPU it was built on, so each
``.engine`` file has a JSON sidecar (``model.engine.json``) recording the build
settings, the GPU name and compute capability, the TensorRT version, the
fingerprint of the weights and the engine's own sha256. Loading refuses an engine
whose sidecar does not match this machine or these weights, with a message saying
what differs and how to rebuild.

Precision: TensorRT 11 removed the FP16/BF16 builder flags and takes precision from
the network, so an fp16 engine is built strongly typed from the fp16 ONNX (LayerNorm
and softmax already fp32 there). TensorRT 10 builds from the fp32 ONNX with
``BuilderFlag.FP16`` and pins LayerNorm and softmax layers to fp32.

TensorRT is imported only when an engine is built or loaded; without it every entry
point raises :class:`TensorRTUnavailable`. The runtime that runs an engine
(``TensorRTRuntime``) and the engine cache are in pyfundus.export.runtimes.
"""

from __future__ import annotations

import datetime
import json
import logging
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..paths import sha256_file
from ..version import __version__
from .onnx import INPUT_NAME, read_metadata

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_BATCH",
    "SIDECAR_VERSION",
    "EngineInfo",
    "EngineMismatch",
    "Target",
    "TensorRTUnavailable",
    "build_engine",
    "build_plan",
    "check_engine",
    "import_tensorrt",
    "sidecar_path",
]

DEFAULT_BATCH = (1, 8, 32)  # optimisation profile: min, opt, max
DEFAULT_WORKSPACE_GIB = 4.0
SIDECAR_VERSION = 1


class TensorRTUnavailable(ImportError):
    """The tensorrt Python package is not installed."""


class EngineMismatch(RuntimeError):
    """An engine built for another GPU, TensorRT version or set of weights (or a changed file)."""


def import_tensorrt() -> Any:
    try:
        import tensorrt
    except ImportError as exc:
        raise TensorRTUnavailable(
            "TensorRT is not installed (pip install tensorrt, on a machine with an NVIDIA GPU and driver); "
            f"use backend 'onnxruntime' or 'torch' instead. Import error: {exc}"
        ) from exc
    return tensorrt


@dataclass(frozen=True)
class Target:
    """What an engine is valid for."""

    gpu_name: str
    compute_capability: str  # "8.6"
    tensorrt_version: str

    @classmethod
    def current(cls, device: torch.device) -> Target:
        trt = import_tensorrt()
        major, minor = torch.cuda.get_device_capability(device)
        return cls(torch.cuda.get_device_name(device), f"{major}.{minor}", trt.__version__)


@dataclass
class EngineInfo:
    """The sidecar: how the engine was built and what it is valid for."""

    target: Target
    precision: str
    batch: tuple[int, int, int]
    workspace_gib: float
    strongly_typed: bool
    engine_sha256: str
    onnx_sha256: str
    fingerprint: str  # of the weights and exporter (pyfundus.export.onnx.fingerprint)
    model: str
    onnx_metadata: dict[str, str] = field(default_factory=dict)
    pyfundus_version: str = __version__
    built_at: str = ""
    format_version: int = SIDECAR_VERSION

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> EngineInfo:
        data = json.loads(text)
        if data.get("format_version") != SIDECAR_VERSION:
            raise EngineMismatch(f"unsupported engine sidecar format {data.get('format_version')!r}")
        data["target"] = Target(**data["target"])
        data["batch"] = tuple(data["batch"])
        return cls(**data)

    @classmethod
    def load(cls, path: Path) -> EngineInfo:
        try:
            return cls.from_json(Path(path).read_text())
        except FileNotFoundError:
            raise EngineMismatch(
                f"{path} is missing: an engine without its sidecar cannot be checked against this machine"
            ) from None
        except (KeyError, TypeError, ValueError) as exc:
            raise EngineMismatch(f"{path}: not a valid engine sidecar ({exc})") from exc


def sidecar_path(engine_path: str | Path) -> Path:
    return Path(f"{engine_path}.json")


def check_engine(engine_path: str | Path, info: EngineInfo, target: Target, *, fingerprint: str | None = None) -> None:
    """Raise :class:`EngineMismatch` naming every difference between the engine and this machine/model."""
    built = info.target
    problems = []
    if built.tensorrt_version != target.tensorrt_version:
        problems.append(f"built with TensorRT {built.tensorrt_version}, this machine has {target.tensorrt_version}")
    if built.compute_capability != target.compute_capability:
        problems.append(
            f"built for compute capability {built.compute_capability} ({built.gpu_name}), "
            f"this GPU is {target.compute_capability} ({target.gpu_name})"
        )
    elif built.gpu_name != target.gpu_name:
        problems.append(f"built on a {built.gpu_name}, this GPU is a {target.gpu_name}")
    if fingerprint is not None and info.fingerprint != fingerprint:
        problems.append("built from other weights or another exporter version (stale)")
    if sha256_file(Path(engine_path)) != info.engine_sha256:
        problems.append("the engine file changed after it was built")
    if problems:
        raise EngineMismatch(
            f"refusing TensorRT engine {engine_path}: {'; '.join(problems)}. "
            "Rebuild it on this machine: pyfundus export --format engine"
        )


def build_plan(tensorrt_version: str, precision: str) -> dict[str, Any]:
    """Which ONNX to build from and how, for a TensorRT version: see the module docstring."""
    if precision not in ("fp32", "fp16"):
        raise ValueError(f"TensorRT engines are fp32 or fp16, not {precision!r}")
    strongly_typed = int(tensorrt_version.split(".")[0]) >= 11
    return {
        "onnx_precision": precision if strongly_typed else "fp32",
        "strongly_typed": strongly_typed,
        "fp16_flag": precision == "fp16" and not strongly_typed,
    }


def build_engine(
    onnx_path: str | Path,
    engine_path: str | Path,
    *,
    precision: str,
    device: torch.device | str = "cuda",
    batch: tuple[int, int, int] = DEFAULT_BATCH,
    workspace_gib: float = DEFAULT_WORKSPACE_GIB,
    timing_cache: str | Path | None = None,
    progress: bool = True,
) -> EngineInfo:
    """Build and serialise an engine from ``onnx_path`` (made with :func:`build_plan`'s ``onnx_precision``)."""
    trt = import_tensorrt()
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        raise RuntimeError("building a TensorRT engine needs a CUDA GPU")
    if not 1 <= batch[0] <= batch[1] <= batch[2]:
        raise ValueError(f"batch profile must be min <= opt <= max, got {batch}")
    onnx_path, engine_path = Path(onnx_path), Path(engine_path)
    metadata = read_metadata(onnx_path)
    plan = build_plan(trt.__version__, precision)
    if metadata["precision"] != plan["onnx_precision"]:
        raise ValueError(
            f"TensorRT {trt.__version__} builds a {precision} engine from an {plan['onnx_precision']} ONNX, "
            f"{onnx_path} is {metadata['precision']}"
        )
    size = json.loads(metadata["input"])["size"]
    logger = trt.Logger(trt.Logger.WARNING)
    with torch.cuda.device(device):
        builder = trt.Builder(logger)
        # A release where every network is strongly typed may drop the flag: nothing to ask for then.
        strongly_typed = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
        typed = plan["strongly_typed"] and strongly_typed is not None
        network = builder.create_network(1 << int(strongly_typed) if typed else 0)
        parser = trt.OnnxParser(network, logger)
        if not parser.parse_from_file(str(onnx_path)):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise RuntimeError(f"TensorRT could not parse {onnx_path}: {errors}")
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * 2**30))
        if plan["fp16_flag"]:
            config.set_flag(trt.BuilderFlag.FP16)
            config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
            for i in range(network.num_layers):
                layer = network.get_layer(i)
                if layer.type in (trt.LayerType.NORMALIZATION, trt.LayerType.SOFTMAX):
                    layer.precision = trt.float32
                    layer.set_output_type(0, trt.float32)
        profile = builder.create_optimization_profile()
        profile.set_shape(INPUT_NAME, *[(b, 3, size, size) for b in batch])
        config.add_optimization_profile(profile)
        cache_file = Path(timing_cache) if timing_cache else None
        cache = config.create_timing_cache(cache_file.read_bytes() if cache_file and cache_file.exists() else b"")
        config.set_timing_cache(cache, ignore_mismatch=False)
        if progress:
            config.progress_monitor = _progress_monitor(trt)
            print(f"pyfundus export: building a {precision} TensorRT {trt.__version__} engine "
                  f"(batch {batch[0]}-{batch[2]}, opt {batch[1]}); this takes minutes...", file=sys.stderr, flush=True)  # fmt: skip
        started = time.perf_counter()
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise RuntimeError("TensorRT could not build the engine; its log above says why")
        if progress:
            print(f"pyfundus export: engine built in {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
        if cache_file:
            cache_file.parent.mkdir(parents=True, exist_ok=True)
            cache_file.write_bytes(memoryview(config.get_timing_cache().serialize()))
        engine_path.parent.mkdir(parents=True, exist_ok=True)
        engine_path.write_bytes(memoryview(serialized))
    info = EngineInfo(
        target=Target.current(device),
        precision=precision,
        batch=tuple(batch),
        workspace_gib=workspace_gib,
        strongly_typed=plan["strongly_typed"],
        engine_sha256=sha256_file(engine_path),
        onnx_sha256=sha256_file(onnx_path),
        fingerprint=metadata["fingerprint"],
        model=metadata["model"],
        onnx_metadata=metadata,
        built_at=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    )
    sidecar_path(engine_path).write_text(info.to_json())
    return info


def _progress_monitor(trt) -> Any:
    """Prints TensorRT's top-level build phases to stderr."""

    class Monitor(trt.IProgressMonitor):
        def __init__(self):
            trt.IProgressMonitor.__init__(self)

        def phase_start(self, phase_name, parent_phase, num_steps):
            if parent_phase is None:
                print(f"pyfundus export: TensorRT {phase_name} ({num_steps} steps)", file=sys.stderr, flush=True)

        def step_complete(self, phase_name, step):
            return True  # False would cancel the build

        def phase_finish(self, phase_name):
            pass

    return Monitor()

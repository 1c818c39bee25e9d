"""Export a quality model to ONNX: fp32 or fp16, dynamic batch, static 384x384, standard ops only.

The graph is traced with the plain-torch reference kernels (``use_kernels("reference")``),
so fused custom ops (SoftPool, window attention) come out as standard ONNX ops. The
shift masks and relative-position indices are buffers, so they land in the file as
constants (and the bias gather is folded by the simplifier). The fp16 variant is the
simplified fp32 graph converted with onnxconverter-common, with LayerNorm and softmax
kept in fp32 (their reductions lose too much in half precision) and fp32 inputs and
outputs, so every runtime feeds it the same preprocessed batch.

Everything a runtime needs to use the file on its own is in its metadata: the model
name and config (thresholds, trained flag), the input size and normalisation, the
precision and the fingerprint of the weights it came from.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch

from ..ops.config import use_kernels
from ..version import __version__
from ..weights import InputSpec, ModelConfig

__all__ = [
    "DEFAULT_OPSET",
    "FP32_OPS",
    "INPUT_NAME",
    "OnnxExportError",
    "config_from_metadata",
    "convert_to_fp16",
    "export_onnx",
    "fingerprint",
    "read_metadata",
]

DEFAULT_OPSET = 17  # the first opset with a native LayerNormalization
INPUT_NAME = "images"
FP32_OPS = ("LayerNormalization", "Softmax")
STANDARD_DOMAINS = ("", "ai.onnx")


class OnnxExportError(RuntimeError):
    """The export failed or produced a graph that is not plain, checked ONNX."""


def fingerprint(network: torch.nn.Module, config: ModelConfig, opset: int) -> str:
    """sha256 over the weights, the architecture, its source code and the exporter versions:
    one per distinct ONNX graph (a cached export goes stale when any of them changes)."""
    from ..ops import softpool, window_attention

    digest = hashlib.sha256()
    for module in (sys.modules[type(network).__module__], softpool, window_attention):
        digest.update(inspect.getsource(module).encode())
    identity = {
        "arch": config.arch,
        "arch_kwargs": config.arch_kwargs,
        "causes": config.causes,
        "opset": opset,
        "pyfundus": __version__,
        "torch": torch.__version__.split("+")[0],
    }
    digest.update(json.dumps(identity, sort_keys=True).encode())
    for key, tensor in sorted(network.state_dict().items()):
        digest.update(key.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


class _Heads(torch.nn.Module):
    """forward_with_heads as a tuple in a fixed order: ONNX outputs are positional."""

    def __init__(self, network: torch.nn.Module, names: tuple[str, ...]):
        super().__init__()
        self.network = network
        self.names = names

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        outputs = self.network.forward_with_heads(images)
        return tuple(outputs[name] for name in self.names)


def export_onnx(
    network: torch.nn.Module,
    config: ModelConfig,
    name: str,
    output: str | Path,
    *,
    half: bool = False,
    opset: int = DEFAULT_OPSET,
    progress: bool = True,
) -> Path:
    """Write ``network`` as an ONNX file and return its path.

    ``half``: fp16 weights and activations, LayerNorm and softmax in fp32, fp32 inputs/outputs.
    The file is simplified with onnxsim, checked (``onnx.checker`` with full shape inference)
    and refused if any node is outside the standard ONNX domain.
    """
    report = _Reporter(progress)
    model = _trace(network, config, name, opset, report)
    if half:
        model = _to_fp16(model, report)
    return _save_checked(model, Path(output), report)


def convert_to_fp16(source: str | Path, output: str | Path, *, progress: bool = True) -> Path:
    """The fp16 variant of an fp32 export, without tracing the model again."""
    import onnx

    report = _Reporter(progress)
    model = onnx.load(str(source))
    if _metadata(model).get("precision") != "fp32":
        raise ValueError(f"{source}: not an fp32 pyfundus export")
    return _save_checked(_to_fp16(model, report), Path(output), report)


def _trace(network: torch.nn.Module, config: ModelConfig, name: str, opset: int, report: _Reporter):
    """Trace with the reference kernels, simplify, and attach the metadata: an fp32 ModelProto."""
    _, onnxsim = _import_export_tools()
    if opset < DEFAULT_OPSET:
        raise ValueError(f"opset {opset} is too old: FTHNet needs opset >= {DEFAULT_OPSET} (LayerNormalization)")
    network = network.eval().to("cpu")
    spec = config.input or network.input_spec
    size = spec.size
    # Batch 2, not 1: the exporter must not specialise the batch dimension to a constant 1.
    example = torch.randn(2, 3, size, size)
    with torch.no_grad(), use_kernels("reference"):
        names = tuple(network.forward_with_heads(example[:1]))
        with report.step(f"tracing {name} (opset {opset}, reference kernels)"):
            program = torch.onnx.export(
                _Heads(network, names).eval(),
                (example,),
                dynamo=True,
                opset_version=opset,
                input_names=[INPUT_NAME],
                output_names=list(names),
                dynamic_shapes=({0: torch.export.Dim("batch", min=1)},),
                verbose=False,
            )
    model = program.model_proto
    with report.step("simplifying with onnxsim"):
        model, simplified = onnxsim.simplify(model)
        if not simplified:
            raise OnnxExportError("onnxsim could not verify the simplified graph against the original")
    _set_metadata(
        model,
        {
            "model": name,
            "pyfundus_version": __version__,
            "precision": "fp32",
            "opset": str(opset),
            "trained": json.dumps(config.trained),
            "thresholds": json.dumps(config.thresholds.to_dict()),
            "input": json.dumps(
                {
                    "name": INPUT_NAME,
                    "shape": ["batch", 3, size, size],
                    "dtype": "float32",
                    "layout": "NCHW RGB",
                    "size": size,
                    "scale": 1 / 255,  # then (x - mean) / std per channel
                    "mean": list(spec.mean),
                    "std": list(spec.std),
                    "crop": spec.crop,
                }
            ),
            "outputs": json.dumps(list(names)),
            "config": config.to_json(),
            "fingerprint": fingerprint(network, config, opset),
            "simplifier": f"onnxsim {getattr(onnxsim, '__version__', '')}".strip(),
            "exporter": f"torch {torch.__version__} (dynamo)",
        },
    )
    model.producer_name, model.producer_version = "pyfundus", __version__
    model.doc_string = f"pyfundus {name}: fundus photograph quality, outputs {', '.join(names)}"
    return model


def _to_fp16(model, report: _Reporter):
    from onnxconverter_common import float16

    with report.step(f"converting to fp16 ({', '.join(FP32_OPS)} kept in fp32)"), warnings.catch_warnings():
        # It warns once per weight below fp16's range that it rounds to +-1e-7: expected, not news.
        warnings.filterwarnings("ignore", message="the float32 number", category=UserWarning)
        model = float16.convert_float_to_float16(model, keep_io_types=True, op_block_list=list(FP32_OPS))
    _set_metadata(model, {**_metadata(model), "precision": "fp16"})
    return model


def _save_checked(model, output: Path, report: _Reporter) -> Path:
    onnx, _ = _import_export_tools()
    foreign = sorted({node.domain for node in model.graph.node} - set(STANDARD_DOMAINS))
    if foreign or len(model.functions):
        raise OnnxExportError(
            f"the graph still holds custom ops (domains {foreign}, {len(model.functions)} functions); "
            "export traces the reference kernels, so a new fused op must honour pyfundus.ops.config.kernel_mode()"
        )
    output.parent.mkdir(parents=True, exist_ok=True)
    with report.step(f"checking and writing {output.name}"):
        onnx.save(model, str(output))
        onnx.checker.check_model(str(output), full_check=True)
    return output


def read_metadata(path: str | Path) -> dict[str, str]:
    """The metadata written by :func:`export_onnx` (without loading the weights)."""
    import onnx

    metadata = _metadata(onnx.load(str(path), load_external_data=False))
    if "config" not in metadata:
        raise ValueError(f"{path}: no pyfundus metadata; was it written by pyfundus export?")
    return metadata


def config_from_metadata(metadata: dict[str, str]) -> ModelConfig:
    """The model's config from an export's metadata, with its input contract (size, mean/std, crop)."""
    config = ModelConfig.from_json(metadata["config"])
    if config.input is None:  # exported before the config carried it: the "input" entry has it
        config.input = InputSpec.from_dict(json.loads(metadata["input"]))
    return config


def _metadata(model) -> dict[str, str]:
    return {prop.key: prop.value for prop in model.metadata_props}


def _set_metadata(model, entries: dict[str, str]) -> None:
    del model.metadata_props[:]
    for key, value in entries.items():
        prop = model.metadata_props.add()
        prop.key, prop.value = key, value


def _import_export_tools():
    try:
        import onnx
        import onnxsim
    except ImportError as exc:
        raise ImportError(f"ONNX export needs the export extra: pip install 'pyfundus[export]' ({exc})") from exc
    return onnx, onnxsim


class _Reporter:
    """One line per long step on stderr, with its duration (stdout stays clean for --json)."""

    def __init__(self, enabled: bool):
        self.enabled = enabled

    @contextlib.contextmanager
    def step(self, what: str) -> Iterator[None]:
        started = time.perf_counter()
        if self.enabled:
            print(f"pyfundus export: {what}...", file=sys.stderr, flush=True)
        yield
        if self.enabled:
            print(f"pyfundus export: {what}: done in {time.perf_counter() - started:.1f} s", file=sys.stderr, flush=True)

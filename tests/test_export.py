"""ONNX export, the ONNX Runtime and torch backends, backend="auto", and the TensorRT engine checks."""

from __future__ import annotations

import json
import re
import warnings

import numpy as np
import pytest
import torch
from export_helpers import cli_fp32_export, default_model, export_cache, export_extra, parity_samples

from pyfundus.api import UntrainedModelWarning, load_model
from pyfundus.cli import main
from pyfundus.data.synth import generate_fundus
from pyfundus.export import runtimes, tensorrt
from pyfundus.export.onnx import DEFAULT_OPSET, FP32_OPS, STANDARD_DOMAINS, read_metadata
from pyfundus.export.runtimes import PARITY_TOLERANCE, OrtRuntime, TorchRuntime, onnx_for, parity
from pyfundus.io import read_image
from pyfundus.ops.window_attention import shifted_window_mask
from pyfundus.paths import sha256_file
from pyfundus.preprocess import preprocess
from pyfundus.verdicts import CAUSES
from pyfundus.weights import IMAGENET_MEAN, IMAGENET_STD

onnx = export_extra("onnx")
ort = export_extra("onnxruntime")

to_array = onnx.numpy_helper.to_array


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    with export_cache(tmp_path_factory) as folder:
        yield folder


@pytest.fixture(scope="module")
def model():
    return default_model()


@pytest.fixture(scope="module")
def fp32_file(cache, model, tmp_path_factory):
    return cli_fp32_export(model, tmp_path_factory)


@pytest.fixture(scope="module")
def fp16_file(cache, model, fp32_file):
    return onnx_for(model.network, model.config, model.name, "fp16")  # converted from fp32_file, no new trace


@pytest.fixture(scope="module")
def photos():
    """Real sample photos, preprocessed: a (4, 3, 384, 384) batch."""
    batch = [preprocess(read_image(path, min_side=384).pixels)[0] for path in parity_samples()]
    return torch.from_numpy(np.stack(batch))


def _synthetic_batch() -> torch.Tensor:
    fundi = [preprocess(generate_fundus(seed, size=512)[0])[0] for seed in range(2)]
    noise = torch.randn(1, 3, 384, 384, generator=torch.Generator().manual_seed(1))
    return torch.cat([torch.from_numpy(np.stack(fundi)), noise])


def _raw_scores(outputs) -> np.ndarray:
    """quality x 100 before clamping: photos scored 0 (or 100) would agree however far apart the backends are."""
    return outputs["quality"].float().numpy() * 100.0


@pytest.mark.parametrize("which", ["fp32", "fp16"])
def test_onnx_file_is_checked_standard_onnx_with_dynamic_batch(which, fp32_file, fp16_file):
    path = fp32_file if which == "fp32" else fp16_file
    onnx.checker.check_model(str(path), full_check=True)
    proto = onnx.load(str(path))
    assert {o.domain for o in proto.opset_import} <= set(STANDARD_DOMAINS)
    assert max(o.version for o in proto.opset_import if o.domain in STANDARD_DOMAINS) >= DEFAULT_OPSET
    assert {node.domain for node in proto.graph.node} <= set(STANDARD_DOMAINS)  # fused ops decomposed
    assert len(proto.functions) == 0
    (images,) = proto.graph.input
    dims = images.type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [3, 384, 384]
    # The shift masks are constants (stage 0's: 64 windows of 144x144) and the relative-position
    # bias is gathered at export time (no Gather left to run per call).
    masks = [init for init in proto.graph.initializer if int(np.prod(init.dims)) == 64 * 144 * 144]
    expected = shifted_window_mask(96, 96, 12, 6).numpy()
    assert any(np.array_equal(to_array(m).astype(np.float32).reshape(64, 144, 144), expected) for m in masks)
    assert not {"Gather", "GatherND", "GatherElements"} & {node.op_type for node in proto.graph.node}
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch in (1, 3):
        quality, cause_logits = session.run(None, {"images": np.zeros((batch, 3, 384, 384), np.float32)})
        assert quality.shape == (batch,) and np.isfinite(quality).all()
        assert cause_logits.shape == (batch, len(CAUSES)) and np.isfinite(cause_logits).all()


def test_fp16_file_keeps_layernorm_and_softmax_in_fp32(fp16_file):
    proto = onnx.load(str(fp16_file))
    inferred = onnx.shape_inference.infer_shapes(proto)
    types = {v.name: v.type.tensor_type.elem_type for v in [*inferred.graph.value_info, *inferred.graph.input]}
    types.update({init.name: init.data_type for init in proto.graph.initializer})
    kept = [node for node in proto.graph.node if node.op_type in FP32_OPS]
    assert len(kept) >= 14 + 14  # a softmax and two LayerNorms per Swin block at least
    assert all(types[node.input[0]] == onnx.TensorProto.FLOAT for node in kept)
    matmul_weights = [types[n.input[1]] for n in proto.graph.node if n.op_type == "MatMul" and n.input[1] in types]
    assert matmul_weights.count(onnx.TensorProto.FLOAT16) > len(matmul_weights) // 2
    assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT  # same input as fp32


def test_onnx_metadata_describes_the_model(fp32_file, fp16_file, model):
    for path, precision in ((fp32_file, "fp32"), (fp16_file, "fp16")):
        meta = read_metadata(path)
        assert meta["model"] == "fthnet_s"
        assert meta["precision"] == precision
        assert meta["pyfundus_version"] == __import__("pyfundus").__version__
        assert json.loads(meta["trained"]) is True
        assert json.loads(meta["thresholds"]) == model.config.thresholds.to_dict()
        normalisation = json.loads(meta["input"])
        assert normalisation["size"] == 384
        assert normalisation["mean"] == list(IMAGENET_MEAN) and normalisation["std"] == list(IMAGENET_STD)
        assert json.loads(meta["config"])["arch"] == "fthnet_s"
        assert json.loads(meta["outputs"]) == ["quality", "cause_logits"]
        assert json.loads(meta["config"])["causes"] == list(CAUSES)


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_onnxruntime_matches_torch_eager(precision, fp32_file, fp16_file, model, photos):
    runtime = OrtRuntime(fp32_file if precision == "fp32" else fp16_file, torch.device("cpu"), threads=2)
    tolerance = PARITY_TOLERANCE[precision]
    for batch in (photos, _synthetic_batch()):
        with torch.inference_mode():
            expected = _raw_scores(model.network.forward_with_heads(batch))  # torch eager, default kernels
        got = _raw_scores(runtime(batch))
        assert np.abs(got - expected).max() < tolerance, (precision, got, expected)


def test_torch_bf16_autocast_stays_close_and_bad_options_are_refused(model, photos):
    bf16 = TorchRuntime(model.network, torch.device("cpu"), "bf16")
    assert bf16.describe() == "torch bf16 on cpu"
    assert parity(bf16, model.network) < PARITY_TOLERANCE["bf16"]
    with torch.inference_mode():
        expected = _raw_scores(model.network.forward_with_heads(photos))
    assert np.abs(_raw_scores(bf16(photos)) - expected).max() < PARITY_TOLERANCE["bf16"]  # real photos too
    with pytest.raises(ValueError, match="fp16 is offered on CUDA only"):
        TorchRuntime(model.network, torch.device("cpu"), "fp16")
    with pytest.raises(ValueError, match="CUDA graphs need a CUDA device"):
        TorchRuntime(model.network, torch.device("cpu"), cuda_graphs=True)
    with pytest.raises(ValueError, match="backend must be one of"):
        load_model("fthnet_s", backend="openvino")


def test_compiled_cpu_runtime_compiles_with_freezing():
    import torch._inductor.config as inductor_config

    seen = []
    frozen = runtimes._with_freezing(lambda batch: seen.append(inductor_config.freezing) or {})
    frozen(torch.zeros(1))
    assert seen == [True]  # on while the compiled function runs (and compiles new shapes)
    assert inductor_config.freezing is False  # and only then


@pytest.mark.slow
def test_torch_compile_bf16_on_cpu_matches_eager(model, photos):
    compiled = TorchRuntime(model.network, torch.device("cpu"), "bf16", compile=True)
    assert compiled.describe() == "torch.compile bf16 on cpu"
    with torch.inference_mode():
        expected = _raw_scores(model.network.forward_with_heads(photos))  # eager fp32
    got = _raw_scores(compiled(photos))
    assert np.abs(got - expected).max() < PARITY_TOLERANCE["bf16"], (got, expected)


def test_native_bf16_is_read_from_the_cpu_flags(tmp_path, monkeypatch):
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512bw\n")
    assert runtimes.cpu_has_native_bf16(str(cpuinfo)) is False  # AVX-512 alone converts, it does not compute bf16
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu avx512f avx512_bf16 amx_tile\n")
    assert runtimes.cpu_has_native_bf16(str(cpuinfo)) is True
    assert runtimes.cpu_has_native_bf16(str(tmp_path / "missing")) is False
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "avx2")  # oneDNN capped below bf16 emulates it
    assert runtimes.cpu_has_native_bf16(str(cpuinfo)) is False
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_AMX")
    assert runtimes.cpu_has_native_bf16(str(cpuinfo)) is True


def _fixed_latencies(ms_by_runtime: dict[str, float]):
    return lambda runtime, network: ms_by_runtime[f"{runtime.backend} {runtime.precision}"]


def test_auto_on_cpu_times_the_verified_candidates_and_picks_the_fastest(fp32_file, monkeypatch):
    monkeypatch.setattr(runtimes, "cpu_has_native_bf16", lambda: True)
    # Timed for real: the choice names the winner and every candidate's measured time.
    auto = load_model("fthnet_s", backend="auto")
    measured = dict(re.findall(r"(torch bf16|torch fp32|onnxruntime fp32) ([\d.]+) ms", auto.backend_description))
    assert set(measured) == {"torch bf16", "torch fp32", "onnxruntime fp32"}, auto.backend_description
    winner = min(measured, key=lambda name: float(measured[name]))
    # The runtime's own description: "onnxruntime fp32 on cpu (CPUExecutionProvider)" names its provider too.
    described = auto.runtime.describe()
    assert described.startswith(f"{winner} on cpu")
    assert auto.backend_description.startswith(f"{described}; auto: {winner} (fastest here at batch 1: ")
    results = auto.score(parity_samples()[:2])
    assert all(r.ok and r.backend == described for r in results)
    assert results[0].to_dict()["backend"] == results[0].backend

    # With fixed timings, whichever is fastest wins...
    monkeypatch.setattr(runtimes, "_batch_one_latency_ms", _fixed_latencies({"torch bf16": 30, "torch fp32": 40, "onnxruntime fp32": 20}))
    assert load_model("fthnet_s", backend="auto").backend == "onnxruntime"
    monkeypatch.setattr(runtimes, "_batch_one_latency_ms", _fixed_latencies({"torch bf16": 10, "torch fp32": 40, "onnxruntime fp32": 20}))
    assert load_model("fthnet_s", backend="auto").backend_description.startswith("torch bf16 on cpu")
    # ... but not one that fails its parity check, however fast.
    real_parity = runtimes.parity
    monkeypatch.setattr(runtimes, "parity", lambda runtime, network: 5.0 if runtime.precision == "bf16" else 0.0)
    checked = load_model("fthnet_s", backend="auto")
    assert checked.backend == "onnxruntime" and "torch bf16 failed the parity check (5.000 points)" in checked.backend_description
    monkeypatch.setattr(runtimes, "parity", real_parity)
    # bf16 asked for on a CPU that has it: torch bf16 alone. On one without: no bf16 candidate, fp32 instead.
    assert load_model("fthnet_s", backend="auto", precision="bf16").backend_description.startswith("torch bf16 on cpu")
    monkeypatch.setattr(runtimes, "cpu_has_native_bf16", lambda: False)
    plain = load_model("fthnet_s", backend="auto", precision="bf16")
    assert "torch bf16" not in plain.backend_description and "this CPU has no native bf16" in plain.backend_description
    assert plain.backend == "onnxruntime"

    def missing():
        raise ImportError("no onnxruntime here")

    monkeypatch.setattr(runtimes, "_import_onnxruntime", missing)
    fallback = load_model("fthnet_s", backend="auto")
    assert fallback.backend_description.startswith("torch fp32 on cpu")
    assert "onnxruntime is not installed" in fallback.backend_description
    with pytest.raises(ValueError, match="found no CPU runtime for fp16: onnxruntime is not installed"):
        load_model("fthnet_s", backend="auto", precision="fp16")


def test_exported_file_loads_and_scores_on_its_own(fp32_file, capsys):
    exported = load_model(fp32_file)  # the .onnx alone: config and thresholds from its metadata
    assert exported.network is None and exported.backend == "onnxruntime"
    assert exported.name == "fthnet_s" and exported.trained is True and exported.input.size == 384
    with pytest.raises(ValueError, match="runs with backend 'onnxruntime'"):
        load_model(fp32_file, backend="torch")
    sample = str(parity_samples()[0])
    assert main(["score", "--model", str(fp32_file), "--backend", "onnxruntime", "--json", "--no-progress", sample]) == 0
    (record,) = json.loads(capsys.readouterr().out)
    assert record["error"] is None and record["backend"].startswith("onnxruntime fp32")


# ---- TensorRT: everything up to the engine runs here; building one needs TensorRT and a GPU -------


def _fake_engine(tmp_path, **target):
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"not really an engine, but bytes with a hash")
    built = tensorrt.Target(**{"gpu_name": "NVIDIA A10", "compute_capability": "8.6", "tensorrt_version": "10.9.0",
                               **target})  # fmt: skip
    info = tensorrt.EngineInfo(
        target=built, precision="fp16", batch=(1, 8, 32), workspace_gib=4.0, strongly_typed=False,
        engine_sha256=sha256_file(engine), onnx_sha256="0" * 64, fingerprint="f" * 64, model="fthnet_s",
    )  # fmt: skip
    tensorrt.sidecar_path(engine).write_text(info.to_json())
    return engine, tensorrt.EngineInfo.load(tensorrt.sidecar_path(engine))


def test_engine_sidecar_round_trips_and_accepts_its_own_machine(tmp_path):
    engine, info = _fake_engine(tmp_path)
    assert info.batch == (1, 8, 32) and info.target.gpu_name == "NVIDIA A10"
    tensorrt.check_engine(engine, info, tensorrt.Target("NVIDIA A10", "8.6", "10.9.0"), fingerprint="f" * 64)


@pytest.mark.parametrize(
    "here, fingerprint, message",
    [
        (("NVIDIA A10", "8.6", "10.13.0"), None, "built with TensorRT 10.9.0, this machine has 10.13.0"),
        (("NVIDIA H100", "9.0", "10.9.0"), None, r"built for compute capability 8.6 \(NVIDIA A10\), this GPU is 9.0"),
        (("NVIDIA A40", "8.6", "10.9.0"), None, "built on a NVIDIA A10, this GPU is a NVIDIA A40"),
        (("NVIDIA A10", "8.6", "10.9.0"), "e" * 64, "built from other weights"),
    ],
)
def test_stale_or_foreign_engine_is_refused_with_the_reason(tmp_path, here, fingerprint, message):
    engine, info = _fake_engine(tmp_path)
    with pytest.raises(tensorrt.EngineMismatch, match=message) as caught:
        tensorrt.check_engine(engine, info, tensorrt.Target(*here), fingerprint=fingerprint)
    assert "pyfundus export --format engine" in str(caught.value)


def test_changed_engine_file_or_missing_sidecar_is_refused(tmp_path):
    engine, info = _fake_engine(tmp_path)
    engine.write_bytes(b"swapped")
    with pytest.raises(tensorrt.EngineMismatch, match="engine file changed"):
        tensorrt.check_engine(engine, info, info.target)
    tensorrt.sidecar_path(engine).unlink()
    with pytest.raises(tensorrt.EngineMismatch, match="without its sidecar"):
        tensorrt.EngineInfo.load(tensorrt.sidecar_path(engine))


def test_build_plan_follows_the_tensorrt_version():
    assert tensorrt.build_plan("10.9.0", "fp16") == {"onnx_precision": "fp32", "strongly_typed": False, "fp16_flag": True}
    assert tensorrt.build_plan("11.0.1", "fp16") == {"onnx_precision": "fp16", "strongly_typed": True, "fp16_flag": False}
    assert tensorrt.build_plan("10.9.0", "fp32")["fp16_flag"] is False
    with pytest.raises(ValueError):
        tensorrt.build_plan("10.9.0", "bf16")


def _tensorrt_missing() -> str | None:
    try:
        tensorrt.import_tensorrt()
    except tensorrt.TensorRTUnavailable as exc:
        return str(exc)
    return None


@pytest.mark.skipif(_tensorrt_missing() is None, reason="TensorRT is installed: the missing-TensorRT path cannot be shown")
def test_missing_tensorrt_is_a_clear_error(capsys, model, fp32_file):
    with pytest.raises(tensorrt.TensorRTUnavailable, match="TensorRT is not installed"):
        load_model("fthnet_s", backend="tensorrt")
    with pytest.raises(tensorrt.TensorRTUnavailable):
        tensorrt.build_engine(fp32_file, fp32_file.with_suffix(".engine"), precision="fp16")
    assert main(["export", "--format", "engine"]) == 2
    assert "TensorRT is not installed" in capsys.readouterr().err


@pytest.mark.cuda
@pytest.mark.skipif(
    _tensorrt_missing() is not None or not torch.cuda.is_available(),
    reason=f"building an engine needs TensorRT and a CUDA GPU ({_tensorrt_missing() or 'no CUDA device'})",
)
def test_engine_builds_runs_and_matches_torch(tmp_path, cache, model, photos):
    trt = tensorrt.import_tensorrt()
    device = torch.device("cuda")
    onnx_path = onnx_for(model.network, model.config, model.name, tensorrt.build_plan(trt.__version__, "fp16")["onnx_precision"])
    engine = tmp_path / "m.engine"
    info = tensorrt.build_engine(onnx_path, engine, precision="fp16", device=device, batch=(1, 4, 8))
    assert info.target == tensorrt.Target.current(device)
    runtime = runtimes.TensorRTRuntime(engine, device)
    assert parity(runtime, default_model().network.to(device), photos) < PARITY_TOLERANCE["fp16"]


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_torch_cuda_paths_match_eager(precision, photos):
    reference = default_model().network
    device = torch.device("cuda")
    for graphs in (False, True):
        runtime = TorchRuntime(default_model().network, device, precision, cuda_graphs=graphs)
        assert runtime.channels_last
        for _ in range(2):  # the second call replays the captured graph
            assert parity(runtime, reference.to(device), photos) < PARITY_TOLERANCE[precision]


def test_untrained_model_warning_still_fires_through_onnxruntime(fp32_file, tmp_path):
    proto = onnx.load(str(fp32_file))
    for entry in proto.metadata_props:  # the same graph, as an export of untrained weights says it is
        if entry.key == "trained":
            entry.value = "false"
        if entry.key == "config":
            entry.value = json.dumps({**json.loads(entry.value), "trained": False})
    onnx.save(proto, str(tmp_path / "untrained.onnx"))
    exported = load_model(tmp_path / "untrained.onnx")
    assert exported.trained is False
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        exported.score([str(parity_samples()[0])])
    assert any(issubclass(w.category, UntrainedModelWarning) for w in caught)

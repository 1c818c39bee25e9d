"""The public scoring API: ``load_model()``, the one loader, and ``QualityModel.score()``."""

from __future__ import annotations

import contextlib
import logging
import os
import time
import warnings
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np
import torch

from .export.runtimes import Runtime, TorchRuntime, create_runtime, resolve_device
from .grading import Thresholds
from .io import FundusImage, ImageReadError, read_image, source_name
from .models import create_model, is_classical, is_model, list_models, model_task
from .paths import sha256_file
from .preprocess import NoFundusError, preprocess
from .verdicts import ScoreResult, reason_for
from .weights import DEFAULT_MODEL, WEIGHTS_DIR, InputSpec, ModelConfig, load_weights

__all__ = [
    "DEFAULT_MODEL",
    "QualityModel",
    "ScoreResult",
    "UntrainedModelWarning",
    "load_enhancer",
    "load_grader",
    "load_model",
    "load_network",
    "task_of",
]

log = logging.getLogger(__name__)



class UntrainedModelWarning(UserWarning):
    """Scores from randomly initialised weights mean nothing."""


# Shown on every score call, not once per process: an untrained gate must never go unnoticed.
# A caller that says it another way (the daemon's log, the CLI's banner) sets
# ``model.warn_untrained = False`` on that one model; no process-wide filter is ever changed.
warnings.simplefilter("always", UntrainedModelWarning)


class QualityModel:
    """A quality model ready to score images: runtime, preprocessing and thresholds together.

    ``network`` is the torch module (None when loaded from an exported .onnx or .engine
    file); ``runtime`` computes the heads (torch by default, see pyfundus.export.runtimes).
    ``config.input`` is the input contract the weights were trained with (size, mean/std, crop).
    ``file``: the weights or export it was loaded from (None: freshly initialised), whose sha256
    every result records. ``warn_untrained``: whether scoring with untrained weights raises an
    UntrainedModelWarning.
    """

    def __init__(
        self,
        network: torch.nn.Module | None,
        config: ModelConfig,
        name: str,
        device: torch.device,
        runtime: Runtime | None = None,
        file: Path | None = None,
    ):
        if config.input is None:
            raise ValueError(f"model {name!r}: its config has no input contract (size, mean/std)")
        self.network = network.eval().to(device) if network is not None else None
        self.config = config
        self.name = name
        self.device = device
        self.runtime = runtime if runtime is not None else TorchRuntime(self.network, device, "fp32")
        self.file = file
        self.sha256 = sha256_file(file) if file is not None else None
        self.warn_untrained = True

    @property
    def input(self) -> InputSpec:
        return self.config.input

    @property
    def backend(self) -> str:
        """Which runtime scores ("torch", "torch.compile", "onnxruntime", "tensorrt")."""
        return self.runtime.backend

    @property
    def backend_description(self) -> str:
        """Runtime, precision and device, plus why ``backend="auto"`` chose it."""
        text = self.runtime.describe()
        return f"{text}; {self.runtime.choice}" if self.runtime.choice else text

    @property
    def trained(self) -> bool:
        return self.config.trained

    @property
    def thresholds(self) -> Thresholds:
        return self.config.thresholds

    def __repr__(self) -> str:
        state = "trained" if self.trained else "UNTRAINED"
        return f"QualityModel({self.name!r}, arch={self.config.arch}, {self.runtime.describe()}, {state})"

    @torch.inference_mode()
    def predict(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Scores 0-100 and, with a cause head, per-cause severities (B, causes) for a preprocessed batch."""
        outputs = self.runtime(batch)
        scores = (outputs["quality"].float() * 100.0).clamp_(0.0, 100.0).cpu()
        causes = outputs.get("cause_logits")
        return scores, None if causes is None else torch.sigmoid(causes.float()).cpu()

    def score(
        self,
        inputs: Any,
        *,
        batch_size: int = 8,
        workers: int | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> list[ScoreResult]:
        """Score images given as paths, bytes, numpy arrays, PIL images or FundusImage objects.

        Always returns one ScoreResult per input, in order; an image that cannot
        be read or has no visible fundus gets a result with ``error`` set rather
        than an exception, so one bad capture never hides the others.
        ``progress`` is called with the number of images finished after each batch.
        """
        items = _as_list(inputs)
        if not self.trained and self.warn_untrained:
            message = (
                f"model {self.name!r} has no trained weights: its scores are meaningless. "
                "Load trained weights with pyfundus.load_model(PATH)."
            )
            warnings.warn(message, UntrainedModelWarning, stacklevel=2)
        results: list[ScoreResult] = []
        workers = workers or min(4, os.cpu_count() or 1)
        with contextlib.ExitStack() as stack:
            if len(items) == 1 or workers == 1:
                # Nothing to overlap: a reader thread would only add its hand-off (3-5 ms a capture on 2 cores).
                prepared: Iterable = map(self._prepare, items)
            else:
                pool = stack.enter_context(ThreadPoolExecutor(max_workers=workers, thread_name_prefix="pyfundus-read"))
                prepared = _prefetch(pool, self._prepare, items, depth=2 * batch_size)
            for chunk in _chunks(prepared, batch_size):
                results.extend(self._score_prepared(chunk))
                if progress is not None:
                    progress(len(chunk))
        return results

    def _prepare(self, item: Any) -> tuple[ScoreResult, np.ndarray | None]:
        """Read and preprocess one input (runs in a worker thread)."""
        path = source_name(item)
        result = ScoreResult(
            path=path, model=self.name, model_sha256=self.sha256, trained=self.trained, backend=self.runtime.describe()
        )
        started = time.perf_counter()
        try:
            image = item if isinstance(item, FundusImage) else read_image(item, min_side=self.input.size)
            read_done = time.perf_counter()
            result.sha256 = image.sha256  # also on a failure below: it says which content failed
            result.camera = image.camera
            tensor, _ = preprocess(image.pixels, self.input)
        except ImageReadError as exc:  # its message already names the file
            result.sha256, result.incomplete = exc.sha256, exc.incomplete
            return _failed(result, str(exc), started)
        except NoFundusError as exc:
            return _failed(result, f"{path or 'image'}: {exc}", started)
        except Exception as exc:  # a decoder bug must cost one image, not the whole batch
            log.exception("unexpected failure while reading an image")
            return _failed(result, f"{path or 'image'}: unexpected error while reading ({type(exc).__name__}: {exc})", started)
        result.eye = image.eye
        result.patient_id = image.patient_id
        result.study_uid = image.study_uid
        result.sop_instance_uid = image.sop_instance_uid
        result.warnings.extend(image.warnings)
        result.timing_ms["read"] = (read_done - started) * 1000.0
        result.timing_ms["preprocess"] = _ms(read_done)
        return result, tensor

    def _score_prepared(self, chunk: Sequence[tuple[ScoreResult, np.ndarray | None]]) -> list[ScoreResult]:
        ready = [(result, tensor) for result, tensor in chunk if tensor is not None]
        if ready:
            batch = torch.from_numpy(np.stack([tensor for _, tensor in ready]))
            started = time.perf_counter()
            scores, causes = self.predict(batch)
            per_image = _ms(started) / len(ready)
            for i, (result, _) in enumerate(ready):
                result.score = round(float(scores[i]), 3)
                result.quality_class = self.thresholds.classify(result.score)
                result.probabilities = self.thresholds.probabilities(result.score)
                if causes is not None:
                    result.causes = dict(zip(self.config.causes, causes[i].tolist()))
                    result.reason = reason_for(result.quality_class, result.causes)
                result.timing_ms["model"] = per_image
                result.timing_ms["total"] = sum(result.timing_ms.values())
                if not self.trained:
                    result.warnings.append("untrained model: score is meaningless")
        return [result for result, _ in chunk]


def load_model(
    name_or_path: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
    *,
    backend: str | None = None,
    precision: str | None = None,
    thresholds: Thresholds | Mapping[str, float | None] | None = None,
    threads: int | None = None,
    compile: bool = False,
    pretrained: bool = True,
) -> Any:
    """The one model loader: the CLI, the daemon and evaluation all load through it.

    ``name_or_path``: a registered network (``fthnet_s``, ``fthnet_l``: its shipped weights
    when present), a ``.safetensors`` file, a file written by ``pyfundus export`` (.onnx,
    .engine), or a fitted classical model (``.json``, e.g. BRISQUE from ``pyfundus train
    --model brisque``). Returns a :class:`QualityModel`, or the classical model, which scores
    with the same ``.score()``. Pickled files are refused: loading one can run code.
    ``device``: "cpu", "cuda", "cuda:N" or "auto" (CUDA when available).
    ``backend``: "torch" (the default for weights), "onnxruntime" (exports the weights to ONNX
    once, cached; the default for .onnx files), "tensorrt" (builds an engine once, cached; the
    default for .engine files) or "auto" (the fastest backend that is installed and verified
    here; ``model.backend_description`` says which and why).
    ``precision``: "fp32", "fp16" or "bf16"; default fp32 on CPU, fp16 on CUDA.
    ``thresholds``: class thresholds instead of those stored with the model: a Thresholds, or a
    mapping with ``reject_below`` and/or ``good_from`` (None keeps the stored value) to move them.
    ``threads``: CPU threads for torch and ONNX Runtime. ``compile``: torch.compile the torch backend.
    A registered name loads its shipped weights (``pretrained=False``: a freshly initialised
    network instead, e.g. to train); a name without shipped weights gives an untrained model and says so.
    """
    name_or_path = DEFAULT_MODEL if name_or_path is None else os.fspath(name_or_path)
    suffix = Path(name_or_path).suffix.lower()
    if suffix in (".pt", ".pth", ".ckpt", ".bin", ".joblib", ".pkl", ".pickle"):
        raise ValueError(
            f"{name_or_path}: only .safetensors weights are loaded (pickle-based files can run arbitrary code "
            "when loaded); fitted classical models are .json"
        )
    if suffix == ".json":
        return _classical_from_file(Path(name_or_path), thresholds)
    if is_model(name_or_path) and is_classical(name_or_path):
        raise ValueError(
            f"{name_or_path!r} is a classical model that must be fitted on labelled captures first: "
            f"`pyfundus train --model {name_or_path} --data DATASET` writes a .json to load"
        )
    exported = suffix in (".onnx", ".engine")
    if compile and (backend not in (None, "torch") or exported):
        raise ValueError(f"compile applies to the torch backend, not to {backend or suffix} models")
    device = resolve_device(device)
    if exported:
        return _from_export(Path(name_or_path), device, backend, thresholds, threads)
    network, config, name, file = load_network(name_or_path, "quality", pretrained=pretrained)
    config.thresholds = _thresholds(config.thresholds, thresholds)
    runtime = create_runtime(
        backend or "torch", network.eval(), config, name, device, precision=precision, threads=threads, compile=compile
    )
    return QualityModel(network, config, name, device, runtime, file=file)


def load_network(
    name_or_path: str | os.PathLike, task: str, *, pretrained: bool = True
) -> tuple[torch.nn.Module, ModelConfig, str, Path | None]:
    """The one way a network and its config are loaded, for every loader (load_model, load_enhancer,
    load_grader): a registered name (its shipped weights in pyfundus/weights when present, else freshly
    initialised, seeded) or a .safetensors file. Returns (network, config, name, file or None); refuses a
    model made for another ``task`` (pyfundus.models.TASKS) and says which loader takes it."""
    name_or_path = os.fspath(name_or_path)
    if is_model(name_or_path):
        shipped = WEIGHTS_DIR / f"{name_or_path}.safetensors"
        file = shipped if pretrained and shipped.exists() else None
        if file is not None:
            network, config = _from_file(shipped)
        else:
            config = ModelConfig(arch=name_or_path)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)  # untrained, but at least the same numbers in every process
                network = create_model(name_or_path)
            config.input = network.input_spec
        name = name_or_path
    else:
        path = Path(name_or_path)
        if not path.exists():
            raise FileNotFoundError(
                f"{name_or_path!r} is neither a registered model ({', '.join(list_models())}) nor an existing file"
            )
        network, config = _from_file(path)
        name, file = path.stem, path
    check_task(config.arch, task, name_or_path)
    return network, config, name, file


def task_of(name_or_path: str | os.PathLike | None) -> str:
    """What a registered model, a .safetensors file or an .onnx export does (pyfundus.models.TASKS), read from
    its config without loading the weights; "quality" for anything else (the classical .json models)."""
    name_or_path = DEFAULT_MODEL if name_or_path is None else os.fspath(name_or_path)
    if is_model(name_or_path):
        return model_task(name_or_path)
    path = Path(name_or_path)
    if path.suffix == ".safetensors" and path.exists():
        from safetensors import safe_open

        from .weights import METADATA_KEY

        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
        return model_task(ModelConfig.from_json(metadata[METADATA_KEY]).arch) if METADATA_KEY in metadata else "quality"
    if path.suffix == ".onnx" and path.exists():
        from .export.onnx import config_from_metadata, read_metadata

        return model_task(config_from_metadata(read_metadata(path)).arch)
    return "quality"


# Which loader takes a model of each task (pyfundus.models.TASKS), for the message when the wrong one is used.
LOADERS = {
    "quality": "pyfundus.load_model() / pyfundus score",
    "enhance": "pyfundus.load_enhancer() / pyfundus enhance",
    "grade": "pyfundus.load_grader() / pyfundus grade",
    "quality_class": "pyfundus eval --task iqa",
}


def check_task(arch: str, task: str, what: str) -> None:
    """Raise ValueError when ``arch`` is not a model for ``task``, naming the loader that takes it."""
    actual = model_task(arch)
    if actual != task:
        raise ValueError(f"{what}: {arch} is a {actual!r} model, not a {task!r} one; load it with {LOADERS[actual]}")


def _thresholds(stored: Thresholds, override: Thresholds | Mapping[str, float | None] | None) -> Thresholds:
    if override is None:
        return stored
    if isinstance(override, Thresholds):
        return override
    unknown = set(override) - {"reject_below", "good_from"}
    if unknown:
        raise ValueError(f"thresholds: unknown key(s) {sorted(unknown)}; use reject_below and good_from")
    return stored.moved(override.get("reject_below"), override.get("good_from"))


def _from_file(path: Path) -> tuple[torch.nn.Module, ModelConfig]:
    state, config = load_weights(path)
    network = create_model(config.arch, **config.arch_kwargs)
    missing, unexpected = network.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"{path}: weights do not match architecture {config.arch} "
            f"(missing {len(missing)} tensors, e.g. {missing[:3]}; unexpected {len(unexpected)}, e.g. {unexpected[:3]})"
        )
    if config.input is None:  # written before the contract was stored: the architecture's own
        config.input = network.input_spec
    elif config.input.size != network.input_spec.size:
        raise ValueError(f"{path}: its input size {config.input.size} does not match its architecture's")
    return network, config


def _classical_from_file(path: Path, thresholds: Thresholds | Mapping[str, float | None] | None) -> Any:
    from .models.brisque import BrisqueSVR

    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    model = BrisqueSVR.load(path)
    model.thresholds = _thresholds(model.thresholds, thresholds)
    return model


def _from_export(
    path: Path,
    device: torch.device,
    backend: str | None,
    thresholds: Thresholds | Mapping[str, float | None] | None,
    threads: int | None,
) -> QualityModel:
    """A model from an exported file alone: its metadata carries the config, thresholds and input contract."""
    from .export.onnx import config_from_metadata
    from .export.runtimes import OrtRuntime

    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    wanted = "onnxruntime" if path.suffix == ".onnx" else "tensorrt"
    if backend not in (None, wanted, "auto"):
        raise ValueError(f"{path} runs with backend {wanted!r} (or 'auto'), not {backend!r}")
    if path.suffix == ".onnx":
        runtime: Runtime = OrtRuntime(path, device, threads=threads)
        metadata = runtime.metadata
    else:
        from .export.runtimes import TensorRTRuntime

        runtime = TensorRTRuntime(path, device)
        metadata = runtime.info.onnx_metadata
    config = config_from_metadata(metadata)
    check_task(config.arch, "quality", str(path))
    config.thresholds = _thresholds(config.thresholds, thresholds)
    return QualityModel(None, config, metadata.get("model", path.stem), device, runtime, file=path)


def _as_list(inputs: Any) -> list[Any]:
    if isinstance(inputs, (str, os.PathLike, bytes, np.ndarray, FundusImage)) or hasattr(inputs, "getbands"):
        return [inputs]  # one image (hasattr: a PIL image, without importing PIL here)
    return list(inputs)


def _prefetch(pool: ThreadPoolExecutor, fn: Callable, items: Iterable, depth: int) -> Iterator:
    """Like pool.map, but keeps at most ``depth`` items in flight so memory stays bounded."""
    pending: deque[Future] = deque()
    for item in items:
        pending.append(pool.submit(fn, item))
        if len(pending) >= depth:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


def _chunks(iterator: Iterator, size: int) -> Iterator[list]:
    chunk = []
    for item in iterator:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _failed(result: ScoreResult, error: str, started: float) -> tuple[ScoreResult, None]:
    result.error = error
    result.timing_ms["total"] = _ms(started)
    return result, None


def _ms(started: float) -> float:
    return (time.perf_counter() - started) * 1000.0


def load_enhancer(
    name_or_path: str | os.PathLike | None = None, device: str | torch.device = "cpu", *, threads: int | None = None
):
    """The enhancer (CLEAQ-DR's IQE): the shipped one (``cleaq_iqe_cpu``), a registered name, a .safetensors
    file from ``pyfundus train --task iqe`` (or a joint run's ``enhancer.safetensors``) or its ONNX export.
    Returns a :class:`pyfundus.enhance.Enhancer`; ``threads``: CPU threads for the model."""
    from .enhance import DEFAULT_ENHANCER, Enhancer
    from .models.cleaq_iqe import EnhancedOnly

    name_or_path = DEFAULT_ENHANCER if name_or_path is None else os.fspath(name_or_path)
    device = resolve_device(device)
    if threads:
        torch.set_num_threads(threads)
    exported = _exported(name_or_path, "enhance", device, threads)
    if exported is not None:
        return Enhancer(None, *exported)
    network, config, name, file = load_network(name_or_path, "enhance")
    if not config.trained:
        warnings.warn(f"enhancer {name!r} has no trained weights: it returns each capture unchanged",
                      UntrainedModelWarning, stacklevel=2)  # fmt: skip
    wrapped = EnhancedOnly(network.eval())
    return Enhancer(wrapped, config, name, TorchRuntime(wrapped, device, "fp32"), file)


def load_grader(
    name_or_path: str | os.PathLike | None = None, device: str | torch.device = "cpu", *, threads: int | None = None
):
    """A DR grader you trained (``pyfundus train --task dr`` or ``--task joint``), as a .safetensors file or its
    ONNX export. pyfundus ships none (no DR-labelled photos could be used here): without a trained file this
    raises :class:`pyfundus.dr_grader.NoGraderError`, whose message says how to train one. Returns a
    :class:`pyfundus.dr_grader.Grader`."""
    from .dr_grader import TRAIN_HINT, Grader, NoGraderError

    if name_or_path is None or is_model(os.fspath(name_or_path)):
        raise NoGraderError(TRAIN_HINT)
    name_or_path = os.fspath(name_or_path)
    device = resolve_device(device)
    if threads:
        torch.set_num_threads(threads)
    exported = _exported(name_or_path, "grade", device, threads)
    if exported is not None:
        config, name, runtime, file = exported
        network = None
    else:
        network, config, name, file = load_network(name_or_path, "grade")
        runtime = TorchRuntime(network.eval(), device, "fp32")
    if not config.trained:
        raise NoGraderError(f"{name_or_path}: its weights are not trained. {TRAIN_HINT}")
    return Grader(network, config, name, runtime, file)


def _exported(path: str, task: str, device: torch.device, threads: int | None):
    """(config, name, runtime, file) of an ONNX export for ``task``, or None when ``path`` is not one."""
    if Path(path).suffix.lower() != ".onnx":
        return None
    from .export.onnx import config_from_metadata
    from .export.runtimes import OrtRuntime

    if not Path(path).exists():
        raise FileNotFoundError(f"{path}: no such file")
    runtime = OrtRuntime(Path(path), device, threads=threads)
    config = config_from_metadata(runtime.metadata)
    check_task(config.arch, task, path)
    return config, runtime.metadata.get("model", Path(path).stem), runtime, Path(path)

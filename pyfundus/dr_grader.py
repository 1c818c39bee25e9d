"""Grading diabetic retinopathy with a grader you trained: ``pyfundus grade`` and ``load_grader().grade()``.

pyfundus ships **no** DR grader: no photographs with DR grades could be used to train one here, and a grader
trained on synthetic lesions must never grade patients. Train one on your own labelled photos (EyeQ,
Messidor, APTOS, ...) with ``pyfundus train --task dr`` (or the CLEAQ-DR stages, ``--task joint``), check it
with ``pyfundus eval --task dr``, then grade with it. A model file from ``--task joint`` enhances each image
before grading it and also gives the quality class its IQA part assigns.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from .export.runtimes import Runtime
from .io import FundusImage, ImageReadError, read_image, source_name
from .paths import sha256_file
from .preprocess import NoFundusError, preprocess
from .verdicts import CLASSES
from .weights import ModelConfig

__all__ = ["TRAIN_HINT", "GradeResult", "Grader", "NoGraderError"]

TRAIN_HINT = (
    "pyfundus ships no DR grader (no DR-labelled photographs could be used to train one). Train one on your own "
    "labelled photos, e.g. EyeQ (Label_EyeQ_train.csv: image, quality, DR_grade), Messidor (Image name, "
    "Retinopathy grade) or APTOS (id_code, diagnosis):\n"
    "  pyfundus train --task dr --data Label_EyeQ_train.csv --out runs/dr\n"
    "  pyfundus eval --task dr --model runs/dr/model.safetensors --data Label_EyeQ_test.csv\n"
    "  pyfundus grade --model runs/dr/model.safetensors PHOTOS...\n"
    "(or the three CLEAQ-DR stages: --task iqa, --task iqe, then --task joint --init iqa=... --init iqe=...)"
)


class NoGraderError(ValueError):
    """No trained grader was given: the message says how to train one."""


@dataclass
class GradeResult:
    path: str | None
    grade: int | None = None
    grade_name: str | None = None
    probabilities: dict[str, float] = field(default_factory=dict)
    quality: str | None = None  # the IQA part's class of the image (joint models)
    quality_probabilities: dict[str, float] = field(default_factory=dict)
    sha256: str | None = None
    model: str | None = None
    model_sha256: str | None = None
    timing_ms: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path, "grade": self.grade, "grade_name": self.grade_name,
            "probabilities": {k: round(v, 4) for k, v in self.probabilities.items()}, "quality": self.quality,
            "quality_probabilities": {k: round(v, 4) for k, v in self.quality_probabilities.items()},
            "sha256": self.sha256, "model": self.model, "model_sha256": self.model_sha256,
            "timing_ms": {k: round(v, 2) for k, v in self.timing_ms.items()}, "warnings": self.warnings,
            "error": self.error,
        }  # fmt: skip


class Grader:
    def __init__(self, network: torch.nn.Module | None, config: ModelConfig, name: str, runtime: Runtime, file: Path):
        self.network = network  # the torch network (None for an ONNX file)
        self.config = config
        self.name = name
        self.runtime = runtime
        self.file = file
        self.sha256 = sha256_file(file)
        self.grades = list(config.classes) or [str(i) for i in range(self._num_classes())]

    def _num_classes(self) -> int:
        return int(self.network.num_classes) if self.network is not None else len(self.config.classes)

    def __repr__(self) -> str:
        return f"Grader({self.name!r}, {len(self.grades)} grades, {self.runtime.describe()})"

    def grade(self, inputs: Any, *, batch_size: int = 8, progress: Callable[[int], None] | None = None) -> list[GradeResult]:
        """One GradeResult per input, in order; an unreadable image is that result's ``error``."""
        items = [inputs] if isinstance(inputs, (str, os.PathLike, bytes, np.ndarray, FundusImage)) else list(inputs)
        results: list[GradeResult] = []
        for start in range(0, len(items), batch_size):
            chunk = [self._prepare(item) for item in items[start : start + batch_size]]
            ready = [(r, x) for r, x in chunk if x is not None]
            if ready:
                started = time.perf_counter()
                outputs = self.runtime(torch.from_numpy(np.stack([x for _, x in ready])))
                per_image = (time.perf_counter() - started) * 1000.0 / len(ready)
                grades = torch.softmax(outputs["dr_logits"].float(), dim=1).cpu().numpy()
                quality = outputs.get("quality_logits")
                quality = None if quality is None else torch.softmax(quality.float(), dim=1).cpu().numpy()
                for i, (result, _) in enumerate(ready):
                    result.grade = int(grades[i].argmax())
                    result.grade_name = self.grades[result.grade]
                    result.probabilities = dict(zip(self.grades, grades[i].tolist()))
                    if quality is not None:
                        result.quality = CLASSES[int(quality[i].argmax())]
                        result.quality_probabilities = dict(zip(CLASSES, quality[i].tolist()))
                    result.timing_ms["model"] = per_image
            results.extend(r for r, _ in chunk)
            if progress is not None:
                progress(len(chunk))
        return results

    def _prepare(self, item: Any) -> tuple[GradeResult, np.ndarray | None]:
        path = source_name(item)
        result = GradeResult(path=path, model=self.name, model_sha256=self.sha256)
        started = time.perf_counter()
        try:
            image = item if isinstance(item, FundusImage) else read_image(item, min_side=self.config.input.size)
            result.sha256 = image.sha256
            result.warnings.extend(image.warnings)
            tensor, _ = preprocess(image.pixels, self.config.input)
        except ImageReadError as exc:
            result.error = str(exc)
            return result, None
        except NoFundusError as exc:
            result.error = f"{path or 'image'}: {exc}"
            return result, None
        result.timing_ms["read"] = (time.perf_counter() - started) * 1000.0
        return result, tensor

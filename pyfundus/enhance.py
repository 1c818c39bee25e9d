"""Enhancing captures at their own resolution: ``pyfundus enhance`` and ``load_enhancer().enhance()``.

The enhancer (CLEAQ-DR's IQE) works on the field-of-view square at its input size (512 px for the shipped
model). A capture is larger (2304x1728 and more), and users of enhancement models complain of outputs forced
to 512 px. So the network's *correction* (its output minus its input) is predicted at model size, resized to
the capture's field of view and added there: low-frequency corrections (illumination, colour, spots) apply
at full size, and the capture's own fine detail stays instead of being replaced by a 512 px rendering. Only
the retina changes: the frame outside the field of view, a cut-off circle's black bands, burned-in text, are
left as they were (enhancement never draws a full circle where the camera saw none).

The record of each image (``EnhanceResult.to_dict()``, ``pyfundus enhance --json``): path, output file,
sha256 of the bytes read, size, model and its sha256, timings, warnings, error.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import cv2
import numpy as np
import torch

from .export.runtimes import Runtime
from .io import FundusImage, ImageReadError, read_image, source_name
from .paths import sha256_file
from .preprocess import NoFundusError, crop_to_field_of_view, find_field_of_view
from .weights import InputSpec, ModelConfig

log = logging.getLogger(__name__)

__all__ = ["DEFAULT_ENHANCER", "EnhanceResult", "Enhancer", "apply_correction", "output_name"]

DEFAULT_ENHANCER = "cleaq_iqe_cpu"
JPEG_QUALITY = 95


@dataclass
class EnhanceResult:
    path: str | None
    output: str | None = None  # the file written (None: not written, or failed)
    pixels: np.ndarray | None = None  # the enhanced capture, RGB uint8, the input's size (not in the record)
    sha256: str | None = None
    width: int | None = None
    height: int | None = None
    model: str | None = None
    model_sha256: str | None = None
    trained: bool = True
    timing_ms: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path, "output": self.output, "sha256": self.sha256, "width": self.width,
            "height": self.height, "model": self.model, "model_sha256": self.model_sha256, "trained": self.trained,
            "timing_ms": {k: round(v, 2) for k, v in self.timing_ms.items()}, "warnings": self.warnings,
            "error": self.error,
        }  # fmt: skip


class Enhancer:
    """An enhancer ready to use: its runtime (torch, or ONNX Runtime for an exported file) and input contract."""

    def __init__(self, network: torch.nn.Module | None, config: ModelConfig, name: str, runtime: Runtime, file: Path | None):
        self.network = network  # EnhancedOnly(...) around the trained IQE; None for an ONNX file
        self.config = config
        self.name = name
        self.runtime = runtime
        self.file = file
        self.sha256 = sha256_file(file) if file is not None else None

    @property
    def input(self) -> InputSpec:
        return self.config.input

    @property
    def trained(self) -> bool:
        return self.config.trained

    def __repr__(self) -> str:
        return f"Enhancer({self.name!r}, arch={self.config.arch}, {self.runtime.describe()}, size {self.input.size})"

    def enhance_square(self, square: np.ndarray) -> np.ndarray:
        """The network on a field-of-view square already at model size: RGB uint8 in, RGB uint8 out."""
        batch = torch.from_numpy(np.ascontiguousarray(square.transpose(2, 0, 1))).float().div_(255.0)[None]
        out = self.runtime(batch)["enhanced"][0].float().clamp(0, 1).cpu().numpy().transpose(1, 2, 0)
        return np.round(out * 255.0).astype(np.uint8)

    def enhance_array(self, rgb: np.ndarray, timing: dict[str, float] | None = None, *, fov=None) -> np.ndarray:
        """An RGB uint8 capture of any size, enhanced at its own size (module docstring). ``fov``: its field of
        view when already known (a degraded copy of a photo whose circle was found on the clean original: a
        heavily darkened copy may hide its rim from the detector)."""
        timing = {} if timing is None else timing
        started = time.perf_counter()
        fov = find_field_of_view(rgb) if fov is None else fov
        square = crop_to_field_of_view(rgb, fov)  # black outside the circle, as the network was trained
        side = square.shape[0]
        box = (int(round(fov.cx - (side - 1) / 2)), int(round(fov.cy - (side - 1) / 2)), side)
        disc = np.zeros((side, side), np.uint8)
        cv2.circle(disc, (int(round(fov.cx - box[0])), int(round(fov.cy - box[1]))), int(round(fov.radius)), 1, -1)
        small = cv2.resize(square, (self.input.size,) * 2, interpolation=cv2.INTER_AREA)
        timing["preprocess"] = _ms(started)
        started = time.perf_counter()
        enhanced = self.enhance_square(small)
        timing["model"] = _ms(started)
        started = time.perf_counter()
        out = apply_correction(rgb, small, enhanced, box, disc)
        timing["correction"] = _ms(started)
        return out

    def enhance(
        self,
        inputs: Any,
        *,
        out_dir: str | os.PathLike | None = None,
        keep_pixels: bool = False,
        progress: Callable[[int], None] | None = None,
    ) -> list[EnhanceResult]:
        """Enhance images given as paths, bytes, numpy arrays, PIL images or FundusImage objects.

        ``out_dir``: write each enhanced capture there (``output_name``: the input's name, JPEG for JPEG
        inputs, PNG otherwise). ``keep_pixels``: keep the enhanced pixels in each result (default: only when
        nothing is written). One result per input, in order; a failure is that result's ``error``.
        """
        items = [inputs] if isinstance(inputs, (str, os.PathLike, bytes, np.ndarray, FundusImage)) else list(inputs)
        folder = Path(out_dir) if out_dir is not None else None
        if folder is not None:
            folder.mkdir(parents=True, exist_ok=True)
        results = []
        for item in items:
            results.append(self._one(item, folder, keep_pixels or folder is None))
            if progress is not None:
                progress(1)
        return results

    def _one(self, item: Any, folder: Path | None, keep: bool) -> EnhanceResult:
        path = source_name(item)
        result = EnhanceResult(path=path, model=self.name, model_sha256=self.sha256, trained=self.trained)
        started = time.perf_counter()
        try:
            image = item if isinstance(item, FundusImage) else read_image(item)
            result.sha256, result.height, result.width = image.sha256, *image.pixels.shape[:2]
            result.warnings.extend(image.warnings)
            result.timing_ms["read"] = _ms(started)
            pixels = self.enhance_array(image.pixels, result.timing_ms)
            if folder is not None:
                written = time.perf_counter()
                result.output = str(write_image(pixels, folder / output_name(path or "image.png", image), path))
                result.timing_ms["write"] = _ms(written)
            if keep:
                result.pixels = pixels
        except ImageReadError as exc:
            result.error = str(exc)
        except NoFundusError as exc:
            result.error = f"{path or 'image'}: {exc}"
        except OSError as exc:
            result.error = f"{path or 'image'}: could not write the enhanced image ({exc})"
        result.timing_ms["total"] = _ms(started)
        if not self.trained:
            result.warnings.append("untrained enhancer: the image is returned unchanged")
        return result


def apply_correction(
    rgb: np.ndarray, small: np.ndarray, enhanced: np.ndarray, box: tuple[int, int, int], disc: np.ndarray
) -> np.ndarray:
    """``rgb`` with the model-size correction ``enhanced - small`` resized to the field of view's square
    ``box`` (x0, y0, side) and added where ``disc`` (uint8, the FOV circle in that square) is set; the rest
    untouched. In whole grey levels (int16), with saturation: 20 ms for a 2000 px field where float32 took 1 s."""
    x0, y0, side = box
    correction = enhanced.astype(np.int16) - small.astype(np.int16)
    correction = cv2.resize(correction, (side, side), interpolation=cv2.INTER_LINEAR)
    h, w = rgb.shape[:2]
    sx0, sy0, sx1, sy1 = max(x0, 0), max(y0, 0), min(x0 + side, w), min(y0 + side, h)
    out = rgb.copy()
    if sx1 <= sx0 or sy1 <= sy0:
        return out
    region = out[sy0:sy1, sx0:sx1]
    inside = disc[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0]
    patch = np.ascontiguousarray(correction[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0])
    corrected = cv2.add(np.ascontiguousarray(region), patch, dtype=cv2.CV_8U)
    np.copyto(region, corrected, where=inside[..., None].astype(bool))
    return out


def output_name(path: str, image: FundusImage | None = None) -> str:
    """The enhanced copy's file name: the input's stem, .jpg for a JPEG input, .png for everything else."""
    stem = Path(path).stem or "image"
    jpeg = Path(path).suffix.lower() in (".jpg", ".jpeg") or (image is not None and image.format == "JPEG")
    return f"{stem}.jpg" if jpeg else f"{stem}.png"


def write_image(rgb: np.ndarray, target: Path, source: str | None) -> Path:
    """Write ``rgb`` to ``target`` (JPEG quality 95 or PNG), atomically, never over the file it came from."""
    if source is not None and os.path.exists(source) and os.path.exists(target) and os.path.samefile(source, target):
        raise OSError(f"{target} is the input itself; choose another output folder")
    bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    suffix = target.suffix.lower()
    params = [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY] if suffix == ".jpg" else [cv2.IMWRITE_PNG_COMPRESSION, 3]
    ok, data = cv2.imencode(suffix, bgr, params)
    if not ok:
        raise OSError(f"could not encode {target.name}")
    temporary = target.with_name(f".{target.name}.part")
    temporary.write_bytes(data.tobytes())
    temporary.replace(target)
    return target


def _ms(started: float) -> float:
    return (time.perf_counter() - started) * 1000.0

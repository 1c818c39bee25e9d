"""How a clean fundus camera renders a retina: the label-neutral part of a capture's look.

Cameras render the same retina differently, and none of it is a defect a grader
would mark down: colour balance and saturation, the tone curve (some cameras give
flat, washed-out photos, others punchy ones), optical softness and sensor
resolution (a 3504 px HRF photo shrunk to the model's 384 px is crisper than
what most cameras resolve), in-camera sharpening, a little light fall-off at the
rim, JPEG storage, sensor grain, and a 4:3 sensor cutting the top and bottom of
the circle. A model trained on a handful of source photos that never saw this
spread learns "looks like my training photos" instead of "is degraded", and
grades clean captures from unfamiliar cameras Reject.

:meth:`Camera.draw` draws a rendering from ranges of clean captures across
cameras, each bounded well inside what the degradations of
:mod:`pyfundus.data.degrade` label as harm (softness stays within the blur
allowance there, ``BLUR_ALLOWANCE``), so a rendering never passes for a defect
and keeps its image's label.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import cv2
import numpy as np

from .degrade import BLUR_ALLOWANCE

__all__ = ["Camera", "WORKING_SIDE"]

WORKING_SIDE = 512  # the field-of-view square the ranges below are written for
EXPOSURE_RANGE = (0.72, 1.32)  # a rendering's mean level relative to the source's (the exposure allowances)


@dataclass(frozen=True)
class Camera:
    """One camera's rendering of a clean fundus (sizes in pixels of a 512 px field-of-view square).

    ``Camera()`` is the identity: it returns the image unchanged.
    """

    gains: tuple[float, float, float] = (1.0, 1.0, 1.0)  # white balance, per RGB channel
    gamma: float = 1.0
    saturation: float = 1.0
    contrast: float = 1.0  # tone-curve slope about the retina's mean level (< 1: flat, washed out)
    brightness: float = 0.0  # shift of that mean level, in [0, 1] units
    softness: float = 0.0  # optical blur, Gaussian sigma in px
    resolution: float = float(WORKING_SIDE)  # field-of-view diameter the sensor resolves, px
    sharpening: float = 0.0  # in-camera unsharp-mask amount
    rim_falloff: float = 0.0  # light lost at the rim of the field (the camera's own vignetting)
    noise: float = 0.0  # sensor grain, std in [0, 1] units
    noise_seed: int = 0
    jpeg_quality: int = 0  # 0: stored losslessly
    frame_cut: tuple[float, float] = (0.0, 0.0)  # share of the square cut off at the top and the bottom

    @classmethod
    def draw(cls, rng: np.random.Generator) -> "Camera":
        """A random camera, from ranges of clean captures across fundus cameras."""
        gains = (rng.uniform(0.85, 1.15), rng.uniform(0.78, 1.22), rng.uniform(0.6, 1.5))
        sharp = rng.random() < 0.3
        stored = rng.random() < 0.5
        framed = rng.random() < 0.5
        cut, tilt = rng.uniform(0.0, 0.17), rng.uniform(-0.03, 0.03)
        return cls(
            gains=tuple(float(g) for g in gains),
            gamma=float(rng.uniform(0.82, 1.22)),
            saturation=float(rng.uniform(0.72, 1.22)),
            contrast=float(rng.uniform(0.72, 1.12)),
            brightness=float(rng.uniform(-0.06, 0.1)),
            softness=float(rng.uniform(0.0, BLUR_ALLOWANCE)),
            resolution=float(rng.uniform(400.0, 640.0)),
            sharpening=float(rng.uniform(0.2, 0.8)) if sharp else 0.0,
            rim_falloff=float(rng.uniform(0.0, 0.15)),
            noise=float(rng.uniform(0.0, 0.012)),
            noise_seed=int(rng.integers(2**31 - 1)),
            jpeg_quality=int(rng.integers(72, 96)) if stored else 0,
            frame_cut=(max(0.0, float(cut + tilt)), max(0.0, float(cut - tilt))) if framed else (0.0, 0.0),
        )

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "Camera":
        """The camera of :meth:`to_dict` (JSON lists back to tuples)."""
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})

    def render(self, img: np.ndarray) -> np.ndarray:
        """``img`` (uint8 RGB, a field-of-view square) as this camera renders it; black stays black."""
        if self == Camera():
            return img
        unit = min(img.shape[:2]) / WORKING_SIDE
        inside = img.max(axis=2) > 8  # the field of view: its black surround stays black
        x = img.astype(np.float32) / 255.0
        x = self._optics(x, unit)
        x = self._tone(x, inside)
        x = self._rim(x)
        if self.noise > 0:
            grain = np.random.default_rng(self.noise_seed).standard_normal(x.shape, dtype=np.float32)
            x = x + np.float32(self.noise) * grain
        x = np.clip(x, 0.0, 1.0) * inside[..., None]
        out = np.round(x * 255.0).astype(np.uint8)
        out = self._frame(out)
        if self.jpeg_quality:
            ok, buffer = cv2.imencode(".jpg", out[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, self.jpeg_quality])
            decoded = cv2.imdecode(buffer, cv2.IMREAD_COLOR)[..., ::-1]
            out = np.ascontiguousarray(decoded * (out.max(axis=2, keepdims=True) > 0))  # no ringing in the black
        return out

    def _optics(self, x: np.ndarray, unit: float) -> np.ndarray:
        h, w = x.shape[:2]
        if self.resolution < WORKING_SIDE:  # the sensor resolves less than the square holds
            f = self.resolution / WORKING_SIDE
            small = cv2.resize(x, (max(8, round(w * f)), max(8, round(h * f))), interpolation=cv2.INTER_AREA)
            x = cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)
        if self.softness > 0:
            x = cv2.GaussianBlur(x, (0, 0), self.softness * unit)
        if self.sharpening > 0:
            smooth = cv2.GaussianBlur(x, (0, 0), 1.5 * unit)
            x = x + np.float32(self.sharpening) * (x - smooth)
        return x

    def _tone(self, x: np.ndarray, inside: np.ndarray) -> np.ndarray:
        before = float(x[inside].mean()) if inside.any() else 0.4
        x = np.clip(x * np.asarray(self.gains, np.float32), 0.0, 1.0)
        grey = x.mean(axis=2, keepdims=True)
        x = grey + (x - grey) * np.float32(self.saturation)
        x = np.clip(x, 0.0, 1.0) ** np.float32(self.gamma)
        level = np.float32(x[inside].mean()) if inside.any() else np.float32(0.4)
        x = level + (x - level) * np.float32(self.contrast) + np.float32(self.brightness)
        # The camera's auto-exposure: its rendering may be brighter or darker than another's, within
        # EXPOSURE_RANGE of the retina's mean level; more would be an exposure defect, not a look.
        after = float(x[inside].mean()) if inside.any() else before
        if before > 0 and after > 0:
            lo, hi = EXPOSURE_RANGE
            x = x * np.float32(min(max(after / before, lo), hi) * before / after)
        return x

    def _rim(self, x: np.ndarray) -> np.ndarray:
        if self.rim_falloff <= 0:
            return x
        h, w = x.shape[:2]
        yy, xx = np.ogrid[:h, :w]
        rho2 = ((xx - (w - 1) / 2) ** 2 + (yy - (h - 1) / 2) ** 2) / (min(h, w) / 2) ** 2
        gain = 1.0 - np.float32(self.rim_falloff) * np.clip(rho2, 0.0, 1.0).astype(np.float32) ** 2
        return x * gain[..., None]

    def _frame(self, out: np.ndarray) -> np.ndarray:
        top, bottom = (int(round(c * out.shape[0])) for c in self.frame_cut)
        if top or bottom:
            out = out.copy()
            out[:top] = 0
            out[out.shape[0] - bottom :] = 0
        return out

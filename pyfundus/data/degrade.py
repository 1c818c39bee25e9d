"""Fundus degradation simulator with exact replay.

Turns a clean fundus photograph into a realistic poor capture and records every
random number it drew, so that :func:`replay` regenerates the degraded image
bit-exactly (the published cofe-Net replay script cannot replay its spots;
here spot centres, radii and kernels are all in the record). Each step also
carries a *cause* the operator can act on (``pyfundus.verdicts.CAUSES``)
and a *severity*: how much it harms gradability.

Every type is a :class:`Degradation` with ``draw(rng, shape, strength) ->
params`` (JSON-plain values) and ``apply(img, mask, params) -> img`` on float32
RGB in [0, 1]. ``strength`` in [0, 1] maps monotonically onto the parameter
range (0 leaves the image (nearly) unchanged, 1 is the strongest published or
clinically plausible setting); for a fixed seed only the magnitudes change with
strength, never the positions, angles or colours, so a stronger draw is the
same defect, worse. Spatial sizes are given at 512 px and scale with the
shorter image side. Images are clipped to [0, 1] after every step and the FOV
mask is applied once, at the end (as cofe-Net does).

Types, causes and severity mappings (severity in [0, 1], computed from the
params; "vessel contrast" is the contrast a Gaussian vessel profile of
std 1.5 px at 512 (a small vessel) keeps under a Gaussian blur of std sigma
beyond the camera allowance: ``1.5 / hypot(1.5, sqrt(sigma^2 - a^2))`` with
``a = BLUR_ALLOWANCE`` (1.2 px at 512, 0.9 px at the model's 384); severity =
1 - kept contrast). The allowances are what a grader accepts as a camera's own
rendering at the model's input size (pyfundus.data.camera draws renderings
inside them): a little softness, a flatter or brighter tone curve. Severity
counts only what goes beyond them, so a soft but clean camera is not "blurred".

==============  ============  ==========================================================
type            cause         severity
==============  ============  ==========================================================
illumination    illumination  1 - (1-s_colour)(1-s_halo)(1-s_hole): contrast loss below
                              0.85 + 0.5 |log2 brightness| beyond 0.1 + 0.25 saturation
                              loss below 0.85; halo up to 0.35 as its inner edge reaches
                              into the field; dark hole up to 0.7 by depth and area
spots           artefacts     brightness-weighted spot area / 15 % of the FOV area
blur            blur          vessel contrast lost, sigma = std of the kernel actually
                              used (the published 1-7 px kernels cap it near 0.4)
defocus         blur          vessel contrast lost, sigma = disc radius / 2
motion_blur     blur          vessel contrast lost, sigma = the PSF's orientation-averaged
                              std (length / sqrt(12) / sqrt(2) for a straight stroke)
haze            haze          1 - (mean veil transmission over the FOV x vessel contrast
                              kept by its scatter blur)
underexposure   exposure      stops lost at a mid-tone (0.4) beyond 0.45, / 2.55 stops
overexposure    exposure      rise of a green mid-tone (0.35) beyond 0.11 / its headroom
eyelash_shadow  occlusion     mean light lost over the FOV / 0.3
eyelid_shadow   occlusion     mean light lost over the FOV / 0.4
small_pupil     illumination  mean light lost over the FOV / 0.6
partial_shadow  illumination  mean light lost over the FOV / 0.5
vignetting      illumination  mean light lost over the FOV / 0.45
glare           artefacts     mean added light over the FOV / 0.12
off_centre      framing       (FOV fraction cut off by the frame + light lost) / 0.35
jpeg            artefacts     (45 - quality) / 50
noise           artefacts     noise std at a mid-tone / 0.12
==============  ============  ==========================================================

The divisors are the amounts at which a grader would typically reject the
image (a third to a half of the field lost, vessels gone). The record's overall
severity is ``1 - prod(1 - s_i)`` (independent harms compound) and
``causes[c]`` is the largest step severity of cause ``c`` (0 when absent).

Replay is bit-exact on the same platform and library versions (OpenCV's and
NumPy's floating-point kernels may differ between CPU families).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from typing import Any, Callable, ClassVar

import cv2
import numpy as np

from ..preprocess import FieldOfView, find_field_of_view
from ..verdicts import CAUSES

__all__ = [
    "COFE_CODES",
    "DEGRADATIONS",
    "TYPES",
    "Degradation",
    "DegradationRecord",
    "cofe_all_three",
    "cofe_degrade",
    "cofe_one_or_two",
    "degrade",
    "degraded_mask",
    "draw_step",
    "fov_mask",
    "overall_severity",
    "replay",
]

Params = dict[str, Any]
Shape = tuple[int, int]
Step = dict[str, Any]

# cofe-Net codes as its generator reads them: last digit illumination, middle
# spots, first blur ('001' = illumination only, '111' = all three).
COFE_CODES = ("001", "010", "011", "100", "101", "110", "111")
_COFE_BITS = (("illumination", 2), ("spots", 1), ("blur", 0))

_REF_SIDE = 512  # the published parameters are in pixels of a 512 x 512 image
_VESSEL_STD = 1.5  # px at 512: the std of a small vessel's cross-profile
_MID_TONE = 0.4  # typical fundus luminance inside the FOV
_LUMA = np.array([0.299, 0.587, 0.114], np.float32)  # ITU-R 601, as PIL's "L"
_SEVERITY_SIDE = 96  # raster on which spatial severities are integrated
# Optical softness a grader accepts as the camera's own (Gaussian sigma, px at 512; 0.9 px at the
# model's 384): blur severities count only the blur beyond it (see the module docstring).
BLUR_ALLOWANCE = 1.2


# ----------------------------------------------------------------------------
# small helpers


def _unit(shape: Shape) -> float:
    """Pixels per published pixel: spatial sizes scale with the shorter side."""
    return min(shape) / _REF_SIDE


def _odd(n: float) -> int:
    k = max(1, int(n))
    return k if k % 2 else k + 1


def _fit_ksize(sigma: float) -> int:
    """Gaussian kernel that holds +-3 sigma (what the published blur lacks)."""
    return 2 * math.ceil(3 * sigma) + 1 if sigma > 0 else 1


def _smoothstep(e0: float, e1: float, x: np.ndarray) -> np.ndarray:
    t = np.clip((x - e0) / (e1 - e0), 0.0, 1.0)
    return t * t * (3 - 2 * t)


def _clip(img: np.ndarray) -> np.ndarray:
    return np.clip(img, 0.0, 1.0, out=img)


def _luma(img: np.ndarray) -> np.ndarray:
    return img @ _LUMA


def _vessel_severity(sigma: float, shape: Shape) -> float:
    """Share of a small vessel's contrast lost to a Gaussian blur of std ``sigma`` beyond the camera allowance."""
    unit = _unit(shape)
    w = _VESSEL_STD * unit
    beyond = math.sqrt(max(0.0, sigma * sigma - (BLUR_ALLOWANCE * unit) ** 2))
    return float(1 - w / math.hypot(w, beyond))


def _ratio(value: float, full: float) -> float:
    return float(min(1.0, max(0.0, value / full)))


def _beyond(value: float, allowance: float, full: float) -> float:
    """``value`` past a camera's ``allowance``, as a share of the way from it to ``full`` (rejection)."""
    return _ratio(value - allowance, full - allowance)


@dataclass(frozen=True)
class _Disc:
    """FOV circle used to place eye-fixed effects (lids, pupil, veil)."""

    cx: float
    cy: float
    r: float

    def grid(self, shape: Shape) -> tuple[np.ndarray, np.ndarray]:
        """(x - cx) / r and (y - cy) / r as broadcastable float32 arrays."""
        h, w = shape
        x = (np.arange(w, dtype=np.float32) - np.float32(self.cx)) / np.float32(self.r)
        y = (np.arange(h, dtype=np.float32) - np.float32(self.cy)) / np.float32(self.r)
        return x[None, :], y[:, None]


def _disc_of(mask: np.ndarray) -> _Disc:
    # The bounding box gives the circle of a whole disc and of one clipped at
    # top and bottom (the usual camera frame) alike.
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        raise ValueError("the FOV mask is empty")
    h, w = rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1
    return _Disc((cols[0] + cols[-1]) / 2, (rows[0] + rows[-1]) / 2, max(h, w) / 2)


def _ideal_disc(shape: Shape) -> _Disc:
    h, w = shape
    return _Disc((w - 1) / 2, (h - 1) / 2, min(h, w) / 2)


def _severity_raster(shape: Shape) -> tuple[Shape, _Disc, np.ndarray]:
    """Small raster of the frame with its inscribed FOV, for integrating severities."""
    f = _SEVERITY_SIDE / max(shape)
    small = (max(8, round(shape[0] * f)), max(8, round(shape[1] * f)))
    disc = _ideal_disc(small)
    x, y = disc.grid(small)
    return small, disc, (x * x + y * y) <= 1.0


def _light_lost(shape: Shape, gain: Callable[[Shape, _Disc], np.ndarray]) -> float:
    """Mean of 1 - gain over the inscribed FOV (gain may be HxW or HxWx3)."""
    small, disc, inside = _severity_raster(shape)
    g = gain(small, disc)
    if g.ndim == 3:
        g = _luma(g) / _LUMA.sum()
    return float(np.mean(1 - g[inside]))


def _smooth(values: np.ndarray, ksize: tuple[int, int], sigma: float, factor: int = 4) -> np.ndarray:
    """Gaussian blur of a smooth field at 1/factor resolution.

    The cofe-Net halo and hole use kernels of up to ~380 px; the blurred field
    has no detail at that scale, so blurring a 4x smaller copy and upsampling
    is indistinguishable and ~40x cheaper.
    """
    h, w = values.shape
    small = cv2.resize(values, (max(1, w // factor), max(1, h // factor)), interpolation=cv2.INTER_AREA)
    k = (_odd(ksize[0] / factor), _odd(ksize[1] / factor))
    small = cv2.GaussianBlur(small, k, sigma / factor)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)


def _circle(shape: Shape, cx: float, cy: float, radius: float) -> np.ndarray:
    h, w = shape
    yy, xx = np.ogrid[:h, :w]
    return ((xx - cx) ** 2 + (yy - cy) ** 2 <= radius * radius).astype(np.float32)


# ----------------------------------------------------------------------------
# the degradation interface


class Degradation:
    """One degradation type: a draw of its parameters and their application."""

    name: ClassVar[str]
    cause: ClassVar[str]

    def draw(self, rng: np.random.Generator, shape: Shape, strength: float | None) -> Params:
        """JSON-plain params for ``strength`` in [0, 1]; the cofe-Net types
        (illumination, spots, blur) also take None: the published sampling."""
        raise NotImplementedError

    def apply(self, img: np.ndarray, mask: np.ndarray, params: Params) -> np.ndarray:
        """float32 HxWx3 in [0, 1] -> degraded copy (clipped to [0, 1] by the caller)."""
        raise NotImplementedError

    def severity(self, params: Params, shape: Shape) -> float:
        raise NotImplementedError

    def warp_mask(self, mask: np.ndarray, params: Params) -> np.ndarray:
        """The FOV mask after this step (only framing moves it)."""
        return mask

    def _strength(self, strength: float | None) -> float:
        if strength is None:
            raise ValueError(f"{self.name!r} needs a strength in [0, 1]")
        if not 0.0 <= strength <= 1.0:
            raise ValueError(f"strength must be in [0, 1], got {strength}")
        return float(strength)


# ----------------------------------------------------------------------------
# cofe-Net: illumination, spots, blur

# Halo tints of the published generator (its two reachable ring colours).
_HALO_TINTS = ((141 / 255, 238 / 255, 238 / 255), (177 / 255, 195 / 255, 147 / 255))


class Illumination(Degradation):
    """Colour/exposure jitter, a bright halo ring and a dark hole (cofe-Net).

    Strength scales the jitter (1 + s * U(-0.3, 0.2) brightness, 1 + s *
    U(-0.4, 0.4) contrast and saturation) and the halo and hole amplitudes;
    strength 1 and strength None (published) are the same distribution.
    """

    name = "illumination"
    cause = "illumination"

    def draw(self, rng: np.random.Generator, shape: Shape, strength: float | None) -> Params:
        s = 1.0 if strength is None else self._strength(strength)
        h, w = shape
        side = min(h, w)
        brightness = 1 + s * rng.uniform(-0.3, 0.2)
        contrast = 1 + s * rng.uniform(-0.4, 0.4)
        saturation = 1 + s * rng.uniform(-0.4, 0.4)
        tint = _HALO_TINTS[int(rng.integers(2))]
        cx = int(rng.integers(w // 2 - w // 8, w // 2 + w // 8 + 1))
        cy = int(rng.integers(h // 2 - h // 8, h // 2 + h // 8 + 1))
        inner = side * rng.uniform(0.75, 1.0)
        # Outer circle: big enough to reach the frame's corners (published
        # rule), so the "ring" is in effect everything outside the inner circle.
        reach = 2 * math.hypot(max(cx, w - cx), max(cy, h - cy)) / side
        outer = side * rng.uniform(1.0, max(1.0, reach)) + abs(max(cx - w / 2, cy - h / 2) + max(w, h) / 2)
        halo_k = _odd(abs(2 * max(cx, w - cx, cy, h - cy) - inner))
        hole_d = int(rng.integers(int(0.4 * w), int(0.7 * w) + 1))
        hole_c = [int(rng.integers(w // 4, 3 * w // 4 + 1)), int(rng.integers(3 * h // 8, 5 * h // 8 + 1))]
        hole_base = rng.uniform(-0.262, -0.26)
        hole_coef = rng.uniform(0.05, 0.06)
        hole_kw = _odd(rng.integers(int(0.55 * hole_d), int(0.75 * hole_d) + 1))
        hole_kh = _odd(rng.integers(int(0.55 * hole_d), int(0.75 * hole_d) + 1))
        return {
            "brightness": float(brightness),
            "contrast": float(contrast),
            "saturation": float(saturation),
            "halo_centre": [cx, cy],
            "halo_inner": float(inner),
            "halo_outer": float(outer),
            "halo_ksize": halo_k,
            "halo_sigma": 2 / 3 * halo_k,
            "halo_tint": list(tint),
            "halo_gain": s,
            "hole_centre": hole_c,
            "hole_diameter": hole_d,
            "hole_base": float(hole_base),
            "hole_coef": float(hole_coef),
            "hole_ksize": [hole_kw, hole_kh],
            "hole_sigma": 0.8 * max(hole_kw, hole_kh),
            "hole_gain": s,
        }

    def apply(self, img: np.ndarray, mask: np.ndarray, p: Params) -> np.ndarray:
        shape = img.shape[:2]
        x = _clip(img * np.float32(p["brightness"]))
        # Contrast pivots on the mean inside the FOV: with the black surround in
        # it (as torchvision does) the pivot would depend on the frame size.
        c = np.float32(p["contrast"])
        x = _clip(c * x + (1 - c) * np.float32(_luma(x)[mask].mean()))
        sat = np.float32(p["saturation"])
        x = _clip(sat * x + (1 - sat) * _luma(x)[..., None])
        cx, cy = p["halo_centre"]
        ring = _circle(shape, cx, cy, p["halo_outer"] / 2) - _circle(shape, cx, cy, int(p["halo_inner"] / 2))
        # Ring brightness: the mean of the whole frame, as published.
        ring *= np.float32(x.mean() * p["halo_gain"])
        k = p["halo_ksize"]
        halo = _smooth(ring, (k, k), p["halo_sigma"])
        x = _clip(x + halo[..., None] * np.asarray(p["halo_tint"], np.float32))
        x = _clip(x + self._hole(x, mask, p)[..., None])
        return x

    @staticmethod
    def _hole(x: np.ndarray, mask: np.ndarray, p: Params) -> np.ndarray:
        # Depth follows the image's mean brightness, and a dark image gets no
        # hole at all (published rule), so it is computed here, not drawn.
        mean = float(x[mask].mean())
        depth = p["hole_base"] - p["hole_coef"] * mean if mean > 0.25 else 0.0
        hx, hy = p["hole_centre"]
        disc = _circle(x.shape[:2], hx, hy, int(p["hole_diameter"] / 2))
        disc *= np.float32(depth * p["hole_gain"])
        return _smooth(disc, tuple(p["hole_ksize"]), p["hole_sigma"])

    def severity(self, p: Params, shape: Shape) -> float:
        side = min(shape)
        # A camera renders flatter, brighter or paler than another without harm (pyfundus.data.camera):
        # only what goes beyond that counts.
        colour = min(
            1.0,
            max(0.0, 0.85 - p["contrast"])
            + 0.5 * max(0.0, abs(math.log2(p["brightness"])) - 0.1)
            + 0.25 * max(0.0, 0.85 - p["saturation"]),
        )
        halo = 0.35 * p["halo_gain"] * _ratio(1 - p["halo_inner"] / side, 0.25)
        depth = -p["hole_base"] + p["hole_coef"] * _MID_TONE  # at a typical mean brightness
        area = min(1.0, (p["hole_diameter"] / (0.7 * shape[1])) ** 2)
        hole = min(1.0, 2.5 * depth * area * p["hole_gain"])
        return float(1 - (1 - colour) * (1 - halo) * (1 - hole))


class Spots(Degradation):
    """Bright blurred discs (cofe-Net): dust or reflections on the optics.

    Published: 5-10 spots (training variant 5-20) of radius 1-5 % of the
    height. Brightness follows the published rule (brighter as they grow,
    0.06 to 0.21) and each is blurred with its own small kernel. The published
    generator paints discs of half the drawn radius; here the drawn radius is
    the painted one. Strength: 1 + round(19 s) spots of radius up to 1 + 4 s %.
    """

    name = "spots"
    cause = "artefacts"
    _MAX = 20

    def draw(
        self, rng: np.random.Generator, shape: Shape, strength: float | None, variant: str = "published"
    ) -> Params:
        h = shape[0]
        lo, hi = math.ceil(0.01 * h), max(math.ceil(0.01 * h), int(0.05 * h))
        if strength is None:
            n = int(rng.integers(5, (10 if _check_variant(variant) == "published" else 20) + 1))
            radii = [int(rng.integers(lo, hi + 1)) for _ in range(n)]
        else:
            s = self._strength(strength)
            radii = [max(lo, round(h * (0.01 + 0.04 * s * u))) for u in rng.uniform(0, 1, self._MAX)]
            radii = radii[: 1 + round(19 * s)]
        # Positions and kernels come from uniform fractions drawn for every
        # spot, so the random stream never depends on strength: a stronger draw
        # of the same seed adds spots and grows them, nothing else.
        fractions = rng.uniform(0, 1, (self._MAX if strength is not None else len(radii), 4))
        return {"spots": [self._spot(shape, r, f) for r, f in zip(radii, fractions)]}

    @staticmethod
    def _spot(shape: Shape, radius: int, fractions: np.ndarray) -> Params:
        h, w = shape
        u = _unit(shape)
        q = radius / (25 * u)  # the published rule is written for 25 px = 5 % of 512
        k = 14 / 25 + 1 - q
        amplitude = k * (1 - math.exp(-(0.5 + q) * 0.3 * q))
        sigma = (5 + 20 * q) * 2 * u

        def pick(lo: int, hi: int, f: float) -> int:  # uniform integer in [lo, hi]
            return lo + int(f * (max(hi, lo) - lo + 1))

        fx, fy, fkw, fkh = (float(f) for f in fractions)
        return {
            "centre": [pick(radius + 1, w - radius - 1, fx), pick(radius + 1, h - radius - 1, fy)],
            "radius": int(radius),
            "amplitude": float(amplitude),
            "ksize": [_odd(pick(int(sigma / 5), int(sigma / 4), f)) for f in (fkw, fkh)],
            "sigma": float(sigma),
        }

    def apply(self, img: np.ndarray, mask: np.ndarray, p: Params) -> np.ndarray:
        h, w = img.shape[:2]
        added = np.zeros((h, w), np.float32)
        for spot in p["spots"]:
            # Blur each disc in a window around it: the canvas is zero beyond
            # the kernel's reach, so this equals blurring the whole frame.
            cx, cy = spot["centre"]
            reach = spot["radius"] + max(spot["ksize"]) // 2 + 2
            x0, x1 = max(0, cx - reach), min(w, cx + reach + 1)
            y0, y1 = max(0, cy - reach), min(h, cy + reach + 1)
            disc = _circle((y1 - y0, x1 - x0), cx - x0, cy - y0, spot["radius"])
            disc *= np.float32(spot["amplitude"])
            added[y0:y1, x0:x1] += cv2.GaussianBlur(disc, tuple(spot["ksize"]), spot["sigma"])
        # Adding all spots then clipping once equals the published clip after
        # each, as the spots are all non-negative.
        return img + added[..., None]

    def severity(self, p: Params, shape: Shape) -> float:
        fov_area = math.pi * (min(shape) / 2) ** 2
        covered = sum(math.pi * s["radius"] ** 2 * s["amplitude"] / 0.2 for s in p["spots"])
        return _ratio(covered / fov_area, 0.15)


class GaussianBlur(Degradation):
    """Gaussian blur (cofe-Net).

    Published: sigma U(5, 15) but a kernel of only 1-7 px (sigma / 3 to sigma
    / 2), so the blur is mild. Training variant: sigma U(0, 15) with a kernel
    that fits it (+-3 sigma). Strength: sigma = 15 s^1.5 (at 512 px), fitted
    kernel; the power spreads the visible change evenly over strength.
    """

    name = "blur"
    cause = "blur"

    def draw(
        self, rng: np.random.Generator, shape: Shape, strength: float | None, variant: str = "published"
    ) -> Params:
        u = _unit(shape)
        if strength is not None:
            sigma = 15 * self._strength(strength) ** 1.5 * u
            k = _fit_ksize(sigma)
            return {"sigma": sigma, "ksize": [k, k]}
        if _check_variant(variant) == "training":
            sigma = float(rng.uniform(0, 15)) * u
            k = _fit_ksize(sigma)
            return {"sigma": sigma, "ksize": [k, k]}
        sigma = float(rng.uniform(5, 15)) * u
        kw = _odd(rng.integers(int(sigma / 3), int(sigma / 2) + 1))
        kh = _odd(rng.integers(int(sigma / 3), int(sigma / 2) + 1))
        return {"sigma": sigma, "ksize": [kw, kh]}

    def apply(self, img: np.ndarray, mask: np.ndarray, p: Params) -> np.ndarray:
        if p["ksize"] == [1, 1]:
            return img.copy()
        return cv2.GaussianBlur(img, tuple(p["ksize"]), p["sigma"])

    def severity(self, p: Params, shape: Shape) -> float:
        # The std of the kernel actually applied: a 3 px kernel with sigma 15
        # blurs like sigma ~0.8, not 15.
        variances = []
        for k in p["ksize"]:
            taps = cv2.getGaussianKernel(k, p["sigma"]).ravel() if k > 1 else np.ones(1)
            offsets = np.arange(k) - (k - 1) / 2
            variances.append(float(np.sum(taps * offsets**2)))
        return _vessel_severity(math.sqrt(sum(variances) / 2), shape)


def _check_variant(variant: str) -> str:
    if variant not in ("published", "training"):
        raise ValueError(f"variant must be 'published' or 'training', got {variant!r}")
    return variant


# ----------------------------------------------------------------------------
# blur beyond cofe-Net


def _disc_kernel(radius: float) -> np.ndarray:
    """Pillbox PSF of a defocused circular aperture, anti-aliased by 4x4 supersampling."""
    if radius < 0.5:
        return np.ones((1, 1), np.float32)
    half = math.ceil(radius)
    size = 2 * half + 1
    sub = 4
    t = (np.arange(size * sub) + 0.5) / sub - (half + 0.5)
    inside = (t[None, :] ** 2 + t[:, None] ** 2) <= radius * radius
    kernel = inside.reshape(size, sub, size, sub).mean(axis=(1, 3)).astype(np.float32)
    return kernel / kernel.sum()


def _line_kernel(length: float, angle: float, turn: float = 0.0) -> np.ndarray:
    """Motion PSF: a stroke of ``length`` px at ``angle``, its second half turned by ``turn`` (a saccade's
    bend; 0: straight), at uniform speed, splatted bilinearly."""
    if length < 1:
        return np.ones((1, 1), np.float32)
    t = np.linspace(-length / 2, length / 2, max(2, math.ceil(8 * length)))
    heading = np.where(t < 0, angle, angle + turn)
    # Integrate the direction along the path so the bend is continuous at the middle.
    step = np.diff(t, prepend=t[0])
    xs = np.cumsum(step * np.cos(heading))
    ys = -np.cumsum(step * np.sin(heading))
    xs -= (xs.max() + xs.min()) / 2
    ys -= (ys.max() + ys.min()) / 2
    half = math.ceil(max(np.abs(xs).max(), np.abs(ys).max())) + 1
    size = 2 * half + 1
    xs, ys = xs + half, ys + half
    x0 = np.floor(xs).astype(int)
    y0 = np.floor(ys).astype(int)
    fx, fy = xs - x0, ys - y0
    kernel = np.zeros((size + 1, size + 1), np.float64)
    np.add.at(kernel, (y0, x0), (1 - fx) * (1 - fy))
    np.add.at(kernel, (y0, x0 + 1), fx * (1 - fy))
    np.add.at(kernel, (y0 + 1, x0), (1 - fx) * fy)
    np.add.at(kernel, (y0 + 1, x0 + 1), fx * fy)
    kernel = kernel[:size, :size]
    return (kernel / kernel.sum()).astype(np.float32)


def _psf_sigma(kernel: np.ndarray) -> float:
    """Orientation-averaged std of a PSF: sqrt((var_x + var_y) / 2) from its second moments."""
    k = kernel.astype(np.float64) / kernel.sum()
    ys, xs = np.indices(k.shape)
    mx, my = (k * xs).sum(), (k * ys).sum()
    var = (k * ((xs - mx) ** 2 + (ys - my) ** 2)).sum()
    return float(math.sqrt(var / 2))


class Defocus(Degradation):
    """Out-of-focus capture: pillbox kernel of radius 12 s^1.5 px (at 512)."""

    name = "defocus"
    cause = "blur"

    def draw(self, rng: np.random.Generator, shape: Shape, strength: float | None) -> Params:
        return {"radius": 12 * self._strength(strength) ** 1.5 * _unit(shape)}

    def apply(self, img: np.ndarray, mask: np.ndarray, p: Params) -> np.ndarray:
        return cv2.filter2D(img, -1, _disc_kernel(p["radius"]))

    def severity(self, p: Params, shape: Shape) -> float:
        return _vessel_severity(p["radius"] / 2, shape)


class MotionBlur(Degradation):
    """Eye or camera movement during the flash: a stroke of 30 s^1.4 px (at 512) at a random angle; on 40 % of
    draws the stroke bends by up to 70 degrees halfway (a saccade's curve)."""

    name = "motion_blur"
    cause = "blur"

    def draw(self, rng: np.random.Generator, shape: Shape, strength: float | None) -> Params:
        s = self._strength(strength)
        angle = float(rng.uniform(0, math.pi))
        bent, turn = rng.uniform() < 0.4, float(rng.uniform(-1.2, 1.2))
        return {"length": 30 * s**1.4 * _unit(shape), "angle": angle, "turn": turn if bent else 0.0}

    def apply(self, img: np.ndarray, mask: np.ndarray, p: Params) -> np.ndarray:
        return cv2.filter2D(img, -1, _line_kernel(p["length"], p["angle"], p.get("turn", 0.0)))

    def severity(self, p: Params, shape: Shape) -> float:
        return _vessel_severity(_psf_sigma(_line_kernel(p["length"], p["angle"], p.get("turn", 0.0))), shape)


# ----------------------------------------------------------------------------
# media opacity

_VEIL_HUE = np.array([1.3, 1.0, 0.55], np.float32)  # flash light scattered by a yellowed lens


class Haze(Degradation):
    """Cataract / media opacity: a low-contrast, low-saturation veil, thickest and brightest near the centre.

    ``out = filter * blur(desaturate(img)) * t + veil * (1 - t)`` with
    ``t = 1 - opacity * (floor + (1 - floor) * bump)``, ``bump`` a Gaussian of
    the distance from a point within half a radius of the centre. The light
    that passes is filtered yellow-brown (a cataractous lens absorbs blue most,
    then green); the veil is flash light scattered by the lens: beige, about
    as bright as the fundus, glowing by up to ``glow`` where the bump peaks.
    Strength: opacity 0.6 s, lens yellowing s x U(0.2, 0.6), glow s x U(0.35,
    0.7), saturation 1 - 0.4 s, scatter blur sigma 3 s px.
    """

    name = "haze"
    cause = "haze"

    def draw(self, rng: np.random.Generator, shape: Shape, strength: float | None) -> Params:
        s = self._strength(strength)
        return {
            "opacity": 0.6 * s,
            "floor": float(rng.uniform(0.3, 0.6)),
            "spread": float(rng.uniform(0.5, 0.9)),  # FOV radii
            "offset": [float(v) for v in rng.uniform(-0.5, 0.5, 2)],  # FOV radii
            "lift": float(rng.uniform(-0.3, 0.1)),
            "yellow": s * float(rng.uniform(0.2, 0.6)),
            "glow": s * float(rng.uniform(0.35, 0.7)),
            "saturation": 1 - 0.4 * s,
            "sigma": 3 * s * _unit(shape),
        }

    @staticmethod
    def _bump(shape: Shape, disc: _Disc, p: Params) -> np.ndarray:
        x, y = disc.grid(shape)
        dx, dy = p["offset"]
        rho2 = (x - np.float32(dx)) ** 2 + (y - np.float32(dy)) ** 2
        return np.exp(-rho2 / np.float32(2 * p["spread"] ** 2))

    @staticmethod
    def _opacity(bump: np.ndarray, p: Params) -> np.ndarray:
        return np.float32(p["opacity"]) * (np.float32(p["floor"]) + np.float32(1 - p["floor"]) * bump)

    def apply(self, img: np.ndarray, mask: np.ndarray, p: Params) -> np.ndarray:
        sat = np.float32(p["saturation"])
        x = _clip(sat * img + (1 - sat) * _luma(img)[..., None])
        if p["sigma"] > 0:
            k = _fit_ksize(p["sigma"])
            x = cv2.GaussianBlur(x, (k, k), p["sigma"])
        y = p["yellow"]
        x = x * np.array([1 - 0.35 * y, 1 - 0.4 * y, 1 - 0.85 * y], np.float32)
        bump = self._bump(img.shape[:2], _disc_of(mask), p)[..., None]
        level = np.float32(float(_luma(img[mask]).mean()) * (1 + p["lift"]))
        veil = np.minimum(level * _VEIL_HUE * (1 + np.float32(p["glow"]) * bump), 1)
        opacity = self._opacity(bump, p)
        return x * (1 - opacity) + veil * opacity

    def severity(self, p: Params, shape: Shape) -> float:
        lost = _light_lost(shape, lambda sh, d: 1 - self._opacity(self._bump(sh, d, p), p))
        return float(1 - (1 - lost) * (1 - _vessel_severity(p["sigma"], shape)))


# ----------------------------------------------------------------------------
# exposure


def _tone(img: np.ndarray, p: Params) -> np.ndarray:
    gain = np.asarray(p["channel_gain"], np.float32) * np.float32(p["gain"])
    return np.power(img, np.float32(p["gamma"])) * gain


class Underexposure(Degradation):
    """Too little flash: ``gain * img ** gamma``, gain 1 - 0.75 s, gamma 1 + 0.6 s.

    Gamma > 1 crushes the dark periphery more than the bright disc, as in real
    dark captures; a small per-channel gain drift (+-8 % s) changes the cast.
    """

    name = "underexposure"
    cause = "exposure"

    def draw(self, rng: np.random.Generator, shape: Shape, strength: float | None) -> Params:
        s = self._strength(strength)
        drift = rng.uniform(-0.08, 0.08, 3)
        return {"gain": 1 - 0.75 * s, "gamma": 1 + 0.6 * s, "channel_gain": [float(1 + s * d) for d in drift]}

    def apply(self, img: np.ndarray, mask: np.ndarray, p: Params) -> np.ndarray:
        return _tone(img, p)

    def severity(self, p: Params, shape: Shape) -> float:
        out = p["gain"] * _MID_TONE ** p["gamma"]
        return _beyond(math.log2(_MID_TONE / out), 0.45, 3.0)


class Overexposure(Degradation):
    """Too much flash: ``gain * img ** gamma`` with gain 1 + 1.2 s and gamma 1 - 0.35 s; highlights clip."""

    name = "overexposure"
    cause = "exposure"

    def draw(self, rng: np.random.Generator, shape: Shape, strength: float | None) -> Params:
        s = self._strength(strength)
        drift = rng.uniform(-0.08, 0.08, 3)
        return {"gain": 1 + 1.2 * s, "gamma": 1 - 0.35 * s, "channel_gain": [float(1 + s * d) for d in drift]}

    def apply(self, img: np.ndarray, mask: np.ndarray, p: Params) -> np.ndarray:
        return _tone(img, p)

    def severity(self, p: Params, shape: Shape) -> float:
        # Vessels show in the green mid-tones (~0.35): the harm is how far they
        # are pushed towards white, where contrast is lost to clipping.
        green = 0.35
        return _beyond(p["gain"] * green ** p["gamma"] - green, 0.11, 1 - green)


# ----------------------------------------------------------------------------
# occlusion and vignetting (eye-fixed: placed relative to the FOV circle)


def _shade(img: np.ndarray, gain: np.ndarray) -> np.ndarray:
    return img * (gain[..., None] if gain.ndim == 2 else gain)


def _shadow_colour(darkness: float, blue_kept: float) -> np.ndarray:
    """Per-channel darkening of an iris shadow: red and green lost, some blue kept."""
    return np.float32(darkness) * np.array([1, 1 - blue_kept / 4, 1 - blue_kept], np.float32)


class EyelidShadow(Degradation):
    """A drooping upper lid: a dark crescent from the top, bounded by a large circle.

    The lid margin is an arc of radius ``curvature`` FOV radii whose lowest
    point lies ``depth`` FOV diameters below the top of the field, with a soft
    edge (the lid is far out of focus). Strength: depth 0.45 s, darkness 0.9
    sqrt(s); the shadow keeps some red (light through skin).
    """

    name = "eyelid_shadow"
    cause = "occlusion"

    def draw(self, rng: np.random.Generator, shape: Shape, strength: float | None) -> Params:
        s = self._strength(strength)
        return {
            "depth": 0.45 * s,
            "darkness": 0.9 * math.sqrt(s),
            "curvature": float(rng.uniform(1.2, 2.5)),
            "shift": float(rng.uniform(-0.3, 0.3)),
            "softness": float(rng.uniform(0.35, 0.7)),
            "red_kept": float(rng.uniform(0.1, 0.35)),
        }

    @staticmethod
    def _gain(shape: Shape, disc: _Disc, p: Params) -> np.ndarray:
        x, y = disc.grid(shape)
        lid_cy = -1 + 2 * p["depth"] - p["curvature"]
        d = np.sqrt((x - np.float32(p["shift"])) ** 2 + (y - np.float32(lid_cy)) ** 2)
        soft = p["softness"]
        cover = 1 - _smoothstep(p["curvature"] - soft / 2, p["curvature"] + soft / 2, d)
        dark = np.float32(p["darkness"]) * np.array([1 - p["red_kept"], 1, 1], np.float32)
        return 1 - cover[..., None] * dark

    def apply(self, img: np.ndarray, mask: np.ndarray, p: Params) -> np.ndarray:
        return _shade(img, self._gain(img.shape[:2], _disc_of(mask), p))

    def severity(self, p: Params, shape: Shape) -> float:
        return _ratio(_light_lost(shape, lambda sh, d: self._gain(sh, d, p)), 0.4)


class EyelashShadow(Degradation):
    """Out-of-focus lashes: dark blurred curved streaks and a dark band from the top or bottom edge.

    Lashes start on the FOV rim and reach inward, bent; they and the band are
    blurred heavily (lashes sit far from the focal plane). Strength: 2 + 10 s
    lashes of length (0.3 + 0.6 s) x U(0.6, 1) FOV radii, lash darkness 0.85 s,
    band depth 0.2 s diameters, band darkness 0.8 s.
    """

    name = "eyelash_shadow"
    cause = "occlusion"
    _MAX = 12

    def draw(self, rng: np.random.Generator, shape: Shape, strength: float | None) -> Params:
        s = self._strength(strength)
        edge = "top" if rng.uniform() < 0.7 else "bottom"  # upper lashes droop more often
        lashes = [
            {
                "x": float(rng.uniform(-0.8, 0.8)),
                "tilt": float(rng.uniform(-0.4, 0.4)),
                "bend": float(rng.uniform(-0.35, 0.35)),
                "length": float((0.3 + 0.6 * s) * rng.uniform(0.6, 1.0)),
                "width": float(rng.uniform(0.012, 0.03)),
            }
            for _ in range(self._MAX)
        ]
        return {
            "edge": edge,
            "lashes": lashes[: 2 + round(10 * s)],
            "lash_darkness": 0.85 * s,
            "band_depth": 0.2 * s,
            "band_darkness": 0.8 * s,
            "band_bend": float(rng.uniform(0.0, 0.15)),
            "blur": float(rng.uniform(0.03, 0.06)),  # FOV radii
        }

    @staticmethod
    def _gain(shape: Shape, disc: _Disc, p: Params) -> np.ndarray:
        if p["edge"] == "bottom":  # mirror the frame, draw a top edge, mirror back
            flipped = _Disc(disc.cx, shape[0] - 1 - disc.cy, disc.r)
            return EyelashShadow._gain(shape, flipped, {**p, "edge": "top"})[::-1]
        x, y = disc.grid(shape)
        band_edge = -1 + 2 * p["band_depth"] - p["band_bend"] * x * x
        band = np.float32(p["band_darkness"]) * (1 - _smoothstep(-0.15, 0.15, y - band_edge))
        canvas = np.zeros(shape, np.float32)
        for lash in p["lashes"]:
            cv2.polylines(canvas, [_lash_points(disc, lash)], False, 1.0,
                          max(1, round(lash["width"] * disc.r)), cv2.LINE_AA, 4)
        sigma = p["blur"] * disc.r
        k = _fit_ksize(sigma)
        lashes = np.float32(p["lash_darkness"]) * cv2.GaussianBlur(canvas, (k, k), sigma)
        return (1 - band) * (1 - lashes)

    def apply(self, img: np.ndarray, mask: np.ndarray, p: Params) -> np.ndarray:
        return _shade(img, self._gain(img.shape[:2], _disc_of(mask), p))

    def severity(self, p: Params, shape: Shape) -> float:
        return _ratio(_light_lost(shape, lambda sh, d: self._gain(sh, d, p)), 0.3)


def _lash_points(disc: _Disc, lash: Params) -> np.ndarray:
    """A quadratic Bezier from just outside the top rim inward, in 1/16 px fixed point."""
    x0 = lash["x"]
    y0 = -math.sqrt(max(0.0, 1 - x0 * x0)) - 0.05
    dx, dy = math.sin(lash["tilt"]), math.cos(lash["tilt"])
    end = np.array([x0 + dx * lash["length"], y0 + dy * lash["length"]])
    mid = np.array([x0, y0]) + (end - [x0, y0]) / 2 + lash["bend"] * lash["length"] * np.array([dy, -dx])
    t = np.linspace(0, 1, 16)[:, None]
    pts = (1 - t) ** 2 * np.array([x0, y0]) + 2 * (1 - t) * t * mid + t**2 * end
    px = np.column_stack([disc.cx + pts[:, 0] * disc.r, disc.cy + pts[:, 1] * disc.r])
    return np.round(px * 16).astype(np.int32)


class SmallPupil(Degradation):
    """Small pupil: a dark rim closing in unevenly, and less light overall.

    Darkening starts at ``onset`` FOV radii, modulated by two harmonics of the
    angle (the iris edge is not centred or round), and ramps over ``width``.
    Strength: onset 1 - 0.6 s, darkness 0.9 sqrt(s), overall dimming 0.3 s.
    The shadow takes a navy cast: stray light from the iris keeps some blue.
    """

    name = "small_pupil"
    cause = "illumination"

    def draw(self, rng: np.random.Generator, shape: Shape, strength: float | None) -> Params:
        s = self._strength(strength)
        return {
            "onset": 1 - 0.6 * s,
            "darkness": 0.9 * math.sqrt(s),
            "dimming": 0.3 * s,
            "width": float(rng.uniform(0.25, 0.45)),
            "harmonics": [float(v) * s for v in rng.uniform(0.0, [0.15, 0.08])],
            "phases": [float(v) for v in rng.uniform(0, 2 * math.pi, 2)],
            "blue_kept": float(rng.uniform(0.0, 0.4)),
        }

    @staticmethod
    def _gain(shape: Shape, disc: _Disc, p: Params) -> np.ndarray:
        x, y = disc.grid(shape)
        rho = np.sqrt(x * x + y * y)
        theta = np.arctan2(y, x)
        (a1, a2), (f1, f2) = p["harmonics"], p["phases"]
        onset = p["onset"] + a1 * np.cos(theta - f1) + a2 * np.cos(2 * theta - f2)
        rim = _smoothstep(0.0, 1.0, (rho - onset) / np.float32(p["width"]))
        shadow = rim[..., None] * _shadow_colour(p["darkness"], p["blue_kept"])
        return (1 - np.float32(p["dimming"])) * (1 - shadow)

    def apply(self, img: np.ndarray, mask: np.ndarray, p: Params) -> np.ndarray:
        return _shade(img, self._gain(img.shape[:2], _disc_of(mask), p))

    def severity(self, p: Params, shape: Shape) -> float:
        return _ratio(_light_lost(shape, lambda sh, d: self._gain(sh, d, p)), 0.6)


class PartialShadow(Degradation):
    """A shadow across part of the field, from any direction: the iris edge or a lid far out of focus.

    Most draws ("edge"): the field is dark from its rim inward along a random direction, up to a soft
    boundary that may bend either way. The rest ("patch"): a dark soft ellipse anywhere in the field
    (an off-axis iris shadow, a floater's shadow). Strength: the edge covers 0.1 + 0.7 s of the
    diameter, a patch has a semi-axis of (0.25 + 0.5 s) x U(0.7, 1) radii; darkness 0.9 sqrt(s).
    """

    name = "partial_shadow"
    cause = "illumination"

    def draw(self, rng: np.random.Generator, shape: Shape, strength: float | None) -> Params:
        s = self._strength(strength)
        major = (0.25 + 0.5 * s) * float(rng.uniform(0.7, 1.0))
        distance, bearing = 0.7 * math.sqrt(float(rng.uniform())), float(rng.uniform(0, 2 * math.pi))
        return {
            "form": "edge" if rng.uniform() < 0.7 else "patch",
            "angle": float(rng.uniform(0, 2 * math.pi)),
            "depth": 0.1 + 0.7 * s,  # edge: share of the diameter covered
            "bend": float(rng.uniform(-0.6, 0.6)),
            "centre": [distance * math.cos(bearing), distance * math.sin(bearing)],  # patch, FOV radii
            "axes": [major, major * float(rng.uniform(0.45, 1.0))],
            "softness": float(rng.uniform(0.15, 0.45)),  # FOV radii
            "darkness": 0.9 * math.sqrt(s),
            "blue_kept": float(rng.uniform(0.0, 0.4)),
        }

    @staticmethod
    def _gain(shape: Shape, disc: _Disc, p: Params) -> np.ndarray:
        x, y = disc.grid(shape)
        c, s = np.float32(math.cos(p["angle"])), np.float32(math.sin(p["angle"]))
        along, across = x * c + y * s, -x * s + y * c
        soft = p["softness"]
        if p["form"] == "edge":  # dark where `along` is beyond the (bent) boundary
            boundary = 1 - 2 * p["depth"] + np.float32(p["bend"]) * across * across
            cover = _smoothstep(-soft / 2, soft / 2, along - boundary)
        else:
            dx, dy = p["centre"]
            u = ((x - np.float32(dx)) * c + (y - np.float32(dy)) * s) / np.float32(p["axes"][0])
            v = (-(x - np.float32(dx)) * s + (y - np.float32(dy)) * c) / np.float32(p["axes"][1])
            cover = 1 - _smoothstep(1 - soft, 1 + soft, np.sqrt(u * u + v * v))
        return 1 - cover[..., None] * _shadow_colour(p["darkness"], p["blue_kept"])

    def apply(self, img: np.ndarray, mask: np.ndarray, p: Params) -> np.ndarray:
        return _shade(img, self._gain(img.shape[:2], _disc_of(mask), p))

    def severity(self, p: Params, shape: Shape) -> float:
        return _ratio(_light_lost(shape, lambda sh, d: self._gain(sh, d, p)), 0.5)


class Vignetting(Degradation):
    """Light falling off towards the rim, unevenly: an elliptical fall-off whose centre has slid off the
    field's (the pupil not centred in the camera's ring of light).

    Strength: the fall-off starts 1 - 0.7 s radii from a centre shifted by up to 0.4 s radii in a random
    direction, stretched to an aspect of U(0.65, 1) at a random angle, ramps over U(0.3, 0.7) radii to a
    darkness of 0.9 sqrt(s).
    """

    name = "vignetting"
    cause = "illumination"

    def draw(self, rng: np.random.Generator, shape: Shape, strength: float | None) -> Params:
        s = self._strength(strength)
        shift, bearing = 0.4 * s * float(rng.uniform()), float(rng.uniform(0, 2 * math.pi))
        return {
            "centre": [shift * math.cos(bearing), shift * math.sin(bearing)],
            "aspect": float(rng.uniform(0.65, 1.0)),
            "angle": float(rng.uniform(0, math.pi)),
            "onset": 1 - 0.7 * s,
            "width": float(rng.uniform(0.3, 0.7)),
            "darkness": 0.9 * math.sqrt(s),
            "blue_kept": float(rng.uniform(0.0, 0.3)),
        }

    @staticmethod
    def _gain(shape: Shape, disc: _Disc, p: Params) -> np.ndarray:
        x, y = disc.grid(shape)
        dx, dy = p["centre"]
        c, s = np.float32(math.cos(p["angle"])), np.float32(math.sin(p["angle"]))
        u = (x - np.float32(dx)) * c + (y - np.float32(dy)) * s
        v = (-(x - np.float32(dx)) * s + (y - np.float32(dy)) * c) / np.float32(p["aspect"])
        fall = _smoothstep(0.0, 1.0, (np.sqrt(u * u + v * v) - np.float32(p["onset"])) / np.float32(p["width"]))
        return 1 - fall[..., None] * _shadow_colour(p["darkness"], p["blue_kept"])

    def apply(self, img: np.ndarray, mask: np.ndarray, p: Params) -> np.ndarray:
        return _shade(img, self._gain(img.shape[:2], _disc_of(mask), p))

    def severity(self, p: Params, shape: Shape) -> float:
        return _ratio(_light_lost(shape, lambda sh, d: self._gain(sh, d, p)), 0.45)


class Glare(Degradation):
    """Reflections from the cornea or the lens: bright, washed-out blobs of any size, anywhere in the field.

    1 blob, or 2 on some stronger draws; each of radius (0.06 + 0.44 s) x U(0.5, 1) FOV radii with a
    flat core and a soft edge, anywhere within 0.85 radii of the centre, intensity (0.3 + 0.6 s) x
    U(0.75, 1), white tinted towards blue or yellow. Blended as a screen (``1 - (1 - x)(1 - g)``): it
    brightens and washes out the retina underneath, as reflected light does.
    """

    name = "glare"
    cause = "artefacts"
    _MAX = 2

    def draw(self, rng: np.random.Generator, shape: Shape, strength: float | None) -> Params:
        s = self._strength(strength)
        blobs = []
        for _ in range(self._MAX):
            distance, bearing = 0.85 * math.sqrt(float(rng.uniform())), float(rng.uniform(0, 2 * math.pi))
            blobs.append(
                {
                    "centre": [distance * math.cos(bearing), distance * math.sin(bearing)],
                    "radius": (0.06 + 0.44 * s) * float(rng.uniform(0.5, 1.0)),
                    "intensity": (0.3 + 0.6 * s) * float(rng.uniform(0.75, 1.0)),
                    "core": float(rng.uniform(0.2, 0.6)),  # share of the radius at full intensity
                    "tint": [float(v) for v in rng.uniform(0.85, 1.0, 3)],
                }
            )
        second = rng.uniform() < 0.5 * s
        return {"blobs": blobs[: 1 + int(second)]}

    @staticmethod
    def _light(shape: Shape, disc: _Disc, p: Params) -> np.ndarray:
        x, y = disc.grid(shape)
        light = np.zeros((*shape, 3), np.float32)
        for blob in p["blobs"]:
            dx, dy = blob["centre"]
            rho = np.sqrt((x - np.float32(dx)) ** 2 + (y - np.float32(dy)) ** 2) / np.float32(blob["radius"])
            profile = 1 - _smoothstep(blob["core"], 1.0, rho)
            glow = (np.float32(blob["intensity"]) * profile)[..., None] * np.asarray(blob["tint"], np.float32)
            light = 1 - (1 - light) * (1 - glow)
        return light

    def apply(self, img: np.ndarray, mask: np.ndarray, p: Params) -> np.ndarray:
        light = self._light(img.shape[:2], _disc_of(mask), p)
        return 1 - (1 - img) * (1 - light)

    def severity(self, p: Params, shape: Shape) -> float:
        small, disc, inside = _severity_raster(shape)
        added = _luma(self._light(small, disc, p)) / _LUMA.sum()
        return _ratio(float(np.mean(added[inside])), 0.12)


# ----------------------------------------------------------------------------
# framing


def _shift(a: np.ndarray, dx: int, dy: int) -> np.ndarray:
    """Translate by whole pixels, filling with zeros (what leaves the frame is lost)."""
    out = np.zeros_like(a)
    h, w = a.shape[:2]
    if abs(dx) >= w or abs(dy) >= h:
        return out
    out[max(0, dy) : h + min(0, dy), max(0, dx) : w + min(0, dx)] = a[
        max(0, -dy) : h + min(0, -dy), max(0, -dx) : w + min(0, -dx)
    ]
    return out


class OffCentre(Degradation):
    """Camera not centred on the pupil: the field slides off the frame and one side darkens.

    Shift 0.35 s of the shorter side at a random angle; a dark crescent (depth
    0.7 s, navy cast like the pupil shadow) on the side that stays in view,
    where the illumination is clipped by the iris.
    """

    name = "off_centre"
    cause = "framing"

    def draw(self, rng: np.random.Generator, shape: Shape, strength: float | None) -> Params:
        s = self._strength(strength)
        angle = rng.uniform(0, 2 * math.pi)
        dark_angle = angle + math.pi + rng.uniform(-math.pi / 4, math.pi / 4)
        distance = 0.35 * s * min(shape)
        return {
            "dx": round(distance * math.cos(angle)),
            "dy": round(distance * math.sin(angle)),
            "dark_angle": float(dark_angle),
            "dark_depth": 0.7 * s,
            "dark_onset": float(rng.uniform(0.2, 0.5)),  # FOV radii from the centre
            "blue_kept": float(rng.uniform(0.0, 0.4)),
        }

    @staticmethod
    def _gain(shape: Shape, disc: _Disc, p: Params) -> np.ndarray:
        x, y = disc.grid(shape)
        along = x * np.float32(math.cos(p["dark_angle"])) + y * np.float32(math.sin(p["dark_angle"]))
        crescent = _smoothstep(p["dark_onset"], 1.0, along)
        return 1 - crescent[..., None] * _shadow_colour(p["dark_depth"], p["blue_kept"])

    def apply(self, img: np.ndarray, mask: np.ndarray, p: Params) -> np.ndarray:
        shaded = _shade(img, self._gain(img.shape[:2], _disc_of(mask), p))
        return _shift(shaded, p["dx"], p["dy"])

    def warp_mask(self, mask: np.ndarray, p: Params) -> np.ndarray:
        return _shift(mask, p["dx"], p["dy"])

    def severity(self, p: Params, shape: Shape) -> float:
        small, disc, inside = _severity_raster(shape)
        f = small[1] / shape[1]
        kept = _shift(inside, round(p["dx"] * f), round(p["dy"] * f)).sum() / inside.sum()
        lost = _light_lost(shape, lambda sh, d: self._gain(sh, d, p))
        return _ratio((1 - kept) + lost, 0.35)


# ----------------------------------------------------------------------------
# sensor and storage


def _to_uint8(img: np.ndarray) -> np.ndarray:
    return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)


class Jpeg(Degradation):
    """Heavy JPEG re-encoding (4:2:0), quality round(40 - 35 s)."""

    name = "jpeg"
    cause = "artefacts"

    def draw(self, rng: np.random.Generator, shape: Shape, strength: float | None) -> Params:
        return {"quality": round(40 - 35 * self._strength(strength))}

    def apply(self, img: np.ndarray, mask: np.ndarray, p: Params) -> np.ndarray:
        bgr = cv2.cvtColor(_to_uint8(img), cv2.COLOR_RGB2BGR)
        ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, int(p["quality"])])
        if not ok:
            raise RuntimeError("JPEG encoding failed")
        decoded = cv2.cvtColor(cv2.imdecode(buf, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        return decoded.astype(np.float32) / 255

    def severity(self, p: Params, shape: Shape) -> float:
        return _ratio(45 - p["quality"], 50)


class SensorNoise(Degradation):
    """Signal-dependent sensor noise: std sqrt(shot * x + read^2), independent per channel.

    Strength: read 0.1 s, shot 0.03 s (a dim capture pushed to a high gain). The seed of the noise field is in the
    params, so replay regenerates the same grain.
    """

    name = "noise"
    cause = "artefacts"

    def draw(self, rng: np.random.Generator, shape: Shape, strength: float | None) -> Params:
        s = self._strength(strength)
        return {"read": 0.1 * s, "shot": 0.03 * s, "seed": int(rng.integers(2**63 - 1))}

    def apply(self, img: np.ndarray, mask: np.ndarray, p: Params) -> np.ndarray:
        grain = np.random.default_rng(p["seed"]).standard_normal(img.shape, dtype=np.float32)
        std = np.sqrt(np.float32(p["shot"]) * img + np.float32(p["read"] ** 2))
        return img + std * grain

    def severity(self, p: Params, shape: Shape) -> float:
        return _ratio(math.sqrt(p["shot"] * _MID_TONE + p["read"] ** 2), 0.12)


# ----------------------------------------------------------------------------
# registry and pipeline

# Physical order: eyelids and pupil, then the eye's media, camera alignment,
# dust on the objective, focus and movement, exposure, sensor, file.
DEGRADATIONS: dict[str, Degradation] = {
    d.name: d
    for d in (
        EyelidShadow(),
        EyelashShadow(),
        SmallPupil(),
        PartialShadow(),
        Vignetting(),
        Illumination(),
        Haze(),
        OffCentre(),
        Spots(),
        Glare(),
        Defocus(),
        GaussianBlur(),
        MotionBlur(),
        Underexposure(),
        Overexposure(),
        SensorNoise(),
        Jpeg(),
    )
}
TYPES: tuple[str, ...] = tuple(DEGRADATIONS)
_EXCLUSIVE = ({"underexposure", "overexposure"},)  # never drawn together


@dataclass
class DegradationRecord:
    """Everything needed to regenerate a degraded image from its clean source.

    ``steps``: ``{"type", "strength", "params", "severity"}`` in the order
    applied. ``fov``: the detected FOV circle ``[cx, cy, r]`` the mask came
    from, or None when the caller supplied the mask (replay then needs it).
    """

    steps: list[Step]
    severity: float
    causes: dict[str, float]
    shape: tuple[int, int]
    fov: list[float] | None = None
    version: int = 1

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> DegradationRecord:
        data = json.loads(text)
        data["shape"] = tuple(data["shape"])
        return cls(**data)


def fov_mask(shape: tuple[int, ...], fov: FieldOfView) -> np.ndarray:
    """Boolean HxW mask of the FOV circle (clipped by the frame)."""
    h, w = shape[:2]
    yy, xx = np.ogrid[:h, :w]
    return (xx - fov.cx) ** 2 + (yy - fov.cy) ** 2 <= fov.radius**2


def overall_severity(severities: list[float]) -> float:
    """Independent harms compound: 1 - prod(1 - s_i)."""
    return float(1 - np.prod([1 - s for s in severities]))


def draw_step(name: str, rng: np.random.Generator, shape: Shape, strength: float | None, **kw: Any) -> Step:
    """One step of type ``name``: its drawn params and their severity."""
    deg = _get(name)
    params = deg.draw(rng, shape, strength, **kw)
    return {"type": name, "strength": strength, "params": params, "severity": deg.severity(params, shape)}


def degrade(
    img: np.ndarray,
    rng: np.random.Generator | int,
    *,
    types: list[str] | None = None,
    strength: float | None = None,
    n_types: tuple[int, int] = (1, 3),
    mask: np.ndarray | None = None,
) -> tuple[np.ndarray, DegradationRecord]:
    """Degrade an RGB uint8 fundus photo at random; returns the image and its record.

    ``types``: exactly these (in physical order), else ``n_types`` (inclusive
    range) types drawn at random, never both exposures. ``strength``: for every
    step, else U(0, 1) per step. ``mask``: the FOV, else detected.
    """
    rng = np.random.default_rng(rng)
    _check_image(img)
    names = _ordered(types) if types is not None else _random_types(rng, n_types)
    shape = img.shape[:2]
    steps = [
        draw_step(n, rng, shape, float(rng.uniform()) if strength is None else strength) for n in names
    ]
    return _render(img, steps, mask)


def cofe_degrade(
    img: np.ndarray,
    code: str,
    rng: np.random.Generator | int,
    *,
    variant: str = "published",
    mask: np.ndarray | None = None,
) -> tuple[np.ndarray, DegradationRecord]:
    """cofe-Net degradation ``code`` ('001' illumination .. '111' all three), published sampling."""
    if code not in COFE_CODES:
        raise ValueError(f"code must be one of {COFE_CODES}, got {code!r}")
    _check_variant(variant)
    rng = np.random.default_rng(rng)
    _check_image(img)
    shape = img.shape[:2]
    steps = []
    for name, bit in _COFE_BITS:
        if code[bit] == "1":
            kw = {} if name == "illumination" else {"variant": variant}
            steps.append(draw_step(name, rng, shape, None, **kw))
    return _render(img, steps, mask)


def cofe_one_or_two(img: np.ndarray, rng: np.random.Generator | int, **kw: Any) -> tuple[np.ndarray, DegradationRecord]:
    """One or two of the three cofe-Net types, at random: CLEAQ-DR's "op1", applied to Usable images
    (Hou et al., IEEE JBHI 2023), which are already a little degraded."""
    rng = np.random.default_rng(rng)
    code = ("001", "010", "100", "011", "101", "110")[int(rng.integers(6))]
    return cofe_degrade(img, code, rng, **kw)


def cofe_all_three(img: np.ndarray, rng: np.random.Generator | int, **kw: Any) -> tuple[np.ndarray, DegradationRecord]:
    """All three cofe-Net types (illumination, spots, blur): CLEAQ-DR's "op2", applied to Good images."""
    return cofe_degrade(img, "111", rng, **kw)


def replay(img: np.ndarray, record: DegradationRecord, mask: np.ndarray | None = None) -> np.ndarray:
    """Regenerate the degraded image of ``record`` from its clean source, bit-exactly."""
    _check_image(img)
    if tuple(img.shape[:2]) != tuple(record.shape):
        raise ValueError(f"record is for a {record.shape} image, got {img.shape[:2]}")
    if mask is None:
        if record.fov is None:
            raise ValueError("this record was made with a caller's mask: pass the same mask")
        mask = fov_mask(img.shape, FieldOfView(*record.fov, method="record", clipped=False))
    out, _ = _render(img, record.steps, mask)
    return out


def degraded_mask(mask: np.ndarray, record: DegradationRecord) -> np.ndarray:
    """The FOV mask of the degraded image (framing steps move it)."""
    for step in record.steps:
        mask = _get(step["type"]).warp_mask(mask, step["params"])
    return mask


def _render(
    img: np.ndarray, steps: list[Step], mask: np.ndarray | None
) -> tuple[np.ndarray, DegradationRecord]:
    fov = None
    if mask is None:
        found = find_field_of_view(img)
        fov = [float(found.cx), float(found.cy), float(found.radius)]
        mask = fov_mask(img.shape, found)
    mask = np.asarray(mask, bool)
    if mask.shape != img.shape[:2]:
        raise ValueError(f"mask shape {mask.shape} does not match the image {img.shape[:2]}")
    x = img.astype(np.float32) / 255
    for step in steps:
        deg = _get(step["type"])
        x = _clip(deg.apply(x, mask, step["params"]).astype(np.float32, copy=False))
        mask = deg.warp_mask(mask, step["params"])
    x *= mask[..., None]
    record = DegradationRecord(
        steps=steps,
        severity=overall_severity([s["severity"] for s in steps]),
        causes=_causes(steps),
        shape=(int(img.shape[0]), int(img.shape[1])),
        fov=fov,
    )
    return _to_uint8(x), record


def _causes(steps: list[Step]) -> dict[str, float]:
    causes = dict.fromkeys(CAUSES, 0.0)
    for step in steps:
        cause = _get(step["type"]).cause
        causes[cause] = max(causes[cause], step["severity"])
    return causes


def _get(name: str) -> Degradation:
    try:
        return DEGRADATIONS[name]
    except KeyError:
        raise ValueError(f"unknown degradation {name!r}; known: {', '.join(TYPES)}") from None


def _ordered(types: list[str]) -> list[str]:
    for name in types:
        _get(name)
    if len(set(types)) != len(types):
        raise ValueError(f"repeated degradation types in {types}")
    return sorted(types, key=TYPES.index)


def _random_types(rng: np.random.Generator, n_types: tuple[int, int]) -> list[str]:
    lo, hi = n_types
    if not 0 <= lo <= hi <= len(TYPES) - 1:
        raise ValueError(f"n_types must satisfy 0 <= lo <= hi < {len(TYPES)}, got {n_types}")
    k = int(rng.integers(lo, hi + 1))
    chosen: list[str] = []
    for i in rng.permutation(len(TYPES)):
        name = TYPES[int(i)]
        if len(chosen) < k and not any(name in g and g & set(chosen) for g in _EXCLUSIVE):
            chosen.append(name)
    return _ordered(chosen)


def _check_image(img: np.ndarray) -> None:
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"expected an HxWx3 uint8 RGB image, got {img.dtype} {img.shape}")

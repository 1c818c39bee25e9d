"""Field-of-view detection, circle crop and normalisation for the model.

A fundus photograph is a bright disc (the field of view, FOV) on a black
background; many cameras crop the disc at the top and bottom of the frame.
Cropping to the disc first makes the score independent of the camera's frame
size and of how much black border it adds.

The captures the quality gate exists to catch are the hard ones: a disc
clipped on three or four sides by a rectangle *inside* the frame (scanned or
re-photographed prints), grey rather than black patches around it, one side of
the retina in deep shadow, glare, and bright bars or reticles burned in beside
it. Detection therefore fits the circle only to the parts of the outline that
can be rim (never to a straight clip edge, a shadow boundary or an artefact),
tries a few thresholds when the first one does not explain the outline, and
checks every candidate against the bright region it came from, so that black
frames, noise, text pages and ordinary photographs are still refused.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from .weights import InputSpec

__all__ = [
    "FieldOfView",
    "NoFundusError",
    "crop_to_field_of_view",
    "field_of_view_square",
    "find_field_of_view",
    "preprocess",
    "to_model_input",
]

Circle = tuple[float, float, float]  # cx, cy, radius

_WORK_SIDE = 512  # detection runs on a copy no larger than this
_HOUGH_SIDE = 160  # the Hough fallback on an even smaller one
_MIN_POINTS = 20  # rim points needed for a fit
_MIN_CONTRAST = 12  # grey levels between background and fundus
# Thresholds, as fractions of the way from background to the bright level.
# The standard one suits nearly every capture; the low one recovers a dark
# rim, a retina whose one side is in shadow, or one that is very dark beside
# a glaring optic disc. (A grey patch around the disc gets the standard
# fraction again, measured from the patch's level: see _above_grey_patch.)
_STANDARD_FRACTION = 0.15
_LOW_FRACTION = 0.04
_OPEN_FRACTION = 1 / 40  # opening/closing kernel, of the shorter side
_MIN_RADIUS_FRACTION = 0.15  # of the shorter image side
_MAX_RADIUS_FRACTION = 0.75  # of the longer image side
_FLAT_BAND = 1.5  # px: outline points this close to a bounding-box side may be a clip edge
_RANSAC_TRIALS = 64
_RANSAC_POINTS = 300  # rim points scored per RANSAC trial
_MIN_INLIERS = 0.5  # rim points within tolerance of the fitted circle
# A clean fit: nearly all rim points within tolerance, and close (a rim that
# is dark on one side makes a thresholded outline that is round, but not quite
# a circle).
_CLEAN_FRACTION = 0.95
_CLEAN_RMS = 0.2  # in tolerances
_MAX_RIM_GAP = np.deg2rad(240)  # the rim found must span at least 120 degrees
_MIN_COVERED = 0.95  # of the bright region inside the fitted circle
_MIN_COVERED_HOUGH = 0.85  # the same for a Hough circle (bars may stick out of the disc)
_MIN_BOX_FILL = 0.6  # bright fraction of the circle within the region's bounding box
_MAX_DARK_IN_DISC = 0.1  # background-level fraction of it
_MIN_DISC_AREA = 0.25  # bright region area, of the full circle's
_MAX_OUTSIDE_FILL = 0.10  # bright fraction outside the circle
# Bounding-box fallback: one large, compact, roundish bright component.
_BOX_MIN_SIDE = 2 * _MIN_RADIUS_FRACTION  # of the shorter image side
_BOX_EXTENT = (0.6, 0.97)  # area over bbox area: not a ragged blob, not a rectangle (page)
_BOX_MIN_SOLIDITY = 0.9  # area over convex hull area
_BOX_MAX_ASPECT = 2.0
_BOX_MAX_SECOND = 0.2  # second-largest bright component, of the largest
_BOX_MAX_STRAIGHT = 0.5  # of its outline (away from the frame) on long straight sides
_LONG_SIDE = 0.15  # of that outline: a side this long is straight, not a curve's chord


class NoFundusError(ValueError):
    """No field of view (bright disc on a dark background) could be found."""


@dataclass
class FieldOfView:
    """The FOV circle in pixel coordinates of the image it was found in.

    ``method`` says how it was found: ``"threshold"`` (circle fitted to the rim
    of the bright region), ``"hough"`` (Hough transform, when the rim outline is
    too broken) or ``"bbox"`` (no circle could be trusted: the circle through
    the corners of the bright region's bounding box, so that the crop is the
    square around that box; expect a poor capture).
    """

    cx: float
    cy: float
    radius: float
    method: str  # "threshold", "hough" or "bbox"
    clipped: bool  # the circle runs past an image edge


def find_field_of_view(rgb: np.ndarray) -> FieldOfView:
    """Locate the FOV disc; raises :class:`NoFundusError` when there is none."""
    _check_rgb(rgb)
    small, sx, sy = _downscale(rgb, _WORK_SIDE)
    found = _find_circle(_brightness(small))
    if found is None:
        raise NoFundusError(
            "no field of view found: expected a bright round retina on a dark background"
        )
    circle, method = found
    cx, cy, r = _rescale(circle, sx, sy)
    h, w = rgb.shape[:2]
    return FieldOfView(cx, cy, r, method, _is_clipped(cx, cy, r, w, h))


def crop_to_field_of_view(
    rgb: np.ndarray, fov: FieldOfView, *, margin: float = 0.0, mask_outside: bool = True
) -> np.ndarray:
    """Square crop of side 2r(1 + margin) centred on the FOV, black where it leaves the image."""
    _check_rgb(rgb)
    h, w = rgb.shape[:2]
    side = max(1, int(round(2 * fov.radius * (1 + margin))))
    x0 = int(round(fov.cx - (side - 1) / 2))
    y0 = int(round(fov.cy - (side - 1) / 2))
    out = np.zeros((side, side, 3), np.uint8)
    sx0, sy0 = max(x0, 0), max(y0, 0)
    sx1, sy1 = min(x0 + side, w), min(y0 + side, h)
    if sx1 > sx0 and sy1 > sy0:
        out[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = rgb[sy0:sy1, sx0:sx1]
    if mask_outside:
        disc = np.zeros((side, side), np.uint8)
        centre = (fov.cx - x0, fov.cy - y0)
        _draw_disc(disc, centre, fov.radius)
        out = cv2.bitwise_and(out, out, mask=disc)
    return out


def field_of_view_square(
    rgb: np.ndarray, size: int = 384, *, fov: FieldOfView | None = None
) -> tuple[np.ndarray, FieldOfView]:
    """FOV crop resized to size x size: the uint8 RGB picture the model sees, and the FOV."""
    if fov is None:
        fov = find_field_of_view(rgb)
    square = crop_to_field_of_view(rgb, fov)
    return cv2.resize(square, (size, size), interpolation=cv2.INTER_AREA), fov


def preprocess(
    rgb: np.ndarray, spec: InputSpec = InputSpec(), *, fov: FieldOfView | None = None
) -> tuple[np.ndarray, FieldOfView]:
    """The model's input contract applied: FOV crop, resize, normalise; float32 CHW input and the FOV."""
    square, fov = field_of_view_square(rgb, spec.size, fov=fov)
    return to_model_input(square, spec), fov


def to_model_input(rgb_square_uint8: np.ndarray, spec: InputSpec = InputSpec()) -> np.ndarray:
    """HxWx3 uint8 RGB -> 3xHxW float32 normalised with the spec's ``mean``/``std``."""
    _check_rgb(rgb_square_uint8)
    std = np.asarray(spec.std, np.float32).reshape(3, 1, 1)
    # Transpose the uint8 bytes, then scale in place: a quarter of the memory
    # traffic of transposing floats (2.7 -> 0.2 ms at 384x384).
    chw = np.ascontiguousarray(rgb_square_uint8.transpose(2, 0, 1)).astype(np.float32)
    chw *= 1.0 / (255.0 * std)
    chw -= np.asarray(spec.mean, np.float32).reshape(3, 1, 1) / std
    return chw


# --- detection steps -----------------------------------------------------------


@dataclass
class _Region:
    """The largest bright component at one threshold, and what can be rim of it."""

    mask: np.ndarray  # above the threshold and opened: every bright component
    blob: np.ndarray  # the largest of them, holes filled and closed
    area: int  # of blob
    box: tuple[int, int, int, int]  # x, y, w, h of blob
    outline: np.ndarray  # of blob, N x 2 integer x, y
    second_area: float  # of the second-largest bright component
    rim: np.ndarray  # outline points of blob that may lie on the FOV circle


@dataclass
class _Fit:
    circle: Circle
    inliers: np.ndarray  # rim points within tolerance of the circle
    fraction: float  # of all rim points
    rms: float  # of the inliers' distances to the circle, in tolerances

    @property
    def clean(self) -> bool:
        """The circle explains all of the rim outline, and closely."""
        return self.fraction >= _CLEAN_FRACTION and self.rms <= _CLEAN_RMS


def _find_circle(brightness: np.ndarray) -> tuple[Circle, str] | None:
    """The FOV circle in ``brightness`` pixel coordinates and how it was found.

    Threshold, keep the largest bright component, fit a circle to the part of
    its outline that can be rim, and check the component is that disc; the
    standard threshold first, then a low one, then one above a grey patch.
    Then the Hough transform, then the component's bounding box.
    """
    background, bright = _levels(brightness)
    if bright - background < _MIN_CONTRAST:
        return None
    shape = brightness.shape
    tolerance = max(1.5, 0.02 * min(shape))
    side = _odd(int(min(shape) * _OPEN_FRACTION))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (side, side))
    low_threshold = background + _LOW_FRACTION * (bright - background)
    _, dark = cv2.threshold(brightness, low_threshold, 1, cv2.THRESH_BINARY_INV)
    regions: list[_Region] = []

    def attempt(threshold: float) -> _Fit | None:
        region = _region(brightness, threshold, kernel)
        if region is None:
            return None
        regions.append(region)
        fit = _fit_by_threshold(region.rim, tolerance, shape)
        return fit if fit is not None and _plausible(fit, region, dark) else None

    best = attempt(background + _STANDARD_FRACTION * (bright - background))
    if best is None or not best.clean:
        # Some of the outline is not rim (a shadow boundary, a dark rim, glare)
        # or no circle fits at all: a low threshold may see all of the rim.
        # It replaces a plausible fit only when it fits the outline cleanly.
        low = attempt(low_threshold)
        if low is not None and (best is None or low.clean):
            best = low
    if best is None and regions and len(regions[0].rim) < 0.5 * len(regions[0].outline):
        # Mostly straight edges: perhaps a grey patch that the disc merged
        # with. Threshold again, above the patch's level.
        threshold = _above_grey_patch(brightness, regions[0], bright)
        if threshold is not None:
            best = attempt(threshold)
    if best is not None:
        return best.circle, "threshold"
    if not regions:
        return None
    first = regions[0]
    fit = _fit_by_hough(brightness, first.rim, 2 * tolerance)
    # The Hough circle comes from edges, not from this region's outline: it is
    # the fallback for outlines broken by reticles and bars, which may also
    # stick out of the disc.
    if fit is not None and _plausible(
        fit, first, dark, min_fraction=0.0, min_covered=_MIN_COVERED_HOUGH
    ):
        return fit.circle, "hough"
    for region in regions:
        circle = _fit_by_box(region)
        if circle is not None:
            return circle, "bbox"
    return None


def _above_grey_patch(brightness: np.ndarray, region: _Region, bright: float) -> float | None:
    """The standard threshold measured from the darker of two levels in ``region``, if any.

    When the disc sits on a grey (not black) patch, both are above the
    standard threshold and form one region. Otsu's threshold splits its
    pixels; the darker part's median is then the background that matters.
    """
    inside = brightness[region.blob.view(bool)].reshape(-1, 1)
    split, _ = cv2.threshold(inside, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    darker = inside[inside <= split]
    if darker.size == 0:
        return None
    grey = float(np.median(darker))
    if bright - grey < _MIN_CONTRAST:
        return None
    return grey + _STANDARD_FRACTION * (bright - grey)


def _check_rgb(rgb: np.ndarray) -> None:
    is_rgb = isinstance(rgb, np.ndarray) and rgb.ndim == 3 and rgb.shape[2] == 3
    if not (is_rgb and rgb.dtype == np.uint8):
        shape = getattr(rgb, "shape", None)
        dtype = getattr(rgb, "dtype", type(rgb).__name__)
        raise ValueError(f"expected an HxWx3 uint8 RGB array, got shape {shape} dtype {dtype}")


def _downscale(image: np.ndarray, max_side: int) -> tuple[np.ndarray, float, float]:
    """Integer-factor INTER_AREA shrink (OpenCV's fast path) to at most max_side."""
    h, w = image.shape[:2]
    factor = -(-max(h, w) // max_side)
    if factor == 1:
        return image, 1.0, 1.0
    sw, sh = max(1, w // factor), max(1, h // factor)
    small = cv2.resize(image, (sw, sh), interpolation=cv2.INTER_AREA)
    return small, w / sw, h / sh


def _rescale(circle: Circle, sx: float, sy: float) -> Circle:
    cx, cy, r = circle
    # Pixel centres sit at integer coordinates in both images.
    return (cx + 0.5) * sx - 0.5, (cy + 0.5) * sy - 0.5, r * (sx + sy) / 2


def _brightness(rgb: np.ndarray) -> np.ndarray:
    # Per-pixel max of R, G, B: the red channel on a normal fundus, but also
    # right for red-free (grey) and oddly tinted captures.
    r, g, b = cv2.split(rgb)
    return cv2.max(cv2.max(r, g), b)


def _levels(brightness: np.ndarray) -> tuple[float, float]:
    """Background level from the frame corners, bright level from the top 1 %."""
    # The corners are black on every fundus camera, even when the disc is
    # clipped on all four sides; a global low percentile is not (it lands in
    # the fundus when the black area is small). Text overlays often sit in a
    # corner, hence the darkest of the four medians.
    h, w = brightness.shape
    p = _corner_side(h, w)
    corners = (brightness[:p, :p], brightness[:p, -p:], brightness[-p:, :p], brightness[-p:, -p:])
    background = min(float(np.median(c)) for c in corners)
    cdf = np.cumsum(np.bincount(brightness.ravel(), minlength=256))
    bright = float(np.searchsorted(cdf, 0.99 * brightness.size))
    return background, bright


def _corner_side(h: int, w: int) -> int:
    return max(4, min(h, w) // 32)


def _region(brightness: np.ndarray, threshold: float, kernel: np.ndarray) -> _Region | None:
    """Largest bright component above ``threshold``, cleaned, and its possible rim."""
    _, mask = cv2.threshold(brightness, threshold, 1, cv2.THRESH_BINARY)
    # Opening removes background noise, thin text, and bars or reticle lines
    # thinner than the kernel; only then is the largest component picked, and
    # only it is closed (bridging vessels and lesions that notch the rim), so
    # a bar just beside the disc is never joined to it.
    mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, kernel)
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    if not contours:
        return None
    areas = np.array([cv2.contourArea(c) for c in contours])
    order = np.argsort(areas)[::-1]
    second_area = float(areas[order[1]]) if len(order) > 1 else 0.0
    blob = np.zeros_like(mask)
    cv2.drawContours(blob, contours, int(order[0]), 1, thickness=cv2.FILLED)
    blob = cv2.morphologyEx(blob, cv2.MORPH_CLOSE, kernel)
    contours, _ = cv2.findContours(blob, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    outline = max(contours, key=cv2.contourArea)
    if len(contours) > 1:  # closing cannot split a blob, but be safe
        blob[:] = 0
        cv2.drawContours(blob, [outline], 0, 1, thickness=cv2.FILLED)
    box = cv2.boundingRect(outline)
    points = outline.reshape(-1, 2)
    rim = _rim_points(points, box, mask.shape)
    return _Region(mask, blob, cv2.countNonZero(blob), box, points, second_area, rim)


def _rim_points(points: np.ndarray, box: tuple[int, int, int, int], shape) -> np.ndarray:
    """The outline without what cannot be rim: the frame edge and straight clip edges."""
    h, w = shape
    x, y = points[:, 0], points[:, 1]
    # Where the disc is clipped by the frame its outline runs along the frame.
    keep = (x > 1) & (x < w - 2) & (y > 1) & (y < h - 2)
    # Scanned prints and re-photographed screens clip the disc with a
    # rectangle inside the frame: the outline then runs along a side of its
    # bounding box. A circle only touches each side over 2 sqrt(2 r band)
    # pixels; a run twice as long is a clip edge and is dropped.
    bx, by, bw, bh = box
    run = 4 * np.sqrt(2 * max(bw, bh) / 2 * _FLAT_BAND)
    sides = (
        (x - bx <= _FLAT_BAND, y),
        (bx + bw - 1 - x <= _FLAT_BAND, y),
        (y - by <= _FLAT_BAND, x),
        (by + bh - 1 - y <= _FLAT_BAND, x),
    )
    for near, along in sides:
        if near.any() and np.ptp(along[near]) > run:
            keep &= ~near
    return points[keep].astype(np.float64)


def _fit_by_threshold(points: np.ndarray, tolerance: float, shape) -> _Fit | None:
    """Circle through the rim points: least squares, RANSAC when outliers pull it off.

    RANSAC makes the fit robust to a large share of non-rim outline (a
    shadow boundary across the retina, glare, a tab, a bar or text touching
    the disc): only the rim that exists has to agree. A clean outline, the
    usual case, skips it.
    """
    if len(points) < _MIN_POINTS:
        return None
    circle = _kasa_fit(points)
    if circle is None or _near(points, circle, tolerance).mean() < _CLEAN_FRACTION:
        circle = _ransac_circle(points, tolerance, shape)
    for _ in range(2):  # least squares on the inliers, twice: sheds notches and text
        if circle is None:
            return None
        keep = _near(points, circle, tolerance)
        if keep.sum() < _MIN_POINTS:
            return None
        circle = _kasa_fit(points[keep])
    if circle is None:
        return None
    return _make_fit(_with_edge_offset(circle), points, tolerance)


def _ransac_circle(points: np.ndarray, tolerance: float, shape) -> Circle | None:
    """The circle through three rim points that most rim points agree with."""
    h, w = shape
    r_min, r_max = _MIN_RADIUS_FRACTION * min(h, w), _MAX_RADIUS_FRACTION * max(h, w)
    sample = points[:: max(1, len(points) // _RANSAC_POINTS)]
    origin = sample.mean(axis=0)
    sample = sample - origin
    rng = np.random.default_rng(0)  # deterministic: the same image always gives the same FOV
    a, b, c = (sample[i] for i in rng.integers(0, len(sample), (3, _RANSAC_TRIALS)))
    ba, ca = b - a, c - a
    det = 2 * (ba[:, 0] * ca[:, 1] - ba[:, 1] * ca[:, 0])
    bb, cc = (ba * ba).sum(axis=1), (ca * ca).sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        ux = (ca[:, 1] * bb - ba[:, 1] * cc) / det
        uy = (ba[:, 0] * cc - ca[:, 0] * bb) / det
    r = np.hypot(ux, uy)
    ok = np.isfinite(r) & (r >= r_min) & (r <= r_max)
    if not ok.any():
        return None
    cx, cy, r = a[ok, 0] + ux[ok], a[ok, 1] + uy[ok], r[ok]
    distance = np.hypot(sample[None, :, 0] - cx[:, None], sample[None, :, 1] - cy[:, None])
    votes = (np.abs(distance - r[:, None]) < tolerance).sum(axis=1)
    k = int(np.argmax(votes))
    return float(cx[k] + origin[0]), float(cy[k] + origin[1]), float(r[k])


def _fit_by_hough(brightness: np.ndarray, points: np.ndarray, tolerance: float) -> _Fit | None:
    """Coarse Hough circle on a small copy, refined on the outline points that agree with it."""
    # HoughCircles' cost grows with edge count x radius range: on a textured
    # non-fundus photo it takes seconds at 512 px, milliseconds at 160 px.
    tiny, sx, sy = _downscale(brightness, _HOUGH_SIDE)
    h, w = tiny.shape
    circles = cv2.HoughCircles(
        cv2.GaussianBlur(tiny, (5, 5), 0),
        cv2.HOUGH_GRADIENT,
        dp=1,
        minDist=max(h, w),
        param1=60,
        param2=30,
        minRadius=int(_MIN_RADIUS_FRACTION * min(h, w)),
        maxRadius=int(_MAX_RADIUS_FRACTION * max(h, w)),
    )
    if circles is None:
        return None
    coarse = _rescale(tuple(float(v) for v in circles[0, 0]), sx, sy)
    near = _near(points, coarse, tolerance) if len(points) else np.zeros(0, bool)
    refined = _kasa_fit(points[near]) if near.sum() >= _MIN_POINTS else None
    circle = _with_edge_offset(refined) if refined is not None else coarse
    return _make_fit(circle, points, tolerance)


def _make_fit(circle: Circle, points: np.ndarray, tolerance: float) -> _Fit:
    cx, cy, r = circle
    # Outline pixels are half a pixel inside the edge the circle was offset to.
    residual = np.hypot(points[:, 0] - cx, points[:, 1] - cy) - (r - 0.5)
    keep = np.abs(residual) < tolerance
    if not keep.any():
        return _Fit(circle, points[keep], 0.0, np.inf)
    rms = float(np.sqrt(np.mean(residual[keep] ** 2)) / tolerance)
    return _Fit(circle, points[keep], float(keep.mean()), rms)


def _fit_by_box(region: _Region) -> Circle | None:
    """Circle through the bounding-box corners of one large, compact, roundish component."""
    h, w = region.mask.shape
    x, y, bw, bh = region.box
    if min(bw, bh) < _BOX_MIN_SIDE * min(h, w) or max(bw, bh) > _BOX_MAX_ASPECT * min(bw, bh):
        return None
    # A FOV leaves the frame corners dark even when clipped on every side; a
    # photograph's bright region runs into them.
    p = _corner_side(h, w)
    rows, cols = (slice(0, p), slice(h - p, h)), (slice(0, p), slice(w - p, w))
    if any(region.blob[r, c].any() for r in rows for c in cols):
        return None
    extent = region.area / (bw * bh)
    # A fundus has rounded corners even where it is clipped; a page or a
    # screen (extent near 1) does not, and a ragged blob is not a retina.
    if not (_BOX_EXTENT[0] <= extent <= _BOX_EXTENT[1]):
        return None
    if region.area < _BOX_MIN_SOLIDITY * cv2.contourArea(cv2.convexHull(region.outline)):
        return None
    if region.second_area > _BOX_MAX_SECOND * region.area:
        return None
    if _straight_fraction(region.outline, (h, w)) > _BOX_MAX_STRAIGHT:
        return None  # a page, a screen, a card: straight sides inside the frame
    outside = cv2.countNonZero(region.mask) - cv2.countNonZero(region.mask[y : y + bh, x : x + bw])
    if outside > _MAX_OUTSIDE_FILL * (h * w - bw * bh):
        return None
    # Pixel centres sit at integers: the box spans x - 0.5 .. x + bw - 0.5.
    return x + (bw - 1) / 2, y + (bh - 1) / 2, float(np.hypot(bw, bh) / 2)


def _straight_fraction(outline: np.ndarray, shape) -> float:
    """Share of the outline, away from the frame edge, on long straight sides."""
    h, w = shape
    perimeter = cv2.arcLength(outline.reshape(-1, 1, 2), True)
    polygon = cv2.approxPolyDP(outline.reshape(-1, 1, 2), 0.004 * perimeter, True)
    start = polygon.reshape(-1, 2).astype(np.float64)
    end = np.roll(start, -1, axis=0)
    length = np.hypot(*(end - start).T)
    # Sides along the frame are where the frame clips the disc: not counted.
    on_frame = np.zeros(len(start), bool)
    for axis, limit in ((0, 0), (0, w - 1), (1, 0), (1, h - 1)):
        on_frame |= (np.abs(start[:, axis] - limit) <= 2) & (np.abs(end[:, axis] - limit) <= 2)
    inner = length[~on_frame]
    total = inner.sum()
    if total <= 0:
        return 1.0
    return float(inner[inner >= _LONG_SIDE * total].sum() / total)


def _near(points: np.ndarray, circle: Circle, tolerance: float) -> np.ndarray:
    cx, cy, r = circle
    return np.abs(np.hypot(points[:, 0] - cx, points[:, 1] - cy) - r) < tolerance


def _with_edge_offset(circle: Circle) -> Circle:
    # Outline pixels are the outermost inside pixels: the edge is half a pixel out.
    return circle[0], circle[1], circle[2] + 0.5


def _kasa_fit(points: np.ndarray) -> Circle | None:
    # x^2 + y^2 + D x + E y + F = 0 is linear in D, E, F. With the points
    # centred, sum(x) = sum(y) = 0 and the normal equations split into a 2x2
    # system for D, E and F = -mean(x^2 + y^2).
    mean = points.mean(axis=0)
    x, y = (points - mean).T
    z = x * x + y * y
    sxx, syy, sxy = x @ x, y @ y, x @ y
    det = sxx * syy - sxy * sxy
    if det <= 1e-9 * max(sxx * syy, 1.0):
        return None
    xz, yz = x @ z, y @ z
    d = -(syy * xz - sxy * yz) / det
    e = -(sxx * yz - sxy * xz) / det
    r2 = (d * d + e * e) / 4 + z.mean()
    if r2 <= 0:
        return None
    return float(mean[0] - d / 2), float(mean[1] - e / 2), float(np.sqrt(r2))


def _plausible(
    fit: _Fit,
    region: _Region,
    dark: np.ndarray,
    *,
    min_fraction: float = _MIN_INLIERS,
    min_covered: float = _MIN_COVERED,
) -> bool:
    """Size within camera norms, enough rim behind it, and the bright region is that disc.

    ``dark`` marks pixels at the background level.
    """
    cx, cy, r = fit.circle
    h, w = region.mask.shape
    if not (_MIN_RADIUS_FRACTION * min(h, w) <= r <= _MAX_RADIUS_FRACTION * max(h, w)):
        return False
    if not (0 <= cx < w and 0 <= cy < h):
        return False
    if len(fit.inliers) < _MIN_POINTS or fit.fraction < min_fraction:
        return False
    # The rim found must span a real arc, not a short stretch extrapolated.
    angles = np.sort(np.arctan2(fit.inliers[:, 1] - cy, fit.inliers[:, 0] - cx))
    gaps = np.diff(angles, append=angles[0] + 2 * np.pi)
    if gaps.max() > _MAX_RIM_GAP:
        return False
    disc = np.zeros_like(region.mask)
    _draw_disc(disc, (cx, cy), r)
    inside = cv2.countNonZero(cv2.bitwise_and(region.blob, disc))
    if inside < min_covered * region.area:  # bright retina left outside the circle
        return False
    if region.area < _MIN_DISC_AREA * np.pi * r * r:  # a small region, a huge circle
        return False
    # Inside the region's bounding box the circle must be bright: outside the
    # box the disc may be clipped away (by a rectangle, not only the frame).
    x, y, bw, bh = region.box
    box_disc = disc[y : y + bh, x : x + bw]
    disc_in_box = cv2.countNonZero(box_disc)
    if inside < _MIN_BOX_FILL * disc_in_box:
        return False
    # What the region lacks there may be retina in shadow, but not black
    # background: a semicircle or an ellipse is not a disc with missing rim.
    missing = cv2.bitwise_and(box_disc, dark[y : y + bh, x : x + bw])
    missing = cv2.countNonZero(missing) - cv2.countNonZero(
        cv2.bitwise_and(missing, region.blob[y : y + bh, x : x + bw])
    )
    if missing > _MAX_DARK_IN_DISC * disc_in_box:
        return False
    disc_area = cv2.countNonZero(disc)
    bright_outside = cv2.countNonZero(region.mask) - cv2.countNonZero(
        cv2.bitwise_and(region.mask, disc)
    )
    return bright_outside <= _MAX_OUTSIDE_FILL * max(1, h * w - disc_area)


def _draw_disc(canvas: np.ndarray, centre: tuple[float, float], radius: float) -> None:
    # cv2.circle takes fixed-point coordinates: 4 fractional bits = 1/16 px.
    shift = 4
    one = 1 << shift
    cv2.circle(
        canvas,
        (int(round(centre[0] * one)), int(round(centre[1] * one))),
        int(round(radius * one)),
        1,
        thickness=-1,
        lineType=cv2.LINE_8,
        shift=shift,
    )


def _is_clipped(cx: float, cy: float, r: float, w: int, h: int) -> bool:
    # A circle that merely touches an edge (pre-cropped images) is not clipped.
    slack = 0.01 * r + 1.0
    # The image spans -0.5 .. w-0.5 (pixel centres at integers).
    overshoot = max(-0.5 - (cx - r), -0.5 - (cy - r), cx + r - (w - 0.5), cy + r - (h - 0.5))
    return overshoot > slack


def _odd(n: int) -> int:
    return max(3, n | 1)

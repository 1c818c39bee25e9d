"""Procedural colour fundus photographs, deterministic from a seed.

Used by tests and, under a degradation simulator, as extra variety when
training a quality model. The picture follows the anatomy a grader expects at
a glance: an orange-red to brown-red fundus (optionally tessellated), darker
towards the rim; an optic disc ~2.5 disc diameters (DD) nasal of the fovea and
slightly above it (right of the macula in a right eye, left in a left eye);
a dark macula with a foveal reflex; arteries (lighter, thinner) and veins
(darker, wider) leaving the disc in arcades around the macula, branching and
tapering, never entering the foveal avascular zone; optional diabetic
retinopathy lesions.

:func:`generate_fundus` is :func:`sample_params` followed by :func:`render`.
Every random choice, down to each vessel point and lesion, is stored in the
:class:`SynthParams` (textures as the seeds they are drawn from), so
``render(params)`` reproduces the image bit for bit, and
``render(dataclasses.replace(params, size=1024))`` draws the same eye larger.

Geometry is in FOV units: the field of view (FOV) has radius 1 and its centre
is the origin, x to the right and y down, as in the image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

__all__ = [
    "LESION_KINDS",
    "Blob",
    "Lesion",
    "SynthParams",
    "Vessel",
    "generate_fundus",
    "render",
    "sample_params",
    "vessel_mask",
]

LESION_KINDS: tuple[str, ...] = ("microaneurysms", "haemorrhages", "exudates", "cotton_wool_spots")

RGB = tuple[float, float, float]
Point = tuple[float, float]

# Pigmentation extremes, linear 0..1 RGB: a light Caucasian fundus (orange-red)
# and a heavily pigmented one (brown-red); measured on real photographs.
_LIGHT_FUNDUS: RGB = (0.92, 0.37, 0.26)
_DARK_FUNDUS: RGB = (0.56, 0.22, 0.12)
# Transmittance of blood relative to the fundus behind it: haemoglobin absorbs
# green and blue far more than red, so vessels and bleeds are dark red.
_VEIN_T: RGB = (0.74, 0.36, 0.50)
_ARTERY_T: RGB = (0.90, 0.60, 0.70)
_BLOOD_T: RGB = (0.66, 0.32, 0.42)
_FLAME_T: RGB = (0.76, 0.42, 0.50)

_OPACITY_WIDTH = 0.006  # FOV units: a vessel this wide absorbs 63 % of what it can
_REFLEX_WIDTH = 0.012  # FOV units: vessels this wide show a central light reflex
_SUPERSAMPLE = 2  # vessel and lesion canvases are drawn this much larger, then area-averaged
_SHIFT = 3  # cv2 fixed-point drawing: 1/8 px positions
_STEP = 0.012  # vessel growth step, FOV units (~3 px at 512)
_MIN_WIDTH = 0.0035  # thinnest vessel kept, FOV units (~0.9 px at 512)
_MAX_VESSEL_STEPS = 9000  # bounds the growth time whatever the draw
_MAX_DEPTH = 5  # branching generations below a trunk
_GRID = 32  # cells across the FOV for the vessel occupancy grid
_MAX_GAP = 0.075  # FOV units: larger vessel-free gaps get a branch sprouted into them
_MAX_FILLS = 80  # gap-filling branches at most
_CURVE_MEMORY = 0.94  # per step: vessel curvature decorrelates over ~0.2 FOV radii


@dataclass(frozen=True)
class Vessel:
    """One vessel segment from its origin to its end: (x, y, width) per point, FOV units."""

    kind: str  # "artery" or "vein"
    path: tuple[tuple[float, float, float], ...]


@dataclass(frozen=True)
class Blob:
    """An ellipse in FOV units; ``angle`` in degrees, clockwise in the image."""

    x: float
    y: float
    rx: float
    ry: float
    angle: float


@dataclass(frozen=True)
class Lesion:
    """A lesion drawn as the union of its blobs."""

    kind: str  # one of LESION_KINDS
    subtype: str  # haemorrhages: "dot", "blot" or "flame"; otherwise ""
    blobs: tuple[Blob, ...]


@dataclass(frozen=True)
class SynthParams:
    """Everything a synthetic fundus is drawn from (see the module docstring for units)."""

    size: int  # output is size x size pixels
    eye: str  # "R" (disc right of the macula) or "L"
    fov_centre: Point  # fractions of the image side
    fov_radius: float  # fraction of the image side
    fov_clip: float  # visible half-height of the FOV, FOV units; 1.0 means not clipped
    pigmentation: float  # 0 light orange-red .. 1 dark brown-red
    background_rgb: RGB  # fundus colour at full illumination, 0..1
    exposure: float
    vignetting: float  # brightness lost at the rim
    illumination_tilt: Point  # linear brightness gradient across the FOV
    texture_strength: float  # choroidal low-frequency mottling
    texture_seed: int
    tessellation: float  # 0 none .. 1 strongly tessellated (tigroid) choroid
    fovea: Point
    disc_centre: Point
    disc_radius: float  # horizontal; DD = 2 x disc_radius
    disc_aspect: float  # vertical over horizontal radius
    cup_to_disc: float
    disc_rgb: RGB  # neuroretinal rim
    cup_rgb: RGB
    disc_glow: float  # peripapillary brightening
    macula_depth: float  # darkening of the macula (~1 DD wide)
    fovea_depth: float  # extra darkening of the fovea
    foveal_reflex: float
    vessels: tuple[Vessel, ...]
    vessel_reflex: float  # central light reflex along the larger vessels
    lesions: tuple[Lesion, ...]
    exudate_rgb: RGB
    blur: float  # optical softness, FOV units
    noise_sigma: float  # sensor noise, 0..1 scale
    noise_seed: int

    @property
    def disc_diameter(self) -> float:
        return 2.0 * self.disc_radius

    @property
    def lesion_counts(self) -> dict[str, int]:
        """Number of lesions of each of LESION_KINDS (0 for those absent)."""
        # Derived, never stored: it cannot disagree with ``lesions`` after a dataclasses.replace.
        return {kind: sum(lesion.kind == kind for lesion in self.lesions) for kind in LESION_KINDS}


# --- public API ----------------------------------------------------------------


def generate_fundus(
    seed: int | np.random.Generator,
    *,
    size: int = 512,
    eye: str | None = None,
    lesions: bool | dict[str, int] = False,
    fov_clip: bool = False,
) -> tuple[np.ndarray, SynthParams]:
    """A synthetic HxWx3 uint8 RGB fundus photograph and the parameters it was drawn from.

    ``eye`` is "R", "L" or None (random). ``lesions`` is False (healthy),
    True (random diabetic retinopathy counts) or a dict of counts keyed by
    :data:`LESION_KINDS` (missing kinds are 0). ``fov_clip`` cuts the top and
    bottom of the FOV off with straight edges, as many cameras' frames do.
    The same seed gives the same eye whatever ``lesions`` says.
    """
    params = sample_params(seed, size=size, eye=eye, lesions=lesions, fov_clip=fov_clip)
    return render(params), params


def sample_params(
    seed: int | np.random.Generator,
    *,
    size: int = 512,
    eye: str | None = None,
    lesions: bool | dict[str, int] = False,
    fov_clip: bool = False,
) -> SynthParams:
    """Draw every parameter of a synthetic fundus (see :func:`generate_fundus`)."""
    if size < 32:
        raise ValueError(f"size must be at least 32 pixels, got {size}")
    if eye not in (None, "R", "L"):
        raise ValueError(f"eye must be 'R', 'L' or None, got {eye!r}")
    counts_asked = _check_lesions(lesions)
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    # Independent streams, so that asking for lesions (or not) leaves the eye,
    # its vessels and its textures unchanged.
    anatomy_rng, vessel_rng, lesion_rng = (
        np.random.default_rng(s) for s in rng.integers(0, 2**63, size=3)
    )
    anatomy = _draw_anatomy(anatomy_rng, size, eye, fov_clip)
    side = 1.0 if anatomy["eye"] == "R" else -1.0
    vessels = _VesselTree(vessel_rng, anatomy["fovea"], anatomy["disc_centre"], anatomy["disc_radius"], side).grow()
    if counts_asked is None:
        counts_asked = _random_lesion_counts(lesion_rng) if lesions else dict.fromkeys(LESION_KINDS, 0)
    found = _draw_lesions(lesion_rng, counts_asked, anatomy["fovea"], anatomy["disc_centre"], anatomy["disc_radius"])
    return SynthParams(**anatomy, vessels=vessels, lesions=found)


def render(params: SynthParams) -> np.ndarray:
    """Draw the fundus described by ``params``: HxWx3 uint8 RGB, black outside the FOV."""
    frame = _Frame(params)
    illumination = _illumination(params, frame)
    image = _fundus_background(params, frame, illumination)
    _draw_macula(image, params, frame)
    fundus = image.copy()  # what the vessels' colour is relative to, on and off the disc
    _draw_disc(image, params, frame)
    layers = _LesionLayers(params, frame)
    layers.apply(image, illumination, deep=True)
    _draw_vessels(image, fundus, params, frame)
    layers.apply(image, illumination, deep=False)
    _draw_foveal_reflex(image, params, frame)
    return _finish(image, params, frame)


def vessel_mask(params: SynthParams) -> np.ndarray:
    """Boolean HxW mask of the pixels at least half covered by a vessel (ground truth)."""
    frame = _Frame(params)
    veins = _vessel_alpha(params, frame, "vein", opacity=False)
    arteries = _vessel_alpha(params, frame, "artery", opacity=False)
    coverage = np.maximum(veins, arteries)
    return (coverage >= 0.5) & (_fov_alpha(params, frame) >= 0.5)


# --- parameter drawing ---------------------------------------------------------


def _check_lesions(lesions: bool | dict[str, int]) -> dict[str, int] | None:
    """The counts asked for, or None when they are to be drawn (or none)."""
    if isinstance(lesions, bool):
        return None
    if not isinstance(lesions, dict):
        raise TypeError(f"lesions must be a bool or a dict of counts, got {type(lesions).__name__}")
    unknown = set(lesions) - set(LESION_KINDS)
    if unknown:
        raise ValueError(f"unknown lesion kinds {sorted(unknown)}; expected some of {LESION_KINDS}")
    if any(int(n) != n or n < 0 for n in lesions.values()):
        raise ValueError(f"lesion counts must be non-negative integers, got {lesions}")
    return {kind: int(lesions.get(kind, 0)) for kind in LESION_KINDS}


def _draw_anatomy(rng: np.random.Generator, size: int, eye: str | None, fov_clip: bool) -> dict:
    """Everything but the vessels and lesions, as SynthParams keyword arguments."""
    eye = eye or ("R" if rng.random() < 0.5 else "L")
    side = 1.0 if eye == "R" else -1.0
    radius = rng.uniform(0.44, 0.49)
    slack = min(0.01, 0.497 - radius)  # keep the whole circle inside the frame
    centre = (0.5 + rng.uniform(-slack, slack), 0.5 + rng.uniform(-slack, slack))
    disc_radius = rng.uniform(0.115, 0.145)
    dd = 2 * disc_radius
    # Macula-centred field: fovea near the centre, nudged away from the disc so
    # that the disc (2.3-2.7 DD nasal, 4-10 degrees above) stays inside the FOV.
    fovea = (-side * rng.uniform(0.02, 0.10), rng.uniform(-0.03, 0.06))
    distance = rng.uniform(2.3, 2.7) * dd
    elevation = math.radians(rng.uniform(4.0, 10.0))
    disc = (fovea[0] + side * distance * math.cos(elevation), fovea[1] - distance * math.sin(elevation))
    pigmentation = rng.uniform(0.0, 1.0)
    return {
        "size": int(size),
        "eye": eye,
        "fov_centre": centre,
        "fov_radius": radius,
        "fov_clip": rng.uniform(0.78, 0.92) if fov_clip else 1.0,
        "pigmentation": pigmentation,
        "background_rgb": _background_colour(rng, pigmentation),
        "exposure": rng.uniform(0.95, 1.1),
        "vignetting": rng.uniform(0.15, 0.4),
        "illumination_tilt": (rng.normal(0, 0.05), rng.normal(0, 0.05)),
        "texture_strength": rng.uniform(0.03, 0.07),
        "texture_seed": int(rng.integers(0, 2**31)),
        "tessellation": rng.uniform(0.3, 0.9) if rng.random() < 0.35 else 0.0,
        "fovea": fovea,
        "disc_centre": disc,
        "disc_radius": disc_radius,
        "disc_aspect": rng.uniform(1.04, 1.15),
        "cup_to_disc": 0.15 + 0.5 * rng.beta(2.0, 3.0),
        "disc_rgb": (rng.uniform(0.95, 1.0), rng.uniform(0.66, 0.78), rng.uniform(0.45, 0.58)),
        "cup_rgb": (1.0, rng.uniform(0.86, 0.95), rng.uniform(0.66, 0.80)),
        "disc_glow": rng.uniform(0.15, 0.35),
        "macula_depth": rng.uniform(0.2, 0.35),
        "fovea_depth": rng.uniform(0.15, 0.3),
        "foveal_reflex": rng.uniform(0.0, 0.5),
        "vessel_reflex": rng.uniform(0.0, 0.25),
        "exudate_rgb": (rng.uniform(0.95, 1.0), rng.uniform(0.85, 0.95), rng.uniform(0.55, 0.72)),
        "blur": rng.uniform(0.35, 0.8) / 240.0,  # 0.35-0.8 px at 512
        "noise_sigma": rng.uniform(0.004, 0.012),
        "noise_seed": int(rng.integers(0, 2**31)),
    }


def _background_colour(rng: np.random.Generator, pigmentation: float) -> RGB:
    base = [lo + pigmentation * (hi - lo) for lo, hi in zip(_LIGHT_FUNDUS, _DARK_FUNDUS, strict=True)]
    # Fundi range from yellow-orange to crimson at the same pigmentation.
    return (base[0], base[1] * rng.uniform(0.88, 1.2), base[2] * rng.uniform(0.75, 1.25))


def _random_lesion_counts(rng: np.random.Generator) -> dict[str, int]:
    severity = rng.uniform()  # mild non-proliferative .. severe
    return {
        "microaneurysms": int(rng.integers(3, 8 + 30 * severity)),
        "haemorrhages": int(rng.integers(0, 2 + 16 * severity)),
        "exudates": int(rng.integers(0, 5 + 50 * severity)),
        "cotton_wool_spots": int(rng.integers(0, 1 + 4 * severity)),
    }


# --- vessel tree -----------------------------------------------------------------


@dataclass(frozen=True)
class _Guide:
    """Half-ellipse a trunk follows: it leaves the disc at theta = 0, tangent vertical."""

    cx: float
    cy: float
    a: float  # horizontal semi-axis; the disc sits at (cx + toward_disc * a, cy)
    b: float  # vertical semi-axis
    toward_disc: float  # +1 or -1
    hemi: float  # -1 above, +1 below
    theta_end: float  # beyond this the trunk only keeps the direction it had here

    def theta(self, x: float, y: float) -> float:
        return math.atan2(self.hemi * (y - self.cy) / self.b, self.toward_disc * (x - self.cx) / self.a)

    def point(self, theta: float) -> Point:
        return (self.cx + self.toward_disc * self.a * math.cos(theta), self.cy + self.hemi * self.b * math.sin(theta))

    def tangent(self, theta: float) -> float:
        """Direction of travel at ``theta``, radians."""
        return math.atan2(self.hemi * self.b * math.cos(theta), -self.toward_disc * self.a * math.sin(theta))


@dataclass
class _Sprout:
    """A vessel waiting to be grown."""

    x: float
    y: float
    heading: float  # radians, image coordinates (y down)
    width: float
    kind: str
    hemi: float  # -1 superior, +1 inferior: the raphe is not crossed temporally
    length: float  # growth budget, FOV units
    depth: int
    guide: _Guide | None = None


class _VesselTree:
    """Grows arteries and veins from the disc by steered random walks with branching.

    The temporal arcade trunks pursue a jittered half-ellipse round the
    macula; the nasal trunks and all branches wander with a smoothly varying
    curvature. Branches leave at 30-75 degrees towards the emptier side, with
    widths from Murray's law; vessels turn away from the fovea and the
    horizontal raphe and stop at the foveal avascular zone, the raphe, the
    FOV rim or when they have tapered away. Gaps the tree leaves are then
    filled with branches sprouted into them.
    """

    def __init__(self, rng: np.random.Generator, fovea: Point, disc: Point, disc_radius: float, side: float):
        self.rng = rng
        self.fovea = fovea
        self.disc = disc
        self.dd = 2 * disc_radius
        self.side = side  # +1: disc right of the fovea (right eye)
        self.avoid = 0.9 * self.dd  # vessels turn away from the fovea inside this
        self.faz = rng.uniform(0.25, 0.4) * self.dd  # visibly avascular
        self.steps_left = _MAX_VESSEL_STEPS
        # Vessel length laid down per cell of a coarse grid over the FOV: new
        # branches head for the emptier side, so the tree fills the retina
        # evenly instead of bunching.
        self.occupancy = np.zeros((_GRID, _GRID))
        # Every vessel point (x, y, width, heading) and the sprout it belongs to.
        self.anchors: list[tuple[float, float, float, float]] = []
        self.anchor_sprouts: list[_Sprout] = []
        self._table = np.zeros((0, 4))

    def grow(self) -> tuple[Vessel, ...]:
        vessels: list[Vessel] = []
        queue = self._trunks()
        for _ in range(_MAX_FILLS + 1):
            while queue and self.steps_left > 0:
                path, children = self._walk(queue.pop(0))
                if len(path) >= 2:
                    vessels.append(Vessel(path[0][3], tuple(p[:3] for p in path)))
                queue.extend(children)
            # A random tree leaves gaps that no real retina has: sprout a
            # branch into the largest one, until none is left.
            fill = self._fill_sprout()
            if fill is None or self.steps_left <= 0:
                break
            queue = [fill]
        return tuple(vessels)

    def _fill_sprout(self) -> _Sprout | None:
        """A branch towards the centre of the largest gap left, or None when there is none."""
        while (target := self._largest_gap()) is not None:
            sprout = self._sprout_towards(*target)
            if sprout is not None:
                return sprout
        return None

    def _largest_gap(self) -> Point | None:
        """Centre of the grid cell farthest from any vessel, if farther than _MAX_GAP; claims it."""
        centres = (np.arange(_GRID) + 0.5) * (2.0 / _GRID) - 1.0
        gx, gy = np.meshgrid(centres, centres)
        fx, fy = self.fovea
        # Gaps are measured to the nearest vessel (the macula and the disc
        # count as vessel: the macula is meant to be sparse), and past the rim.
        open_ = (
            (self.occupancy == 0)
            & (np.hypot(gx - fx, gy - fy) > 0.8 * self.dd)
            & (np.hypot(gx - self.disc[0], gy - self.disc[1]) > self.dd)
        )
        gap = cv2.distanceTransform(open_.astype(np.uint8), cv2.DIST_L2, 5) * (2.0 / _GRID)
        gap[gx * gx + gy * gy > 0.85**2] = 0.0  # only gaps inside the FOV are filled
        row, col = np.unravel_index(int(np.argmax(gap)), gap.shape)
        if gap[row, col] < _MAX_GAP:
            return None
        # Claimed whether or not a branch gets there (the raphe or the fovea
        # may turn it away): a gap is tried once, never fanned into.
        self.occupancy[row, col] = 1e-9
        return float(gx[row, col]), float(gy[row, col])

    def _sprout_towards(self, tx: float, ty: float) -> _Sprout | None:
        """A branch from the nearest vessel point that can give one towards (tx, ty)."""
        anchors = self._anchor_table()
        dx, dy = tx - anchors[:, 0], ty - anchors[:, 1]
        distance = np.hypot(dx, dy)
        # Branches leave forwards (< 80 degrees off the parent's course), from
        # vessels wide enough to give one, off the disc.
        forward = np.cos(anchors[:, 3]) * dx + np.sin(anchors[:, 3]) * dy > 0.17 * distance
        usable = forward & (anchors[:, 2] > 3.0 * _MIN_WIDTH)
        usable &= np.hypot(anchors[:, 0] - self.disc[0], anchors[:, 1] - self.disc[1]) > 0.7 * self.dd
        if not usable.any():
            return None
        k = int(np.flatnonzero(usable)[np.argmin(distance[usable])])
        x, y, width, _ = anchors[k]
        parent = self.anchor_sprouts[k]
        length = float(distance[k]) * self.rng.uniform(1.3, 2.0)  # through the gap and on
        return _Sprout(
            x, y, math.atan2(dy[k], dx[k]), width * self.rng.uniform(0.55, 0.8), parent.kind, parent.hemi, length,
            min(parent.depth + 1, _MAX_DEPTH - 1),
        )

    def _trunks(self) -> list[_Sprout]:
        rng, s = self.rng, self.side
        vein_w = rng.uniform(0.024, 0.030)
        artery_w = vein_w * rng.uniform(0.66, 0.78)
        sprouts = []
        for hemi in (-1.0, 1.0):
            # Artery and vein of one arcade share its course, a little apart
            # (so that they run side by side and now and then cross).
            a, b = rng.uniform(1.6, 2.3), rng.uniform(1.6, 2.1)
            apart = rng.uniform(0.1, 0.25) * rng.choice((-1.0, 1.0))
            for kind, width in (("vein", vein_w), ("artery", artery_w)):
                # Guided until past the fovea; then only loosely, fanning out temporally.
                theta_end = rng.uniform(0.4, 0.5) * math.pi
                course = (a + apart + rng.normal(0, 0.1), b + apart + rng.normal(0, 0.1), theta_end)
                apart = -apart
                sprouts.append(self._temporal_arcade(kind, width * rng.uniform(0.92, 1.08), hemi, *course))
                # The nasal vessels leave obliquely and run to the rim unguided.
                heading = math.atan2(hemi * rng.uniform(0.6, 1.6), s)
                sprouts.append(self._sprout_at_disc(kind, heading, width * rng.uniform(0.55, 0.75), 2.0, depth=0))
        # Small papillomacular vessels towards the macula and a few nasal ones;
        # they branch off the trunks at the disc margin, leaving the disc clear.
        for _ in range(int(rng.integers(2, 5))):
            kind = "artery" if rng.random() < 0.5 else "vein"
            heading = math.atan2(rng.normal(0, 0.6), -s)
            sprouts.append(self._sprout_at_margin(kind, heading, rng.uniform(0.004, 0.008), rng.uniform(0.5, 1.0)))
        for _ in range(int(rng.integers(1, 3))):
            kind = "artery" if rng.random() < 0.5 else "vein"
            heading = math.atan2(rng.normal(0, 0.6), s)
            sprouts.append(self._sprout_at_margin(kind, heading, rng.uniform(0.006, 0.011), 1.0))
        return sprouts

    def _sprout_at_margin(self, kind: str, heading: float, width: float, length: float) -> _Sprout:
        sprout = self._sprout_at_disc(kind, heading, width, length)
        reach = 0.4 * self.dd
        sprout.x += reach * math.cos(heading)
        sprout.y += reach * math.sin(heading)
        return sprout

    def _sprout_at_disc(self, kind: str, heading: float, width: float, length: float, depth: int = 1) -> _Sprout:
        rng = self.rng
        # Vessels emerge from the cup, a little nasal of the disc centre.
        x = self.disc[0] + self.side * 0.05 * self.dd + rng.normal(0, 0.06 * self.dd)
        y = self.disc[1] + rng.normal(0, 0.08 * self.dd)
        hemi = 1.0 if math.sin(heading) >= 0 else -1.0
        return _Sprout(x, y, heading, width, kind, hemi, length, depth)

    def _temporal_arcade(
        self, kind: str, width: float, hemi: float, a_dd: float, b_dd: float, theta_end: float
    ) -> _Sprout:
        """A trunk leaving the disc vertically and arching temporally round the macula."""
        t = -self.side
        start = self._sprout_at_disc(kind, 0.0, width, 3.0, depth=0)
        a, b = a_dd * self.dd, b_dd * self.dd
        # Centred level with the fovea, so the arcades pass about as far above it as below.
        guide = _Guide(self.disc[0] + t * a, self.fovea[1], a, b, -t, hemi, theta_end)
        heading = math.atan2(hemi, t * self.rng.uniform(0.1, 0.4))
        return _Sprout(start.x, start.y, heading, width, kind, hemi, 3.0, 0, guide)

    def _walk(self, sprout: _Sprout) -> tuple[list[tuple[float, float, float, str]], list[_Sprout]]:
        """Grow one vessel; returns its path and the branches it spawned."""
        rng = self.rng
        n = max(2, int(sprout.length / _STEP))
        wiggle = rng.normal(0.0, 1.0, n)
        branch_draws = rng.random(n)
        x, y, heading, width = sprout.x, sprout.y, sprout.heading, sprout.width
        # Taper so that a branch thins to the minimum over its length budget;
        # trunks taper mostly by giving flow to their branches.
        taper_length = sprout.length / math.log(max(width / _MIN_WIDTH, 1.01)) if sprout.depth else 4.0
        decay = math.exp(-_STEP / taper_length)
        # Curvature is a slowly varying random process (correlation ~0.2 FOV
        # radii): gentle bends, veins a little more tortuous than arteries.
        bend = (2.2 if sprout.kind == "vein" else 1.7) * rng.uniform(0.7, 1.3) * math.sqrt(1 - _CURVE_MEMORY**2)
        curvature = 0.0
        path = [(x, y, width, sprout.kind)]
        children: list[_Sprout] = []
        for i in range(n):
            if sprout.guide is not None:
                heading = self._pursue(sprout.guide, x, y, heading)
            else:
                heading += self._no_return_turn(x, y, heading)
            curvature = _CURVE_MEMORY * curvature + bend * wiggle[i]
            heading += curvature * _STEP
            heading += self._fovea_turn(x, y, heading, width) + self._raphe_turn(x, y, heading, sprout.hemi)
            x += math.cos(heading) * _STEP
            y += math.sin(heading) * _STEP
            width *= decay
            # No vessel curls round on itself: the fovea and the raphe can turn
            # one, but not past ~160 degrees from where it set out.
            if self._must_stop(x, y, width, sprout.hemi) or abs(heading - sprout.heading) > 0.9 * math.pi:
                break
            if branch_draws[i] < _STEP / self._branch_spacing(sprout, x, y, width):
                child = self._branch(sprout, x, y, heading, width)
                if child is not None:
                    children.append(child)
                    # Murray's law: parent^3 = child^3 + continuing^3.
                    width = (width**3 - child.width**3) ** (1 / 3)
            path.append((x, y, width, sprout.kind))
            self.occupancy[self._cell(x, y)] += width
            self.anchors.append((x, y, width, heading))
            self.anchor_sprouts.append(sprout)
        self.steps_left -= len(path)
        return path, children

    def _cell(self, x: float, y: float) -> tuple[int, int]:
        half = _GRID / 2
        return min(_GRID - 1, max(0, int((y + 1.0) * half))), min(_GRID - 1, max(0, int((x + 1.0) * half)))

    def _anchor_table(self) -> np.ndarray:
        """The anchors as an (n, 4) array, converting only those added since the last call."""
        new = self.anchors[len(self._table) :]
        if new:
            self._table = np.concatenate([self._table, np.asarray(new)])
        return self._table

    def _pursue(self, guide: _Guide, x: float, y: float, heading: float) -> float:
        """Turn towards a point a little ahead on the guide, or past its end along its last tangent."""
        theta = max(0.0, guide.theta(x, y))
        if theta > guide.theta_end:
            tangent = guide.tangent(guide.theta_end)
            error, gain = _wrap(tangent - heading), 0.1  # loosely: the trunk wanders and fans out
        else:
            tx, ty = guide.point(theta + 0.3)
            error, gain = _wrap(math.atan2(ty - y, tx - x) - heading), 0.3
        max_turn = 7.0 * _STEP  # radius of curvature >= ~0.14 FOV radii
        return heading + max(-max_turn, min(max_turn, gain * error))

    def _no_return_turn(self, x: float, y: float, heading: float) -> float:
        # A branch never heads back towards the disc: past 100 degrees off the
        # outward direction it is turned round, which keeps the tree radiating.
        error = _wrap(math.atan2(y - self.disc[1], x - self.disc[0]) - heading)
        excess = abs(error) - math.radians(100)
        return math.copysign(4.0 * _STEP * excess, error) if excess > 0 else 0.0

    def _fovea_turn(self, x: float, y: float, heading: float, width: float) -> float:
        # Larger vessels skirt the macula; the finest run on towards the fovea
        # and end at the edge of the avascular zone.
        dx, dy = x - self.fovea[0], y - self.fovea[1]
        d = math.hypot(dx, dy)
        if d >= self.avoid or d == 0.0:
            return 0.0
        c, s = math.cos(heading), math.sin(heading)
        if c * dx + s * dy >= 0:  # already moving away
            return 0.0
        away = 1.0 if c * dy - s * dx < 0 else -1.0
        return away * 12.0 * _STEP * (1.0 - d / self.avoid) * min(1.0, width / 0.008)

    def _raphe_turn(self, x: float, y: float, heading: float, hemi: float) -> float:
        # Temporal of the fovea, vessels from above and below meet at the
        # horizontal raphe without crossing it: they level off as they near it.
        fx, fy = self.fovea
        gap = (y - fy) * hemi  # distance to the raphe, > 0 on the vessel's own side
        if (x - fx) * self.side >= 0 or gap >= 0.4 * self.dd or -math.sin(heading) * hemi <= 0:
            return 0.0
        turn = 10.0 * _STEP * (1.0 - max(gap, 0.0) / (0.4 * self.dd))
        return -math.copysign(turn, math.sin(heading) * math.cos(heading))  # towards the horizontal

    def _must_stop(self, x: float, y: float, width: float, hemi: float) -> bool:
        if width < _MIN_WIDTH or x * x + y * y > 0.99**2:
            return True
        fx, fy = self.fovea
        if math.hypot(x - fx, y - fy) < self.faz:
            return True
        temporal = (x - fx) * self.side < 0
        return temporal and (y - fy) * hemi < 0  # crossed the horizontal raphe

    def _branch_spacing(self, sprout: _Sprout, x: float, y: float, width: float) -> float:
        """Mean distance between branch points; infinite where none may branch."""
        if sprout.depth >= _MAX_DEPTH:
            return math.inf
        # The trunks divide on the disc (they are separate sprouts here); their
        # first side branches leave about a disc diameter out.
        if math.hypot(x - self.disc[0], y - self.disc[1]) < 0.9 * self.dd:
            return math.inf
        # Large vessels run further between branches than small ones; the
        # trunks give off a few large branches rather than many twigs.
        return (0.2 if sprout.depth == 0 else 0.06) + 4.0 * width

    def _branch(self, parent: _Sprout, x: float, y: float, heading: float, width: float) -> _Sprout | None:
        rng = self.rng
        # Trunks give off small branches and stay large; small vessels fork more evenly.
        share = rng.uniform(0.45, 0.8) if parent.depth == 0 else rng.uniform(0.4, 0.75)
        child_width = width * share
        if child_width < 1.3 * _MIN_WIDTH:
            return None
        angle = rng.uniform(0.5, 1.3)
        reach = 0.15  # FOV units: how far ahead the crowding is judged
        crowding = [
            self.occupancy[self._cell(x + reach * math.cos(heading + a), y + reach * math.sin(heading + a))]
            for a in (angle, -angle)
        ]
        emptier = 1.0 if crowding[0] <= crowding[1] else -1.0
        angle *= emptier if rng.random() < 0.8 else -emptier
        length = min(1.8, child_width * rng.uniform(60.0, 110.0))
        return _Sprout(x, y, heading + angle, child_width, parent.kind, parent.hemi, length, parent.depth + 1)


def _wrap(angle: float) -> float:
    return (angle + math.pi) % (2 * math.pi) - math.pi


# --- lesions ---------------------------------------------------------------------


def _draw_lesions(
    rng: np.random.Generator, counts: dict[str, int], fovea: Point, disc: Point, disc_radius: float
) -> tuple[Lesion, ...]:
    dd = 2 * disc_radius
    place = _LesionPlacer(rng, fovea, disc, dd)
    lesions: list[Lesion] = []
    for _ in range(counts["microaneurysms"]):
        x, y = place.posterior_pole(3.0)
        r = rng.uniform(0.0035, 0.0075)
        lesions.append(Lesion("microaneurysms", "", (Blob(x, y, r, r * rng.uniform(0.85, 1.0), rng.uniform(0, 180)),)))
    for _ in range(counts["haemorrhages"]):
        lesions.append(_haemorrhage(rng, place))
    lesions.extend(_exudates(rng, place, counts["exudates"]))
    for _ in range(counts["cotton_wool_spots"]):
        x, y = place.near_arcades()
        r = rng.uniform(0.022, 0.04)
        blobs = tuple(
            Blob(x + rng.normal(0, 0.5 * r), y + rng.normal(0, 0.5 * r), r * rng.uniform(0.6, 1.0),
                 r * rng.uniform(0.4, 0.7), rng.uniform(0, 180))
            for _ in range(int(rng.integers(2, 4)))
        )
        lesions.append(Lesion("cotton_wool_spots", "", blobs))
    return tuple(lesions)


class _LesionPlacer:
    """Draws lesion positions where diabetic retinopathy puts them."""

    def __init__(self, rng: np.random.Generator, fovea: Point, disc: Point, dd: float):
        self.rng, self.fovea, self.disc, self.dd = rng, fovea, disc, dd

    def posterior_pole(self, reach_dd: float, min_dd: float = 0.2) -> Point:
        """Uniform within reach_dd of the fovea, off the disc and the fovea, inside the FOV."""
        for _ in range(100):
            r = self.dd * math.sqrt(self.rng.uniform((min_dd / reach_dd) ** 2, 1.0)) * reach_dd
            a = self.rng.uniform(0, 2 * math.pi)
            x, y = self.fovea[0] + r * math.cos(a), self.fovea[1] + r * math.sin(a)
            if self.allowed(x, y):
                return x, y
        return self.fovea[0], self.fovea[1] + self.dd  # unreachable in practice: 1 DD below the fovea

    def near_arcades(self) -> Point:
        """Along the vascular arcades, 1.5-2.5 DD above or below the fovea."""
        for _ in range(100):
            x = self.fovea[0] + self.rng.uniform(-2.5, 2.5) * self.dd
            y = self.fovea[1] + self.rng.choice((-1, 1)) * self.rng.uniform(1.2, 2.4) * self.dd
            if self.allowed(x, y):
                return x, y
        return self.posterior_pole(3.0)

    def allowed(self, x: float, y: float) -> bool:
        off_disc = math.hypot(x - self.disc[0], y - self.disc[1]) > 0.8 * self.dd
        return off_disc and x * x + y * y < 0.9**2


def _haemorrhage(rng: np.random.Generator, place: _LesionPlacer) -> Lesion:
    subtype = str(rng.choice(("dot", "blot", "flame"), p=(0.4, 0.4, 0.2)))
    if subtype == "dot":
        x, y = place.posterior_pole(3.5)
        r = rng.uniform(0.008, 0.014)
        blobs = (Blob(x, y, r, r * rng.uniform(0.8, 1.0), rng.uniform(0, 180)),)
    elif subtype == "blot":
        x, y = place.posterior_pole(4.0)
        r = rng.uniform(0.012, 0.028)
        blobs = tuple(
            Blob(x + rng.normal(0, 0.35 * r), y + rng.normal(0, 0.35 * r), r * rng.uniform(0.5, 1.0),
                 r * rng.uniform(0.4, 0.9), rng.uniform(0, 180))
            for _ in range(int(rng.integers(2, 6)))
        )
    else:
        # Flame haemorrhages lie in the nerve fibre layer: streaked along the
        # fibres, which run roughly radially from the disc.
        x, y = place.near_arcades()
        along = math.degrees(math.atan2(y - place.disc[1], x - place.disc[0]))
        half_length, half_width = rng.uniform(0.025, 0.06), rng.uniform(0.007, 0.013)
        blobs = tuple(
            Blob(x + rng.normal(0, half_width), y + rng.normal(0, half_width),
                 half_length * rng.uniform(0.6, 1.0), half_width * rng.uniform(0.5, 1.0),
                 along + rng.normal(0, 8))
            for _ in range(3)
        )
    return Lesion("haemorrhages", subtype, blobs)


def _exudates(rng: np.random.Generator, place: _LesionPlacer, count: int) -> list[Lesion]:
    """Hard exudates in a few clusters near the macula, some as circinate rings."""
    if count == 0:
        return []
    n_clusters = int(np.clip(round(count / 12), 1, 4))
    cluster_of = rng.integers(0, n_clusters, count)
    lesions = []
    for c in range(n_clusters):
        centre = place.posterior_pole(2.5, min_dd=0.5)
        ring = rng.random() < 0.4
        spread = rng.uniform(0.25, 0.6) * place.dd
        for _ in range(int((cluster_of == c).sum())):
            x, y = _exudate_position(rng, place, centre, spread, ring)
            # Mostly specks, a few larger waxy plaques; irregular outlines.
            r = float(np.clip(rng.lognormal(math.log(0.005), 0.6), 0.003, 0.025))
            blobs = tuple(
                Blob(x + rng.normal(0, 0.4 * r), y + rng.normal(0, 0.4 * r), r * rng.uniform(0.6, 1.0),
                     r * rng.uniform(0.4, 0.9), rng.uniform(0, 180))
                for _ in range(int(rng.integers(1, 4)))
            )
            lesions.append(Lesion("exudates", "", blobs))
    return lesions


def _exudate_position(
    rng: np.random.Generator, place: _LesionPlacer, centre: Point, spread: float, ring: bool
) -> Point:
    """On a ring of radius ``spread`` round ``centre`` or in a clump, where lesions are allowed."""
    for _ in range(100):
        if ring:
            a = rng.uniform(0, 2 * math.pi)
            d = spread * rng.normal(1.0, 0.12)
            x, y = centre[0] + d * math.cos(a), centre[1] + d * math.sin(a)
        else:
            x, y = centre[0] + rng.normal(0, 0.6 * spread), centre[1] + rng.normal(0, 0.6 * spread)
        if place.allowed(x, y):
            return x, y
    return centre


# --- rendering -------------------------------------------------------------------


class _Frame:
    """Pixel geometry: maps FOV units to pixel coordinates (pixel centres at integers)."""

    def __init__(self, params: SynthParams):
        self.size = params.size
        self.r = params.fov_radius * params.size
        self.cx = params.fov_centre[0] * params.size - 0.5
        self.cy = params.fov_centre[1] * params.size - 0.5
        axis = np.arange(params.size, dtype=np.float32)
        self.u = ((axis - self.cx) / self.r)[None, :]  # FOV x of each column
        self.v = ((axis - self.cy) / self.r)[:, None]  # FOV y of each row

    def to_pixels(self, x: np.ndarray | float, y: np.ndarray | float, scale: int = 1):
        """FOV units to pixel coordinates of a canvas ``scale`` times larger."""
        return ((self.cx + x * self.r + 0.5) * scale - 0.5, (self.cy + y * self.r + 0.5) * scale - 0.5)

    def window(self, x: float, y: float, reach: float) -> tuple[slice, slice, np.ndarray, np.ndarray]:
        """Rows, columns and their FOV coordinates within ``reach`` FOV units of (x, y)."""
        px, py = self.to_pixels(x, y)
        half = reach * self.r
        r0, r1 = max(0, int(py - half)), min(self.size, int(py + half) + 2)
        c0, c1 = max(0, int(px - half)), min(self.size, int(px + half) + 2)
        return slice(r0, r1), slice(c0, c1), self.u[:, c0:c1], self.v[r0:r1]


def _illumination(params: SynthParams, frame: _Frame) -> np.ndarray:
    """Brightness falling off towards the rim, tilted, mottled by the choroid."""
    rho2 = frame.u * frame.u + frame.v * frame.v
    tx, ty = params.illumination_tilt
    light = (1.0 - params.vignetting * rho2 * rho2) * (1.0 + tx * frame.u + ty * frame.v)
    rng = np.random.default_rng(params.texture_seed)
    mottle = _fractal_noise(rng, params.size, (4, 8, 16, 48, 128))
    return (params.exposure * light * (1.0 + params.texture_strength * mottle)).astype(np.float32)


def _fractal_noise(rng: np.random.Generator, size: int, cells: tuple[int, ...]) -> np.ndarray:
    """Zero-mean, unit-variance smooth noise summed over octaves (amplitude ~ 1/frequency)."""
    total = np.zeros((size, size), np.float32)
    for n in cells:
        grid = rng.standard_normal((n + 1, n + 1)).astype(np.float32)
        total += cv2.resize(grid, (size, size), interpolation=cv2.INTER_CUBIC) * np.float32(cells[0] / n)
    return total / np.float32(max(total.std(), 1e-6))


def _fundus_background(params: SynthParams, frame: _Frame, illumination: np.ndarray) -> np.ndarray:
    image = np.empty((params.size, params.size, 3), np.float32)
    tint = _tessellation(params, frame) if params.tessellation > 0 else None
    for c in range(3):
        image[..., c] = illumination * np.float32(params.background_rgb[c])
        if tint is not None:
            image[..., c] *= 1.0 - tint * np.float32((0.18, 0.26, 0.28)[c])
    return image


def _tessellation(params: SynthParams, frame: _Frame) -> np.ndarray:
    """Weight of the dark pigment between visible choroidal vessels (0 where there is none)."""
    # In a thin, lightly pigmented choroid the large choroidal vessels show as
    # broad orange ribbons, running loosely radially from the posterior pole
    # towards the vortex veins, with darker pigment between them. They are
    # drawn as wide random walks on a coarse canvas; they lie deep, out of the
    # focal plane, hence the heavy blur.
    rng = np.random.default_rng(params.texture_seed + 1)
    side = 256
    canvas = np.zeros((side, side), np.uint8)
    n = 110
    start = rng.uniform(-1.1, 1.1, (n, 2))
    fx, fy = params.fovea
    heading = np.arctan2(start[:, 1] - fy, start[:, 0] - fx) + rng.normal(0, 0.6, n)
    width = rng.uniform(0.02, 0.04, n)
    curvature = np.zeros(n)
    points = [start.copy()]
    for _ in range(40):
        curvature = 0.8 * curvature + rng.normal(0, 2.0, n)
        heading = heading + curvature * 0.03
        start = start + 0.03 * np.stack([np.cos(heading), np.sin(heading)], axis=1)
        points.append(start.copy())
    path = np.stack(points, axis=1)  # vessel, step, xy
    # The canvas spans the image; FOV units map onto it like onto the image.
    scale = side / params.size
    px, py = frame.to_pixels(path[..., 0], path[..., 1])
    pixels = np.rint(np.stack([(px + 0.5) * scale - 0.5, (py + 0.5) * scale - 0.5], axis=-1) * 8).astype(np.int32)
    for i in range(n):
        thickness = max(1, int(round(width[i] * frame.r * scale)))
        cv2.polylines(canvas, [pixels[i]], False, 255, thickness, cv2.LINE_AA, 3)
    canvas = cv2.GaussianBlur(canvas, (0, 0), 0.006 * frame.r * scale + 1.0)
    vessels = cv2.resize(canvas, (params.size, params.size), interpolation=cv2.INTER_LINEAR).astype(np.float32) / 255
    d = np.sqrt((frame.u - fx) ** 2 + (frame.v - fy) ** 2)
    # Denser macular pigment and choriocapillaris hide it centrally.
    reach = np.clip((d - 0.1) / 0.5, 0.0, 1.0)
    return (params.tessellation * reach * (1.0 - vessels)).astype(np.float32)


def _draw_disc(image: np.ndarray, params: SynthParams, frame: _Frame) -> None:
    """Yellowish glow around the disc, its pink-orange rim and the pale cup, blended in place."""
    dx, dy = params.disc_centre
    rx, ry = params.disc_radius, params.disc_radius * params.disc_aspect
    rows, cols, u, v = frame.window(dx, dy, 4.0 * ry)
    patch = image[rows, cols]
    glow_sigma = 1.4 * rx
    glow = params.disc_glow * np.exp(-((u - dx) ** 2 + (v - dy) ** 2) / np.float32(2 * glow_sigma**2))
    for c, tint in enumerate((0.7, 1.0, 0.9)):  # the peripapillary sheen is yellowish
        patch[..., c] *= 1.0 + tint * glow
    soft = 1.5 / frame.r + 0.15 * rx  # a blurred margin, never harder than 1.5 px
    disc = _ellipse_alpha(u, v, dx, dy, rx, ry, soft)
    light = np.float32(params.exposure)
    _blend(patch, disc, np.asarray(params.disc_rgb, np.float32) * light)
    # The cup sits slightly temporal of the centre; its edge is a gradual slope.
    cup_r = params.cup_to_disc * rx
    cup_x = dx - (1 if params.eye == "R" else -1) * 0.12 * rx
    cup = _ellipse_alpha(u, v, cup_x, dy, cup_r, cup_r * params.disc_aspect, 0.5 * cup_r)
    _blend(patch, cup * 0.9, np.asarray(params.cup_rgb, np.float32) * light)


def _ellipse_alpha(u, v, x: float, y: float, rx: float, ry: float, soft: float) -> np.ndarray:
    """1 inside the ellipse, 0 outside, a linear ramp ``soft`` FOV units wide across the edge."""
    e = np.sqrt(((u - x) / rx) ** 2 + ((v - y) / ry) ** 2)
    return np.clip((1.0 - e) * np.float32(rx / soft) + 0.5, 0.0, 1.0).astype(np.float32)


def _blend(patch: np.ndarray, alpha: np.ndarray, colour: np.ndarray) -> None:
    patch += alpha[..., None] * (colour - patch)


def _draw_macula(image: np.ndarray, params: SynthParams, frame: _Frame) -> None:
    """Macular pigment (absorbs blue-green most) and the darker fovea."""
    fx, fy = params.fovea
    dd = params.disc_diameter
    rows, cols, u, v = frame.window(fx, fy, 2.5 * dd)
    d2 = (u - fx) ** 2 + (v - fy) ** 2
    macula = params.macula_depth * np.exp(-d2 / np.float32(2 * (0.6 * dd) ** 2))
    fovea = params.fovea_depth * np.exp(-d2 / np.float32(2 * (0.18 * dd) ** 2))
    dark = macula + fovea
    patch = image[rows, cols]
    for c, weight in enumerate((0.8, 1.0, 1.0)):
        patch[..., c] *= 1.0 - weight * dark


def _draw_foveal_reflex(image: np.ndarray, params: SynthParams, frame: _Frame) -> None:
    if params.foveal_reflex <= 0:
        return
    fx, fy = params.fovea
    sigma = max(0.025 * params.disc_diameter, 0.7 / frame.r)  # a point of light, at least a pixel
    rows, cols, u, v = frame.window(fx, fy, 4 * sigma)
    spot = params.foveal_reflex * np.exp(-((u - fx) ** 2 + (v - fy) ** 2) / np.float32(2 * sigma**2))
    _blend(image[rows, cols], spot.astype(np.float32), np.float32(params.exposure) * np.ones(3, np.float32))


# --- vessels ---------------------------------------------------------------------


def _draw_vessels(image: np.ndarray, fundus: np.ndarray, params: SynthParams, frame: _Frame) -> None:
    """Veins, then arteries over them (arteries cross over veins), then the light reflex.

    Blood absorbs so strongly that a vessel on the bright disc is nearly as
    dark as anywhere else: its colour is taken relative to the fundus without
    the disc, not to the pixel it covers.
    """
    for kind, transmittance in (("vein", _VEIN_T), ("artery", _ARTERY_T)):
        alpha = _vessel_alpha(params, frame, kind)[..., None]
        image += alpha * (fundus * np.asarray(transmittance, np.float32) - image)
    if params.vessel_reflex > 0:
        reflex = _reflex_alpha(params, frame)
        image *= (1.0 + params.vessel_reflex * reflex)[..., None]


def _vessel_alpha(params: SynthParams, frame: _Frame, kind: str, *, opacity: bool = True) -> np.ndarray:
    """Anti-aliased vessel coverage for one kind, drawn large and area-averaged down."""
    canvas = np.zeros((params.size * _SUPERSAMPLE,) * 2, np.uint8)
    runs = []
    scale = frame.r * _SUPERSAMPLE
    for vessel in params.vessels:
        if vessel.kind != kind:
            continue
        path = np.asarray(vessel.path, np.float64)
        px, py = frame.to_pixels(path[:, 0], path[:, 1], _SUPERSAMPLE)
        points = np.rint(np.stack([px, py], axis=1) * (1 << _SHIFT)).astype(np.int32)
        widths = (path[:-1, 2] + path[1:, 2]) / 2
        # Beer-Lambert through the vessel: thin vessels carry less blood in
        # the light path and fade out as they taper, whatever the image size.
        opacities = 1.0 - np.exp(-widths / _OPACITY_WIDTH)
        runs.extend(_constant_width_runs(points, widths * scale, opacities, opacity))
    # Palest first, so that a branch never lightens the vessel it leaves.
    runs.sort(key=lambda run: run[0])
    for value, thickness, pts in runs:
        cv2.polylines(canvas, [pts], False, value, thickness, cv2.LINE_AA, _SHIFT)
    small = cv2.resize(canvas, (params.size, params.size), interpolation=cv2.INTER_AREA)
    return small.astype(np.float32) * np.float32(1 / 255)


def _constant_width_runs(
    points: np.ndarray, widths: np.ndarray, opacities: np.ndarray, opacity: bool
) -> list[tuple[int, int, np.ndarray]]:
    """Split a polyline where its integer thickness or its opacity changes: (value, thickness, points) each."""
    thickness = np.maximum(1, np.rint(widths)).astype(int)
    levels = np.rint(opacities * 16)  # a few opacity steps: fewer, longer runs
    cuts = np.flatnonzero((np.diff(thickness) != 0) | (np.diff(levels) != 0)) + 1
    runs = []
    for start, stop in zip(np.r_[0, cuts], np.r_[cuts, len(thickness)], strict=True):
        t = int(thickness[start])
        value = int(round(255 * float(opacities[start]))) if opacity else 255
        runs.append((value, t, points[start : stop + 1]))
    return runs


def _reflex_alpha(params: SynthParams, frame: _Frame) -> np.ndarray:
    """Thin bright stripe along the axis of the large vessels."""
    canvas = np.zeros((params.size * _SUPERSAMPLE,) * 2, np.uint8)
    scale = frame.r * _SUPERSAMPLE
    for vessel in params.vessels:
        path = np.asarray(vessel.path, np.float64)
        wide = path[:, 2] >= _REFLEX_WIDTH
        if wide.sum() < 2:
            continue
        path = path[wide]
        px, py = frame.to_pixels(path[:, 0], path[:, 1], _SUPERSAMPLE)
        points = np.rint(np.stack([px, py], axis=1) * (1 << _SHIFT)).astype(np.int32)
        thickness = max(1, int(round(path[:, 2].mean() * scale / 4)))
        cv2.polylines(canvas, [points], False, 255, thickness, cv2.LINE_AA, _SHIFT)
    small = cv2.resize(canvas, (params.size, params.size), interpolation=cv2.INTER_AREA)
    return small.astype(np.float32) * np.float32(1 / 255)


# --- lesion layers ---------------------------------------------------------------


# Lesion layers in drawing order: (layer, under the vessels, softening in FOV
# units). Dot/blot haemorrhages, microaneurysms and hard exudates lie deep in
# the retina; flame haemorrhages (feathery) and cotton-wool spots (fluffy) lie
# in the nerve fibre layer, over the vessels.
_LESION_LAYERS = (("exudate", True, 0.0), ("blood", True, 0.0), ("flame", False, 0.006), ("cotton", False, 0.012))
_COTTON_RGB: RGB = (0.95, 0.86, 0.78)


def _lesion_layer(lesion: Lesion) -> str:
    if lesion.kind == "exudates":
        return "exudate"
    if lesion.kind == "cotton_wool_spots":
        return "cotton"
    return "flame" if lesion.subtype == "flame" else "blood"


class _LesionLayers:
    """Lesion coverage maps, composited under (deep) or over the vessels."""

    def __init__(self, params: SynthParams, frame: _Frame):
        self.params = params
        self.maps: dict[str, np.ndarray] = {}
        for name, _, soften in _LESION_LAYERS:
            lesions = [les for les in params.lesions if _lesion_layer(les) == name]
            if lesions:
                alpha = _rasterise_blobs(params, frame, lesions)
                self.maps[name] = cv2.GaussianBlur(alpha, (0, 0), soften * frame.r) if soften else alpha

    def apply(self, image: np.ndarray, illumination: np.ndarray, *, deep: bool) -> None:
        for name, under, _ in _LESION_LAYERS:
            if under != deep or name not in self.maps:
                continue
            rows, cols = _support(self.maps[name])
            alpha = self.maps[name][rows, cols, None]
            patch = image[rows, cols]
            light = illumination[rows, cols, None]
            # Blood darkens what is behind it, like the vessels; exudates and
            # cotton-wool spots are pale material with their own colour, lit like the fundus.
            if name == "blood":
                patch += alpha * (patch * np.asarray(_BLOOD_T, np.float32) - patch)
            elif name == "flame":
                patch += alpha * (patch * np.asarray(_FLAME_T, np.float32) - patch)
            elif name == "exudate":
                patch += 0.95 * alpha * (light * np.asarray(self.params.exudate_rgb, np.float32) - patch)
            else:
                patch += 0.75 * alpha * (light * np.asarray(_COTTON_RGB, np.float32) - patch)


def _rasterise_blobs(params: SynthParams, frame: _Frame, lesions: list[Lesion]) -> np.ndarray:
    """Anti-aliased coverage of the lesions' ellipses, drawn large and area-averaged down."""
    canvas = np.zeros((params.size * _SUPERSAMPLE,) * 2, np.uint8)
    one = 1 << _SHIFT
    scale = frame.r * _SUPERSAMPLE * one
    for lesion in lesions:
        for b in lesion.blobs:
            px, py = frame.to_pixels(b.x, b.y, _SUPERSAMPLE)
            centre = (int(round(px * one)), int(round(py * one)))
            axes = (max(1, int(round(b.rx * scale))), max(1, int(round(b.ry * scale))))
            cv2.ellipse(canvas, centre, axes, b.angle, 0, 360, 255, -1, cv2.LINE_AA, _SHIFT)
    small = cv2.resize(canvas, (params.size, params.size), interpolation=cv2.INTER_AREA)
    return small.astype(np.float32) * np.float32(1 / 255)


def _support(alpha: np.ndarray) -> tuple[slice, slice]:
    """Bounding box of the non-zero part of a map: compositing only there is much cheaper."""
    rows, cols = np.flatnonzero(alpha.any(axis=1)), np.flatnonzero(alpha.any(axis=0))
    if len(rows) == 0:
        return slice(0, 0), slice(0, 0)
    return slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)


# --- finishing -------------------------------------------------------------------


def _fov_alpha(params: SynthParams, frame: _Frame) -> np.ndarray:
    """Anti-aliased FOV disc, cut to the visible band when clipped; exactly 0 outside."""
    d = np.sqrt(frame.u * frame.u + frame.v * frame.v) * np.float32(frame.r)
    alpha = np.clip(np.float32(frame.r + 0.5) - d, 0.0, 1.0)
    if params.fov_clip < 1.0:
        band = np.clip(np.float32(params.fov_clip * frame.r + 0.5) - np.abs(frame.v) * np.float32(frame.r), 0.0, 1.0)
        alpha = alpha * band
    return alpha.astype(np.float32)


def _finish(image: np.ndarray, params: SynthParams, frame: _Frame) -> np.ndarray:
    """Optical softness, sensor noise, the FOV mask, and 8-bit quantisation."""
    sigma = params.blur * frame.r
    if sigma > 0.2:
        image = cv2.GaussianBlur(image, (0, 0), sigma)
    rng = np.random.default_rng(params.noise_seed)
    image += rng.standard_normal(image.shape, np.float32) * np.float32(params.noise_sigma)
    image *= _fov_alpha(params, frame)[..., None]
    return np.clip(image * 255.0 + 0.5, 0, 255).astype(np.uint8)

"""Field-of-view detection, crop and normalisation."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import skimage.data
from conftest import skip_or_fail
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from pyfundus.data.samples import sample_paths
from pyfundus.io import read_image
from pyfundus.preprocess import (
    FieldOfView,
    NoFundusError,
    crop_to_field_of_view,
    find_field_of_view,
    preprocess,
    to_model_input,
)
from pyfundus.weights import IMAGENET_MEAN as MEAN
from pyfundus.weights import IMAGENET_STD as STD
from pyfundus.weights import InputSpec


@pytest.fixture(scope="module")
def retina() -> np.ndarray:
    """A real 1411x1411 fundus photograph (CC0, bundled with scikit-image)."""
    return skimage.data.retina()


def draw_fundus(
    h: int,
    w: int,
    cx: float,
    cy: float,
    r: float,
    *,
    colour: tuple[float, float, float] = (210, 100, 40),
    brightness: float = 1.0,
    noise: float = 2.0,
    seed: int = 0,
) -> np.ndarray:
    """Anti-aliased disc with a darker rim (vignetting) and sensor noise on black."""
    shift = 4
    coverage = np.zeros((h, w), np.uint8)
    one = 1 << shift
    centre = (round(cx * one), round(cy * one))
    cv2.circle(coverage, centre, round(r * one), 255, -1, cv2.LINE_AA, shift)
    yy, xx = np.ogrid[:h, :w]
    d2 = ((xx - cx) ** 2).astype(np.float32) + ((yy - cy) ** 2).astype(np.float32)
    rim = 1.0 - 0.45 * np.minimum(d2 / np.float32(r * r), 1.0)
    gain = coverage * (rim * np.float32(brightness / 255.0))
    level = gain[..., None] * np.asarray(colour, np.float32)
    rng = np.random.default_rng(seed)
    level += rng.standard_normal(level.shape, np.float32) * np.float32(noise)
    return np.clip(np.rint(level), 0, 255).astype(np.uint8)


def _half_extent(bright: np.ndarray) -> float:
    idx = np.flatnonzero(bright)
    return (idx[-1] - idx[0] + 1) / 2


# --- real photograph -------------------------------------------------------------------


def test_real_fundus_field_of_view(retina):
    fov = find_field_of_view(retina)

    h, w = retina.shape[:2]
    assert fov.method == "threshold"
    assert not fov.clipped
    assert abs(fov.cx - (w - 1) / 2) < 0.01 * w
    assert abs(fov.cy - (h - 1) / 2) < 0.01 * h
    # Independent measure: extent of clearly-lit pixels along the centre row and column.
    lit = retina.max(axis=2) > 20
    row = _half_extent(lit[int(round(fov.cy))])
    col = _half_extent(lit[:, int(round(fov.cx))])
    assert fov.radius == pytest.approx(row, rel=0.01)
    assert fov.radius == pytest.approx(col, rel=0.01)


def test_real_fundus_clipped_top_and_bottom(retina):
    # The usual camera layout: a 4:3 frame that cuts the disc at top and bottom.
    reference = find_field_of_view(retina)
    side, h, w = 540, 432, 576
    disc = cv2.resize(retina, (side, side), interpolation=cv2.INTER_AREA)
    top, left = (side - h) // 2, (w - side) // 2
    frame = np.zeros((h, w, 3), np.uint8)
    frame[:, left : left + side] = disc[top : top + h]

    fov = find_field_of_view(frame)

    k = side / retina.shape[0]
    expected_cx = (reference.cx + 0.5) * k - 0.5 + left
    expected_cy = (reference.cy + 0.5) * k - 0.5 - top
    assert fov.clipped
    assert fov.cx == pytest.approx(expected_cx, abs=0.01 * fov.radius)
    assert fov.cy == pytest.approx(expected_cy, abs=0.01 * fov.radius)
    assert fov.radius == pytest.approx(reference.radius * k, rel=0.01)


@pytest.mark.parametrize("gain", [0.25, 0.08])
def test_dark_capture_of_a_real_fundus_is_still_found(retina, gain):
    reference = find_field_of_view(retina)
    dark = np.rint(retina * gain).astype(np.uint8)
    fov = find_field_of_view(dark)
    assert fov.cx == pytest.approx(reference.cx, abs=0.005 * reference.radius)
    assert fov.cy == pytest.approx(reference.cy, abs=0.005 * reference.radius)
    assert fov.radius == pytest.approx(reference.radius, rel=0.005)


def test_preprocess_real_fundus(retina):
    tensor, fov = preprocess(retina)
    assert tensor.shape == (3, 384, 384) and tensor.dtype == np.float32
    assert tensor.flags.c_contiguous
    assert fov == find_field_of_view(retina)
    # Corners of the square lie outside the disc: masked to black before normalising.
    black = (0.0 - np.asarray(MEAN)) / np.asarray(STD)
    assert np.allclose(tensor[:, 0, 0], black, atol=1e-5)
    # Centre is fundus: red above the ImageNet mean, blue below it.
    assert tensor[0, 192, 192] > 0 > tensor[2, 192, 192]


# --- synthetic discs --------------------------------------------------------------------


@settings(
    max_examples=40, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)
@given(
    size=st.sampled_from([(432, 576), (480, 640), (600, 600)]),
    dx=st.floats(-0.06, 0.06),
    dy=st.floats(-0.06, 0.06),
    radius_fraction=st.floats(0.3, 0.6),
    colour=st.tuples(st.floats(120, 255), st.floats(30, 200), st.floats(0, 120)),
    brightness=st.sampled_from([1.0, 0.5, 0.2]),
    noise=st.floats(0.0, 3.0),
    seed=st.integers(0, 2**16),
)
def test_synthetic_disc_is_fitted_within_two_percent(
    size, dx, dy, radius_fraction, colour, brightness, noise, seed
):
    h, w = size
    cx, cy, r = (w - 1) / 2 + dx * w, (h - 1) / 2 + dy * h, radius_fraction * min(h, w)
    # Keep all four frame corners black, as on every fundus camera.
    assume(np.hypot(w / 2 - abs(dx * w), h / 2 - abs(dy * h)) > 1.1 * r)
    image = draw_fundus(
        h, w, cx, cy, r, colour=colour, brightness=brightness, noise=noise, seed=seed
    )

    fov = find_field_of_view(image)

    assert abs(fov.cx - cx) < 0.02 * r
    assert abs(fov.cy - cy) < 0.02 * r
    assert abs(fov.radius - r) < 0.02 * r
    overshoot = max(-0.5 - (cx - r), -0.5 - (cy - r), cx + r - (w - 0.5), cy + r - (h - 0.5))
    if abs(overshoot) > 0.03 * r:  # a circle that merely touches the frame may go either way
        assert fov.clipped == (overshoot > 0)


@pytest.mark.parametrize("radius", [240.0, 270.0, 300.0])
def test_disc_clipped_top_and_bottom(radius):
    h, w, cx, cy = 432, 576, 290.0, 214.0
    fov = find_field_of_view(draw_fundus(h, w, cx, cy, radius))
    assert fov.clipped
    assert fov.method == "threshold"
    assert (fov.cx, fov.cy) == pytest.approx((cx, cy), abs=0.01 * radius)
    assert fov.radius == pytest.approx(radius, rel=0.01)


def test_full_resolution_capture():
    fov = find_field_of_view(draw_fundus(1728, 2304, 1160.0, 850.0, 1000.0))
    assert fov.clipped
    assert (fov.cx, fov.cy, fov.radius) == pytest.approx((1160.0, 850.0, 1000.0), rel=0.005)


def test_small_disc_in_a_large_frame_is_not_clipped():
    fov = find_field_of_view(draw_fundus(432, 576, 300.0, 200.0, 100.0))
    assert not fov.clipped
    assert fov.radius == pytest.approx(100.0, rel=0.02)


def test_burned_in_text_touching_the_disc_does_not_move_it():
    image = draw_fundus(432, 576, 288.0, 216.0, 250.0)
    white = (255, 255, 255)
    cv2.putText(image, "OD 2024-03-01 ID 0042", (5, 22), cv2.FONT_HERSHEY_SIMPLEX, 0.7, white, 2)
    fov = find_field_of_view(image)
    assert (fov.cx, fov.cy, fov.radius) == pytest.approx((288.0, 216.0, 250.0), rel=0.015)


@pytest.mark.parametrize("width", [12, 30])
def test_thick_reticle_across_the_disc_does_not_move_it(width):
    # A thick cross joins the disc to every edge. The rim that is left is
    # still most of the outline: the robust fit finds it (or, for the widest
    # lines, the Hough fallback does).
    image = draw_fundus(432, 576, 288.0, 216.0, 200.0)
    cv2.line(image, (0, 216), (575, 216), (255, 255, 255), width)
    cv2.line(image, (288, 0), (288, 431), (255, 255, 255), width)
    fov = find_field_of_view(image)
    assert fov.method in ("threshold", "hough")
    assert (fov.cx, fov.cy, fov.radius) == pytest.approx((288.0, 216.0, 200.0), rel=0.02)


def test_hough_fallback_when_the_outline_is_broken():
    # Eight thick spokes to the frame: more of the outline is spoke than rim
    # and the spokes stick out of the disc, so no circle fits the bright
    # region; the edge-based Hough transform still sees the disc.
    image = draw_fundus(432, 576, 288.0, 216.0, 200.0)
    white = (255, 255, 255)
    for start, end in [((0, 216), (575, 216)), ((288, 0), (288, 431)),
                       ((72, 0), (504, 431)), ((504, 0), (72, 431))]:
        cv2.line(image, start, end, white, 12)
    fov = find_field_of_view(image)
    assert fov.method == "hough"
    assert (fov.cx, fov.cy, fov.radius) == pytest.approx((288.0, 216.0, 200.0), rel=0.02)


# --- failure modes of real bad captures ---------------------------------------------------


def _assert_circle(fov: FieldOfView, cx: float, cy: float, r: float, rel: float = 0.015) -> None:
    assert abs(fov.cx - cx) < rel * r, (fov, (cx, cy, r))
    assert abs(fov.cy - cy) < rel * r, (fov, (cx, cy, r))
    assert abs(fov.radius - r) < rel * r, (fov, (cx, cy, r))


def _on_rectangle(
    h: int, w: int, cx: float, cy: float, r: float, rect: tuple[int, int, int, int], level: int
) -> np.ndarray:
    """A disc seen only within rect, the rest of rect grey ``level``, black outside it."""
    disc = draw_fundus(h, w, cx, cy, r)
    x0, y0, x1, y1 = rect
    yy, xx = np.mgrid[:h, :w]
    in_disc = np.hypot(xx - cx, yy - cy) < r
    in_rect = (xx >= x0) & (xx < x1) & (yy >= y0) & (yy < y1)
    noise = np.random.default_rng(7).normal(0, 2, (h, w, 3))
    grey = np.clip(level + noise, 0, 255).astype(np.uint8)
    out = np.where((in_rect & ~in_disc)[..., None], grey, 0).astype(np.uint8)
    out[in_rect & in_disc] = disc[in_rect & in_disc]
    return out


@pytest.mark.parametrize("gap", [0, 6])
@pytest.mark.parametrize("width", [4, 8, 16])
def test_bright_bar_beside_the_disc_is_ignored(gap, width):
    # issue_1.png: a white vertical bar to the right of the retina. Thin bars
    # go with the opening; thicker ones touching the disc are outliers to the
    # circle fit and never closed into the disc.
    h, w, cx, cy, r = 432, 576, 260.0, 216.0, 200.0
    image = draw_fundus(h, w, cx, cy, r)
    x = int(round(cx + r + gap))
    image[20:411, x : x + width] = 255
    fov = find_field_of_view(image)
    assert fov.method == "threshold"
    _assert_circle(fov, cx, cy, r)


@pytest.mark.parametrize("gain", [0.02, 0.1, 0.25])
@pytest.mark.parametrize("axis", [0, 1])
def test_disc_half_in_shadow(gain, axis):
    # cropped.png: a large dark shadow over one side of the retina. Only half
    # of the rim is bright; the fit must use that half, or the rim the low
    # threshold still sees in the shadow.
    h, w, cx, cy, r = 432, 576, 288.0, 216.0, 190.0
    image = draw_fundus(h, w, cx, cy, r).astype(np.float32)
    along = np.arange(w if axis == 0 else h, dtype=np.float32)
    centre = cx if axis == 0 else cy
    ramp = np.clip((along - (centre - 0.15 * r)) / (0.3 * r), 0.0, 1.0)
    shade = gain + (1.0 - gain) * ramp  # dark on the left (axis 0) or top (axis 1)
    image *= shade[None, :, None] if axis == 0 else shade[:, None, None]
    image = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    fov = find_field_of_view(image)
    assert fov.method == "threshold"
    _assert_circle(fov, cx, cy, r)


@pytest.mark.parametrize("level", [30, 60, 80])
@pytest.mark.parametrize(
    "cx, r, rect",
    [(288.0, 170.0, (60, 30, 520, 400)), (330.0, 230.0, (40, 40, 520, 392))],
    ids=["grey-around", "grey-and-clipped"],
)
def test_disc_on_a_grey_rectangle(level, cx, r, rect):
    # cropped.png / issue_2.png: the photo sits on a grey (not black) patch
    # inside the frame; in the second case the patch also clips the disc on
    # three sides.
    h, w, cy = 432, 576, 216.0
    image = _on_rectangle(h, w, cx, cy, r, rect, level)
    fov = find_field_of_view(image)
    assert fov.method == "threshold"
    _assert_circle(fov, cx, cy, r)


def test_disc_clipped_on_three_sides_by_the_frame():
    fov = find_field_of_view(draw_fundus(432, 576, 200.0, 216.0, 260.0))
    assert fov.clipped and fov.method == "threshold"
    _assert_circle(fov, 200.0, 216.0, 260.0)


@pytest.mark.parametrize(
    "rect",
    [(150, 120, 700, 480), (120, 140, 640, 460)],
    ids=["three-sides", "four-sides"],
)
@pytest.mark.parametrize("level", [0, 20])
def test_disc_clipped_by_a_rectangle_inside_the_frame(rect, level):
    # issue_1.png / cropped.png: the disc is clipped hard top and bottom and on
    # a side (or both) by the edges of a print inside the frame, so its
    # outline runs along straight lines that are not the frame edge.
    h, w, cx, cy, r = 600, 800, 380.0, 300.0, 260.0
    image = _on_rectangle(h, w, cx, cy, r, rect, level)
    fov = find_field_of_view(image)
    assert fov.method == "threshold"
    assert not fov.clipped  # the circle runs past the print, not past the frame
    _assert_circle(fov, cx, cy, r)


def test_bbox_fallback_for_a_compact_blob_with_no_circle():
    # No circle fits an ellipse, but it is one large, compact bright blob on
    # black: crop the square around it rather than refuse to grade it.
    h, w = 600, 800
    image = np.zeros((h, w, 3), np.uint8)
    cv2.ellipse(image, (400, 300), (260, 180), 0, 0, 360, (200, 120, 60), -1)
    fov = find_field_of_view(image)
    assert fov.method == "bbox"
    assert (fov.cx, fov.cy) == pytest.approx((400.0, 300.0), abs=4)
    assert fov.radius == pytest.approx(np.hypot(260, 180), rel=0.03)  # through the box corners
    square = crop_to_field_of_view(image, fov)
    assert square.sum() == pytest.approx(image.sum(), rel=0.005)  # none of the blob is lost


# --- no fundus ---------------------------------------------------------------------------


def _page_of_text() -> np.ndarray:
    page = np.full((600, 450, 3), 245, np.uint8)
    for line in range(18):
        origin = (20, 40 + 30 * line)
        text = f"Referral letter line {line}"
        cv2.putText(page, text, origin, cv2.FONT_HERSHEY_SIMPLEX, 0.7, (20, 20, 20), 2)
    return page


def _page_on_a_desk() -> np.ndarray:
    desk = np.full((600, 800, 3), 35, np.uint8)
    desk[60:540, 160:640] = 240
    return desk


def _page_on_a_desk_at_an_angle() -> np.ndarray:
    # Not axis-aligned: its sides are no clip edges, and it is compact enough
    # to tempt the bounding-box fallback.
    desk = np.full((600, 800, 3), 35, np.uint8)
    corners = np.array([[200, 80], [620, 120], [680, 520], [140, 500]], np.int32)
    cv2.fillConvexPoly(desk, corners, (240, 240, 240))
    return desk


def _photograph(name: str) -> np.ndarray:
    image = getattr(skimage.data, name)()
    if image.ndim == 2:
        image = np.stack([image] * 3, axis=-1)
    return np.ascontiguousarray(image[..., :3])


@pytest.mark.parametrize(
    "image",
    [
        np.zeros((432, 576, 3), np.uint8),
        np.random.default_rng(0).integers(0, 256, (432, 576, 3), dtype=np.uint8),
        np.clip(np.random.default_rng(1).normal(6, 3, (432, 576, 3)), 0, 255).astype(np.uint8),
        np.full((432, 576, 3), 128, np.uint8),
        _page_of_text(),
        _page_on_a_desk(),
        _page_on_a_desk_at_an_angle(),
    ],
    ids=["black", "uniform-noise", "dark-noise", "grey", "text-page", "page-on-desk",
         "page-at-an-angle"],
)
def test_no_fundus(image):
    with pytest.raises(NoFundusError, match="no field of view"):
        find_field_of_view(image)
    with pytest.raises(NoFundusError):
        preprocess(image)


@pytest.mark.parametrize(
    "name", ["astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "moon", "camera", "coins"]
)
def test_no_fundus_in_ordinary_photographs(name):
    # Bundled with scikit-image. The Hubble field (bright blobs on black),
    # the coffee cup and the coins (round things) are the tempting ones.
    image = _photograph(name)
    for version in (image, np.rint(image * 0.3).astype(np.uint8)):  # and under-exposed
        with pytest.raises(NoFundusError):
            find_field_of_view(version)


def test_bad_input_is_a_value_error():
    with pytest.raises(ValueError, match="HxWx3 uint8"):
        find_field_of_view(np.zeros((100, 100), np.uint8))
    with pytest.raises(ValueError, match="HxWx3 uint8"):
        to_model_input(np.zeros((8, 8, 3), np.float32))


# --- the sample photographs (fetched, never committed) -----------------------------------

try:
    SAMPLES: list[Path] = sample_paths()
    SAMPLES_MISSING = ""
except FileNotFoundError as exc:
    SAMPLES, SAMPLES_MISSING = [], str(exc)


def _need_samples() -> None:
    if SAMPLES_MISSING:
        skip_or_fail(SAMPLES_MISSING)


@pytest.mark.parametrize(
    "path", SAMPLES or [None], ids=[p.name for p in SAMPLES] or ["samples-missing"]
)
def test_sample_photo_field_of_view_covers_the_retina(path):
    # Every sample must give a FOV, the bad captures (cropped.png, issue_1.png:
    # clipped, hazy, shadowed, with bars and grey patches) included: the
    # quality gate has to grade them, not fail on them.
    _need_samples()
    rgb = read_image(path).pixels
    fov = find_field_of_view(rgb)

    # An independent look at the retina: the largest bright component, on a
    # copy about 512 px across, with thin overlays (bars, text) opened away.
    h, w = rgb.shape[:2]
    k = 512 / max(h, w)
    small = cv2.resize(rgb, (round(w * k), round(h * k)), interpolation=cv2.INTER_AREA)
    level = small.max(axis=2)
    low, high = np.percentile(level, [2, 99])
    bright = (level > low + 0.1 * (high - low)).astype(np.uint8)
    bright = cv2.morphologyEx(bright, cv2.MORPH_OPEN, np.ones((9, 9), np.uint8))
    _, labels, stats, _ = cv2.connectedComponentsWithStats(bright)
    largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    yy, xx = np.nonzero(labels == largest)
    x, y = (xx + 0.5) / k - 0.5, (yy + 0.5) / k - 0.5  # back to full-size pixel centres

    # The circle covers the bright retina ...
    inside = np.hypot(x - fov.cx, y - fov.cy) <= fov.radius
    assert inside.mean() >= 0.95, fov
    # ... and is not absurdly larger than it: no larger than the circle
    # through its bounding-box corners, and at most twice its area in the frame.
    half_diagonal = np.hypot(x.max() - x.min(), y.max() - y.min()) / 2
    assert fov.radius <= 1.02 * half_diagonal, fov
    yy, xx = np.mgrid[:h:4, :w:4]
    disc_in_frame = np.count_nonzero(np.hypot(xx - fov.cx, yy - fov.cy) <= fov.radius) * 16
    assert disc_in_frame <= 2.0 * len(x) / (k * k), fov

    # And the crop is the square around that circle.
    square = crop_to_field_of_view(rgb, fov)
    assert square.shape[:2] == (round(2 * fov.radius),) * 2


# --- crop ----------------------------------------------------------------------------------


def test_crop_of_a_clipped_disc_pads_with_black():
    h, w = 432, 576
    image = draw_fundus(h, w, 288.0, 216.0, 260.0, noise=0.0)
    fov = FieldOfView(288.0, 216.0, 260.0, "threshold", True)

    square = crop_to_field_of_view(image, fov)

    assert square.shape == (520, 520, 3)
    # Rows above and below the frame are padding.
    assert not square[:40].any() and not square[-40:].any()
    # The centre pixel maps back to the FOV centre.
    assert np.array_equal(square[260, 260], image[216, 288])
    # Outside the circle is black; just inside is fundus.
    assert not square[45, 60].any()
    assert square[260, 10].any()


def test_crop_mask_and_margin():
    image = np.full((300, 300, 3), 200, np.uint8)  # bright everywhere: masking shows
    fov = FieldOfView(149.5, 149.5, 100.0, "threshold", False)

    masked = crop_to_field_of_view(image, fov)
    unmasked = crop_to_field_of_view(image, fov, mask_outside=False)
    wider = crop_to_field_of_view(image, fov, margin=0.1)

    assert masked.shape == unmasked.shape == (200, 200, 3)
    assert not masked[0, 0].any() and unmasked[0, 0].all()
    assert masked[100, 100].all() and masked[100, 2].all()
    assert wider.shape == (220, 220, 3)
    assert not wider[110, 3].any() and wider[110, 12].all()  # mask stays at the FOV radius
    assert (masked > 0).mean() == pytest.approx(np.pi / 4, abs=0.01)


# --- model input -------------------------------------------------------------------------


def test_to_model_input_normalises_with_imagenet_statistics():
    mean_colour = np.rint(np.asarray(MEAN) * 255).astype(np.uint8)
    square = np.zeros((4, 4, 3), np.uint8)
    square[0, 0] = mean_colour
    square[1, 1] = 255

    tensor = to_model_input(square)

    assert tensor.shape == (3, 4, 4) and tensor.dtype == np.float32
    assert tensor.flags.c_contiguous
    assert np.allclose(tensor[:, 0, 0], 0.0, atol=0.01)
    assert np.allclose(tensor[:, 1, 1], (1 - np.asarray(MEAN)) / np.asarray(STD), atol=1e-5)
    assert np.allclose(tensor[:, 2, 2], -np.asarray(MEAN) / np.asarray(STD), atol=1e-5)


def test_preprocess_reuses_a_given_fov_and_size():
    image = draw_fundus(432, 576, 288.0, 216.0, 200.0)
    fov = FieldOfView(288.0, 216.0, 200.0, "threshold", False)
    tensor, returned = preprocess(image, InputSpec(size=224), fov=fov)
    assert returned is fov
    assert tensor.shape == (3, 224, 224)
    # Same result as cropping and normalising by hand.
    square = cv2.resize(crop_to_field_of_view(image, fov), (224, 224), interpolation=cv2.INTER_AREA)
    assert np.array_equal(tensor, to_model_input(square))

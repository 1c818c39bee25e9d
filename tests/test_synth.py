"""pyfundus.data.synth: determinism, geometry, anatomy, lesions and colour of the synthetic fundi."""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyfundus.data.synth import LESION_KINDS, SynthParams, generate_fundus, render, sample_params, vessel_mask
from pyfundus.preprocess import find_field_of_view

# (seed, keyword arguments): both eyes, lesions, a clipped FOV.
CASES = (
    (0, {}),
    (1, {"eye": "R"}),
    (2, {"eye": "L"}),
    (3, {"eye": "R", "lesions": True}),
    (4, {"eye": "L", "fov_clip": True}),
    (5, {"lesions": True, "fov_clip": True}),
)
DR = {"microaneurysms": 15, "haemorrhages": 6, "exudates": 25, "cotton_wool_spots": 2}


def case_id(case: tuple[int, dict]) -> str:
    return "-".join([f"seed{case[0]}", *(f"{k}={v}" for k, v in case[1].items())])


@pytest.fixture(scope="module", params=CASES, ids=case_id)
def sample(request) -> tuple[np.ndarray, SynthParams]:
    seed, kwargs = request.param
    return generate_fundus(seed, **kwargs)


def fov_pixels(params: SynthParams) -> tuple[float, float, float]:
    """FOV centre and radius in pixels (pixel centres at integers)."""
    cx, cy = (c * params.size - 0.5 for c in params.fov_centre)
    return cx, cy, params.fov_radius * params.size


def to_pixels(params: SynthParams, point: tuple[float, float]) -> tuple[float, float]:
    cx, cy, r = fov_pixels(params)
    return cx + point[0] * r, cy + point[1] * r


def distance_map(params: SynthParams, point: tuple[float, float]) -> np.ndarray:
    px, py = to_pixels(params, point)
    yy, xx = np.mgrid[: params.size, : params.size]
    return np.hypot(xx - px, yy - py)


def inside_fov(params: SynthParams, margin: float = 0.0) -> np.ndarray:
    """Pixels at least ``margin`` px inside the visible FOV."""
    cx, cy, r = fov_pixels(params)
    yy, xx = np.mgrid[: params.size, : params.size]
    inside = np.hypot(xx - cx, yy - cy) <= r - margin
    return inside & (np.abs(yy - cy) <= params.fov_clip * r - margin)


# --- determinism -------------------------------------------------------------------


def test_same_seed_gives_the_same_fundus():
    a, pa = generate_fundus(11, lesions=True)
    b, pb = generate_fundus(11, lesions=True)
    assert np.array_equal(a, b)
    assert pa == pb


def test_render_reproduces_the_image_bit_for_bit(sample):
    image, params = sample
    assert np.array_equal(render(params), image)


def test_generator_seed_is_deterministic():
    a, _ = generate_fundus(np.random.default_rng(7), size=128)
    b, _ = generate_fundus(np.random.default_rng(7), size=128)
    assert np.array_equal(a, b)


def test_different_seeds_differ():
    a, pa = generate_fundus(20, eye="R")
    b, pb = generate_fundus(21, eye="R")
    assert pa.vessels != pb.vessels
    assert np.abs(a.astype(int) - b.astype(int)).mean() > 5


def test_lesions_leave_the_eye_unchanged():
    healthy = sample_params(8)
    diseased = sample_params(8, lesions=DR)
    assert healthy.vessels == diseased.vessels
    assert healthy.disc_centre == diseased.disc_centre and healthy.fovea == diseased.fovea
    assert healthy.lesions == () and len(diseased.lesions) == sum(DR.values())


def test_params_render_at_another_size():
    image, params = generate_fundus(9, size=512)
    small = render(dataclasses.replace(params, size=256))
    assert small.shape == (256, 256, 3)
    fov = find_field_of_view(small)
    assert fov.radius == pytest.approx(params.fov_radius * 256, rel=0.03)


# --- image geometry -------------------------------------------------------------------


@pytest.mark.parametrize("size", [64, 300, 512])
def test_shape_and_dtype(size):
    image, params = generate_fundus(3, size=size)
    assert image.shape == (size, size, 3) and image.dtype == np.uint8
    assert params.size == size


def test_black_outside_the_fov(sample):
    image, params = sample
    outside = ~inside_fov(params, margin=-1.0)  # more than a pixel outside
    assert not image[outside].any()
    lit = image[inside_fov(params, margin=2.0)].max(axis=1)
    assert (lit > 10).mean() > 0.99


def test_clipped_fov_has_straight_edges():
    image, params = generate_fundus(4, fov_clip=True)
    assert params.fov_clip < 0.95
    cx, cy, r = fov_pixels(params)
    rows = np.flatnonzero(image.max(axis=(1, 2)) > 0)
    assert rows[0] == pytest.approx(cy - params.fov_clip * r, abs=1.5)
    assert rows[-1] == pytest.approx(cy + params.fov_clip * r, abs=1.5)
    # The clip edges are straight: a full chord of lit pixels along them.
    top = image[rows[0] + 1].max(axis=1) > 10
    assert top.sum() > 2 * np.sqrt(r * r - (params.fov_clip * r) ** 2) - 6


def test_field_of_view_detector_finds_the_fov(sample):
    image, params = sample
    fov = find_field_of_view(image)
    cx, cy, r = fov_pixels(params)
    assert fov.cx == pytest.approx(cx, abs=0.01 * params.size)
    assert fov.cy == pytest.approx(cy, abs=0.01 * params.size)
    assert fov.radius == pytest.approx(r, rel=0.02)


# --- anatomy ------------------------------------------------------------------------


def test_anatomy_is_placed_like_a_real_eye(sample):
    _, params = sample
    dd = params.disc_diameter
    dx = params.disc_centre[0] - params.fovea[0]
    dy = params.disc_centre[1] - params.fovea[1]
    assert (dx > 0) == (params.eye == "R")  # nasal: right of the macula in a right eye
    assert 2.2 * dd < np.hypot(dx, dy) < 2.8 * dd
    assert dy < 0  # slightly above the fovea
    assert 0.1 < params.cup_to_disc < 0.7


def test_optic_disc_is_the_brightest_region_on_the_eyes_side(sample):
    image, params = sample
    grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).astype(np.float32)
    disc_px = params.disc_radius * params.fov_radius * params.size
    # Mean brightness over a disc-sized neighbourhood within the FOV (the black
    # surround would otherwise pull a disc near the rim inwards).
    fov = inside_fov(params).astype(np.float32)
    smooth = cv2.GaussianBlur(grey * fov, (0, 0), disc_px / 2) / np.maximum(
        cv2.GaussianBlur(fov, (0, 0), disc_px / 2), 1e-3
    )
    smooth[fov == 0] = 0
    y, x = np.unravel_index(int(np.argmax(smooth)), smooth.shape)
    px, py = to_pixels(params, params.disc_centre)
    assert np.hypot(x - px, y - py) < disc_px
    cx, _, _ = fov_pixels(params)
    assert (x > cx) == (params.eye == "R")


def test_macula_is_darker_than_its_surroundings(sample):
    params = dataclasses.replace(sample[1], lesions=())  # bleeds and exudates aside
    image = render(params)
    d = distance_map(params, params.fovea) / (params.disc_diameter * params.fov_radius * params.size)
    green = image[..., 1].astype(float)
    vessels = vessel_mask(params)
    centre = green[(d < 0.3) & ~vessels].mean()
    around = green[(d > 1.5) & (d < 2.5) & ~vessels & inside_fov(params, 2.0)].mean()
    assert centre < 0.9 * around


def test_vessels_are_darker_than_their_surroundings(sample):
    image, params = sample
    mask = vessel_mask(params)
    kernel = np.ones((7, 7), np.uint8)
    near = cv2.dilate(mask.astype(np.uint8), kernel).astype(bool) & ~cv2.dilate(
        mask.astype(np.uint8), np.ones((3, 3), np.uint8)
    ).astype(bool)
    near &= inside_fov(params, 2.0)
    green = image[..., 1].astype(float)
    assert green[mask].mean() < 0.8 * green[near].mean()


def test_vessel_fraction_is_plausible(sample):
    _, params = sample
    fov = inside_fov(params)
    fraction = vessel_mask(params)[fov].mean()
    assert 0.05 < fraction < 0.20


def test_fovea_is_avascular(sample):
    _, params = sample
    d = distance_map(params, params.fovea) / params.size / params.fov_radius
    assert not vessel_mask(params)[d < 0.2 * params.disc_diameter].any()


def test_vessels_leave_the_disc_upwards_and_downwards(sample):
    _, params = sample
    dy = [v.path[-1][1] - params.disc_centre[1] for v in params.vessels if v.path[0][2] > 0.015]
    assert min(dy) < -0.3 and max(dy) > 0.3  # the arcade trunks
    arteries = [v.path[0][2] for v in params.vessels if v.kind == "artery" and v.path[0][2] > 0.01]
    veins = [v.path[0][2] for v in params.vessels if v.kind == "vein" and v.path[0][2] > 0.01]
    assert max(arteries) < max(veins)


# --- lesions ------------------------------------------------------------------------


def test_lesion_counts_are_recorded():
    _, healthy = generate_fundus(6, size=128)
    assert healthy.lesion_counts == dict.fromkeys(LESION_KINDS, 0)
    _, asked = generate_fundus(6, size=128, lesions={"microaneurysms": 4, "exudates": 7})
    assert asked.lesion_counts == {"microaneurysms": 4, "haemorrhages": 0, "exudates": 7, "cotton_wool_spots": 0}
    _, drawn = generate_fundus(6, size=128, lesions=True)
    assert set(drawn.lesion_counts) == set(LESION_KINDS)
    assert drawn.lesion_counts["microaneurysms"] > 0
    assert sum(drawn.lesion_counts.values()) == len(drawn.lesions)
    assert dataclasses.replace(drawn, lesions=()).lesion_counts == healthy.lesion_counts  # derived, never stale


def yellowish(image: np.ndarray) -> np.ndarray:
    r, g, b = (image[..., c].astype(int) for c in range(3))
    return (r > 120) & (g > 0.65 * r) & (b < 0.75 * g)


def test_exudates_are_yellow_and_bleeds_dark_red():
    healthy, params = generate_fundus(12, eye="R")
    diseased, _ = generate_fundus(12, eye="R", lesions=DR)
    # Away from the disc, which is yellowish itself.
    off_disc = distance_map(params, params.disc_centre) > 2 * params.disc_radius * params.fov_radius * params.size
    new_yellow = yellowish(diseased) & ~yellowish(healthy) & off_disc
    assert new_yellow.sum() > 20
    darker = (diseased[..., 1].astype(int) < healthy[..., 1].astype(int) - 15) & off_disc
    assert darker.sum() > 20
    # Bleeds are red: they take a larger share of the green than of the red.
    kept = diseased[darker].astype(float).sum(axis=0) / healthy[darker].astype(float).sum(axis=0)
    assert kept[1] < 0.8 * kept[0]


def test_healthy_fundus_has_no_exudate_colour():
    image, params = generate_fundus(12, eye="R")
    off_disc = distance_map(params, params.disc_centre) > 2 * params.disc_radius * params.fov_radius * params.size
    assert (yellowish(image) & off_disc).sum() < 20


# --- colour -------------------------------------------------------------------------


def test_colours_are_fundus_like(sample):
    image, params = sample
    mean = image[inside_fov(params, 2.0)].mean(axis=0)
    assert mean[0] > mean[1] > mean[2]
    assert mean[0] > 90  # not a dark or grey picture


def test_pigmentation_spans_light_to_dark():
    reds = [np.mean(generate_fundus(s, size=96)[0][..., 0]) for s in range(12)]
    pigmentation = [sample_params(s, size=96).pigmentation for s in range(12)]
    assert np.corrcoef(reds, pigmentation)[0, 1] < -0.5


@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 2**63 - 1), eye=st.sampled_from(["R", "L", None]), clip=st.booleans())
def test_any_seed_gives_a_valid_fundus(seed, eye, clip):
    image, params = generate_fundus(seed, size=160, eye=eye, lesions=True, fov_clip=clip)
    assert image.shape == (160, 160, 3) and image.dtype == np.uint8
    assert not image[~inside_fov(params, margin=-1.0)].any()
    mean = image[inside_fov(params, 2.0)].mean(axis=0)
    assert mean[0] > mean[1] > mean[2]
    assert params.eye in ("R", "L") and (eye is None or params.eye == eye)


# --- arguments ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, error",
    [
        ({"eye": "X"}, ValueError),
        ({"size": 16}, ValueError),
        ({"lesions": {"warts": 1}}, ValueError),
        ({"lesions": {"exudates": -1}}, ValueError),
        ({"lesions": {"exudates": 1.5}}, ValueError),
        ({"lesions": "many"}, TypeError),
    ],
)
def test_bad_arguments_are_refused(kwargs, error):
    with pytest.raises(error):
        generate_fundus(0, **kwargs)

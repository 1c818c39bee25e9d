"""Degradation simulator: determinism, exact replay, strength, severity, cofe-Net fidelity."""

from __future__ import annotations

import json
import math

import cv2
import numpy as np
import pytest
import skimage.data
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyfundus.data.degrade import (
    BLUR_ALLOWANCE,
    COFE_CODES,
    DEGRADATIONS,
    TYPES,
    DegradationRecord,
    cofe_all_three,
    cofe_degrade,
    cofe_one_or_two,
    degrade,
    degraded_mask,
    draw_step,
    fov_mask,
    overall_severity,
    replay,
)
from pyfundus.preprocess import find_field_of_view
from pyfundus.verdicts import ACTIONS, CAUSES

SIDE = 512
STRENGTHS = (0.0, 0.25, 0.5, 0.75, 1.0)
COFE = ("illumination", "spots", "blur")


@pytest.fixture(scope="module")
def retina() -> np.ndarray:
    """The real CC0 retina photo bundled with scikit-image, at the proxy-data size."""
    return cv2.resize(skimage.data.retina(), (SIDE, SIDE), interpolation=cv2.INTER_AREA)


@pytest.fixture(scope="module")
def mask(retina: np.ndarray) -> np.ndarray:
    return fov_mask(retina.shape, find_field_of_view(retina))


@pytest.fixture(scope="module")
def inner(mask: np.ndarray) -> np.ndarray:
    """The FOV without its rim, where measures are not disturbed by the black border."""
    return cv2.erode(mask.astype(np.uint8), np.ones((41, 41), np.uint8)).astype(bool)


def luma(img: np.ndarray) -> np.ndarray:
    return img.astype(np.float64) @ np.array([0.299, 0.587, 0.114])


def high_freq(img: np.ndarray, region: np.ndarray) -> float:
    return float(cv2.Laplacian(luma(img), cv2.CV_64F)[region].var())


def local_contrast(img: np.ndarray, region: np.ndarray) -> float:
    y = luma(img)
    return float((y - cv2.GaussianBlur(y, (0, 0), 8))[region].std())


def mean_luma(img: np.ndarray, region: np.ndarray) -> float:
    return float(luma(img)[region].mean())


def lit_pixels(img: np.ndarray, region: np.ndarray) -> float:
    return float((img.max(axis=2) > 0).sum())


def change(img: np.ndarray, clean: np.ndarray, region: np.ndarray) -> float:
    return float(np.abs(img.astype(np.int16) - clean.astype(np.int16))[region].mean())


# (measure, direction) along which each type must move monotonically with strength
MEASURES = {
    "blur": (high_freq, -1),
    "defocus": (high_freq, -1),
    "motion_blur": (high_freq, -1),
    "haze": (local_contrast, -1),
    "underexposure": (mean_luma, -1),
    "overexposure": (mean_luma, +1),
    "eyelid_shadow": (mean_luma, -1),
    "eyelash_shadow": (mean_luma, -1),
    "small_pupil": (mean_luma, -1),
    "partial_shadow": (mean_luma, -1),
    "vignetting": (mean_luma, -1),
    "glare": (mean_luma, +1),
    "off_centre": (lit_pixels, -1),
    "illumination": (change, +1),
    "spots": (change, +1),
    "noise": (change, +1),
    "jpeg": (change, +1),
}


def run(retina: np.ndarray, mask: np.ndarray, name: str, strength: float, seed: int = 3):
    return degrade(retina, seed, types=[name], strength=strength, mask=mask)


def test_every_type_is_measured_and_caused() -> None:
    assert set(MEASURES) == set(TYPES) == set(DEGRADATIONS)
    assert {d.cause for d in DEGRADATIONS.values()} == set(CAUSES)
    assert set(ACTIONS) == set(CAUSES) and all(ACTIONS.values())


@pytest.mark.parametrize("name", TYPES)
def test_draw_is_deterministic_and_json_plain(name: str) -> None:
    shape = (SIDE, SIDE)
    a = draw_step(name, np.random.default_rng(5), shape, 0.6)
    b = draw_step(name, np.random.default_rng(5), shape, 0.6)
    assert a == b
    assert json.loads(json.dumps(a)) == a


@pytest.mark.parametrize("name", TYPES)
def test_replay_is_bit_exact(retina: np.ndarray, mask: np.ndarray, name: str) -> None:
    out, record = run(retina, mask, name, 0.7, seed=11)
    again = replay(retina, DegradationRecord.from_json(record.to_json()), mask)
    assert np.array_equal(out, again)


@pytest.mark.parametrize("variant", ["published", "training"])
def test_cofe_spots_replay_bit_exact(retina: np.ndarray, mask: np.ndarray, variant: str) -> None:
    out, record = cofe_degrade(retina, "111", 4, variant=variant, mask=mask)
    spots = record.steps[1]["params"]["spots"]
    assert spots and all({"centre", "radius", "amplitude", "ksize", "sigma"} <= set(s) for s in spots)
    assert np.array_equal(out, replay(retina, DegradationRecord.from_json(record.to_json()), mask))


def test_replay_uses_the_recorded_fov(retina: np.ndarray) -> None:
    out, record = degrade(retina, 8, n_types=(2, 3))
    assert record.fov is not None
    assert np.array_equal(out, replay(retina, DegradationRecord.from_json(record.to_json())))


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**32 - 1), strength=st.none() | st.floats(0, 1))
def test_random_degrade_replays_and_stays_in_fov(
    retina: np.ndarray, mask: np.ndarray, seed: int, strength: float | None
) -> None:
    out, record = degrade(retina, seed, strength=strength, mask=mask)
    assert out.dtype == np.uint8 and out.shape == retina.shape
    assert not out[~degraded_mask(mask, record)].any()
    assert np.array_equal(out, replay(retina, DegradationRecord.from_json(record.to_json()), mask))


@pytest.mark.parametrize("name", TYPES)
def test_strength_zero_leaves_image_nearly_unchanged(
    retina: np.ndarray, mask: np.ndarray, inner: np.ndarray, name: str
) -> None:
    out, record = run(retina, mask, name, 0.0)
    clean = retina * mask[..., None]
    # JPEG's weakest setting is quality 40: visible only as ~2 grey levels.
    assert change(out, clean, inner) < (3.0 if name == "jpeg" else 0.5)
    assert record.severity <= 0.1


@pytest.mark.parametrize("name", TYPES)
def test_higher_strength_degrades_more(
    retina: np.ndarray, mask: np.ndarray, inner: np.ndarray, name: str
) -> None:
    measure, direction = MEASURES[name]
    clean = retina * mask[..., None]
    values, severities = [], []
    for s in STRENGTHS:
        out, record = run(retina, mask, name, s)
        values.append(direction * (change(out, clean, inner) if measure is change else measure(out, inner)))
        severities.append(record.severity)
    assert all(b > a for a, b in zip(values, values[1:])), values
    assert all(b >= a for a, b in zip(severities, severities[1:])), severities
    assert severities[-1] > severities[0]


@pytest.mark.parametrize("name", TYPES)
def test_output_is_uint8_and_black_outside_fov(retina: np.ndarray, mask: np.ndarray, name: str) -> None:
    out, record = run(retina, mask, name, 0.9)
    assert out.dtype == np.uint8 and out.shape == retina.shape
    assert not out[~degraded_mask(mask, record)].any()


def test_off_centre_moves_the_fov(retina: np.ndarray, mask: np.ndarray) -> None:
    out, record = run(retina, mask, "off_centre", 1.0)
    moved = degraded_mask(mask, record)
    assert moved.sum() < 0.8 * mask.sum()
    assert (out.max(axis=2) > 0).sum() <= moved.sum()


def test_record_round_trips_through_json(retina: np.ndarray, mask: np.ndarray) -> None:
    _, record = degrade(retina, 21, n_types=(3, 3), mask=mask)
    text = record.to_json()
    assert DegradationRecord.from_json(text) == record
    assert json.loads(text)["steps"][0].keys() >= {"type", "params", "severity"}


@pytest.mark.parametrize("code", COFE_CODES)
def test_cofe_codes_apply_exactly_the_coded_types_in_order(
    retina: np.ndarray, mask: np.ndarray, code: str
) -> None:
    _, record = cofe_degrade(retina, code, 0, mask=mask)
    # Published generator: last digit illumination, middle spots, first blur.
    expected = [name for name, digit in zip(COFE, code[::-1]) if digit == "1"]
    assert [s["type"] for s in record.steps] == expected


def test_published_illumination_ranges() -> None:
    h = w = SIDE
    steps = [draw_step("illumination", np.random.default_rng(i), (h, w), None)["params"] for i in range(300)]
    for key, lo, hi in (("brightness", 0.7, 1.2), ("contrast", 0.6, 1.4), ("saturation", 0.6, 1.4)):
        values = np.array([p[key] for p in steps])
        assert lo <= values.min() < lo + 0.05 and hi - 0.05 < values.max() <= hi, key
    for p in steps:
        cx, cy = p["halo_centre"]
        assert abs(cx - w / 2) <= w / 8 and abs(cy - h / 2) <= h / 8
        assert 0.75 * w <= p["halo_inner"] <= w
        assert p["halo_outer"] > math.hypot(w, h)  # the ring reaches the corners
        assert 0.4 * w - 1 <= p["hole_diameter"] <= 0.7 * w
        assert w / 4 <= p["hole_centre"][0] <= 3 * w / 4 and 3 * h / 8 <= p["hole_centre"][1] <= 5 * h / 8
        assert -0.262 <= p["hole_base"] <= -0.26 and 0.05 <= p["hole_coef"] <= 0.06
        assert p["halo_gain"] == p["hole_gain"] == 1.0


@pytest.mark.parametrize("variant, most", [("published", 10), ("training", 20)])
def test_published_spot_ranges(variant: str, most: int) -> None:
    h = SIDE
    counts = []
    for i in range(200):
        spots = draw_step("spots", np.random.default_rng(i), (h, h), None, variant=variant)["params"]["spots"]
        counts.append(len(spots))
        for s in spots:
            assert 0.01 * h <= s["radius"] <= 0.05 * h
            assert 0.05 < s["amplitude"] <= 0.21
            assert all(s["radius"] < c < h - s["radius"] for c in s["centre"])
    assert min(counts) == 5 and max(counts) == most


def test_published_and_training_blur_ranges() -> None:
    shape = (SIDE, SIDE)
    published = [draw_step("blur", np.random.default_rng(i), shape, None)["params"] for i in range(200)]
    sigmas = np.array([p["sigma"] for p in published])
    assert 5 <= sigmas.min() < 5.5 and 14.5 < sigmas.max() <= 15
    assert all(k % 2 == 1 and 1 <= k <= 7 for p in published for k in p["ksize"])
    training = [
        draw_step("blur", np.random.default_rng(i), shape, None, variant="training")["params"]
        for i in range(200)
    ]
    sigmas = np.array([p["sigma"] for p in training])
    assert 0 <= sigmas.min() < 0.5 and 14.5 < sigmas.max() <= 15
    assert all(p["ksize"] == [2 * math.ceil(3 * p["sigma"]) + 1] * 2 for p in training if p["sigma"] > 0)


def test_strength_one_covers_the_published_jitter() -> None:
    p = draw_step("illumination", np.random.default_rng(1), (SIDE, SIDE), 1.0)["params"]
    q = draw_step("illumination", np.random.default_rng(1), (SIDE, SIDE), None)["params"]
    assert p == q


def test_severities_and_causes(retina: np.ndarray, mask: np.ndarray) -> None:
    for seed in range(25):
        _, record = degrade(retina, seed, n_types=(1, 4), mask=mask)
        sev = [s["severity"] for s in record.steps]
        assert all(0.0 <= s <= 1.0 for s in sev) and 0.0 <= record.severity <= 1.0
        assert record.severity == pytest.approx(1 - np.prod([1 - s for s in sev]))
        assert record.severity == pytest.approx(overall_severity(sev))
        assert set(record.causes) == set(CAUSES)
        for cause in CAUSES:
            mine = [s["severity"] for s in record.steps if DEGRADATIONS[s["type"]].cause == cause]
            assert record.causes[cause] == (max(mine) if mine else 0.0)


@pytest.mark.parametrize(
    "name, cause",
    [
        ("blur", "blur"), ("defocus", "blur"), ("motion_blur", "blur"),
        ("illumination", "illumination"), ("small_pupil", "illumination"),
        ("spots", "artefacts"), ("jpeg", "artefacts"), ("noise", "artefacts"),
        ("haze", "haze"), ("underexposure", "exposure"), ("overexposure", "exposure"),
        ("eyelash_shadow", "occlusion"), ("eyelid_shadow", "occlusion"), ("off_centre", "framing"),
    ],
)
def test_cause_of_each_type(retina: np.ndarray, mask: np.ndarray, name: str, cause: str) -> None:
    _, record = run(retina, mask, name, 0.8)
    assert max(record.causes, key=record.causes.get) == cause
    assert record.causes[cause] == record.severity > 0


def test_cofe_one_or_two_draws_one_or_two_types_and_cofe_all_three_all(retina: np.ndarray, mask: np.ndarray) -> None:
    sizes = set()
    for seed in range(30):
        _, record = cofe_one_or_two(retina, seed, mask=mask)
        types = [s["type"] for s in record.steps]
        assert 1 <= len(types) <= 2 and types == [t for t in COFE if t in types]
        sizes.add(len(types))
    assert sizes == {1, 2}
    _, record = cofe_all_three(retina, 0, mask=mask)
    assert [s["type"] for s in record.steps] == list(COFE)


def test_random_draws_respect_n_types_and_physical_order(retina: np.ndarray, mask: np.ndarray) -> None:
    counts = set()
    for seed in range(40):
        _, record = degrade(retina, seed, n_types=(1, 3), mask=mask)
        types = [s["type"] for s in record.steps]
        counts.add(len(types))
        assert types == sorted(types, key=TYPES.index)
        assert not {"underexposure", "overexposure"} <= set(types)
        assert all(0 <= s["strength"] <= 1 for s in record.steps)
    assert counts == {1, 2, 3}


def test_given_types_are_put_in_physical_order(retina: np.ndarray, mask: np.ndarray) -> None:
    _, record = degrade(retina, 0, types=["jpeg", "blur", "eyelid_shadow", "spots"], strength=0.5, mask=mask)
    assert [s["type"] for s in record.steps] == ["eyelid_shadow", "spots", "blur", "jpeg"]


def test_bad_inputs_are_refused(retina: np.ndarray, mask: np.ndarray) -> None:
    with pytest.raises(ValueError, match="unknown degradation"):
        degrade(retina, 0, types=["sparkles"], mask=mask)
    with pytest.raises(ValueError, match="code"):
        cofe_degrade(retina, "000", 0, mask=mask)
    with pytest.raises(ValueError, match="variant"):
        cofe_degrade(retina, "010", 0, variant="paper", mask=mask)
    with pytest.raises(ValueError, match="uint8"):
        degrade(retina.astype(np.float32), 0, mask=mask)
    with pytest.raises(ValueError, match="strength"):
        degrade(retina, 0, types=["haze"], strength=1.5, mask=mask)
    _, record = degrade(retina, 0, types=["haze"], strength=0.5, mask=mask)
    with pytest.raises(ValueError, match="caller's mask"):
        replay(retina, record)
    with pytest.raises(ValueError, match="record is for"):
        replay(retina[:256], record, mask[:256])


def test_blur_within_the_camera_allowance_costs_nothing() -> None:
    """A camera's own softness (up to BLUR_ALLOWANCE px at 512) is not a defect; blur beyond it is."""
    shape = (SIDE, SIDE)
    unit = SIDE / 512
    gentle = DEGRADATIONS["blur"].severity({"sigma": 0.9 * BLUR_ALLOWANCE * unit, "ksize": [9, 9]}, shape)
    beyond = DEGRADATIONS["blur"].severity({"sigma": 3.0 * BLUR_ALLOWANCE * unit, "ksize": [25, 25]}, shape)
    assert gentle == 0.0 and 0.3 < beyond < 1.0
    short = DEGRADATIONS["motion_blur"].severity({"length": 3.0 * unit, "angle": 0.4}, shape)
    long = DEGRADATIONS["motion_blur"].severity({"length": 20.0 * unit, "angle": 0.4}, shape)
    bent = DEGRADATIONS["motion_blur"].severity({"length": 20.0 * unit, "angle": 0.4, "turn": 1.0}, shape)
    assert short == 0.0 and 0 < bent < long  # a bent stroke spreads less than a straight one as long


@pytest.mark.parametrize("name", ["partial_shadow", "vignetting", "glare"])
def test_the_widened_families_vary_in_direction_and_place(retina: np.ndarray, mask: np.ndarray, name: str) -> None:
    """Shadows, vignetting and glare come from many directions and places, not one."""
    centroids = []
    for seed in range(8):
        out, _ = run(retina, mask, name, 0.7, seed=seed)
        diff = np.abs(out.astype(np.float32) - (retina * mask[..., None]).astype(np.float32)).sum(axis=2)
        ys, xs = np.nonzero(diff > np.percentile(diff[mask], 90))
        centroids.append((xs.mean(), ys.mean()))
    spread = np.std(np.asarray(centroids), axis=0).max()
    assert spread > 0.05 * SIDE, centroids


def test_motion_blur_varies_in_length_angle_and_path() -> None:
    steps = [draw_step("motion_blur", np.random.default_rng(seed), (SIDE, SIDE), 0.8) for seed in range(30)]
    angles = [step["params"]["angle"] for step in steps]
    assert max(angles) - min(angles) > 2.0  # radians, of pi
    assert 5 <= sum(step["params"]["turn"] != 0 for step in steps) <= 25  # some strokes bend
    lengths = [draw_step("motion_blur", np.random.default_rng(0), (SIDE, SIDE), s)["params"]["length"] for s in (0.3, 1)]
    assert lengths[1] > 3 * lengths[0]

"""CLEAQ-DR's data: the DR proxy's grading rule, degrade-restore pairs, the outside-dataset loaders, vessel maps,
and the image metrics they are judged by."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pyfundus.data.cleaq import (
    ICDR_GRADES,
    MESSIDOR_GRADES,
    SEVERE_HAEMORRHAGES,
    build_pairs,
    field_mask,
    load_cleaq,
    synthetic_dr_grade,
    synthetic_lesion_counts,
)
from pyfundus.data.synth import generate_fundus, vessel_mask
from pyfundus.data.vessels import vessel_mask_from_photo
from pyfundus.metrics import dice, psnr, ssim


def test_the_proxy_grading_rule():
    none = {"microaneurysms": 0, "haemorrhages": 0, "exudates": 0, "cotton_wool_spots": 0}
    assert synthetic_dr_grade(none) == 0
    assert synthetic_dr_grade({**none, "microaneurysms": 4}) == 1
    assert synthetic_dr_grade({**none, "microaneurysms": 4, "exudates": 1}) == 2
    assert synthetic_dr_grade({**none, "cotton_wool_spots": 1}) == 2
    assert synthetic_dr_grade({**none, "haemorrhages": SEVERE_HAEMORRHAGES - 1}) == 2
    assert synthetic_dr_grade({**none, "haemorrhages": SEVERE_HAEMORRHAGES}) == 3
    rng = np.random.default_rng(0)
    for grade in range(4):  # the counts drawn for a grade give that grade back, every time
        assert all(synthetic_dr_grade(synthetic_lesion_counts(grade, rng)) == grade for _ in range(50))
    with pytest.raises(ValueError):
        synthetic_lesion_counts(4, rng)


def test_build_pairs_writes_reproducible_pairs_with_exact_vessels_and_grades(tmp_path):
    first = build_pairs([], tmp_path / "a", synthetic=2, variants=3, dr_proxy=True, workers=1, progress=False)
    again = build_pairs([], tmp_path / "b", synthetic=2, variants=3, dr_proxy=True, workers=1, progress=False)
    assert len(first.records) == 6 and first.grades == ("none", "mild", "moderate", "severe")
    for one, two in zip(first.records, again.records):
        assert one.image.read_bytes() == two.image.read_bytes() and one.clean.read_bytes() == two.clean.read_bytes()
        assert one.quality in ("Good", "Usable", "Reject") and one.dr_grade in range(4) and one.cropped
    rows = list(csv.DictReader(open(tmp_path / "a" / "cleaq.csv")))
    assert {r["vessel_source"] for r in rows} == {"exact"}
    # The exact mask is the generator's, and the clean target is the generator's fundus seen by a camera.
    record = first.records[0]
    stored = np.asarray(Image.open(record.vessels)) > 127
    seed = int(record.source_id.split("-")[1])
    _, params = generate_fundus(seed, size=512, lesions=True)  # same anatomy whatever the lesions
    assert dice(stored, vessel_mask(params)) > 0.99
    clean_pairs = [r for r in first.records if r.degradation == "clean"]
    for r in clean_pairs:
        assert r.image.read_bytes() == r.clean.read_bytes()


def test_real_photo_pairs_get_frangi_vessels(tmp_path, sample_photo):
    dataset = build_pairs([sample_photo], tmp_path, variants=2, workers=1, progress=False)
    rows = list(csv.DictReader(open(tmp_path / "cleaq.csv")))
    assert {r["vessel_source"] for r in rows} == {"frangi"} and dataset.grades is None
    clean = np.asarray(Image.open(dataset.records[0].clean))
    vessels = np.asarray(Image.open(dataset.records[0].vessels)) > 127
    assert clean.shape == (512, 512, 3) and 0.05 < vessels.sum() / field_mask(clean).sum() < 0.2


@pytest.fixture
def sample_photo():
    from sample_helpers import sample_photos

    return next(p for p in sample_photos() if p.name == "CHASEDB1_08L.png")


def _table(path: Path, header: list[str], rows: list[list]) -> Path:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def test_outside_dataset_loaders(tmp_path):
    eyeq = load_cleaq(_table(tmp_path / "Label_EyeQ_test.csv", ["", "image", "quality", "DR_grade"],
                             [[0, "10_left.jpeg", 0, 2], [1, "10_right.jpeg", 2, 0]]))  # fmt: skip
    assert [(r.image.name, r.quality, r.dr_grade, r.source_id) for r in eyeq.records] == [
        ("10_left.jpeg", "Good", 2, "10"), ("10_right.jpeg", "Reject", 0, "10")]  # fmt: skip
    assert eyeq.grades == ICDR_GRADES
    messidor = load_cleaq(_table(tmp_path / "messidor.csv", ["Image name", "Ophthalmologic department", "Retinopathy grade"],
                                 [["20051019_38557_0100_PP.tif", "LaTIM", 3]]))  # fmt: skip
    assert messidor.grades == MESSIDOR_GRADES and messidor.records[0].dr_grade == 3
    (tmp_path / "train_images").mkdir()
    aptos = load_cleaq(_table(tmp_path / "train.csv", ["id_code", "diagnosis"], [["000c1434d8d7", 4]]))
    assert aptos.records[0].image == tmp_path / "train_images" / "000c1434d8d7.png" and aptos.records[0].dr_grade == 4
    eyepacs = load_cleaq(_table(tmp_path / "trainLabels.csv", ["image", "level"], [["13_left", 1]]))
    assert eyepacs.records[0].image.name == "13_left.jpeg" and eyepacs.grades == ICDR_GRADES
    with pytest.raises(ValueError, match="not a CLEAQ-DR table"):
        load_cleaq(_table(tmp_path / "other.csv", ["a", "b"], [[1, 2]]))


def test_frangi_finds_the_synthetic_vessels():
    image, params = generate_fundus(3, size=512)
    found = vessel_mask_from_photo(image, field_mask(image))
    assert dice(found, vessel_mask(params)) > 0.7  # measured 0.81


def test_psnr_and_ssim_match_scikit_image_and_respect_the_mask():
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (64, 72, 3), dtype=np.uint8)
    b = np.clip(a + rng.normal(0, 12, a.shape), 0, 255).astype(np.uint8)
    assert psnr(a, b) == pytest.approx(peak_signal_noise_ratio(a, b), abs=1e-6)
    expected = structural_similarity(a / 255.0, b / 255.0, channel_axis=-1, gaussian_weights=True, sigma=1.5,
                                     use_sample_covariance=False, data_range=1.0)  # fmt: skip
    assert ssim(a, b) == pytest.approx(expected, abs=1e-6)
    mask = np.zeros(a.shape[:2], bool)
    mask[:, :36] = True
    c = b.copy()
    c[:, 36:] = 0  # ruin the half outside the mask: the masked figures do not move
    assert psnr(a, c, mask) == pytest.approx(psnr(a, b, mask)) and psnr(a, c) < psnr(a, b)
    assert dice(np.zeros((2, 2), bool), np.zeros((2, 2), bool)) == 1.0

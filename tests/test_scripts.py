"""The scripts behind MODEL_CARD.md's figures run and compute what they say."""

from __future__ import annotations

import csv
import subprocess
import sys

import torch
from script_helpers import SCRIPTS, load_script


def test_site_calibration_check_fits_on_even_rows_and_grades_odd_ones(tmp_path):
    # One camera whose scores sit 30 points low: stored thresholds call its Good captures Reject.
    rows = [("Good", 35.0), ("Good", 36.0), ("Reject", 5.0), ("Reject", 6.0), ("Good", 34.0), ("Good", 37.0)]
    table = tmp_path / "predictions.csv"
    with table.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "score", "target", "pred_class", "true_class", "degradation", "source_id", "error"])
        for i, (level, score) in enumerate(rows):
            writer.writerow([f"x{i}.png", score, "", "", level, "", "cam", ""])
    done = subprocess.run([sys.executable, str(SCRIPTS / "site_calibration_check.py"), str(table)],
                          capture_output=True, text=True, check=True)  # fmt: skip
    # Graded (odd rows): Good 36, Reject 6, Good 37. Stored 43/62 gets only the Reject right.
    assert "all, stored: 3 graded, accuracy 0.333" in done.stdout
    assert "all, per camera: 3 graded, accuracy 1.000" in done.stdout


def test_release_weights_writes_a_loadable_fp16_file_and_checks_the_scores(tmp_path):
    from sample_helpers import sample_photos

    from pyfundus.api import WEIGHTS_DIR
    from pyfundus.weights import load_weights

    sample_photos()  # the release check scores the sample photos: fail (CI) or skip without them
    source, dest = WEIGHTS_DIR / "fthnet_s.safetensors", tmp_path / "release.safetensors"
    done = subprocess.run([sys.executable, str(SCRIPTS / "release_weights.py"), str(source), str(dest)],
                          capture_output=True, text=True, check=True)  # fmt: skip
    assert "largest score change from fp16 storage over 13 sample photos" in done.stdout
    assert f"{dest}: 11.4 MB, sha256 " in done.stdout
    state, config = load_weights(dest)
    assert config.trained and "MODEL_CARD.md" in config.description
    assert {t.dtype for t in state.values() if t.is_floating_point()} == {torch.float16}


def test_camera_probe_changes_only_what_each_column_names():
    import numpy as np

    from pyfundus.data.synth import generate_fundus

    probe = load_script("camera_probe")
    square, _ = generate_fundus(3, size=256)
    reference, _ = generate_fundus(4, size=256)
    images = probe.probes(square, probe.channel_means(reference))
    assert list(images) == ["as captured", "reference colour", "sharpened", "border removed", "contrast x1.3"]

    def ratios(img):
        means = probe.channel_means(img)
        return means[1:] / means[0]

    # The recoloured photo takes the reference's G/R and B/R (to rounding and clipping); red is untouched.
    assert np.allclose(ratios(images["reference colour"]), ratios(reference), rtol=0.03)
    assert not np.allclose(ratios(square), ratios(reference), rtol=0.03)
    assert np.array_equal(images["reference colour"][..., 0], square[..., 0])
    # The border is black beyond 78% of the radius and untouched inside it.
    side = square.shape[0]
    yy, xx = np.mgrid[:side, :side]
    radius = np.hypot(yy - (side - 1) / 2, xx - (side - 1) / 2) / (side / 2)
    assert not images["border removed"][radius > 0.78].any()
    assert np.array_equal(images["border removed"][radius < 0.7], square[radius < 0.7])
    # Contrast: the green channel's in-field spread grows by 1.3 (none of it clips), the surround stays black.
    field = probe.in_field(square)
    spread = images["contrast x1.3"][field][:, 1].astype(float).std() / square[field][:, 1].astype(float).std()
    assert 1.28 < spread < 1.32
    assert not images["contrast x1.3"][~field].any()


def test_camera_probe_prints_one_score_per_probe(tmp_path):
    import json

    from PIL import Image

    from pyfundus.data.synth import generate_fundus

    paths = []
    for seed in (5, 6):
        path = tmp_path / f"synth{seed}.png"
        Image.fromarray(generate_fundus(seed, size=400)[0]).save(path)
        paths.append(str(path))
    done = subprocess.run([sys.executable, str(SCRIPTS / "camera_probe.py"), "--json", "--reference", paths[0], *paths],
                          capture_output=True, text=True, check=True)  # fmt: skip
    table = json.loads(done.stdout)
    assert list(table) == ["synth5.png", "synth6.png"]
    for scores in table.values():
        assert len(scores) == 5 and all(0.0 <= s <= 100.0 for s in scores.values())

"""The scripts behind MODEL_CARD.md's figures run and compute what they say."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import torch

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


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

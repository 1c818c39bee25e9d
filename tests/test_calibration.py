"""Site calibration: thresholds fitted to a site's own graded captures (pyfundus calibrate)."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
from sample_helpers import sample_photos

from pyfundus.calibration import calibrate_site
from pyfundus.cli import main
from pyfundus.errors import EXIT_NOTHING_SCORED, EXIT_SOME_FAILED, NothingToScore
from pyfundus.grading import Thresholds


@dataclass
class _Result:
    path: str
    score: float | None
    error: str | None = None


class _FixedScorer:
    """Scores looked up by file name, as a camera the model places low would be scored."""

    name = "fixed"
    thresholds = Thresholds(43.0, 62.0, calibrated=True)

    def __init__(self, scores):
        self.scores = scores

    def score(self, paths, *, batch_size=8, progress=None):
        return [_Result(p, self.scores[p], None if self.scores[p] is not None else f"{p}: cannot read") for p in paths]


def test_suggested_thresholds_reproduce_the_grades_the_stored_ones_miss():
    scores = {"g1": 30.0, "g2": 35.0, "g3": 41.0, "u1": 18.0, "u2": 21.0, "r1": 5.0, "r2": 8.0, "r3": 10.0, "bad": None}
    report = calibrate_site(
        _FixedScorer(scores), {"Good": ["g1", "g2", "g3"], "Usable": ["u1", "u2"], "Reject": ["r1", "r2", "r3", "bad"]}
    )
    assert report["n_scored"] == 8
    assert report["current"]["reject_below"] == 43.0 and report["current"]["accuracy"] == pytest.approx(3 / 8)
    suggested = report["suggested"]
    assert suggested["accuracy"] == 1.0 and suggested["qwk"] == pytest.approx(1.0)
    assert 10.0 < suggested["reject_below"] <= 18.0 and 21.0 < suggested["good_from"] <= 30.0
    assert report["per_class"]["Good"] == {"n": 3, "min": 30.0, "median": 35.0, "max": 41.0}
    assert report["few_images"] == ["Good", "Reject", "Usable"]
    assert report["failures"] == [{"path": "bad", "error": "bad: cannot read"}]


def test_one_class_is_not_enough():
    with pytest.raises(ValueError, match="at least two classes"):
        calibrate_site(_FixedScorer({"g1": 50.0}), {"Good": ["g1"]})
    with pytest.raises(ValueError, match="unknown class"):
        calibrate_site(_FixedScorer({"g1": 50.0}), {"Fine": ["g1"], "Good": ["g1"]})


def test_calibrate_command_on_real_captures(tmp_path, capsys):
    photos = {p.name: p for p in sample_photos()}
    good = [str(photos[n]) for n in ("CHASEDB1_12R.png", "HRF_07_dr.jpg", "DRIVE_22.png", "DRIVE_40.png", "issue_3.dcm")]
    reject = [str(photos[n]) for n in ("sample_dark.png", "cropped.png", "issue_1.png")]
    assert main(["calibrate", "--good", *good, "--reject", *reject, "--json", "--no-progress"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["n_scored"] == 8 and report["model"] == "fthnet_s"
    # On the data it was fitted to, the suggestion can only match or beat the stored thresholds.
    assert report["suggested"]["qwk"] >= report["current"]["qwk"]
    assert main(["calibrate", "--good", *good, "--no-progress"]) == 2  # one class: a usage error
    assert "at least two classes" in capsys.readouterr().err


def test_calibrate_exit_statuses(tmp_path, capsys):
    from PIL import Image
    from skimage import data as skdata

    retina = skdata.retina()[::2, ::2]
    good, reject = tmp_path / "good", tmp_path / "reject"
    good.mkdir(), reject.mkdir()
    Image.fromarray(retina).save(good / "a.jpg")
    Image.fromarray(retina[:, ::-1]).save(good / "b.jpg")
    Image.fromarray((retina * 0.15).astype("uint8")).save(reject / "dark.jpg")
    (reject / "broken.jpg").write_bytes((good / "a.jpg").read_bytes()[:2000])
    argv = ["calibrate", "--good", str(good), "--no-progress"]

    # One capture could not be scored: the report is made from the rest, and says which.
    assert main([*argv, "--reject", str(reject)]) == EXIT_SOME_FAILED
    assert "not scored: " in capsys.readouterr().out

    # A graded folder that is not there (a typo, an unmounted share) stops before anything is scored.
    assert main([*argv, "--reject", str(tmp_path / "rejct")]) == EXIT_NOTHING_SCORED
    assert f"{tmp_path / 'rejct'} (--reject): no such file or directory" in capsys.readouterr().err

    # No Reject capture could be scored: nothing to fit the thresholds to.
    assert main([*argv, "--reject", str(reject / "broken.jpg")]) == EXIT_NOTHING_SCORED
    assert "fewer than two classes have a capture that could be scored" in capsys.readouterr().err
    with pytest.raises(NothingToScore):
        calibrate_site(_FixedScorer({"g1": 50.0, "r1": None}), {"Good": ["g1"], "Reject": ["r1"]})

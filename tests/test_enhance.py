"""pyfundus enhance and grade: the correction applied at the capture's own size, the command lines' JSON, the
refusal to grade without a trained grader, the bench's enhance row, and the shipped enhancer's behaviour."""

from __future__ import annotations

import json
import warnings

import cv2
import numpy as np
import pytest

import pyfundus
from pyfundus.api import UntrainedModelWarning
from pyfundus.cli import main
from pyfundus.data.synth import generate_fundus
from pyfundus.dr_grader import NoGraderError
from pyfundus.enhance import apply_correction, output_name
from pyfundus.io import encode_jpeg


def _capture(tmp_path, name="capture.jpg"):
    path = tmp_path / name
    path.write_bytes(encode_jpeg(generate_fundus(5, size=512)[0]))  # a 2304x1728 camera frame
    return path


def test_the_correction_lands_inside_the_field_only_at_full_size():
    rgb = np.full((300, 400, 3), 100, np.uint8)
    small = np.full((64, 64, 3), 100, np.uint8)
    enhanced = small.copy()
    enhanced[..., 1] += 20  # +20 green everywhere at model size
    side, x0, y0 = 280, 60, 10
    disc = np.zeros((side, side), np.uint8)
    cv2.circle(disc, (side // 2, side // 2), side // 2, 1, -1)
    out = apply_correction(rgb, small, enhanced, (x0, y0, side), disc)
    assert out.shape == rgb.shape
    assert tuple(out[y0 + side // 2, x0 + side // 2]) == (100, 120, 100)  # the centre of the field: corrected
    assert tuple(out[5, 5]) == (100, 100, 100) and tuple(out[y0 + 2, x0 + 2]) == (100, 100, 100)  # outside: as it was
    assert np.array_equal(apply_correction(rgb, small, small, (x0, y0, side), disc), rgb)  # no correction, no change
    saturated = apply_correction(np.full_like(rgb, 250), small, enhanced, (x0, y0, side), disc)
    assert saturated[..., 1].max() == 255


def test_output_names_keep_the_stem_and_jpeg_stays_jpeg():
    assert output_name("/a/b/img.JPG") == "img.jpg"
    assert output_name("/a/b/scan.dcm") == "scan.png" and output_name("x.tif") == "x.png"


def test_an_untrained_enhancer_says_so_and_returns_the_capture_unchanged(tmp_path):
    with pytest.warns(UntrainedModelWarning):
        enhancer = _untrained()
    capture = _capture(tmp_path)
    (result,) = enhancer.enhance([str(capture)])
    original = pyfundus.read_image(str(capture)).pixels
    assert result.error is None and result.pixels.shape == original.shape == (1728, 2304, 3)
    assert np.array_equal(result.pixels, original)
    assert "untrained enhancer" in result.warnings[0]


def _untrained():
    from pyfundus import api

    # The registered name without its shipped file: a fresh network (zero correction).
    saved, api.WEIGHTS_DIR = api.WEIGHTS_DIR, api.WEIGHTS_DIR / "missing"
    try:
        return pyfundus.load_enhancer("cleaq_iqe_cpu")
    finally:
        api.WEIGHTS_DIR = saved


def test_enhance_cli_writes_full_size_copies_and_json(tmp_path, capsys):
    capture = _capture(tmp_path)
    (tmp_path / "notes.txt").write_text("not an image")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UntrainedModelWarning)
        code = main(["enhance", str(capture), str(tmp_path / "notes.txt"), "--out", str(tmp_path / "out"), "--json",
                     "--no-progress"])  # fmt: skip
    assert code == 0
    records = json.loads(capsys.readouterr().out)
    assert [r["error"] is None for r in records] == [True, False]
    first = records[0]
    assert first["output"] == str(tmp_path / "out" / "capture.jpg") and (first["width"], first["height"]) == (2304, 1728)
    assert {"read", "preprocess", "model", "correction", "write", "total"} <= set(first["timing_ms"])
    assert cv2.imread(first["output"]).shape == (1728, 2304, 3)


def test_grade_refuses_without_a_trained_grader_and_says_how_to_train_one(tmp_path, capsys):
    capture = _capture(tmp_path)
    assert main(["grade", str(capture)]) == 2
    message = capsys.readouterr().err
    assert "ships no DR grader" in message and "pyfundus train --task dr" in message
    assert main(["grade", str(capture), "--model", "cleaq"]) == 2  # a registered name has no trained weights
    with pytest.raises(NoGraderError):
        pyfundus.load_grader()


def test_bench_has_an_enhance_row(tmp_path):
    from pyfundus.runtime_bench import run_bench

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UntrainedModelWarning)
        rows = run_bench(backends=["torch"], precisions=["fp32"], batches=(1,), iters=3, warmup=1, time_box=0.1,
                         end_to_end=False, enhance=True, log=lambda message: None)  # fmt: skip
    (row,) = [r for r in rows if r["mode"] == "enhance"]
    assert row["p50_ms"] > 0 and row["iters"] == 3
    assert 0 < row["model_ms"] < row["p50_ms"] and row["write_ms"] > 0 and row["correction_ms"] > 0


def test_a_known_field_of_view_stands_in_when_the_detector_finds_none():
    from pyfundus.preprocess import FieldOfView, NoFundusError, find_field_of_view

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UntrainedModelWarning)
        enhancer = _untrained()
    dark = np.zeros((256, 256, 3), np.uint8)  # a capture darkened past the detector
    with pytest.raises(NoFundusError):
        find_field_of_view(dark)
    out = enhancer.enhance_array(dark, fov=FieldOfView(127.5, 127.5, 128.0, "threshold", False))
    assert out.shape == dark.shape


def test_the_shipped_enhancer_is_trained_and_restores_a_degraded_fundus():
    from pyfundus.data.cleaq import SIZE, field_mask
    from pyfundus.data.degrade import cofe_all_three
    from pyfundus.metrics import psnr
    from pyfundus.preprocess import crop_to_field_of_view, find_field_of_view

    enhancer = pyfundus.load_enhancer()
    assert enhancer.trained and enhancer.name == "cleaq_iqe_cpu"
    rgb = generate_fundus(11, size=512)[0]
    clean = cv2.resize(crop_to_field_of_view(rgb, find_field_of_view(rgb)), (SIZE, SIZE), interpolation=cv2.INTER_AREA)
    mask = field_mask(clean)
    degraded, _ = cofe_all_three(clean, np.random.default_rng(3), mask=mask)
    restored = enhancer.enhance_array(degraded, fov=find_field_of_view(clean))
    assert psnr(restored, clean, mask) > psnr(degraded, clean, mask) + 0.5


def test_eval_enhance_compares_every_method_in_one_run(tmp_path, capsys):
    photo = tmp_path / "clean.png"
    cv2.imwrite(str(photo), cv2.cvtColor(generate_fundus(7, size=512)[0], cv2.COLOR_RGB2BGR))
    out = tmp_path / "report"
    code = main(["eval", "--task", "enhance", "--photos", str(photo), "--draws", "1", "--baselines", "degraded", "clahe",
                 "unsharp", "--out", str(out), "--json", "--no-progress"])  # fmt: skip
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["methods"] == ["degraded", "clahe", "unsharp", "pyfundus"] and summary["enhancer"]["trained"]
    assert {"illumination", "all three", "all degraded", "clean"} <= set(summary["table"])
    assert set(summary["pyfundus_beats_all_baselines"]["all degraded"]) == {"psnr", "ssim", "vessel_dice"}
    assert all((out / name).is_file() for name in ("report.json", "cases.csv", "table.md", "grid.png", "metrics.png", "fthnet.png"))


def test_an_output_fthnet_cannot_score_is_counted_not_averaged():
    from pyfundus.cleaq_eval import _enhancement_summary

    def row(family, method, score):
        return {"photo": "p", "family": family, "draw": 0, "method": method, "psnr": 20.0, "ssim": 0.9,
                "vessel_dice": 0.5, "fthnet": score}  # fmt: skip

    rows = [row("blur", "degraded", None), row("blur", "pyfundus", 60.0),
            row("spots", "degraded", 40.0), row("spots", "pyfundus", 50.0)]  # fmt: skip
    fthnet = _enhancement_summary(rows, ["degraded", "pyfundus"])["fthnet"]["degraded"]
    assert fthnet["n"] == 1 and fthnet["mean_change"] == 10.0 and fthnet["unscored_before"] == 1

"""Evaluation: predictions, exact metrics on a fake scorer, reports, and run_eval end to end."""

from __future__ import annotations

import csv
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import pytest
import skimage.data
from PIL import Image
from sklearn.metrics import cohen_kappa_score

import pyfundus.api
from pyfundus.data.datasets import QualityRecord, load_records, write_fqs_table
from pyfundus.evaluate import (
    Predictions,
    aggregate_rounds,
    predict_records,
    run_eval,
    summarise,
    write_report,
)
from pyfundus.grading import Thresholds
from pyfundus.verdicts import CLASSES

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@dataclass
class FakeResult:
    score: float | None
    quality_class: str | None
    error: str | None = None


@dataclass
class FakeScorer:
    """Scores looked up by path; a path mapped to None fails."""

    scores: dict[str, float | None]
    thresholds: Thresholds = Thresholds(reject_below=40.0, good_from=70.0)
    batches: list[int] = field(default_factory=list)

    def score(self, paths, *, batch_size=8, progress=None):
        results = []
        for start in range(0, len(paths), batch_size):
            chunk = paths[start : start + batch_size]
            for path in chunk:
                value = self.scores.get(Path(path).name)
                if value is None:
                    results.append(FakeResult(None, None, f"{path}: cannot read"))
                else:
                    results.append(FakeResult(value, self.thresholds.classify(value)))
            self.batches.append(len(chunk))
            if progress is not None:
                progress(len(chunk))
        return results


# name, MOS, true level, degradation, fake score (None: fails)
CASES = [
    ("a.png", 90.0, "Good", "none", 85.0),
    ("b.png", 60.0, "Usable", "blur", 65.0),
    ("c.png", 30.0, "Reject", "blur+spots", 45.0),
    ("d.png", 20.0, "Reject", "spots", 10.0),
    ("e.png", 75.0, "Good", "blur", None),
    ("f.png", None, "Usable", "", 50.0),
]


@pytest.fixture
def records(tmp_path) -> list[QualityRecord]:
    return [QualityRecord(tmp_path / name, mos, level, name[0], degradation=deg) for name, mos, level, deg, _ in CASES]


@pytest.fixture
def scorer() -> FakeScorer:
    return FakeScorer({name: score for name, *_, score in CASES})


@pytest.fixture
def predictions(scorer, records) -> Predictions:
    return predict_records(scorer, records, batch_size=4, progress=False)


def test_predict_records_keeps_failures_in_place(scorer, predictions, records):
    assert scorer.batches == [4, 2]
    assert predictions.paths == [str(r.path) for r in records]
    np.testing.assert_array_equal(predictions.scores, [85, 65, 45, 10, np.nan, 50])
    np.testing.assert_array_equal(predictions.targets, [90, 60, 30, 20, 75, np.nan])
    assert predictions.pred_levels == ["Good", "Usable", "Usable", "Reject", None, "Usable"]
    assert predictions.errors[4].endswith("e.png: cannot read")
    assert [e is None for e in predictions.errors] == [True] * 4 + [False, True]
    assert predictions.degradations[2] == "blur+spots" and predictions.sources[0] == "a"


def test_summary_has_the_exact_metrics(predictions):
    s = summarise(predictions)
    assert (s["n"], s["n_scored"], s["n_failed"], s["n_with_mos"], s["n_with_level"]) == (6, 5, 1, 4, 5)
    pred, target = np.array([85, 65, 45, 10.0]), np.array([90, 60, 30, 20.0])
    assert s["plcc"] == pytest.approx(np.corrcoef(pred, target)[0, 1], abs=1e-12)
    assert s["srcc"] == pytest.approx(1.0)  # same order
    assert s["rmse"] == pytest.approx(math.sqrt((25 + 25 + 225 + 100) / 4))
    assert s["accuracy"] == pytest.approx(4 / 5)
    true = ["Good", "Usable", "Reject", "Reject", "Usable"]
    pred_levels = ["Good", "Usable", "Usable", "Reject", "Usable"]
    assert s["qwk"] == pytest.approx(cohen_kappa_score(true, pred_levels, weights="quadratic", labels=list(CLASSES)))
    assert s["confusion"]["labels"] == list(CLASSES)
    assert s["confusion"]["matrix"] == [[1, 0, 0], [0, 2, 0], [0, 1, 1]]
    assert [f["path"].endswith("e.png") for f in s["failures"]] == [True]


def test_per_source_separates_ranking_from_the_clean_level(scorer, records):
    for record, source in zip(records, "xxyyxy"):  # two photos; e.png fails, f.png has no MOS
        record.source_id = source
    per = summarise(predict_records(scorer, records, batch_size=4, progress=False))["per_source"]
    assert sorted(per) == ["x", "y"]
    assert per["x"]["n"] == 2 and per["x"]["srcc"] == pytest.approx(1.0)
    assert per["x"]["mean_error"] == pytest.approx(0.0)  # (85 - 90 + 65 - 60) / 2
    assert per["x"]["clean_score"] == pytest.approx(85.0)  # a.png, its undegraded variant
    assert per["y"]["n"] == 2 and per["y"]["mean_error"] == pytest.approx(2.5)
    assert per["y"]["clean_score"] is None  # no undegraded variant of y was scored


def test_per_degradation_splits_combined_types(predictions):
    per = summarise(predictions)["per_degradation"]
    assert sorted(per) == ["blur", "none", "spots"]  # "" (no record) is not a type; e.png failed
    blur, spots, none = per["blur"], per["spots"], per["none"]
    assert blur["n"] == 2 and spots["n"] == 2 and none["n"] == 1
    assert blur["rmse"] == pytest.approx(math.sqrt((25 + 225) / 2))
    assert blur["mean_error"] == pytest.approx(10.0)
    assert spots["mean_error"] == pytest.approx(2.5)
    assert blur["srcc"] == pytest.approx(1.0) and spots["plcc"] == pytest.approx(1.0)
    assert none["rmse"] == pytest.approx(5.0) and none["mean_error"] == pytest.approx(-5.0)
    assert math.isnan(none["srcc"]) and math.isnan(none["plcc"])  # one image: undefined, not 0


def test_aggregate_rounds_mean_and_std():
    rounds = [
        {
            "n": 10, "srcc": 0.9, "qwk": float("nan"),
            "per_degradation": {"blur": {"n": 4, "srcc": 0.5}, "noise": {"n": 1, "srcc": 1.0}},
        },
        {"n": 12, "srcc": 0.8, "qwk": 0.6, "per_degradation": {"blur": {"n": 6, "srcc": 0.7}}},
    ]
    agg = aggregate_rounds(rounds)
    assert agg["rounds"] == 2
    assert agg["metrics"]["srcc"]["mean"] == pytest.approx(0.85)
    assert agg["metrics"]["srcc"]["std"] == pytest.approx(math.sqrt(0.005))  # sample std
    assert agg["metrics"]["n"]["mean"] == 11
    assert agg["metrics"]["qwk"]["mean"] == 0.6 and agg["metrics"]["qwk"]["n_rounds"] == 1
    assert math.isnan(agg["metrics"]["qwk"]["std"])
    assert "plcc" not in agg["metrics"]  # absent from the rounds
    assert list(agg["per_degradation"]) == ["blur"]  # noise is missing from round 2
    assert agg["per_degradation"]["blur"]["srcc"]["mean"] == pytest.approx(0.6)


def strict_json(path: Path) -> dict:
    def refuse(constant):
        raise ValueError(f"non-standard JSON constant {constant}")

    return json.loads(path.read_text(), parse_constant=refuse)


def test_write_report_writes_valid_json_csv_and_pngs(predictions, tmp_path):
    summary = summarise(predictions)
    written = write_report(summary, tmp_path / "out", predictions, title="fake on cases")
    names = sorted(p.name for p in written)
    assert names == ["confusion.png", "predictions.csv", "report.json", "scatter.png"]
    report = strict_json(tmp_path / "out" / "report.json")
    assert report["title"] == "fake on cases" and report["n_failed"] == 1
    assert report["per_degradation"]["none"]["srcc"] is None  # nan -> null
    for name in ("scatter.png", "confusion.png"):
        path = tmp_path / "out" / name
        assert path.read_bytes()[:8] == PNG_MAGIC
        with Image.open(path) as image:
            assert image.size[0] > 300 and image.size[1] > 300
    with open(tmp_path / "out" / "predictions.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 6 and rows[4]["score"] == "" and rows[4]["error"]


def test_write_report_without_mos_skips_the_scatter(scorer, tmp_path):
    records = [QualityRecord(tmp_path / n, None, lv, n) for n, _, lv, *_ in CASES]
    predictions = predict_records(scorer, records, progress=False)
    written = write_report(summarise(predictions), tmp_path / "out", predictions, title="classes only")
    assert "scatter.png" not in {p.name for p in written}
    assert (tmp_path / "out" / "confusion.png").exists()


def test_write_report_names_the_missing_package(predictions, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # import fails
    with pytest.raises(ImportError, match="pip install matplotlib"):
        write_report(summarise(predictions), tmp_path, predictions, title="x")


# --- loading and run_eval ------------------------------------------------------------------


def write_dataset(folder: Path, sources: int = 4, size: int = 256) -> list[QualityRecord]:
    """An FQS-layout folder: the retina rotated (sources) and blurred (MOS falls with blur)."""
    base = cv2.resize(skimage.data.retina(), (size, size), interpolation=cv2.INTER_AREA)
    images = folder / "images"
    images.mkdir(parents=True)
    thresholds = Thresholds(reject_below=40.0, good_from=70.0)
    records = []
    for source in range(sources):
        photo = np.rot90(base, source).copy()
        for severity in (0.0, 0.25, 0.5, 0.75, 1.0):
            image = cv2.GaussianBlur(photo, (0, 0), 4 * severity) if severity else photo
            path = images / f"s{source}_{severity:.2f}.png"
            cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
            mos = 95.0 * (1 - 0.8 * severity)
            records.append(QualityRecord(path, mos, thresholds.classify(mos), f"s{source}", degradation="blur"))
    write_fqs_table(records, folder / "labels.csv", images)
    return records


def test_load_records_picks_the_loader_by_columns(tmp_path):
    written = write_dataset(tmp_path / "fqs", sources=1)
    loaded = load_records(tmp_path / "fqs")
    assert [r.level for r in loaded] == [r.level for r in written]  # our tables: levels in CLASSES order
    assert [r.path for r in loaded] == [r.path for r in written]
    eyeq = tmp_path / "eyeq.csv"
    eyeq.write_text(",image,quality,DR_grade\n0,10_left.jpeg,2,0\n")
    (record,) = load_records(eyeq, image_dir=tmp_path / "imgs")
    assert record.level == "Reject" and record.mos is None and record.path == tmp_path / "imgs" / "10_left.jpeg"
    generic = tmp_path / "mine.csv"
    generic.write_text("path,score,class\nx.png,55,Usable\n")
    (record,) = load_records(generic)
    assert record.mos == 55 and record.path == tmp_path / "x.png"
    original_fqs = tmp_path / "fqs_original.csv"
    original_fqs.write_text("file_name,qualityLevel,meanOpinionScore\n1.jpg,2,81\n")
    (record,) = load_records(original_fqs)
    assert record.level is None  # FQS does not document its level coding


def test_run_eval_brisque_over_kfold_rounds(tmp_path):
    write_dataset(tmp_path / "data")
    out = tmp_path / "eval"
    result = run_eval(
        "brisque", tmp_path / "data", split="test", protocol="kfold", rounds=2, out_dir=out, workers=1, progress=False
    )
    assert result["rounds"] == 2 and result["config"]["protocol"] == "kfold"
    assert result["metrics"]["n"]["values"] == [5, 5]  # one source of four per fold
    assert result["metrics"]["n_failed"]["mean"] == 0
    assert result["metrics"]["srcc"]["mean"] > 0.8
    assert strict_json(out / "aggregate.json")["rounds"] == 2
    for r in range(2):
        round_dir = out / f"round_{r:02d}"
        assert {"report.json", "scatter.png", "confusion.png", "predictions.csv", "brisque.json"} <= {
            p.name for p in round_dir.iterdir()
        }
    # The saved baseline re-runs without refitting, here on every image.
    saved = str(out / "round_00" / "brisque.json")
    again = run_eval(saved, tmp_path / "data", split=None, out_dir=tmp_path / "again", progress=False)
    assert again["metrics"]["n"]["mean"] == 20 and (tmp_path / "again" / "report.json").exists()


def test_run_eval_loads_other_models_through_load_model(tmp_path, monkeypatch):
    records = write_dataset(tmp_path / "data", sources=1)
    asked = {}

    def fake_load_model(name, device="cpu"):
        asked.update(name=name, device=device)
        return FakeScorer({Path(r.path).name: r.mos for r in records})  # a perfect scorer

    monkeypatch.setattr(pyfundus.api, "load_model", fake_load_model)
    result = run_eval(
        "fthnet_s", tmp_path / "data", split=None, out_dir=tmp_path / "out", device="cuda:1", progress=False
    )
    assert asked == {"name": "fthnet_s", "device": "cuda:1"}
    assert result["metrics"]["srcc"]["mean"] == pytest.approx(1.0)
    assert result["metrics"]["rmse"]["mean"] == pytest.approx(0.0)


def test_run_eval_refuses_what_it_cannot_do(tmp_path):
    write_dataset(tmp_path / "data", sources=1)
    with pytest.raises(ValueError, match="fitted"):
        run_eval("brisque", tmp_path / "data", split=None, out_dir=tmp_path / "o")
    model = tmp_path / "model.joblib"
    model.write_bytes(b"\x80\x04")
    with pytest.raises(ValueError, match="pickle"):
        run_eval(str(model), tmp_path / "data", split=None, out_dir=tmp_path / "o")
    with pytest.raises(ValueError, match="split"):
        run_eval("brisque", tmp_path / "data", split="holdout", out_dir=tmp_path / "o")

"""Score and class metrics against scipy / scikit-learn, and threshold calibration."""

from __future__ import annotations

import time
import warnings

import numpy as np
import pytest
from scipy import stats
from sklearn import metrics as sklearn_metrics

from pyfundus.grading import Thresholds
from pyfundus.metrics import (
    accuracy,
    calibrate_thresholds,
    confusion_matrix,
    plcc,
    quadratic_weighted_kappa,
    rmse,
    srcc,
)
from pyfundus.verdicts import CLASSES


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


@pytest.mark.parametrize("n", [2, 3, 10, 500])
def test_correlations_match_scipy(rng, n):
    target = rng.uniform(0, 100, n)
    pred = 0.7 * target + rng.normal(0, 15, n)
    assert plcc(pred, target) == pytest.approx(stats.pearsonr(pred, target)[0], abs=1e-12)
    assert srcc(pred, target) == pytest.approx(stats.spearmanr(pred, target)[0], abs=1e-12)


def test_srcc_uses_average_ranks_for_ties(rng):
    target = rng.integers(0, 5, 200).astype(float)  # MOS on a coarse scale: many ties
    pred = target + rng.integers(0, 3, 200)
    assert srcc(pred, target) == pytest.approx(stats.spearmanr(pred, target)[0], abs=1e-12)


def test_rmse_and_accuracy_by_hand():
    assert rmse([1, 2, 3], [1, 2, 7]) == pytest.approx(np.sqrt(16 / 3))
    assert accuracy(["Good", "Usable", "Reject", "Good"], ["Good", "Reject", "Reject", "Usable"]) == 0.5


@pytest.mark.parametrize(
    "pred, target",
    [([5, 5, 5], [1, 2, 3]), ([1, 2, 3], [4, 4, 4]), ([1], [2]), ([], [])],
)
def test_undefined_correlations_are_nan_without_warnings(pred, target):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert np.isnan(plcc(pred, target))
        assert np.isnan(srcc(pred, target))


def test_empty_inputs_give_nan_without_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert np.isnan(rmse([], []))
        assert np.isnan(accuracy([], []))
        assert np.isnan(quadratic_weighted_kappa([], []))


def test_length_mismatch_and_unknown_labels_raise():
    with pytest.raises(ValueError, match="length"):
        plcc([1, 2, 3], [1, 2])
    with pytest.raises(ValueError, match="Excellent"):
        accuracy(["Excellent"], ["Good"])


@pytest.mark.parametrize("seed", range(5))
def test_qwk_matches_sklearn(seed):
    rng = np.random.default_rng(seed)
    true = rng.choice(CLASSES, 80)
    # Mostly right, sometimes one class off, rarely two: the ordinal case QWK is for.
    shift = rng.choice([0, 0, 0, 1, -1, 2], 80)
    pred = [CLASSES[int(np.clip(CLASSES.index(t) + s, 0, 2))] for t, s in zip(true, shift)]
    expected = sklearn_metrics.cohen_kappa_score(true, pred, weights="quadratic", labels=list(CLASSES))
    assert quadratic_weighted_kappa(pred, true) == pytest.approx(expected, abs=1e-12)


def test_qwk_with_a_class_missing_matches_sklearn():
    true = ["Good", "Good", "Usable", "Usable", "Good"]
    pred = ["Good", "Usable", "Usable", "Good", "Good"]
    expected = sklearn_metrics.cohen_kappa_score(true, pred, weights="quadratic", labels=list(CLASSES))
    assert quadratic_weighted_kappa(pred, true) == pytest.approx(expected, abs=1e-12)


def test_qwk_order_is_ordinal_not_alphabetical():
    # Good <-> Reject is the worst confusion; alphabetical order would put Usable at the end.
    true = ["Good", "Usable", "Reject"] * 3
    far = ["Reject", "Usable", "Good"] * 3
    near = ["Usable", "Usable", "Usable"] * 3
    assert quadratic_weighted_kappa(far, true) < quadratic_weighted_kappa(near, true)
    assert quadratic_weighted_kappa(true, true) == 1.0


def test_qwk_is_nan_when_undefined():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert np.isnan(quadratic_weighted_kappa(["Good"] * 4, ["Good"] * 4))


def test_confusion_matrix_rows_true_columns_predicted():
    matrix = confusion_matrix(["Good", "Reject", "Reject"], ["Good", "Usable", "Reject"])
    assert matrix.tolist() == [[1, 0, 0], [0, 0, 1], [0, 0, 1]]
    expected = sklearn_metrics.confusion_matrix(
        ["Good", "Usable", "Reject"], ["Good", "Reject", "Reject"], labels=list(CLASSES)
    )
    assert (matrix == expected).all()


def test_calibration_recovers_known_thresholds(rng):
    scores = rng.uniform(0, 100, 5000)
    truth = Thresholds(reject_below=35.0, good_from=75.0)
    levels = [truth.classify(s) for s in scores]
    found = calibrate_thresholds(scores, levels, grid_step=0.5)
    assert found.calibrated
    assert found.reject_below == pytest.approx(35.0, abs=0.5)
    assert found.good_from == pytest.approx(75.0, abs=0.5)


def test_calibration_with_label_noise_stays_close(rng):
    true_scores = rng.uniform(0, 100, 4000)
    truth = Thresholds(reject_below=45.0, good_from=65.0)
    levels = [truth.classify(s) for s in true_scores]
    scores = true_scores + rng.normal(0, 5, true_scores.size)  # a predictor with 5-point error
    found = calibrate_thresholds(scores, levels)
    assert abs(found.reject_below - 45.0) <= 2.0
    assert abs(found.good_from - 65.0) <= 2.0
    predicted = [found.classify(s) for s in scores]
    assert quadratic_weighted_kappa(predicted, levels) >= quadratic_weighted_kappa(
        [Thresholds(40.0, 70.0).classify(s) for s in scores], levels
    )


def test_calibration_puts_thresholds_mid_gap():
    # Classes separated by wide gaps: any threshold in a gap is perfect; the middle is chosen.
    scores = [10, 15, 20, 40, 45, 50, 80, 85, 90]
    levels = ["Reject"] * 3 + ["Usable"] * 3 + ["Good"] * 3
    found = calibrate_thresholds(scores, levels, grid_step=1.0)
    assert found.reject_below == pytest.approx(30.0, abs=1.0)
    assert found.good_from == pytest.approx(65.0, abs=1.0)
    assert [found.classify(s) for s in scores] == levels


def test_calibration_ignores_missing_levels_and_scores():
    scores = [10.0, np.nan, 50.0, 90.0, 30.0]
    levels = ["Reject", "Good", "Usable", "Good", None]
    found = calibrate_thresholds(scores, levels, grid_step=1.0)
    assert [found.classify(s) for s in (10.0, 50.0, 90.0)] == ["Reject", "Usable", "Good"]


def test_calibration_rejects_unusable_input():
    with pytest.raises(ValueError, match="no image"):
        calibrate_thresholds([np.nan], ["Good"])
    with pytest.raises(ValueError, match="grid_step"):
        calibrate_thresholds([1.0], ["Good"], grid_step=0)


def test_calibration_is_fast_on_a_fine_grid(rng):
    scores = rng.uniform(0, 100, 10_000)
    levels = list(rng.choice(CLASSES, 10_000))
    started = time.perf_counter()
    calibrate_thresholds(scores, levels, grid_step=0.5)  # 201 x 201 pairs
    assert time.perf_counter() - started < 2.0

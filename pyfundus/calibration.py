"""Site calibration: thresholds fitted to one site's own graded captures.

A model's stored thresholds were chosen on its validation data. A camera it has
never seen can place its clean captures lower or higher (MODEL_CARD.md shows
how far), so a site scores captures its graders have sorted into Good, Usable
and Reject folders and takes the thresholds that best reproduce those grades,
with the same objective as training (:func:`pyfundus.metrics.calibrate_thresholds`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from .errors import NothingToScore
from .grading import Thresholds
from .metrics import accuracy, calibrate_thresholds, quadratic_weighted_kappa
from .verdicts import CLASSES

FEW_PER_CLASS = 10  # below this many images a class's threshold rests on a handful of captures


def calibrate_site(
    model: Any,
    graded: Mapping[str, Sequence[str | Path]],
    *,
    batch_size: int = 8,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Score each grader-sorted capture with ``model`` and fit thresholds to the grades.

    ``graded`` maps a class ("Good", "Usable", "Reject") to its captures; at least two
    classes are needed. Returns the suggested and current thresholds, how well each
    reproduces the grades, per-class score ranges, and the captures that could not be scored.
    """
    unknown = set(graded) - set(CLASSES)
    if unknown:
        raise ValueError(f"unknown class(es) {sorted(unknown)}; use {', '.join(CLASSES)}")
    paths = [str(path) for level in CLASSES for path in graded.get(level, [])]
    levels = [level for level in CLASSES for _ in graded.get(level, [])]
    if len(set(levels)) < 2:
        raise ValueError("site calibration needs captures of at least two classes (e.g. --good and --reject)")
    results = model.score(paths, batch_size=batch_size, progress=progress)
    scored = [(r.score, level) for r, level in zip(results, levels) if r.score is not None]
    if len({level for _, level in scored}) < 2:
        raise NothingToScore("fewer than two classes have a capture that could be scored")
    scores = np.array([score for score, _ in scored])
    true = [level for _, level in scored]
    current = model.thresholds
    suggested = calibrate_thresholds(scores, true)
    suggested = Thresholds(suggested.reject_below, suggested.good_from, current.temperature, calibrated=True)
    return {
        "model": model.name,
        "n_scored": len(scored),
        "per_class": {
            level: _score_range(scores[[t == level for t in true]]) for level in CLASSES if level in true
        },
        "current": _fit(current, scores, true),
        "suggested": _fit(suggested, scores, true),
        "few_images": sorted(level for level in set(true) if true.count(level) < FEW_PER_CLASS),
        "failures": [{"path": r.path, "error": r.error} for r in results if r.score is None],
    }


def _fit(thresholds: Thresholds, scores: np.ndarray, true: list[str]) -> dict[str, Any]:
    predicted = [thresholds.classify(float(s)) for s in scores]
    return {
        "reject_below": thresholds.reject_below,
        "good_from": thresholds.good_from,
        "accuracy": accuracy(predicted, true),
        "qwk": quadratic_weighted_kappa(predicted, true),
    }


def _score_range(scores: np.ndarray) -> dict[str, float]:
    return {"n": int(scores.size), "min": float(scores.min()), "median": float(np.median(scores)),
            "max": float(scores.max())}  # fmt: skip

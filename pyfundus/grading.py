"""From a 0-100 score to Good / Usable / Reject.

One rule decides the class: calibrated score thresholds (an operator can read
and move them). The probabilities come from the same score, so they never
contradict the class: they say how likely each class would be if the score
were off by typical rater disagreement, modelled as logistic noise of scale
``temperature`` score points (FQS raters' per-image SD has median 4.3).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Thresholds:
    reject_below: float = 40.0
    good_from: float = 70.0
    temperature: float = 4.3
    calibrated: bool = False  # True once fitted on labelled validation data

    def __post_init__(self):
        if not 0 <= self.reject_below < self.good_from <= 100:
            raise ValueError(
                f"thresholds must satisfy 0 <= reject_below < good_from <= 100, "
                f"got reject_below={self.reject_below}, good_from={self.good_from}"
            )
        if self.temperature <= 0:
            raise ValueError(f"temperature must be positive, got {self.temperature}")

    def classify(self, score: float) -> str:
        if score >= self.good_from:
            return "Good"
        if score < self.reject_below:
            return "Reject"
        return "Usable"

    def probabilities(self, score: float) -> dict[str, float]:
        p_reject = _sigmoid((self.reject_below - score) / self.temperature)
        p_good = _sigmoid((score - self.good_from) / self.temperature)
        p_usable = max(0.0, 1.0 - p_reject - p_good)
        total = p_reject + p_good + p_usable
        return {"Good": p_good / total, "Usable": p_usable / total, "Reject": p_reject / total}

    def moved(self, reject_below: float | None = None, good_from: float | None = None) -> "Thresholds":
        """These thresholds with either boundary set by hand (no longer calibrated if one changed)."""
        if reject_below is None and good_from is None:
            return self
        return Thresholds(
            reject_below=self.reject_below if reject_below is None else float(reject_below),
            good_from=self.good_from if good_from is None else float(good_from),
            temperature=self.temperature,
            calibrated=False,
        )

    def describe(self) -> str:
        """"Reject below 43, Good from 62 (calibrated)": for start-up lines, summaries and --help."""
        state = "calibrated" if self.calibrated else "not calibrated"
        return f"Reject below {self.reject_below:g}, Good from {self.good_from:g} ({state})"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "Thresholds":
        return cls(**{k: data[k] for k in ("reject_below", "good_from", "temperature", "calibrated") if k in data})


def _sigmoid(x: float) -> float:
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)

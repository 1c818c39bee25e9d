"""The order each rater sees the images in: a per-rater shuffle, or the current model's most uncertain first.

Random: each rater gets their own stable shuffle (a hash of their name and the
image's content), so neighbouring images do not anchor every rater the same
way, and the order survives restarts and new images.

Uncertain first (active learning): the images whose class the model is least
sure of come first, i.e. those with the most probability mass off the model's
top class; that mass is largest near the Reject/Usable and Usable/Good
thresholds, where a rater's opinion moves the calibration most. The order
shows nothing of a score, only where the model hesitates.
"""

from __future__ import annotations

import hashlib
from typing import Any, Callable, Sequence

from .store import Image, Store

ORDERS = ("random", "uncertain")


def rater_order(images: Sequence[Image], rater: str, mode: str) -> list[Image]:
    """``images`` in the order ``rater`` rates them (``mode``: "random" or "uncertain")."""
    shuffled = sorted(images, key=lambda image: hashlib.sha256(f"{rater}\0{image.sha256}".encode()).digest())
    if mode == "random":
        return shuffled
    if mode == "uncertain":
        # Images no model has scored yet go last, in the rater's shuffle (the sort is stable).
        return sorted(shuffled, key=lambda image: -uncertainty(image.model_probabilities))
    raise ValueError(f"order must be 'random' or 'uncertain', not {mode!r}")


def uncertainty(probabilities: dict[str, float] | None) -> float:
    """Probability mass off the most likely class (0: certain; 2/3 at most); -1 when nothing is known."""
    return 1.0 - max(probabilities.values()) if probabilities else -1.0


def score_unscored(store: Store, model: Any, *, batch_size: int = 8,
                   progress: Callable[[int], None] | None = None) -> tuple[int, list[str]]:  # fmt: skip
    """Score with ``model`` every image in the rating set that ``model`` has not scored; (scored, failures)."""
    todo = [image for image in store.rating_set() if image.model != model.name or image.model_probabilities is None]
    if not todo:
        return 0, []
    results = model.score([str(store.dataset / image.path) for image in todo], batch_size=batch_size, progress=progress)
    scored = [(image.id, r.score, r.quality_class, r.probabilities) for image, r in zip(todo, results) if r.ok]
    store.set_model_scores(model.name, scored)
    return len(scored), [r.error for r in results if not r.ok]

"""Agreement metrics for quality scores and classes, and threshold calibration.

Conventions:

* Score metrics (PLCC, SRCC, RMSE) take two equal-length sequences of numbers.
  Correlations are undefined when either side is constant or there are fewer
  than two values: they return ``nan`` then, silently (no RuntimeWarning), so
  a per-degradation breakdown with a one-image group does not spam the log.
  Callers must treat ``nan`` as "not measurable", never as 0.
* Class metrics take class names from ``pyfundus.verdicts.CLASSES``, whose
  order (Good, Usable, Reject) is the ordinal order quadratic weights use.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .grading import Thresholds
from .verdicts import CLASSES

__all__ = [
    "accuracy",
    "calibrate_thresholds",
    "confusion_matrix",
    "dice",
    "plcc",
    "psnr",
    "quadratic_weighted_kappa",
    "rmse",
    "srcc",
    "ssim",
]

# Two objective values closer than this are a tie (float noise, not a real difference).
_TIE = 1e-12


def plcc(pred: Sequence[float], target: Sequence[float]) -> float:
    """Pearson linear correlation; nan when either side is constant or n < 2."""
    x, y = _paired(pred, target)
    return _pearson(x, y)


def srcc(pred: Sequence[float], target: Sequence[float]) -> float:
    """Spearman rank correlation (average ranks for ties); nan when either side is constant or n < 2."""
    x, y = _paired(pred, target)
    return _pearson(_average_ranks(x), _average_ranks(y))


def rmse(pred: Sequence[float], target: Sequence[float]) -> float:
    """Root mean squared error; nan for empty input."""
    x, y = _paired(pred, target)
    return float(np.sqrt(np.mean((x - y) ** 2))) if x.size else float("nan")


def accuracy(pred_labels: Sequence[str], true_labels: Sequence[str]) -> float:
    """Share of exact class matches; nan for empty input."""
    pred, true = _label_arrays(pred_labels, true_labels, CLASSES)
    return float(np.mean(pred == true)) if pred.size else float("nan")


def confusion_matrix(
    pred_labels: Sequence[str], true_labels: Sequence[str], labels: Sequence[str] = CLASSES
) -> np.ndarray:
    """Counts, rows = true class, columns = predicted class, both in ``labels`` order."""
    pred, true = _label_arrays(pred_labels, true_labels, labels)
    k = len(labels)
    return np.bincount(true * k + pred, minlength=k * k).reshape(k, k)


def quadratic_weighted_kappa(
    pred_labels: Sequence[str], true_labels: Sequence[str], labels: Sequence[str] = CLASSES
) -> float:
    """Cohen's kappa with quadratic weights over the ordinal ``labels``.

    Equals scikit-learn's ``cohen_kappa_score(..., weights="quadratic", labels=labels)``.
    nan when chance disagreement is zero (e.g. every true and predicted label the same).
    """
    counts = confusion_matrix(pred_labels, true_labels, labels)
    return float(_qwk(counts[None], _quadratic_weights(len(labels)))[0])


def psnr(image: np.ndarray, reference: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Peak signal-to-noise ratio in dB of two uint8 (or [0, 1] float) RGB images, over ``mask``'s pixels only.

    Restricted to the field of view, as enhancement papers report it: the black surround would otherwise
    count as perfectly restored. inf for identical images.
    """
    x, y = _unit(image), _unit(reference)
    diff = (x - y)[mask] if mask is not None else (x - y)
    mse = float(np.mean(diff.astype(np.float64) ** 2))
    return float("inf") if mse == 0 else float(10.0 * np.log10(1.0 / mse))


def ssim(image: np.ndarray, reference: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Structural similarity (Wang et al., IEEE TIP 2004) of two RGB images, averaged over ``mask``'s pixels.

    The paper's form: an 11x11 Gaussian window of sigma 1.5, K1 0.01, K2 0.03, data range 1, computed per
    channel and averaged (scikit-image's ``structural_similarity(..., gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False, data_range=1)``, whose mean this equals without a mask).
    """
    import cv2

    x, y = _unit(image).astype(np.float64), _unit(reference).astype(np.float64)
    c1, c2 = 0.01**2, 0.03**2

    def blur(a: np.ndarray) -> np.ndarray:
        return cv2.GaussianBlur(a, (11, 11), 1.5, borderType=cv2.BORDER_REFLECT)

    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx**2, blur(y * y) - my**2, blur(x * y) - mx * my
    index = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    index = index.mean(axis=-1) if index.ndim == 3 else index
    # Away from the border by the window's half-width, as scikit-image crops before averaging.
    valid = np.zeros(index.shape, bool)
    valid[5:-5, 5:-5] = True
    if mask is not None:
        valid &= mask
    return float(index[valid].mean())


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice overlap of two boolean masks: 2|A and B| / (|A| + |B|); 1 when both are empty."""
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    total = int(a.sum() + b.sum())
    return 1.0 if total == 0 else float(2.0 * np.logical_and(a, b).sum() / total)


def _unit(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    return image.astype(np.float32) / 255.0 if image.dtype == np.uint8 else image.astype(np.float32)


def calibrate_thresholds(
    scores: Sequence[float], true_levels: Sequence[str | None], *, grid_step: float = 0.5
) -> Thresholds:
    """Thresholds (reject_below < good_from, on a ``grid_step`` grid over 0-100) that best reproduce the levels.

    Objective, in order: quadratic-weighted kappa of ``Thresholds.classify``,
    then accuracy, then distance from the edges of the optimal plateau (the
    thresholds sit in the middle of the score gap between classes, not at its
    edge, so they do not hinge on the one validation image nearest them).
    Pairs with a missing level or a non-finite score are ignored.

    Every threshold pair is scored at once from per-class cumulative counts:
    a 201 x 201 grid over 10k images takes milliseconds.
    """
    if grid_step <= 0:
        raise ValueError(f"grid_step must be positive, got {grid_step}")
    score_arr, true = _calibration_data(scores, true_levels)
    grid = np.round(np.arange(0.0, 100.0 + grid_step / 2, grid_step), 10)
    counts = _confusion_grid(score_arr, true, grid)  # (G, G, 3, 3), [reject_below, good_from, true, pred]
    n = len(true)
    kappa = np.nan_to_num(_qwk(counts.reshape(-1, 3, 3), _quadratic_weights(3)), nan=-np.inf)
    acc = np.trace(counts, axis1=2, axis2=3).reshape(-1) / n
    valid = (grid[:, None] < grid[None, :]).reshape(-1)
    kappa[~valid] = -np.inf
    best = valid & (kappa >= kappa.max() - _TIE)
    best &= acc >= acc[best].max() - _TIE
    i, j = _plateau_centre(best.reshape(len(grid), len(grid)))
    return Thresholds(reject_below=float(grid[i]), good_from=float(grid[j]), calibrated=True)


# --- helpers -------------------------------------------------------------------


def _paired(pred: Sequence[float], target: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(pred, dtype=np.float64).reshape(-1)
    y = np.asarray(target, dtype=np.float64).reshape(-1)
    if x.shape != y.shape:
        raise ValueError(f"pred and target differ in length: {x.size} vs {y.size}")
    return x, y


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    if x.size < 2:
        return float("nan")
    dx, dy = x - x.mean(), y - y.mean()
    denominator = np.sqrt((dx @ dx) * (dy @ dy))
    if not denominator > 0:  # also catches nan inputs
        return float("nan")
    return float(np.clip((dx @ dy) / denominator, -1.0, 1.0))


def _average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks, ties sharing their mean rank (scipy.stats.rankdata's default, without importing scipy.stats)."""
    order = np.argsort(x, kind="stable")
    ordered = x[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]]) if x.size else np.zeros(0, np.int64)
    sizes = np.diff(np.r_[starts, x.size])
    ranks = np.empty(x.size)
    ranks[order] = np.repeat(starts + (sizes + 1) / 2, sizes)
    return ranks


def _label_arrays(
    pred_labels: Sequence[str], true_labels: Sequence[str], labels: Sequence[str]
) -> tuple[np.ndarray, np.ndarray]:
    if len(pred_labels) != len(true_labels):
        raise ValueError(f"pred and true labels differ in length: {len(pred_labels)} vs {len(true_labels)}")
    return _indices(pred_labels, labels), _indices(true_labels, labels)


def _indices(values: Sequence[str], labels: Sequence[str]) -> np.ndarray:
    index = {label: i for i, label in enumerate(labels)}
    unknown = sorted({str(v) for v in values if v not in index})
    if unknown:
        raise ValueError(f"unknown class label(s) {', '.join(unknown)}; expected one of {', '.join(labels)}")
    return np.fromiter((index[v] for v in values), dtype=np.int64, count=len(values))


def _quadratic_weights(k: int) -> np.ndarray:
    i = np.arange(k)
    return (i[:, None] - i[None, :]) ** 2 / max(1, (k - 1) ** 2)


def _qwk(counts: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Kappa of each (.., K, K) confusion matrix (rows true, columns predicted)."""
    counts = counts.astype(np.float64)
    n = counts.sum(axis=(-2, -1))
    expected = counts.sum(axis=-1)[..., :, None] * counts.sum(axis=-2)[..., None, :]
    observed = np.einsum("...ij,ij->...", counts, weights)
    chance = np.einsum("...ij,ij->...", expected, weights)
    with np.errstate(divide="ignore", invalid="ignore"):
        return 1.0 - observed * n / chance


def _calibration_data(scores: Sequence[float], true_levels: Sequence[str | None]) -> tuple[np.ndarray, np.ndarray]:
    score_arr = np.asarray(scores, dtype=np.float64).reshape(-1)
    if score_arr.size != len(true_levels):
        raise ValueError(f"scores and levels differ in length: {score_arr.size} vs {len(true_levels)}")
    keep = np.isfinite(score_arr) & np.array([level is not None for level in true_levels], dtype=bool)
    if not keep.any():
        raise ValueError("no image with both a finite score and a level to calibrate thresholds on")
    true = _indices([level for level, k in zip(true_levels, keep) if k], CLASSES)
    return score_arr[keep], true


def _confusion_grid(scores: np.ndarray, true: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """Confusion counts for every (reject_below, good_from) pair of grid values.

    Thresholds.classify: Reject below ``reject_below``, Good from ``good_from``:
    for true class c the Reject count depends only on reject_below and the Good
    count only on good_from, both read off a per-class count of scores below each
    grid value.
    """
    good, usable, reject = (CLASSES.index(name) for name in ("Good", "Usable", "Reject"))
    below = np.stack([np.searchsorted(np.sort(scores[true == c]), grid, side="left") for c in range(3)])
    total = np.bincount(true, minlength=3)
    g = len(grid)
    counts = np.empty((g, g, 3, 3), dtype=np.int64)
    for c in range(3):
        counts[:, :, c, reject] = below[c][:, None]
        counts[:, :, c, good] = (total[c] - below[c])[None, :]
        counts[:, :, c, usable] = total[c] - counts[:, :, c, reject] - counts[:, :, c, good]
    return counts


def _plateau_centre(best: np.ndarray) -> tuple[int, int]:
    """The cell of ``best`` farthest, along each axis, from the edges of its optimal run.

    For a rectangular plateau this is its centre; the margin along each axis is
    min(cells to the left edge, cells to the right edge) of the run it lies in.
    """
    margin = _run_margin(best, axis=0) + _run_margin(best, axis=1)
    margin[~best] = -1
    i, j = np.unravel_index(int(np.argmax(margin)), best.shape)
    return int(i), int(j)


def _run_margin(mask: np.ndarray, axis: int) -> np.ndarray:
    """For each True cell, min(distance to the previous False, distance to the next False) along ``axis``."""
    m = np.moveaxis(mask, axis, -1)
    n = m.shape[-1]
    position = np.arange(n)
    last_false = np.maximum.accumulate(np.where(m, -1, position), axis=-1)
    next_false = np.flip(np.minimum.accumulate(np.flip(np.where(m, n, position), axis=-1), axis=-1), axis=-1)
    margin = np.minimum(position - last_false, next_false - position)
    return np.moveaxis(margin, -1, axis)

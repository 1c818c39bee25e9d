"""BRISQUE baseline: natural-scene statistics features inside the fundus, and an RBF SVR on MOS.

Features (Mittal, Moorthy and Bovik, "No-Reference Image Quality Assessment in
the Spatial Domain", IEEE TIP 2012): mean-subtracted contrast-normalised
(MSCN) luminance; a generalised Gaussian (GGD) fit of the MSCN coefficients
(shape, variance) and asymmetric GGD (AGGD) fits of the four neighbour
products H, V, D1, D2 (shape, mean, left variance, right variance): 18
features per scale, at full and half resolution: 36.

Fundus adaptation: the photo is cropped to its field of view (FOV) and resized
to ``FEATURE_SIZE``. The local mean and variance are computed by normalised
convolution over the FOV only and every statistic is taken over pixels inside
it, because the black surround would otherwise dominate every fit (it is a
third of the crop, perfectly flat, and its edge is the strongest structure).

Saved models are JSON (support vectors, dual coefficients, intercept, gamma,
scaler): loading never unpickles, so a model file from anywhere is safe to load,
and prediction is plain numpy (scikit-learn is needed only to fit).
"""

from __future__ import annotations

import json
import logging
import math
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import cv2
import numpy as np

from ..grading import Thresholds
from ..io import FundusImage, ImageReadError, read_image, source_name
from ..metrics import calibrate_thresholds, plcc, rmse, srcc
from ..preprocess import FieldOfView, NoFundusError, crop_to_field_of_view, find_field_of_view
from ..verdicts import ScoreResult
from .registry import register_model

__all__ = ["FEATURE_SIZE", "N_FEATURES", "BrisqueSVR", "brisque_features", "mscn"]

log = logging.getLogger(__name__)

FEATURE_SIZE = 384  # side of the FOV crop the features are computed on
N_FEATURES = 36
FORMAT = "pyfundus-brisque"
FORMAT_VERSION = 1
MODEL_NAME = "brisque"

# Statistics exclude the outer rim of the FOV: it is vignetted, and the resize
# blends it with the black surround.
_MASK_FRACTION = 0.94
_WINDOW = 7  # Gaussian window of the local mean/variance, as in the paper
_WINDOW_SIGMA = 7 / 6
_MSCN_C = 1.0  # stabiliser of the MSCN division, for 0-255 luminance as in the paper
_MIN_WEIGHT = 1e-6
# Model selection grid (features are standardised, so gamma ~ 1/36 is the neutral choice).
_C_GRID = (1.0, 10.0, 100.0)
_GAMMA_GRID = (0.01, 0.03, 0.1)
_DEFAULT_C, _DEFAULT_GAMMA = 10.0, 0.03
# SVR tube half-width in MOS points: well below rater disagreement (median SD 4.3),
# so it ignores only label noise, not quality differences.
_EPSILON = 1.0
_MAX_FOLDS = 5
# Worker processes start by importing torch (through pyfundus.models), 2-4 s on
# two cores: below this many images per worker one process is faster.
_MIN_ITEMS_PER_WORKER = 64

# Moment-ratio table for the GGD / AGGD shape, as a function of the shape alpha
# (math.gamma, not scipy.special: every feature worker process imports this module).
_ALPHAS = np.arange(0.2, 10.0 + 1e-9, 0.001)
_gamma = np.vectorize(math.gamma)
_GAMMA_RATIO = _gamma(2 / _ALPHAS) ** 2 / (_gamma(1 / _ALPHAS) * _gamma(3 / _ALPHAS))  # rises with alpha


# --- features ------------------------------------------------------------------


def brisque_features(
    rgb: np.ndarray, *, fov: FieldOfView | None = None, size: int = FEATURE_SIZE
) -> np.ndarray:
    """The 36 BRISQUE features of an RGB uint8 fundus photo, measured inside its FOV.

    Raises :class:`~pyfundus.preprocess.NoFundusError` when there is no FOV.
    """
    if fov is None:
        fov = find_field_of_view(rgb)
    gray, mask = _fov_luminance(rgb, fov, size)
    features = []
    for _ in range(2):
        features.extend(_scale_features(gray, mask))
        gray, mask = _half(gray, mask)
    return np.asarray(features, dtype=np.float64)


def mscn(gray: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """MSCN coefficients of float32 luminance (0-255), local statistics from ``mask`` pixels only.

    Normalised convolution: blurring the masked image and dividing by the
    blurred mask gives the Gaussian-weighted mean of the pixels inside, so a
    pixel near the FOV edge is not pulled towards the black outside.
    Values outside ``mask`` are meaningless.
    """
    weight = mask.astype(np.float32)

    def local_mean(values: np.ndarray) -> np.ndarray:
        blurred = cv2.GaussianBlur(values * weight, (_WINDOW, _WINDOW), _WINDOW_SIGMA)
        return blurred / np.maximum(cv2.GaussianBlur(weight, (_WINDOW, _WINDOW), _WINDOW_SIGMA), _MIN_WEIGHT)

    mu = local_mean(gray)
    sigma = np.sqrt(np.maximum(local_mean(gray * gray) - mu * mu, 0.0))
    return (gray - mu) / (sigma + _MSCN_C)


def _fov_luminance(rgb: np.ndarray, fov: FieldOfView, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Luminance of the FOV crop at size x size and the mask of pixels to take statistics over."""
    square = crop_to_field_of_view(rgb, fov, mask_outside=False)
    resized = cv2.resize(square, (size, size), interpolation=cv2.INTER_AREA)
    gray = cv2.cvtColor(resized, cv2.COLOR_RGB2GRAY).astype(np.float32)
    return gray, _disc_mask(size) & _frame_mask(fov, rgb.shape[:2], square.shape[0], size)


def _disc_mask(size: int) -> np.ndarray:
    centre = (size - 1) / 2
    yy, xx = np.ogrid[:size, :size]
    return (xx - centre) ** 2 + (yy - centre) ** 2 <= (_MASK_FRACTION * size / 2) ** 2


def _frame_mask(fov: FieldOfView, shape: tuple[int, int], side: int, size: int) -> np.ndarray:
    """Pixels of the resized crop that came from inside the photo.

    A FOV clipped by the frame (most cameras cut the disc top and bottom) has
    black fill there that is not retina. Same geometry as crop_to_field_of_view.
    """
    h, w = shape
    x0 = int(round(fov.cx - (side - 1) / 2))
    y0 = int(round(fov.cy - (side - 1) / 2))
    centres = (np.arange(size) + 0.5) * (side / size) - 0.5  # crop coordinates of resized pixel centres
    inside_x = (centres + x0 >= 0) & (centres + x0 <= w - 1)
    inside_y = (centres + y0 >= 0) & (centres + y0 <= h - 1)
    return inside_y[:, None] & inside_x[None, :]


def _half(gray: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    h, w = gray.shape
    small = cv2.resize(gray, (w // 2, h // 2), interpolation=cv2.INTER_AREA)
    # A half-size pixel is inside only when all four of its source pixels were.
    small_mask = cv2.resize(mask.astype(np.float32), (w // 2, h // 2), interpolation=cv2.INTER_AREA) > 0.999
    return small, small_mask


def _scale_features(gray: np.ndarray, mask: np.ndarray) -> list[float]:
    coefficients = mscn(gray, mask)
    shape, variance = _fit_ggd(coefficients[mask])
    features = [shape, variance]
    for dy, dx in ((0, 1), (1, 0), (1, 1), (1, -1)):  # H, V, D1, D2
        features.extend(_fit_aggd(_neighbour_products(coefficients, mask, dy, dx)))
    return features


def _neighbour_products(values: np.ndarray, mask: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """values[y, x] * values[y + dy, x + dx] over pairs whose both pixels are in ``mask``."""
    h, w = values.shape
    a = (slice(0, h - dy), slice(max(0, -dx), w - max(0, dx)))
    b = (slice(dy, h), slice(max(0, dx), w - max(0, -dx)))
    both = mask[a] & mask[b]
    return values[a][both] * values[b][both]


def _shape_from_ratio(ratio: float) -> float:
    # np.interp clamps outside the table: flat or degenerate inputs get a finite shape.
    return float(np.interp(ratio, _GAMMA_RATIO, _ALPHAS))


def _fit_ggd(x: np.ndarray) -> tuple[float, float]:
    """Moment-matching GGD fit: (shape alpha, variance)."""
    x = x.astype(np.float64)
    variance = float(np.mean(x * x)) if x.size else 0.0
    mean_abs = float(np.mean(np.abs(x))) if x.size else 0.0
    ratio = mean_abs**2 / variance if variance > 0 else 0.0
    return _shape_from_ratio(ratio), variance


def _fit_aggd(x: np.ndarray) -> tuple[float, float, float, float]:
    """Moment-matching AGGD fit: (shape alpha, mean, left variance, right variance)."""
    x = x.astype(np.float64)
    left, right = x[x < 0], x[x > 0]
    left_var = float(np.mean(left * left)) if left.size else 0.0
    right_var = float(np.mean(right * right)) if right.size else 0.0
    second = float(np.mean(x * x)) if x.size else 0.0
    if left_var <= 0 or right_var <= 0 or second <= 0:
        return _shape_from_ratio(0.0), 0.0, left_var, right_var
    g = np.sqrt(left_var / right_var)
    r = float(np.mean(np.abs(x))) ** 2 / second
    ratio = r * (g**3 + 1) * (g + 1) / (g**2 + 1) ** 2
    alpha = _shape_from_ratio(ratio)
    spread = math.gamma(2 / alpha) / math.sqrt(math.gamma(1 / alpha) * math.gamma(3 / alpha))
    mean = (math.sqrt(right_var) - math.sqrt(left_var)) * spread
    return alpha, float(mean), left_var, right_var


# --- extraction over many inputs --------------------------------------------------


@dataclass
class _Extracted:
    features: np.ndarray | None
    error: str | None
    timing_ms: dict[str, float]
    sha256: str | None = None  # of the bytes read, as in ScoreResult
    incomplete: bool = False  # as in ScoreResult


def _extract(item: Any, size: int) -> _Extracted:
    """Read one input and compute its features; an unreadable image becomes an error, not an exception."""
    started = time.perf_counter()
    name = source_name(item) or "image"
    sha256 = None
    try:
        image = item if isinstance(item, FundusImage) else read_image(item, min_side=size)
        read_done = time.perf_counter()
        sha256 = image.sha256
        features = brisque_features(image.pixels, size=size)
    except ImageReadError as exc:  # its message already names the file
        return _Extracted(None, str(exc), {"total": _ms(started)}, exc.sha256, exc.incomplete)
    except NoFundusError as exc:
        return _Extracted(None, f"{name}: {exc}", {"total": _ms(started)}, sha256)
    except Exception as exc:  # a decoder bug must cost one image, not the whole run
        log.exception("unexpected failure while computing BRISQUE features")
        reason = f"{name}: unexpected error ({type(exc).__name__}: {exc})"
        return _Extracted(None, reason, {"total": _ms(started)}, sha256)
    timing = {"read": (read_done - started) * 1000.0, "features": _ms(read_done)}
    return _Extracted(features, None, timing, sha256)


def _extract_all(
    items: Sequence[Any], size: int, workers: int, cache: dict[str, _Extracted] | None = None
) -> Iterator[_Extracted]:
    """Features of every item, in order; ``workers`` > 1 spreads them over processes.

    ``cache`` maps a path to its extraction: paths found there are not read again,
    and paths extracted now are added (inputs other than paths are never cached).
    """
    keys = [_cache_key(item) if cache is not None else None for item in items]
    cached = [key is not None and key in cache for key in keys]
    fresh = _extract_uncached([item for item, hit in zip(items, cached) if not hit], size, workers)
    for key, hit in zip(keys, cached):
        if hit:
            yield cache[key]
            continue
        extracted = next(fresh)
        if key is not None:
            cache[key] = extracted
        yield extracted


def _extract_uncached(items: Sequence[Any], size: int, workers: int) -> Iterator[_Extracted]:
    extract = partial(_extract, size=size)
    if workers <= 1 or len(items) < workers * _MIN_ITEMS_PER_WORKER:
        yield from map(extract, items)
        return
    # spawn, not fork: forking a process that holds torch/OpenCV thread pools can deadlock.
    context = multiprocessing.get_context("spawn")
    try:
        with ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_worker_init) as pool:
            yield from pool.map(extract, items, chunksize=max(1, min(16, len(items) // (4 * workers))))
    except BrokenProcessPool as exc:
        raise RuntimeError(
            "BRISQUE feature worker processes died. Started processes re-import the calling script: "
            "guard its top level with `if __name__ == \"__main__\":`, or pass workers=1"
        ) from exc


def _cache_key(item: Any) -> str | None:
    return os.path.abspath(item) if isinstance(item, (str, os.PathLike)) else None


def _worker_init() -> None:
    cv2.setNumThreads(1)  # one process per core already: OpenCV threads would only contend


def _ms(started: float) -> float:
    return (time.perf_counter() - started) * 1000.0


# --- the regressor -------------------------------------------------------------------


@dataclass
class _RbfSVR:
    """A fitted RBF epsilon-SVR on standardised features, as plain arrays.

    f(x) = sum_i dual_i * exp(-gamma * |sv_i - z|^2) + intercept with
    z = (x - mean) / scale: what sklearn's StandardScaler + SVR compute.
    """

    mean: np.ndarray
    scale: np.ndarray
    support_vectors: np.ndarray
    dual_coef: np.ndarray
    intercept: float
    gamma: float

    def predict(self, features: np.ndarray) -> np.ndarray:
        z = (np.atleast_2d(features) - self.mean) / self.scale
        sv = self.support_vectors
        sq = (z * z).sum(1)[:, None] + (sv * sv).sum(1)[None, :] - 2.0 * z @ sv.T
        return np.exp(-self.gamma * np.maximum(sq, 0.0)) @ self.dual_coef + self.intercept

    @classmethod
    def from_sklearn(cls, scaler: Any, svr: Any) -> "_RbfSVR":
        return cls(
            mean=np.asarray(scaler.mean_, np.float64),
            scale=np.asarray(scaler.scale_, np.float64),
            support_vectors=np.asarray(svr.support_vectors_, np.float64),
            dual_coef=np.asarray(svr.dual_coef_, np.float64).reshape(-1),
            intercept=float(np.asarray(svr.intercept_).reshape(-1)[0]),
            gamma=float(svr.gamma),  # always a number here: _fit_sklearn passes one
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "scaler_mean": self.mean.tolist(),
            "scaler_scale": self.scale.tolist(),
            "support_vectors": self.support_vectors.tolist(),
            "dual_coef": self.dual_coef.tolist(),
            "intercept": self.intercept,
            "gamma": self.gamma,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], n_features: int) -> "_RbfSVR":
        svr = cls(
            mean=np.asarray(data["scaler_mean"], np.float64),
            scale=np.asarray(data["scaler_scale"], np.float64),
            support_vectors=np.asarray(data["support_vectors"], np.float64).reshape(-1, n_features),
            dual_coef=np.asarray(data["dual_coef"], np.float64),
            intercept=float(data["intercept"]),
            gamma=float(data["gamma"]),
        )
        n_sv = svr.support_vectors.shape[0]
        if svr.mean.shape != (n_features,) or svr.scale.shape != (n_features,) or svr.dual_coef.shape != (n_sv,):
            raise ValueError("inconsistent array shapes")
        return svr


@dataclass
class _Training:
    features: np.ndarray
    mos: np.ndarray
    levels: list[str | None]
    groups: np.ndarray
    n_failed: int


class BrisqueSVR:
    """BRISQUE features + RBF SVR regression of MOS (0-100), with calibrated class thresholds.

    Fits the same ``.score()`` interface as :class:`pyfundus.api.QualityModel`,
    so evaluation code treats both alike.
    """

    name = MODEL_NAME

    def __init__(
        self,
        *,
        size: int = FEATURE_SIZE,
        thresholds: Thresholds | None = None,
        workers: int = 1,
        feature_cache: dict | None = None,
    ):
        self.size = size
        self.workers = workers  # default feature-extraction processes of score()
        # Path -> features, when the caller shares one dict between models (run_eval's
        # rounds): each image is then read and measured once however often it is used.
        self.feature_cache = feature_cache
        self.thresholds = thresholds or Thresholds()
        self.fit_info: dict[str, Any] = {}
        self._svr: _RbfSVR | None = None

    @property
    def trained(self) -> bool:
        return self._svr is not None

    @property
    def backend_description(self) -> str:
        """As QualityModel's: what computes the score."""
        return f"BRISQUE features + RBF SVR (numpy, CPU, {self.workers} feature process(es))"

    def __repr__(self) -> str:
        return f"BrisqueSVR(size={self.size}, {'fitted' if self.trained else 'not fitted'})"

    def fit(
        self, records: Sequence[Any], *, workers: int = 2, progress: Callable[[int], None] | None = None
    ) -> "BrisqueSVR":
        """Fit on ``QualityRecord``s with a MOS; unreadable images are skipped (counted in ``fit_info``).

        C and gamma are chosen by cross-validation grouped by ``source_id``
        (no photo on both sides of a fold), on the pooled out-of-fold SRCC.
        When levels exist, thresholds are calibrated on the out-of-fold
        predictions: in-sample SVR predictions are optimistically tight.

        ``workers`` processes extract the features, once there are at least 64
        images per worker (starting one costs seconds). As with any
        multiprocessing, a calling script needs an ``if __name__ == "__main__":`` guard.
        """
        data = self._training_data(records, workers, progress)
        c, gamma, oof = _select(data)
        scaler, svr = _fit_sklearn(data.features, data.mos, c, gamma)
        self._svr = _RbfSVR.from_sklearn(scaler, svr)
        calibration = oof if oof is not None else self._svr.predict(data.features)
        self.thresholds = _calibrated(np.clip(calibration, 0.0, 100.0), data.levels) or self.thresholds
        self.fit_info = _fit_info(data, c, gamma, oof, self.thresholds)
        log.info("BRISQUE SVR fitted: %s", self.fit_info)
        return self

    def _training_data(
        self, records: Sequence[Any], workers: int, progress: Callable[[int], None] | None
    ) -> _Training:
        with_mos = [r for r in records if r.mos is not None]
        if len(with_mos) < 3:
            raise ValueError(f"fitting BRISQUE needs at least 3 images with a MOS, got {len(with_mos)}")
        kept, features = [], []
        extracted_all = _extract_all([str(r.path) for r in with_mos], self.size, workers, self.feature_cache)
        for record, extracted in zip(with_mos, extracted_all):
            if extracted.features is not None:
                kept.append(record)
                features.append(extracted.features)
            else:
                log.warning("skipped while fitting BRISQUE: %s", extracted.error)
            if progress is not None:
                progress(1)
        if len(kept) < 3:
            raise ValueError(f"only {len(kept)} of {len(with_mos)} training images could be read")
        return _Training(
            features=np.stack(features),
            mos=np.array([r.mos for r in kept], np.float64),
            levels=[r.level for r in kept],
            groups=np.array([r.source_id for r in kept]),
            n_failed=len(with_mos) - len(kept),
        )

    def _require_fitted(self) -> _RbfSVR:
        if self._svr is None:
            raise RuntimeError("BrisqueSVR is not fitted: call fit(records) or BrisqueSVR.load(path)")
        return self._svr

    def predict(self, images: Iterable[Any]) -> np.ndarray:
        """Scores 0-100 for paths, arrays (RGB uint8), PIL images or FundusImages; raises on an unreadable one."""
        svr = self._require_fitted()
        rows = []
        for extracted in _extract_all(list(images), self.size, self.workers, self.feature_cache):
            if extracted.features is None:
                raise ValueError(extracted.error)
            rows.append(extracted.features)
        if not rows:
            return np.zeros(0)
        return np.clip(svr.predict(np.stack(rows)), 0.0, 100.0)

    def score(
        self,
        inputs: Sequence[Any],
        *,
        batch_size: int = 8,
        workers: int | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> list[Any]:
        """One ``ScoreResult`` per input, in order; unreadable inputs get ``error`` set instead of raising.

        ``progress`` is called with the number of images finished after each ``batch_size`` of them.
        ``workers``: feature-extraction processes (default: the model's ``workers``).
        """
        svr = self._require_fitted()
        items = list(inputs)
        results: list[ScoreResult] = []
        pending: list[tuple[ScoreResult, _Extracted]] = []
        workers = self.workers if workers is None else workers
        extracted_all = _extract_all(items, self.size, workers, self.feature_cache)
        for item, extracted in zip(items, extracted_all):
            pending.append((ScoreResult(path=source_name(item), model=self.name, trained=True), extracted))
            if len(pending) == batch_size:
                results.extend(self._finish(svr, pending))
                pending = []
                if progress is not None:
                    progress(batch_size)
        if pending:
            results.extend(self._finish(svr, pending))
            if progress is not None:
                progress(len(pending))
        return results

    def _finish(self, svr: _RbfSVR, pending: list[tuple[Any, _Extracted]]) -> list[Any]:
        ready = [(result, extracted) for result, extracted in pending if extracted.features is not None]
        if ready:
            started = time.perf_counter()
            scores = np.clip(svr.predict(np.stack([e.features for _, e in ready])), 0.0, 100.0)
            per_image = _ms(started) / len(ready)
            for (result, _), value in zip(ready, scores):
                result.score = round(float(value), 3)
                result.quality_class = self.thresholds.classify(result.score)
                result.probabilities = self.thresholds.probabilities(result.score)
                result.timing_ms["model"] = per_image
        for result, extracted in pending:
            result.sha256, result.incomplete = extracted.sha256, extracted.incomplete
            result.error = extracted.error
            result.timing_ms.update(extracted.timing_ms)  # a failure brings its own "total"
            if result.error is None:
                result.timing_ms["total"] = sum(result.timing_ms[k] for k in ("read", "features", "model"))
        return [result for result, _ in pending]

    def save(self, path: str | os.PathLike) -> None:
        """Write the fitted model as JSON (floats round-trip exactly)."""
        svr = self._require_fitted()
        document = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "feature_size": self.size,
            "n_features": N_FEATURES,
            "thresholds": self.thresholds.to_dict(),
            "fit_info": self.fit_info,
            **svr.to_dict(),
        }
        Path(path).write_text(json.dumps(document))

    @classmethod
    def load(cls, path: str | os.PathLike) -> "BrisqueSVR":
        """Read a model written by :meth:`save`; only JSON is parsed, nothing is executed."""
        path = Path(path)
        try:
            document = json.loads(path.read_text())
        except FileNotFoundError:
            raise FileNotFoundError(f"{path}: BRISQUE model file not found") from None
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"{path}: not a BRISQUE model file (not JSON: {exc})") from None
        if not isinstance(document, dict) or document.get("format") != FORMAT:
            raise ValueError(f"{path}: not a BRISQUE model file (format is not {FORMAT!r})")
        if document.get("version") != FORMAT_VERSION or document.get("n_features") != N_FEATURES:
            raise ValueError(f"{path}: BRISQUE model version {document.get('version')} is not supported")
        try:
            model = cls(size=int(document["feature_size"]), thresholds=Thresholds.from_dict(document["thresholds"]))
            model._svr = _RbfSVR.from_dict(document, N_FEATURES)
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{path}: damaged BRISQUE model file ({type(exc).__name__}: {exc})") from None
        model.fit_info = document.get("fit_info", {})
        return model


# --- fitting helpers -------------------------------------------------------------------


def _fit_sklearn(features: np.ndarray, mos: np.ndarray, c: float, gamma: float) -> tuple[Any, Any]:
    try:
        from sklearn.preprocessing import StandardScaler
        from sklearn.svm import SVR
    except ImportError as exc:
        raise ImportError("fitting the BRISQUE baseline needs scikit-learn (pip install scikit-learn)") from exc
    scaler = StandardScaler().fit(features)
    svr = SVR(kernel="rbf", C=c, gamma=gamma, epsilon=_EPSILON).fit(scaler.transform(features), mos)
    return scaler, svr


def _select(data: _Training) -> tuple[float, float, np.ndarray | None]:
    """Best (C, gamma) by grouped cross-validation and its out-of-fold predictions; defaults without groups."""
    folds = _group_folds(data.groups)
    if folds is None:
        return _DEFAULT_C, _DEFAULT_GAMMA, None
    best: tuple[tuple[float, float], float, float, np.ndarray] | None = None
    for c in _C_GRID:
        for gamma in _GAMMA_GRID:
            oof = _out_of_fold(data, folds, c, gamma)
            key = (np.nan_to_num(srcc(oof, data.mos), nan=-1.0), -rmse(oof, data.mos))
            if best is None or key > best[0]:
                best = (key, c, gamma, oof)
    _, c, gamma, oof = best
    return c, gamma, oof


def _group_folds(groups: np.ndarray) -> list[np.ndarray] | None:
    """Test-index arrays of up to 5 folds that keep each source photo in one fold; None for one source."""
    unique = np.unique(groups)
    if len(unique) < 2:
        return None
    k = min(_MAX_FOLDS, len(unique))
    # A fixed shuffle of the sources: folds must not follow file order (often sorted by severity).
    order = np.random.default_rng(0).permutation(len(unique))
    fold_of_source = dict(zip(unique[order], np.arange(len(unique)) % k))
    fold = np.array([fold_of_source[g] for g in groups])
    return [np.flatnonzero(fold == i) for i in range(k)]


def _out_of_fold(data: _Training, folds: list[np.ndarray], c: float, gamma: float) -> np.ndarray:
    oof = np.empty(len(data.mos))
    for test in folds:
        train = np.setdiff1d(np.arange(len(data.mos)), test)
        scaler, svr = _fit_sklearn(data.features[train], data.mos[train], c, gamma)
        oof[test] = svr.predict(scaler.transform(data.features[test]))
    return oof


def _calibrated(scores: np.ndarray, levels: list[str | None]) -> Thresholds | None:
    """Thresholds calibrated on the levels, or None when there are fewer than two classes to separate."""
    if len({level for level in levels if level is not None}) < 2:
        return None
    return calibrate_thresholds(scores, levels)


def _fit_info(
    data: _Training, c: float, gamma: float, oof: np.ndarray | None, thresholds: Thresholds
) -> dict[str, Any]:
    info: dict[str, Any] = {
        "n_train": int(len(data.mos)),
        "n_failed": data.n_failed,
        "n_sources": int(len(np.unique(data.groups))),
        "C": c,
        "gamma": gamma,
        "epsilon": _EPSILON,
        "thresholds_calibrated": thresholds.calibrated,
    }
    if oof is not None:
        cv = {"srcc": srcc(oof, data.mos), "plcc": plcc(oof, data.mos), "rmse": rmse(oof, data.mos)}
        info["cv"] = {k: (v if np.isfinite(v) else None) for k, v in cv.items()}  # JSON has no NaN
    return info


@register_model(classical=True)
def brisque(**kwargs) -> BrisqueSVR:
    """The BRISQUE baseline, not yet fitted: ``pyfundus train --model brisque`` fits and saves one."""
    return BrisqueSVR(**kwargs)

"""BRISQUE features inside the field of view, and the SVR baseline built on them."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import skimage.data
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVR

from pyfundus.data.datasets import QualityRecord
from pyfundus.grading import Thresholds
from pyfundus.metrics import srcc
from pyfundus.models import brisque
from pyfundus.models.brisque import N_FEATURES, BrisqueSVR, brisque_features, mscn
from pyfundus.verdicts import ScoreResult

MSCN_VARIANCE = 1  # index of the scale-1 GGD variance in the feature vector
SMALL = 320  # side of the synthetic training photos: small keeps the tests fast


@pytest.fixture(scope="module")
def retina() -> np.ndarray:
    """A real 1411x1411 fundus photograph (CC0, bundled with scikit-image)."""
    return skimage.data.retina()


def blurred(rgb: np.ndarray, sigma: float) -> np.ndarray:
    return cv2.GaussianBlur(rgb, (0, 0), sigma) if sigma > 0 else rgb


def noisy(rgb: np.ndarray, sd: float, seed: int = 0) -> np.ndarray:
    noise = np.random.default_rng(seed).normal(0, sd, rgb.shape)
    return np.clip(rgb + noise, 0, 255).astype(np.uint8)


# --- features ------------------------------------------------------------------------


def test_features_are_36_finite_numbers(retina):
    features = brisque_features(retina)
    assert features.shape == (N_FEATURES,)
    assert np.isfinite(features).all()
    assert 0.2 < features[0] < 10  # GGD shape within the fitted range


def test_blur_moves_features_monotonically(retina):
    clean = brisque_features(retina)
    sigmas = [1, 2, 4, 8]
    features = [brisque_features(blurred(retina, s)) for s in sigmas]
    variance = [clean[MSCN_VARIANCE]] + [f[MSCN_VARIANCE] for f in features]
    distance = [np.linalg.norm(f - clean) for f in features]
    assert all(a > b for a, b in zip(variance, variance[1:])), variance  # blur flattens MSCN
    assert all(a < b for a, b in zip(distance, distance[1:])), distance


def test_noise_moves_features_monotonically(retina):
    clean = brisque_features(retina)
    features = [brisque_features(noisy(retina, sd)) for sd in (5, 10, 20, 40)]
    variance = [clean[MSCN_VARIANCE]] + [f[MSCN_VARIANCE] for f in features]
    distance = [np.linalg.norm(f - clean) for f in features]
    assert all(a < b for a, b in zip(variance, variance[1:])), variance
    assert all(a < b for a, b in zip(distance, distance[1:])), distance


def test_black_surround_does_not_count(retina):
    clean = brisque_features(retina)
    padded = cv2.copyMakeBorder(retina, 200, 200, 300, 300, cv2.BORDER_CONSTANT, value=0)
    assert np.linalg.norm(brisque_features(padded) - clean) < 0.02


def test_frame_clipped_disc_ignores_the_fill(retina):
    # Cameras cut the disc at the top and bottom: the crop fills that with black,
    # which must not be measured as a flat, edgy retina.
    cut = retina.shape[0] * 15 // 100
    clipped = retina[cut:-cut]
    clean = brisque_features(retina)
    assert np.linalg.norm(brisque_features(clipped) - clean) < np.linalg.norm(
        brisque_features(blurred(retina, 2)) - clean
    )


def test_mscn_inside_the_mask_ignores_pixels_outside():
    rng = np.random.default_rng(0)
    gray = rng.uniform(0, 255, (64, 64)).astype(np.float32)
    yy, xx = np.mgrid[:64, :64]
    mask = (yy - 31.5) ** 2 + (xx - 31.5) ** 2 < 25**2
    other = gray.copy()
    other[~mask] = 0.0
    np.testing.assert_allclose(mscn(gray, mask)[mask], mscn(other, mask)[mask], rtol=1e-4, atol=1e-4)


def test_flat_image_gives_finite_features():
    flat = np.zeros((400, 400, 3), np.uint8)
    cv2.circle(flat, (200, 200), 180, (150, 80, 30), -1)
    assert np.isfinite(brisque_features(flat)).all()


# --- the SVR ---------------------------------------------------------------------------------


def degraded_set(retina: np.ndarray, folder: Path, severities, sources: range) -> list[QualityRecord]:
    """Rotated/flipped copies of the retina (the sources), blurred or noised; MOS falls with severity."""
    base = cv2.resize(retina, (SMALL, SMALL), interpolation=cv2.INTER_AREA)
    thresholds = Thresholds(reject_below=40.0, good_from=70.0)
    folder.mkdir(parents=True, exist_ok=True)
    records = []
    for source in sources:
        photo = np.rot90(base if source % 2 == 0 else base[:, ::-1], source // 2).copy()
        for kind in ("blur", "noise"):
            for severity in severities:
                image = blurred(photo, 5 * severity) if kind == "blur" else noisy(photo, 35 * severity, source)
                mos = 95.0 * (1 - 0.8 * severity)
                path = folder / f"{source}_{kind}_{severity:.2f}.png"
                cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
                records.append(QualityRecord(path, mos, thresholds.classify(mos), f"src{source}", degradation=kind))
    return records


@pytest.fixture(scope="module")
def fitted(retina, tmp_path_factory) -> BrisqueSVR:
    folder = tmp_path_factory.mktemp("brisque_train")
    records = degraded_set(retina, folder, severities=(0.0, 0.25, 0.5, 0.75, 1.0), sources=range(4))
    return BrisqueSVR().fit(records, workers=1)


@pytest.fixture(scope="module")
def held_out(retina, tmp_path_factory) -> list[QualityRecord]:
    # Unseen severities on unseen orientations (sources 4 and 5 are rotated by 180 degrees).
    folder = tmp_path_factory.mktemp("brisque_test")
    return degraded_set(retina, folder, severities=(0.1, 0.4, 0.6, 0.9), sources=range(4, 6))


def test_fit_reports_what_it_did(fitted):
    info = fitted.fit_info
    assert info["n_train"] == 40 and info["n_failed"] == 0 and info["n_sources"] == 4
    assert info["C"] in brisque._C_GRID and info["gamma"] in brisque._GAMMA_GRID
    assert info["cv"]["srcc"] > 0.8
    assert fitted.thresholds.calibrated


def test_ranks_held_out_degradations(fitted, held_out):
    scores = fitted.predict([r.path for r in held_out])
    assert scores.shape == (len(held_out),)
    assert ((scores >= 0) & (scores <= 100)).all()
    assert srcc(scores, [r.mos for r in held_out]) > 0.8


def test_score_returns_score_results_with_errors_in_place(fitted, held_out, tmp_path):
    bad = tmp_path / "notes.txt"
    bad.write_text("not an image")
    paths = [str(held_out[0].path), str(bad), str(held_out[-1].path)]
    seen = []
    results = fitted.score(paths, batch_size=2, progress=seen.append)
    assert [type(r) for r in results] == [ScoreResult] * 3
    assert [r.path for r in results] == paths
    assert sum(seen) == 3
    good, failed, last = results
    assert failed.error and "notes.txt" in failed.error and failed.score is None
    assert failed.timing_ms["total"] > 0
    for r in (good, last):
        assert r.ok and r.model == "brisque" and r.trained
        assert r.quality_class == fitted.thresholds.classify(r.score)
        assert sum(r.probabilities.values()) == pytest.approx(1.0)
        assert r.timing_ms["total"] > 0


def test_save_load_round_trip_is_exact(fitted, held_out, tmp_path):
    path = tmp_path / "brisque.json"
    fitted.save(path)
    document = json.loads(path.read_text())  # plain JSON: nothing to unpickle
    assert document["format"] == "pyfundus-brisque"
    loaded = BrisqueSVR.load(path)
    paths = [r.path for r in held_out]
    np.testing.assert_array_equal(loaded.predict(paths), fitted.predict(paths))
    assert loaded.thresholds == fitted.thresholds
    assert loaded.fit_info == json.loads(json.dumps(fitted.fit_info))


def test_load_refuses_foreign_or_damaged_files(fitted, tmp_path):
    pickled = tmp_path / "model.json"
    pickled.write_bytes(b"\x80\x04\x95")  # a pickle header
    with pytest.raises(ValueError, match="not a BRISQUE model"):
        BrisqueSVR.load(pickled)
    damaged = tmp_path / "damaged.json"
    fitted.save(damaged)
    document = json.loads(damaged.read_text())
    document["dual_coef"] = document["dual_coef"][:-1]
    damaged.write_text(json.dumps(document))
    with pytest.raises(ValueError, match="damaged"):
        BrisqueSVR.load(damaged)


@pytest.mark.slow  # two spawned processes each import torch (via pyfundus.models): seconds on two cores
def test_worker_processes_give_the_same_features(held_out, monkeypatch):
    monkeypatch.setattr(brisque, "_MIN_ITEMS_PER_WORKER", 1)  # use the pool even for a handful of images
    paths = [str(r.path) for r in held_out[:4]] + ["missing.png"]
    pooled = list(brisque._extract_all(paths, brisque.FEATURE_SIZE, workers=2))
    serial = list(brisque._extract_all(paths, brisque.FEATURE_SIZE, workers=1))
    for a, b in zip(pooled[:4], serial[:4]):
        np.testing.assert_array_equal(a.features, b.features)
    assert pooled[4].features is None and "missing.png" in pooled[4].error


def test_feature_cache_measures_each_path_once(fitted, held_out, monkeypatch, tmp_path):
    fitted.save(tmp_path / "model.json")
    model = BrisqueSVR.load(tmp_path / "model.json")
    model.feature_cache = {}
    calls = []
    extract = brisque._extract
    monkeypatch.setattr(brisque, "_extract", lambda item, size: calls.append(item) or extract(item, size))
    paths = [str(r.path) for r in held_out[:3]]
    first = model.predict(paths)
    second = [r.score for r in model.score(paths)]
    assert calls == paths
    np.testing.assert_allclose(second, first, atol=1e-3)  # score() rounds to 3 decimals


def test_numpy_predictor_matches_sklearn():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, N_FEATURES)) * rng.uniform(0.1, 10, N_FEATURES) + rng.normal(size=N_FEATURES)
    y = 50 + 10 * x[:, 0] / x[:, 0].std()
    scaler = StandardScaler().fit(x)
    svr = SVR(kernel="rbf", C=10.0, gamma=0.03, epsilon=1.0).fit(scaler.transform(x), y)
    ours = brisque._RbfSVR.from_sklearn(scaler, svr)
    probe = rng.normal(size=(20, N_FEATURES))
    np.testing.assert_allclose(ours.predict(probe), svr.predict(scaler.transform(probe)), rtol=1e-9, atol=1e-9)


def test_unfitted_model_refuses_to_predict(retina):
    with pytest.raises(RuntimeError, match="not fitted"):
        BrisqueSVR().predict([retina])


def test_fit_needs_scores(tmp_path):
    records = [QualityRecord(tmp_path / f"{i}.png", None, "Good", str(i)) for i in range(5)]
    with pytest.raises(ValueError, match="MOS"):
        BrisqueSVR().fit(records, workers=1)

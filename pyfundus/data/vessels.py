"""Vessel maps of real photos from a classical filter: the offline stand-in for a trained segmentation net.

CLEAQ-DR trains its Seg-IQE branch on pseudo vessel masks from a segmentation network trained on DRIVE;
no such network (nor DRIVE's licence) is available here, so real photos get their masks from the Frangi
vesselness filter (Frangi et al., "Multiscale vessel enhancement filtering", MICCAI 1998) on the green
channel, where vessels have the most contrast. Synthetic fundi have exact masks
(``pyfundus.data.synth.vessel_mask``); the two are never mixed up in a record.

Also used to check that enhancement keeps vessel structure: the Dice between the vesselness masks of an
enhanced photo and of its clean original.
"""

from __future__ import annotations

import cv2
import numpy as np

__all__ = ["frangi_vesselness", "vessel_mask_from_photo"]

# Scales (Gaussian sigma, px at a 512 px field of view): small capillaries to the arcade veins.
SIGMAS = (1.0, 1.5, 2.0, 3.0, 4.0)
BETA = 0.5  # blob-versus-line sensitivity (Frangi's default)
VESSEL_FRACTION = 0.12  # share of the field of view kept as vessel: retinal vessels cover about 10-14 % of it


def frangi_vesselness(gray: np.ndarray, mask: np.ndarray | None = None, sigmas=SIGMAS) -> np.ndarray:
    """Frangi vesselness of dark tubes on a brighter background, in [0, 1]; ``gray`` float in [0, 1].

    Per scale: the Hessian from derivatives of a Gaussian (scale-normalised by sigma^2), its eigenvalues
    |l1| <= |l2|; where l2 > 0 (a dark valley), exp(-Rb^2 / 2 beta^2) (1 - exp(-S^2 / 2 c^2)) with
    Rb = l1 / l2, S the Hessian's Frobenius norm and c half its largest value; the maximum over scales.
    """
    gray = np.asarray(gray, np.float32)
    if mask is not None:
        # Fill outside the field with the mean inside it, so the rim is not one long "vessel".
        gray = np.where(mask, gray, np.float32(gray[mask].mean() if mask.any() else 0.0))
    best = np.zeros_like(gray)
    for sigma in sigmas:
        smooth = cv2.GaussianBlur(gray, (0, 0), sigma)
        hxx = cv2.Sobel(smooth, cv2.CV_32F, 2, 0, ksize=3) * sigma**2
        hyy = cv2.Sobel(smooth, cv2.CV_32F, 0, 2, ksize=3) * sigma**2
        hxy = cv2.Sobel(smooth, cv2.CV_32F, 1, 1, ksize=3) * sigma**2
        root = np.sqrt((hxx - hyy) ** 2 + 4 * hxy**2)
        a, b = (hxx + hyy + root) / 2, (hxx + hyy - root) / 2
        swap = np.abs(a) < np.abs(b)
        l1, l2 = np.where(swap, a, b), np.where(swap, b, a)  # |l1| <= |l2|
        structure = np.sqrt(l1**2 + l2**2)
        c = max(float(structure.max()) / 2, 1e-6)
        ratio = l1 / np.where(np.abs(l2) < 1e-10, 1e-10, l2)
        response = np.exp(-(ratio**2) / (2 * BETA**2)) * (1 - np.exp(-(structure**2) / (2 * c**2)))
        response[l2 <= 0] = 0.0
        best = np.maximum(best, response)
    if mask is not None:
        best[~mask] = 0.0
    peak = float(best.max())
    return best / peak if peak > 0 else best


def vessel_mask_from_photo(rgb: np.ndarray, mask: np.ndarray, fraction: float = VESSEL_FRACTION) -> np.ndarray:
    """Boolean vessel mask of an RGB uint8 fundus square: the top ``fraction`` of the field by vesselness.

    A fixed share, not a fixed threshold, so photos of different contrast give masks of the same density;
    the field's rim (eroded by 3 % of its size) is left out, where the filter answers to the border.
    """
    green = rgb[..., 1].astype(np.float32) / 255.0
    side = max(3, int(0.03 * max(rgb.shape[:2])) | 1)
    inner = cv2.erode(mask.astype(np.uint8), cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (side, side))) > 0
    score = frangi_vesselness(green, mask)
    if not inner.any():
        return np.zeros(mask.shape, bool)
    threshold = np.quantile(score[inner], 1.0 - fraction)
    return inner & (score > max(threshold, 1e-6))

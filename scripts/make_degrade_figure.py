"""Render docs/degradations.png: every degradation type at strengths 0.3 and 0.8.

The source is the CC0 retina photo bundled with scikit-image, cropped to its
field of view and degraded at 512 px (the resolution the proxy data use), then
shown as 256 px tiles. Each pair of tiles uses one seed, so the 0.8 tile is
the 0.3 defect made worse. The first pair is the clean photo and a cofe-Net
'111' (cofe_all_three, CLEAQ-DR's op2) draw, the last a cofe-Net training-variant '111' and a cofe_one_or_two
(CLEAQ-DR's op1) draw.

Usage: python scripts/make_degrade_figure.py [--out docs/degradations.png]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np
import skimage.data
from PIL import Image

from pyfundus.data.degrade import (
    TYPES,
    DegradationRecord,
    cofe_all_three,
    cofe_degrade,
    cofe_one_or_two,
    degrade,
    fov_mask,
)
from pyfundus.preprocess import field_of_view_square, find_field_of_view

WORK = 512  # degradation resolution
TILE = 256
LABEL = 34  # px of caption above each tile
COLUMNS = 8  # four pairs per row
STRENGTHS = (0.3, 0.8)
MAX_BYTES = 1_500_000


def clean_photo() -> np.ndarray:
    """The scikit-image retina, cropped to its FOV and resized to WORK px."""
    return field_of_view_square(skimage.data.retina(), WORK)[0]


def tile(img: np.ndarray, title: str, subtitle: str) -> np.ndarray:
    """A TILE px thumbnail under a two-line caption."""
    out = np.full((LABEL + TILE, TILE, 3), 28, np.uint8)
    out[LABEL:] = cv2.resize(img, (TILE, TILE), interpolation=cv2.INTER_AREA)
    font = cv2.FONT_HERSHEY_SIMPLEX
    cv2.putText(out, title, (6, 14), font, 0.45, (255, 255, 255), 1, cv2.LINE_AA)
    cv2.putText(out, subtitle, (6, 29), font, 0.38, (190, 190, 190), 1, cv2.LINE_AA)
    return out


def describe(record: DegradationRecord) -> str:
    worst = max(record.causes, key=record.causes.get)
    return f"severity {record.severity:.2f}  cause {worst}"


def tiles(clean: np.ndarray, mask: np.ndarray) -> list[np.ndarray]:
    out = [tile(clean, "clean (skimage retina)", "real photo, 512 px")]
    img, rec = cofe_all_three(clean, 7, mask=mask)
    out.append(tile(img, "cofe 111 published (all three)", describe(rec)))
    for seed, name in enumerate(TYPES):
        for s in STRENGTHS:
            img, rec = degrade(clean, seed, types=[name], strength=s, mask=mask)
            out.append(tile(img, f"{name}  s={s}", describe(rec)))
    img, rec = cofe_degrade(clean, "111", 11, variant="training", mask=mask)
    out.append(tile(img, "cofe 111 training", describe(rec)))
    img, rec = cofe_one_or_two(clean, 5, mask=mask)
    codes = "+".join(step["type"] for step in rec.steps)
    out.append(tile(img, f"one or two: {codes}", describe(rec)))
    return out


def grid(parts: list[np.ndarray]) -> np.ndarray:
    rows = [np.hstack(parts[i : i + COLUMNS]) for i in range(0, len(parts), COLUMNS)]
    return np.vstack(rows)


def save_png(rgb: np.ndarray, path: Path) -> None:
    """Full colour if it fits MAX_BYTES, else a dithered 256-colour palette."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(rgb)
    image.save(path, optimize=True)
    if path.stat().st_size > MAX_BYTES:
        # quantize() only dithers against a given palette; without dithering the
        # smooth shadows and veils band into contours that look like artefacts.
        palette = image.quantize(256, method=Image.Quantize.MEDIANCUT)
        image.quantize(palette=palette, dither=Image.Dither.FLOYDSTEINBERG).save(path, optimize=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = Path(__file__).resolve().parents[1] / "docs" / "degradations.png"
    parser.add_argument("--out", type=Path, default=default)
    args = parser.parse_args()
    clean = clean_photo()
    mask = fov_mask(clean.shape, find_field_of_view(clean))
    save_png(grid(tiles(clean, mask)), args.out)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()

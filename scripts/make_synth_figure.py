"""Render docs/synth_samples.png: synthetic fundi from pyfundus.data.synth beside a real photograph.

The real one is scikit-image's CC0 retina photo (top left). The eight synthetic
ones cover both eyes, light to dark pigmentation, a tessellated choroid,
diabetic retinopathy lesions and a camera-clipped field of view. Each is
picked as the first seed (from 0) whose drawn parameters fit its caption, so
the figure stays representative when the generator changes.

    python scripts/make_synth_figure.py [--out docs/synth_samples.png] [--tile 256]
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import skimage.data
from PIL import Image, ImageDraw

from pyfundus.data.synth import SynthParams, render, sample_params

CAPTION_HEIGHT = 20
COLUMNS = 3
DR_LESIONS = {"microaneurysms": 18, "haemorrhages": 8, "exudates": 30, "cotton_wool_spots": 2}

# (caption, keyword arguments for sample_params, what the drawn parameters must satisfy)
Sample = tuple[str, dict, Callable[[SynthParams], bool]]
SAMPLES: tuple[Sample, ...] = (
    ("right eye, light", {"eye": "R"}, lambda p: p.pigmentation < 0.25 and not p.tessellation),
    ("left eye, medium", {"eye": "L"}, lambda p: 0.4 < p.pigmentation < 0.6 and not p.tessellation),
    ("right eye, dark", {"eye": "R"}, lambda p: p.pigmentation > 0.85 and not p.tessellation),
    ("left eye, tessellated", {"eye": "L"}, lambda p: p.tessellation > 0.6),
    ("right eye, DR lesions", {"eye": "R", "lesions": DR_LESIONS}, lambda p: p.pigmentation < 0.5),
    ("left eye, DR lesions", {"eye": "L", "lesions": True}, lambda p: sum(p.lesion_counts.values()) > 20),
    ("left eye, clipped FOV", {"eye": "L", "fov_clip": True}, lambda p: not p.tessellation),
    ("right eye, random", {"eye": "R", "lesions": True}, lambda p: True),
)


def first_params(kwargs: dict, accept: Callable[[SynthParams], bool], size: int) -> tuple[int, SynthParams]:
    for seed in range(10_000):
        params = sample_params(seed, size=size, **kwargs)
        if accept(params):
            return seed, params
    raise RuntimeError(f"no seed below 10000 gives {kwargs}")


def captioned(rgb: np.ndarray, caption: str, tile: int) -> Image.Image:
    image = Image.new("RGB", (tile, tile + CAPTION_HEIGHT), "white")
    image.paste(Image.fromarray(cv2.resize(rgb, (tile, tile), interpolation=cv2.INTER_AREA)), (0, 0))
    ImageDraw.Draw(image).text((4, tile + 4), caption, fill="black")
    return image


def make_figure(tile: int) -> Image.Image:
    tiles = [captioned(skimage.data.retina(), "REAL: skimage.data.retina()", tile)]
    for caption, kwargs, accept in SAMPLES:
        # Rendered at twice the tile size and shrunk, as a camera image would be.
        seed, params = first_params(kwargs, accept, 2 * tile)
        tiles.append(captioned(render(params), f"synthetic {caption} (seed {seed})", tile))
    rows = -(-len(tiles) // COLUMNS)
    figure = Image.new("RGB", (COLUMNS * tile, rows * (tile + CAPTION_HEIGHT)), "white")
    for i, image in enumerate(tiles):
        figure.paste(image, ((i % COLUMNS) * tile, (i // COLUMNS) * (tile + CAPTION_HEIGHT)))
    return figure


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "docs" / "synth_samples.png")
    parser.add_argument("--tile", type=int, default=256)
    args = parser.parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    make_figure(args.tile).save(args.out, optimize=True)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()

"""Shared pieces for the rating app's tests: tiny fundus-like pictures, a dataset folder, raters."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from pyfundus.mark.store import Store

PASSWORDS = {"ana": "ana-senior-pw", "ben": "ben-junior-pw", "cleo": "cleo-admin-pw"}


def fundus_png(seed: int, size: int = 96) -> bytes:
    """A bright disc on black (so the field-of-view finder finds it), its colour and texture from ``seed``."""
    rng = np.random.default_rng(seed)
    picture = Image.new("RGB", (size, size))
    colour = tuple(int(c) for c in rng.integers(90, 230, size=3))
    ImageDraw.Draw(picture).ellipse((size * 0.08, size * 0.08, size * 0.92, size * 0.92), fill=colour)
    pixels = np.asarray(picture).astype(np.int16)
    pixels[pixels.sum(axis=2) > 0] += rng.integers(-12, 13, size=(int((pixels.sum(axis=2) > 0).sum()), 3))
    buffer = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def make_dataset(folder: Path, names: list[str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for seed, name in enumerate(names):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(fundus_png(seed))
    return folder


def add_raters(store: Store) -> dict:
    """ana (senior), ben (junior) and cleo (senior, admin)."""
    return {
        "ana": store.add_rater("ana", "senior", PASSWORDS["ana"], actor="test"),
        "ben": store.add_rater("ben", "junior", PASSWORDS["ben"], actor="test"),
        "cleo": store.add_rater("cleo", "senior", PASSWORDS["cleo"], admin=True, actor="test"),
    }

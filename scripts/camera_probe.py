"""What a model holds against a clean photo: its score as captured and after label-neutral changes.

    python scripts/camera_probe.py --model run6/model.safetensors --reference HRF_04_g.jpg DRIVE_40.png issue_3.dcm

For a clean capture from a camera the model has not seen, a low score is the camera, not a defect. Each column
changes one property of the capture and nothing a grader would call quality, so a column that lifts the score
names a property the model has learned to read as a defect:

- reference colour: green and blue gains that give the photo the reference photo's in-field G/R and B/R ratios;
- sharpened: an unsharp mask (amount 1, sigma 1 px at the model's input size);
- border removed: everything outside 78% of the field's radius blacked out (scoring re-crops to the smaller
  circle, so the scale changes too);
- contrast x1.3: in-field contrast raised about the in-field mean.

MODEL_CARD.md ("Why unseen cameras score low") reports this for the sample photos.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import cv2
import numpy as np

from pyfundus import load_model
from pyfundus.io import read_image
from pyfundus.preprocess import field_of_view_square

BORDER_KEPT = 0.78
CONTRAST = 1.3


def field_square(path: str, side: int) -> np.ndarray:
    """The photo as the model sees it, before normalisation."""
    return field_of_view_square(read_image(path, min_side=side).pixels, side)[0]


def in_field(square: np.ndarray) -> np.ndarray:
    return square.max(axis=2) > 20


def channel_means(square: np.ndarray) -> np.ndarray:
    return square[in_field(square)].astype(np.float64).mean(axis=0)


def probes(square: np.ndarray, reference_means: np.ndarray) -> dict[str, np.ndarray]:
    x = square.astype(np.float32)
    field = in_field(square)
    means = channel_means(square)
    gains = np.array([1.0, *(reference_means[1:] / reference_means[0]) / (means[1:] / means[0])], np.float32)
    sharpened = 2.0 * x - cv2.GaussianBlur(x, (0, 0), 1.0)
    side = square.shape[0]
    yy, xx = np.mgrid[:side, :side]
    border = np.hypot(yy - (side - 1) / 2, xx - (side - 1) / 2) > BORDER_KEPT * side / 2
    trimmed = x.copy()
    trimmed[border] = 0
    contrasted = (x - means.astype(np.float32)) * CONTRAST + means.astype(np.float32)
    contrasted[~field] = 0
    changed = {
        "as captured": x,
        "reference colour": x * gains,
        "sharpened": sharpened,
        "border removed": trimmed,
        f"contrast x{CONTRAST:g}": contrasted,
    }
    return {name: np.clip(image, 0, 255).astype(np.uint8) for name, image in changed.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("photos", nargs="+", help="clean captures to probe")
    parser.add_argument("--model", default=None, help="weights (default: the shipped model)")
    parser.add_argument("--reference", required=True, help="a clean photo from a training camera, for its colour")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args()
    model = load_model(args.model)
    reference_means = channel_means(field_square(args.reference, model.input.size))
    table: dict[str, dict[str, float | None]] = {}
    for photo in args.photos:
        images = probes(field_square(photo, model.input.size), reference_means)
        results = model.score(list(images.values()), workers=1)
        table[Path(photo).name] = {name: r.score for name, r in zip(images, results)}
    if args.json:
        print(json.dumps(table, indent=2))
        return
    columns = list(next(iter(table.values())))
    print("photo | " + " | ".join(columns))
    for photo, scores in table.items():
        cells = ("failed" if s is None else f"{s:.1f}" for s in scores.values())
        print(f"{photo} | " + " | ".join(cells))


if __name__ == "__main__":
    main()

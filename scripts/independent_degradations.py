"""An independent degradation set: does a model rank one photo's defects in order of their strength?

Written apart from pyfundus.data.degrade on purpose: other code (PIL, scipy.ndimage, NumPy), other
parameters (sizes as fractions of the field of view's diameter, levels named in the terms a grader
uses at the model's 384 px view), so a model cannot pass by having learned the training simulator's
quirks. For each photo and each of eleven families, the clean photo (level 0) and five levels of
rising strength; a group's score is Spearman's rho between level and predicted score (-1: perfectly
in order). A model that cannot tell two levels apart (tied scores) is not in order.

    python scripts/independent_degradations.py --out indep --models fthnet_s brisque/brisque.json
    python scripts/independent_degradations.py --out indep --models fthnet_s --json

Writes OUT/images/*.png, OUT/set.csv (file, photo, family, level), OUT/scores.csv, OUT/report.json
and OUT/spearman.png (a heatmap per model). The default photos are the sample photos no shipped
model is trained on (pyfundus data fetch-samples): two DRIVE photos, the Topcon DICOM and PALM.
Evaluation only: DRIVE and PALM may not be used for training.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter
from scipy import ndimage

SIDE = 768  # the square the degradations are drawn on (the model resizes it to its own input)
VIEW = 384  # sizes below are given in pixels of the model's view of the field of view
DEFAULT_PHOTOS = ("DRIVE_22.png", "DRIVE_40.png", "issue_3.dcm", "PALM_TR_P0185.png")
LEVELS = 5
TARGETS = {"median": -0.95, "share_at_or_below": -0.8, "share": 0.85, "family_median": -0.8}


def _scale(image: np.ndarray) -> float:
    return image.shape[0] / VIEW


def _disc(shape: tuple[int, int]) -> np.ndarray:
    h, w = shape
    yy, xx = np.mgrid[:h, :w]
    return np.hypot(xx - (w - 1) / 2, yy - (h - 1) / 2) <= min(h, w) / 2 - 1


def _pil(image: np.ndarray) -> Image.Image:
    return Image.fromarray(np.clip(image, 0, 255).astype(np.uint8))


def gaussian_blur(image, level, rng):
    sigma = (1.2, 2.0, 3.0, 4.5, 6.5)[level - 1] * _scale(image)
    return np.asarray(_pil(image).filter(ImageFilter.GaussianBlur(sigma)), np.float32)


def defocus(image, level, rng):
    radius = (2.0, 3.0, 4.5, 6.5, 9.0)[level - 1] * _scale(image)
    r = int(math.ceil(radius))
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    kernel = (np.hypot(xx, yy) <= radius).astype(np.float32)
    kernel /= kernel.sum()
    return np.stack([ndimage.convolve(image[..., c], kernel, mode="nearest") for c in range(3)], axis=2)


def motion(image, level, rng):
    length = (4.0, 7.0, 11.0, 16.0, 24.0)[level - 1] * _scale(image)
    angle = rng.uniform(0, math.pi)
    r = int(math.ceil(length / 2))
    kernel = np.zeros((2 * r + 1, 2 * r + 1), np.float32)
    for t in np.linspace(-length / 2, length / 2, int(4 * length) + 2):
        kernel[int(round(r - t * math.sin(angle))), int(round(r + t * math.cos(angle)))] += 1
    kernel /= kernel.sum()
    return np.stack([ndimage.convolve(image[..., c], kernel, mode="nearest") for c in range(3)], axis=2)


def shadow(image, level, rng):
    """A linear fall-off of light from one side of the field to the other, from a random direction."""
    depth = (0.3, 0.45, 0.6, 0.75, 0.9)[level - 1]
    angle = rng.uniform(0, 2 * math.pi)
    h, w = image.shape[:2]
    yy, xx = np.mgrid[:h, :w]
    along = ((xx - w / 2) * math.cos(angle) + (yy - h / 2) * math.sin(angle)) / (min(h, w) / 2)
    gain = 1 - depth * np.clip((along + 0.2) / 1.2, 0, 1)
    return image * gain[..., None]


def vignette(image, level, rng):
    strength = (0.3, 0.45, 0.6, 0.75, 0.9)[level - 1]
    h, w = image.shape[:2]
    yy, xx = np.mgrid[:h, :w]
    r = np.hypot(xx - w / 2, yy - h / 2) / (min(h, w) / 2)
    return image * (1 - strength * np.clip(r, 0, 1) ** 2.5)[..., None]


def glare(image, level, rng):
    """A bright reflection at a random place in the field, growing and brightening."""
    radius = (0.06, 0.1, 0.14, 0.19, 0.25)[level - 1] * image.shape[0]
    peak = (0.45, 0.55, 0.68, 0.8, 0.9)[level - 1]
    h, w = image.shape[:2]
    bearing, distance = rng.uniform(0, 2 * math.pi), rng.uniform(0, 0.55) * min(h, w) / 2
    cx, cy = w / 2 + distance * math.cos(bearing), h / 2 + distance * math.sin(bearing)
    yy, xx = np.mgrid[:h, :w]
    blob = peak * np.exp(-(((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * (radius / 2) ** 2)))
    return 255 - (255 - image) * (1 - blob[..., None])


def dark(image, level, rng):
    factor = (0.7, 0.55, 0.42, 0.3, 0.2)[level - 1]
    return np.asarray(ImageEnhance.Brightness(_pil(image)).enhance(factor), np.float32)


def bright(image, level, rng):
    factor = (1.3, 1.6, 1.9, 2.3, 2.8)[level - 1]
    return np.asarray(ImageEnhance.Brightness(_pil(image)).enhance(factor), np.float32)


def haze(image, level, rng):
    alpha = (0.15, 0.25, 0.36, 0.48, 0.6)[level - 1]
    veil = Image.new("RGB", (image.shape[1], image.shape[0]), (200, 180, 150))
    return np.asarray(Image.blend(_pil(image), veil, alpha), np.float32)


def noise(image, level, rng):
    sigma = (0.05, 0.08, 0.11, 0.15, 0.2)[level - 1] * 255
    return image + rng.normal(0, sigma, image.shape).astype(np.float32)


def jpeg(image, level, rng):
    import io

    quality = (12, 9, 7, 5, 3)[level - 1]
    buffer = io.BytesIO()
    _pil(image).save(buffer, format="JPEG", quality=quality)
    return np.asarray(Image.open(buffer).convert("RGB"), np.float32)


FAMILIES = {
    f.__name__: f for f in (gaussian_blur, defocus, motion, shadow, vignette, glare, dark, bright, haze, noise, jpeg)
}


def field_square(path: Path) -> np.ndarray:
    """The photo's field of view, cropped square and resized to SIDE (the only pyfundus code used here)."""
    from pyfundus.io import read_image
    from pyfundus.preprocess import field_of_view_square

    return field_of_view_square(read_image(path, min_side=SIDE).pixels, SIDE)[0].astype(np.float32)


def build(photos: list[Path], out: Path, seed: int) -> list[dict]:
    (out / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for photo in photos:
        clean = field_square(photo)
        inside = _disc(clean.shape[:2])[..., None]
        name = photo.stem
        _pil(clean).save(out / "images" / f"{name}__clean.png")
        rows.extend({"file": f"{name}__clean.png", "photo": name, "family": f, "level": 0} for f in FAMILIES)
        for family, degrade in FAMILIES.items():
            for level in range(1, LEVELS + 1):
                rng = np.random.default_rng([seed, sum(map(ord, name)), sum(map(ord, family))])  # same place per group
                image = np.clip(degrade(clean, level, rng), 0, 255) * inside
                file = f"{name}__{family}_{level}.png"
                _pil(image).save(out / "images" / file)
                rows.append({"file": file, "photo": name, "family": family, "level": level})
    with open(out / "set.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=("file", "photo", "family", "level"))
        writer.writeheader()
        writer.writerows(rows)
    return rows


def spearman(levels: list[int], scores: list[float]) -> float:
    """Spearman's rho with average ranks; nan when the scores do not vary."""
    from scipy.stats import spearmanr

    if len(set(scores)) < 2:
        return math.nan
    return float(spearmanr(levels, scores).statistic)


def summarise(rows: list[dict], scores: dict[str, float]) -> dict:
    groups: dict[tuple[str, str], list[tuple[int, float]]] = {}
    for row in rows:
        value = scores.get(row["file"])
        groups.setdefault((row["photo"], row["family"]), []).append((row["level"], value))
    per_group = {}
    for (photo, family), pairs in sorted(groups.items()):
        scored = [(level, s) for level, s in pairs if s is not None and not math.isnan(s)]
        rho = spearman([p[0] for p in scored], [p[1] for p in scored]) if len(scored) == len(pairs) else math.nan
        per_group[f"{photo}/{family}"] = {"photo": photo, "family": family, "spearman": rho,
                                          "scores": [round(s, 2) for _, s in sorted(scored)]}  # fmt: skip
    rhos = np.array([g["spearman"] for g in per_group.values()])
    in_order = np.where(np.isnan(rhos), 1.0, rhos)  # not measurable (tied, failed) counts as out of order
    families = {}
    for family in FAMILIES:
        values = [1.0 if math.isnan(g["spearman"]) else g["spearman"] for g in per_group.values() if g["family"] == family]
        families[family] = float(np.median(values))
    photos = {}
    for photo in {g["photo"] for g in per_group.values()}:
        photos[photo] = {"clean_score": scores.get(f"{photo}__clean.png")}
    summary = {
        "groups": len(per_group),
        "median_spearman": float(np.median(in_order)),
        "share_at_or_below_-0.8": float(np.mean(in_order <= -0.8)),
        "family_median": families,
        "worst_family": max(families, key=families.get),
        "photos": photos,
        "per_group": per_group,
    }
    summary["meets_targets"] = bool(
        summary["median_spearman"] <= TARGETS["median"]
        and summary["share_at_or_below_-0.8"] >= TARGETS["share"]
        and max(families.values()) <= TARGETS["family_median"]
    )
    return summary


def score_all(model_name: str, paths: list[Path]) -> dict[str, float]:
    import pyfundus

    model = pyfundus.load_model(model_name)
    results = model.score([str(p) for p in paths], batch_size=8)
    return {Path(r.path).name: (math.nan if r.score is None else float(r.score)) for r in results}


def heatmap(reports: dict[str, dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = max(len({g["photo"] for g in report["per_group"].values()}) for report in reports.values())
    fig, axes = plt.subplots(1, len(reports), figsize=(4.4 * len(reports), 1.9 + 0.32 * rows), squeeze=False)
    for ax, (label, report) in zip(axes[0], reports.items()):
        label = "/".join(Path(label).parts[-2:])  # a model file by its folder and name, not the whole path
        photos = sorted({g["photo"] for g in report["per_group"].values()})
        grid = np.array([[report["per_group"][f"{p}/{f}"]["spearman"] for f in FAMILIES] for p in photos])
        ax.imshow(np.nan_to_num(grid, nan=1.0), cmap="RdYlGn_r", vmin=-1, vmax=1)
        ax.set_xticks(range(len(FAMILIES)), list(FAMILIES), rotation=60, ha="right", fontsize=8)
        ax.set_yticks(range(len(photos)), photos, fontsize=8)
        for (i, j), value in np.ndenumerate(grid):
            ax.text(j, i, "-" if math.isnan(value) else f"{value:.1f}", ha="center", va="center", fontsize=7)
        ax.set_title(f"{label}\nmedian {report['median_spearman']:.2f}, "
                     f"{100 * report['share_at_or_below_-0.8']:.0f}% <= -0.8", fontsize=9)  # fmt: skip
    fig.suptitle("Spearman of score against degradation level (green: in order)", fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for the set and the reports")
    parser.add_argument("--photos", nargs="+", type=Path, help="source photos (default: the four eval-only samples)")
    parser.add_argument("--models", nargs="+", default=["fthnet_s"],
                        help="anything pyfundus.load_model takes: names, .safetensors, fitted BRISQUE .json")  # fmt: skip
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print the summaries as JSON")
    args = parser.parse_args(argv)
    if args.photos is None:
        from pyfundus.data.samples import samples_dir

        args.photos = [samples_dir() / name for name in DEFAULT_PHOTOS]
    missing = [str(p) for p in args.photos if not p.exists()]
    if missing:
        parser.error(f"no such photo: {', '.join(missing)} (run `pyfundus data fetch-samples`)")
    rows = build(args.photos, args.out, args.seed)
    paths = sorted({args.out / "images" / row["file"] for row in rows})
    reports, table = {}, {}
    for model in args.models:
        print(f"scoring {len(paths)} images with {model}", file=sys.stderr)
        scores = score_all(model, paths)
        reports[model] = summarise(rows, scores)
        table[model] = scores
    with open(args.out / "scores.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["file", *args.models])
        for path in paths:
            writer.writerow([path.name, *(round(table[m][path.name], 3) for m in args.models)])
    (args.out / "report.json").write_text(json.dumps({"targets": TARGETS, "models": reports}, indent=2))
    heatmap(reports, args.out / "spearman.png")
    if args.json:
        print(json.dumps({m: {k: v for k, v in r.items() if k != "per_group"} for m, r in reports.items()}, indent=2))
    else:
        print(f"{'model':<40} {'median':>7} {'<=-0.8':>7} {'worst family (median)':<28} clean scores")
        for model, r in reports.items():
            worst = f"{r['worst_family']} ({r['family_median'][r['worst_family']]:.2f})"
            cleans = ", ".join(f"{p} {v['clean_score']:.0f}" for p, v in sorted(r["photos"].items()))
            print(f"{model:<40} {r['median_spearman']:7.2f} {100 * r['share_at_or_below_-0.8']:6.0f}% {worst:<28} {cleans}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

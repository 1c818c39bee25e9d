"""Data for CLEAQ-DR: quality and DR labels, degrade-restore pairs, and a synthetic DR proxy.

One record type, :class:`CleaqRecord`, for every source:

* **pyfundus tables** (``cleaq.csv`` + ``dataset.json``, written by :func:`build_pairs`): field-of-view squares
  at 512 px. Each low-quality image has its clean original (the enhancement target), a vessel mask
  (exact for synthetic fundi; the Frangi filter's on real photos, see ``pyfundus.data.vessels``), its
  quality class and, for the DR proxy, its grade.
* **EyeQ** (``Label_EyeQ_*.csv``: image, quality 0/1/2, DR_grade 0-4, ICDR), **Messidor** (``Image name``,
  ``Retinopathy grade`` 0-3, as CSV or XLSX; convert Messidor's .xls first), **APTOS 2019** (``id_code``,
  ``diagnosis``, ICDR) and **EyePACS/Kaggle** (``image``, ``level``, ICDR): photos with labels and no clean
  pairs; training makes pairs of their Good and Usable photos on the fly, as the paper does
  (``cofe_all_three`` for Good, ``cofe_one_or_two`` for Usable; Reject photos stay as they are).

**The synthetic DR proxy** (``build_pairs(..., dr_proxy=True)``): no DR-labelled photos can be had here, so
synthetic fundi get lesions drawn for a grade, and the grade is then read back from the lesion counts by
:func:`synthetic_dr_grade`, an ICDR-like rule (below). Results on it are results on synthetic data.

Pairs are the paper's: a clean source photo, rendered by a random camera (``pyfundus.data.camera``;
label-neutral, without its sensor grain and JPEG storage, which no enhancer should try to restore), then
degraded by ``cofe_one_or_two`` or ``cofe_all_three`` (or left clean, ``clean_fraction`` of them). The
degraded image's quality class is the FQS-proxy class of its degradation (``pyfundus.data.proxy``).
``degradations.jsonl`` keeps every camera and degradation draw, so each pair can be made again.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
from PIL import Image

from ..io import read_image
from ..preprocess import crop_to_field_of_view, find_field_of_view
from ..progress import progress_bar
from ..verdicts import CLASSES
from .camera import Camera
from .datasets import EYEQ_LEVELS, _default_image_dir, _read_table, _require_columns
from .degrade import cofe_all_three, cofe_one_or_two
from .proxy import PROXY_THRESHOLDS, proxy_mos
from .synth import LESION_KINDS, generate_fundus, vessel_mask
from .vessels import vessel_mask_from_photo

log = logging.getLogger(__name__)

__all__ = [
    "GRADE_SCALES",
    "ICDR_GRADES",
    "MESSIDOR_GRADES",
    "SYNTHETIC_GRADES",
    "CleaqDataset",
    "CleaqRecord",
    "build_pairs",
    "field_mask",
    "load_cleaq",
    "synthetic_dr_grade",
    "synthetic_lesion_counts",
]

ICDR_GRADES = ("no DR", "mild NPDR", "moderate NPDR", "severe NPDR", "proliferative DR")
MESSIDOR_GRADES = ("R0", "R1", "R2", "R3")
SYNTHETIC_GRADES = ("none", "mild", "moderate", "severe")  # the proxy's ICDR-like grades 0-3 (no PDR: see below)
GRADE_SCALES = {"icdr": ICDR_GRADES, "messidor": MESSIDOR_GRADES, "synthetic": SYNTHETIC_GRADES}
TABLE_NAME = "cleaq.csv"
INFO_NAME = "dataset.json"
RECORDS_NAME = "degradations.jsonl"
SIZE = 512  # the paper's and cofe-Net's working size
CLEAN_FRACTION = 0.15
# ICDR's severe NPDR asks for more than 20 intraretinal haemorrhages in each of four quadrants; the generator
# places haemorrhages around the posterior pole, not per quadrant, so the total stands in, at a lower count.
SEVERE_HAEMORRHAGES = 12


@dataclass
class CleaqRecord:
    image: Path  # what the network is given (the low-quality image of a pair)
    source_id: str  # the photo it derives from: splits keep a source on one side
    clean: Path | None = None  # the enhancement target
    vessels: Path | None = None  # boolean vessel mask (PNG, 0/255) in the clean image's geometry
    quality: str | None = None  # Good / Usable / Reject, of ``image``
    dr_grade: int | None = None
    degradation: str = ""  # "clean", "one_or_two:101", "all_three:111"; "" for outside data
    cropped: bool = False  # already a field-of-view square (pyfundus tables): no detection needed


@dataclass
class CleaqDataset:
    records: list[CleaqRecord]
    grades: tuple[str, ...] | None  # names of the DR grades, in order; None without DR labels
    name: str = ""
    info: dict = field(default_factory=dict)


def synthetic_dr_grade(counts: dict[str, int]) -> int:
    """The ICDR-like grade of a synthetic fundus from its lesion counts (the proxy's definition of its label).

    0 none: no lesion. 1 mild: microaneurysms only. 2 moderate: any haemorrhage, hard exudate or cotton-wool
    spot, short of severe. 3 severe: at least SEVERE_HAEMORRHAGES haemorrhages. ICDR grade 4 (proliferative)
    needs new vessels, which the generator does not draw, so the proxy has four grades.
    """
    if counts.get("haemorrhages", 0) >= SEVERE_HAEMORRHAGES:
        return 3
    if counts.get("haemorrhages", 0) or counts.get("exudates", 0) or counts.get("cotton_wool_spots", 0):
        return 2
    return 1 if counts.get("microaneurysms", 0) else 0


def synthetic_lesion_counts(grade: int, rng: np.random.Generator) -> dict[str, int]:
    """Lesion counts drawn for ``grade`` (0-3), so the proxy's grades are balanced; checked by the rule."""
    if grade == 0:
        counts = dict.fromkeys(LESION_KINDS, 0)
    elif grade == 1:
        counts = {"microaneurysms": int(rng.integers(2, 16)), "haemorrhages": 0, "exudates": 0, "cotton_wool_spots": 0}
    elif grade == 2:
        counts = {
            "microaneurysms": int(rng.integers(0, 16)),
            "haemorrhages": int(rng.integers(0, SEVERE_HAEMORRHAGES // 2)),
            "exudates": int(rng.integers(0, 20)),
            "cotton_wool_spots": int(rng.integers(0, 3)),
        }
        if not (counts["haemorrhages"] or counts["exudates"] or counts["cotton_wool_spots"]):
            counts["haemorrhages"] = int(rng.integers(1, 4))
    elif grade == 3:
        counts = {
            "microaneurysms": int(rng.integers(5, 30)),
            "haemorrhages": int(rng.integers(SEVERE_HAEMORRHAGES, 2 * SEVERE_HAEMORRHAGES + 6)),
            "exudates": int(rng.integers(0, 40)),
            "cotton_wool_spots": int(rng.integers(0, 5)),
        }
    else:
        raise ValueError(f"the synthetic proxy has grades 0-3, not {grade}")
    assert synthetic_dr_grade(counts) == grade
    return counts


def field_mask(clean: np.ndarray) -> np.ndarray:
    """Boolean retinal mask of a field-of-view square: inside the inscribed disc and not black (a camera
    frame may cut the circle's top and bottom)."""
    h, w = clean.shape[:2]
    yy, xx = np.ogrid[:h, :w]
    radius = min(h, w) / 2.0
    disc = (xx - (w - 1) / 2) ** 2 + (yy - (h - 1) / 2) ** 2 <= radius**2
    return disc & (clean.max(axis=2) > 8)


# ---- loading --------------------------------------------------------------------


def load_cleaq(data: str | Path, *, image_dir: str | Path | None = None) -> CleaqDataset:
    """A pyfundus table folder, or an EyeQ / Messidor / APTOS / EyePACS label table (picked by its columns).

    Images are looked up in ``image_dir``, else ``images/`` beside the table, else the table's folder
    (APTOS: ``train_images/`` beside it, ``<id_code>.png``; EyePACS: ``<image>.jpeg``).
    """
    data = Path(data)
    if data.is_dir():
        table = data / TABLE_NAME
        if not table.exists():
            raise FileNotFoundError(f"{data}: no {TABLE_NAME} (build one with pyfundus data build-pairs) ")
        return _load_table(table)
    if not data.exists():
        raise FileNotFoundError(f"{data}: no such label table")
    rows = _read_table(data)
    columns = set(rows[0]) if rows else set()
    images = Path(image_dir) if image_dir is not None else None
    if {"image", "quality"} <= columns:
        return _eyeq(data, rows, images or _default_image_dir(data))
    if {"Image name", "Retinopathy grade"} <= columns:
        base = images or _default_image_dir(data)
        records = [
            CleaqRecord(image=base / r["Image name"], source_id=Path(r["Image name"]).stem,
                        dr_grade=int(float(r["Retinopathy grade"])))
            for r in rows
        ]  # fmt: skip
        return CleaqDataset(records, MESSIDOR_GRADES, "messidor")
    if {"id_code", "diagnosis"} <= columns:
        base = images or (data.parent / "train_images" if (data.parent / "train_images").is_dir() else data.parent)
        records = [
            CleaqRecord(image=_with_suffix(base / r["id_code"], ".png"), source_id=r["id_code"], dr_grade=int(r["diagnosis"]))
            for r in rows
        ]
        return CleaqDataset(records, ICDR_GRADES, "aptos")
    if {"image", "level"} <= columns:
        base = images or _default_image_dir(data)
        records = [
            CleaqRecord(image=_with_suffix(base / r["image"], ".jpeg"), source_id=r["image"].split("_")[0],
                        dr_grade=int(r["level"]))
            for r in rows
        ]  # fmt: skip
        return CleaqDataset(records, ICDR_GRADES, "eyepacs")
    raise ValueError(
        f"{data}: not a CLEAQ-DR table: expected a pyfundus folder ({TABLE_NAME}), EyeQ (image, quality[, DR_grade]), "
        f"Messidor (Image name, Retinopathy grade), APTOS (id_code, diagnosis) or EyePACS (image, level) columns; "
        f"found {', '.join(sorted(columns)) or 'none'}"
    )


def _eyeq(table: Path, rows: list[dict], images: Path) -> CleaqDataset:
    has_grades = "DR_grade" in rows[0]
    records = [
        CleaqRecord(
            image=images / r["image"],
            source_id=r["image"].split("_")[0],  # EyePACS names are <patient>_<eye>: one patient's eyes together
            quality=EYEQ_LEVELS[int(r["quality"])],
            dr_grade=int(r["DR_grade"]) if has_grades and r["DR_grade"] != "" else None,
        )
        for r in rows
    ]
    return CleaqDataset(records, ICDR_GRADES if has_grades else None, "eyeq")


def _with_suffix(path: Path, suffix: str) -> Path:
    return path if path.suffix else path.with_name(path.name + suffix)


def _load_table(table: Path) -> CleaqDataset:
    folder = table.parent
    info_path = folder / INFO_NAME
    info = json.loads(info_path.read_text()) if info_path.exists() else {}
    rows = _read_table(table)
    _require_columns(table, rows, ("image", "source_id"))

    def path(value: str) -> Path | None:
        return folder / value if value else None

    records = []
    for r in rows:
        quality = r.get("quality") or None
        if quality is not None and quality not in CLASSES:
            raise ValueError(f"{table}: quality {quality!r} is not one of {', '.join(CLASSES)}")
        records.append(
            CleaqRecord(
                image=folder / r["image"], source_id=r["source_id"], clean=path(r.get("clean", "")),
                vessels=path(r.get("vessels", "")), quality=quality,
                dr_grade=int(r["dr_grade"]) if r.get("dr_grade") else None,
                degradation=r.get("degradation", ""), cropped=True,
            )
        )  # fmt: skip
    scale = info.get("grade_scale")
    return CleaqDataset(records, GRADE_SCALES[scale] if scale else None, info.get("name", folder.name), info)


# ---- building pairs ---------------------------------------------------------------


@dataclass(frozen=True)
class _Source:
    source_id: str
    photo: str | None  # a real photo, or None for a synthetic fundus
    seed: int
    grade: int | None  # DR proxy: the grade its lesions are drawn for


def build_pairs(
    photos: Sequence[str | Path],
    out: str | Path,
    *,
    synthetic: int = 0,
    variants: int = 10,
    seed: int = 0,
    clean_fraction: float = CLEAN_FRACTION,
    dr_proxy: bool = False,
    camera_looks: bool = True,
    workers: int = 2,
    progress: bool = True,
) -> CleaqDataset:
    """Write degrade-restore pairs of ``photos`` and of ``synthetic`` synthetic fundi into ``out``.

    ``dr_proxy``: the synthetic fundi get DR lesions for a grade drawn uniformly from 0-3 and the table their
    grade (:func:`synthetic_dr_grade`). Every source gives ``variants`` pairs. The same arguments give the
    same files.
    """
    out = Path(out)
    if not 0.0 <= clean_fraction <= 1.0:
        raise ValueError(f"clean_fraction must be in [0, 1], got {clean_fraction}")
    for folder in ("images", "clean", "vessels"):
        (out / folder).mkdir(parents=True, exist_ok=True)
    grade_rng = np.random.default_rng([seed, 11])
    sources = [_Source(_photo_id(p), str(p), seed, None) for p in photos]
    sources += [
        _Source(f"synth{seed}-{i:05d}", None, seed * 1_000_003 + i, int(grade_rng.integers(4)) if dr_proxy else None)
        for i in range(synthetic)
    ]
    jobs = [(s, variants, clean_fraction, camera_looks, str(out)) for s in sources]
    rows: list[dict] = []
    with progress_bar(len(jobs), desc="building pairs", unit="source", enabled=progress) as bar:
        if workers > 1 and len(jobs) > 1:
            with ProcessPoolExecutor(max_workers=workers) as pool:
                for result in pool.map(_build_source, jobs):
                    rows.extend(result)
                    bar.update(1)
        else:
            for job in jobs:
                rows.extend(_build_source(job))
                bar.update(1)
    fields = ["image", "clean", "vessels", "quality", "dr_grade", "source_id", "degradation", "vessel_source", "mos"]
    with open(out / TABLE_NAME, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows({k: row[k] for k in fields} for row in rows)
    with open(out / RECORDS_NAME, "w") as handle:
        for row in rows:
            handle.write(json.dumps({"image": row["image"], "camera": row["camera"], "record": row["record"]}) + "\n")
    info = {
        "name": out.name,
        "grade_scale": "synthetic" if dr_proxy else None,
        "synthetic_sources": synthetic,
        "photos": [Path(p).name for p in photos],
        "variants": variants,
        "seed": seed,
        "clean_fraction": clean_fraction,
        "camera_looks": camera_looks,
        "size": SIZE,
    }
    (out / INFO_NAME).write_text(json.dumps(info, indent=2))
    return _load_table(out / TABLE_NAME)


def _photo_id(path: str | Path) -> str:
    digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()[:8]
    return f"{Path(path).stem}-{digest}"


def _build_source(job) -> list[dict]:
    source, variants, clean_fraction, camera_looks, out = job
    out = Path(out)
    if source.photo is not None:
        rgb = read_image(source.photo).pixels
        square = crop_to_field_of_view(rgb, find_field_of_view(rgb))
        clean = cv2.resize(square, (SIZE, SIZE), interpolation=cv2.INTER_AREA)
        vessels, vessel_source, grade = vessel_mask_from_photo(clean, field_mask(clean)), "frangi", None
    else:
        rng = np.random.default_rng([source.seed, 3])
        lesions = synthetic_lesion_counts(source.grade, rng) if source.grade is not None else False
        clean, params = generate_fundus(source.seed, size=SIZE, lesions=lesions)
        vessels, vessel_source = vessel_mask(params), "exact"
        grade = synthetic_dr_grade(params.lesion_counts) if source.grade is not None else None
    vessel_file = f"vessels/{source.source_id}.png"
    Image.fromarray((vessels * 255).astype(np.uint8)).save(out / vessel_file)
    rows = []
    for k in range(variants):
        rng = np.random.default_rng([source.seed, _stable_number(source.source_id), k])
        camera = replace(Camera.draw(rng), noise=0.0, jpeg_quality=0) if camera_looks else Camera()
        target = camera.render(clean)
        mask = field_mask(target)
        choice = rng.random()
        if choice < clean_fraction:
            degraded, record, name = target, None, "clean"
        elif choice < clean_fraction + (1 - clean_fraction) / 2:
            degraded, record = cofe_one_or_two(target, rng, mask=mask)
            name = "one_or_two:" + _code(record)
        else:
            degraded, record = cofe_all_three(target, rng, mask=mask)
            name = "all_three:" + _code(record)
        mos = proxy_mos([s["severity"] for s in record.steps] if record else [])
        stem = f"{source.source_id}_{k:03d}"
        Image.fromarray(degraded).save(out / "images" / f"{stem}.png", compress_level=1)
        Image.fromarray(target).save(out / "clean" / f"{stem}.png", compress_level=1)
        rows.append(
            {
                "image": f"images/{stem}.png", "clean": f"clean/{stem}.png", "vessels": vessel_file,
                "quality": PROXY_THRESHOLDS.classify(mos), "dr_grade": "" if grade is None else grade,
                "source_id": source.source_id, "degradation": name, "vessel_source": vessel_source,
                "mos": f"{mos:.2f}", "camera": camera.to_dict(), "record": None if record is None else record.to_json(),
            }
        )  # fmt: skip
    return rows


def _stable_number(text: str) -> int:
    """A number from a text that is the same in every process (str hashes are salted per process)."""
    return int(hashlib.sha256(text.encode()).hexdigest()[:8], 16)


def _code(record) -> str:
    """The cofe-Net code of a record's steps: blur, spots, illumination bits ('101' = blur + illumination)."""
    types = {step["type"] for step in record.steps}
    return "".join("1" if t in types else "0" for t in ("blur", "spots", "illumination"))

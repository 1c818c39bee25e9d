"""Labelled quality datasets (FQS, EyeQ, a generic folder + CSV) and image-level splits.

Every loader returns a list of ``QualityRecord``: one labelled image with the id
of the photo it came from, so that splits keep every version of a source photo
(its degraded copies, its crops) on one side of the split.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Literal, Sequence

import numpy as np

from ..verdicts import CLASSES

# EyeQ's documented coding (Fu et al., "Evaluation of retinal image quality assessment networks in
# different color-spaces", MICCAI 2019): 0 Good, 1 Usable, 2 Reject.
EYEQ_LEVELS = {0: "Good", 1: "Usable", 2: "Reject"}
# Our own tables number the classes in CLASSES order; pass this to load_fqs for them.
PYFUNDUS_LEVELS = dict(enumerate(CLASSES))


@dataclass
class QualityRecord:
    path: Path
    mos: float | None  # 0-100, None where a dataset has only classes (EyeQ)
    level: str | None  # "Good" / "Usable" / "Reject"
    source_id: str  # the photo it derives from: the unit a split keeps together
    causes: dict[str, float] = field(default_factory=dict)  # cause category -> severity (proxy data only)
    degradation: str = ""  # degradation types applied, "+"-joined (proxy data only), for per-type breakdowns


def load_fqs(table: str | Path, image_dir: str | Path, level_names: dict[int, str] | None = None) -> list[QualityRecord]:
    """FQS labels: CSV or XLSX with file_name, meanOpinionScore and qualityLevel.

    FQS does not document which qualityLevel number means which class, so the
    numbers are mapped only when ``level_names`` says how (Gong et al., arXiv:2411.12273).
    """
    rows = _read_table(table)
    _require_columns(table, rows, ("file_name", "meanOpinionScore"))
    records = []
    for row in rows:
        level = row.get("qualityLevel")
        name = level_names.get(int(float(level))) if (level_names and level not in (None, "")) else None
        records.append(
            QualityRecord(
                path=Path(image_dir) / row["file_name"],
                mos=float(row["meanOpinionScore"]),
                level=name,
                source_id=row.get("source_id") or Path(row["file_name"]).stem,
                causes=json.loads(row["causes"]) if row.get("causes") else {},
                degradation=row.get("degradation", ""),
            )
        )
    return records


def load_eyeq(label_csv: str | Path, image_dir: str | Path) -> list[QualityRecord]:
    """EyeQ labels (Label_EyeQ_train.csv / Label_EyeQ_test.csv): image, quality (0/1/2), DR_grade."""
    rows = _read_table(label_csv)
    _require_columns(label_csv, rows, ("image", "quality"))
    return [
        QualityRecord(
            path=Path(image_dir) / row["image"],
            mos=None,
            level=EYEQ_LEVELS[int(row["quality"])],
            # EyePACS names are <patient>_<eye>.jpeg: one patient's eyes stay together.
            source_id=row["image"].split("_")[0],
        )
        for row in rows
    ]


def load_folder_csv(
    table: str | Path,
    image_dir: str | Path | None = None,
    *,
    path_column: str = "path",
    score_column: str | None = "score",
    level_column: str | None = "class",
    source_column: str | None = None,
) -> list[QualityRecord]:
    """Your own labels: a CSV naming images (relative to ``image_dir`` or the CSV) with a score and/or a class."""
    rows = _read_table(table)
    base = Path(image_dir) if image_dir is not None else Path(table).parent
    _require_columns(table, rows, [path_column])
    records = []
    for row in rows:
        level = row.get(level_column) if level_column else None
        if level and level not in CLASSES:
            raise ValueError(f"{table}: class {level!r} is not one of {', '.join(CLASSES)}")
        score = row.get(score_column) if score_column else None
        records.append(
            QualityRecord(
                path=base / row[path_column],
                mos=float(score) if score not in (None, "") else None,
                level=level or None,
                source_id=(row.get(source_column) if source_column else None) or Path(row[path_column]).stem,
            )
        )
    return records


def split_records(
    records: Sequence[QualityRecord],
    *,
    protocol: Literal["paper", "kfold"] = "paper",
    seed: int = 0,
    round_index: int = 0,
    folds: int = 5,
    fractions: tuple[float, float, float] = (0.80, 0.15, 0.05),
) -> dict[str, list[QualityRecord]]:
    """Image-level split into train / test / val: no source photo on two sides.

    ``paper``: the FTHNet protocol, 80% train, 15% test, 5% validation of the
    source photos, a new shuffle per ``round_index`` (the paper ran 10 rounds).
    ``kfold``: fold ``round_index`` of ``folds`` is the test set, the rest train
    (val empty). The same seed and round always give the same split.
    """
    sources = sorted({r.source_id for r in records})
    rng = np.random.default_rng([seed, round_index] if protocol == "paper" else [seed])
    order = [sources[i] for i in rng.permutation(len(sources))]
    if protocol == "paper":
        if not math.isclose(sum(fractions), 1.0):
            raise ValueError(f"split fractions must sum to 1, got {fractions}")
        n_train = round(fractions[0] * len(order))
        n_test = round(fractions[1] * len(order))
        groups = {
            "train": set(order[:n_train]),
            "test": set(order[n_train : n_train + n_test]),
            "val": set(order[n_train + n_test :]),
        }
    elif protocol == "kfold":
        if not 0 <= round_index < folds:
            raise ValueError(f"fold {round_index} is out of range for {folds} folds")
        test = set(order[round_index::folds])
        groups = {"train": set(order) - test, "test": test, "val": set()}
    else:
        raise ValueError(f"protocol must be 'paper' or 'kfold', not {protocol!r}")
    return {name: [r for r in records if r.source_id in ids] for name, ids in groups.items()}


def load_records(data: str | Path, *, image_dir: str | Path | None = None) -> list[QualityRecord]:
    """Records from a folder in FQS layout (labels.csv + images/) or a label table, picked by its columns.

    FQS columns (file_name, meanOpinionScore): FQS loader; levels are named
    only for pyfundus' own tables (with a source_id column), because the
    original FQS does not document its level coding. EyeQ columns (image,
    quality): EyeQ loader. Anything else: the generic path/score/class loader.
    Images are looked up in ``image_dir``, else ``images/`` beside the table,
    else the table's folder.
    """
    data = Path(data)
    table = data / "labels.csv" if data.is_dir() else data
    if not table.exists():
        raise FileNotFoundError(f"{table}: label table not found (expected a folder with labels.csv, or a CSV)")
    columns = _columns(table)
    images = Path(image_dir) if image_dir is not None else _default_image_dir(table)
    if {"file_name", "meanOpinionScore"} <= columns or table.suffix.lower() in (".xlsx", ".xls"):
        return load_fqs(table, images, level_names=PYFUNDUS_LEVELS if "source_id" in columns else None)
    if {"image", "quality"} <= columns:
        return load_eyeq(table, images)
    return load_folder_csv(table, images)


def train_val_split(
    records: Sequence[QualityRecord], val_fraction: float, seed: int = 0
) -> tuple[list[QualityRecord], list[QualityRecord]]:
    """Train and validation sides by source photo: every trainer (network or baseline) sees the same split."""
    split = split_records(records, seed=seed, fractions=(1.0 - val_fraction, 0.0, val_fraction))
    return split["train"], split["val"]


def write_fqs_table(records: Iterable[QualityRecord], table: str | Path, image_dir: str | Path) -> None:
    """Write records in the FQS layout (plus the proxy columns), paths relative to ``image_dir``."""
    image_dir = Path(image_dir)
    with open(table, "w", newline="") as handle:
        writer = csv.DictWriter(
            handle,
            fieldnames=["file_name", "meanOpinionScore", "qualityLevel", "source_id", "degradation", "causes"],
        )
        writer.writeheader()
        for r in records:
            writer.writerow(
                {
                    "file_name": Path(r.path).relative_to(image_dir).as_posix(),
                    "meanOpinionScore": f"{r.mos:.2f}",
                    "qualityLevel": CLASSES.index(r.level) if r.level else "",
                    "source_id": r.source_id,
                    "degradation": r.degradation,
                    "causes": json.dumps(r.causes, sort_keys=True),
                }
            )


def _read_table(path: str | Path) -> list[dict[str, str]]:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: label table not found")
    if path.suffix.lower() in (".xlsx", ".xls"):
        try:
            import openpyxl
        except ImportError as exc:
            raise ImportError(f"{path}: reading XLSX needs openpyxl (pip install openpyxl)") from exc
        sheet = openpyxl.load_workbook(path, read_only=True).active
        rows = list(sheet.iter_rows(values_only=True))
        header = [str(h) for h in rows[0]]
        return [{h: ("" if v is None else str(v)) for h, v in zip(header, row)} for row in rows[1:]]
    with open(path, newline="", encoding="utf-8-sig") as handle:
        return list(csv.DictReader(handle))


def _columns(table: Path) -> set[str]:
    if table.suffix.lower() in (".xlsx", ".xls"):
        return set()  # only FQS ships as XLSX; its loader checks the columns
    with open(table, newline="", encoding="utf-8-sig") as handle:
        return set(next(csv.reader(handle), []))


def _default_image_dir(table: Path) -> Path:
    images = table.parent / "images"
    return images if images.is_dir() else table.parent


def _require_columns(table, rows: list[dict], columns: Iterable[str]) -> None:
    present = set(rows[0]) if rows else set()
    missing = [c for c in columns if c not in present]
    if missing:
        raise ValueError(f"{table}: missing column(s) {', '.join(missing)}; found {', '.join(sorted(present)) or 'none'}")

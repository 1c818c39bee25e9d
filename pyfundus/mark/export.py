"""A rated dataset out in the FQS layout, ready for ``pyfundus train``, ``pyfundus calibrate`` and ``pyfundus adapt``.

OUT/
  labels.csv        file_name, meanOpinionScore, qualityLevel (0 Good, 1 Usable, 2 Reject), source_id, ...:
                    the raters' aggregate with the admin's adjustments applied (pyfundus.data.datasets.write_fqs_table)
  images/           the rated images (hard links where the file system allows, else copies)
  good/ usable/ reject/   each class's images again (hard links to images/), for calibrate and adapt
  ratings.csv       every opinion in the long format, plus whether it was blind and when it was given
  mos.csv           the raters' aggregate alone: what `pyfundus mark aggregate OUT/ratings.csv` gives
  adjustments.csv   the images whose score was adjusted after discussion: before, after, by whom and why
  mos_histogram.png, sd_histogram.png

Images in sub-folders of the dataset are named with ``__`` for ``/`` (``day1/a.jpg`` is ``day1__a.jpg``), so
every folder of the export is flat.
"""

from __future__ import annotations

import csv
import os
import shutil
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable

from ..data.datasets import QualityRecord, write_fqs_table
from ..verdicts import CLASSES, iso_time
from .aggregate import DEFAULT_SD_THRESHOLD, ImageResult, aggregate, plot_histograms, write_mos, write_ratings
from .store import Image, MarkError, Store

CLASS_FOLDERS = {level: level.lower() for level in CLASSES}  # good/, usable/, reject/
ADJUSTMENT_COLUMNS = ("file_name", "raters_mos", "raters_level", "meanOpinionScore", "qualityLevel", "adjusted_by",
                      "reason", "adjusted_at")  # fmt: skip


def export_name(path: str) -> str:
    """An image's file name in the export: its dataset path with '/' as '__'."""
    return path.replace("/", "__")


@dataclass
class Collected:
    """The dataset's opinions aggregated, with what the export and the admin's page need beside them."""

    results: list[ImageResult]  # file_name: the export name
    images: dict[str, Image]  # export name -> image
    adjustments: dict[str, dict[str, Any]]  # export name -> the latest adjustment
    opinion_meta: dict[tuple[str, str], dict[str, Any]]  # (export name, rater) -> blind, updated_at

    def final(self, result: ImageResult) -> tuple[float, str]:
        """The image's score and class after discussion: the adjustment if there is one, else the raters'."""
        adjusted = self.adjustments.get(result.file_name)
        return (adjusted["score"], adjusted["level"]) if adjusted else (result.mos, result.level)


def collect(store: Store, *, paper_formula: bool = False, min_raters: int = 1) -> Collected:
    """Aggregate every image of the rating set with at least ``min_raters`` opinions."""
    rows = store.all_opinions()
    counts: dict[str, int] = {}
    for image, _, _ in rows:
        counts[image.path] = counts.get(image.path, 0) + 1
    kept = [row for row in rows if counts[row[0].path] >= min_raters]
    images = {export_name(image.path): image for image, _, _ in kept}
    if len(images) != len({image.path for image, _, _ in kept}):
        clash = sorted(name for name in images if "__" in name)
        raise MarkError(f"two images would share an export name ({', '.join(clash[:3])}...): rename one")
    opinions = [replace(opinion, file_name=export_name(image.path)) for image, opinion, _ in kept]
    meta = {(export_name(image.path), opinion.rater): extra for image, opinion, extra in kept}
    by_id = {image.id: name for name, image in images.items()}
    adjustments = {by_id[image_id]: a for image_id, a in store.adjustments().items() if image_id in by_id}
    return Collected(aggregate(opinions, paper_formula=paper_formula), images, adjustments, meta)


def export_dataset(store: Store, out: str | Path, *, min_raters: int = 1, paper_formula: bool = False,
                   sd_threshold: float = DEFAULT_SD_THRESHOLD, plots: bool = True,
                   progress: Callable[[int], None] | None = None) -> dict[str, Any]:  # fmt: skip
    """Write the export (see the module docstring) to a new or empty folder; returns what was written."""
    out = Path(out).resolve()
    if out == store.dataset or store.dataset in out.parents:
        raise MarkError(f"{out}: export outside the dataset folder, or its images would be scanned as new captures")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise MarkError(f"{out}: not an empty folder; export into a new one")
    collected = collect(store, paper_formula=paper_formula, min_raters=min_raters)
    if not collected.results:
        raise MarkError(f"{store.dataset}: no image has {min_raters} or more opinions yet; nothing to export")
    missing = [name for name, image in collected.images.items() if not (store.dataset / image.path).is_file()]
    if missing:
        raise MarkError(f"{len(missing)} rated image(s) are gone from {store.dataset}, e.g. "
                        f"{collected.images[missing[0]].path}; put them back (the next scan marks them gone)")  # fmt: skip

    image_dir = out / "images"
    for folder in (image_dir, *(out / name for name in CLASS_FOLDERS.values())):
        folder.mkdir(parents=True, exist_ok=True)
    records, linked = [], set()
    for result in collected.results:
        name = result.file_name
        linked.add(_link_or_copy(store.dataset / collected.images[name].path, image_dir / name))
        score, level = collected.final(result)
        _link_or_copy(image_dir / name, out / CLASS_FOLDERS[level] / name)
        records.append(QualityRecord(path=image_dir / name, mos=score, level=level, source_id=Path(name).stem))
        if progress is not None:
            progress(1)
    write_fqs_table(records, out / "labels.csv", image_dir)
    with open(out / "mos.csv", "w", newline="", encoding="utf-8") as f:
        write_mos(collected.results, f)
    with open(out / "ratings.csv", "w", newline="", encoding="utf-8") as f:
        write_ratings(_rating_rows(collected), f, extra=("blind", "updated_at"))
    with open(out / "adjustments.csv", "w", newline="", encoding="utf-8") as f:
        _write_adjustments(collected, f)
    written = ["labels.csv", "mos.csv", "ratings.csv", "adjustments.csv", "images/",
               *(f"{folder}/" for folder in CLASS_FOLDERS.values())]  # fmt: skip
    if plots:
        written += [p.name for p in plot_histograms(collected.results, out, sd_threshold)]
    classes = {level: sum(r.level == level for r in records) for level in CLASSES}
    return {
        "out": str(out),
        "images": len(records),
        "opinions": sum(r.n_raters for r in collected.results),
        "classes": classes,
        "adjusted": len(collected.adjustments),
        "disagreements": sum(r.disputed(sd_threshold) for r in collected.results),
        "formula": "paper" if paper_formula else "weighted",
        "files": "hard links" if linked == {"linked"} else "copies" if linked == {"copied"} else "links and copies",
        "written": written,
        "use": _next_commands(out, classes),
    }


def _rating_rows(collected: Collected) -> list[dict[str, Any]]:
    rows = []
    for result in collected.results:
        for o in result.opinions:
            meta = collected.opinion_meta[(o.file_name, o.rater)]
            blind = "" if meta["blind"] is None else str(bool(meta["blind"])).lower()
            rows.append({**asdict(o), "blind": blind, "updated_at": iso_time(meta["updated_at"])})
    return rows


def _write_adjustments(collected: Collected, stream) -> None:
    writer = csv.DictWriter(stream, fieldnames=ADJUSTMENT_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for result in collected.results:
        adjusted = collected.adjustments.get(result.file_name)
        if adjusted:
            writer.writerow({
                "file_name": result.file_name, "raters_mos": f"{result.mos:.2f}", "raters_level": result.level,
                "meanOpinionScore": f"{adjusted['score']:.2f}", "qualityLevel": adjusted["level"],
                "adjusted_by": adjusted["by_rater"], "reason": adjusted["reason"], "adjusted_at": iso_time(adjusted["at"]),
            })  # fmt: skip


def _next_commands(out: Path, classes: dict[str, int]) -> list[str]:
    graded = " ".join(f"--{level.lower()} {out / CLASS_FOLDERS[level]}" for level in CLASSES if classes[level])
    commands = [f"pyfundus train --data {out}"]
    if sum(1 for n in classes.values() if n) >= 2:
        commands.append(f"pyfundus calibrate {graded}")
    if classes["Good"]:
        commands.append(f"pyfundus adapt --good {out / CLASS_FOLDERS['Good']}")
    return commands


def _link_or_copy(source: Path, target: Path) -> str:
    """A hard link (no extra space, same bytes), or a copy where the file system refuses links."""
    try:
        os.link(source, target)
        return "linked"
    except OSError:
        shutil.copy2(source, target)
        return "copied"

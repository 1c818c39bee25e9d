"""From raters' opinions to a mean opinion score, a class, the raters' spread and a disagreement queue.

FQS (Gong et al., arXiv:2411.12273) had three experienced and three junior
raters score every image 0-100 and grade it Good / Usable / Reject, and
defined MOS = 0.22 x (sum of the senior scores) + 0.11 x (sum of the junior
scores). pyfundus uses the rule behind it for any number of raters: the mean
with weight 2 per senior and 1 per junior opinion. With 3 + 3 raters that is
(2 S + J) / 9 = 0.2222 S + 0.1111 J; the paper's coefficients are those
rounded to two places, so its MOS is exactly 0.99 times this one.
``paper_formula=True`` gives the paper's sum as published (3 + 3 raters only).

The class is a weighted majority vote with the same weights; a tie goes to the
lower quality (a Reject-or-Usable image is Reject), so a tie never passes a
capture that half the weight would have stopped. The spread is the sample
standard deviation (n - 1) of the raw scores, unweighted: it says how far the
raters were apart, whoever they were.

Nothing here touches the rating app's database: ``pyfundus mark aggregate``
runs it on a CSV, and the app and its export run it on the same rows.
"""

from __future__ import annotations

import csv
import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence, TextIO

from ..verdicts import CLASSES

RATER_LEVELS = ("senior", "junior")
LEVEL_WEIGHTS = {"senior": 2, "junior": 1}
PAPER_COEFFICIENTS = {"senior": 0.22, "junior": 0.11}
PAPER_RATERS = {"senior": 3, "junior": 3}  # the only panel the paper's sum is on the 0-100 scale for

# The long format: one opinion per row. It is what `pyfundus mark aggregate` and `mark import-ratings`
# read and what the export writes (ratings.csv); extra columns are allowed and ignored on reading.
RATINGS_COLUMNS = ("file_name", "rater", "rater_level", "score", "level")
MOS_COLUMNS = ("file_name", "meanOpinionScore", "qualityLevel", "sd", "n_raters")

# FQS raters' per-image SD has a median of 4.3 points (pyfundus.grading); 10 is well past typical spread.
DEFAULT_SD_THRESHOLD = 10.0
HISTOGRAM_FILES = ("mos_histogram.png", "sd_histogram.png")


class RatingsError(ValueError):
    """A ratings table that cannot be used; the message names the file, the line and the problem."""


@dataclass(frozen=True)
class Opinion:
    """One rater's opinion of one image."""

    file_name: str
    rater: str
    rater_level: str  # "senior" or "junior"
    score: int  # 0-100
    level: str  # one of CLASSES


@dataclass
class ImageResult:
    """The aggregate of one image's opinions."""

    file_name: str
    mos: float
    level: str
    sd: float | None  # None with a single opinion
    opinions: list[Opinion] = field(default_factory=list)

    @property
    def n_raters(self) -> int:
        return len(self.opinions)

    @property
    def classes_disagree(self) -> bool:
        return len({o.level for o in self.opinions}) > 1

    def disputed(self, sd_threshold: float) -> bool:
        """For discussion: the raters' SD is above the threshold, or they chose different classes."""
        return self.classes_disagree or (self.sd is not None and self.sd > sd_threshold)

    def to_row(self) -> dict[str, Any]:
        """One row of mos.csv (MOS_COLUMNS)."""
        return {
            "file_name": self.file_name,
            "meanOpinionScore": f"{self.mos:.2f}",
            "qualityLevel": self.level,
            "sd": "" if self.sd is None else f"{self.sd:.2f}",
            "n_raters": self.n_raters,
        }


def mean_opinion_score(opinions: Sequence[Opinion], *, paper_formula: bool = False) -> float:
    """Weighted mean (2 per senior, 1 per junior), or with ``paper_formula`` the FQS sum (3 + 3 raters)."""
    if not opinions:
        raise ValueError("no opinions to aggregate")
    if paper_formula:
        counts = {level: sum(o.rater_level == level for o in opinions) for level in RATER_LEVELS}
        if counts != PAPER_RATERS:
            raise ValueError(
                f"{opinions[0].file_name}: the paper's formula needs 3 senior and 3 junior opinions, this image "
                f"has {counts['senior']} senior and {counts['junior']} junior (drop --paper-formula for the "
                "weighted mean, which takes any panel)"
            )
        return sum(PAPER_COEFFICIENTS[o.rater_level] * o.score for o in opinions)
    total = sum(LEVEL_WEIGHTS[o.rater_level] for o in opinions)
    return sum(LEVEL_WEIGHTS[o.rater_level] * o.score for o in opinions) / total


def vote_level(opinions: Sequence[Opinion]) -> str:
    """Weighted majority class; a tie goes to the lower quality (Reject below Usable below Good)."""
    weight = dict.fromkeys(CLASSES, 0)
    for o in opinions:
        weight[o.level] += LEVEL_WEIGHTS[o.rater_level]
    best = max(weight.values())
    return [level for level in CLASSES if weight[level] == best][-1]  # CLASSES runs best quality first


def rater_sd(scores: Sequence[float]) -> float | None:
    """Sample standard deviation (n - 1) of the raters' scores; None for fewer than two."""
    return statistics.stdev(scores) if len(scores) > 1 else None


def aggregate(opinions: Iterable[Opinion], *, paper_formula: bool = False) -> list[ImageResult]:
    """Every image's MOS, class and spread, sorted by file name."""
    by_image: dict[str, list[Opinion]] = defaultdict(list)
    for opinion in opinions:
        by_image[opinion.file_name].append(opinion)
    return [
        ImageResult(
            file_name=name,
            mos=mean_opinion_score(group, paper_formula=paper_formula),
            level=vote_level(group),
            sd=rater_sd([o.score for o in group]),
            opinions=sorted(group, key=lambda o: o.rater),
        )
        for name, group in sorted(by_image.items())
    ]


def disagreements(results: Iterable[ImageResult], sd_threshold: float = DEFAULT_SD_THRESHOLD) -> list[ImageResult]:
    """The images to discuss, widest spread first."""
    disputed = [r for r in results if r.disputed(sd_threshold)]
    return sorted(disputed, key=lambda r: (-(r.sd or 0.0), r.file_name))


def summary(results: Sequence[ImageResult], sd_threshold: float = DEFAULT_SD_THRESHOLD) -> dict[str, Any]:
    """Counts for a report: images, opinions, classes, the spread, how many to discuss."""
    sds = [r.sd for r in results if r.sd is not None]
    return {
        "images": len(results),
        "opinions": sum(r.n_raters for r in results),
        "raters": len({o.rater for r in results for o in r.opinions}),
        "classes": {level: sum(r.level == level for r in results) for level in CLASSES},
        "median_sd": statistics.median(sds) if sds else None,
        "sd_threshold": sd_threshold,
        "disagreements": sum(r.disputed(sd_threshold) for r in results),
    }


# ---- files ------------------------------------------------------------------------


def read_ratings(path: str | Path) -> list[Opinion]:
    """Opinions from a long-format CSV (RATINGS_COLUMNS); any bad row stops with its file and line."""
    path = Path(path)
    try:
        handle = open(path, newline="", encoding="utf-8-sig")
    except FileNotFoundError:
        raise RatingsError(f"{path}: no such file") from None
    except OSError as exc:
        raise RatingsError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    with handle:
        reader = csv.DictReader(handle)
        missing = [c for c in RATINGS_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            found = ", ".join(reader.fieldnames or []) or "none (empty file?)"
            raise RatingsError(
                f"{path}: missing column(s) {', '.join(missing)}; the header must hold "
                f"{','.join(RATINGS_COLUMNS)} (found: {found})"
            )
        opinions = [_opinion(row, path, reader.line_num) for row in reader]
    _check_consistent(opinions, path)
    if not opinions:
        raise RatingsError(f"{path}: no opinions (only a header)")
    return opinions


def _opinion(row: dict[str, str], path: Path, line: int) -> Opinion:
    where = f"{path}, line {line}"
    values = {column: (row.get(column) or "").strip() for column in RATINGS_COLUMNS}
    for column in ("file_name", "rater"):
        if not values[column]:
            raise RatingsError(f"{where}: {column} is empty")
    if values["rater_level"] not in RATER_LEVELS:
        raise RatingsError(f"{where}: rater_level {values['rater_level']!r} is not senior or junior")
    if values["level"] not in CLASSES:
        raise RatingsError(f"{where}: level {values['level']!r} is not one of {', '.join(CLASSES)}")
    return Opinion(
        file_name=values["file_name"],
        rater=values["rater"],
        rater_level=values["rater_level"],
        score=parse_score(values["score"], where),
        level=values["level"],
    )


def parse_score(text: Any, where: str) -> int:
    """An integer 0-100 (raters score in whole points, as in FQS); anything else names ``where``."""
    try:
        score = int(str(text).strip())
    except ValueError:
        raise RatingsError(f"{where}: score {text!r} is not a whole number 0-100") from None
    if not 0 <= score <= 100:
        raise RatingsError(f"{where}: score {score} is outside 0-100")
    return score


def _check_consistent(opinions: Sequence[Opinion], path: Path) -> None:
    seen: set[tuple[str, str]] = set()
    levels: dict[str, str] = {}
    for o in opinions:
        if (o.file_name, o.rater) in seen:
            raise RatingsError(f"{path}: rater {o.rater!r} has two opinions of {o.file_name!r}; keep one")
        seen.add((o.file_name, o.rater))
        if levels.setdefault(o.rater, o.rater_level) != o.rater_level:
            raise RatingsError(f"{path}: rater {o.rater!r} is listed both as {levels[o.rater]} and {o.rater_level}")


def write_mos(results: Iterable[ImageResult], stream: TextIO) -> None:
    writer = csv.DictWriter(stream, fieldnames=MOS_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(r.to_row() for r in results)


def write_ratings(rows: Iterable[dict[str, Any]], stream: TextIO, extra: Sequence[str] = ()) -> None:
    """The long format, with ``extra`` columns after the standard five."""
    writer = csv.DictWriter(stream, fieldnames=[*RATINGS_COLUMNS, *extra], lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)


def plot_histograms(results: Sequence[ImageResult], out_dir: str | Path, sd_threshold: float) -> list[Path]:
    """mos_histogram.png (one bar colour per class) and sd_histogram.png (the threshold marked)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise RuntimeError("the histograms need matplotlib: pip install 'pyfundus[train]'") from exc
    out_dir = Path(out_dir)
    colours = {"Good": "#17803d", "Usable": "#f2a900", "Reject": "#c62828"}  # the operator page's
    mos_path, sd_path = (out_dir / name for name in HISTOGRAM_FILES)

    fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=100)
    ax.hist([[r.mos for r in results if r.level == level] for level in CLASSES], bins=range(0, 105, 5),
            stacked=True, color=[colours[c] for c in CLASSES], label=list(CLASSES))  # fmt: skip
    ax.set(xlabel="mean opinion score", ylabel="images", xlim=(0, 100),
           title=f"MOS of {len(results)} images, coloured by the raters' class")  # fmt: skip
    ax.legend()
    fig.tight_layout()
    fig.savefig(mos_path)
    plt.close(fig)

    sds = [r.sd for r in results if r.sd is not None]
    fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=100)
    ax.hist(sds, bins=range(0, int(max(sds, default=0) // 2 * 2) + 4, 2), color="#555")
    ax.axvline(sd_threshold, color="#c62828", linestyle="--", label=f"disagreement threshold {sd_threshold:g}")
    ax.set(xlabel="raters' standard deviation (score points)", ylabel="images",
           title=f"Rater spread of {len(sds)} images with two or more opinions")  # fmt: skip
    ax.legend()
    fig.tight_layout()
    fig.savefig(sd_path)
    plt.close(fig)
    return [mos_path, sd_path]

"""Bringing opinions and captures into a rating dataset: a CSV of existing opinions, and the daemon's ledger.

Opinions (``pyfundus mark import-ratings``) come in the long format of
``pyfundus mark aggregate`` (file_name, rater, rater_level, score, level).
A rater without an account gets one that cannot log in (``pyfundus mark user
edit NAME --password`` lets them in later); an image must already be in the
dataset folder. The whole file is checked before anything is stored.

Captures (``pyfundus mark import-ledger``) come from ``pyfundus watch``'s
ledger: each scored capture whose file still holds the bytes that were
scored is copied into the dataset folder (the camera folder may be cleaned
later) and queued for rating, with the daemon model's score kept for the view
after a rater commits and for the uncertain-first order. The operator's
clicks on the operator page ("Fine as it is", "Retake anyway", the ledger's
``labels``) are kept as hints (Good, Reject), shown after commit too, never
before.
"""

from __future__ import annotations

import hashlib
import shutil
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

from ..verdicts import FEEDBACK_LEVEL
from .aggregate import read_ratings
from .export import export_name
from .store import MarkError, Store


def import_ratings(store: Store, table: str | Path, *, actor: str) -> dict[str, Any]:
    """Store every opinion of a long-format CSV; returns counts (added, changed, unchanged, new raters)."""
    opinions = read_ratings(table)
    by_name = _images_by_name(store)
    unknown = sorted({o.file_name for o in opinions if o.file_name not in by_name})
    if unknown:
        shown = ", ".join(unknown[:5]) + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else "")
        raise MarkError(f"{table}: {len(unknown)} file_name(s) are not images of the dataset {store.dataset}: {shown}")
    raters = {r.name.lower(): r for r in store.raters()}
    for o in opinions:
        known = raters.get(o.rater.lower())
        if known is not None and known.level != o.rater_level:
            raise MarkError(f"{table}: rater {o.rater!r} is {o.rater_level} here but {known.level} in the dataset")
    new_raters = sorted({o.rater for o in opinions if o.rater.lower() not in raters})
    for name in new_raters:
        level = next(o.rater_level for o in opinions if o.rater == name)
        raters[name.lower()] = store.add_rater(name, level, None, actor=actor)
    before = {(r.name.lower(), image_id) for r in raters.values() for image_id in store.opinions_of(r)}
    counts = {"opinions": len(opinions), "added": 0, "changed": 0, "unchanged": 0, "new_raters": new_raters}
    for o in opinions:
        rater, image_id = raters[o.rater.lower()], by_name[o.file_name]
        stored = store.set_opinion(rater, image_id, o.score, o.level, actor=actor, imported=True)
        counts["unchanged" if not stored else "changed" if (rater.name.lower(), image_id) in before else "added"] += 1
    store.note(actor, "import.ratings", None, {"file": str(table), **counts})
    return counts


@dataclass
class LedgerCaptures:
    """What the daemon's ledger holds: its path, every capture's verdict with the paths it was seen at, and
    every click of the operator's feedback: (sha256, "fine" or "retake", unix time)."""

    path: Path
    captures: list[tuple[Any, list[str]]]
    labels: list[tuple[str, str, float]]


def read_ledger(state_dir: str | Path) -> LedgerCaptures:
    """Every capture in ``pyfundus watch``'s ledger (read-only: safe while the daemon runs)."""
    from ..daemon.errors import LedgerError
    from ..daemon.ledger import Ledger
    from ..daemon.statedir import LEDGER_NAME

    path = Path(state_dir) / LEDGER_NAME
    if not path.exists():
        raise MarkError(f"no ledger in {state_dir} (expected {path}); give the daemon's --state-dir")
    try:
        ledger = Ledger(path, readonly=True)
        try:
            return LedgerCaptures(path, ledger.captures(), ledger.labels())
        finally:
            ledger.close()
    except LedgerError as exc:
        raise MarkError(str(exc)) from exc


def import_ledger(store: Store, ledger: LedgerCaptures, *, actor: str, since: datetime | None = None,
                  progress: Callable[[int], None] | None = None) -> dict[str, Any]:  # fmt: skip
    """Copy the ledger's scored captures into the dataset folder and queue them; returns counts."""
    captures = ledger.captures
    counts = {"captures": len(captures), "added": 0, "already": 0, "not_scored": 0, "older": 0, "file_gone": 0}
    known = {image.sha256: image for image in store.images()}
    scores: dict[str, list] = {}  # model -> (image id, score, class, probabilities)
    for verdict, paths in captures:
        if progress is not None:
            progress(1)
        if verdict.state != "scored":  # failed (unreadable) or still pending
            counts["not_scored"] += 1
            continue
        if since is not None and verdict.first_seen < since.timestamp():
            counts["older"] += 1
            continue
        image = known.get(verdict.sha256)
        if image is not None:
            counts["already"] += 1
            image_id = image.id
        else:
            source = _file_with(paths, verdict.sha256)
            if source is None:
                counts["file_gone"] += 1
                continue
            image_id, _ = store.register_file(_copy_in(source, store.dataset), "ledger")
            counts["added"] += 1
        scores.setdefault(verdict.model or "daemon", []).append(
            (image_id, verdict.score, verdict.quality_class, verdict.probabilities)
        )
    for model, rows in scores.items():
        store.set_model_scores(model, rows)
    counts["hints"] = _import_labels(store, ledger.labels)
    store.note(actor, "import.ledger", None, {"ledger": str(ledger.path), **counts})
    return counts


def _import_labels(store: Store, labels: list[tuple[str, str, float]]) -> int:
    """The operator's clicks as hints on the images they are about; returns how many hints are new."""
    images = {image.sha256: image.id for image in store.images()}
    words = {"fine": "fine as it is", "retake": "retake anyway"}
    added = 0
    for sha256, label, at in labels:
        image_id = images.get(sha256)
        if image_id is not None and label in FEEDBACK_LEVEL:
            added += store.add_hint(image_id, "operator", FEEDBACK_LEVEL[label], words[label], at)
    return added


def _images_by_name(store: Store) -> dict[str, int]:
    """Image ids by their path in the dataset and by their name in an export (the same when the folder is flat)."""
    names: dict[str, int] = {}
    for image in store.images():
        names[image.path] = image.id
        names.setdefault(export_name(image.path), image.id)
    return names


def _file_with(paths: list[str], sha256: str) -> Path | None:
    """The first path that still holds exactly the content the ledger scored."""
    for candidate in paths:
        try:
            data = Path(candidate).read_bytes()
        except OSError:
            continue
        if hashlib.sha256(data).hexdigest() == sha256:
            return Path(candidate)
    return None


def _copy_in(source: Path, dataset: Path) -> Path:
    """Copy a capture to the dataset folder under its own name; a name taken gets ' (1)', ' (2)'..."""
    target = dataset / source.name
    n = 0
    while target.exists():
        n += 1
        target = dataset / f"{source.stem} ({n}){source.suffix}"
    shutil.copy2(source, target)
    return target


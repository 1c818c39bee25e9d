"""The verdict vocabulary and record: classes, causes, the operator's actions, one record, one CSV/JSON schema.

Every part of pyfundus that says something about a capture says it with the
words and the record defined here: ``pyfundus score`` (table, ``--json``,
``--csv``), the daemon's ledger, stdout, sidecars, alerts and operator page,
``pyfundus results export``, evaluation and the BRISQUE baseline.

This module imports nothing heavy (no torch, no numpy): the daemon, the web
page and the BRISQUE feature workers all read it.
"""

from __future__ import annotations

import csv
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime
from typing import Any, Iterable, TextIO

# The three grades, best first; a verdict's class is one of these (None when it could not be scored).
CLASSES = ("Good", "Usable", "Reject")
# The outcome of a capture that could not be scored (unreadable, truncated, no retina, scorer error).
FAILED = "Failed"
OUTCOMES = (*CLASSES, FAILED)

# Why a capture is poor, as the cause head names it, and what the operator can do about each.
CAUSES = ("blur", "illumination", "artefacts", "haze", "exposure", "occlusion", "framing")
ACTIONS: dict[str, str] = {
    "blur": "refocus and hold still",
    "illumination": "re-align with the pupil; dilate if the pupil is small",
    "artefacts": "clean the lens; retake",
    "haze": "media opacity suspected: note for the grader",
    "exposure": "adjust flash/exposure",
    "occlusion": "ask the patient to open wide; lift the lid",
    "framing": "centre the optic disc/macula in view",
}

# A record's state: scored or failed; the daemon's ledger also holds captures still pending.
SCORED, FAILED_STATE, PENDING = "scored", "failed", "pending"

# ``scored_by`` of a verdict computed in the process that records it.
LOCAL = "local"


def reason_for(quality_class: str | None, causes: dict[str, float] | None) -> str | None:
    """One actionable reason for a Usable or Reject verdict: the cause with the highest predicted severity."""
    if quality_class in (None, "Good") or not causes:
        return None
    cause = max(causes, key=causes.__getitem__)
    return f"{cause}: {ACTIONS[cause]}"


@dataclass
class ScoreResult:
    """One capture's verdict. ``error`` is set (and score/class are None) when it could not be scored.

    The daemon's ledger record (:class:`pyfundus.daemon.records.Verdict`) extends this one with
    when and where the capture was seen; both write the same JSON and CSV (:data:`RECORD_FIELDS`).
    """

    path: str | None
    sha256: str | None = None  # of the bytes that were decoded and scored (None for in-memory images)
    score: float | None = None
    quality_class: str | None = None
    probabilities: dict[str, float] | None = None
    reason: str | None = None  # for Usable/Reject: the most likely cause and what to do about it
    causes: dict[str, float] | None = None  # predicted severity per cause, when the model has a cause head
    camera: str | None = None  # the camera's maker and model from DICOM or EXIF ("unknown" when not said)
    eye: str | None = None  # "L" or "R" (DICOM ImageLaterality), None when the file does not say
    patient_id: str | None = None
    study_uid: str | None = None
    sop_instance_uid: str | None = None
    model: str | None = None
    model_sha256: str | None = None  # of the model file that scored it: which weights, exactly
    trained: bool | None = None
    backend: str | None = None  # runtime, precision and device that computed the score
    # Where the score was computed: "local" (this process), "ray:<node address>/<node id>" (an actor of
    # `pyfundus score --engine ray`) or a scoring server's URL (`pyfundus watch --remote`).
    scored_by: str | None = LOCAL
    timing_ms: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    error: str | None = None
    # With an error: the file may still be being written (it ends before its content does). Not part of the
    # record: a watcher uses it to wait for the rest of the file instead of recording a failure.
    incomplete: bool = False

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def state(self) -> str:
        return FAILED_STATE if self.error is not None else SCORED

    @property
    def outcome(self) -> str | None:
        """Good, Usable, Reject, or Failed for a capture that could not be scored (None while pending)."""
        if self.state == FAILED_STATE:
            return FAILED
        return self.quality_class

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready record with every key of :data:`RECORD_FIELDS`; the class is under ``class``."""
        record = dict.fromkeys(RECORD_FIELDS)
        record.update(asdict(self))
        record["class"] = record.pop("quality_class")
        record["state"] = self.state
        return {key: record[key] for key in RECORD_FIELDS}

    @classmethod
    def from_dict(cls, record: dict[str, Any]) -> ScoreResult:
        """The result a record (``to_dict()``, e.g. a scoring server's answer) stands for; the keys
        this class has no field for (the ledger's) are left out."""
        names = {f.name for f in fields(cls)} - {"quality_class", "incomplete"}
        return cls(quality_class=record.get("class"), **{key: record[key] for key in names if key in record})


# The record's keys, in the order JSON output and the CSV columns follow. Fields that do not apply
# to an output are null: ``pyfundus score`` has no first_seen, a pending ledger row has no score.
RECORD_FIELDS = (
    "path", "sha256", "state", "score", "class", "probabilities", "reason", "causes", "camera", "eye", "patient_id",
    "study_uid", "sop_instance_uid", "model", "model_sha256", "trained", "backend", "scored_by", "timing_ms", "warnings",
    "error", "first_seen", "scored_at", "duplicate_of", "other_paths", "same_instance_as", "reject_copy", "feedback",
    "feedback_at",
)  # fmt: skip

# The operator's word on a verdict, from the operator page: the capture is fine as it is, or needs a retake anyway.
FEEDBACK = ("fine", "retake")
# The grade each word gives the capture where it is learnt from (pyfundus adapt) or shown as a hint (pyfundus mark).
FEEDBACK_LEVEL = dict(zip(FEEDBACK, ("Good", "Reject")))

# The CSV flattens the nested fields: probabilities into p_good/p_usable/p_reject, timing_ms into
# total_ms/latency_ms, lists into ";"-joined text; causes stay in the JSON only.
CSV_COLUMNS = (
    "path", "sha256", "state", "score", "class", "p_good", "p_usable", "p_reject", "reason", "camera", "eye",
    "patient_id", "study_uid", "sop_instance_uid", "model", "model_sha256", "trained", "backend", "scored_by",
    "total_ms", "latency_ms", "warnings", "error",
    "first_seen", "scored_at", "duplicate_of", "other_paths", "same_instance_as", "reject_copy", "feedback",
    "feedback_at",
)  # fmt: skip


def csv_row(record: dict[str, Any]) -> dict[str, Any]:
    """A JSON record (``to_dict()``) as one CSV row of :data:`CSV_COLUMNS`."""
    probabilities = record.get("probabilities") or {}
    timing = record.get("timing_ms") or {}
    row = {key: record.get(key) for key in CSV_COLUMNS if key in RECORD_FIELDS}
    row.update(
        p_good=probabilities.get("Good"),
        p_usable=probabilities.get("Usable"),
        p_reject=probabilities.get("Reject"),
        total_ms=_rounded(timing.get("total")),
        latency_ms=_rounded(timing.get("latency")),
        warnings="; ".join(record.get("warnings") or []),
        other_paths=";".join(record.get("other_paths") or []),
    )
    return {key: row[key] for key in CSV_COLUMNS}


def write_csv(records: Iterable[dict[str, Any]], stream: TextIO) -> int:
    """Write JSON records as CSV with a header row; returns how many rows."""
    writer = csv.DictWriter(stream, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    count = 0
    for record in records:
        writer.writerow(csv_row(record))
        count += 1
    return count


def iso_time(timestamp: float | None) -> str | None:
    """Local time with its UTC offset, so a record read elsewhere is still unambiguous."""
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp).astimezone().isoformat(timespec="milliseconds")


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


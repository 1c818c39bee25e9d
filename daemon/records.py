"""The small records passed between the pipeline's stages: file stats, work items and verdicts."""

from __future__ import annotations

import enum
import os
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any


class Hint(enum.Enum):
    """What an event says about a file's writer."""

    CLOSED = "closed"  # closed after writing (inotify close-write) or renamed in: complete, one look suffices
    WRITING = "writing"  # open for writing, and its close-write will be reported: wait for that
    CHANGED = "changed"  # changed, and no close will be reported (polling, scans, non-Linux): two looks


@dataclass(frozen=True)
class FileStat:
    """What "unchanged" means for a file: same size and same modification time (ns)."""

    size: int
    mtime_ns: int

    @classmethod
    def of(cls, st: os.stat_result) -> FileStat:
        return cls(st.st_size, st.st_mtime_ns)


@dataclass
class WorkItem:
    """One capture on its way to the scorer: content hash, the real path it was hashed at, its stat then."""

    sha256: str
    path: str
    stat: FileStat
    detected_at: float  # time.monotonic() of the first event or scan that saw the file
    claimed: bool = True  # False: the ledger could not take the pending row, so the verdict inserts it
    solo: bool = False  # True: a restart found it mid-score; scored alone so a crash blames only itself


@dataclass
class Verdict:
    """A capture's verdict as the ledger stores it, seen under one of its paths."""

    path: str
    sha256: str
    state: str  # pending, scored or failed
    score: float | None = None
    quality_class: str | None = None
    probabilities: dict[str, float] | None = None
    reason: str | None = None
    causes: dict[str, float] | None = None
    eye: str | None = None
    patient_id: str | None = None
    study_uid: str | None = None
    sop_instance_uid: str | None = None
    model: str | None = None
    trained: bool | None = None
    backend: str | None = None
    timing_ms: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    error: str | None = None
    first_seen: float | None = None  # unix time
    scored_at: float | None = None  # unix time
    duplicate_of: str | None = None  # set on a second name: the path this content was first seen at
    same_instance_as: str | None = None  # sha256 of an earlier capture with the same DICOM SOPInstanceUID
    reject_copy: str | None = None  # where --reject-action copied or moved the capture

    @classmethod
    def from_result(cls, item: WorkItem, result: Any, *, backend: str, now: float) -> Verdict:
        """Build from a ScoreResult, or from any object with some of its attributes (a crashed batch)."""
        error = getattr(result, "error", None)
        score = getattr(result, "score", None)
        if error is None and score is None:
            error = f"{item.path}: the scorer returned no score and no error"
        timing = dict(getattr(result, "timing_ms", None) or {})
        timing["latency"] = (time.monotonic() - item.detected_at) * 1000.0
        return cls(
            path=item.path,
            sha256=item.sha256,
            state="failed" if error else "scored",
            score=None if error else score,
            quality_class=None if error else getattr(result, "quality_class", None),
            probabilities=getattr(result, "probabilities", None),
            reason=getattr(result, "reason", None),
            causes=getattr(result, "causes", None),
            eye=getattr(result, "laterality", None),
            patient_id=getattr(result, "patient_id", None),
            study_uid=getattr(result, "study_uid", None),
            sop_instance_uid=getattr(result, "sop_instance_uid", None),
            model=getattr(result, "model", None),
            trained=getattr(result, "trained", None),
            backend=backend,
            timing_ms=timing,
            warnings=list(getattr(result, "warnings", None) or []),
            error=error,
            first_seen=now,
            scored_at=now,
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready record: the class under ``class`` (as in ScoreResult.to_dict), times in ISO 8601."""
        record = asdict(self)
        record["class"] = record.pop("quality_class")
        record["first_seen"] = iso_time(self.first_seen)
        record["scored_at"] = iso_time(self.scored_at)
        return record


def iso_time(timestamp: float | None) -> str | None:
    """Local time with its UTC offset, so a record read elsewhere is still unambiguous."""
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp).astimezone().isoformat(timespec="milliseconds")

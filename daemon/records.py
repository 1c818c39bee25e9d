"""The small records passed between the pipeline's stages: file stats, work items and verdicts."""

from __future__ import annotations

import enum
import os
import time
from dataclasses import dataclass, field
from typing import Any

from pyfundus.verdicts import FAILED_STATE, LOCAL, PENDING, SCORED, ScoreResult, iso_time


class Hint(enum.Enum):
    """What an event says about a file's writer."""

    CLOSED = "closed"  # closed after writing (inotify close-write) or renamed in: complete, one look suffices
    WRITING = "writing"  # open for writing, and its close-write will be reported: wait for that
    CHANGED = "changed"  # changed, and no close will be reported (polling, scans, non-Linux): two looks
    INCOMPLETE = "incomplete"  # the reader found it unfinished: wait as for a writer, up to incomplete_grace


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
    stalled: bool = False  # True: it looked unfinished but stopped changing; "incomplete" is then its verdict
    interrupted: int = 0  # scoring starts a crash of the daemon cut short (the ledger's count, at start-up)
    # A heavy capture's pixels (a FundusImage) or why they could not be read (an ImageReadError), decoded off
    # the scorer thread; scored instead of the path.
    decoded: Any = None

    @property
    def solo(self) -> bool:
        """Scored alone: a restart found it mid-score, so a crash while scoring it again blames only itself."""
        return self.interrupted > 0


@dataclass
class Verdict(ScoreResult):
    """A capture's verdict as the ledger stores it, seen under one of its paths.

    The fields of :class:`pyfundus.verdicts.ScoreResult` plus the ledger's: the state (a pending
    row has no score yet), when the capture was first seen and scored, and its other names.
    """

    state: str = PENDING  # pending, scored or failed
    first_seen: float | None = None  # unix time
    scored_at: float | None = None  # unix time
    duplicate_of: str | None = None  # set on a second name: the path this content was first seen at
    other_paths: list[str] = field(default_factory=list)  # every other name of this content (results export)
    same_instance_as: str | None = None  # sha256 of an earlier capture with the same DICOM SOPInstanceUID
    reject_copy: str | None = None  # where --reject-action copied or moved the capture
    feedback: str | None = None  # the operator's latest word on it: "fine" or "retake" (pyfundus.verdicts.FEEDBACK)
    feedback_at: float | None = None  # unix time of that word

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
            state=FAILED_STATE if error else SCORED,
            score=None if error else score,
            quality_class=None if error else getattr(result, "quality_class", None),
            probabilities=getattr(result, "probabilities", None),
            reason=getattr(result, "reason", None),
            causes=getattr(result, "causes", None),
            camera=getattr(result, "camera", None),
            eye=getattr(result, "eye", None),
            patient_id=getattr(result, "patient_id", None),
            study_uid=getattr(result, "study_uid", None),
            sop_instance_uid=getattr(result, "sop_instance_uid", None),
            model=getattr(result, "model", None),
            model_sha256=getattr(result, "model_sha256", None),
            trained=getattr(result, "trained", None),
            backend=backend,
            # A result made here without a scorer (a crashed batch, a capture given up on) was decided here.
            scored_by=getattr(result, "scored_by", None) or LOCAL,
            timing_ms=timing,
            warnings=list(getattr(result, "warnings", None) or []),
            error=error,
            first_seen=now,
            scored_at=now,
        )

    @property
    def outcome(self) -> str | None:
        return None if self.state == PENDING else super().outcome

    def to_dict(self) -> dict[str, Any]:
        """The record of :data:`pyfundus.verdicts.RECORD_FIELDS`, times in ISO 8601."""
        record = super().to_dict()
        record["state"] = self.state
        record["first_seen"] = iso_time(self.first_seen)
        record["scored_at"] = iso_time(self.scored_at)
        record["feedback_at"] = iso_time(self.feedback_at)
        return record

"""``pyfundus results export``: the ledger as JSON or CSV, one record per capture."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any, TextIO

from .ledger import Ledger
from .records import Verdict, iso_time
from .statedir import LEDGER_NAME

COLUMNS = (
    "path", "state", "score", "class", "reason", "error", "eye", "patient_id", "first_seen", "model", "trained",
    "sha256", "other_paths", "study_uid", "sop_instance_uid", "same_instance_as", "scored_at", "backend",
    "reject_copy",
)  # fmt: skip


def export(state_dir: Path, fmt: str, stream: TextIO) -> int:
    """Write every capture in the state directory's ledger to ``stream``; returns how many.

    Safe while the daemon runs: the ledger is opened read-only and WAL readers never block it.
    """
    path = Path(state_dir) / LEDGER_NAME
    if not path.exists():
        raise FileNotFoundError(f"no ledger in {state_dir} (expected {path}); is this the daemon's --state-dir?")
    ledger = Ledger(path, readonly=True)
    try:
        records = [_record(verdict, paths) for verdict, paths in ledger.captures()]
    finally:
        ledger.close()
    if fmt == "json":
        json.dump(records, stream, indent=2)
        stream.write("\n")
    else:
        writer = csv.DictWriter(stream, fieldnames=COLUMNS, lineterminator="\n")
        writer.writeheader()
        for record in records:
            writer.writerow({**record, "other_paths": ";".join(record["other_paths"])})
    return len(records)


def _record(verdict: Verdict, paths: list[str]) -> dict[str, Any]:
    return {
        "path": verdict.path,
        "state": verdict.state,
        "score": verdict.score,
        "class": verdict.quality_class,
        "reason": verdict.reason,
        "error": verdict.error,
        "eye": verdict.eye,
        "patient_id": verdict.patient_id,
        "first_seen": iso_time(verdict.first_seen),
        "model": verdict.model,
        "trained": verdict.trained,
        "sha256": verdict.sha256,
        "other_paths": [path for path in paths if path != verdict.path],  # duplicate names of this capture
        "study_uid": verdict.study_uid,
        "sop_instance_uid": verdict.sop_instance_uid,
        "same_instance_as": verdict.same_instance_as,
        "scored_at": iso_time(verdict.scored_at),
        "backend": verdict.backend,
        "reject_copy": verdict.reject_copy,
    }

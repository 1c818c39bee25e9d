"""``pyfundus results export``: the ledger as JSON or CSV, one record per capture.

The records are those of ``pyfundus score --json`` / ``--csv`` (pyfundus.verdicts.RECORD_FIELDS),
with the ledger's fields filled in: when each capture was first seen and scored, its other names.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TextIO

from pyfundus.verdicts import write_csv

from .ledger import Ledger
from .statedir import LEDGER_NAME


def export(state_dir: Path, fmt: str, stream: TextIO) -> int:
    """Write every capture in the state directory's ledger to ``stream``; returns how many.

    Safe while the daemon runs: the ledger is opened read-only and WAL readers never block it.
    """
    path = Path(state_dir) / LEDGER_NAME
    if not path.exists():
        raise FileNotFoundError(f"no ledger in {state_dir} (expected {path}); is this the daemon's --state-dir?")
    ledger = Ledger(path, readonly=True)
    try:
        records = []
        for verdict, paths in ledger.captures():
            verdict.other_paths = [other for other in paths if other != verdict.path]
            records.append(verdict.to_dict())
    finally:
        ledger.close()
    if fmt == "json":
        json.dump(records, stream, indent=2)
        stream.write("\n")
        return len(records)
    return write_csv(records, stream)

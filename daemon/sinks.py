"""Where verdicts go besides the ledger: the CLI's lines, JSON sidecars, later the operator page and alerts.

A sink is any callable taking a Verdict. Sinks run one at a time (under a
lock) and a failing sink is logged and skipped: an output problem must never
stop scoring.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
from pathlib import Path
from typing import Callable, Iterable, Sequence

from .records import Verdict

log = logging.getLogger(__name__)

Sink = Callable[[Verdict], None]


class SinkHub:
    def __init__(self, sinks: Sequence[Sink] = ()) -> None:
        self._sinks = list(sinks)
        self._lock = threading.Lock()

    def emit(self, verdicts: Iterable[Verdict]) -> None:
        with self._lock:
            for verdict in verdicts:
                for sink in self._sinks:
                    try:
                        sink(verdict)
                    except Exception:
                        log.exception("a verdict output (%s) failed", getattr(sink, "__name__", type(sink).__name__))


class SidecarWriter:
    """``DIR/<path relative to the watched folder>.json`` per verdict, written atomically."""

    def __init__(self, folder: Path, root: str) -> None:
        self.folder = Path(folder)
        self.root = root

    def __call__(self, verdict: Verdict) -> None:
        target = self.folder / (os.path.relpath(verdict.path, self.root) + ".json")
        target.parent.mkdir(parents=True, exist_ok=True)
        # Write-then-rename: a reader of the sidecar folder never sees half a file.
        fd, temporary = tempfile.mkstemp(dir=target.parent, prefix=".", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(verdict.to_dict(), f, indent=2)
            os.replace(temporary, target)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise

"""Where verdicts go besides the ledger: the operator's stdout lines and JSON sidecars (the operator page,
alerts and reject actions are sinks too, in web.py, alerts.py and rejects.py).

A sink is any callable taking a Verdict. Sinks run one at a time (under a
lock), in the order they were added, and a failing sink is logged and
skipped: an output problem must never stop scoring. A sink must not block:
one that does slow I/O (a webhook) hands it to a thread of its own, and may
have a ``close(timeout)`` that the daemon calls last, after the queue drained.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable, Iterable, Sequence, TextIO

from pyfundus.paths import printable

from .logs import Redactor, file_paths
from .records import Verdict

log = logging.getLogger(__name__)

Sink = Callable[[Verdict], None]


class SinkHub:
    def __init__(self, sinks: Sequence[Sink] = ()) -> None:
        self._sinks = list(sinks)
        self._lock = threading.Lock()

    def add(self, sink: Sink, *, first: bool = False) -> None:
        """Add an output; ``first``: before the others (an action whose outcome they should report)."""
        with self._lock:
            self._sinks.insert(0 if first else len(self._sinks), sink)

    def close(self, timeout: float) -> None:
        """Give every sink that has a ``close`` (background senders) up to ``timeout`` seconds in all to finish."""
        deadline = time.monotonic() + timeout
        for sink in list(self._sinks):
            close = getattr(sink, "close", None)
            if close is not None:
                try:
                    close(max(0.0, deadline - time.monotonic()))
                except Exception:
                    log.exception("a verdict output (%s) did not close cleanly", _name(sink))

    def emit(self, verdicts: Iterable[Verdict]) -> None:
        with self._lock:
            for verdict in verdicts:
                for sink in self._sinks:
                    try:
                        sink(verdict)
                    except Exception:
                        log.exception("a verdict output (%s) failed", _name(sink))


def _name(sink: Sink) -> str:
    return getattr(sink, "__name__", type(sink).__name__)


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


class VerdictPrinter:
    """The operator's stdout: ``time  file  score  class  eye  reason``, or one JSON object per line.

    Files are named as in the log: relative paths, or with ``--redact-identifiers`` the log's pseudonyms
    (and JSON lines without paths, patient IDs or DICOM UIDs). A text line has its control characters
    escaped, so a file name cannot add a line of its own; JSON escapes them itself.
    """

    def __init__(self, stream: TextIO, *, names: Redactor, json_lines: bool) -> None:
        self.stream = stream
        self.names = names
        self.json_lines = json_lines

    def __call__(self, verdict: Verdict) -> None:
        self.stream.write(self.format(verdict) + "\n")
        self.stream.flush()  # a pipe would otherwise hold lines back while the patient waits

    @staticmethod
    def header(name_width: int) -> str:
        """Column titles for text lines whose file names are ``name_width`` characters wide (the demo's are)."""
        return f"{'time':<19}  {'file':<{name_width}}  {'score':>5}  {'grade':<7}  eye  reason"

    def format(self, verdict: Verdict) -> str:
        if self.json_lines:
            return json.dumps(self.names.record(verdict))
        name = self.names.label(verdict.path)
        score = f"{verdict.score:5.1f}" if verdict.score is not None else "    -"
        grade = verdict.quality_class or verdict.state.upper()
        note = verdict.error or verdict.reason or "-"
        note = note.removeprefix(f"{verdict.path}: ")  # reader errors start with the path
        note = self.names.scrub(note, file_paths(verdict))
        if verdict.duplicate_of:
            note += f" (same image as {self.names.label(verdict.duplicate_of)})"
        line = f"{time.strftime('%Y-%m-%d %H:%M:%S')}  {name}  {score}  {grade:<7}  {verdict.eye or '-'}  {note}"
        return printable(line)

"""Logging for the daemon: a rotating file in the state directory, warnings on stderr, optional redaction.

With redaction on, file names and paths never reach a log line: the daemon's
own messages name files by a keyed hash (stable within one run, meaningless
outside it), and a filter on every handler scrubs any path under the watched
folder from messages and tracebacks, including those of other libraries.
Patient IDs are never logged at all. The same redaction applies to the verdict
lines on stdout (``Redactor.label`` and ``Redactor.record``).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import logging.handlers
import os
import re
import sys
from pathlib import Path
from typing import Any, Iterator, Sequence

from .records import Verdict
from .statedir import LOG_NAME

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# In redacted records (stdout JSON lines, alert payloads) file names become the log's pseudonyms and
# patient identifiers are emptied.
FILE_FIELDS = ("path", "duplicate_of", "reject_copy")
PATIENT_FIELDS = ("patient_id", "study_uid", "sop_instance_uid")


class Redactor:
    """Names files for log messages: relative paths, or pseudonyms when redacting."""

    def __init__(self, roots: Sequence[str], *, enabled: bool) -> None:
        self.root = roots[0]
        self.enabled = enabled
        self._key = os.urandom(16)  # per run: pseudonyms cannot be matched against a list of names
        # A path runs until a quote, a colon (ImageReadError's "path: reason") or the line's end.
        alternatives = "|".join(re.escape(root.rstrip(os.sep)) for root in sorted(set(roots), key=len, reverse=True))
        self._pattern = re.compile(f"(?:{alternatives})[^\\n'\":]*")

    def label(self, path: str) -> str:
        if self.enabled:
            digest = hashlib.blake2b(os.fsencode(path), key=self._key, digest_size=5).hexdigest()
            return f"file-{digest}"
        relative = os.path.relpath(path, self.root)
        return path if relative.startswith("..") else relative

    def scrub(self, text: str) -> str:
        return self._pattern.sub("<file>", text) if self.enabled else text

    def record(self, verdict: Verdict) -> dict[str, Any]:
        """The verdict as JSON-ready dict; when redacting, files named by pseudonyms, patient IDs and DICOM UIDs
        emptied, paths scrubbed from the messages (the sha256 still finds the capture in the ledger)."""
        record = verdict.to_dict()
        if self.enabled:
            record.update({key: record[key] and self.label(record[key]) for key in FILE_FIELDS})
            record["other_paths"] = [self.label(path) for path in record["other_paths"] or []]
            record.update(dict.fromkeys(PATIENT_FIELDS))
            record["error"] = record["error"] and self.scrub(record["error"])
            record["warnings"] = [self.scrub(warning) for warning in record["warnings"]]
        return record


class _RedactingFilter(logging.Filter):
    def __init__(self, redactor: Redactor) -> None:
        super().__init__()
        self.redactor = redactor

    def filter(self, record: logging.LogRecord) -> bool:
        if self.redactor.enabled:
            record.msg = self.redactor.scrub(record.getMessage())
            record.args = None
            if record.exc_info and not record.exc_text:
                record.exc_text = logging.Formatter().formatException(record.exc_info)
            if record.exc_text:
                record.exc_text = self.redactor.scrub(record.exc_text)
        return True


@contextlib.contextmanager
def daemon_logging(state_dir: Path, *, level: str, verbose: bool, redactor: Redactor) -> Iterator[None]:
    """Route all logging (the daemon's, watchdog's, pyfundus's) to the file and stderr while it runs."""
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    file_handler = logging.handlers.RotatingFileHandler(
        state_dir / LOG_NAME, maxBytes=5 * 2**20, backupCount=5, encoding="utf-8"
    )
    file_handler.setLevel(level.upper())
    stderr_handler = logging.StreamHandler(sys.stderr)
    stderr_handler.setLevel(logging.INFO if verbose else logging.WARNING)
    for handler in (file_handler, stderr_handler):
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
        handler.addFilter(_RedactingFilter(redactor))
    root.handlers = [file_handler, stderr_handler]
    root.setLevel(min(file_handler.level, stderr_handler.level))
    # watchdog's DEBUG is a trace of every inotify event, with bare file names the scrubber cannot
    # recognise; our own DEBUG lines say what matters.
    watchdog_logger = logging.getLogger("watchdog")
    saved_watchdog_level = watchdog_logger.level
    watchdog_logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        root.handlers = saved_handlers
        root.setLevel(saved_level)
        watchdog_logger.setLevel(saved_watchdog_level)
        file_handler.close()

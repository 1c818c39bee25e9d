"""Logging for the daemon: a rotating file in the state directory, warnings on stderr, optional redaction.

With redaction on, file names and paths never reach a log line: the daemon's
own messages name files by a keyed hash (stable within one run, meaningless
outside it). Redaction works from the paths it knows, never by guessing where
a name ends: a verdict's record replaces exactly its own paths and file names
(a name may hold quotes, colons, newlines), and any other text that mentions
the watched folder (a library's message, a traceback) loses everything from
the folder's path on. Patient IDs are never logged at
all. The same redaction applies to the verdict lines on stdout
(``Redactor.label`` and ``Redactor.record``).

Whatever a person reads (log lines, the stdout verdict lines, the operator
page, desktop notifications) has its control characters escaped
(``printable``): a file name with a newline cannot forge a line of its own.
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
from typing import Any, Iterable, Iterator, Sequence

from pyfundus.paths import printable

from .records import Verdict
from .statedir import LOG_NAME

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# In redacted records (stdout JSON lines, alert payloads) file names become the log's pseudonyms and
# patient identifiers are emptied.
FILE_FIELDS = ("path", "duplicate_of", "reject_copy")
PATIENT_FIELDS = ("patient_id", "study_uid", "sop_instance_uid")
REDACTED = "<file>"

class Redactor:
    """Names files for log messages: relative paths, or pseudonyms when redacting."""

    def __init__(self, roots: Sequence[str], *, enabled: bool) -> None:
        self.root = roots[0]
        self.enabled = enabled
        self._key = os.urandom(16)  # per run: pseudonyms cannot be matched against a list of names
        # Text about a file nobody named to scrub() is cut from the watched folder's path on: where a
        # file name ends cannot be told from the text (it may hold quotes, colons, newlines).
        folders = "|".join(re.escape(root.rstrip(os.sep)) for root in sorted(set(roots), key=len, reverse=True))
        self._rest_of_text = re.compile(f"(?:{folders}).*", re.DOTALL)

    def label(self, path: str) -> str:
        if self.enabled:
            digest = hashlib.blake2b(os.fsencode(path), key=self._key, digest_size=5).hexdigest()
            return f"file-{digest}"
        relative = os.path.relpath(path, self.root)
        return path if relative.startswith("..") else relative

    def scrub(self, text: str, paths: Iterable[str | None] = ()) -> str:
        """When redacting: each of ``paths`` and its file name replaced exactly, then any other mention of the
        watched folder cut off. Reader errors start with the path, so the path itself is the reliable key."""
        if not self.enabled:
            return text
        known = {path for path in paths if path}
        known |= {os.path.basename(path) for path in known} - {""}
        for name in sorted(known, key=len, reverse=True):  # a path before the file name it ends with
            text = text.replace(name, REDACTED)
        return self._rest_of_text.sub(REDACTED, text)

    def record(self, verdict: Verdict) -> dict[str, Any]:
        """The verdict as JSON-ready dict; when redacting, files named by pseudonyms, patient IDs and DICOM UIDs
        emptied, the capture's paths scrubbed from the messages (the sha256 still finds it in the ledger)."""
        record = verdict.to_dict()
        if self.enabled:
            paths = file_paths(verdict)
            record.update({key: record[key] and self.label(record[key]) for key in FILE_FIELDS})
            record["other_paths"] = [self.label(path) for path in record["other_paths"] or []]
            record.update(dict.fromkeys(PATIENT_FIELDS))
            record["error"] = record["error"] and self.scrub(record["error"], paths)
            record["warnings"] = [self.scrub(warning, paths) for warning in record["warnings"]]
        return record


def file_paths(verdict: Verdict) -> list[str]:
    """Every path a verdict knows its capture by: what redaction must take out of its messages."""
    return [path for path in (verdict.path, verdict.duplicate_of, verdict.reject_copy, *verdict.other_paths) if path]


class _SafeRecords(logging.Filter):
    """Escapes control characters in every record and, when redacting, scrubs paths from it; tracebacks are
    indented, so that no line of theirs can pass for a record of its own."""

    def __init__(self, redactor: Redactor) -> None:
        super().__init__()
        self.redactor = redactor

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "_pyfundus_safe", False):  # both handlers see the same record
            return True
        record.msg = printable(self.redactor.scrub(record.getMessage()))
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            lines = self.redactor.scrub(record.exc_text).split("\n")
            record.exc_text = "\n".join("  " + printable(line) for line in lines)
        if record.stack_info:
            record.stack_info = printable(self.redactor.scrub(record.stack_info))
        record._pyfundus_safe = True
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
        handler.addFilter(_SafeRecords(redactor))
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

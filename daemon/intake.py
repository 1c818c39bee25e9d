"""Intake: from "something happened at this path" to a claimed capture in the work queue.

Per path: debounce (events coalesce until the path is quiet for ``debounce``
seconds; none after close-write or a rename, which end the write) -> stability (size and mtime equal across two looks ``settle``
apart; after close-write or a rename one look suffices, and while inotify
says a writer still has the file open we wait for its close-write) -> probe
(an image? complete? a JPEG or PNG without its end marker waits) ->
sha256 (re-checked against the stat afterwards) -> ledger claim (new
content: a pending row; known content under a new name: a duplicate
sighting that reuses the verdict) -> bounded work queue.

A file that looks unfinished (no end marker, or no close-write) but stops
changing for ``incomplete_grace`` seconds is queued anyway: a cut-short file
then fails with the reader's "truncated" message instead of waiting forever.
Formats without an end marker (DICOM, TIFF) are found unfinished by the
reader: the scorer records no verdict for them and hands them back here
(``Hint.INCOMPLETE``), and they wait the same way, each write starting the
wait again. Only a file that stopped changing gets "truncated" as its verdict.

Non-image files (no image signature and no image extension) are ignored and
never enter the ledger; they are remembered in memory by size and mtime so
the periodic scan does not re-read them.
"""

from __future__ import annotations

import logging
import os
import queue
import stat as stat_module
import threading
import time
from dataclasses import dataclass
from typing import Sequence

from pyfundus.paths import sha256_file

from .errors import LedgerError
from .filters import PathFilter
from .ledger import DUPLICATE, NEW, Ledger
from .logs import Redactor
from .probe import Probe, probe
from .records import FileStat, Hint, WorkItem
from .sinks import SinkHub

log = logging.getLogger(__name__)


@dataclass
class _Entry:
    due: float  # monotonic time of the next look
    hint: Hint  # what the latest event said about the writer
    detected_at: float
    last: FileStat | None = None  # what the previous look saw
    changed_at: float = 0.0  # when the stat last changed


class Intake(threading.Thread):
    def __init__(
        self,
        *,
        paths: PathFilter,
        ledger: Ledger,
        work: queue.Queue[WorkItem],
        sinks: SinkHub,
        names: Redactor,
        debounce: float,
        settle: float,
        incomplete_grace: float,
        initial: Sequence[WorkItem] = (),
    ) -> None:
        super().__init__(name="pyfundus-intake", daemon=True)
        self.paths = paths
        self.ledger = ledger
        self.work = work
        self.sinks = sinks
        self.names = names
        self.debounce = debounce
        self.settle = settle
        self.incomplete_grace = incomplete_grace
        self._initial = list(initial)
        self._entries: dict[str, _Entry] = {}
        self._ignored: dict[str, FileStat] = {}
        self._unclaimed: set[str] = set()  # queued while the ledger refused the pending row
        self._cv = threading.Condition()
        self._stopping = threading.Event()

    def notify(self, path: str, *, hint: Hint = Hint.CHANGED, stat: FileStat | None = None) -> bool:
        """Called from watchdog's thread and the scan: cheap, never blocks on I/O. False: not wanted."""
        if not self.paths.accepts(path):
            return False
        with self._cv:
            if stat is not None and self._ignored.get(path) == stat:
                return False
            now = time.monotonic()
            entry = self._entries.get(path)
            if entry is None:
                entry = self._entries[path] = _Entry(due=now, hint=hint, detected_at=now)
            # A close-write or a rename says the writer is done: look now. Other events wait for quiet.
            entry.due = now if hint is Hint.CLOSED else now + self.debounce
            entry.hint = hint  # the latest event decides: a write after a close re-opens the question
            self._cv.notify()
        return True

    @property
    def settling(self) -> int:
        """Paths seen but not yet queued (debouncing, waiting to be stable or complete)."""
        with self._cv:
            return len(self._entries)

    def stop(self) -> None:
        self._stopping.set()
        with self._cv:
            self._cv.notify()

    def run(self) -> None:
        # Captures a previous run left pending go first, before anything new.
        for item in self._initial:
            if not self._enqueue(item):
                return
        while not self._stopping.is_set():
            for path, entry in self._take_due():
                try:
                    self._examine(path, entry)
                except Exception:
                    log.exception("could not examine %s; the reconcile scan will retry it", self.names.label(path))

    def _take_due(self) -> list[tuple[str, _Entry]]:
        with self._cv:
            while not self._stopping.is_set():
                now = time.monotonic()
                due = [(path, entry) for path, entry in self._entries.items() if entry.due <= now]
                if due:
                    for path, _ in due:
                        del self._entries[path]
                    return due
                wait = min((entry.due for entry in self._entries.values()), default=now + 0.5) - now
                self._cv.wait(timeout=min(max(wait, 0.005), 0.5))
        return []

    def _later(self, path: str, entry: _Entry, delay: float) -> None:
        with self._cv:
            if path not in self._entries:  # else a newer event already scheduled a fresh look
                entry.due = time.monotonic() + delay
                self._entries[path] = entry
                self._cv.notify()

    def _examine(self, path: str, entry: _Entry) -> None:
        real = self.paths.resolve(path)
        if real is None:
            return
        try:
            st = os.stat(real)
        except FileNotFoundError:
            return  # deleted or moved away before we looked: nothing to score
        if not stat_module.S_ISREG(st.st_mode):
            return
        current, now = FileStat.of(st), time.monotonic()
        if current != entry.last:
            entry.last, entry.changed_at = current, now
            if entry.hint is not Hint.CLOSED:
                self._later(path, entry, self.settle)
                return
        if self._known(real, current):
            return
        try:
            kind = probe(real, current.size)
            if kind is Probe.NOT_IMAGE:
                with self._cv:
                    self._ignored[real] = current
                log.debug("ignoring %s: not an image", self.names.label(real))
                return
            unfinished = kind is Probe.INCOMPLETE or entry.hint in (Hint.WRITING, Hint.INCOMPLETE)
            if unfinished:
                if now - entry.changed_at < self.incomplete_grace:
                    self._later(path, entry, self.settle)
                    return
                log.info("%s looks unfinished but stopped changing: scoring it anyway", self.names.label(real))
            sha256 = sha256_file(real)
            after = FileStat.of(os.stat(real))
        except FileNotFoundError:
            return
        except OSError as exc:
            with self._cv:
                self._ignored[real] = current
            log.warning("cannot read %s (%s); skipped until it changes", self.names.label(real), exc.strerror or exc)
            return
        if after != current:  # written to while we hashed: still in progress
            entry.hint, entry.last, entry.changed_at = Hint.CHANGED, after, time.monotonic()
            self._later(path, entry, self.settle)
            return
        self._claim(WorkItem(sha256, real, current, entry.detected_at, stalled=unfinished))

    def _known(self, path: str, stat: FileStat) -> bool:
        try:
            return self.ledger.knows(path, stat)
        except LedgerError:
            return False  # the claim below reports the ledger problem

    def _claim(self, item: WorkItem) -> None:
        try:
            outcome, verdict = self.ledger.claim(item.sha256, item.path, item.stat, time.time())
        except LedgerError as exc:
            if item.sha256 in self._unclaimed:
                return
            label = self.names.label(item.path)
            log.error("%s; scoring %s anyway, its verdict is held until the ledger takes it", exc, label)
            self._unclaimed.add(item.sha256)
            item.claimed = False
            self._enqueue(item)
            return
        if outcome == NEW:
            self._enqueue(item)
        elif outcome == DUPLICATE and verdict is not None:
            log.info(
                "%s has the same content as %s: not scored again",
                self.names.label(item.path), self.names.label(verdict.duplicate_of or ""),
            )  # fmt: skip
            if verdict.state != "pending":  # else the scorer announces it with the original
                self.sinks.emit([verdict])

    def _enqueue(self, item: WorkItem) -> bool:
        """Blocking put (backpressure); False when stopping. The ledger row keeps the item if so."""
        while not self._stopping.is_set():
            try:
                self.work.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

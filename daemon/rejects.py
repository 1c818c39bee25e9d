"""Reject actions: copy or move captures graded Reject into a folder of their own.

Off by default: without ``reject_action`` nothing in the camera's folder is
ever written, moved or deleted. ``copy`` only reads the capture; ``move``
takes it out of the camera folder (the unit file then needs the folder
writable, see ``pyfundusd.service``).

Order, so that a file never leaves on a verdict the ledger does not have:
the verdict is committed, then the destination is written into the ledger
(that write succeeds only for a committed verdict), then the file is copied
or moved, and only if its content still has the scored hash. A failure
clears the ledger's note again. Names already taken in the reject folder get
`` (1)``, `` (2)``... before the extension; the folder mirrors the watched
folder's sub-folders. The verdict the later outputs see (sidecar, alerts,
operator page) carries ``reject_copy``, and so does the ledger.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
from pathlib import Path

from pyfundus.paths import sha256_file

from .errors import LedgerError
from .ledger import Ledger
from .logs import Redactor
from .records import Verdict

log = logging.getLogger(__name__)


class RejectAction:
    def __init__(self, mode: str, folder: Path, *, root: str, ledger: Ledger, names: Redactor) -> None:
        if mode not in ("copy", "move"):
            raise ValueError(f"reject action must be copy or move, got {mode!r}")
        self.mode = mode
        self.folder = Path(folder)
        self.root = root
        self.ledger = ledger
        self.names = names

    def __call__(self, verdict: Verdict) -> None:
        if verdict.state != "scored" or verdict.quality_class != "Reject" or verdict.duplicate_of is not None:
            return
        label = self.names.label(verdict.path)
        try:
            if sha256_file(verdict.path) != verdict.sha256:
                log.warning("%s changed since it was scored: not %s to the reject folder", label, self._done)
                return
            target = _reserve(self.folder / os.path.relpath(verdict.path, self.root))
        except OSError as exc:
            log.error("cannot %s %s to the reject folder: %s", self.mode, label, exc.strerror or exc)
            return
        try:
            committed = self.ledger.note_reject_copy(verdict.sha256, str(target))
        except LedgerError as exc:
            committed = False
            log.error("%s", exc)
        if not committed:
            target.unlink(missing_ok=True)
            log.warning("%s: its verdict is not in the ledger, so it stays where it is", label)
            return
        try:
            self._act(verdict.path, target)
        except OSError as exc:
            target.unlink(missing_ok=True)
            log.error("cannot %s %s to the reject folder: %s", self.mode, label, exc.strerror or exc)
            try:
                self.ledger.note_reject_copy(verdict.sha256, None)
            except LedgerError as ledger_exc:
                log.error("%s", ledger_exc)
            return
        verdict.reject_copy = str(target)
        log.info("%s %s to the reject folder as %s", label, self._done, self.names.label(str(target)))

    @property
    def _done(self) -> str:
        return "copied" if self.mode == "copy" else "moved"

    def _act(self, source: str, target: Path) -> None:
        if self.mode == "copy":
            shutil.copy2(source, target)
            return
        try:
            os.replace(source, target)  # same file system: atomic, replaces only our reserved empty file
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
            shutil.copy2(source, target)  # another file system: copy, then remove the original
            os.unlink(source)


def _reserve(wanted: Path) -> Path:
    """Create an empty file at ``wanted``, or ``stem (1).ext``, ``stem (2).ext``... if taken; return its path.

    Creating it (O_EXCL) claims the name, so two rejects with one name never overwrite each other.
    """
    wanted.parent.mkdir(parents=True, exist_ok=True)
    for n in range(10_000):
        candidate = wanted if n == 0 else wanted.with_name(f"{wanted.stem} ({n}){wanted.suffix}")
        try:
            os.close(os.open(candidate, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
            return candidate
        except FileExistsError:
            continue
    raise OSError(errno.EEXIST, f"no free name for {wanted.name} in {wanted.parent}")

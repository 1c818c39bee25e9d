"""The operator's word on a verdict, from the operator page, and what ``pyfundus adapt`` learns from it.

Two buttons on the latest capture (keys F and R): "Fine as it is" (the capture is good enough, whatever
the gate said) and "Retake anyway" (it is not, whatever the gate said). Each click is kept in the
ledger with its time (``Ledger.add_feedback``; ``pyfundus results export`` shows the latest), and
``pyfundus adapt --from-ledger STATE_DIR`` takes the marked captures as the site's own grades: fine
ones as good captures of this camera, retakes as Reject.
"""

from __future__ import annotations

from pathlib import Path

from pyfundus.paths import sha256_file
from pyfundus.verdicts import FEEDBACK_LEVEL

from .ledger import Ledger
from .statedir import LEDGER_NAME


def graded_from_ledger(state_dir: str | Path, *, camera: str | None = None) -> dict[str, list[str]]:
    """The captures the operator marked, by the grade adapt gives them: ``{"Good": [path, ...], "Reject": [...]}``.

    Each capture is taken from a path that still holds exactly the content that was marked (its
    sha256 is checked); a capture whose files are gone or changed is left out. ``camera``: only
    that camera's captures. Safe while the daemon runs (the ledger is opened read-only).
    """
    path = Path(state_dir) / LEDGER_NAME
    if not path.exists():
        raise FileNotFoundError(f"no ledger in {state_dir} (expected {path}); is this the daemon's --state-dir?")
    ledger = Ledger(path, readonly=True)
    try:
        captures = ledger.captures()
    finally:
        ledger.close()
    graded: dict[str, list[str]] = {"Good": [], "Usable": [], "Reject": []}
    marked = 0
    for verdict, paths in captures:
        if verdict.feedback not in FEEDBACK_LEVEL or (camera is not None and verdict.camera != camera):
            continue
        marked += 1
        found = next((p for p in paths if _holds(p, verdict.sha256)), None)
        if found is not None:
            graded[FEEDBACK_LEVEL[verdict.feedback]].append(found)
    if not marked:
        where = f" from the camera {camera!r}" if camera is not None else ""
        raise ValueError(
            f"no capture{where} is marked in {path}: mark captures \"Fine as it is\" (key F) or \"Retake anyway\" "
            "(key R) on the operator page first"
        )
    return graded


def _holds(path: str, sha256: str) -> bool:
    try:
        return sha256_file(path) == sha256
    except OSError:
        return False

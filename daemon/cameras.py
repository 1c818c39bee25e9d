"""Saying aloud when the gate meets a camera it does not know, never working around it silently.

A model that never saw a camera can grade that camera's clean captures Usable or Reject (the model
card shows how often). When most of a camera's first captures fall below Good, that is far more
likely the camera than a morning of bad photos, so the daemon says so once, in the log and on the
operator page, naming the camera and the one command that teaches the gate this camera
(``pyfundus adapt``). The verdicts themselves are not changed: the gate still reports what its
model sees, and the operator decides.

A camera mapped to a site model of its own is not watched (it has been taught). The first captures
are counted from the ledger at start-up, so a restart neither forgets a notice nor repeats it.
"""

from __future__ import annotations

import logging
import shlex
from dataclasses import dataclass
from typing import Callable, Iterable

from pyfundus.verdicts import CLASSES

from .records import Verdict

log = logging.getLogger(__name__)

FIRST_CAPTURES = 8  # a camera's first captures judged
MIN_JUDGED = 5  # captures seen before a camera can be called unfamiliar
UNFAMILIAR_SHARE = 0.5  # more than this share of them below Good


@dataclass(frozen=True)
class Notice:
    """An unfamiliar camera, what was seen, and what to do about it."""

    camera: str
    judged: int
    below_good: int
    command: str

    @property
    def message(self) -> str:
        return (
            f"the camera {self.camera!r} looks unfamiliar to the model: {self.below_good} of its first "
            f"{self.judged} captures were graded below Good. If they were in fact good, the model does not know "
            "this camera yet: mark a few clean captures \"Fine as it is\" on the operator page (key F), then run: "
            f"{self.command}  and restart with the site model it writes for this camera (pyfundus watch ... "
            f"--camera-model {shlex.quote(self.camera + '=' + self.command.rsplit(' ', 1)[-1])}, or the camera "
            "under [camera_models] in the config file). Verdicts are not changed."
        )

    def to_dict(self) -> dict:
        return {"camera": self.camera, "judged": self.judged, "below_good": self.below_good,
                "command": self.command, "message": self.message}  # fmt: skip


class CameraWatch:
    """A verdict sink that raises one :class:`Notice` per unfamiliar camera (``on_notice`` gets it)."""

    def __init__(self, *, state_dir: str, taught: Iterable[str], on_notice: Callable[[Notice], None]) -> None:
        self.state_dir = state_dir
        self.taught = set(taught)
        self.on_notice = on_notice
        self.notices: dict[str, Notice] = {}
        self._first: dict[str, list[str]] = {}

    def seed(self, verdicts: Iterable[Verdict]) -> None:
        """The ledger's verdicts, oldest first: counts each camera's first captures again, without notifying."""
        for verdict in verdicts:
            self._count(verdict)

    def __call__(self, verdict: Verdict) -> None:
        notice = self._count(verdict)
        if notice is not None:
            log.warning("%s", notice.message)
            self.on_notice(notice)

    def _count(self, verdict: Verdict) -> Notice | None:
        if verdict.duplicate_of or verdict.state != "scored" or verdict.quality_class not in CLASSES:
            return None
        camera = verdict.camera or "unknown"
        if camera in self.taught or camera in self.notices:
            return None
        first = self._first.setdefault(camera, [])
        if len(first) >= FIRST_CAPTURES:
            return None
        first.append(verdict.quality_class)
        below = sum(level != "Good" for level in first)
        if len(first) >= MIN_JUDGED and below > UNFAMILIAR_SHARE * len(first):
            self.notices[camera] = Notice(camera, len(first), below, self.command(camera))
            return self.notices[camera]
        return None

    def command(self, camera: str) -> str:
        stem = "".join(c if c.isalnum() else "-" for c in camera).strip("-").lower() or "camera"
        return shlex.join(["pyfundus", "adapt", "--from-ledger", self.state_dir, "--camera", camera,
                           "--out", f"site-{stem}.safetensors"])  # fmt: skip

"""``pyfundus demo``: the quality gate watching a simulated fundus camera, in one command, offline.

A temporary folder plays the camera's output folder (the ledger and log go
to a temporary state directory beside it; both are removed at the end). A
camera thread writes about one capture a second, the way cameras do: some
written under a temporary name and renamed, some streamed in slow chunks.
The captures are 2304x1728 JPEGs (the frame of a typical 12 MP fundus
camera): scikit-image's real retina photo when scikit-image is installed,
synthetic fundi (``pyfundus.data.synth``) clean and with realistic defects
(``pyfundus.data.degrade``), and the real sample photos of ``pyfundus data
fetch-samples`` when they are in the cache (its Topcon DICOM as it is). The
verdicts print live; the operator page is served when the daemon has one.
"""

from __future__ import annotations

import itertools
import logging
import os
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, TextIO

import numpy as np

from pyfundus.io import encode_jpeg

from .config import WatchConfig
from .records import Verdict

log = logging.getLogger(__name__)

SAMPLES = Path("~/.cache/pyfundus/samples").expanduser()
SETTLE_TIMEOUT = 60.0  # seconds to wait for the last verdicts after the camera stops
UNTRAINED_BANNER = (
    "WARNING: this pyfundus has no trained weights yet, so the demo runs an UNTRAINED model: every score\n"
    "         and grade below is meaningless. The demo shows the plumbing, not the judgement."
)


@dataclass
class Capture:
    name: str
    data: bytes
    what: str  # what the camera photographed, for the demo's narration
    chunked: bool  # streamed in slow chunks under its final name, else written elsewhere and renamed


def _synthetic(seed: int, defects: list[str] | None = None, strength: float = 0.8) -> np.ndarray:
    from pyfundus.data.degrade import degrade
    from pyfundus.data.synth import generate_fundus

    image, _ = generate_fundus(seed, size=768, lesions=seed % 3 == 0)
    if defects:
        image, _ = degrade(image, seed, types=defects, strength=strength)
    return image


def _skimage_retina() -> np.ndarray | None:
    try:
        from skimage import data
    except ImportError:  # not a pyfundus dependency; the sample cache holds the same photo
        return _sample("skimage_retina.png")
    return data.retina()  # shipped inside scikit-image: no download


def _sample(name: str) -> np.ndarray | None:
    from pyfundus.io import read_image

    path = SAMPLES / name
    return read_image(path).pixels if path.exists() else None


Source = tuple[str, Callable[[], "np.ndarray | bytes | None"]]

# One pass shows every grade and both real and synthetic photos; later passes are new synthetic eyes.
BASE_SEQUENCE: tuple[Source, ...] = (
    ("real retina photo (scikit-image)", _skimage_retina),
    ("synthetic fundus, clean", lambda: _synthetic(101)),
    ("synthetic fundus, defocus blur", lambda: _synthetic(102, ["defocus"])),
    ("real photo CHASEDB1_08L (sample cache)", lambda: _sample("CHASEDB1_08L.png")),
    ("synthetic fundus, underexposed", lambda: _synthetic(103, ["underexposure"], 0.9)),
    ("synthetic fundus, eyelash shadow and haze", lambda: _synthetic(104, ["haze", "eyelash_shadow"])),
    ("real Topcon DICOM (sample cache)", lambda: _bytes_of(SAMPLES / "issue_3.dcm")),
    ("synthetic fundus, clean, with lesions", lambda: _synthetic(105)),
    ("real photo HRF_04_g (sample cache)", lambda: _sample("HRF_04_g.jpg")),
    ("synthetic fundus, small pupil", lambda: _synthetic(106, ["small_pupil"])),
    ("real photo, dark capture (sample cache)", lambda: _sample("sample_dark.png")),
    ("real photo, clipped field of view (sample cache)", lambda: _sample("cropped.png")),
    ("synthetic fundus, motion blur", lambda: _synthetic(107, ["motion_blur"])),
)
_LATER_DEFECTS = (None, ["blur"], ["overexposure"], ["off_centre"], None, ["eyelid_shadow"], ["noise", "jpeg"])


def _bytes_of(path: Path) -> bytes | None:
    return path.read_bytes() if path.exists() else None


def captures() -> Iterator[Capture]:
    """The camera's endless sequence: the base pass (sources not on this machine are left out), then new eyes."""
    number = 0

    def capture(what: str, image: np.ndarray | bytes) -> Capture:
        nonlocal number
        number += 1
        is_dicom = isinstance(image, bytes)
        data = image if is_dicom else encode_jpeg(image)
        return Capture(f"IMG_{number:04d}.{'dcm' if is_dicom else 'jpg'}", data, what, chunked=number % 2 == 0)

    for what, make in BASE_SEQUENCE:
        image = make()
        if image is not None:
            yield capture(what, image)
    seed = 200
    while True:
        defects = _LATER_DEFECTS[seed % len(_LATER_DEFECTS)]
        label = "synthetic fundus, " + (", ".join(defects).replace("_", " ") if defects else "clean")
        yield capture(label, _synthetic(seed, defects))
        seed += 1


def write_like_a_camera(folder: Path, capture: Capture, *, chunks: int = 6, pause: float = 0.05) -> float:
    """Write the capture into ``folder``; returns time.monotonic() when the file was complete under its name."""
    target = folder / capture.name
    if capture.chunked:
        with open(target, "wb") as f:  # USB-style streaming: the file exists, growing, for a while
            step = -(-len(capture.data) // chunks)
            for start in range(0, len(capture.data), step):
                f.write(capture.data[start : start + step])
                f.flush()
                time.sleep(pause)
        return time.monotonic()
    temporary = folder / f".{capture.name}.part"  # hidden and *.part: the daemon ignores it until the rename
    temporary.write_bytes(capture.data)
    os.replace(temporary, target)
    return time.monotonic()


class _Tally:
    """Collects verdicts for the summary (a verdict sink)."""

    def __init__(self) -> None:
        self.verdicts: dict[str, Verdict] = {}
        self._cv = threading.Condition()

    def __call__(self, verdict: Verdict) -> None:
        with self._cv:
            self.verdicts.setdefault(verdict.path, verdict)
            self._cv.notify_all()

    def wait_for(self, paths: set[str], timeout: float) -> set[str]:
        """Wait until every path has a verdict; returns those still without one."""
        deadline = time.monotonic() + timeout
        with self._cv:
            while (missing := paths - self.verdicts.keys()) and time.monotonic() < deadline:
                self._cv.wait(min(0.5, deadline - time.monotonic()))
        return missing


def run_demo(
    *,
    count: int | None = None,
    duration: float | None = None,
    interval: float = 1.0,
    web: bool = True,
    port: int = 0,
    scorer: Any = None,
    out: TextIO = sys.stdout,
) -> int:
    """Run the demo; returns the exit status (0 when every capture got its verdict).

    ``count``: captures to write (default: as many as the base sequence has, or
    endless with ``duration``); ``duration``: stop the camera after this many
    seconds; ``scorer``: a model-like object instead of the default model.
    """
    from .logs import daemon_logging
    from .service import Daemon
    from .sinks import VerdictPrinter

    if count is None and duration is None:
        count = len(BASE_SEQUENCE)
    with tempfile.TemporaryDirectory(prefix="pyfundus-demo-") as workspace:
        folder, state_dir = Path(workspace) / "camera", Path(workspace) / "state"
        folder.mkdir()
        state_dir.mkdir()
        config = WatchConfig(folder=folder, state_dir=state_dir, web=web, web_port=port)
        tally = _Tally()
        daemon = Daemon(config, scorer=scorer)
        daemon.sinks.add(VerdictPrinter(out, names=daemon.names, json_lines=False))
        daemon.sinks.add(tally)
        with daemon_logging(state_dir, level="info", verbose=False, redactor=daemon.names):
            daemon.start()  # loads the default model unless a scorer was given
            if daemon.scoring is not None and not getattr(daemon.scoring.scorer, "trained", True):
                print(UNTRAINED_BANNER, file=sys.stderr)
            print(f"demo camera folder: {folder}  (removed at the end)", file=out)
            if daemon.web is not None:
                print(f"operator page: {daemon.web.url}", file=out)
            written: list[str] = []
            try:
                _play_camera(folder, written, out, count=count, duration=duration, interval=interval)
                missing = tally.wait_for({os.path.realpath(path) for path in written}, SETTLE_TIMEOUT)
            except KeyboardInterrupt:
                print("\ninterrupted: stopping the camera and the daemon", file=out)
                missing = {os.path.realpath(path) for path in written} - tally.verdicts.keys()
            finally:
                daemon.stop()
        _summary(out, written, tally, missing)
    return 0 if not missing else 1


def _play_camera(folder: Path, written: list[str], out: TextIO, *, count: int | None, duration: float | None,
                 interval: float) -> None:  # fmt: skip
    started = time.monotonic()
    for n, capture in enumerate(itertools.islice(captures(), count)):
        time.sleep(max(0.0, started + n * interval - time.monotonic()))
        if duration is not None and time.monotonic() - started >= duration:
            break
        how = "streamed in chunks" if capture.chunked else "written, then renamed"
        print(f"camera: {capture.name}  {capture.what} ({len(capture.data) // 1024} KiB, {how})", file=out)
        write_like_a_camera(folder, capture)
        written.append(str(folder / capture.name))


def _summary(out: TextIO, written: list[str], tally: _Tally, missing: set[str]) -> None:
    verdicts = list(tally.verdicts.values())
    classes = Counter(verdict.outcome for verdict in verdicts)
    grades = ", ".join(f"{grade} {classes[grade]}" for grade in ("Good", "Usable", "Reject", "Failed"))
    print(f"\ndemo summary: {len(written)} capture(s) written, {len(verdicts)} verdict(s): {grades}", file=out)
    latencies = [v.timing_ms["latency"] for v in verdicts if "latency" in v.timing_ms]
    if latencies:
        print(
            f"time from the first file event to the verdict: median {statistics.median(latencies):.0f} ms, "
            f"max {max(latencies):.0f} ms",
            file=out,
        )
    if missing:
        print(f"{len(missing)} capture(s) got no verdict", file=out)
    if any(verdict.trained is False for verdict in verdicts):
        print("(untrained model: these grades are meaningless; load trained weights)", file=out)

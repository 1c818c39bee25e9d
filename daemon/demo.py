"""``pyfundus demo``: the quality gate watching a simulated fundus camera, in one command, offline.

A temporary folder plays the camera's output folder (the ledger and log go
to a temporary state directory beside it; both are removed at the end). A
camera thread writes about one capture a second, the way cameras do: some
written under a temporary name and renamed, some streamed in slow chunks.

What it photographs (``SHOTS``): synthetic fundi (``pyfundus.data.synth``),
clean and with defects (``pyfundus.data.degrade``) strong or mild enough to be
graded Good, Usable or Reject, as 2304x1728 JPEGs (the frame of a typical
12 MP fundus camera) and one DICOM with a made-up patient ID; and, only when
``pyfundus data fetch-samples`` has fetched them, real sample photos. Each shot
says which grade it is made to show, and the summary says how many were graded
so. tests/test_demo.py checks the shipped model grades every shot as meant: a
retrained model that does not is told there, and the shot's seed or strength is
what to adjust. The verdicts print live; the operator page is served when the
daemon has one.
"""

from __future__ import annotations

import io
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
from typing import Any, Iterator, TextIO

import numpy as np

from pyfundus.data.samples import samples_dir
from pyfundus.io import encode_jpeg

from .config import WatchConfig
from .records import Verdict
from .sinks import VerdictPrinter

log = logging.getLogger(__name__)

SETTLE_TIMEOUT = 60.0  # seconds to wait for the last verdicts after the camera stops
NAME_WIDTH = len("IMG_0001.jpg")  # every capture is named so: the verdict lines line up under a header
DEMO_PATIENT = "DEMO-0001"  # made up: the DICOM shot shows where the operator page puts a patient ID
UNTRAINED_BANNER = (
    "WARNING: this pyfundus has no trained weights yet, so the demo runs an UNTRAINED model: every score\n"
    "         and grade below is meaningless. The demo shows the plumbing, not the judgement."
)


@dataclass(frozen=True)
class Shot:
    """One capture of the demo's pass: a synthetic eye (``seed``) with an optional ``defect`` of
    ``strength`` in [0, 1], or a fetched ``sample`` photo; ``meant`` is the grade it is made to show."""

    what: str
    meant: str
    seed: int = 0
    defect: str | None = None
    strength: float = 0.0
    sample: str | None = None  # a file of the fetched sample photos; the shot is left out when it is not there
    dicom: bool = False  # written as an Ophthalmic Photography DICOM (right eye, DEMO_PATIENT)

    def image(self) -> np.ndarray | bytes | None:
        """The pixels, the DICOM's bytes, or None when the sample photo is not on this machine."""
        if self.sample is not None:
            path = samples_dir() / self.sample
            return _read_pixels(path) if path.is_file() else None
        pixels = _synthetic(self.seed, [self.defect] if self.defect else None, self.strength)
        return _dicom_bytes(pixels) if self.dicom else pixels


# One pass shows every grade. Each synthetic shot's seed and strength were chosen so that the shipped model's
# score sits inside its grade's band, not at an edge; on a fresh install (no sample photos) it is synthetic only.
# The order keeps fewer than half of the first captures below Good, with or without the samples, so the
# daemon does not take the demo camera for a camera the model does not know (daemon/cameras.py).
SHOTS: tuple[Shot, ...] = (
    Shot("synthetic fundus, clean", "Good", seed=101),
    Shot("real photo: scikit-image's retina (CC0; sample photos)", "Good", sample="skimage_retina.png"),
    Shot("synthetic fundus with diabetic lesions, clean capture", "Good", seed=105),
    Shot("synthetic fundus, uneven illumination", "Usable", seed=103, defect="illumination", strength=0.5),
    Shot("synthetic fundus, clean, as a DICOM with a patient ID", "Good", seed=104, dicom=True),
    Shot("synthetic fundus, strong defocus", "Reject", seed=102, defect="defocus", strength=0.8),
    Shot("real photo: CHASE_DB1 08L (CC-BY-4.0; sample photos)", "Good", sample="CHASEDB1_08L.png"),
    Shot("synthetic fundus, small pupil", "Usable", seed=106, defect="small_pupil", strength=0.4),
    Shot("real photo: HRF 04_g (CC-BY-4.0; sample photos)", "Good", sample="HRF_04_g.jpg"),
    Shot("synthetic fundus, clean", "Good", seed=103),
    Shot("synthetic fundus, underexposed", "Reject", seed=103, defect="underexposure", strength=0.9),
    Shot("synthetic fundus, motion blur", "Usable", seed=104, defect="motion_blur", strength=0.47),
    Shot("real photo: a dark capture (sample photos)", "Reject", sample="sample_dark.png"),
    Shot("synthetic fundus, haze (media opacity)", "Usable", seed=103, defect="haze", strength=0.75),
    Shot("synthetic fundus, very small pupil", "Reject", seed=101, defect="small_pupil", strength=0.9),
    Shot("real photo: clipped field of view, glare at the rim (sample photos)", "Reject", sample="cropped.png"),
)
# Later passes (with --duration, or --count above one pass) photograph new synthetic eyes, not graded in advance.
_LATER_DEFECTS = (None, ["blur"], ["overexposure"], ["off_centre"], None, ["eyelid_shadow"], ["small_pupil"])


@dataclass
class Capture:
    name: str
    data: bytes
    what: str  # what the camera photographed, for the demo's narration
    meant: str | None  # the grade the shot is made to show (None: a later pass's new eye)
    chunked: bool  # streamed in slow chunks under its final name, else written elsewhere and renamed


def _synthetic(seed: int, defects: list[str] | None = None, strength: float = 0.8) -> np.ndarray:
    from pyfundus.data.degrade import degrade
    from pyfundus.data.synth import generate_fundus

    image, _ = generate_fundus(seed, size=768, lesions=seed % 3 == 0)
    if defects:
        image, _ = degrade(image, seed, types=defects, strength=strength)
    return image


def _read_pixels(path: Path) -> np.ndarray:
    from pyfundus.io import read_image

    return read_image(path).pixels


def _dicom_bytes(rgb: np.ndarray) -> bytes:
    """An Ophthalmic Photography 8-bit instance of the right eye, as a DICOM-writing camera sends it."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    sop_class = "1.2.840.10008.5.1.4.1.1.77.1.5.1"
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = sop_class, generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset("capture.dcm", {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid()
    ds.PatientID, ds.ImageLaterality = DEMO_PATIENT, "R"
    ds.Rows, ds.Columns = rgb.shape[:2]
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit, ds.PixelRepresentation = 7, 0
    ds.PixelData = np.ascontiguousarray(rgb, dtype=np.uint8).tobytes()
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def captures() -> Iterator[Capture]:
    """The camera's endless sequence: one pass over SHOTS (samples not on this machine left out), then new eyes."""
    number = 0

    def capture(what: str, meant: str | None, image: np.ndarray | bytes) -> Capture:
        nonlocal number
        number += 1
        is_dicom = isinstance(image, bytes)
        data = image if is_dicom else encode_jpeg(image)
        return Capture(f"IMG_{number:04d}.{'dcm' if is_dicom else 'jpg'}", data, what, meant, chunked=number % 2 == 0)

    for shot in SHOTS:
        image = shot.image()
        if image is not None:
            yield capture(shot.what, shot.meant, image)
    seed = 200
    while True:
        defects = _LATER_DEFECTS[seed % len(_LATER_DEFECTS)]
        label = "new synthetic eye, " + (", ".join(defects).replace("_", " ") if defects else "clean")
        yield capture(label, None, _synthetic(seed, defects))
        seed += 1


def one_pass_length() -> int:
    """How many captures one pass takes on this machine (the shots whose source is here)."""
    return sum(shot.sample is None or (samples_dir() / shot.sample).is_file() for shot in SHOTS)


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
    keep_open: bool = False,
    scorer: Any = None,
    out: TextIO = sys.stdout,
) -> int:
    """Run the demo; returns the exit status (0 when every capture got its verdict).

    ``count``: captures to write (default: one pass, or endless with ``duration``); ``duration``: stop
    the camera after this many seconds; ``keep_open``: after the summary, keep the operator page up until
    Ctrl-C (the command line asks for it on a terminal); ``scorer``: a model-like object instead of the
    default model.
    """
    from .logs import daemon_logging
    from .service import Daemon

    if count is None and duration is None:
        count = one_pass_length()
    with tempfile.TemporaryDirectory(prefix="pyfundus-demo-") as workspace:
        folder, state_dir = Path(workspace) / "camera", Path(workspace) / "state"
        folder.mkdir()
        state_dir.mkdir()
        config = WatchConfig(folder=folder, state_dir=state_dir, web=web, web_port=port)
        tally = _Tally()
        daemon = Daemon(config, scorer=scorer)
        daemon.sinks.add(VerdictPrinter(out, names=daemon.names, json_lines=False))
        daemon.sinks.add(tally)
        written: list[tuple[str, Capture]] = []
        missing: set[str] = set()
        summarised = False
        with daemon_logging(state_dir, level="info", verbose=False, redactor=daemon.names):
            daemon.start()  # loads the default model unless a scorer was given
            if daemon.scoring is not None and not getattr(daemon.scoring.scorer, "trained", True):
                print(UNTRAINED_BANNER, file=sys.stderr)
            print(f"demo camera folder: {folder}  (removed at the end)", file=out)
            if daemon.web is not None:
                print(f"operator page: {daemon.web.url}", file=out)
            print(f"\n{VerdictPrinter.header(NAME_WIDTH)}", file=out)
            try:
                _play_camera(folder, written, out, count=count, duration=duration, interval=interval)
                missing = tally.wait_for({path for path, _ in written}, SETTLE_TIMEOUT)
                _summary(out, written, tally, missing)
                summarised = True
                if keep_open and daemon.web is not None:
                    print(f"\nthe operator page stays open at {daemon.web.url} - press Ctrl-C to end the demo",
                          file=out, flush=True)  # fmt: skip
                    _wait_for_ctrl_c(daemon)
            except KeyboardInterrupt:
                if summarised:
                    print("\nending the demo: the operator page closes", file=out)
                else:
                    print("\ninterrupted: stopping the camera and the daemon", file=out)
                    missing = {path for path, _ in written} - tally.verdicts.keys()
            finally:
                daemon.stop()
        if not summarised:
            _summary(out, written, tally, missing)
    return 0 if not missing else 1


def _wait_for_ctrl_c(daemon: Any) -> None:
    """Until Ctrl-C (KeyboardInterrupt) or SIGTERM: the daemon keeps serving the page meanwhile."""
    import signal

    def stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        while True:
            time.sleep(3600)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _play_camera(folder: Path, written: list[tuple[str, Capture]], out: TextIO, *, count: int | None,
                 duration: float | None, interval: float) -> None:  # fmt: skip
    started = time.monotonic()
    for n, capture in enumerate(itertools.islice(captures(), count)):
        time.sleep(max(0.0, started + n * interval - time.monotonic()))
        if duration is not None and time.monotonic() - started >= duration:
            break
        how = "streamed in chunks" if capture.chunked else "written, then renamed"
        meant = f", meant as {capture.meant}" if capture.meant else ""
        print(f"camera: {capture.name}  {capture.what}{meant} ({len(capture.data) // 1024} KiB, {how})", file=out)
        write_like_a_camera(folder, capture)
        written.append((os.path.realpath(folder / capture.name), capture))


def _summary(out: TextIO, written: list[tuple[str, Capture]], tally: _Tally, missing: set[str]) -> None:
    verdicts = list(tally.verdicts.values())
    classes = Counter(verdict.outcome for verdict in verdicts)
    grades = ", ".join(f"{grade} {classes[grade]}" for grade in ("Good", "Usable", "Reject", "Failed"))
    print(f"\ndemo summary: {len(written)} capture(s) written, {len(verdicts)} verdict(s): {grades}", file=out)
    meant = [(capture, tally.verdicts[path]) for path, capture in written if capture.meant and path in tally.verdicts]
    if meant:
        astray = [(capture, verdict) for capture, verdict in meant if verdict.quality_class != capture.meant]
        print(f"graded as meant: {len(meant) - len(astray)} of {len(meant)}", file=out)
        for capture, verdict in astray:
            print(f"  {capture.name} ({capture.what}) was meant as {capture.meant}, graded {verdict.outcome}", file=out)
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

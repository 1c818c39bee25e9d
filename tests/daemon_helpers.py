"""Shared pieces for tests/test_daemon.py: a content-derived stub scorer, capture files, ledger reads, waits.

Run as a script it is ``pyfundusd`` with the stub scorer, for the tests that
need a real process (SIGKILL, SIGTERM, read-only state directory):
``python tests/daemon_helpers.py watch FOLDER ...`` (``STUB_DELAY`` seconds per image).
"""

from __future__ import annotations

import hashlib
import io
import os
import sqlite3
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from PIL import Image


class BrightnessScorer:
    """Stands in for QualityModel: score = mean brightness (0-100), so verdicts follow content.

    Decodes with pyfundus.io like the real model, so truncated and corrupt files
    fail with the real reader's messages, and each result carries the sha256 of
    the bytes actually read. Records every batch and what it scored.
    """

    name = "stub-brightness"
    trained = False

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.calls: list[list[str]] = []
        self.scored: list[tuple[str, str]] = []  # (path, sha256 of the bytes read)
        self._lock = threading.Lock()

    def score(self, inputs: Sequence, *, batch_size: int = 8) -> list:
        """Paths, or images the daemon decoded itself (heavy captures), like QualityModel.score."""
        from pyfundus.io import FundusImage, ImageReadError, read_image, source_name
        from pyfundus.verdicts import ScoreResult

        results = []
        paths = [source_name(one) for one in inputs]
        for one, path in zip(inputs, paths):
            time.sleep(self.delay)
            result = ScoreResult(path=path, model=self.name, trained=False)
            try:
                image = one if isinstance(one, FundusImage) else read_image(one, min_size=8)
            except ImageReadError as exc:
                result.error, result.sha256, result.incomplete = str(exc), exc.sha256, exc.incomplete
            else:
                result.sha256 = image.sha256
                result.score = round(float(image.pixels.mean()) / 255.0 * 100.0, 3)
                result.quality_class = "Good" if result.score >= 60 else "Usable" if result.score >= 35 else "Reject"
                result.probabilities = {result.quality_class: 1.0}
                result.reason = None if result.quality_class == "Good" else "exposure: stub reason"
                result.camera, result.eye, result.patient_id = image.camera, image.eye, image.patient_id
                result.study_uid, result.sop_instance_uid = image.study_uid, image.sop_instance_uid
                result.timing_ms = {"total": 0.1}
            if result.sha256 is not None:
                with self._lock:
                    self.scored.append((path, result.sha256))
            results.append(result)
        with self._lock:
            self.calls.append(list(paths))
        return results

    def times_scored(self, path: str | os.PathLike) -> int:
        real = os.path.realpath(path)
        with self._lock:
            return sum(p == real for p, _ in self.scored)


# ---- capture files ----------------------------------------------------------------


def pixels(seed: int, size: int = 32) -> np.ndarray:
    """A distinct image per ``seed``: a flat brightness from the seed, seeded noise on top."""
    noise = np.random.default_rng(seed).integers(-8, 9, size=(size, size, 3))
    return np.clip(20 + seed % 216 + noise, 0, 255).astype(np.uint8)


def png_bytes(seed: int, size: int = 32) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels(seed, size)).save(buffer, format="PNG")
    return buffer.getvalue()


def jpeg_bytes(seed: int, size: int = 64) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels(seed, size)).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def tiff_bytes(seed: int, size: int = 64) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels(seed, size)).save(buffer, format="TIFF")
    return buffer.getvalue()


def dicom_bytes(seed: int, *, patient_id: str, laterality: str, size: int = 32, sop_instance_uid: str = "") -> bytes:
    """An Ophthalmic Photography 8-bit instance, as a fundus camera would send it."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    sop_class = "1.2.840.10008.5.1.4.1.1.77.1.5.1"
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_instance_uid or generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset("capture.dcm", {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid()
    ds.PatientID, ds.ImageLaterality = patient_id, laterality
    ds.Rows = ds.Columns = size
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit, ds.PixelRepresentation = 7, 0
    ds.PixelData = pixels(seed, size).tobytes()
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def write(path: Path, data: bytes) -> Path:
    """Like a camera: open, write, close (no rename)."""
    with open(path, "wb") as f:
        f.write(data)
    return path


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ---- the ledger, read the way an outside tool would -----------------------------------


class LedgerView:
    def __init__(self, state_dir: Path) -> None:
        self.path = Path(state_dir) / "ledger.sqlite3"

    def _query(self, sql: str, args: tuple = ()) -> list[sqlite3.Row]:
        if not self.path.exists():
            return []
        conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=10)
        conn.row_factory = sqlite3.Row
        try:
            return conn.execute(sql, args).fetchall()
        except sqlite3.OperationalError:  # schema not created yet
            return []
        finally:
            conn.close()

    def captures(self) -> list[sqlite3.Row]:
        return self._query("SELECT * FROM captures ORDER BY first_seen")

    def clicks(self) -> list[str]:
        """Every feedback click, oldest first."""
        return [row["label"] for row in self._query("SELECT label FROM labels ORDER BY at")]

    def capture_at(self, path: str | os.PathLike) -> sqlite3.Row | None:
        """The capture a path resolves to (through its most recent sighting)."""
        rows = self._query(
            "SELECT c.*, s.duplicate FROM sightings s JOIN captures c ON c.sha256 = s.sha256 "
            "WHERE s.path = ? ORDER BY s.last_seen DESC LIMIT 1",
            (os.path.realpath(path),),
        )
        return rows[0] if rows else None

    def sightings(self, path: str | os.PathLike) -> list[sqlite3.Row]:
        return self._query("SELECT * FROM sightings WHERE path = ?", (os.path.realpath(path),))

    def count(self, state: str | None = None) -> int:
        if state is None:
            return self._query("SELECT COUNT(*) FROM captures")[0][0] if self.path.exists() else 0
        rows = self._query("SELECT COUNT(*) FROM captures WHERE state = ?", (state,))
        return rows[0][0] if rows else 0

    def is_done(self, path: str | os.PathLike) -> bool:
        row = self.capture_at(path)
        return row is not None and row["state"] in ("scored", "failed")


def wait_for(condition: Callable[[], object], timeout: float, what: str, interval: float = 0.05):
    """Poll until ``condition()`` is truthy (returns it); fail with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


if __name__ == "__main__":
    from pyfundus.daemon.cli import main

    sys.exit(main(sys.argv[1:], scorer=BrightnessScorer(delay=float(os.environ.get("STUB_DELAY", "0")))))

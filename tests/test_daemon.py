"""The hot-folder daemon under the failures a clinic folder actually produces.

Real files in temporary folders, a real watchdog observer, a real SQLite
ledger. The scorer is a stub whose score is the image's brightness (decoded
with pyfundus.io, so broken files fail with the real reader's messages),
except in the one end-to-end test with the real model. Waits poll for an
outcome with a timeout; nothing sleeps for a fixed long time. Subprocess
tests run tests/daemon_helpers.py, which is ``pyfundusd`` with the stub.

Non-image files are ignored and never enter the ledger (a file with an image
extension but foreign content is a broken capture and is recorded as failed).
"""

from __future__ import annotations

import errno
import io
import json
import logging
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np
import pytest
from daemon_helpers import (
    BrightnessScorer,
    LedgerView,
    dicom_bytes,
    jpeg_bytes,
    png_bytes,
    sha256,
    tiff_bytes,
    wait_for,
    write,
)
from watchdog.events import FileSystemEventHandler

from pyfundus.api import UntrainedModelWarning, load_model
from pyfundus.daemon import scoring, watcher
from pyfundus.daemon.cli import main as daemon_main
from pyfundus.daemon.config import CONFIG_KEYS, WatchConfig, load_config
from pyfundus.daemon.errors import ConfigError, LedgerError, StartupError
from pyfundus.daemon.ledger import Ledger
from pyfundus.daemon.records import FileStat, Verdict
from pyfundus.daemon.scoring import KEEPS_CRASHING, load_scorer
from pyfundus.daemon.service import Daemon
from pyfundus.daemon.watcher import native_observer
from pyfundus.grading import Thresholds
from pyfundus.verdicts import CSV_COLUMNS
from pyfundus.weights import read_config, shipped_weights

# Short timings so the suite is quick; the defaults are for clinic cameras. No operator page: its
# fixed default port would make daemons run side by side collide (test_web.py covers it).
FAST = dict(
    debounce=0.05, settle=0.15, incomplete_grace=0.8, liveness_interval=0.1, reconcile_interval=30.0, drain_timeout=10.0,
    web=False,
)  # fmt: skip
FAST_FLAGS = ["--debounce", "0.05", "--settle", "0.15", "--incomplete-grace", "0.8", "--liveness-interval", "0.2",
              "--no-web"]  # fmt: skip
WAIT = 30.0  # generous for a loaded two-core machine: waits return as soon as the outcome is there
HELPER = Path(__file__).with_name("daemon_helpers.py")


def real(path: Path | str) -> str:
    return os.path.realpath(path)


@dataclass
class Harness:
    daemon: Daemon
    scorer: BrightnessScorer
    verdicts: list[Verdict]
    ledger: LedgerView
    folder: Path

    def wait_done(self, *paths: Path, timeout: float = WAIT) -> None:
        names = ", ".join(p.name for p in paths)
        wait_for(lambda: all(self.ledger.is_done(p) for p in paths), timeout, f"verdicts for {names}")

    def wait_idle(self) -> None:
        def idle() -> bool:
            status = self.daemon.status()
            return status["settling"] == 0 and status["queued"] == 0

        wait_for(idle, WAIT, "intake and queue to empty")

    def shown(self, path: Path) -> list[Verdict]:
        return [v for v in list(self.verdicts) if v.path == real(path)]


@contextmanager
def running(tmp_path: Path, scorer: BrightnessScorer | None = None, *, make_native_observer=native_observer,
            **overrides) -> Iterator[Harness]:  # fmt: skip
    folder = tmp_path / "camera"
    folder.mkdir(exist_ok=True)
    config = WatchConfig(folder=folder, state_dir=tmp_path / "state", **{**FAST, **overrides})
    config.validate()
    scorer = scorer or BrightnessScorer()
    verdicts: list[Verdict] = []
    daemon = Daemon(config, scorer, sinks=[verdicts.append], make_native_observer=make_native_observer)
    daemon.start()
    try:
        yield Harness(daemon, scorer, verdicts, LedgerView(config.state_dir), folder)
    finally:
        daemon.stop()


def spawn(args: list[str], out, *, delay: float = 0.0) -> subprocess.Popen:
    """``pyfundusd`` with the stub scorer (``delay`` seconds per image), output to the file ``out``."""
    env = {**os.environ, "STUB_DELAY": str(delay)}
    return subprocess.Popen([sys.executable, str(HELPER), *args], stdout=out, stderr=subprocess.STDOUT, env=env)


def json_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.startswith("{")]


# ---- arrival: partial writes, broken files, names --------------------------------------


@pytest.mark.parametrize("events", ["native", "polling"])
def test_file_written_in_chunks_is_scored_once_after_it_is_complete(tmp_path, events):
    # Pauses between chunks are longer than debounce + settle: size/mtime alone would be fooled.
    # The JPEG is held back by its missing end marker; the TIFF has none, and only inotify's pending
    # close-write holds it back (polling has no close-write: there --settle must outlast the pauses).
    contents = {"slow.jpg": jpeg_bytes(150, size=256)}
    if events == "native":
        contents["slow.tif"] = tiff_bytes(90)
    with running(tmp_path, poll=0.1 if events == "polling" else None) as h:
        files = {name: open(h.folder / name, "wb") for name in contents}
        try:
            for i in range(10):
                if i == 9:
                    assert h.ledger.count() == 0, "scored before the last chunk was written"
                for name, f in files.items():
                    step = -(-len(contents[name]) // 10)
                    f.write(contents[name][i * step : (i + 1) * step])
                    f.flush()
                time.sleep(0.2)
        finally:
            for f in files.values():
                f.close()
        h.wait_done(*(h.folder / name for name in contents))
    for name, data in contents.items():
        path = real(h.folder / name)
        assert h.ledger.capture_at(path)["state"] == "scored"
        assert h.ledger.capture_at(path)["sha256"] == sha256(data)
        assert [digest for p, digest in h.scorer.scored if p == path] == [sha256(data)], "scored once, final bytes"
    assert h.ledger.count() == len(contents)


def test_formats_without_an_end_marker_written_by_open_append_close_get_one_verdict(tmp_path):
    # Each close-write says "done", and a DICOM or a TIFF has no end marker to say otherwise: only the
    # reader can tell the file is unfinished. Pauses (0.4 s) are shorter than --incomplete-grace (0.8 s).
    contents = {
        "chunked.dcm": dicom_bytes(150, patient_id="PAT-1", laterality="R", size=128),
        "chunked.tif": tiff_bytes(160, size=128),
    }
    cut_for_good = dicom_bytes(170, patient_id="PAT-2", laterality="L", size=128)
    with running(tmp_path) as h:
        lost = write(h.folder / "cut.dcm", cut_for_good[: len(cut_for_good) // 2])
        for i in range(5):
            for name, data in contents.items():
                step = -(-len(data) // 5)
                with open(h.folder / name, "ab") as f:
                    f.write(data[i * step : (i + 1) * step])
            time.sleep(0.4)
        h.wait_done(lost, *(h.folder / name for name in contents))
        h.wait_idle()
    for name, data in contents.items():
        [shown] = h.shown(h.folder / name)  # no verdict (and so no alert) for any partial write
        assert (shown.state, shown.sha256) == ("scored", sha256(data))
    assert h.ledger.count() == 3 and h.ledger.count("failed") == 1
    [failed] = h.shown(lost)
    assert failed.state == "failed" and "truncated DICOM (pixel data ends early" in failed.error


def test_truncated_and_corrupt_files_fail_clearly_and_the_daemon_goes_on(tmp_path):
    good_jpeg, good_png = jpeg_bytes(100, size=128), png_bytes(100, size=64)
    broken = {
        "truncated.jpg": good_jpeg[: len(good_jpeg) * 6 // 10],
        "corrupt.png": good_png[:33] + os.urandom(400) + good_png[-12:],
        "notes.jpg": b"operator notes, saved under an image name by mistake",
    }
    with running(tmp_path) as h:
        for name, data in broken.items():
            write(h.folder / name, data)
        h.wait_done(*(h.folder / name for name in broken))
        after = write(h.folder / "after.png", png_bytes(120))
        h.wait_done(after)
    errors = {name: h.ledger.capture_at(h.folder / name) for name in broken}
    assert all(row["state"] == "failed" and row["score"] is None for row in errors.values())
    assert "truncated JPEG (file ends early)" in errors["truncated.jpg"]["error"]
    assert "corrupt PNG" in errors["corrupt.png"]["error"]
    assert "not an image file" in errors["notes.jpg"]["error"]
    assert h.ledger.capture_at(after)["state"] == "scored"


def test_non_images_hidden_and_temporary_files_and_outside_links_stay_out_of_the_ledger(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    secret = write(outside / "secret.png", png_bytes(7))
    with running(tmp_path, ignore=["export-*"]) as h:
        (h.folder / "sub").mkdir()
        write(h.folder / "sub" / "deep.png", png_bytes(8))  # not recursive: sub-folders are not ours
        write(h.folder / "readme.txt", b"not an image")
        write(h.folder / "UUID-without-extension", b"\x00\x01 not an image either")
        write(h.folder / ".hidden.png", png_bytes(9))
        write(h.folder / "capture.png.tmp", png_bytes(10))
        write(h.folder / "export-1.png", png_bytes(11))
        os.symlink(secret, h.folder / "link.png")  # must never be followed out of the folder
        good = write(h.folder / "good.png", png_bytes(12))
        h.wait_done(good)
        h.wait_idle()
        assert h.daemon.reconcile() == 0, "the folder scan must skip the same files"
        h.wait_idle()
    assert [Path(row["path"]).name for row in h.ledger.captures()] == ["good.png"]
    assert h.scorer.times_scored(secret) == 0


def test_same_image_under_two_names_is_scored_once_and_both_resolve_to_its_verdict(tmp_path):
    data, twin = png_bytes(40), png_bytes(41)
    with running(tmp_path) as h:
        first = write(h.folder / "first.png", data)
        h.wait_done(first)
        copy = write(h.folder / "copy of first.png", data)
        h.wait_done(copy)
        # Two names arriving together: whichever is hashed first is the original.
        pair = [write(h.folder / "pair-a.png", twin), write(h.folder / "pair-b.png", twin)]
        h.wait_done(*pair)
        wait_for(lambda: len(h.shown(pair[0])) and len(h.shown(pair[1])), WAIT, "both names to be announced")
    original, duplicate = h.ledger.capture_at(first), h.ledger.capture_at(copy)
    assert original["sha256"] == duplicate["sha256"] == sha256(data)
    assert (original["duplicate"], duplicate["duplicate"]) == (0, 1)
    assert h.scorer.times_scored(first) + h.scorer.times_scored(copy) == 1
    [shown] = h.shown(copy)
    assert shown.duplicate_of == real(first) and shown.score == original["score"]
    assert sorted(h.ledger.capture_at(p)["duplicate"] for p in pair) == [0, 1]
    assert sum(h.scorer.times_scored(p) for p in pair) == 1
    assert h.ledger.count() == 2


def test_atomic_rename_into_the_folder(tmp_path):
    staging = tmp_path / "staging"  # same file system, outside the folder
    staging.mkdir()
    with running(tmp_path) as h:
        partial = write(h.folder / "capture-1.jpg.part", jpeg_bytes(60))
        renamed = h.folder / "capture-1.jpg"
        os.rename(partial, renamed)
        moved_in = h.folder / "capture-2.png"
        os.rename(write(staging / "capture-2.png", png_bytes(61)), moved_in)
        h.wait_done(renamed, moved_in)
    assert h.scorer.times_scored(renamed) == h.scorer.times_scored(moved_in) == 1
    assert not h.ledger.sightings(partial)
    assert h.ledger.count() == 2


def test_burst_of_300_captures_is_scored_exactly_once(tmp_path):
    contents = {f"burst-{i:03d}.png": png_bytes(1000 + i) for i in range(300)}
    with running(tmp_path) as h:
        for name, data in contents.items():
            write(h.folder / name, data)
        wait_for(lambda: h.ledger.count("scored") == 300, 60, "300 verdicts")
        h.wait_idle()
    assert h.ledger.count() == 300
    for name, data in contents.items():
        [sighting] = h.ledger.sightings(h.folder / name)
        assert sighting["sha256"] == sha256(data)
        assert h.scorer.times_scored(h.folder / name) == 1
    assert sum(len(batch) for batch in h.scorer.calls) == 300
    assert max(len(batch) for batch in h.scorer.calls) <= 8  # batches, bounded by --batch-size
    assert len(h.verdicts) == 300


def test_file_rewritten_after_hashing_gets_the_verdict_of_its_final_content(tmp_path):
    old, new = png_bytes(70), png_bytes(71)

    class RewritingScorer(BrightnessScorer):
        """The camera overwrites the capture just as it is being scored."""

        def score(self, paths, *, batch_size=8):
            if target in paths and not self.calls:
                time.sleep(0.01)  # a new mtime even on coarse-timestamp file systems
                write(Path(target), new)
            return super().score(paths, batch_size=batch_size)

    with running(tmp_path, RewritingScorer()) as h:
        target = real(h.folder / "retake.png")
        write(Path(target), old)
        wait_for(lambda: (row := h.ledger.capture_at(target)) and row["sha256"] == sha256(new)
                 and row["state"] == "scored", WAIT, "the verdict of the rewritten file")  # fmt: skip
        h.wait_idle()
    assert [row["sha256"] for row in h.ledger.captures()] == [sha256(new)]
    assert [v.sha256 for v in h.shown(Path(target))] == [sha256(new)]


def test_a_file_swapped_keeping_its_size_and_mtime_is_not_scored_as_the_capture_it_replaced(tmp_path):
    staging = tmp_path / "staging"
    staging.mkdir()
    mine, other_patients = tiff_bytes(40), tiff_bytes(200)  # uncompressed, same dimensions: same size
    assert len(mine) == len(other_patients)

    class SwappingScorer(BrightnessScorer):
        """Between hashing and scoring another file is renamed over the capture, its mtime set to the old one."""

        def score(self, paths, *, batch_size=8):
            if target in paths and not self.calls:
                before = os.stat(target)
                swapped = write(staging / "other.tif", other_patients)
                os.utime(swapped, ns=(before.st_atime_ns, before.st_mtime_ns))
                os.replace(swapped, target)
                assert FileStat.of(os.stat(target)) == FileStat.of(before), "size and mtime cannot tell"
            return super().score(paths, batch_size=batch_size)

    with running(tmp_path, SwappingScorer()) as h:
        target = real(h.folder / "capture.tif")
        write(Path(target), mine)
        wait_for(lambda: (row := h.ledger.capture_at(target)) and row["sha256"] == sha256(other_patients)
                 and row["state"] == "scored", WAIT, "the swapped-in file's own verdict")  # fmt: skip
        h.wait_idle()
    assert [(row["sha256"], row["state"]) for row in h.ledger.captures()] == [(sha256(other_patients), "scored")]
    [shown] = h.shown(Path(target))
    assert shown.sha256 == sha256(other_patients) and shown.score > 60, "the other file's content, under its hash"


def test_a_huge_capture_is_decoded_aside_and_never_holds_up_the_capture_behind_it(tmp_path, monkeypatch):
    from PIL import Image

    import pyfundus.io

    def slow_decode(path, **limits):  # the heavy capture's decode, made slow for certain
        time.sleep(1.5)
        return pyfundus.io.read_image(path, **limits)

    monkeypatch.setattr(scoring, "read_image", slow_decode, raising=False)
    buffer = io.BytesIO()
    Image.new("RGB", (5000, 4000), (150, 60, 30)).save(buffer, format="PNG")  # 20 MP in a few KB
    with running(tmp_path) as h:
        huge = write(h.folder / "huge.png", buffer.getvalue())
        good = write(h.folder / "good.png", png_bytes(200))
        h.wait_done(huge, good)
        h.wait_idle()
    assert [Path(v.path).name for v in h.verdicts] == ["good.png", "huge.png"], "the good capture must not wait for the huge one"
    assert [real(huge)] in h.scorer.calls and [real(good)] in h.scorer.calls, "neither waited in the other's batch"
    [verdict] = h.shown(huge)
    assert verdict.state == "scored" and verdict.sha256 == sha256(buffer.getvalue())
    assert abs(verdict.score - 80 / 255 * 100) < 0.01


def test_a_scorer_crash_costs_only_the_image_that_caused_it(tmp_path):
    class CrashingScorer(BrightnessScorer):
        def score(self, paths, *, batch_size=8):
            if any("poison" in p for p in paths):
                raise RuntimeError("model blew up")
            return super().score(paths, batch_size=batch_size)

    with running(tmp_path, CrashingScorer()) as h:
        paths = [write(h.folder / name, png_bytes(i)) for i, name in enumerate(["a.png", "poison.png", "b.png"])]
        h.wait_done(*paths)
        after = write(h.folder / "after.png", png_bytes(5))
        h.wait_done(after)
    poison = h.ledger.capture_at(paths[1])
    assert poison["state"] == "failed" and "the scorer failed (RuntimeError: model blew up)" in poison["error"]
    assert all(h.ledger.capture_at(p)["state"] == "scored" for p in (paths[0], paths[2], after))


def test_dicom_identity_is_recorded_and_a_resent_instance_is_linked_to_the_first(tmp_path):
    uid = "1.2.826.0.1.3680043.8.498.12345"
    first_bytes = dicom_bytes(60, patient_id="PAT-7", laterality="L", sop_instance_uid=uid)
    resent_bytes = dicom_bytes(61, patient_id="PAT-7", laterality="L", sop_instance_uid=uid)  # re-export
    with running(tmp_path) as h:
        first = write(h.folder / "IMG0001.dcm", first_bytes)
        h.wait_done(first)
        resent = write(h.folder / "IMG0001-resent.dcm", resent_bytes)
        h.wait_done(resent)
    original, again = h.ledger.capture_at(first), h.ledger.capture_at(resent)
    assert (original["eye"], original["patient_id"], original["sop_instance_uid"]) == ("L", "PAT-7", uid)
    assert original["study_uid"] and original["same_instance_as"] is None
    assert again["state"] == "scored" and again["same_instance_as"] == sha256(first_bytes)


# ---- the watcher: modes and failures ------------------------------------------------


def test_polling_mode_sees_new_files_and_sub_folders(tmp_path):
    with running(tmp_path, poll=0.2, recursive=True) as h:
        assert h.daemon.watcher.mode == "polling"
        top = write(h.folder / "top.png", png_bytes(20))  # no scan due for 30 s: only polling can find it
        h.wait_done(top)
        (h.folder / "left eye").mkdir()
        deep = write(h.folder / "left eye" / "deep.png", png_bytes(21))
        h.wait_done(deep)


def test_falls_back_to_polling_when_native_events_cannot_be_set_up(tmp_path, monkeypatch):
    monkeypatch.setattr(watcher, "FALLBACK_POLL_SECONDS", 0.2)

    def watch_limit_reached():
        raise OSError(errno.ENOSPC, "inotify watch limit reached")

    with running(tmp_path, make_native_observer=watch_limit_reached) as h:
        assert h.daemon.watcher.mode == "polling"
        capture = write(h.folder / "capture.png", png_bytes(22))
        h.wait_done(capture)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_dead_observer_thread_is_restarted_and_nothing_is_missed(tmp_path):
    class Bomb(FileSystemEventHandler):
        """Any exception in a handler kills watchdog's observer thread, silently."""

        def dispatch(self, event):
            raise RuntimeError("handler bug")

    with running(tmp_path) as h:
        doomed = h.daemon.watcher.observer
        doomed.add_handler_for_watch(Bomb(), h.daemon.watcher.watch)
        first = write(h.folder / "kills-the-observer.png", png_bytes(30))
        wait_for(lambda: not doomed.is_alive(), WAIT, "the observer thread to die")
        h.wait_done(first)  # found by the rescan that follows the restart, if its event was lost
        second = write(h.folder / "after-restart.png", png_bytes(31))
        h.wait_done(second)
        assert h.daemon.watcher.observer is not doomed and h.daemon.watcher.observer.is_alive()
        assert h.daemon.watcher.restarts == 1 and h.daemon.watcher.problem() is None


def test_watched_folder_disappearing_and_coming_back(tmp_path):
    with running(tmp_path) as h:
        before = write(h.folder / "before.png", png_bytes(50))
        h.wait_done(before)
        shutil.rmtree(h.folder)  # share unmounted, folder deleted by a cleanup script...
        wait_for(lambda: not h.daemon.status()["folder_present"], WAIT, "the daemon to notice")
        h.folder.mkdir()
        back = write(h.folder / "back.png", png_bytes(51))
        h.wait_done(back)
        # Replaced under the daemon: the old inode (still watched) renamed away, a new folder in its place.
        h.folder.rename(tmp_path / "camera.old")
        h.folder.mkdir()
        replaced = write(h.folder / "replaced.png", png_bytes(52))
        h.wait_done(replaced)
        write(tmp_path / "camera.old" / "stray.png", png_bytes(53))
        fresh = write(h.folder / "fresh.png", png_bytes(54))
        h.wait_done(fresh)
        h.wait_idle()
        assert h.daemon.watcher.mode == "native" and h.daemon.watcher.problem() is None
        assert h.daemon.watcher.restarts >= 2
    assert h.ledger.count() == 4  # the file in the renamed-away folder is not ours


# ---- the ledger: restarts, failures, export -------------------------------------------


def pending_rows(state: Path, files: dict[str, Path], attempts: dict[str, int]) -> None:
    """The ledger a killed daemon leaves: a pending row per file, with its interrupted scoring attempts."""
    state.mkdir(exist_ok=True)
    ledger = Ledger(state / "ledger.sqlite3")
    for name, count in attempts.items():
        path, digest = real(files[name]), sha256(files[name].read_bytes())
        ledger.claim(digest, path, FileStat.of(os.stat(path)), time.time())
        for _ in range(count):
            ledger.begin_attempts([digest])
    ledger.close()


def test_restart_scores_pending_rows_first_then_the_backlog_and_gives_up_after_three_interruptions(tmp_path):
    folder, state = tmp_path / "camera", tmp_path / "state"
    folder.mkdir()
    names = ["mid-score.png", "queued.png", "poison.png", "backlog.png"]
    files = {name: write(folder / name, png_bytes(i)) for i, name in enumerate(names)}
    # The last run died: mid-score.png was being scored, queued.png was waiting, poison.png killed the
    # process three times already (twice while scored alone); backlog.png never got into the ledger.
    pending_rows(state, files, {"mid-score.png": 1, "queued.png": 0, "poison.png": 3})
    with running(tmp_path) as h:
        h.wait_done(*files.values())
    assert h.scorer.calls[0] == [real(files["mid-score.png"])]  # alone: if it crashes again, only it is blamed
    assert h.scorer.calls[1] == [real(files["queued.png"])]
    assert real(files["backlog.png"]) in h.scorer.calls[2]
    poison = h.ledger.capture_at(files["poison.png"])
    assert poison["state"] == "failed" and poison["error"] == f"{real(files['poison.png'])}: {KEEPS_CRASHING}"
    assert h.scorer.times_scored(files["poison.png"]) == 0


def test_two_crashes_in_a_row_do_not_fail_a_capture_and_a_third_is_announced_everywhere(tmp_path):
    folder, state = tmp_path / "camera", tmp_path / "state"
    folder.mkdir()
    files = {name: write(folder / name, png_bytes(i)) for i, name in enumerate(["healthy.png", "poison.png"])}
    pending_rows(state, files, {"healthy.png": 2, "poison.png": 3})  # killed twice; three times
    alerts = tmp_path / "alerts.jsonl"
    recorder = [sys.executable, "-c", f"import sys; open({str(alerts)!r}, 'ab').write(sys.stdin.buffer.read() + b'\\n')"]
    with running(tmp_path, web=True, web_port=0, alert_command=recorder, alert_redact=False) as h:
        h.wait_done(*files.values())
        port = h.daemon.web.port
        wait_for(lambda: alerts.exists() and alerts.read_text().count("\n") == 2, WAIT, "two alerts (Reject, Failed)")
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=WAIT).read().decode()
        history = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/api/history", timeout=WAIT))
    assert h.scorer.calls == [[real(files["healthy.png"])]], "scored once more, alone"
    assert h.ledger.capture_at(files["healthy.png"])["state"] == "scored"
    [failed] = h.shown(files["poison.png"])  # the stdout line, the sidecar: every sink gets the verdict
    assert failed.state == "failed" and KEEPS_CRASHING in failed.error
    alerted = {json.loads(line)["state"]: json.loads(line)["sha256"] for line in alerts.read_text().splitlines()}
    assert alerted["failed"] == sha256(files["poison.png"].read_bytes())
    assert "pyfundus_failures_total 1" in metrics.splitlines()
    assert sorted(row["class"] for row in history["captures"]) == ["Failed", "Reject"]  # healthy.png is dark


def test_ledger_failing_mid_run_keeps_verdicts_in_memory_and_saves_them_later(tmp_path, monkeypatch):
    monkeypatch.setattr(scoring, "RETRY_SECONDS", 0.2)
    broken = threading.Event()
    broken.set()

    def failing(method):
        def call(*args, **kwargs):
            if broken.is_set():
                raise LedgerError("ledger: could not store verdicts (database or disk is full)")
            return method(*args, **kwargs)

        return call

    with running(tmp_path) as h:
        ledger = h.daemon.ledger
        monkeypatch.setattr(ledger, "claim", failing(ledger.claim))
        monkeypatch.setattr(ledger, "record", failing(ledger.record))
        during = write(h.folder / "during.png", png_bytes(80))
        wait_for(lambda: h.shown(during), WAIT, "the verdict to be shown although the ledger fails")
        assert h.ledger.capture_at(during) is None
        assert h.daemon.status()["unsaved_verdicts"] == 1
        broken.clear()  # space freed
        later = write(h.folder / "later.png", png_bytes(81))
        h.wait_done(during, later)
        wait_for(lambda: h.daemon.status()["unsaved_verdicts"] == 0, WAIT, "held verdicts to be saved")
    assert h.ledger.capture_at(during)["sha256"] == sha256(png_bytes(80))
    assert h.scorer.times_scored(during) == 1


def test_results_export_json_and_csv(tmp_path, capsys):
    with running(tmp_path) as h:
        paths = [write(h.folder / "a.png", png_bytes(90)), write(h.folder / "bad.jpg", b"not a jpeg")]
        h.wait_done(*paths)
        copy = write(h.folder / "a-copy.png", png_bytes(90))
        h.wait_done(copy)
        state = str(h.daemon.config.state_dir)
        capsys.readouterr()
        assert daemon_main(["results", "export", "--state-dir", state, "--format", "json"]) == 0  # while running
    records = {Path(r["path"]).name: r for r in json.loads(capsys.readouterr().out)}
    assert set(records) == {"a.png", "bad.jpg"}
    assert records["a.png"]["state"] == "scored" and records["a.png"]["class"] in ("Good", "Usable", "Reject")
    assert records["a.png"]["other_paths"] == [real(copy)] and records["a.png"]["model"] == "stub-brightness"
    assert records["a.png"]["scored_by"] == "local"
    assert records["bad.jpg"]["state"] == "failed" and "not an image file" in records["bad.jpg"]["error"]
    out = tmp_path / "verdicts.csv"
    assert daemon_main(["results", "export", "--state-dir", state, "--format", "csv", "-o", str(out)]) == 0
    header, *rows = out.read_text().splitlines()
    assert header.split(",") == list(CSV_COLUMNS) and len(rows) == 2
    assert daemon_main(["results", "export", "--state-dir", str(tmp_path / "nowhere")]) == 2
    assert "no ledger" in capsys.readouterr().err


def test_a_ledger_from_before_scored_by_gains_the_column_and_keeps_its_verdicts(tmp_path):
    with running(tmp_path) as h:
        h.wait_done(write(h.folder / "a.png", png_bytes(90)))
    path = tmp_path / "state" / "ledger.sqlite3"
    with sqlite3.connect(path) as conn:  # as a ledger written before the column existed
        conn.execute("ALTER TABLE captures DROP COLUMN scored_by")
    ((verdict, _),) = Ledger(path, readonly=True).captures()  # a reader cannot add it: None
    assert verdict.scored_by is None and verdict.state == "scored"
    Ledger(path).close()  # the daemon's read-write open adds it
    with sqlite3.connect(path) as conn:
        assert "scored_by" in {row[1] for row in conn.execute("PRAGMA table_info(captures)")}


# ---- the process: signals, lock, state directory, config -----------------------------------


def test_sigkill_mid_burst_then_restart_leaves_exactly_one_verdict_per_capture(tmp_path):
    folder, state = tmp_path / "camera", tmp_path / "state"
    folder.mkdir()
    args = ["watch", str(folder), "--state-dir", str(state), "--batch-size", "4", "--json", *FAST_FLAGS]
    contents = {folder / f"k{i:03d}.png": png_bytes(2000 + i) for i in range(150)}
    view = LedgerView(state)

    def camera() -> None:
        for path, data in contents.items():
            write(path, data)
            time.sleep(0.005)

    with open(tmp_path / "run1.out", "wb") as out:
        first = spawn(args, out, delay=0.01)
        writer = threading.Thread(target=camera)
        writer.start()
        try:
            wait_for(lambda: view.count("scored") >= 40, 120, "40 verdicts before the kill")
            first.send_signal(signal.SIGKILL)  # no drain, no cleanup, maybe mid-transaction
            first.wait(10)
        finally:
            writer.join()
    assert view.count("scored") < 150, "the kill came too late to test anything"
    with open(tmp_path / "run2.out", "wb") as out:
        second = spawn(args, out)
        try:
            wait_for(lambda: view.count("scored") == 150, 120, "every capture scored after the restart")
        finally:
            second.send_signal(signal.SIGTERM)
            assert second.wait(30) == 0
    assert view.count() == 150 and view.count("pending") == 0
    for path, data in contents.items():
        [sighting] = view.sightings(path)
        assert sighting["sha256"] == sha256(data)
    shown = [r["path"] for run in ("run1.out", "run2.out") for r in json_lines(tmp_path / run)]
    assert len(shown) == len(set(shown)), "a capture was announced twice"


def test_sigterm_drains_the_queue_and_exits_0(tmp_path):
    """Also: the TOML config, --json lines, sidecars outside the folder, a DICOM, redacted logs."""
    folder, state, sidecars = tmp_path / "camera", tmp_path / "state", tmp_path / "sidecars"
    folder.mkdir()
    config = tmp_path / "pyfundus.toml"
    config.write_text(
        'state_dir = "state"\nsidecars = "sidecars"\njson = true\nredact_identifiers = true\n'
        'batch_size = 2\nlog_level = "debug"\n'
    )
    dicom = dicom_bytes(150, patient_id="PAT-SECRET-42", laterality="R")
    write(folder / "Smith_John_OD.dcm", dicom)
    write(folder / "Smith_John_OD copy.dcm", dicom)
    write(folder / "Smith_John notes.txt", b"seen by Dr X")
    for i in range(10):
        write(folder / f"Smith_John_{i}.png", png_bytes(300 + i))
    view = LedgerView(state)
    out_path = tmp_path / "stdout"
    with open(out_path, "wb") as out:
        proc = spawn(["watch", str(folder), "--config", str(config), *FAST_FLAGS], out, delay=0.2)
        try:
            wait_for(lambda: json_lines(out_path), WAIT, "the first verdict line")
            assert view.count("pending") > 0, "nothing left to drain"
        finally:
            proc.send_signal(signal.SIGTERM)
            returncode = proc.wait(30)
    assert returncode == 0
    assert view.count("pending") == 0 and view.count() >= 2
    lines = json_lines(out_path)
    # Redacted JSON lines: files by the log's pseudonyms, no patient ID (the sha256 identifies the capture).
    announced = {line["path"] for line in lines}
    assert {row["sha256"] for row in view.captures()} <= {line["sha256"] for line in lines}
    assert len(lines) == len(announced) and all(path.startswith("file-") for path in announced)
    [dicom_line] = [line for line in lines if line["sha256"] == sha256(dicom) and line["duplicate_of"] is None]
    assert (dicom_line["eye"], dicom_line["patient_id"]) == ("R", None)
    assert "Smith_John" not in out_path.read_text() and "PAT-SECRET-42" not in out_path.read_text()
    sidecar = json.loads((sidecars / "Smith_John_OD.dcm.json").read_text())
    assert sidecar["sha256"] == sha256(dicom) and sidecar["eye"] == "R"
    assert not list(folder.glob("*.json")), "nothing may be written into the camera folder"
    log_text = (state / "pyfundusd.log").read_text()
    assert "SIGTERM received" in log_text and "has the same content as file-" in log_text
    assert "Smith_John" not in log_text and "PAT-SECRET-42" not in log_text


def test_read_only_state_dir_is_a_clear_error_at_start(tmp_path):
    folder, state = tmp_path / "camera", tmp_path / "state"
    folder.mkdir()
    state.mkdir()
    state.chmod(0o555)
    prefix: tuple[str, ...] = ()
    if os.geteuid() == 0:  # root ignores permission bits unless it gives up CAP_DAC_OVERRIDE
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("running as root without setpriv: cannot make a directory read-only for the daemon")
        prefix = (setpriv, "--bounding-set=-dac_override", "--")
    env = {**os.environ, "STUB_DELAY": "0"}
    command = [*prefix, sys.executable, str(HELPER), "watch", str(folder), "--state-dir", str(state)]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == 2
    assert f"state directory {state} is not writable (Permission denied)" in proc.stderr
    assert not (state / "ledger.sqlite3").exists()


def test_a_second_instance_on_the_same_state_dir_exits_2(tmp_path, capsys):
    with running(tmp_path) as h:
        argv = ["watch", str(h.folder), "--state-dir", str(h.daemon.config.state_dir)]
        assert daemon_main(argv, scorer=BrightnessScorer()) == 2
    assert f"another pyfundus watch (pid {os.getpid()}) is already running" in capsys.readouterr().err


def test_config_file_and_flags_flags_win(tmp_path):
    folder = tmp_path / "camera"
    folder.mkdir()
    config = tmp_path / "etc" / "watch.toml"
    config.parent.mkdir()
    config.write_text(f'folder = "{folder}"\nstate_dir = "state"\npoll = 2\nrecursive = true\nignore = ["*.xml"]\n')
    merged = load_config({"poll": 0.5, "recursive": False}, config)
    assert (merged.poll, merged.recursive, merged.ignore) == (0.5, False, ["*.xml"])
    assert merged.state_dir == tmp_path / "etc" / "state"  # relative to the config file
    assert set(CONFIG_KEYS) == {f.name for f in fields(WatchConfig)}  # every setting can come from the file

    config.write_text(f'folder = "{folder}"\npol = 2\n')
    with pytest.raises(ConfigError, match="unknown key"):
        load_config({}, config)
    with pytest.raises(ConfigError, match="inside the watched folder"):
        load_config({"folder": folder, "state_dir": folder / ".state"})
    assert load_config({"folder": folder, "state_dir": folder / ".state", "allow_inside_folder": True})
    with pytest.raises(ConfigError, match="does not exist"):
        load_config({"folder": tmp_path / "missing"})


def test_watch_help_lists_the_options_under_their_headings():
    import argparse

    from pyfundus.daemon.cli import add_commands
    from pyfundus.daemon.config import OPTION_GROUPS, OPTIONS, Option

    commands = argparse.ArgumentParser(prog="pyfundus").add_subparsers()
    add_commands(commands)
    text = commands.choices["watch"].format_help()
    headings = [f"\n{title}:\n" for title in OPTION_GROUPS.values()]
    assert all(heading in text for heading in headings)
    positions = [text.index(heading) for heading in headings]
    assert positions == sorted(positions)  # in the order OPTION_GROUPS gives
    for option in OPTIONS:  # each option under its own heading: after it, and before the next one
        at = text.index(f"\n  {option.flags[0]}")
        mine = list(OPTION_GROUPS).index(option.group)
        assert positions[mine] < at < (positions[mine + 1] if mine + 1 < len(positions) else len(text)), option.name
    with pytest.raises(ValueError, match="group must be one of"):
        Option("new_setting", "bool", "an option added without a heading")


def test_thresholds_come_from_the_file_or_the_flags_and_are_checked(tmp_path):
    folder = tmp_path / "camera"
    folder.mkdir()
    config = tmp_path / "watch.toml"
    config.write_text(f'folder = "{folder}"\nstate_dir = "{tmp_path / "state"}"\nreject_below = 20\ngood_from = 45.5\n')
    merged = load_config({"good_from": 50.0}, config)
    assert (merged.reject_below, merged.good_from) == (20.0, 50.0)
    for bad in ("good_from = 150", "reject_below = true", 'reject_below = "low"'):
        config.write_text(f'folder = "{folder}"\n{bad}\n')
        with pytest.raises(ConfigError, match="reject_below|good_from"):
            load_config({}, config)


def test_precision_and_compile_come_from_the_file_and_reach_the_model(tmp_path, monkeypatch):
    folder = tmp_path / "camera"
    folder.mkdir()
    config = tmp_path / "watch.toml"
    config.write_text(f'folder = "{folder}"\nstate_dir = "{tmp_path / "state"}"\nprecision = "bf16"\ncompile = true\n')
    merged = load_config({}, config)
    assert (merged.precision, merged.compile) == ("bf16", True)
    config.write_text(f'folder = "{folder}"\nprecision = "fp8"\n')
    with pytest.raises(ConfigError, match="precision"):
        load_config({}, config)

    loaded, scored = [], []

    class Recorder:
        thresholds = Thresholds(reject_below=40, good_from=60)
        config = type("Config", (), {"thresholds": thresholds})()
        backend_description, trained, name = "recorder", True, "recorder"

        def score(self, inputs, *, batch_size=8):
            scored.append(len(inputs))
            return []

    def fake_load_model(model, **kwargs):
        loaded.append(kwargs)
        return Recorder()

    monkeypatch.setattr("pyfundus.api.load_model", fake_load_model)
    load_scorer(None, "cpu", "torch", precision="bf16", compile=True)
    assert loaded[-1] == {"device": "cpu", "backend": "torch", "precision": "bf16", "compile": True,
                          "thresholds": {"reject_below": None, "good_from": None}}  # fmt: skip
    assert scored == [1, 2]  # warmed up for one image and for batches: no capture waits on a compile
    scored.clear()
    load_scorer(None, "cpu")
    assert loaded[-1]["compile"] is False and scored == [1]


def test_compile_with_another_backend_is_a_startup_error():
    with pytest.raises(StartupError, match="compile applies to the torch backend"):
        load_scorer("fthnet_s", "cpu", "onnxruntime", compile=True)


# ---- the real model -------------------------------------------------------------------


def test_an_untrained_model_in_the_daemon_does_not_silence_later_models(caplog):
    """The daemon says "untrained" once, in its log, for its own model; it must not turn the warning off
    for every model the process loads later (it once did, with a process-wide warnings filter)."""
    disc = np.zeros((256, 256, 3), np.uint8)
    cv2.circle(disc, (128, 128), 110, (170, 80, 40), -1)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UntrainedModelWarning)  # the daemon's own model must not warn per batch
        scorer = load_scorer("fthnet_l", "cpu")  # no shipped weights: untrained
        assert scorer.score([disc])[0].trained is False
    assert "NO trained weights" in caplog.text
    with pytest.warns(UntrainedModelWarning, match="meaningless"):
        load_model("fthnet_s", pretrained=False).score([disc])
    with pytest.warns(UntrainedModelWarning):
        scorer.warn_untrained = True  # the attribute, not a filter, is what kept it quiet
        scorer.score([disc])


def test_a_site_can_move_the_models_thresholds(caplog):
    caplog.set_level(logging.INFO, logger="pyfundus.daemon.scoring")
    scorer = load_scorer("fthnet_s", "cpu", reject_below=20, good_from=45)
    assert (scorer.thresholds.reject_below, scorer.thresholds.good_from) == (20.0, 45.0)
    assert not scorer.thresholds.calibrated  # set by hand, and recorded as such
    # The log says which are in force, in the words of the start-up lines and pyfundus score's summary.
    assert "thresholds: Reject below 20, Good from 45 (not calibrated); set for this site" in caplog.text
    shipped = read_config(shipped_weights()).thresholds
    caplog.clear()
    load_scorer("fthnet_s", "cpu")
    assert f"thresholds: {shipped.describe()}; the model's" in caplog.text
    kept = load_scorer("fthnet_s", "cpu", good_from=80)
    assert kept.thresholds.reject_below == load_scorer("fthnet_s", "cpu").thresholds.reject_below
    with pytest.raises(StartupError, match="reject_below < good_from"):
        load_scorer("fthnet_s", "cpu", reject_below=60, good_from=50)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_end_to_end_with_the_real_model(tmp_path):
    from PIL import Image
    from skimage import data as skdata

    folder = tmp_path / "camera"
    folder.mkdir()
    config = WatchConfig(folder=folder, state_dir=tmp_path / "state", model="fthnet_s", **FAST)
    verdicts: list[Verdict] = []
    daemon = Daemon(config, sinks=[verdicts.append])  # no scorer given: loads the model itself
    daemon.start()
    try:
        Image.fromarray(skdata.retina()).resize((512, 512)).save(folder / "retina.jpg", quality=90)
        wait_for(lambda: verdicts, 120, "the real model's verdict")
    finally:
        daemon.stop()
    [verdict] = verdicts
    assert verdict.state == "scored", verdict.error
    assert 0.0 <= verdict.score <= 100.0 and verdict.quality_class in ("Good", "Usable", "Reject")
    assert (verdict.model, verdict.trained) == ("fthnet_s", True)  # the shipped weights
    assert "torch" in verdict.backend
    assert LedgerView(tmp_path / "state").capture_at(folder / "retina.jpg")["state"] == "scored"

"""Reject actions: copy or move captures graded Reject, only after their verdict is in the ledger."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sqlite3

import pytest
from daemon_helpers import sha256, wait_for, write
from live_daemon import WAIT, bright_png, dark_png, running

from pyfundus.daemon.config import WatchConfig
from pyfundus.daemon.errors import ConfigError
from pyfundus.daemon.ledger import Ledger
from pyfundus.daemon.logs import Redactor
from pyfundus.daemon.records import FileStat, Verdict, WorkItem
from pyfundus.daemon.rejects import RejectAction
from pyfundus.daemon.sinks import SidecarWriter


def test_off_by_default_the_camera_folder_is_never_touched(tmp_path):
    with running(tmp_path) as h:
        assert h.daemon.config.reject_action == "off"
        dark = write(h.folder / "dark.png", dark_png())
        h.wait_done(dark)
    assert os.listdir(h.folder) == ["dark.png"] and dark.read_bytes() == dark_png()
    assert h.ledger.capture_at(dark)["quality_class"] == "Reject" and h.ledger.capture_at(dark)["reject_copy"] is None


def test_copy_puts_a_copy_of_each_reject_aside_and_records_where(tmp_path):
    rejects, sidecars = tmp_path / "rejects", tmp_path / "sidecars"
    with running(tmp_path, reject_action="copy", reject_folder=rejects) as h:
        h.daemon.sinks.add(SidecarWriter(sidecars, h.daemon.root))
        dark, bright = write(h.folder / "dark.png", dark_png()), write(h.folder / "bright.png", bright_png())
        h.wait_done(dark, bright)
        wait_for(lambda: (sidecars / "dark.png.json").exists(), WAIT, "the sidecar")
    assert sorted(os.listdir(h.folder)) == ["bright.png", "dark.png"] and dark.read_bytes() == dark_png()
    assert os.listdir(rejects) == ["dark.png"] and (rejects / "dark.png").read_bytes() == dark_png()
    assert h.ledger.capture_at(dark)["reject_copy"] == str(rejects / "dark.png")
    assert h.ledger.capture_at(bright)["reject_copy"] is None
    assert json.loads((sidecars / "dark.png.json").read_text())["reject_copy"] == str(rejects / "dark.png")
    [shown] = [v for v in h.verdicts if v.path == os.path.realpath(dark)]
    assert shown.reject_copy == str(rejects / "dark.png"), "outputs after the action see where the file went"


def test_move_takes_rejects_out_of_the_folder_without_overwriting_anything(tmp_path):
    rejects = tmp_path / "rejects"
    rejects.mkdir()
    (rejects / "dark.png").write_bytes(b"yesterday's reject")
    with running(tmp_path, reject_action="move", reject_folder=rejects) as h:
        dark = write(h.folder / "dark.png", dark_png())
        h.wait_done(dark)
        wait_for(lambda: not dark.exists(), WAIT, "the move")
        again = write(h.folder / "dark.png", dark_png(1))  # a retake saved under the same name, also rejected
        wait_for(lambda: not again.exists() and len(os.listdir(rejects)) == 3, WAIT, "the second move")
        assert h.daemon.reconcile() == 0, "a moved file is not looked for again"
    assert (rejects / "dark.png").read_bytes() == b"yesterday's reject"
    assert (rejects / "dark (1).png").read_bytes() == dark_png()
    assert (rejects / "dark (2).png").read_bytes() == dark_png(1)
    recorded = {row["sha256"]: row["reject_copy"] for row in h.ledger.captures()}
    assert recorded == {sha256(dark_png()): str(rejects / "dark (1).png"), sha256(dark_png(1)): str(rejects / "dark (2).png")}


def _pending_capture(tmp_path, data: bytes) -> tuple[Ledger, Verdict]:
    folder = tmp_path / "camera"
    folder.mkdir()
    path = write(folder / "dark.png", data)
    ledger = Ledger(tmp_path / "ledger.sqlite3")
    digest = hashlib.sha256(data).hexdigest()
    stat = FileStat.of(os.stat(path))
    ledger.claim(digest, str(path), stat, 0.0)
    verdict = Verdict(path=str(path), sha256=digest, state="scored", score=5.0, quality_class="Reject",
                      first_seen=1.0, scored_at=2.0)
    return ledger, verdict


def test_no_move_before_the_verdict_is_committed_or_when_the_file_changed(tmp_path, caplog):
    ledger, verdict = _pending_capture(tmp_path, dark_png())
    rejects = tmp_path / "rejects"
    action = RejectAction("move", rejects, root=str(tmp_path / "camera"), ledger=ledger,
                          names=Redactor([str(tmp_path / "camera")], enabled=False))  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="pyfundus.daemon.rejects"):
        action(verdict)  # the ledger row is still pending (as when the ledger refused the verdict)
    assert os.path.exists(verdict.path) and os.listdir(rejects) == [] and verdict.reject_copy is None
    assert "its verdict is not in the ledger" in caplog.text
    item = WorkItem(verdict.sha256, verdict.path, FileStat.of(os.stat(verdict.path)), detected_at=0.0)
    ledger.record([(item, verdict)])
    write(tmp_path / "camera" / "dark.png", dark_png(5))  # the camera rewrote it after scoring
    with caplog.at_level(logging.WARNING, logger="pyfundus.daemon.rejects"):
        action(verdict)
    assert os.path.exists(verdict.path) and os.listdir(rejects) == []
    assert "changed since it was scored" in caplog.text
    write(tmp_path / "camera" / "dark.png", dark_png())
    action(verdict)
    assert not os.path.exists(verdict.path) and verdict.reject_copy == str(rejects / "dark.png")
    [(stored, _)] = ledger.captures()
    assert stored.reject_copy == str(rejects / "dark.png")
    ledger.close()


def test_reject_settings_are_checked(tmp_path):
    folder = tmp_path / "camera"
    folder.mkdir()
    with pytest.raises(ConfigError, match="needs --reject-folder"):
        WatchConfig(folder=folder, reject_action="move").validate()
    with pytest.raises(ConfigError, match="reject folder .* is inside the watched folder"):
        WatchConfig(folder=folder, reject_action="copy", reject_folder=folder / "rejects").validate()


def test_a_ledger_from_before_reject_actions_gets_the_column(tmp_path):
    path = tmp_path / "ledger.sqlite3"
    Ledger(path).close()
    conn = sqlite3.connect(path)
    conn.execute("ALTER TABLE captures DROP COLUMN reject_copy")
    conn.close()
    Ledger(path).close()
    conn = sqlite3.connect(path)
    assert "reject_copy" in {row[1] for row in conn.execute("PRAGMA table_info(captures)")}
    conn.close()

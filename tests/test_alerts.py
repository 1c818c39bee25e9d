"""Alert hooks (command, webhook, desktop) and the redaction of what leaves the daemon (alerts, stdout lines)."""

from __future__ import annotations

import io
import json
import logging
import os
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from daemon_helpers import LedgerView, dicom_bytes, jpeg_bytes, wait_for, write
from live_daemon import WAIT, bright_png, dark_png, running

from pyfundus.daemon.alerts import AlertChannel, DesktopAlert, WebhookAlert
from pyfundus.daemon.config import WatchConfig, load_config
from pyfundus.daemon.errors import ConfigError
from pyfundus.daemon.logs import Redactor, daemon_logging
from pyfundus.daemon.records import Verdict
from pyfundus.daemon.sinks import VerdictPrinter

HELPER = Path(__file__).with_name("daemon_helpers.py")
DARK_SEED = 10  # a dark DICOM: graded Reject by the stub scorer
RECORDER = "import sys; open(sys.argv[1], 'ab').write(sys.stdin.buffer.read() + b'\\n')"


def truncated_jpeg(seed: int = 3) -> bytes:
    data = jpeg_bytes(seed, size=128)
    return data[: len(data) * 6 // 10]


def recorded(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


# ---- the command hook -----------------------------------------------------------------


def test_command_gets_the_verdict_json_on_stdin_for_reject_and_failed_only(tmp_path):
    out = tmp_path / "alerts.jsonl"
    command = [sys.executable, "-c", RECORDER, str(out)]
    with running(tmp_path, alert_command=command, alert_redact=False) as h:
        files = [
            write(h.folder / "dark.png", dark_png()),
            write(h.folder / "bright.png", bright_png()),
            write(h.folder / "broken.jpg", truncated_jpeg()),
        ]
        h.wait_done(*files)
        wait_for(lambda: len(recorded(out)) >= 2, WAIT, "two alerts")
    alerts = {Path(a["path"]).name: a for a in recorded(out)}
    assert set(alerts) == {"dark.png", "broken.jpg"}, "Good is not alerted on by default"
    assert alerts["dark.png"]["class"] == "Reject" and alerts["dark.png"]["event"] == "pyfundus.alert"
    assert alerts["broken.jpg"]["state"] == "failed" and "truncated" in alerts["broken.jpg"]["error"]
    assert alerts["dark.png"]["sha256"] == h.ledger.capture_at(files[0])["sha256"]


def test_alert_on_chooses_the_classes(tmp_path):
    out = tmp_path / "alerts.jsonl"
    command = [sys.executable, "-c", RECORDER, str(out)]
    with running(tmp_path, alert_command=command, alert_on=["Good"], alert_redact=False) as h:
        files = [write(h.folder / "dark.png", dark_png()), write(h.folder / "bright.png", bright_png())]
        h.wait_done(*files)
    assert [Path(a["path"]).name for a in recorded(out)] == ["bright.png"]


def test_redacted_payload_has_no_file_name_patient_id_or_uids(tmp_path):
    out = tmp_path / "alerts.jsonl"
    command = [sys.executable, "-c", RECORDER, str(out)]
    with running(tmp_path, alert_command=command) as h:  # alert_redact is on by default
        files = [
            write(h.folder / "Doe_Jane_OD.dcm", dicom_bytes(DARK_SEED, patient_id="PAT-4711", laterality="R")),
            write(h.folder / "Doe_Jane_OS.jpg", truncated_jpeg()),  # failed: its error names the file
        ]
        h.wait_done(*files)
        wait_for(lambda: len(recorded(out)) == 2, WAIT, "two alerts")
    text = out.read_text()
    assert "Doe_Jane" not in text and "PAT-4711" not in text and str(h.folder) not in text
    by_state = {a["state"]: a for a in recorded(out)}
    scored = by_state["scored"]
    assert scored["class"] == "Reject" and scored["eye"] == "R"
    assert scored["patient_id"] is scored["study_uid"] is scored["sop_instance_uid"] is None
    assert scored["path"].startswith("file-"), "files are named by the log's per-run pseudonyms"
    assert scored["sha256"] == h.ledger.capture_at(files[0])["sha256"], "the hash still names the capture locally"
    assert by_state["failed"]["error"].startswith("<file>: truncated")


def test_a_failing_or_hanging_command_is_logged_and_scoring_goes_on(tmp_path, caplog):
    script = "import sys, time; sys.stdin.read(); print('pager offline', file=sys.stderr); sys.exit(3)"
    with caplog.at_level(logging.ERROR, logger="pyfundus.daemon.alerts"):
        with running(tmp_path, alert_command=[sys.executable, "-c", script]) as h:
            first = write(h.folder / "dark.png", dark_png())
            h.wait_done(first)
            wait_for(lambda: "exit status 3" in caplog.text, WAIT, "the failure to be logged")
            assert "pager offline" in caplog.text
            second = write(h.folder / "dark2.png", dark_png(1))
            h.wait_done(second)
        with running(tmp_path / "hang", alert_command=[sys.executable, "-c", "import time; time.sleep(30)"],
                     alert_timeout=0.5) as h:  # fmt: skip
            h.wait_done(write(h.folder / "dark.png", dark_png()))
            wait_for(lambda: "did not finish within 0.5 s" in caplog.text, WAIT, "the timeout to be logged")
        with running(tmp_path / "missing", alert_command=[str(tmp_path / "no-such-program")]) as h:
            h.wait_done(write(h.folder / "dark.png", dark_png()))
            wait_for(lambda: "could not be started" in caplog.text, WAIT, "the missing program to be logged")


# ---- the webhook ------------------------------------------------------------------------


class Receiver(ThreadingHTTPServer):
    """A webhook endpoint: answers 500 to the first ``fail_first`` posts, waits ``delay`` s per post."""

    def __init__(self, *, fail_first: int = 0, delay: float = 0.0) -> None:
        self.fail_first, self.delay = fail_first, delay
        self.attempts: list[dict] = []
        self.accepted: list[dict] = []
        self.lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), _ReceiverHandler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/hook"


class _ReceiverHandler(BaseHTTPRequestHandler):
    server: Receiver

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with self.server.lock:
            self.server.attempts.append(body)
            fail = len(self.server.attempts) <= self.server.fail_first
        time.sleep(self.server.delay)
        if not fail:
            with self.server.lock:
                self.server.accepted.append(body)
        self.send_response(500 if fail else 204)
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


def test_webhook_retries_after_a_failure_and_delivers_redacted_json(tmp_path, caplog):
    receiver = Receiver(fail_first=1)
    try:
        with caplog.at_level(logging.WARNING, logger="pyfundus.daemon.alerts"):
            with running(tmp_path, alert_webhook=receiver.url, alert_attempts=3) as h:
                dark = write(h.folder / "Smith_OD.png", dark_png())
                h.wait_done(dark)
                wait_for(lambda: receiver.accepted, WAIT, "the webhook to be delivered")
    finally:
        receiver.shutdown()
    assert len(receiver.attempts) == 2 and receiver.attempts[0] == receiver.accepted[0]
    assert "webhook attempt 1 failed (HTTP 500" in caplog.text
    [alert] = receiver.accepted
    assert alert["class"] == "Reject" and alert["path"].startswith("file-") and "Smith" not in json.dumps(alert)


def test_a_slow_webhook_never_holds_up_scoring_and_shutdown_has_a_deadline(tmp_path, caplog):
    receiver = Receiver(delay=3.0)
    try:
        with caplog.at_level(logging.ERROR, logger="pyfundus.daemon.alerts"):
            with running(tmp_path, alert_webhook=receiver.url, alert_timeout=5.0, drain_timeout=1.0) as h:
                files = [write(h.folder / f"dark{i}.png", dark_png(i)) for i in range(6)]
                h.wait_done(*files)
                # Every verdict is committed while the webhook is still on its first request.
                assert len(receiver.accepted) == 0 and h.ledger.count("scored") == 6
                stopping = time.monotonic()
            stop_seconds = time.monotonic() - stopping
    finally:
        receiver.shutdown()
    # Shutdown waits at most max(alert_timeout, what is left of drain_timeout) for alerts, then gives up.
    assert stop_seconds < 5.0 + 2.0, stop_seconds
    assert len(receiver.accepted) < 6
    assert "webhook alert(s) not delivered before the shutdown deadline" in caplog.text


def test_webhook_gives_up_on_client_errors_and_retries_refused_connections(tmp_path, caplog):
    closing = threading.Event()
    receiver = Receiver(fail_first=100)
    with caplog.at_level(logging.WARNING, logger="pyfundus.daemon.alerts"):
        WebhookAlert(receiver.url, 2.0, 3, closing=closing, first_backoff=0.01)({"event": "test"})
    receiver.shutdown()
    assert len(receiver.attempts) == 3 and "not delivered after 3 attempt(s): HTTP 500" in caplog.text
    caplog.clear()
    refused = f"http://127.0.0.1:{receiver.server_address[1]}/"  # the server is gone: connection refused
    receiver.server_close()
    with caplog.at_level(logging.WARNING, logger="pyfundus.daemon.alerts"):
        WebhookAlert(refused, 2.0, 2, closing=closing, first_backoff=0.01)({"event": "test"})
    assert "webhook attempt 1 failed" in caplog.text and "not delivered after 2 attempt(s)" in caplog.text


class Trickle:
    """A webhook endpoint that reads the request, then answers one byte every ``interval`` seconds, forever."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.stop = threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}/hook"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        with conn:
            conn.recv(65536)
            answer = b"HTTP/1.1 200 OK\r\nX-Slow: " + b"a" * 100_000
            for byte in answer:
                if self.stop.wait(self.interval):
                    return
                try:
                    conn.sendall(bytes([byte]))
                except OSError:
                    return  # the client gave up

    def close(self) -> None:
        self.stop.set()
        self.listener.close()


def test_a_webhook_that_trickles_its_answer_is_cut_off_after_the_timeout(caplog):
    trickle = Trickle(interval=0.2)  # every read succeeds well within the 1 s timeout
    webhook = WebhookAlert(trickle.url, 1.0, 2, closing=threading.Event(), first_backoff=0.1)
    sender = threading.Thread(target=webhook, args=({"event": "test"},), daemon=True)
    try:
        with caplog.at_level(logging.WARNING, logger="pyfundus.daemon.alerts"):
            started = time.monotonic()
            sender.start()
            sender.join(15)
            took = time.monotonic() - started
    finally:
        trickle.close()
    assert not sender.is_alive(), "the webhook thread is still held by the trickling server"
    assert took < 2 * 1.0 + 0.1 + 2.0, took  # two attempts of at most 1 s each, the pause between, slack
    assert "attempt 1 failed (no complete answer within 1 s)" in caplog.text
    assert "not delivered after 2 attempt(s): no complete answer within 1 s" in caplog.text


def test_alert_queue_is_bounded_and_drops_the_oldest(caplog):
    started, release = threading.Event(), threading.Event()
    delivered = []

    def deliver(payload):
        started.set()
        release.wait(10)
        delivered.append(payload)

    channel = AlertChannel("test", deliver, queue_size=3)
    channel.put(0)
    assert started.wait(10)
    with caplog.at_level(logging.WARNING, logger="pyfundus.daemon.alerts"):
        for n in range(1, 6):
            channel.put(n)
    release.set()
    channel.close(10)
    assert delivered == [0, 3, 4, 5] and channel.dropped == 2
    assert "the oldest waiting alert was dropped" in caplog.text


# ---- desktop ----------------------------------------------------------------------------


def test_desktop_alert_uses_notify_send_or_says_once_that_it_is_unavailable(tmp_path, monkeypatch, caplog):
    verdict = Verdict(path=str(tmp_path / "camera" / "x.png"), sha256="0" * 64, state="scored", score=12.0,
                      quality_class="Reject", reason="blur: refocus")  # fmt: skip
    names = Redactor([str(tmp_path / "camera")], enabled=False)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with caplog.at_level(logging.WARNING, logger="pyfundus.daemon.alerts"):
        alert = DesktopAlert(names, timeout=5)
        alert(verdict)
        alert(verdict)
    assert caplog.text.count("notify-send is not installed") == 1
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "notify-send"
    fake.write_text(f"#!/bin/sh\nprintf '%s\\n' \"$@\" > {tmp_path / 'notified'}\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", str(bin_dir))
    DesktopAlert(names, timeout=5)(verdict)
    args = (tmp_path / "notified").read_text().splitlines()
    assert "--urgency=critical" in args and "RETAKE: pyfundus Reject 12" in args and "x.png: blur: refocus" in args


# ---- settings ---------------------------------------------------------------------------


def test_alert_settings_from_toml_and_their_checks(tmp_path):
    folder = tmp_path / "camera"
    folder.mkdir()
    toml = tmp_path / "pyfundusd.toml"
    toml.write_text(
        'alert_on = ["Reject"]\nalert_command = ["/usr/local/bin/page", "--ward", "eye clinic"]\n'
        'alert_webhook = "https://hooks.example/pyfundus"\nalert_redact = false\nalert_attempts = 2\n'
    )
    config = load_config({"folder": folder}, toml)
    assert config.alert_on == ["Reject"] and config.alert_command == ["/usr/local/bin/page", "--ward", "eye clinic"]
    assert config.alert_redact is False and config.alert_attempts == 2 and not config.alert_desktop
    toml.write_text("alert_command = \"/usr/local/bin/page --ward 'eye clinic'\"\n")
    assert load_config({"folder": folder}, toml).alert_command == ["/usr/local/bin/page", "--ward", "eye clinic"]
    defaults = WatchConfig(folder=folder)
    assert defaults.alert_on == ["Reject", "Failed"] and defaults.alert_redact is True
    assert defaults.alert_command is None and defaults.alert_webhook is None and not defaults.alert_desktop
    for bad in ('alert_on = ["Bad"]', 'alert_webhook = "ftp://x"', "alert_command = []", 'alert_command = "a \'b"'):
        toml.write_text(bad + "\n")
        with pytest.raises(ConfigError):
            load_config({"folder": folder}, toml)


# ---- redaction of the stdout verdict lines ------------------------------------------------


def test_verdict_lines_and_json_lines_are_redacted_with_redact_identifiers(tmp_path):
    root = str(tmp_path / "camera")
    verdict = Verdict(path=f"{root}/Doe_Jane_OD.jpg", sha256="ab" * 32, state="failed", patient_id="PAT-4711",
                      error=f"{root}/Doe_Jane_OD.jpg: truncated JPEG", duplicate_of=f"{root}/Doe_Jane_copy.jpg")  # fmt: skip
    for enabled in (False, True):
        names = Redactor([root], enabled=enabled)
        line = VerdictPrinter(io.StringIO(), names=names, json_lines=False).format(verdict)
        record = VerdictPrinter(io.StringIO(), names=names, json_lines=True).format(verdict)
        assert ("Doe_Jane" in line) is not enabled and ("Doe_Jane" in record) is not enabled
        assert ("PAT-4711" in record) is not enabled
        assert "truncated JPEG" in line
    assert names.label(verdict.path) in line  # the same pseudonym as in the log


def test_pyfundusd_stdout_keeps_file_names_out_with_redact_identifiers(tmp_path):
    folder, state = tmp_path / "camera", tmp_path / "state"
    folder.mkdir()
    out_path = tmp_path / "out.txt"
    with open(out_path, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, str(HELPER), "watch", str(folder), "--state-dir", str(state), "--redact-identifiers",
             "--no-web", "--debounce", "0.05", "--settle", "0.15"],
            stdout=out, stderr=subprocess.STDOUT, env=os.environ.copy(),
        )  # fmt: skip
        try:
            ledger = LedgerView(state)
            files = [write(folder / "Doe_Jane_OD.png", dark_png()), write(folder / "Doe_Jane_OS.jpg", b"\xff\xd8\xff")]
            wait_for(lambda: all(ledger.is_done(f) for f in files), WAIT, "both verdicts")
            wait_for(lambda: out_path.read_text().count("file-") >= 2, WAIT, "both verdict lines")
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(30) == 0
    text = out_path.read_text()
    assert "Doe_Jane" not in text and str(folder) not in text
    assert "Reject" in text and "FAILED" in text


# Names from the chaos run (issue 17): the old scrub pattern stopped at a quote or a colon and left the rest.
ODD_NAMES = {"O'Brien_Mary_OD.jpg": "Brien", ":30 SMITH JOHN OS.png": "SMITH", '"Jane" OD.png': "Jane"}


def test_names_with_quotes_and_colons_leave_no_trace_in_redacted_alerts_and_stdout_lines(tmp_path):
    out = tmp_path / "alerts.jsonl"
    command = [sys.executable, "-c", RECORDER, str(out)]
    with running(tmp_path, alert_command=command, redact_identifiers=True) as h:
        files = [write(h.folder / name, truncated_jpeg(seed)) for seed, name in enumerate(ODD_NAMES)]
        h.wait_done(*files)
        wait_for(lambda: len(recorded(out)) == len(files), WAIT, "an alert per capture")
        names = h.daemon.names
    assert [a["error"] for a in recorded(out)] == ["<file>: truncated JPEG (file ends early)"] * len(files)
    lines = [VerdictPrinter(io.StringIO(), names=names, json_lines=json_lines).format(verdict)
             for verdict in h.verdicts for json_lines in (False, True)]  # fmt: skip
    assert len(lines) == 2 * len(files) and all("truncated JPEG" in line for line in lines)
    for leaked in [*ODD_NAMES.values(), str(h.folder)]:
        assert leaked not in out.read_text() and not any(leaked in line for line in lines), leaked


def test_redacted_log_lines_keep_no_part_of_an_odd_name(tmp_path):
    root = str(tmp_path / "camera")
    with daemon_logging(tmp_path, level="info", verbose=False, redactor=Redactor([root], enabled=True)):
        for name in ODD_NAMES:
            try:
                raise ValueError(f"{root}/{name}: truncated JPEG (file ends early)")
            except ValueError:
                logging.getLogger("some.library").exception("a library said: %s/%s is broken", root, name)
    text = (tmp_path / "pyfundusd.log").read_text()
    assert text.count("a library said: <file>") == len(ODD_NAMES) and "ValueError: <file>" in text
    for leaked in [*ODD_NAMES.values(), root]:
        assert leaked not in text, leaked


# ---- control characters in what people read --------------------------------------------------

FORGED = "2026-12-02 12:00:00  FORGED_capture.jpg   95.0  Good     R  -"


def test_a_file_name_cannot_forge_a_verdict_line_on_stdout_or_in_the_log(tmp_path):
    folder, state = tmp_path / "camera", tmp_path / "state"
    folder.mkdir()
    out_path = tmp_path / "out.txt"
    with open(out_path, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, str(HELPER), "watch", str(folder), "--state-dir", str(state), "--no-web",
             "--debounce", "0.05", "--settle", "0.15"],
            stdout=out, stderr=subprocess.STDOUT, env=os.environ.copy(),
        )  # fmt: skip
        try:
            ledger = LedgerView(state)
            hostile = write(folder / f"a\n{FORGED}\nb.png", dark_png())
            wait_for(lambda: ledger.is_done(hostile), WAIT, "the hostile capture's verdict")
            copy = write(folder / "copy.png", dark_png())  # the log names both files: "... has the same content as ..."
            wait_for(lambda: ledger.is_done(copy) and out_path.read_text().count("Reject") == 2, WAIT, "two lines")
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(30) == 0
    lines = out_path.read_text().splitlines()
    log_lines = (state / "pyfundusd.log").read_text().splitlines()
    assert not any(line.startswith(FORGED) for line in lines + log_lines)
    [hostile_line] = [line for line in lines if "FORGED" in line and "same image" not in line]
    assert f"a\\n{FORGED}\\nb.png" in hostile_line and "Reject" in hostile_line
    assert any(f"a\\n{FORGED}\\nb.png" in line and "same content" in line for line in log_lines)

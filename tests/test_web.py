"""The operator page's HTTP side, without a browser: /api/*, /thumb, /events, /healthz, /metrics.

A real daemon (stub scorer from daemon_helpers, real watchdog observer, real
SQLite ledger) with its web server on a free port; requests go through
http.client like a browser's would. The browser test is test_operator_page.py.
"""

from __future__ import annotations

import http.client
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import namedtuple
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from daemon_helpers import BrightnessScorer, LedgerView, dicom_bytes, jpeg_bytes, png_bytes, sha256, wait_for, write
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families
from web_helpers import serving

from pyfundus.daemon import web
from pyfundus.daemon.config import WatchConfig, load_config
from pyfundus.daemon.errors import ConfigError, StartupError
from pyfundus.daemon.service import Daemon
from pyfundus.version import __version__

FAST = {"debounce": 0.05, "settle": 0.15, "incomplete_grace": 0.8, "liveness_interval": 0.1, "drain_timeout": 10.0}
WAIT = 30.0
HELPER = Path(__file__).with_name("daemon_helpers.py")
GOOD, USABLE, REJECT = 200, 100, 5  # stub scores: brightness 220, 120, 25 -> Good, Usable, Reject


def done(served, *paths: Path) -> None:
    ledger = LedgerView(served.daemon.config.state_dir)
    names = ", ".join(p.name for p in paths)
    wait_for(lambda: all(ledger.is_done(p) for p in paths), WAIT, f"verdicts for {names}")


def history(served) -> list[dict]:
    status, body = served.get_json("/api/history?day=today")
    assert status == 200
    return body["captures"]


def shown(served, count: int) -> list[dict]:
    """Wait until the page's history holds ``count`` captures (the sink runs just after the ledger commit)."""

    def held() -> list[dict] | None:
        rows = history(served)
        return rows if len(rows) == count else None

    return wait_for(held, WAIT, f"{count} captures on the page")


# ---- /api and /thumb -------------------------------------------------------------------


def test_latest_and_history_show_each_capture_with_its_patient_eye_and_reason(tmp_path):
    with serving(tmp_path, **FAST) as s:
        status, body = s.get_json("/api/latest")
        assert status == 200 and body["capture"] is None
        dark = write(s.folder / "left eye.dcm", dicom_bytes(REJECT, patient_id="PAT-4711", laterality="L", size=64))
        done(s, dark)
        bright = write(s.folder / "right.png", png_bytes(GOOD))
        done(s, bright)
        broken = write(s.folder / "cut.jpg", jpeg_bytes(GOOD, size=128)[:900])
        done(s, broken)
        rows = shown(s, 3)
        status, latest = s.get_json("/api/latest")
    assert [row["file"] for row in rows] == ["left eye.dcm", "right.png", "cut.jpg"], "oldest first"
    reject, good, failed = rows
    assert (reject["class"], reject["eye"], reject["patient_id"]) == ("Reject", "L", "PAT-4711")
    assert reject["score"] < 35 and reject["reason"] == "exposure: stub reason"
    assert reject["id"] == sha256((s.folder / "left eye.dcm").read_bytes())
    assert good["class"] == "Good" and good["score"] >= 60 and good["reason"] is None
    assert failed["class"] == "Failed" and failed["score"] is None and failed["thumb"] is None
    assert failed["reason"] == "truncated JPEG (file ends early)", "the reader's message, without the path"
    assert latest["capture"] == failed
    assert latest["last_event_id"].endswith("-3")


def test_control_characters_in_names_and_reasons_are_escaped_on_the_page(tmp_path):
    with serving(tmp_path, **FAST) as s:
        hostile = write(s.folder / "a\nFORGED\x1b[2J.png", png_bytes(REJECT))
        broken = write(s.folder / "cut\u202e.jpg", jpeg_bytes(GOOD, size=128)[:900])
        done(s, hostile, broken)
        rows = {row["class"]: row for row in shown(s, 2)}
    assert rows["Reject"]["file"] == "a\\nFORGED\\x1b[2J.png"
    assert rows["Failed"]["file"] == "cut\\u202e.jpg" and rows["Failed"]["reason"] == "truncated JPEG (file ends early)"


def test_history_takes_today_or_a_date_and_says_when_a_day_is_not_held(tmp_path):
    with serving(tmp_path, **FAST) as s:
        today = time.strftime("%Y-%m-%d")
        assert s.get_json(f"/api/history?day={today}")[1]["day"] == today
        assert s.get_json("/api/history")[1]["day"] == today
        status, body = s.get_json("/api/history?day=2001-02-03")
        assert status == 404 and "pyfundus results export" in body["error"]
        assert s.get_json("/api/history?day=yesterdayish")[0] == 400


def test_thumbnail_is_a_downscaled_jpeg_of_the_scored_image(tmp_path):
    with serving(tmp_path, **FAST) as s:
        capture = write(s.folder / "big.dcm", dicom_bytes(GOOD, patient_id="P1", laterality="R", size=1000))
        done(s, capture)
        (row,) = shown(s, 1)
        status, headers, body = s.get(row["thumb"])
    assert status == 200 and headers["content-type"] == "image/jpeg"
    assert headers["cache-control"] == "no-store"
    thumb = Image.open(io.BytesIO(body))
    assert thumb.format == "JPEG" and thumb.size == (web.THUMB_SIDE, web.THUMB_SIDE)
    assert abs(np.asarray(thumb.convert("L")).mean() - (20 + GOOD)) < 6, "the thumbnail shows the capture's pixels"


def test_thumbnails_come_only_from_unchanged_files_inside_the_watched_folder(tmp_path):
    state = tmp_path / "state"
    other = tmp_path / "other-camera"
    other.mkdir()
    with serving(tmp_path, folder=other, **FAST) as s:
        elsewhere = write(other / "old.png", png_bytes(GOOD + 1))
        done(s, elsewhere)
    # Same state directory, another folder: the ledger (and today's history) still has old.png.
    with serving(tmp_path, **FAST) as s:
        assert s.daemon.config.state_dir == state
        kept = write(s.folder / "kept.png", png_bytes(GOOD))
        changed = write(s.folder / "changed.png", png_bytes(USABLE))
        done(s, kept, changed)
        rows = {Path(row["file"]).name: row for row in shown(s, 3)}
        assert rows["old.png"]["file"] == os.path.realpath(elsewhere), "outside the folder: shown by full path"
        assert s.get(rows["kept.png"]["thumb"])[0] == 200
        assert s.get(rows["old.png"]["thumb"])[0] == 404, "a file outside the watched folder is never served"
        write(changed, png_bytes(REJECT))  # rewritten after scoring: the old id must not show the new pixels
        assert s.get(rows["changed.png"]["thumb"])[0] == 404
        assert s.get("/thumb/" + "0" * 64)[0] == 404, "unknown id"
        assert s.get("/thumb/" + rows["kept.png"]["id"].upper())[0] == 404, "ids are lower-case hex only"
        assert s.get("/thumb/../../etc/passwd")[0] == 404
        assert s.get("/thumb/%2e%2e%2f%2e%2e%2fetc%2fpasswd")[0] == 404
        assert s.get("/thumb/" + str(os.path.realpath(kept)))[0] == 404, "paths are never accepted"


def test_a_failed_capture_has_no_thumbnail(tmp_path):
    class NoFieldOfView(BrightnessScorer):
        """Fails a readable image, as the model does when it finds no field of view."""

        def score(self, inputs, *, batch_size=8):
            results = super().score(inputs, batch_size=batch_size)
            for result in results:
                if "nofov" in result.path:
                    result.score = result.quality_class = None
                    result.error = f"{result.path}: no field of view found"
            return results

    with serving(tmp_path, scorer=NoFieldOfView(), **FAST) as s:
        capture = write(s.folder / "nofov.png", png_bytes(GOOD))
        done(s, capture)
        (row,) = shown(s, 1)
        assert row["class"] == "Failed" and row["thumb"] is None
        assert s.get(f"/thumb/{sha256(capture.read_bytes())}")[0] == 404, "not made, even when asked for"


def test_parallel_thumbnail_requests_decode_the_capture_once(tmp_path, monkeypatch):
    made = []

    def slow_thumbnail(data):
        made.append(len(data))
        time.sleep(0.5)  # a big capture: the other requests arrive while it decodes
        return b"\xff\xd8\xff thumbnail"

    monkeypatch.setattr(web, "_make_thumbnail", slow_thumbnail)
    with serving(tmp_path, **FAST) as s:
        capture = write(s.folder / "big.png", png_bytes(GOOD))
        done(s, capture)
        (row,) = shown(s, 1)
        with ThreadPoolExecutor(3) as pool:
            answers = list(pool.map(lambda _: s.get(row["thumb"]), range(3)))
        assert [status for status, _, _ in answers] == [200] * 3
        assert s.get(row["thumb"])[2] == b"\xff\xd8\xff thumbnail"
    assert len(made) == 1, "decoded once, then served from the cache"


def test_only_loopback_host_names_are_answered_while_listening_on_loopback(tmp_path):
    with serving(tmp_path, **FAST) as s:
        assert s.get("/", headers={"Host": f"localhost:{s.port}"})[0] == 200
        assert s.get("/api/latest", headers={"Host": f"[::1]:{s.port}"})[0] == 200
        # DNS rebinding: a page on another site reaches 127.0.0.1 under its own name.
        status, _, body = s.get("/api/history", headers={"Host": f"evil.example:{s.port}"})
        assert status == 403 and b"PAT" not in body


def test_the_host_header_is_parsed_strictly(tmp_path):
    with serving(tmp_path, **FAST) as s:
        assert s.get("/api/latest", headers={"Host": f"LocalHost:{s.port}"})[0] == 200
        assert s.get("/api/latest", headers={"Host": "127.0.0.1"})[0] == 200
        for host in ("[::1].evil.example", f"[::1].evil.example:{s.port}", "localhost:@evil.example",
                     f"localhost:{s.port}@evil.example", "127.0.0.1.evil.example", "localhost:80:80", "[::1]x", ""):
            assert s.get("/api/latest", headers={"Host": host})[0] == 403, host


def test_a_request_with_two_host_headers_is_refused(tmp_path):
    with serving(tmp_path, **FAST) as s:
        with socket.create_connection(("127.0.0.1", s.port), timeout=WAIT) as conn:
            conn.sendall(b"GET /api/latest HTTP/1.1\r\nHost: localhost\r\nHost: evil.example\r\n\r\n")
            assert conn.makefile("rb").readline().split()[1] == b"400", "two Host headers: refused"


def test_a_connection_that_sends_nothing_is_closed_after_the_request_timeout(tmp_path):
    with serving(tmp_path, **FAST) as s:
        s.daemon.web.request_timeout = 0.5
        idle = [socket.create_connection(("127.0.0.1", s.port), timeout=WAIT) for _ in range(20)]
        half = socket.create_connection(("127.0.0.1", s.port), timeout=WAIT)
        half.sendall(b"GET /api/latest HTTP/1.1\r\nHost: local")
        try:
            for conn in [*idle, half]:
                conn.settimeout(5)
                assert conn.recv(1024) == b"", "the server closes the connection"
        finally:
            for conn in [*idle, half]:
                conn.close()
        handlers = lambda: [t for t in threading.enumerate() if "process_request" in t.name]  # noqa: E731
        wait_for(lambda: not handlers(), WAIT, "the handler threads to end")
        assert s.get("/healthz")[0] == 200


def test_the_page_is_self_contained(tmp_path):
    with serving(tmp_path, **FAST) as s:
        status, headers, body = s.get("/")
    page = body.decode()
    assert status == 200 and headers["content-type"].startswith("text/html")
    assert "RETAKE" in page and "EventSource" in page and "AudioContext" in page
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page), "nothing may load from another host"
    assert "default-src 'none'" in headers["content-security-policy"]


# ---- /events ---------------------------------------------------------------------------

Event = namedtuple("Event", "id kind data comment")


class EventStream:
    """A server-sent-events client: the parts of EventSource the page relies on."""

    def __init__(self, port: int, *, after: str | None = None, last_event_id: str | None = None) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=WAIT)
        headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
        self.conn.request("GET", "/events" + (f"?after={after}" if after else ""), headers=headers)
        self.response = self.conn.getresponse()
        assert self.response.status == 200
        assert self.response.getheader("Content-Type").startswith("text/event-stream")

    def next(self) -> Event | None:
        """The next event or comment; None at the end of the stream."""
        fields: dict[str, str] = {}
        comment = None
        while True:
            line = self.response.fp.readline()
            if not line:
                return None
            line = line.decode().rstrip("\n")
            if not line:
                if fields or comment is not None:
                    return Event(fields.get("id"), fields.get("event"), fields.get("data"), comment)
                continue
            if line.startswith(":"):
                comment = line[1:].strip()
                continue
            name, _, value = line.partition(": ")
            if name != "retry":
                fields[name] = value

    def next_verdict(self) -> Event:
        while True:
            event = self.next()
            assert event is not None, "the stream ended"
            if event.kind == "verdict":
                return event

    def close(self) -> None:
        self.conn.close()


def test_events_push_verdicts_and_a_reconnect_resumes_after_its_last_event_id(tmp_path):
    with serving(tmp_path, **FAST) as s:
        cursor = s.get_json("/api/latest")[1]["last_event_id"]
        stream = EventStream(s.port, after=cursor)
        first = write(s.folder / "first.png", png_bytes(REJECT))
        event = stream.next_verdict()
        stream.close()
        record = json.loads(event.data)
        assert record["file"] == "first.png" and record["class"] == "Reject"
        # Missed while disconnected: a reconnect with Last-Event-ID gets exactly what came after.
        second = write(s.folder / "second.png", png_bytes(GOOD))
        done(s, first, second)
        stream = EventStream(s.port, last_event_id=event.id, after=cursor)
        replayed = stream.next_verdict()
        stream.close()
        assert json.loads(replayed.data)["file"] == "second.png"
        assert int(replayed.id.rpartition("-")[2]) == int(event.id.rpartition("-")[2]) + 1


def test_events_from_another_run_or_out_of_reach_make_the_page_reload(tmp_path):
    with serving(tmp_path, **FAST) as s:
        for cursor in ("0123abcd-1", "garbage", f"{s.daemon.web.board.run}-99"):
            stream = EventStream(s.port, last_event_id=cursor)
            event = stream.next()
            stream.close()
            assert event.kind == "reset", cursor


def test_events_send_keep_alive_comments_while_idle(tmp_path):
    with serving(tmp_path, **FAST) as s:
        s.daemon.web.keepalive = 0.2
        stream = EventStream(s.port)
        started = time.monotonic()
        event = stream.next()
        stream.close()
    assert event.comment == "keep-alive" and event.kind is None
    assert time.monotonic() - started < 5


def test_stopping_ends_open_event_streams_and_frees_the_port(tmp_path):
    with serving(tmp_path, **FAST) as s:
        stream = EventStream(s.port)
        port = s.port
        started = time.monotonic()
        s.daemon.stop()
        took = time.monotonic() - started
        assert stream.next() is None, "the stream ends when the daemon stops"
    assert took < 5
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()


# ---- /healthz and /metrics -------------------------------------------------------------


def test_healthz_is_200_while_watching_and_503_when_the_observer_dies(tmp_path):
    # A slow liveness check, so the supervisor does not restart the observer before we look.
    with serving(tmp_path, **{**FAST, "liveness_interval": 60.0}) as s:
        capture = write(s.folder / "a.png", png_bytes(GOOD))
        done(s, capture)
        wait_for(lambda: s.get_json("/healthz")[1]["last_verdict_time"], WAIT, "the verdict to reach the page")
        status, health = s.get_json("/healthz")
        assert status == 200 and health["healthy"] and health["problems"] == []
        assert health["observer_alive"] and health["queue_depth"] == 0
        assert health["model"] == "stub-brightness" and "BrightnessScorer" in health["backend"]
        assert health["version"] and health["uptime_seconds"] > 0
        s.daemon.watcher.observer.stop()
        s.daemon.watcher.observer.join(5)
        status, health = s.get_json("/healthz")
        assert status == 503 and not health["healthy"] and not health["observer_alive"]
        assert health["problems"] == ["the file-event observer is not running"]


def test_healthz_is_503_when_the_state_directory_runs_out_of_space(tmp_path, monkeypatch):
    with serving(tmp_path, **FAST) as s:
        assert s.get_json("/healthz")[0] == 200
        usage = namedtuple("usage", "total used free")
        monkeypatch.setattr(web.shutil, "disk_usage", lambda path: usage(2**30, 2**30 - 2**20, 2**20))
        status, health = s.get_json("/healthz")
    assert status == 503 and health["problems"] == ["the state directory has only 1 MiB free"]


def test_metrics_are_valid_prometheus_text_and_count_what_happened(tmp_path):
    with serving(tmp_path, **FAST) as s:
        files = {
            "good.png": png_bytes(GOOD),
            "usable.png": png_bytes(USABLE),
            "reject.dcm": dicom_bytes(REJECT, patient_id="PAT-SECRET-99", laterality="R"),
            "broken.png": png_bytes(GOOD)[:40] + b"\0" * 200 + png_bytes(GOOD)[-12:],
        }
        for name, data in files.items():
            write(s.folder / name, data)
        done(s, *(s.folder / name for name in files))
        write(s.folder / "good again.png", files["good.png"])  # same image: a duplicate
        rows = shown(s, 5)
        status, headers, body = s.get("/metrics")
        health_body = s.get("/healthz")[2]
    assert status == 200 and headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    text = body.decode()
    families = {family.name: family for family in text_string_to_metric_families(text)}
    samples = {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
               for family in families.values() for sample in family.samples}  # fmt: skip
    assert {name: families[name].type for name in families} == {
        "pyfundus_verdicts": "counter", "pyfundus_failures": "counter", "pyfundus_duplicates": "counter",
        "pyfundus_feedback": "counter", "pyfundus_verdict_latency_seconds": "histogram", "pyfundus_queue_depth": "gauge",
        "pyfundus_observer_restarts": "counter", "pyfundus_observer_up": "gauge",
    }  # fmt: skip
    for grade in ("Good", "Usable", "Reject"):
        assert samples[("pyfundus_verdicts_total", (("class", grade),))] == 1
    assert samples[("pyfundus_failures_total", ())] == 1
    assert samples[("pyfundus_duplicates_total", ())] == 1
    assert samples[("pyfundus_feedback_total", (("label", "fine"),))] == 0  # nobody clicked
    buckets = [(float(labels[0][1]), value) for (name, labels), value in samples.items()
               if name == "pyfundus_verdict_latency_seconds_bucket"]  # fmt: skip
    counts = [value for _, value in sorted(buckets)]
    assert counts == sorted(counts) and counts[-1] == 4, "cumulative, +Inf holds the four scored captures"
    assert samples[("pyfundus_verdict_latency_seconds_count", ())] == 4
    assert 0 < samples[("pyfundus_verdict_latency_seconds_sum", ())] < 4 * WAIT
    assert samples[("pyfundus_queue_depth", ())] == 0 and samples[("pyfundus_observer_up", ())] == 1
    # Patient data stays on the page: none of it in /metrics or /healthz.
    assert any(row["patient_id"] == "PAT-SECRET-99" for row in rows)
    for exposed in (text, health_body.decode()):
        assert "PAT-SECRET" not in exposed
        for name in [*files, "good again", str(s.folder), "camera"]:
            assert name not in exposed


# ---- configuration and life cycle ------------------------------------------------------


def test_web_options_come_from_the_config_file_and_flags(tmp_path):
    folder = tmp_path / "camera"
    folder.mkdir()
    config_file = tmp_path / "watch.toml"
    config_file.write_text(f'folder = "{folder}"\nweb_host = "0.0.0.0"\nweb_port = 9000\n')
    config = load_config({}, config_file)
    assert (config.web, config.web_host, config.web_port) == (True, "0.0.0.0", 9000)
    config = load_config({"web_port": 0, "web": False}, config_file)
    assert (config.web, config.web_port) == (False, 0)
    assert WatchConfig(folder=folder).web_host == "127.0.0.1", "loopback by default"
    config_file.write_text(f'folder = "{folder}"\nweb_port = 70000\n')
    with pytest.raises(ConfigError, match="web_port: must be a port number from 0 to 65535"):
        load_config({}, config_file)


def test_no_web_means_no_server(tmp_path):
    folder = tmp_path / "camera"
    folder.mkdir()
    daemon = Daemon(WatchConfig(folder=folder, state_dir=tmp_path / "state", web=False), scorer=object())
    daemon.start()
    try:
        assert daemon.web is None
    finally:
        daemon.stop()


def test_a_port_in_use_stops_start_up_with_advice_and_releases_the_state_directory(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        folder = tmp_path / "camera"
        folder.mkdir()
        config = WatchConfig(folder=folder, state_dir=tmp_path / "state", web_port=port)
        with pytest.raises(StartupError, match=f"cannot listen on 127.0.0.1:{port}.*--web-port.*--no-web"):
            Daemon(config, scorer=object()).start()
    with serving(tmp_path, **FAST) as s:  # the lock was released: the same state directory starts fine
        assert s.get("/healthz")[0] == 200


def test_watch_prints_the_page_address_and_sigterm_ends_it_with_a_page_open(tmp_path):
    folder = tmp_path / "camera"
    folder.mkdir()
    proc = subprocess.Popen(
        [sys.executable, str(HELPER), "watch", str(folder), "--state-dir", str(tmp_path / "state"),
         "--web-port", "0", "--debounce", "0.05"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        start = [proc.stderr.readline() for _ in range(5)]  # what runs, then the address, last
        assert start[0] == f"watching {folder} (file events, top level only)\n", start
        assert start[1:4] == ["model: stub-brightness (UNTRAINED: its grades are meaningless)\n",
                              f"backend: pyfundus {__version__}, BrightnessScorer\n",
                              f"ledger and log: {tmp_path / 'state'}\n"]  # fmt: skip
        match = re.fullmatch(r"operator page: http://127\.0\.0\.1:(\d+)/\n", start[4])
        assert match, start
        port = int(match.group(1))
        stream = EventStream(port)
        write(folder / "a.png", png_bytes(REJECT))
        assert json.loads(stream.next_verdict().data)["class"] == "Reject"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=WAIT) == 0
        assert stream.next() is None
        stream.close()
    finally:
        proc.kill()
        proc.wait()
    assert "a.png" in proc.stdout.read()


def test_port_flag_is_the_short_form_of_web_port(tmp_path):
    import argparse

    from pyfundus.daemon.cli import add_commands

    parser = argparse.ArgumentParser()
    add_commands(parser.add_subparsers())
    assert parser.parse_args(["watch", str(tmp_path), "--port", "9001"]).web_port == 9001
    assert parser.parse_args(["watch", str(tmp_path), "--web-port", "9002"]).web_port == 9002


def test_feedback_is_taken_from_the_page_only_and_for_real_verdicts(tmp_path):
    """POST /api/feedback: this page's own origin, JSON, a capture with a verdict; kept in the ledger."""
    with serving(tmp_path) as s:
        capture = write(s.folder / "a.png", png_bytes(REJECT))
        done(s, capture)
        rows = shown(s, 1)
        digest = sha256(png_bytes(REJECT))
        body = json.dumps({"id": digest, "label": "fine"}).encode()
        # Another site's page in the operator's browser: refused (no Origin, a foreign one, a form post).
        assert s.post("/api/feedback", body, {"Origin": None})[0] == 403
        assert s.post("/api/feedback", body, {"Origin": "http://evil.example"})[0] == 403
        assert s.post("/api/feedback", body, {"Content-Type": "application/x-www-form-urlencoded"})[0] == 415
        assert s.post("/api/feedback", b"x" * 2000)[0] == 400  # not JSON, and too long to be a click
        assert s.post("/api/feedback", json.dumps({"id": digest, "label": "perfect"}).encode())[0] == 400
        assert s.post("/api/feedback", json.dumps({"id": "0" * 64, "label": "fine"}).encode())[0] == 404
        assert s.post("/api/elsewhere", body)[0] == 404
        assert s.daemon.ledger.captures()[0][0].feedback is None  # nothing refused was stored
        status, update = s.post("/api/feedback", body)
        assert status == 200 and update["id"] == digest and update["feedback"] == "fine" and update["feedback_at"]
        status, again = s.post("/api/feedback", json.dumps({"id": digest, "label": "retake"}).encode())
        assert status == 200 and again["feedback"] == "retake"  # a change of mind: the latest counts
        assert history(s)[0]["feedback"] == "retake" and rows[0]["feedback"] is None
        metrics = s.get("/metrics")[2].decode()
        assert 'pyfundus_feedback_total{label="fine"} 1' in metrics
        assert 'pyfundus_feedback_total{label="retake"} 1' in metrics
        assert LedgerView(s.daemon.config.state_dir).clicks() == ["fine", "retake"]  # every click is kept

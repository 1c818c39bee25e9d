"""Central inference: ``pyfundus serve`` (Ray Serve, on a private Ray instance) and ``pyfundus watch --remote``.

The server runs as a process of its own with two replicas of the real model; the daemon runs here with the
real model as its fallback. The fallback's deadline, the check of the bytes and what a request carries are
tested against small HTTP servers in this file, without Ray.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
from daemon_helpers import BrightnessScorer, LedgerView, png_bytes, sha256, wait_for, write
from PIL import Image
from ray_helpers import free_port, pids_naming, ray_or_skip
from sample_helpers import sample_photos

from pyfundus.api import load_model
from pyfundus.daemon.config import ConfigError, WatchConfig
from pyfundus.daemon.remote import RemoteScorer
from pyfundus.daemon.service import Daemon
from pyfundus.data.synth import generate_fundus
from pyfundus.distributed.protocol import BATCH_HEADER
from pyfundus.verdicts import ScoreResult

START_TIMEOUT = 240  # Ray, Serve and two model replicas on the loaded two-core machine: 30-90 s
FAST = dict(debounce=0.05, settle=0.15, incomplete_grace=0.8, liveness_interval=0.1, drain_timeout=10.0, web=False)


@dataclass
class Server:
    url: str
    process: subprocess.Popen
    ray_temp: str

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=90)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


@pytest.fixture(scope="module")
def server():
    """``pyfundus serve`` with no --ray-address: its own Ray instance, in a private temporary folder.
    The watch test stops it (the fallback is what it tests): tests that need it running come before."""
    ray_or_skip()
    ray_temp = tempfile.mkdtemp(prefix="pfserve-", dir="/tmp")  # short: Ray's socket paths live under it
    env = {**os.environ, "RAY_TMPDIR": ray_temp, "RAY_USAGE_STATS_ENABLED": "0"}
    command = [sys.executable, "-m", "pyfundus.cli", "serve", "--port", str(free_port()), "--replicas", "2",
               "--max-batch-size", "4", "--batch-wait-ms", "200", "--json"]  # fmt: skip
    with open(Path(ray_temp) / "serve.log", "wb") as log:
        process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=log, start_new_session=True)
    running = Server("", process, ray_temp)
    try:
        with ThreadPoolExecutor(1) as pool:
            line = pool.submit(process.stdout.readline).result(timeout=START_TIMEOUT)
        assert line, (Path(ray_temp) / "serve.log").read_text(errors="replace")[-3000:]
        running.url = json.loads(line)["url"]
        yield running
    finally:
        running.stop()
        for pid in pids_naming(ray_temp):  # never expected (a test checks); never left behind either
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(ray_temp, ignore_errors=True)


@pytest.fixture(scope="module")
def captures(tmp_path_factory) -> list[Path]:
    """Real sample photos (a Topcon DICOM among them) and synthetic fundi."""
    folder = tmp_path_factory.mktemp("captures")
    photos = [Path(shutil.copy(p, folder / p.name)) for p in sample_photos() if p.suffix == ".dcm" or "DRIVE" in p.name]
    for seed in range(3):
        Image.fromarray(generate_fundus(seed, size=512)[0]).save(folder / f"synthetic_{seed}.jpg")
    return photos + sorted(folder.glob("synthetic_*.jpg"))


@pytest.fixture(scope="module")
def model():
    return load_model()


def post(url: str, data: bytes) -> tuple[dict, int]:
    request = urllib.request.Request(url, data=data, method="POST", headers={"Content-Type": "application/octet-stream"})
    with urllib.request.urlopen(request, timeout=120) as response:
        return json.loads(response.read()), int(response.headers[BATCH_HEADER])


def test_the_server_batches_captures_and_scores_as_the_local_model(server, captures, model):
    local = {r.sha256: r for r in model.score([str(p) for p in captures])}
    with ThreadPoolExecutor(len(captures)) as pool:  # cameras sending at the same time
        answers = list(pool.map(lambda p: post(server.url, p.read_bytes()), captures))
    for path, (record, _) in zip(captures, answers):
        assert record["sha256"] == sha256(path.read_bytes())  # the verdict is of the bytes sent
        assert record["path"] is None and record["state"] == "scored"
        assert abs(record["score"] - local[record["sha256"]].score) <= 0.01, path.name
    assert max(batch for _, batch in answers) > 1, "no two captures were scored in one batch"
    broken, _ = post(server.url, captures[-1].read_bytes()[:3000])
    assert broken["state"] == "failed" and broken["score"] is None and broken["error"]
    with urllib.request.urlopen(server.url, timeout=30) as response:
        assert json.loads(response.read())["model_sha256"] == model.sha256
    rebound = urllib.request.Request(server.url, data=captures[0].read_bytes(), method="POST",
                                     headers={"Host": "evil.example:80"})  # a page elsewhere, by DNS rebinding
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(rebound, timeout=30)
    assert refused.value.code == 403 and b"sha256" not in refused.value.read()


def test_watch_scores_on_the_server_and_locally_once_it_is_stopped(server, captures, tmp_path):
    folder, state = tmp_path / "camera", tmp_path / "state"
    folder.mkdir()
    config = WatchConfig(folder=folder, state_dir=state, remote=server.url, remote_timeout=30.0, **FAST)
    verdicts = []
    daemon = Daemon(config, sinks=[verdicts.append])  # the real model loads, as the local fallback
    ledger = LedgerView(state)
    daemon.start()
    try:
        first = [Path(shutil.copy(p, folder / p.name)) for p in captures[:4]]
        wait_for(lambda: all(ledger.is_done(p) for p in first), START_TIMEOUT, "the first captures' verdicts")
        server.stop()  # the scoring server goes away while the camera goes on
        second = [Path(shutil.copy(p, folder / p.name)) for p in captures[4:]]
        wait_for(lambda: all(ledger.is_done(p) for p in second), START_TIMEOUT, "the later captures' verdicts")
    finally:
        daemon.stop()
    assert {ledger.capture_at(p)["scored_by"] for p in first} == {server.url}
    assert {ledger.capture_at(p)["scored_by"] for p in second} == {"local"}
    assert all(ledger.capture_at(p)["state"] == "scored" for p in first + second)
    assert ledger.count() == len(captures)  # none lost
    assert sorted(v.path for v in verdicts) == sorted(os.path.realpath(p) for p in first + second)  # none twice
    wait_for(lambda: not pids_naming(server.ray_temp), 30, "the server's Ray processes to end")


# ---- the client against small stand-in servers (no Ray) -------------------------------------


class StandIn(http.server.ThreadingHTTPServer):
    """A scoring server that answers what ``answer(body)`` returns, or after ``delay`` seconds."""

    def __init__(self, answer, delay: float = 0.0) -> None:
        self.answer, self.delay, self.requests = answer, delay, []
        super().__init__(("127.0.0.1", 0), _StandInHandler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/score"


class _StandInHandler(http.server.BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.requests.append((dict(self.headers), body))
        time.sleep(self.server.delay)
        answer = json.dumps(self.server.answer(body)).encode()
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # a client past its deadline has gone
            self.send_response(200)
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

    def log_message(self, *args) -> None:
        pass


@contextlib.contextmanager
def stand_in(answer, delay: float = 0.0):
    server = StandIn(answer, delay)
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def brightness_record(body: bytes) -> dict:
    """What a server running the stub scorer would answer for these bytes."""
    result = BrightnessScorer().score([body])[0]
    result.path = None
    return result.to_dict()


def test_a_request_carries_the_capture_bytes_and_no_file_name(tmp_path):
    capture = write(tmp_path / "PAT-4711_Smith_OD.png", png_bytes(150))
    with stand_in(brightness_record) as server:
        remote = RemoteScorer(server.url, BrightnessScorer(), timeout=5.0)
        (result,) = remote.score([str(capture)])
    (headers, body), = server.requests
    assert body == capture.read_bytes()
    assert not any("PAT-4711" in value or "Smith" in value for value in headers.values())
    assert result.path == str(capture) and result.scored_by == server.url and result.sha256 == sha256(body)
    assert result.score == BrightnessScorer().score([str(capture)])[0].score


def test_a_slow_server_costs_one_deadline_then_is_left_alone(tmp_path):
    captures = [str(write(tmp_path / f"c{i}.png", png_bytes(100 + i))) for i in range(3)]
    with stand_in(brightness_record, delay=3.0) as server:
        remote = RemoteScorer(server.url, BrightnessScorer(), timeout=0.5, retry_after=60.0)
        started = time.monotonic()
        first = remote.score(captures[:2])
        waited = time.monotonic() - started
        second = remote.score(captures[2:])
    assert [r.scored_by for r in first + second] == ["local"] * 3
    assert all(r.score is not None for r in first + second)
    assert waited < 2.5, f"the deadline is for the whole request; the scorer waited {waited:.1f} s"
    assert len(server.requests) == 2  # the third capture never went: the server was resting


def test_a_verdict_for_other_bytes_is_not_taken(tmp_path):
    capture = str(write(tmp_path / "c.png", png_bytes(120)))
    with stand_in(lambda body: brightness_record(png_bytes(121))) as server:
        (result,) = RemoteScorer(server.url, BrightnessScorer(), timeout=5.0).score([capture])
    assert result.scored_by == "local" and result.sha256 == sha256(png_bytes(120))


def test_a_capture_the_server_cannot_read_is_read_here_and_named(tmp_path):
    truncated = str(write(tmp_path / "cut.png", png_bytes(90)[:60]))
    with stand_in(brightness_record) as server:
        (result,) = RemoteScorer(server.url, BrightnessScorer(), timeout=5.0).score([truncated])
    assert len(server.requests) == 1 and result.scored_by == "local"
    assert result.error.startswith(truncated)  # the local reader's message names the file


def test_an_unreachable_server_falls_back_at_once(tmp_path):
    capture = str(write(tmp_path / "c.png", png_bytes(130)))
    remote = RemoteScorer(f"http://127.0.0.1:{free_port()}/score", BrightnessScorer(), timeout=5.0)
    started = time.monotonic()
    (result,) = remote.score([capture])
    assert result.scored_by == "local" and result.score is not None and time.monotonic() - started < 2.0


def test_remote_must_be_an_http_url(tmp_path):
    with pytest.raises(ConfigError, match="remote must be an http"):
        WatchConfig(folder=tmp_path, state_dir=tmp_path / "state", remote="ftp://scorer/score").validate()


def test_a_record_read_back_is_the_result_it_came_from(tmp_path):
    (result,) = BrightnessScorer().score([str(write(tmp_path / "c.png", png_bytes(140)))])
    result.scored_by = "http://127.0.0.1:8000/score"
    assert ScoreResult.from_dict(json.loads(json.dumps(result.to_dict()))) == result

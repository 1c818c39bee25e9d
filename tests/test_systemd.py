"""sd_notify against a socket bound here, the daemon's READY/WATCHDOG/STATUS/STOPPING, and the shipped unit file."""

from __future__ import annotations

import configparser
import os
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from daemon_helpers import write
from live_daemon import dark_png, running

from pyfundus.daemon.systemd import UNIT_FILE, Notifier


@contextmanager
def notify_socket() -> Iterator[tuple[socket.socket, str]]:
    """A unix datagram socket where systemd's would be (short path: sun_path holds 108 bytes)."""
    folder = tempfile.mkdtemp(prefix="sd-", dir="/tmp")
    path = os.path.join(folder, "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    try:
        yield sock, path
    finally:
        sock.close()
        os.unlink(path)
        os.rmdir(folder)


def receive(sock: socket.socket, timeout: float = 5.0) -> list[str]:
    """Every message that arrives within ``timeout`` seconds of the previous one."""
    messages = []
    sock.settimeout(timeout)
    try:
        while True:
            messages.append(sock.recv(4096).decode())
            sock.settimeout(0.3)
    except TimeoutError:
        return messages


def receive_until(sock: socket.socket, wanted: str, timeout: float = 30.0) -> list[str]:
    deadline, messages = time.monotonic() + timeout, []
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            messages.append(sock.recv(4096).decode())
        except TimeoutError:
            break
        if wanted in messages[-1]:
            return messages
    raise AssertionError(f"no {wanted!r} within {timeout} s; got {messages}")


def test_notifier_speaks_the_protocol():
    with notify_socket() as (sock, path):
        notifier = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "30000000"})
        notifier.ready("watching")
        notifier.ping()
        notifier.status("2 queued")
        notifier.status("2 queued")  # unchanged: not sent again
        notifier.status("0 queued")
        notifier.stopping()
        assert receive(sock) == [
            "READY=1\nSTATUS=watching", "WATCHDOG=1", "STATUS=2 queued", "STATUS=0 queued",
            "STOPPING=1\nSTATUS=stopping: finishing queued captures",
        ]  # fmt: skip


def test_abstract_socket_and_watchdog_only_when_asked_for_this_process():
    name = f"pyfundus-test-{os.getpid()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    try:
        Notifier({"NOTIFY_SOCKET": "@" + name, "WATCHDOG_USEC": "1000000", "WATCHDOG_PID": str(os.getpid())}).ping()
        Notifier({"NOTIFY_SOCKET": "@" + name}).ping()  # no WATCHDOG_USEC: systemd did not ask
        Notifier({"NOTIFY_SOCKET": "@" + name, "WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "1"}).ping()  # another pid
        Notifier({"NOTIFY_SOCKET": "@" + name}).status("abstract")
        assert receive(sock) == ["WATCHDOG=1", "STATUS=abstract"]
    finally:
        sock.close()


def test_without_systemd_nothing_is_sent_and_nothing_fails(tmp_path):
    notifier = Notifier({})
    assert not notifier.enabled and not notifier.watchdog
    notifier.ready("x")
    notifier.ping()
    Notifier({"NOTIFY_SOCKET": str(tmp_path / "gone"), "WATCHDOG_USEC": "1"}).ping()  # systemd went away: logged


def test_daemon_reports_ready_pings_only_while_healthy_and_says_stopping(tmp_path, monkeypatch):
    with notify_socket() as (sock, path):
        monkeypatch.setenv("NOTIFY_SOCKET", path)
        monkeypatch.setenv("WATCHDOG_USEC", "30000000")
        monkeypatch.delenv("WATCHDOG_PID", raising=False)
        (tmp_path / "camera").mkdir()
        write(tmp_path / "camera" / "backlog.png", dark_png())
        with running(tmp_path) as h:
            messages = receive_until(sock, "READY=1")
            assert messages[-1].startswith("READY=1\nSTATUS=watching (native events)")
            assert receive_until(sock, "WATCHDOG=1") and receive_until(sock, "WATCHDOG=1"), "pings keep coming"
            h.wait_done(h.folder / "backlog.png")
            scorer = h.daemon.scoring
            monkeypatch.setattr(scorer, "is_alive", lambda: False)  # as if the scorer thread had died
            time.sleep(0.3)
            receive(sock, timeout=0.1)  # drop what was sent before
            assert "WATCHDOG=1" not in receive(sock, timeout=1.0), "a dead scorer must starve the watchdog"
            monkeypatch.undo()
            monkeypatch.setenv("NOTIFY_SOCKET", path)
            receive_until(sock, "WATCHDOG=1")
        assert any(m.startswith("STOPPING=1") for m in receive(sock, timeout=1.0))


def test_the_unit_file_ships_and_says_what_the_service_needs():
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # systemd keys are case-sensitive
    unit.read(UNIT_FILE)
    service = unit["Service"]
    assert service["Type"] == "notify" and service["WatchdogSec"] == "30" and service["Restart"] == "on-failure"
    assert service["User"] == "pyfundus" and service["ProtectSystem"] == "strict"
    assert service["StateDirectory"] == "pyfundus" and service["ReadWritePaths"] == "/var/lib/pyfundus"
    assert "Environment=PYFUNDUS_STATE_DIR=/var/lib/pyfundus" in Path(UNIT_FILE).read_text().splitlines()
    assert service["ReadOnlyPaths"], "the camera folder is read-only to the service unless rejects are moved"
    assert service["ExecStart"].split()[1:3] == ["watch", "--config"]
    assert unit["Install"]["WantedBy"] == "multi-user.target"
    printed = subprocess.run(
        [sys.executable, "-c", "import sys; from pyfundus.daemon.cli import main; sys.exit(main(sys.argv[1:]))",
         "--print-systemd-unit"], capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert printed == Path(UNIT_FILE).read_text()

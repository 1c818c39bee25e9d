"""sd_notify in a few lines: tell systemd the daemon is ready, alive, stopping, and what it is doing.

The protocol is one datagram per message, ``KEY=value`` lines, sent to the
unix socket named by ``$NOTIFY_SOCKET`` (a leading ``@`` means Linux's
abstract namespace). Outside systemd (no ``$NOTIFY_SOCKET``) every call does
nothing. Watchdog pings are sent only when systemd asked for them
(``$WATCHDOG_USEC``, for this process if ``$WATCHDOG_PID`` is set), and the
daemon sends them only while its observer and scorer are alive: a wedged
daemon stops pinging and systemd restarts it (``WatchdogSec=`` in the unit).
"""

from __future__ import annotations

import logging
import os
import socket
from typing import Mapping

log = logging.getLogger(__name__)

UNIT_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "pyfundusd.service")


class Notifier:
    def __init__(self, environ: Mapping[str, str] = os.environ) -> None:
        address = environ.get("NOTIFY_SOCKET", "")
        self.address = "\0" + address[1:] if address.startswith("@") else address
        watchdog_pid = environ.get("WATCHDOG_PID")
        self.watchdog = bool(
            self.address
            and environ.get("WATCHDOG_USEC", "").isdigit()
            and (watchdog_pid is None or watchdog_pid == str(os.getpid()))
        )
        self._socket: socket.socket | None = None
        self._last_status: str | None = None
        self._warned = False

    @property
    def enabled(self) -> bool:
        return bool(self.address)

    def ready(self, status: str) -> None:
        self._send(f"READY=1\nSTATUS={status}")

    def ping(self) -> None:
        """WATCHDOG=1: call only when the daemon's own checks say it is working."""
        if self.watchdog:
            self._send("WATCHDOG=1")

    def status(self, text: str) -> None:
        if text != self._last_status:  # the supervisor calls this every second; send changes only
            self._last_status = text
            self._send(f"STATUS={text}")

    def stopping(self) -> None:
        self._send("STOPPING=1\nSTATUS=stopping: finishing queued captures")

    def _send(self, message: str) -> None:
        if not self.address:
            return
        try:
            if self._socket is None:
                self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._socket.sendto(message.encode(), self.address)
        except OSError as exc:
            if not self._warned:  # systemd going away must not take the daemon with it; say it once
                self._warned = True
                log.warning("cannot notify systemd at %s: %s", self.address.replace("\0", "@"), exc.strerror or exc)


def unit_text() -> str:
    """The shipped systemd unit (``pyfundusd --print-systemd-unit``)."""
    with open(UNIT_FILE, encoding="utf-8") as f:
        return f.read()

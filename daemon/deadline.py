"""A deadline for a whole HTTP exchange (connect, send, the complete answer), not for each read.

The webhook alert and the remote scorer (``watch --remote``) both need one: a server that trickles its
answer a byte at a time would otherwise hold the caller as long as it likes.
"""

from __future__ import annotations

import http.client
import socket
import threading
import urllib.request


class Deadline:
    """Shuts the sockets of one HTTP exchange down when its time is up: a deadline for the whole of it.

    A socket timeout limits each read, so it never ends a server that sends a byte every second;
    shutting the socket down makes the blocked read return at once.
    """

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.expired = False
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._timer: threading.Timer | None = None

    def opener(self) -> urllib.request.OpenerDirector:
        """An opener whose http and https connections this deadline ends (use it inside ``with deadline``)."""
        return urllib.request.build_opener(_HTTPHandler(self), _HTTPSHandler(self))

    def __enter__(self) -> Deadline:
        self._timer = threading.Timer(self.seconds, self._expire)
        self._timer.daemon = True
        self._timer.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._timer is not None:
            self._timer.cancel()

    def watch(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.append(sock)
            if self.expired:  # connected just after the deadline
                _shut(sock)

    def connection(self, base: type[http.client.HTTPConnection]) -> type[http.client.HTTPConnection]:
        """``base`` with its socket handed to this deadline as soon as it is connected."""
        deadline = self

        class Connection(base):  # type: ignore[misc, valid-type]
            def connect(self) -> None:
                super().connect()
                deadline.watch(self.sock)

        return Connection

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            for sock in self._sockets:
                _shut(sock)


def _shut(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # already closed


class _HTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, deadline: Deadline) -> None:
        super().__init__()
        self.deadline = deadline

    def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(self.deadline.connection(http.client.HTTPConnection), req)


class _HTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, deadline: Deadline) -> None:
        super().__init__()
        self.deadline = deadline

    def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(self.deadline.connection(http.client.HTTPSConnection), req, context=self._context)

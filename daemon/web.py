"""The operator page, /healthz and /metrics: a small stdlib HTTP server started and stopped with the daemon.

``/`` shows the latest capture (thumbnail, traffic light, score, eye, patient,
reason), a RETAKE banner with a chime on Reject, and today's captures. It
loads its state from ``/api/latest`` and ``/api/history?day=today`` and then
follows ``/events`` (server-sent events; a reconnect resumes after its
Last-Event-ID, or is told to reload when that is out of reach).

Patient data: the page and ``/api/*`` show file names and patient IDs, for
the operator at this machine. So the server listens on 127.0.0.1 by default
and, while it listens on loopback, refuses requests whose Host header is not
a loopback name (a web page elsewhere cannot read it through DNS rebinding).
The Host header is parsed strictly (a name or an [IPv6] literal, then an
optional port, nothing else) and must come exactly once. A client has
``request_timeout`` seconds for each read and write: a connection that sends
nothing does not hold a thread for longer.
``/healthz`` and ``/metrics`` carry counts only, never a name or an ID.

Thumbnails (``/thumb/<sha256>``) are made only for scored captures the page
holds (today's, from the ledger; a failed capture has none: it may be the
huge or broken file that failed), only from files inside the watched folder,
and only while the file still has the content that was scored. They are made
one at a time and cached, so parallel requests decode a capture once.
"""

from __future__ import annotations

import collections
import hashlib
import io
import ipaddress
import json
import logging
import os
import re
import secrets
import shutil
import socket
import socketserver
import threading
import time
from datetime import date
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, Iterable
from urllib.parse import parse_qs, urlsplit

from pyfundus.paths import printable
from pyfundus.verdicts import CLASSES, FAILED, FEEDBACK, iso_time

from .errors import LedgerError, StartupError
from .ledger import Ledger
from .records import Verdict
from .statedir import MIN_FREE_BYTES

log = logging.getLogger(__name__)

PAGE = Path(__file__).with_name("operator_page.html")
THUMB_SIDE = 480  # px, the longer side; the page shows it at about 40% of the screen height
THUMB_CACHE = 32
KEEPALIVE_SECONDS = 15.0  # under the idle timeouts of proxies and of the browser's own connection
REQUEST_TIMEOUT = 10.0  # seconds a client may take to send its request (or to take an event)
EVENTS_KEPT = 256  # a reconnect further behind than this reloads the page's state instead
HISTORY_LIMIT = 5000  # captures held per day: far above a clinic day
LATENCY_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0)
FEEDBACK_BYTES = 1024  # a feedback request is {"id": ..., "label": ...}: anything larger is not one
_SHA256 = re.compile(r"[0-9a-f]{64}")
_LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1"}
# RFC 9110 Host: uri-host [":" port], where uri-host is a name, an IPv4 address or an [IPv6] literal.
_HOST = re.compile(r"(?:\[(?P<ipv6>[0-9A-Fa-f:.]+)\]|(?P<name>[A-Za-z0-9.-]+))(?::[0-9]{1,5})?")


class Behind(Exception):
    """The client's last event is not in the kept window (too old, or from an earlier run)."""


class Board:
    """What the page shows: today's captures, the latest one, and a numbered window of live events.

    ``publish`` is the daemon's verdict sink (scorer and intake threads); the
    HTTP threads read. Event ids are ``<run>-<n>`` so a page that reconnects
    to a restarted daemon is told to reload rather than skipping events.
    """

    def __init__(self, root: str, enhancing: bool = False) -> None:
        self.root = root
        self.enhancing = enhancing  # --enhance-usable: Usable captures get an enhanced copy (enhanced.py)
        self.run = secrets.token_hex(4)
        self.metrics = Metrics()
        self._day = date.today()
        self._today: collections.OrderedDict[tuple[str, str], dict[str, Any]] = collections.OrderedDict()
        self._paths: dict[str, set[str]] = {}  # sha256 -> paths of today's scored captures: what /thumb may open
        self._latest: dict[str, Any] | None = None
        self._latest_when = 0.0
        # (number, kind, data): kind "verdict", "feedback" (the operator's word on one) or "notice" (a camera)
        self._events: collections.deque[tuple[int, str, dict[str, Any]]] = collections.deque(maxlen=EVENTS_KEPT)
        self._notices: dict[str, dict[str, Any]] = {}  # camera -> the notice the page shows
        self._sequence = 0
        self._closed = False
        self._cv = threading.Condition()

    # ---- feeding ------------------------------------------------------------

    def seed(self, verdicts: Iterable[Verdict]) -> None:
        """Today's captures already in the ledger, oldest first."""
        with self._cv:
            for verdict in verdicts:
                if verdict.state != "pending" and verdict.scored_at is not None:
                    self._hold(verdict, verdict.scored_at)

    def publish(self, verdict: Verdict) -> None:
        self.metrics.observe(verdict)
        with self._cv:
            self._send("verdict", self._hold(verdict, time.time()))

    def feedback(self, verdict: Verdict) -> dict[str, Any]:
        """The operator's word on a capture (already in the ledger): held, and sent to every open page."""
        self.metrics.observe_feedback(verdict.feedback)
        with self._cv:
            for key, record in self._today.items():
                if key[0] == verdict.sha256:
                    record.update(feedback=verdict.feedback, feedback_at=iso_time(verdict.feedback_at))
            update = {"id": verdict.sha256, "feedback": verdict.feedback, "feedback_at": iso_time(verdict.feedback_at)}
            self._send("feedback", update)
        return update

    def notice(self, notice: Any) -> None:
        """A camera the model does not know (cameras.Notice): shown on every page until the daemon stops."""
        record = {key: printable(value) if isinstance(value, str) else value for key, value in notice.to_dict().items()}
        with self._cv:
            self._notices[notice.camera] = record
            self._send("notice", record)

    def notices(self) -> list[dict[str, Any]]:
        with self._cv:
            return list(self._notices.values())

    def _send(self, kind: str, data: dict[str, Any]) -> None:
        self._sequence += 1
        self._events.append((self._sequence, kind, data))
        self._cv.notify_all()

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify_all()

    def _hold(self, verdict: Verdict, when: float) -> dict[str, Any]:
        day = date.fromtimestamp(when)
        if day != self._day:
            self._day, self._paths = day, {}
            self._today.clear()
        record = self._record(verdict, when)
        key = (verdict.sha256, verdict.path)
        self._today.pop(key, None)
        self._today[key] = record
        if len(self._today) > HISTORY_LIMIT:
            self._today.popitem(last=False)
        if verdict.outcome != FAILED:
            self._paths.setdefault(verdict.sha256, set()).add(verdict.path)
        if when >= self._latest_when:
            self._latest, self._latest_when = record, when
        return record

    def _record(self, verdict: Verdict, when: float) -> dict[str, Any]:
        """What the page shows of a verdict; texts with their control characters escaped."""
        failed = verdict.outcome == FAILED
        reason = verdict.error if failed else verdict.reason
        if reason:
            reason = printable(reason.removeprefix(f"{verdict.path}: "))  # reader errors start with the path
        duplicate_of = self.name(verdict.duplicate_of) if verdict.duplicate_of else None
        return {
            "id": verdict.sha256,
            "file": self.name(verdict.path),
            "time": iso_time(when),
            "class": verdict.outcome,
            "score": None if verdict.score is None else round(verdict.score, 1),
            "eye": verdict.eye and printable(verdict.eye),
            "patient_id": verdict.patient_id and printable(verdict.patient_id),
            "reason": reason,
            "duplicate_of": duplicate_of,
            "camera": verdict.camera and printable(verdict.camera),
            "model": verdict.model and printable(verdict.model),
            "trained": verdict.trained,
            "thumb": None if failed else f"/thumb/{verdict.sha256}",
            "enhanced": f"/enhanced/{verdict.sha256}" if self.enhancing and verdict.outcome == "Usable" else None,
            "feedback": verdict.feedback,
            "feedback_at": iso_time(verdict.feedback_at),
        }

    def name(self, path: str) -> str:
        relative = os.path.relpath(path, self.root)
        return printable(path if relative.startswith("..") else relative)

    # ---- reading ------------------------------------------------------------

    @property
    def cursor(self) -> str:
        return f"{self.run}-{self._sequence}"

    def latest(self) -> tuple[dict[str, Any] | None, str]:
        with self._cv:
            return self._latest, self.cursor

    def history(self, day: date) -> tuple[list[dict[str, Any]], str] | None:
        """The day's captures, oldest first; None for a day this board does not hold."""
        with self._cv:
            if day == date.today() and self._day != day:  # nothing arrived yet today
                return [], self.cursor
            if day != self._day:
                return None
            return list(self._today.values()), self.cursor

    def paths_of(self, sha256: str) -> list[str]:
        with self._cv:
            return sorted(self._paths.get(sha256, ()))

    def last_verdict_time(self) -> str | None:
        with self._cv:
            return self._latest["time"] if self._latest else None

    def sequence_after(self, cursor: str | None) -> int:
        """The event number a client's cursor stands for; raises Behind when events since are not kept."""
        with self._cv:
            if cursor is None:
                return self._sequence
            run, _, number = cursor.partition("-")
            if run != self.run or not number.isdigit() or int(number) > self._sequence:
                raise Behind
            oldest = self._events[0][0] if self._events else self._sequence + 1
            if int(number) < oldest - 1:
                raise Behind
            return int(number)

    def wait_events(self, after: int, timeout: float) -> list[tuple[str, str, dict[str, Any]]] | None:
        """Events (id, kind, data) numbered above ``after`` (waiting up to ``timeout``); None once closed."""
        with self._cv:
            self._cv.wait_for(lambda: self._closed or self._sequence > after, timeout)
            if self._closed:
                return None
            if self._events and self._events[0][0] > after + 1:
                raise Behind  # more than EVENTS_KEPT arrived while this client was writing
            return [(f"{self.run}-{n}", kind, data) for n, kind, data in self._events if n > after]


class Metrics:
    """Counters since the daemon started, rendered by hand in Prometheus' text format (0.0.4)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.verdicts = dict.fromkeys(CLASSES, 0)
        self.failures = 0
        self.duplicates = 0
        self.buckets = [0] * len(LATENCY_BUCKETS)
        self.latency_sum = 0.0
        self.latency_count = 0
        self.feedback = dict.fromkeys(FEEDBACK, 0)

    def observe_feedback(self, label: str | None) -> None:
        with self._lock:
            if label in self.feedback:
                self.feedback[label] += 1

    def observe(self, verdict: Verdict) -> None:
        with self._lock:
            if verdict.duplicate_of:
                self.duplicates += 1
                return
            if verdict.outcome == FAILED:
                self.failures += 1
            elif verdict.quality_class in self.verdicts:
                self.verdicts[verdict.quality_class] += 1
            latency_ms = verdict.timing_ms.get("latency")
            if latency_ms is not None:
                seconds = latency_ms / 1000.0
                self.latency_sum += seconds
                self.latency_count += 1
                for i, bound in enumerate(LATENCY_BUCKETS):
                    if seconds <= bound:
                        self.buckets[i] += 1

    def render(self, status: dict[str, Any]) -> str:
        with self._lock:
            lines = _family("pyfundus_verdicts_total", "counter", "Captures scored since the daemon started, by class.")
            lines += [f'pyfundus_verdicts_total{{class="{name}"}} {count}' for name, count in self.verdicts.items()]
            lines += _family("pyfundus_failures_total", "counter",
                             "Captures that could not be scored (unreadable, truncated, scorer error).")  # fmt: skip
            lines.append(f"pyfundus_failures_total {self.failures}")
            lines += _family("pyfundus_duplicates_total", "counter",
                             "Captures that arrived again under another name and were not scored again.")  # fmt: skip
            lines.append(f"pyfundus_duplicates_total {self.duplicates}")
            lines += _family("pyfundus_feedback_total", "counter",
                             "The operator's word on verdicts from the operator page: fine as it is, or retake anyway.")  # fmt: skip
            lines += [f'pyfundus_feedback_total{{label="{name}"}} {count}' for name, count in self.feedback.items()]
            lines += _family("pyfundus_verdict_latency_seconds", "histogram",
                             "From the first file event of a capture to its verdict.")  # fmt: skip
            for bound, count in zip(LATENCY_BUCKETS, self.buckets):
                lines.append(f'pyfundus_verdict_latency_seconds_bucket{{le="{bound!r}"}} {count}')
            lines.append(f'pyfundus_verdict_latency_seconds_bucket{{le="+Inf"}} {self.latency_count}')
            lines.append(f"pyfundus_verdict_latency_seconds_sum {self.latency_sum!r}")
            lines.append(f"pyfundus_verdict_latency_seconds_count {self.latency_count}")
        lines += _family("pyfundus_queue_depth", "gauge", "Captures waiting for the scorer.")
        lines.append(f"pyfundus_queue_depth {status['queued']}")
        lines += _family("pyfundus_observer_restarts_total", "counter", "Restarts of the file-event observer.")
        lines.append(f"pyfundus_observer_restarts_total {status['observer_restarts']}")
        lines += _family("pyfundus_observer_up", "gauge", "1 while the file-event observer is running.")
        lines.append(f"pyfundus_observer_up {int(status['observer_alive'])}")
        return "\n".join(lines) + "\n"


def _family(name: str, kind: str, help_text: str) -> list[str]:
    return [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]


class OperatorWeb:
    """The HTTP server, and a verdict sink (called with each Verdict; ``close`` stops serving)."""

    def __init__(
        self,
        *,
        host: str,
        port: int,
        root: str,
        state_dir: Path,
        status: Callable[[], dict[str, Any]],
        keepalive: float = KEEPALIVE_SECONDS,
        request_timeout: float = REQUEST_TIMEOUT,
        enhancing: bool = False,
    ) -> None:
        self.host, self.port = host, port
        self.root = root
        self.state_dir = Path(state_dir)
        self.status = status
        self.keepalive = keepalive
        self.request_timeout = request_timeout
        self.board = Board(root, enhancing)
        self._enhanced: dict[str, str] = {}  # sha256 of a Usable capture -> its enhanced copy (enhanced.py)
        self.loopback_only = is_loopback_address(host)
        self._page = PAGE.read_bytes()
        self._thumbs: collections.OrderedDict[str, bytes] = collections.OrderedDict()
        self._thumbs_lock = threading.Lock()
        self._making_thumb = threading.Lock()  # one decode at a time: a huge capture's decode is memory
        self._server: PageServer | None = None
        self._thread: threading.Thread | None = None
        self._started = 0.0
        self.ledger: Ledger | None = None

    def __call__(self, verdict: Verdict) -> None:
        self.board.publish(verdict)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    def start(self, ledger: Ledger) -> None:
        """Load today's captures from the ledger, bind, and serve on a background thread."""
        today = date.today()
        try:
            captures = ledger.captures()
        except LedgerError as exc:
            raise StartupError(f"the operator page cannot read today's captures: {exc}") from exc
        self.board.seed(
            verdict for verdict, _ in captures
            if verdict.scored_at is not None and date.fromtimestamp(verdict.scored_at) == today
        )  # fmt: skip
        self.ledger = ledger  # the operator's feedback is written there
        try:
            self._server = PageServer((self.host, self.port), _Handler, self, "operator page")
        except OSError as exc:
            raise StartupError(
                f"the operator page cannot listen on {self.host}:{self.port} ({exc.strerror or exc}); "
                "choose another --web-port (0 picks a free one), or turn it off with --no-web"
            ) from exc
        self.port = self._server.server_address[1]
        self._started = time.monotonic()
        self._thread = threading.Thread(target=self._server.serve_forever, name="pyfundus-web", daemon=True)
        self._thread.start()
        log.info("operator page at %s", self.url)
        if not self.loopback_only:
            log.warning(
                "the operator page listens on %s, not only on this machine: anyone who can reach it sees "
                "patient IDs and file names", self.host,
            )  # fmt: skip

    def record_feedback(self, sha256: str, label: str) -> dict[str, Any] | None:
        """The operator's word on a capture, kept in the ledger and sent to every open page; None: no such verdict."""
        assert self.ledger is not None
        verdict = self.ledger.add_feedback(sha256, label, time.time())
        if verdict is None:
            return None
        log.info("the operator marked capture %s: %s", sha256[:12], label)
        return self.board.feedback(verdict)

    def close(self, timeout: float = 0.0) -> None:
        """Ends the event streams, stops accepting, closes the socket; safe to call more than once."""
        self.board.close()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    # ---- what the endpoints return ---------------------------------------------------

    def health(self) -> tuple[bool, dict[str, Any]]:
        from pyfundus.version import __version__

        status = self.status()
        problems = []
        if not status["folder_present"]:
            problems.append("the watched folder is missing")
        elif not status["observer_alive"]:
            problems.append("the file-event observer is not running")
        if status["unsaved_verdicts"]:
            problems.append(f"the ledger refuses writes: {status['unsaved_verdicts']} verdict(s) held in memory")
        try:
            free = shutil.disk_usage(self.state_dir).free
            if free < MIN_FREE_BYTES:
                problems.append(f"the state directory has only {free // 2**20} MiB free")
        except OSError as exc:
            problems.append(f"the state directory cannot be checked ({exc.strerror or exc})")
        return not problems, {
            "healthy": not problems,
            "problems": problems,
            "observer_alive": status["observer_alive"],
            "events": status["events"],
            "queue_depth": status["queued"],
            "settling": status["settling"],
            "last_verdict_time": self.board.last_verdict_time(),
            "model": status["model"],
            "backend": status["backend"],
            "version": __version__,
            "uptime_seconds": round(time.monotonic() - self._started, 3),
        }

    def thumbnail(self, sha256: str) -> bytes | None:
        """A JPEG of the capture, from a file inside the watched folder that still holds what was scored."""
        cached = self._cached_thumbnail(sha256)
        if cached is not None:
            return cached
        with self._making_thumb:
            return self._cached_thumbnail(sha256) or self._new_thumbnail(sha256)  # made while we waited?

    def enhanced_copy(self, sha256: str, path: str) -> None:
        """Register the enhanced copy of a capture (from the enhancement thread)."""
        with self._thumbs_lock:
            self._enhanced[sha256] = path

    def enhanced_thumbnail(self, sha256: str) -> bytes | None:
        """A JPEG of a capture's enhanced copy; None until it is written."""
        key = f"enhanced:{sha256}"
        cached = self._cached_thumbnail(key)
        if cached is not None:
            return cached
        with self._thumbs_lock:
            path = self._enhanced.get(sha256)
        try:
            jpeg = _make_thumbnail(Path(path).read_bytes()) if path else None
        except OSError:
            jpeg = None
        if jpeg is not None:
            with self._thumbs_lock:
                self._thumbs[key] = jpeg
                if len(self._thumbs) > THUMB_CACHE:
                    self._thumbs.popitem(last=False)
        return jpeg

    def _cached_thumbnail(self, sha256: str) -> bytes | None:
        with self._thumbs_lock:
            if sha256 in self._thumbs:
                self._thumbs.move_to_end(sha256)
                return self._thumbs[sha256]
        return None

    def _new_thumbnail(self, sha256: str) -> bytes | None:
        for path in self.board.paths_of(sha256):
            real = os.path.realpath(path)
            if os.path.commonpath([real, self.root]) != self.root:
                continue  # an old row from when another folder was watched: not ours to serve
            try:
                data = Path(real).read_bytes()
            except OSError:
                continue
            if hashlib.sha256(data).hexdigest() != sha256:
                continue  # rewritten since: that is not the image the verdict is about
            jpeg = _make_thumbnail(data)
            if jpeg is None:
                continue
            with self._thumbs_lock:
                self._thumbs[sha256] = jpeg
                if len(self._thumbs) > THUMB_CACHE:
                    self._thumbs.popitem(last=False)
            return jpeg
        return None


def _make_thumbnail(data: bytes) -> bytes | None:
    from PIL import Image

    from pyfundus.io import ImageReadError, read_image

    try:
        image = read_image(data, min_side=THUMB_SIDE, min_size=8)
    except ImageReadError:
        return None
    picture = Image.fromarray(image.pixels)
    picture.thumbnail((THUMB_SIDE, THUMB_SIDE))
    buffer = io.BytesIO()
    picture.save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()


def host_is_loopback(headers: Any) -> bool:
    """Whether a request names this machine: exactly one Host header, of the form host[:port], a loopback host.

    A page elsewhere that reaches 127.0.0.1 through DNS rebinding sends its own
    name and is refused; so is anything that does not parse (two Host headers,
    "localhost:80@evil.example", "[::1].evil.example", a port that is not a number).
    The rating app (pyfundus.mark.server) answers by the same rule.
    """
    hosts = headers.get_all("Host") or []
    match = _HOST.fullmatch(hosts[0]) if len(hosts) == 1 else None
    return match is not None and is_loopback_address(match["ipv6"] or match["name"])


def is_loopback_address(host: str) -> bool:
    """Whether an address or name reaches this machine only (a listen address, or a Host header's host)."""
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class PageServer(ThreadingHTTPServer):
    """The HTTP server of a pyfundus page (the operator page, the rating app): ``app`` answers, each request on its
    own thread, which never holds up exit (a stuck client must not keep the process alive)."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], app: Any, what: str) -> None:
        self.app, self.what = app, what
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind looks up the host's FQDN: a DNS query that stalls start-up offline.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]

    def handle_error(self, request: Any, client_address: Any) -> None:
        logging.getLogger(type(self.app).__module__).exception("the %s failed to answer a request", self.what)


class _Handler(BaseHTTPRequestHandler):
    server: PageServer
    server_version = "pyfundus"
    sys_version = ""

    def setup(self) -> None:
        self.timeout = self.server.app.request_timeout  # applied to the connection by setup()
        super().setup()

    def _admitted(self) -> bool:
        """One Host header, naming this machine while the server listens on loopback; else answered and False."""
        if len(self.headers.get_all("Host") or ()) > 1:
            self._send(HTTPStatus.BAD_REQUEST, b"one Host header, please\n", "text/plain; charset=utf-8")
            return False
        if self.server.app.loopback_only and not host_is_loopback(self.headers):
            self._send(HTTPStatus.FORBIDDEN, b"this page answers only to localhost\n", "text/plain; charset=utf-8")
            return False
        return True

    def do_POST(self) -> None:
        """``/api/feedback``: {"id": sha256, "label": "fine" | "retake"}, from this page only."""
        if not self._admitted():
            return
        if urlsplit(self.path).path != "/api/feedback":
            self._json(HTTPStatus.NOT_FOUND, {"error": "not found"})
            return
        # Any web page can make a browser POST to localhost; only this page's own origin may change anything.
        if self.headers.get("Origin") != f"http://{self.headers.get('Host')}":
            self._json(HTTPStatus.FORBIDDEN, {"error": "feedback comes from the operator page itself"})
            return
        if self.headers.get_content_type() != "application/json":
            self._json(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, {"error": "send JSON"})
            return
        try:
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length)) if 0 < length <= FEEDBACK_BYTES else None
        except (ValueError, UnicodeDecodeError):
            body = None
        sha256, label = (body.get("id"), body.get("label")) if isinstance(body, dict) else (None, None)
        if not isinstance(sha256, str) or not _SHA256.fullmatch(sha256) or label not in FEEDBACK:
            self._json(HTTPStatus.BAD_REQUEST, {"error": f"expected {{\"id\": SHA256, \"label\": {' or '.join(FEEDBACK)}}}"})
            return
        try:
            update = self.server.app.record_feedback(sha256, label)
        except LedgerError as exc:
            log.error("%s", exc)
            self._json(HTTPStatus.SERVICE_UNAVAILABLE, {"error": "the ledger cannot take it now; try again"})
            return
        if update is None:
            self._json(HTTPStatus.NOT_FOUND, {"error": "no verdict for that capture"})
        else:
            self._json(HTTPStatus.OK, update)

    def do_GET(self) -> None:
        web = self.server.app
        if not self._admitted():
            return
        url = urlsplit(self.path)
        route = url.path
        if route == "/":
            self._send(HTTPStatus.OK, web._page, "text/html; charset=utf-8", page=True)
        elif route == "/api/latest":
            latest, cursor = web.board.latest()
            self._json(HTTPStatus.OK, {"capture": latest, "notices": web.board.notices(), "last_event_id": cursor})
        elif route == "/api/history":
            self._history(parse_qs(url.query).get("day", ["today"])[-1])
        elif route == "/events":
            self._events(self.headers.get("Last-Event-ID") or parse_qs(url.query).get("after", [None])[-1])
        elif route.startswith("/thumb/"):
            sha256 = route.removeprefix("/thumb/")
            jpeg = web.thumbnail(sha256) if _SHA256.fullmatch(sha256) else None
            if jpeg is None:
                self._json(HTTPStatus.NOT_FOUND, {"error": "no such capture today, or its file changed"})
            else:
                self._send(HTTPStatus.OK, jpeg, "image/jpeg")
        elif route.startswith("/enhanced/"):
            sha256 = route.removeprefix("/enhanced/")
            jpeg = web.enhanced_thumbnail(sha256) if _SHA256.fullmatch(sha256) else None
            if jpeg is None:
                self._json(HTTPStatus.NOT_FOUND, {"error": "no enhanced copy of that capture (yet)"})
            else:
                self._send(HTTPStatus.OK, jpeg, "image/jpeg")
        elif route == "/healthz":
            healthy, body = web.health()
            self._json(HTTPStatus.OK if healthy else HTTPStatus.SERVICE_UNAVAILABLE, body)
        elif route == "/metrics":
            text = web.board.metrics.render(web.status())
            self._send(HTTPStatus.OK, text.encode(), "text/plain; version=0.0.4; charset=utf-8")
        else:
            self._json(HTTPStatus.NOT_FOUND, {"error": "not found"})

    def _history(self, day_text: str) -> None:
        try:
            day = date.today() if day_text == "today" else date.fromisoformat(day_text)
        except ValueError:
            self._json(HTTPStatus.BAD_REQUEST, {"error": "day must be 'today' or YYYY-MM-DD"})
            return
        held = self.server.app.board.history(day)
        if held is None:
            message = "the page holds today's captures only; `pyfundus results export` has every day"
            self._json(HTTPStatus.NOT_FOUND, {"error": message})
            return
        captures, cursor = held
        self._json(HTTPStatus.OK, {"day": day.isoformat(), "captures": captures, "last_event_id": cursor})

    def _events(self, cursor: str | None) -> None:
        web = self.server.app
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        try:
            self._write("retry: 2000\n\n")  # reconnect after 2 s when the stream drops
            try:
                after = web.board.sequence_after(cursor)
            except Behind:
                after = web.board.sequence_after(None)
                self._write("event: reset\ndata: {}\n\n")  # the page reloads /api/latest and /api/history
            while True:
                try:
                    events = web.board.wait_events(after, web.keepalive)
                except Behind:
                    after = web.board.sequence_after(None)
                    self._write("event: reset\ndata: {}\n\n")
                    continue
                if events is None:
                    return  # the daemon is stopping
                if not events:
                    self._write(": keep-alive\n\n")
                for event_id, kind, data in events:
                    self._write(f"id: {event_id}\nevent: {kind}\ndata: {json.dumps(data)}\n\n")
                    after = int(event_id.rpartition("-")[2])
        except OSError:
            return  # the page went away, or stopped reading for request_timeout

    def _write(self, text: str) -> None:
        self.wfile.write(text.encode())
        self.wfile.flush()

    def _json(self, code: HTTPStatus, body: Any) -> None:
        self._send(code, json.dumps(body).encode(), "application/json")

    def _send(self, code: HTTPStatus, body: bytes, content_type: str, *, page: bool = False) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")  # patient data: never kept in a browser cache
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        if page:
            self.send_header(
                "Content-Security-Policy",
                "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src 'self' data:; "
                "connect-src 'self'; frame-ancestors 'none'",
            )
        try:
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the page went away mid-answer (a reload while a thumbnail loads): nothing to tell it

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("web: " + format, *args)

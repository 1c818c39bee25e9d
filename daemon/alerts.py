"""Alert hooks: a command, a webhook and a desktop notification for the verdicts that need a person.

All are off until configured, and fire for the classes in ``alert_on``
(default Reject and Failed: a retake is needed, or the capture could not be
read). Each channel has its own bounded queue and thread, so a slow
command, a webhook that times out and retries, or a hung notification
daemon never holds up scoring or the other channels. When a queue is full
the oldest alert is dropped (the newest is about the patient still in the
chair) and the drop is logged. At shutdown each channel gets until the drain
deadline to deliver what it holds; what is left is logged as lost.

Payload (command stdin and webhook body): the verdict as JSON, as in
``pyfundus results export``, plus ``"event": "pyfundus.alert"``. With
``alert_redact`` (the default) the file name, patient ID and DICOM UIDs are
emptied and the capture's paths are scrubbed from messages (``logs.Redactor``):
the webhook leaves the machine. The sha256 still identifies the capture in the local ledger.
"""

from __future__ import annotations

import collections
import http.client
import json
import logging
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.request
from typing import Any, Callable

from pyfundus.paths import printable
from pyfundus.version import __version__

from .config import WatchConfig
from .deadline import Deadline
from .logs import Redactor, file_paths
from .records import Verdict

log = logging.getLogger(__name__)

QUEUE_SIZE = 100  # alerts waiting per channel; a backlog this long means the channel is down
FIRST_BACKOFF = 1.0  # seconds before the webhook's second try; doubled after each failure


class AlertChannel:
    """One way of telling someone: a bounded queue drained by a thread that calls ``deliver``."""

    def __init__(self, name: str, deliver: Callable[[Any], None], *, closing: threading.Event | None = None,
                 queue_size: int = QUEUE_SIZE) -> None:  # fmt: skip
        self.name = name
        self.deliver = deliver
        self.delivered = 0
        self.dropped = 0
        self.closing = closing or threading.Event()  # set at the deadline: retries give up, the thread ends
        self._queue: collections.deque[Any] = collections.deque(maxlen=queue_size)
        self._cv = threading.Condition()
        self._busy = False
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name=f"pyfundus-alert-{name}", daemon=True)
        self._thread.start()

    def put(self, payload: Any) -> None:
        with self._cv:
            if self._stopped:
                return
            if len(self._queue) == self._queue.maxlen:
                self.dropped += 1
                log.warning("%s alerts are not getting through: the oldest waiting alert was dropped", self.name)
            self._queue.append(payload)
            self._cv.notify()

    def close(self, timeout: float) -> None:
        """Deliver what is queued within ``timeout`` seconds, then stop; logs what could not be sent."""
        deadline = time.monotonic() + timeout
        with self._cv:
            self._stopped = True
            self._cv.notify()
            while (self._queue or self._busy) and time.monotonic() < deadline:
                self._cv.wait(deadline - time.monotonic())
            left = len(self._queue) + int(self._busy)
        self.closing.set()
        self._thread.join(timeout=1.0)
        if left:
            log.error("%d %s alert(s) not delivered before the shutdown deadline", left, self.name)

    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._queue and not self._stopped:
                    self._cv.wait()
                if not self._queue or self.closing.is_set():
                    return
                payload = self._queue.popleft()
                self._busy = True
            try:
                self.deliver(payload)
                self.delivered += 1
            except Exception:
                log.exception("%s alert failed", self.name)
            finally:
                with self._cv:
                    self._busy = False
                    self._cv.notify_all()


class CommandAlert:
    """Runs ``argv`` (no shell) with the JSON payload on stdin; a non-zero exit or a timeout is logged."""

    def __init__(self, argv: list[str], timeout: float) -> None:
        self.argv = argv
        self.timeout = timeout

    def __call__(self, payload: dict[str, Any]) -> None:
        try:
            done = subprocess.run(
                self.argv, input=json.dumps(payload).encode(), timeout=self.timeout,
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=False,
            )  # fmt: skip
        except subprocess.TimeoutExpired:
            log.error("alert command %s did not finish within %g s and was killed", self.argv[0], self.timeout)
            return
        except OSError as exc:
            log.error("alert command %s could not be started: %s", self.argv[0], exc.strerror or exc)
            return
        if done.returncode != 0:
            detail = done.stderr.decode(errors="replace").strip()[-500:]
            log.error("alert command %s failed with exit status %d: %s", self.argv[0], done.returncode, detail or "-")


class WebhookAlert:
    """POSTs the JSON payload; retries timeouts, connection errors, 429 and 5xx with doubling pauses.

    ``timeout`` bounds each attempt as a whole (connect, send, the answer), not each read: a server
    that trickles its answer a byte at a time would otherwise hold the channel for as long as it likes.
    """

    def __init__(self, url: str, timeout: float, attempts: int, *, closing: threading.Event,
                 first_backoff: float = FIRST_BACKOFF) -> None:  # fmt: skip
        self.url = url
        self.timeout = timeout
        self.attempts = attempts
        self.closing = closing
        self.first_backoff = first_backoff

    def __call__(self, payload: dict[str, Any]) -> None:
        body = json.dumps(payload).encode()
        pause = self.first_backoff
        for attempt in range(1, self.attempts + 1):
            problem = self._post(body)
            if problem is None:
                return
            retry = problem.startswith("retry:")
            if not retry or attempt == self.attempts:
                log.error("webhook alert not delivered after %d attempt(s): %s", attempt, problem.removeprefix("retry:"))
                return
            log.warning("webhook attempt %d failed (%s); retrying in %g s", attempt, problem.removeprefix("retry:"), pause)
            if self.closing.wait(pause):
                log.error("webhook alert abandoned at shutdown after %d attempt(s)", attempt)
                return
            pause *= 2

    def _post(self, body: bytes) -> str | None:
        """None on success; else the problem, prefixed ``retry:`` when trying again may help."""
        request = urllib.request.Request(
            self.url, data=body, method="POST",
            headers={"Content-Type": "application/json", "User-Agent": f"pyfundus/{__version__}"},
        )  # fmt: skip
        deadline = Deadline(self.timeout)
        try:
            with deadline, deadline.opener().open(request, timeout=self.timeout) as response:
                response.read()
            return None
        except urllib.error.HTTPError as exc:
            transient = exc.code in (408, 429) or exc.code >= 500
            return f"{'retry:' if transient else ''}HTTP {exc.code} {exc.reason}"
        except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:  # refused, DNS, timeout, reset
            if deadline.expired:
                return f"retry:no complete answer within {self.timeout:g} s"
            return f"retry:{getattr(exc, 'reason', None) or exc}"


class DesktopAlert:
    """``notify-send`` for the logged-in operator. Said once when it is missing or cannot reach a desktop."""

    def __init__(self, names: Redactor, timeout: float) -> None:
        self.names = names
        self.timeout = timeout
        self.program = shutil.which("notify-send")
        self._warned = False
        if self.program is None:
            log.warning("desktop alerts are unavailable: notify-send is not installed (apt install libnotify-bin)")

    def __call__(self, verdict: Verdict) -> None:
        if self.program is None:
            return
        grade = verdict.outcome
        title = "RETAKE: " if grade == "Reject" else ""
        title += f"pyfundus {grade}" + (f" {verdict.score:.0f}" if verdict.score is not None else "")
        detail = (verdict.error or verdict.reason or "").removeprefix(verdict.path + ": ")
        body = printable(self.names.scrub(f"{self.names.label(verdict.path)}: {detail}", file_paths(verdict)))
        urgency = "critical" if grade in ("Reject", "Failed") else "normal"
        try:
            done = subprocess.run(
                [self.program, "--app-name=pyfundus", f"--urgency={urgency}", title, body],
                timeout=self.timeout, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=False,
            )  # fmt: skip
            problem = done.stderr.decode(errors="replace").strip() if done.returncode else None
        except (OSError, subprocess.TimeoutExpired) as exc:
            problem = str(exc)
        if problem and not self._warned:
            self._warned = True  # under a service there is usually no desktop session: say it once
            log.warning("desktop notification failed (%s); is there a desktop session for this user?", problem)


class Alerts:
    """The verdict sink that feeds the configured channels."""

    def __init__(self, config: WatchConfig, *, names: Redactor, payload_names: Redactor) -> None:
        self.classes = frozenset(config.alert_on)
        self.payload_names = payload_names
        self.channels: list[tuple[AlertChannel, bool]] = []  # (channel, wants the payload dict, not the verdict)
        if config.alert_command:
            self.channels.append((AlertChannel("command", CommandAlert(config.alert_command, config.alert_timeout)), True))
        if config.alert_webhook:
            closing = threading.Event()
            webhook = WebhookAlert(config.alert_webhook, config.alert_timeout, config.alert_attempts, closing=closing)
            self.channels.append((AlertChannel("webhook", webhook, closing=closing), True))
        if config.alert_desktop:
            self.channels.append((AlertChannel("desktop", DesktopAlert(names, config.alert_timeout)), False))

    @property
    def enabled(self) -> bool:
        return bool(self.channels)

    def __call__(self, verdict: Verdict) -> None:
        if verdict.duplicate_of is not None or verdict.outcome not in self.classes:
            return  # a second name for an image already alerted on says nothing new
        payload = {"event": "pyfundus.alert", **self.payload_names.record(verdict)}
        for channel, wants_payload in self.channels:
            channel.put(payload if wants_payload else verdict)

    def close(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for channel, _ in self.channels:
            channel.close(max(0.0, deadline - time.monotonic()))

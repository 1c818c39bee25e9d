"""Scoring on a central server (``pyfundus watch --remote URL``), with the local model as the fallback.

A camera PC too weak to score in real time sends each capture to a scoring server (``pyfundus serve``):
the file's bytes, read once, and nothing else (no file name), so the server scores exactly the bytes that
were hashed; the answer is the verdict record, whose sha256 must be that of the bytes sent. The record's
path is filled in here, and ``scored_by`` says the server's URL.

The local model scores instead when the server is unreachable, answers an error, or has not answered the
whole of a request within ``timeout`` seconds (a late answer is dropped: the capture gets one verdict, the
local one). After such a failure the server is left alone for ``retry_after`` seconds, so a down server
costs one timeout, not one per capture. A capture the server could not read is read again here: the
reader's message then names the file, and a file still being written waits for its end as it would
without a server. A capture already decoded here (a heavy one) is scored here.

The scorer wraps the local model the way :class:`~.routing.ModelRouter` wraps several: the scoring worker
sees one scorer and does not change.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import logging
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Sequence

from pyfundus.distributed.protocol import MAX_CAPTURE_BYTES
from pyfundus.io import FundusImage
from pyfundus.verdicts import ScoreResult
from pyfundus.version import __version__

from .deadline import Deadline

log = logging.getLogger(__name__)

RETRY_AFTER = 15.0  # seconds the server is left alone after it failed a request


class RemoteUnavailable(Exception):
    """The server gave no usable verdict for a capture (why is the message)."""


class RemoteScorer:
    def __init__(self, url: str, local: Any, *, timeout: float, retry_after: float = RETRY_AFTER,
                 requests_at_once: int = 8) -> None:  # fmt: skip
        self.url = url
        self.local = local
        self.timeout = timeout
        self.retry_after = retry_after
        self._pool = ThreadPoolExecutor(max_workers=requests_at_once, thread_name_prefix="pyfundus-remote")
        self._lock = threading.Lock()
        self._resting_until = 0.0  # monotonic time before which the server is not asked
        self._down = False

    # The local model speaks for this scorer where one model is asked about (start-up, health, routing).
    @property
    def name(self) -> str:
        return self.local.name

    @property
    def trained(self) -> bool:
        return self.local.trained

    @property
    def input(self) -> Any:
        return getattr(self.local, "input", None)

    @property
    def backend_description(self) -> str:
        local = getattr(self.local, "backend_description", type(self.local).__name__)
        return f"scoring server {self.url}; fallback: {local}"

    def describe_server(self) -> dict[str, Any] | None:
        """What the server says scores there (``GET``), or None when it does not answer in time."""
        try:
            return json.loads(self._exchange(urllib.request.Request(self.url, method="GET")))
        except RemoteUnavailable as exc:
            log.warning("scoring server %s: %s; captures are scored locally until it answers", self.url, exc)
            return None

    def score(self, inputs: Sequence[str | FundusImage], *, batch_size: int = 8) -> list[Any]:
        results: list[Any] = [None] * len(inputs)
        if self._resting():
            asked = {}
        else:  # a decoded (heavy) capture has no bytes left to send: it is scored here
            asked = {i: self._pool.submit(self._ask, path) for i, path in enumerate(inputs) if isinstance(path, str)}
        problem = None
        for i, answer in asked.items():
            try:
                results[i] = answer.result()
            except RemoteUnavailable as exc:
                problem = str(exc)
        if problem is not None:
            self._failed(problem)
        elif asked:
            self._answered()
        here = [i for i, result in enumerate(results) if result is None]
        if here:
            for i, result in zip(here, self.local.score([inputs[i] for i in here], batch_size=batch_size)):
                results[i] = result
        return results

    def _ask(self, path: str) -> ScoreResult | None:
        """The server's verdict of the file's bytes; None when this capture is to be scored here."""
        try:
            with open(path, "rb") as f:
                data = f.read(MAX_CAPTURE_BYTES + 1)
        except OSError:
            return None  # the local reader says what is wrong with the file
        if len(data) > MAX_CAPTURE_BYTES:
            return None  # ditto
        request = urllib.request.Request(self.url, data=data, method="POST", headers={
            "Content-Type": "application/octet-stream", "User-Agent": f"pyfundus/{__version__}"})  # fmt: skip
        try:
            record = json.loads(self._exchange(request))
        except ValueError as exc:
            raise RemoteUnavailable(f"answered something that is not a verdict ({exc})") from exc
        if not isinstance(record, dict) or record.get("sha256") != hashlib.sha256(data).hexdigest():
            raise RemoteUnavailable("answered a verdict for other bytes than it was sent")
        if record.get("error") is not None:
            return None  # unreadable there: read here, where the message can name the file
        result = ScoreResult.from_dict(record)
        result.path, result.scored_by = path, self.url
        return result

    def _exchange(self, request: urllib.request.Request) -> bytes:
        deadline = Deadline(self.timeout)
        try:
            with deadline, deadline.opener().open(request, timeout=self.timeout) as response:
                return response.read()
        except urllib.error.HTTPError as exc:
            raise RemoteUnavailable(f"HTTP {exc.code} {exc.reason}") from exc
        except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:  # refused, DNS, timeout, reset
            if deadline.expired:
                raise RemoteUnavailable(f"no complete answer within {self.timeout:g} s") from exc
            raise RemoteUnavailable(str(getattr(exc, "reason", None) or exc)) from exc

    def _resting(self) -> bool:
        with self._lock:
            return time.monotonic() < self._resting_until

    def _failed(self, why: str) -> None:
        with self._lock:
            self._resting_until = time.monotonic() + self.retry_after
            if self._down:
                return
            self._down = True
        log.warning("scoring server %s: %s; scoring locally, asking it again in %g s", self.url, why, self.retry_after)

    def _answered(self) -> None:
        with self._lock:
            if not self._down:
                return
            self._down = False
        log.warning("scoring server %s answers again: captures are scored there", self.url)


def is_loopback(url: str) -> bool:
    """Whether the URL names this machine (the bytes of a capture then never cross a network)."""
    host = urllib.parse.urlsplit(url).hostname or ""
    return host == "localhost" or host.startswith("127.") or host == "::1"

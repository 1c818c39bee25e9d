"""Shared pieces for the operator-page tests: a daemon with its web server on a free port, plain HTTP requests."""

from __future__ import annotations

import http.client
import json
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from daemon_helpers import BrightnessScorer

from pyfundus.daemon.config import WatchConfig
from pyfundus.daemon.service import Daemon


@dataclass
class Served:
    daemon: Daemon
    folder: Path
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def get(self, path: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.request("GET", path, headers=headers or {})
            response = conn.getresponse()
            return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
        finally:
            conn.close()

    def post(self, path: str, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, Any]:
        """POST as the page does (its own Origin, JSON) unless ``headers`` say otherwise; (status, JSON body)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        sent = {"Origin": f"http://127.0.0.1:{self.port}", "Content-Type": "application/json", **(headers or {})}
        try:
            conn.request("POST", path, body=body, headers={k: v for k, v in sent.items() if v is not None})
            response = conn.getresponse()
            return response.status, json.loads(response.read() or b"null")
        finally:
            conn.close()

    def get_json(self, path: str) -> tuple[int, Any]:
        status, _, body = self.get(path)
        return status, json.loads(body)


@contextmanager
def serving(tmp_path: Path, *, folder: Path | None = None, scorer: BrightnessScorer | None = None,
            **overrides: Any) -> Iterator[Served]:  # fmt: skip
    """A daemon on ``folder`` (default tmp_path/camera) with the stub scorer and the web server on a free port."""
    folder = folder or tmp_path / "camera"
    folder.mkdir(exist_ok=True)
    config = WatchConfig(folder=folder, state_dir=tmp_path / "state", **{"web_port": 0, **overrides})
    daemon = Daemon(config, scorer or BrightnessScorer())
    daemon.start()
    try:
        assert daemon.web is not None
        yield Served(daemon, folder, daemon.web.port)
    finally:
        daemon.stop()

"""Central inference: the scorer as a Ray Serve deployment over HTTP (``pyfundus serve --engine ray``).

Each replica holds one model (loaded through ``load_model``) and scores the captures that reach it in
batches (``@serve.batch``: up to ``max_batch_size`` captures from any cameras, waiting at most
``batch_wait_s`` for a batch to fill), off the event loop so requests keep arriving while a batch scores.
The protocol is in :mod:`.protocol`.

While the endpoint listens on loopback (the default), a request whose Host header is not a loopback name is
refused (403), as the operator page and the rating app refuse it: a web page elsewhere that reaches
127.0.0.1 through DNS rebinding cannot send captures or read verdicts. On another ``--host`` every client
that reaches the port is served (plain HTTP: put it behind TLS on a network you do not trust).
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import json
import signal
import sys
import threading
from typing import Any

from ray import serve
from starlette.requests import Request
from starlette.responses import JSONResponse

from ..daemon.web import host_is_loopback, is_loopback_address
from ..version import __version__
from .cluster import ModelSpec, placement, ray_session
from .protocol import BATCH_HEADER, MAX_CAPTURE_BYTES, SCORE_PATH

APP_NAME = "pyfundus"


def describe(model: Any) -> dict[str, Any]:
    """What scores here: the answer to ``GET /score``."""
    thresholds = getattr(model, "thresholds", None)
    return {
        "model": model.name,
        "model_sha256": getattr(model, "sha256", None),
        "trained": model.trained,
        "backend": getattr(model, "backend_description", None),
        "thresholds": None if thresholds is None else {"reject_below": thresholds.reject_below,
                                                       "good_from": thresholds.good_from},
        "version": __version__,
    }  # fmt: skip


@serve.deployment
class ScoringServer:
    def __init__(self, spec: ModelSpec, max_batch_size: int, batch_wait_s: float, loopback_only: bool = True) -> None:
        self.loopback_only = loopback_only
        self.model = spec.load()
        self.model.warn_untrained = False  # every record says trained=false; a warning per batch says nothing more
        self.score_batch.set_max_batch_size(max_batch_size)
        self.score_batch.set_batch_wait_timeout_s(batch_wait_s)
        self.info = describe(self.model)

    @serve.batch
    async def score_batch(self, captures: list[bytes]) -> list[tuple[dict[str, Any], int]]:
        """Each capture's record, and how many captures its batch held."""
        score = functools.partial(self.model.score, captures, batch_size=len(captures))
        results = await asyncio.get_running_loop().run_in_executor(None, score)
        return [(result.to_dict(), len(captures)) for result in results]

    async def __call__(self, request: Request) -> JSONResponse:
        if self.loopback_only and not host_is_loopback(_Headers(request)):
            return JSONResponse({"error": "this server answers requests for a loopback host only"}, status_code=403)
        if request.method == "GET":
            return JSONResponse(self.info)
        if request.method != "POST":
            return JSONResponse({"error": "POST a capture's bytes"}, status_code=405)
        too_large = JSONResponse({"error": f"a capture is at most {MAX_CAPTURE_BYTES} bytes"}, status_code=413)
        if int(request.headers.get("content-length") or 0) > MAX_CAPTURE_BYTES:
            return too_large
        body = await request.body()
        if len(body) > MAX_CAPTURE_BYTES:
            return too_large
        record, batch = await self.score_batch(body)
        return JSONResponse(record, headers={BATCH_HEADER: str(batch)})


class _Headers:
    """A Starlette request's headers as :func:`host_is_loopback` reads them (``get_all``)."""

    def __init__(self, request: Request) -> None:
        self._headers = request.headers

    def get_all(self, name: str) -> list[str]:
        return self._headers.getlist(name)


def serve_until_stopped(spec: ModelSpec, *, address: str | None, host: str, port: int, replicas: int,
                        max_batch_size: int, batch_wait_s: float, json_line: bool) -> int:  # fmt: skip
    """Deploy, say where (stderr, or one JSON line on stdout), serve until SIGTERM or SIGINT, then undeploy."""
    with ray_session(address) as ray:
        device, gpus = placement(ray, spec.device)
        serve.start(http_options={"host": host, "port": port})
        try:
            app = ScoringServer.options(
                num_replicas=replicas,
                ray_actor_options={"num_cpus": 1, "num_gpus": gpus or 0},
                max_ongoing_requests=2 * max_batch_size,  # one batch scoring, the next one filling
            ).bind(dataclasses.replace(spec, device=device), max_batch_size, batch_wait_s, is_loopback_address(host))
            serve.run(app, name=APP_NAME, route_prefix=SCORE_PATH)
            url = f"http://{host if ':' not in host else f'[{host}]'}:{port}{SCORE_PATH}"
            if json_line:
                print(json.dumps({"url": url, "replicas": replicas, "device": device, "version": __version__}),
                      flush=True)  # fmt: skip
            print(f"scoring server: {url} ({replicas} replica(s) on {device}); Ctrl-C stops it", file=sys.stderr,
                  flush=True)  # fmt: skip
            _wait_for_stop()
        finally:
            serve.shutdown()
    return 0


def _wait_for_stop() -> None:
    stop = threading.Event()
    previous = {signum: signal.signal(signum, lambda *_: stop.set()) for signum in (signal.SIGTERM, signal.SIGINT)}
    try:
        while not stop.wait(0.5):
            pass
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)

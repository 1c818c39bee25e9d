"""The rating page's HTTP server (stdlib, like the operator page): one page, a JSON API, images.

Security, because the page shows patient photographs and takes logins:

* It listens on 127.0.0.1 by default and then answers only requests whose Host
  header is a loopback name, by the operator page's rule
  (:func:`pyfundus.daemon.web.host_is_loopback`), so a web page elsewhere cannot
  read it through DNS rebinding.
* A login is a random token in a cookie (HttpOnly, SameSite=Strict); the
  database keeps only the token's hash. Passwords are scrypt hashes.
* Every state-changing request is a POST with a JSON body whose Origin header
  names this server, so another site cannot make a logged-in browser change
  anything (a form cannot send JSON; a cross-site fetch carries its own Origin).
* Blinding is enforced here, not in the page: nothing a rater can ask for shows
  another rater's opinion or a model's score of an image before they have
  committed their own, except the admin's disagreement queue, which records
  what it revealed (an opinion given after that is marked not blind).
* The audit trail has no endpoint at all; the database refuses to edit it.
"""

from __future__ import annotations

import collections
import functools
import io
import json
import logging
import statistics
import threading
from http import HTTPStatus
from http.cookies import CookieError, SimpleCookie
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from ..daemon.web import PageServer, host_is_loopback, is_loopback_address
from ..verdicts import CLASSES
from .aggregate import DEFAULT_SD_THRESHOLD, disagreements, parse_score
from .export import collect
from .order import rater_order
from .store import MarkError, Rater, Store

log = logging.getLogger(__name__)

DEFAULT_PORT = 8471  # the operator page's is 8470
PAGE = Path(__file__).with_name("page.html")
COOKIE = "pyfundus_mark"
VIEW_SIDE = 2048  # px, the longer side of the picture the viewer zooms into
THUMB_SIDE = 240
VIEWS_CACHED = 24
MAX_BODY = 64 * 1024


class MarkServer:
    """Serves one dataset's rating page until :meth:`close`."""

    def __init__(self, store: Store, *, host: str = "127.0.0.1", port: int = DEFAULT_PORT, order: str = "random",
                 sd_threshold: float = DEFAULT_SD_THRESHOLD) -> None:  # fmt: skip
        self.store = store
        self.host, self.port = host, port
        self.order = order
        self.sd_threshold = sd_threshold
        self.loopback_only = is_loopback_address(host)
        self.page = PAGE.read_bytes()
        self._views: collections.OrderedDict[tuple[int, str], dict[str, Any]] = collections.OrderedDict()
        self._views_lock = threading.Lock()
        self._server: PageServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    def start(self) -> None:
        """Bind and serve on a background thread."""
        try:
            self._server = PageServer((self.host, self.port), _Handler, self, "rating page")
        except OSError as exc:
            raise MarkError(f"cannot listen on {self.host}:{self.port} ({exc.strerror or exc}); "
                            "choose another --port (0 picks a free one)") from exc  # fmt: skip
        self.port = self._server.server_address[1]
        # A short poll interval: close() (Ctrl-C, a test's teardown) returns within 0.1 s instead of 0.5 s.
        serve = functools.partial(self._server.serve_forever, poll_interval=0.1)
        self._thread = threading.Thread(target=serve, name="pyfundus-mark", daemon=True)
        self._thread.start()

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    # ---- what the endpoints return ------------------------------------------------------

    def me(self, rater: Rater) -> dict[str, Any]:
        return {**rater.to_dict(), "dataset": self.store.dataset.name, "order": self.order,
                "sd_threshold": self.sd_threshold, "classes": list(CLASSES)}  # fmt: skip

    def queue(self, rater: Rater) -> dict[str, Any]:
        """The rater's images in their order, with their own opinions and nobody else's."""
        mine = self.store.opinions_of(rater)
        images = rater_order(self.store.rating_set(), rater.name, self.order)
        return {"order": self.order,
                "images": [{"id": image.id, "name": image.path, "mine": mine.get(image.id)} for image in images]}  # fmt: skip

    def image(self, rater: Rater, image_id: int) -> dict[str, Any]:
        image = self.store.image(image_id)
        view = self.view(image_id, "full")
        return {"id": image.id, "name": image.path, "width": view["width"], "height": view["height"],
                "fov": view["fov"], "error": view["error"], "mine": self.store.opinion(rater, image_id)}  # fmt: skip

    def after_commit(self, rater: Rater, image_id: int) -> dict[str, Any]:
        """Everyone else's opinions, the model's score and the operator's hints: only after the rater's own."""
        mine = self.store.opinion(rater, image_id)
        if mine is None:
            raise PermissionError("commit your own opinion of this image first")
        others = self.store.others_opinions(rater, image_id)
        image = self.store.image(image_id)
        return {
            "mine": mine,
            "others": others,
            "others_mean": round(statistics.fmean(o["score"] for o in others), 1) if others else None,
            "model": image.model_view(),
            "hints": self.store.hints(image_id),
        }

    def disagreements(self, rater: Rater, sd_threshold: float) -> dict[str, Any]:
        """The admin's queue with every opinion; it reveals them, so the admin's later opinions are not blind."""
        collected = collect(self.store)
        disputed = disagreements(collected.results, sd_threshold)
        self.store.reveal(rater, [collected.images[r.file_name].id for r in disputed])
        meta = collected.opinion_meta
        rows = []
        for result in disputed:
            image = collected.images[result.file_name]
            rows.append({
                "id": image.id, "name": image.path, "mos": round(result.mos, 2), "level": result.level,
                "sd": None if result.sd is None else round(result.sd, 2), "n": result.n_raters,
                "opinions": [{"rater": o.rater, "rater_level": o.rater_level, "score": o.score, "level": o.level,
                              "blind": meta[(o.file_name, o.rater)]["blind"]} for o in result.opinions],
                "adjusted": collected.adjustments.get(result.file_name),
                "model": image.model_view(),
            })  # fmt: skip
        return {"sd_threshold": sd_threshold, "images": rows}

    def summary(self) -> dict[str, Any]:
        """The aggregate for the admin's page: counts, both histograms, each rater's progress."""
        collected = collect(self.store)
        results = collected.results
        finals = [collected.final(r) for r in results]
        sds = [r.sd for r in results if r.sd is not None]
        return {
            "images": len(self.store.rating_set()),
            "rated": len(results),
            "opinions": sum(r.n_raters for r in results),
            "classes": {level: sum(level == final_level for _, final_level in finals) for level in CLASSES},
            "adjusted": len(collected.adjustments),
            "median_sd": round(statistics.median(sds), 2) if sds else None,
            "disagreements": sum(r.disputed(self.sd_threshold) for r in results),
            "mos_histogram": _histogram([score for score, _ in finals], 10, 100),
            "sd_histogram": _histogram(sds, 2, max(20, int(max(sds, default=0) // 2 * 2 + 2))),
            "raters": self.store.progress(),
        }

    def view(self, image_id: int, size: str) -> dict[str, Any]:
        """A JPEG of the image ("full": up to VIEW_SIDE px, "thumb") with its size and field-of-view circle."""
        key = (image_id, size)
        with self._views_lock:
            if key in self._views:
                self._views.move_to_end(key)
                return self._views[key]
        view = _render(self.store.dataset / self.store.image(image_id).path, VIEW_SIDE if size == "full" else THUMB_SIDE)
        with self._views_lock:
            self._views[key] = view
            if len(self._views) > VIEWS_CACHED:
                self._views.popitem(last=False)
        return view


def _render(path: Path, side: int) -> dict[str, Any]:
    from PIL import Image

    from ..io import ImageReadError, read_image
    from ..preprocess import NoFundusError, find_field_of_view

    try:
        image = read_image(path, min_side=side * 3 // 4, min_size=8)
    except ImageReadError as exc:
        return {"jpeg": None, "width": None, "height": None, "fov": None, "error": exc.reason}
    picture = Image.fromarray(image.pixels)
    picture.thumbnail((side, side))
    try:
        fov = find_field_of_view(image.pixels)
        h, w = image.pixels.shape[:2]
        circle = {"cx": fov.cx / w, "cy": fov.cy / h, "r": fov.radius / w}  # fractions of the width and height
    except NoFundusError:
        circle = None  # the viewer fits the whole picture
    buffer = io.BytesIO()
    picture.save(buffer, format="JPEG", quality=90)
    return {"jpeg": buffer.getvalue(), "width": picture.width, "height": picture.height, "fov": circle, "error": None}


def _histogram(values: list[float], width: int, top: int) -> list[dict[str, Any]]:
    bins = [{"from": start, "to": start + width, "count": 0} for start in range(0, top, width)]
    for value in values:
        bins[min(int(value // width), len(bins) - 1)]["count"] += 1
    return bins


class _Handler(BaseHTTPRequestHandler):
    server: PageServer
    server_version = "pyfundus-mark"
    sys_version = ""  # HTTP/1.0, one request per connection, as the operator page: close() leaves no kept-alive client

    def finish(self) -> None:
        super().finish()
        self.server.app.store.release_thread()  # this thread ends with its request

    # ---- routing --------------------------------------------------------------------

    def do_GET(self) -> None:
        if not self._host_allowed():
            return
        app = self.server.app
        url = urlsplit(self.path)
        route, query = url.path, parse_qs(url.query)
        if route == "/":
            self._send(HTTPStatus.OK, app.page, "text/html; charset=utf-8", page=True)
            return
        rater = self._rater()
        if rater is None:
            self._json(HTTPStatus.UNAUTHORIZED, {"error": "log in first"})
            return
        try:
            parts = route.strip("/").split("/")
            if route == "/api/me":
                self._json(HTTPStatus.OK, app.me(rater))
            elif route == "/api/queue":
                self._json(HTTPStatus.OK, app.queue(rater))
            elif route == "/api/references":
                self._json(HTTPStatus.OK, {"references": app.store.anchors()})
            elif parts[:2] == ["api", "image"] and len(parts) == 3:
                self._json(HTTPStatus.OK, app.image(rater, _image_id(parts[2])))
            elif parts[:2] == ["api", "image"] and len(parts) == 4 and parts[3] == "after":
                self._json(HTTPStatus.OK, app.after_commit(rater, _image_id(parts[2])))
            elif parts[0] == "img" and len(parts) in (2, 3):
                size = parts[2] if len(parts) == 3 else "full"
                if size not in ("full", "thumb"):
                    raise LookupError("no such size")
                view = app.view(_image_id(parts[1]), size)
                if view["jpeg"] is None:
                    self._json(HTTPStatus.UNPROCESSABLE_ENTITY, {"error": view["error"]})
                else:
                    self._send(HTTPStatus.OK, view["jpeg"], "image/jpeg")
            elif route == "/api/admin/disagreements":
                self._admin(rater)
                sd = float(query.get("sd", [app.sd_threshold])[-1])
                self._json(HTTPStatus.OK, app.disagreements(rater, sd))
            elif route == "/api/admin/summary":
                self._admin(rater)
                self._json(HTTPStatus.OK, app.summary())
            else:
                raise LookupError("not found")
        except PermissionError as exc:
            self._json(HTTPStatus.FORBIDDEN, {"error": str(exc)})
        except (LookupError, MarkError) as exc:
            self._json(HTTPStatus.NOT_FOUND, {"error": str(exc).strip("'")})
        except ValueError as exc:
            self._json(HTTPStatus.BAD_REQUEST, {"error": str(exc)})

    def do_POST(self) -> None:
        if not self._host_allowed():
            return
        if not self._same_origin():
            self._json(HTTPStatus.FORBIDDEN, {"error": "cross-site request refused (Origin must be this page)"})
            return
        try:
            body = self._body()
        except ValueError as exc:
            self._json(HTTPStatus.BAD_REQUEST, {"error": str(exc)})
            return
        app = self.server.app
        route = urlsplit(self.path).path
        if route == "/api/login":
            self._login(body)
            return
        rater = self._rater()
        if rater is None:
            self._json(HTTPStatus.UNAUTHORIZED, {"error": "log in first"})
            return
        try:
            if route == "/api/logout":
                app.store.close_session(self._token() or "")
                self._json(HTTPStatus.OK, {"ok": True}, cookie=f"{COOKIE}=; Max-Age=0; HttpOnly; SameSite=Strict; Path=/")
            elif route == "/api/opinion":
                image_id = _image_id(body.get("image"))
                score = parse_score(body.get("score"), "your opinion")
                changed = app.store.set_opinion(rater, image_id, score, str(body.get("level")))
                self._json(HTTPStatus.OK, {"saved": True, "changed": changed,
                                           "mine": app.store.opinion(rater, image_id)})  # fmt: skip
            elif route == "/api/admin/adjust":
                self._admin(rater)
                app.store.adjust(rater, _image_id(body.get("image")), _adjusted_score(body.get("score")), str(body.get("level")),
                                 str(body.get("reason") or ""))  # fmt: skip
                self._json(HTTPStatus.OK, {"saved": True})
            elif route == "/api/admin/reference":
                self._admin(rater)
                image_id = _image_id(body.get("image"))
                if body.get("remove"):
                    app.store.remove_anchor(rater, image_id)
                else:
                    app.store.set_anchor(rater, image_id, parse_score(body.get("score"), "the reference"),
                                         str(body.get("level")), str(body.get("comment") or ""))  # fmt: skip
                self._json(HTTPStatus.OK, {"references": app.store.anchors()})
            else:
                self._json(HTTPStatus.NOT_FOUND, {"error": "not found"})
        except PermissionError as exc:
            self._json(HTTPStatus.FORBIDDEN, {"error": str(exc)})
        except LookupError as exc:
            self._json(HTTPStatus.NOT_FOUND, {"error": str(exc).strip("'")})
        except (MarkError, ValueError) as exc:  # RatingsError is a ValueError
            self._json(HTTPStatus.BAD_REQUEST, {"error": str(exc)})

    # ---- pieces -----------------------------------------------------------------------

    def _login(self, body: dict[str, Any]) -> None:
        store = self.server.app.store
        rater = store.check_password(str(body.get("name") or ""), str(body.get("password") or ""))
        if rater is None:
            self._json(HTTPStatus.UNAUTHORIZED, {"error": "unknown name or wrong password"})
            return
        token = store.open_session(rater)
        self._json(HTTPStatus.OK, self.server.app.me(rater),
                   cookie=f"{COOKIE}={token}; HttpOnly; SameSite=Strict; Path=/")  # fmt: skip

    def _host_allowed(self) -> bool:
        if self.server.app.loopback_only and not host_is_loopback(self.headers):
            self._send(HTTPStatus.FORBIDDEN, b"this page answers only to localhost\n", "text/plain; charset=utf-8")
            return False
        return True

    def _same_origin(self) -> bool:
        origins, hosts = self.headers.get_all("Origin") or [], self.headers.get_all("Host") or []
        return len(origins) == 1 and len(hosts) == 1 and origins[0] == f"http://{hosts[0]}"

    def _body(self) -> dict[str, Any]:
        if self.headers.get_content_type() != "application/json":
            raise ValueError("send JSON (Content-Type: application/json)")
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            raise ValueError("Content-Length is required") from None
        if not 0 <= length <= MAX_BODY:
            raise ValueError(f"the body must be at most {MAX_BODY} bytes")
        try:
            body = json.loads(self.rfile.read(length) or b"{}")
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ValueError(f"the body is not JSON ({exc})") from None
        if not isinstance(body, dict):
            raise ValueError("the body must be a JSON object")
        return body

    def _token(self) -> str | None:
        try:
            cookie = SimpleCookie(self.headers.get("Cookie", ""))
        except CookieError:
            return None
        morsel = cookie.get(COOKIE)
        return morsel.value if morsel and morsel.value else None

    def _rater(self) -> Rater | None:
        token = self._token()
        return self.server.app.store.session_rater(token) if token else None

    @staticmethod
    def _admin(rater: Rater) -> None:
        if not rater.admin:
            raise PermissionError("only an admin can do this")

    def _json(self, code: HTTPStatus, body: Any, *, cookie: str | None = None) -> None:
        self._send(code, json.dumps(body).encode(), "application/json", cookie=cookie)

    def _send(self, code: HTTPStatus, body: bytes, content_type: str, *, page: bool = False,
              cookie: str | None = None) -> None:  # fmt: skip
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")  # patient photographs: never kept in a browser cache
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        if cookie:
            self.send_header("Set-Cookie", cookie)
        if page:
            self.send_header(
                "Content-Security-Policy",
                "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src 'self' data:; "
                "connect-src 'self'; form-action 'none'; frame-ancestors 'none'",
            )
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("mark: " + format, *args)


def _image_id(text: Any) -> int:
    try:
        return int(str(text))
    except ValueError:
        raise LookupError(f"no image {text!r}") from None



def _adjusted_score(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"the adjusted score {value!r} is not a number 0-100") from None

"""The rating page's HTTP side without a browser: logins, the Host check, cross-site requests, blinding, admin rights.

A real MarkServer on a free port over a real dataset; requests go through http.client as a browser's would,
with the headers set by hand where the test is about them.
"""

from __future__ import annotations

import email.message
import http.client
import io
import json
from http.cookies import SimpleCookie

import pytest
from mark_helpers import PASSWORDS, add_raters, make_dataset
from PIL import Image

from pyfundus.daemon.web import host_is_loopback
from pyfundus.mark.server import MarkServer
from pyfundus.mark.store import Store


class Client:
    """One browser: keeps the session cookie, sends the page's own Origin on POST unless told otherwise."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.cookie = ""

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def request(self, method, path, body=None, headers=None, *, hosts=None):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.putrequest(method, path, skip_host=hosts is not None)
            for host in hosts or ():
                conn.putheader("Host", host)
            sent = {"Cookie": self.cookie} if self.cookie else {}
            if body is not None:
                sent.update({"Content-Type": "application/json", "Origin": self.origin})
            sent.update(headers or {})
            data = json.dumps(body).encode() if isinstance(body, dict) else (body or b"")
            if method == "POST":
                sent["Content-Length"] = str(len(data))
            for key, value in sent.items():
                if value is not None:
                    conn.putheader(key, value)
            conn.endheaders(data if method == "POST" else None)
            response = conn.getresponse()
            return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
        finally:
            conn.close()

    def get_json(self, path):
        status, _, body = self.request("GET", path)
        return status, json.loads(body)

    def post(self, path, body, headers=None):
        status, headers, data = self.request("POST", path, body, headers)
        return status, json.loads(data) if data else None, headers

    def login(self, name):
        status, body, headers = self.post("/api/login", {"name": name, "password": PASSWORDS[name]})
        assert status == 200, body
        cookie = SimpleCookie(headers["set-cookie"])
        self.cookie = f"pyfundus_mark={cookie['pyfundus_mark'].value}"
        return headers["set-cookie"]


@pytest.fixture
def served(tmp_path):
    folder = make_dataset(tmp_path / "captures", ["a.png", "b.png", "c.png"])
    store = Store(folder)
    store.scan()
    add_raters(store)
    server = MarkServer(store, port=0)
    server.start()
    try:
        yield server
    finally:
        server.close()
        store.close()


def image_id(server, name):
    return next(i.id for i in server.store.images() if i.path == name)


def test_a_login_is_an_httponly_samesite_cookie_and_everything_else_needs_one(served):
    anon = Client(served.port)
    assert anon.get_json("/api/queue")[0] == 401
    assert anon.request("GET", f"/img/{image_id(served, 'a.png')}")[0] == 401, "photographs too"
    status, body, _ = anon.post("/api/login", {"name": "ana", "password": "wrong password"})
    assert status == 401 and body["error"] == "unknown name or wrong password"
    cookie = anon.login("ana")
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/" in cookie
    status, me = anon.get_json("/api/me")
    assert status == 200 and (me["name"], me["level"], me["admin"]) == ("ana", "senior", False)
    assert anon.post("/api/logout", {})[0] == 200
    assert anon.get_json("/api/me")[0] == 401, "the token is dead on the server, not only forgotten by the browser"


@pytest.mark.parametrize("host", ["localhost:{port}", "127.0.0.1:{port}", "[::1]:{port}", "LocalHost:{port}",
                                  "localhost"])  # fmt: skip
def test_loopback_host_names_are_answered(served, host):
    assert Client(served.port).request("GET", "/", hosts=[host.format(port=served.port)])[0] == 200


@pytest.mark.parametrize(
    "hosts",
    [
        ["evil.example:{port}"],  # DNS rebinding: a page on another site reaches 127.0.0.1 under its own name
        ["localhost.evil.example:{port}"],
        ["localhost:{port}@evil.example"],
        ["localhost:abc"],
        ["localhost:{port}:80"],
        ["::1:{port}"],  # an IPv6 address must be in brackets
        ["[::1"],
        [""],
        [],  # no Host at all
        ["localhost:{port}", "localhost:{port}"],  # two Host headers, even both loopback
        ["localhost:{port}", "evil.example"],
    ],
)
def test_anything_but_exactly_one_well_formed_loopback_host_is_refused(served, hosts):
    client = Client(served.port)
    client.login("ana")
    filled = [h.format(port=served.port) for h in hosts]
    status, _, body = client.request("GET", "/api/queue", hosts=filled)
    assert status == 403 and body == b"this page answers only to localhost\n"
    status, _, _ = client.request("POST", "/api/opinion", {"image": 1, "score": 50, "level": "Good"}, hosts=filled)
    assert status == 403
    assert served.store.all_opinions() == []


def test_the_shared_host_check_reads_every_host_header():
    headers = email.message.Message()
    assert not host_is_loopback(headers)
    headers["Host"] = "127.0.0.1:8471"
    assert host_is_loopback(headers)
    headers["Host"] = "127.0.0.1:8471"
    assert not host_is_loopback(headers), "a duplicate Host header is refused"


def test_state_changing_requests_must_come_from_the_page_itself(served):
    client = Client(served.port)
    client.login("ben")
    body = {"image": image_id(served, "a.png"), "score": 50, "level": "Usable"}
    assert client.post("/api/opinion", body, {"Origin": None})[0] == 403, "no Origin"
    assert client.post("/api/opinion", body, {"Origin": "http://evil.example"})[0] == 403
    assert client.post("/api/opinion", body, {"Origin": f"http://localhost:{served.port}"})[0] == 403, "other origin"
    status, reply, _ = client.post("/api/opinion", body, {"Content-Type": "text/plain"})
    assert status == 400 and "send JSON" in reply["error"], "a plain form cannot post"
    assert Client(served.port).post("/api/login", {"name": "ben", "password": PASSWORDS["ben"]},
                                    {"Origin": "http://evil.example"})[0] == 403, "nor log in"  # fmt: skip
    assert served.store.all_opinions() == []
    status, reply, _ = client.post("/api/opinion", body)
    assert status == 200 and reply["mine"]["score"] == 50


def test_nobody_sees_another_opinion_or_the_model_before_committing_their_own(served):
    a = image_id(served, "a.png")
    served.store.set_model_scores("fthnet_s", [(a, 37.25, "Reject", {"Good": 0.0, "Usable": 0.3, "Reject": 0.7})])
    ana, ben = Client(served.port), Client(served.port)
    ana.login("ana")
    ben.login("ben")
    assert ana.post("/api/opinion", {"image": a, "score": 82, "level": "Good"})[0] == 200

    status, body = ben.get_json(f"/api/image/{a}/after")
    assert status == 403 and body["error"] == "commit your own opinion of this image first"
    for path in ("/api/queue", f"/api/image/{a}", "/api/references"):
        status, _, raw = ben.request("GET", path)
        assert status == 200 and b"82" not in raw and b"37.2" not in raw and b"ana" not in raw, path
    assert ben.get_json("/api/admin/disagreements")[0] == 403 and ben.get_json("/api/admin/summary")[0] == 403

    assert ben.post("/api/opinion", {"image": a, "score": 30, "level": "Reject"})[0] == 200
    status, after = ben.get_json(f"/api/image/{a}/after")
    assert status == 200
    assert after["others"] == [{"name": "ana", "rater_level": "senior", "score": 82, "level": "Good"}]
    assert after["others_mean"] == 82 and after["model"] == {"model": "fthnet_s", "score": 37.2, "level": "Reject"}
    assert ben.post("/api/opinion", {"image": a, "score": 45, "level": "Usable"})[0] == 200
    assert ben.get_json(f"/api/image/{a}")[1]["mine"]["blind"] == 0, "revised after seeing: not blind"


def test_the_admin_sees_the_disagreement_queue_adjusts_and_cannot_touch_the_audit_trail(served):
    a = image_id(served, "a.png")
    ana, ben, cleo = Client(served.port), Client(served.port), Client(served.port)
    for client, name in ((ana, "ana"), (ben, "ben"), (cleo, "cleo")):
        client.login(name)
    ana.post("/api/opinion", {"image": a, "score": 82, "level": "Good"})
    ben.post("/api/opinion", {"image": a, "score": 30, "level": "Reject"})
    status, queue = cleo.get_json("/api/admin/disagreements")
    assert status == 200 and [d["name"] for d in queue["images"]] == ["a.png"]
    (row,) = queue["images"]
    assert (row["mos"], row["level"], row["sd"], row["n"]) == (64.67, "Good", 36.77, 2)
    assert ana.post("/api/admin/adjust", {"image": a, "score": 60, "level": "Usable", "reason": "x"})[0] == 403
    status, reply, _ = cleo.post("/api/admin/adjust", {"image": a, "score": 60, "level": "Usable", "reason": ""})
    assert status == 400 and "say why" in reply["error"]
    assert cleo.post("/api/admin/adjust", {"image": a, "score": 60, "level": "Usable",
                                           "reason": "discussed: soft periphery"})[0] == 200  # fmt: skip
    assert cleo.get_json("/api/admin/disagreements")[1]["images"][0]["adjusted"]["by_rater"] == "cleo"
    summary = cleo.get_json("/api/admin/summary")[1]
    assert (summary["rated"], summary["adjusted"], summary["classes"]["Usable"]) == (1, 1, 1)
    for method in ("GET", "POST"):
        assert cleo.request(method, "/api/audit", {} if method == "POST" else None)[0] == 404
    actions = [row["action"] for row in served.store.audit_trail()]
    assert actions[:3] == ["adjust", "opinion.set", "opinion.set"]


def test_bad_requests_get_a_clear_error(served):
    client = Client(served.port)
    client.login("ana")
    a = image_id(served, "a.png")
    cases = [
        ({"image": a, "score": 101, "level": "Good"}, "your opinion: score 101 is outside 0-100"),
        ({"image": a, "score": "7x", "level": "Good"}, "your opinion: score '7x' is not a whole number 0-100"),
        ({"image": a, "score": 50, "level": "Fine"}, "level 'Fine' is not one of Good, Usable, Reject"),
        ({"image": 999, "score": 50, "level": "Good"}, "no image 999"),
    ]
    for body, message in cases:
        status, reply, _ = client.post("/api/opinion", body)
        assert status in (400, 404) and reply["error"] == message
    status, _, raw = client.request("POST", "/api/opinion", b"{not json", {"Content-Type": "application/json"})
    assert status == 400 and b"not JSON" in raw
    assert client.get_json("/api/image/abc")[0] == 404 and client.get_json("/api/nothing")[0] == 404


def test_the_page_is_self_contained_and_pictures_are_never_cached(served):
    client = Client(served.port)
    status, headers, page = client.request("GET", "/")
    assert status == 200 and b"http://" not in page.replace(b"http://www.w3.org", b"") and b"https://" not in page
    assert "default-src 'none'" in headers["content-security-policy"]
    client.login("ana")
    a = image_id(served, "a.png")
    for path, side in ((f"/img/{a}", 96), (f"/img/{a}/thumb", 96)):
        status, headers, data = client.request("GET", path)
        assert status == 200 and headers["content-type"] == "image/jpeg" and headers["cache-control"] == "no-store"
        assert Image.open(io.BytesIO(data)).size == (side, side)
    info = client.get_json(f"/api/image/{a}")[1]
    assert info["fov"]["cx"] == pytest.approx(0.5, abs=0.03) and info["fov"]["r"] == pytest.approx(0.42, abs=0.04)
    assert client.request("GET", f"/img/{a}/huge")[0] == 404


def test_the_admin_edits_the_reference_images_and_they_leave_every_queue(served):
    b = image_id(served, "b.png")
    ana, cleo = Client(served.port), Client(served.port)
    ana.login("ana")
    cleo.login("cleo")
    reference = {"image": b, "score": 88, "level": "Good", "comment": "the site's sharpest capture"}
    assert ana.post("/api/admin/reference", reference)[0] == 403
    status, reply, _ = cleo.post("/api/admin/reference", reference)
    assert status == 200 and reply["references"] == [{"id": b, "name": "b.png", "score": 88, "level": "Good",
                                                      "comment": "the site's sharpest capture"}]  # fmt: skip
    assert ana.get_json("/api/references")[1]["references"] == reply["references"], "every rater sees them"
    assert "b.png" not in [i["name"] for i in ana.get_json("/api/queue")[1]["images"]]
    assert ana.request("GET", f"/img/{b}/thumb")[0] == 200
    status, reply, _ = cleo.post("/api/admin/reference", {**reference, "score": 150})
    assert status == 400 and reply["error"] == "the reference: score 150 is outside 0-100"
    assert cleo.post("/api/admin/reference", {"image": b, "remove": True})[1]["references"] == []
    assert "b.png" in [i["name"] for i in ana.get_json("/api/queue")[1]["images"]]
    assert [row["action"] for row in served.store.audit_trail()][:2] == ["reference.remove", "reference.set"]

"""Issue 17, finding 8: /ready's detail only to admins; redirects never built from the Host header; pages carrying a
CSRF token are not cached and vary on HX-Request; HEAD answered like GET; uvicorn's timeouts for slow clients."""

from __future__ import annotations

from fastapi.testclient import TestClient

from app.serving.server_options import uvicorn_options
from tests.web import test_hardening_sessions

lab = test_hardening_sessions.lab  # the fixture: a model, keys and web apps on each database


def test_ready_detail_only_to_admins(lab):
    c = TestClient(lab["app"]())
    public = c.get("/ready").json()
    assert public["status"] == "ready" and public["workers"] == 1 and "worker" not in str(public).replace(
        '"workers"', "").replace("'workers'", "")
    admin = c.get("/ready", headers={"X-API-Key": lab["admin"]}).json()
    assert admin["workers"] == ["in-process worker"]
    assert c.get("/ready", headers={"X-API-Key": lab["alice"]}).json()["workers"] == 1


def test_redirects_ignore_the_host_header(lab):
    c = TestClient(lab["app"]())
    r = c.get("/api/v1/info/", headers={"Host": "evil.example"}, follow_redirects=False)
    assert r.status_code in (307, 308) and "evil.example" not in r.headers["location"]
    assert r.headers["location"] == "/api/v1/info"
    based = TestClient(lab["app"](base_url="https://saex.lab.example"))
    r = based.get("/api/v1/info/", headers={"Host": "evil.example"}, follow_redirects=False)
    assert r.headers["location"] == "https://saex.lab.example/api/v1/info"


def test_pages_with_a_csrf_token_are_not_cached(lab):
    r = TestClient(lab["app"]()).get("/sign-in")
    assert 'name="csrf_token"' in r.text
    assert r.headers["cache-control"] == "no-store" and "HX-Request" in r.headers["vary"]


def test_head_is_answered_like_get(lab):
    c = TestClient(lab["app"]())
    for path in ("/", "/health", "/api/v1/info", "/sign-in"):
        get, head = c.get(path), c.head(path)
        assert head.status_code == get.status_code == 200, path
        assert head.content == b"" and head.headers["content-type"] == get.headers["content-type"]


def test_uvicorn_closes_slow_clients():
    options = uvicorn_options(trusted_proxies=[])
    assert options["timeout_keep_alive"] <= 10 and options["h11_max_incomplete_event_size"] <= 1 << 20

"""Who may do what: reading open by default or behind sign-in, writes with an API key header or a signed-in browser
session whose CSRF token every form post and cookie-authenticated write must carry; revoked keys end sessions;
saving results behind sign-in where configured; the session cookie's signature."""

from __future__ import annotations

import copy
import stat
import time

import pytest
from fastapi.testclient import TestClient

from app.config import Settings
from app.jobs.dashboards import register
from app.store import keys
from app.store.db import make_engine, make_sessionmaker, transaction, upgrade
from app.web.app import create_web_app
from app.web.auth import COOKIE, BrowserSession, CookieSigner, session_secret
from app.worker.service import create_worker_app
from tests.web.forms import csrf_token, sign_in

STEER = {"text": "The quick brown fox", "max_new_tokens": 2, "interventions": []}


@pytest.fixture(scope="module")
def lab(tmp_path_factory, tiny_engines):
    """A database with keys for alice and bob, and a factory of web apps over it with given settings."""
    url = f"sqlite:///{tmp_path_factory.mktemp('auth') / 'a.db'}"
    upgrade(url)
    db = make_engine(url)
    sessions = make_sessionmaker(db)
    engine = copy.copy(tiny_engines["standard"])
    engine.name = "demo"  # the model the store and the worker name alike
    with transaction(sessions) as s:
        register(s, engine, "demo")  # the SAEs exist; no dashboard is needed here
        alice, _ = keys.create_key(s, name="alice")
        bob, bob_record = keys.create_key(s, name="bob")
    worker = create_worker_app(engine)

    def app(**settings):
        return create_web_app(Settings(database_url=url, **settings), worker)

    def revoke_bob():
        with transaction(sessions) as s:
            keys.revoke(s, key_id=bob_record.id)

    yield {"app": app, "alice": alice, "bob": bob, "revoke_bob": revoke_bob}
    db.dispose()


def test_sign_in_sets_a_signed_session_and_rejects_wrong_keys(lab):
    c = TestClient(lab["app"]())
    page = c.get("/")
    assert 'href="/sign-in?next=/"' in page.text and "httponly" in page.headers["set-cookie"].lower()
    assert "samesite=lax" in page.headers["set-cookie"].lower()
    token = csrf_token(c)
    wrong = c.post("/sign-in", data={"api_key": "saex_wrong", "csrf_token": token})
    assert wrong.status_code == 403 and "unknown or revoked" in wrong.text
    forged = c.post("/sign-in", data={"api_key": lab["alice"], "csrf_token": "x" * 32}, follow_redirects=False)
    assert forged.status_code == 403  # login CSRF: a form from elsewhere cannot sign this browser in
    ok = c.post("/sign-in", data={"api_key": lab["alice"], "csrf_token": token, "next": "/demo/steer"},
                follow_redirects=False)
    assert ok.status_code == 303 and ok.headers["location"] == "/demo/steer"
    assert "Signed in as <strong>alice</strong>" in c.get("/").text
    assert csrf_token(c) != token  # signing in rotates the token
    c.post("/sign-out", data={"csrf_token": csrf_token(c)})
    assert "Signed in as" not in c.get("/").text


def test_no_open_redirect_after_sign_in(lab):
    c = TestClient(lab["app"]())
    for target in ("//evil.example/", "https://evil.example/", "/\\evil.example"):
        r = c.post("/sign-in", data={"api_key": lab["alice"], "csrf_token": csrf_token(c), "next": target},
                   follow_redirects=False)
        assert r.headers["location"] == "/", target


def test_cookie_writes_need_the_csrf_token_header_writes_with_keys_do_not(lab):
    c = TestClient(lab["app"]())
    token = sign_in(c, lab["alice"])
    url = "/api/v1/saes/L0/features/3/explanations"
    refused = c.post(url, json={"text": "cookie only"})
    assert refused.status_code == 403 and "CSRF" in refused.json()["detail"]
    made = c.post(url, json={"text": "cookie and token"}, headers={"X-CSRF-Token": token})
    assert made.status_code == 201 and made.json()["author"] == "alice"
    keyed = TestClient(lab["app"]()).post(url, json={"text": "by header"}, headers={"X-API-Key": lab["alice"]})
    assert keyed.status_code == 201
    anon = TestClient(lab["app"]()).post(url, json={"text": "nobody"})
    assert anon.status_code == 401 and "X-API-Key" in anon.json()["detail"]
    assert anon.headers["WWW-Authenticate"] == "Bearer"


def test_a_token_from_another_browser_is_refused(lab):
    mine, theirs = TestClient(lab["app"]()), TestClient(lab["app"]())
    sign_in(mine, lab["alice"])
    r = mine.post("/demo/L0/3/explanations", data={"text": "x", "csrf_token": csrf_token(theirs)})
    assert r.status_code == 403


def test_tampered_cookie_is_a_new_anonymous_session(lab):
    c = TestClient(lab["app"]())
    sign_in(c, lab["alice"])
    value = c.cookies[COOKIE]
    payload, mac = value.split(".")
    tampered = payload[:-2] + ("AA" if payload[-2:] != "AA" else "BB") + "." + mac
    assert "Signed in as" in TestClient(c.app).get("/", headers={"Cookie": f"{COOKIE}={value}"}).text
    page = TestClient(c.app).get("/", headers={"Cookie": f"{COOKIE}={tampered}"})
    assert "Signed in as" not in page.text and COOKIE in page.headers["set-cookie"]


def test_revoking_a_key_ends_its_browser_sessions(lab):
    c = TestClient(lab["app"]())
    token = sign_in(c, lab["bob"])
    url = "/api/v1/saes/L0/features/4/explanations"
    assert c.post(url, json={"text": "before"}, headers={"X-CSRF-Token": token}).status_code == 201
    lab["revoke_bob"]()
    after = c.post(url, json={"text": "after"}, headers={"X-CSRF-Token": token})
    assert after.status_code == 401
    assert "Signed in as" not in c.get("/").text  # the session was ended, not just refused once
    assert TestClient(lab["app"]()).post(url, json={"text": "x"}, headers={"X-API-Key": lab["bob"]}).status_code == 403


def test_reading_can_require_sign_in(lab):
    c = TestClient(lab["app"](read_requires_sign_in=True))
    page = c.get("/demo/L0/3", follow_redirects=False)
    assert page.status_code == 303 and page.headers["location"] == "/sign-in?next=/demo/L0/3"
    api = c.get("/api/v1/saes/L0/features/3")
    assert api.status_code == 401 and "sign-in" in api.json()["detail"]
    assert c.get("/health").status_code == 200 and c.get("/static/app.css").status_code == 200
    assert c.get("/sign-in").status_code == 200
    assert c.get("/api/v1/info", headers={"X-API-Key": "saex_wrong"}).status_code == 401
    assert c.get("/api/v1/info", headers={"X-API-Key": lab["alice"]}).status_code == 200
    sign_in(c, lab["alice"])
    assert c.get("/demo/L0/3").status_code == 200  # past the gate
    assert c.get("/api/v1/info").status_code == 200


def test_saving_results_can_require_sign_in(lab):
    app = lab["app"](saves_need_sign_in=True)
    c = TestClient(app)
    r = c.post("/api/v1/steer", json=STEER)
    assert r.status_code == 200 and r.json()["permalink"] is None and r.json()["steered"]["tokens"]
    r = c.post("/api/v1/steer", json=STEER, headers={"X-API-Key": lab["alice"]})
    assert r.json()["permalink"].startswith("/s/")
    save = c.post("/p", data={"text": "fox", "layer": 1, "csrf_token": csrf_token(c)}, follow_redirects=False)
    assert save.status_code == 303 and save.headers["location"].startswith("/sign-in?next=")
    steer_form = {"csrf_token": csrf_token(c), "text": "fox", "max_new_tokens": 2, "layer": ["1"], "feature": ["2"],
                  "mode": ["add"], "value": ["1"], "heads": [""], "positions": [""]}
    shown = c.post("/demo/steer", data=steer_form, follow_redirects=False)
    assert shown.status_code == 200 and "Not saved" in shown.text and "Steered" in shown.text
    steer_form["csrf_token"] = sign_in(c, lab["alice"])
    saved = c.post("/demo/steer", data=steer_form, follow_redirects=False)
    assert saved.status_code == 303 and saved.headers["location"].startswith("/s/")


def test_cookie_signer():
    signer = CookieSigner(b"k" * 32, max_age_s=60)
    s = BrowserSession(key_id=3, name="alice", expires=int(time.time()) + 60)
    assert signer.loads(signer.dumps(s)) == s
    assert CookieSigner(b"j" * 32, 60).loads(signer.dumps(s)) is None  # another secret
    assert signer.loads(signer.dumps(BrowserSession(expires=int(time.time()) - 1))) is None  # expired
    for junk in ("", "a.b.c", "abc", "é.é", "x" * 5000):
        assert signer.loads(junk) is None
    with pytest.raises(ValueError, match="SAEX_SECRET_KEY"):
        CookieSigner(b"short", 60)


def test_session_secret_is_made_once_and_private(tmp_path):
    first = session_secret(None, tmp_path / "data")
    assert session_secret(None, tmp_path / "data") == first and len(first) >= 32
    assert stat.S_IMODE((tmp_path / "data" / "session_secret").stat().st_mode) == 0o600
    configured = "configured-secret-value-" + "x" * 16  # 32 bytes at least (issue 17: shorter ones are refused)
    assert session_secret(configured, tmp_path / "data") == configured.encode()

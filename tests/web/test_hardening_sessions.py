"""Issue 17, findings 2 and 3: a guessable session secret refuses to start (the app factory and `saex serve`), and
browser sessions live on the server: signing out ends them, and they expire there whatever the cookie says. Runs on
SQLite and Postgres. The `lab` fixture here is shared by the other hardening tests."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update

from app.config import Settings
from app.jobs.dashboards import register
from app.store import keys
from app.store.db import make_sessionmaker, transaction
from app.store.models import BrowserSession, utcnow
from app.web.app import create_web_app
from app.web.auth import COOKIE, CookieSigner
from app.worker.service import create_worker_app
from tests.web.forms import csrf_token, sign_in

PLACEHOLDER = "change-me-to-a-long-random-string"


@pytest.fixture(scope="module")
def lab(db_url, db_engine, tiny_engines):
    """A model registered under a slug of this database's own, keys for alice, bob and an admin, and a factory of
    web apps (with given settings) over an in-process worker."""
    slug = "hard-" + ("pg" if db_url.startswith("postgres") else "lite")
    sessions = make_sessionmaker(db_engine)
    engine = copy.copy(tiny_engines["standard"])
    engine.name = slug
    with transaction(sessions) as s:
        register(s, engine, slug)
        alice, alice_record = keys.create_key(s, name="alice")
        bob, _ = keys.create_key(s, name="bob")
        admin, _ = keys.create_key(s, name="root", admin=True)
    worker = create_worker_app(engine)

    def app(**settings):
        return create_web_app(Settings(database_url=db_url, model_slug=slug, **settings), worker)

    return {"app": app, "worker": worker, "slug": slug, "alice": alice, "alice_id": alice_record.id, "bob": bob,
            "admin": admin, "sessions": sessions, "url": db_url}


@pytest.mark.parametrize("secret", [PLACEHOLDER, "short-secret", "x" * 31])
def test_a_guessable_secret_refuses_to_start(secret, tmp_path):
    with pytest.raises(ValueError, match=r"token_urlsafe\(48\)"):
        create_web_app(Settings(database_url=f"sqlite:///{tmp_path / 'x.db'}", secret_key=secret), None)
    with pytest.raises(ValueError):
        CookieSigner(b"x" * 31, 60)


def test_saex_serve_refuses_the_example_secret(tmp_path):
    env = {**os.environ, "SAEX_SECRET_KEY": PLACEHOLDER, "SAEX_DATA_DIR": str(tmp_path),
           "DATABASE_URL": f"sqlite:///{tmp_path / 's.db'}"}
    done = subprocess.run([sys.executable, "-m", "app.cli", "serve", "--port", "9", "--dashboard-tokens", "0"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 2 and "placeholder" in done.stderr and "token_urlsafe(48)" in done.stderr
    assert "Traceback" not in done.stderr


def test_the_default_secret_kept_in_the_data_dir_stays_fine(tmp_path, lab):
    app = create_web_app(Settings(database_url=lab["url"], model_slug=lab["slug"], secret_key="", data_dir=tmp_path),
                         lab["worker"])
    assert app is not None and len((tmp_path / "session_secret").read_text()) >= 32


def _write(c: TestClient, lab: dict, token: str, text: str):
    return c.post(f"/api/v1/models/{lab['slug']}/saes/L0/features/5/explanations", json={"text": text},
                  headers={"X-CSRF-Token": token})


def test_signing_out_ends_the_session_on_the_server(lab):
    app = lab["app"]()
    c = TestClient(app)
    token = sign_in(c, lab["alice"])
    cookie = c.cookies[COOKIE]
    assert _write(c, lab, token, "before sign-out").status_code == 201
    assert c.post("/sign-out", data={"csrf_token": token}, follow_redirects=False).status_code == 303
    replay = TestClient(app)  # the old cookie and token, replayed after sign-out
    replay.cookies.set(COOKIE, cookie)
    r = _write(replay, lab, token, "after sign-out")
    assert r.status_code == 401, r.text
    assert "Signed in as" not in replay.get("/sign-in").text


def test_expiry_is_enforced_on_the_server_not_read_from_the_cookie(lab):
    app = lab["app"]()
    c = TestClient(app)
    token = sign_in(c, lab["alice"])
    assert _write(c, lab, token, "while live").status_code == 201
    with transaction(lab["sessions"]) as s:  # the server's clock says it is over; the cookie still says 14 days
        s.execute(update(BrowserSession).where(BrowserSession.key_id == lab["alice_id"],
                                               BrowserSession.ended_at.is_(None))
                  .values(expires_at=utcnow() - timedelta(seconds=1)))
    assert _write(c, lab, token, "after expiry").status_code == 401


def test_a_cookie_without_a_server_session_signs_nobody_in(lab):
    """What a forged cookie would be, were the secret known: a valid signature, no session on the server."""
    app = lab["app"]()
    c = TestClient(app)
    token = csrf_token(c)
    signer = CookieSigner(os.environ["SAEX_SECRET_KEY"].encode(), 3600)
    from app.web.auth import BrowserSession as CookieSession

    forged = CookieSession(csrf=token, key_id=lab["alice_id"], name="alice", expires=2_000_000_000, sid="made-up")
    c.cookies.set(COOKIE, signer.dumps(forged))
    assert _write(c, lab, token, "forged").status_code == 401

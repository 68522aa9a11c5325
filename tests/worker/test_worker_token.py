"""Issue 17, finding 8: a worker configured with a shared secret (SAEX_WORKER_TOKEN) refuses every request without it
(401) but /health, and the web app configured with the same secret sends it (in process and over HTTP clients)."""

from __future__ import annotations

import copy

import pytest
from fastapi.testclient import TestClient

from app.config import Settings
from app.store.db import upgrade
from app.web.app import create_web_app
from app.web.worker_client import TOKEN_HEADER, http_client, in_process_client
from app.worker.service import create_worker_app

TOKEN = "worker-secret-0123456789abcdef-0123456789"


@pytest.fixture(scope="module")
def engine(tiny_engines):
    engine = copy.copy(tiny_engines["standard"])
    engine.name = "tok"
    return engine


def test_a_worker_with_a_token_refuses_requests_without_it(engine):
    with TestClient(create_worker_app(engine, token=TOKEN)) as c:
        assert c.get("/health").status_code == 200  # restarts and load balancers need no secret
        for method, path in (("GET", "/v1/info"), ("POST", "/v1/tokenize"), ("POST", "/v1/steer"),
                             ("POST", "/llm/v1/chat/completions"), ("GET", "/openapi.json")):
            r = c.request(method, path, json={"text": "fox"})
            assert r.status_code == 401 and "X-Worker-Token" in r.json()["detail"], (path, r.text)
        wrong = c.post("/v1/tokenize", json={"text": "fox"}, headers={TOKEN_HEADER: TOKEN + "x"})
        assert wrong.status_code == 401
        ok = c.post("/v1/tokenize", json={"text": "fox"}, headers={TOKEN_HEADER: TOKEN})
        assert ok.status_code == 200 and ok.json()["tokens"]
        bearer = c.get("/v1/info", headers={"Authorization": f"Bearer {TOKEN}"})
        assert bearer.status_code == 200


def test_a_worker_without_a_token_takes_any_request(engine):
    with TestClient(create_worker_app(engine)) as c:
        assert c.get("/v1/info").status_code == 200


def test_the_worker_clients_send_the_token():
    assert http_client("http://w:1", token=TOKEN).headers[TOKEN_HEADER] == TOKEN
    assert in_process_client(object(), token=TOKEN).headers[TOKEN_HEADER] == TOKEN
    assert TOKEN_HEADER not in http_client("http://w:1").headers


def test_the_web_app_with_the_token_works_end_to_end(engine, tmp_path):
    worker = create_worker_app(engine, token=TOKEN)
    upgrade(url := f"sqlite:///{tmp_path / 'w.db'}")
    settings = Settings(database_url=url, model_slug="tok", worker_token=TOKEN)
    with TestClient(create_web_app(settings, worker)) as c:
        r = c.post("/api/v1/analyze", json={"text": "The quick brown fox", "model": "tok"})
        assert r.status_code == 200, r.text
        steer = c.post("/api/v1/steer", json={"text": "fox", "model": "tok", "max_new_tokens": 2})
        assert steer.status_code == 200 and steer.json()["permalink"].startswith("/s/"), steer.text
    # the same worker behind a web app that lacks the token: the worker refuses it, the web app says so
    bare = Settings(database_url=url, model_slug="tok")
    with TestClient(create_web_app(bare, worker)) as c:
        assert c.post("/api/v1/analyze", json={"text": "fox", "model": "tok"}).status_code >= 400

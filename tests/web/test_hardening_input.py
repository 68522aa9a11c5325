"""Issue 17, findings 5 and 6: bodies bounded however they arrive (a chunked body stops being read at the limit: 413),
slow bodies cut off (408); NUL and other control characters refused (422) before the database in explanation text,
search queries, prompts and forms, on SQLite and Postgres; logs never carry what a client sent, whatever fails."""

from __future__ import annotations

import asyncio
import json
import logging

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy.exc import DataError

from app.serving.api_errors import install_error_handlers
from app.serving.body_limit import MAX_BODY_BYTES, BoundedBody
from app.serving.request_log import JSONLines, error_summary
from app.serving.text_checks import control_characters, encoded_control_characters
from tests.web import test_hardening_sessions
from tests.web.forms import csrf_token, sign_in

lab = test_hardening_sessions.lab  # the fixture: a model, keys and web apps on each database


def _echo_app() -> FastAPI:
    app = FastAPI()
    install_error_handlers(app, refuse_control_characters=True)

    @app.post("/echo")
    async def echo(body: dict) -> dict:
        return {"keys": len(body)}

    return app


def test_a_chunked_body_stops_being_read_at_the_limit():
    reads = 0
    chunk = b"x" * 65536

    async def receive():
        nonlocal reads
        reads += 1
        return {"type": "http.request", "body": chunk, "more_body": reads < 1024}  # 64 MiB on offer

    sent = []

    async def send(message):
        sent.append(message)

    async def never(scope, receive, send):
        raise AssertionError("the app must not be called")

    scope = {"type": "http", "method": "POST", "path": "/x", "query_string": b"", "headers": []}
    asyncio.run(BoundedBody(never)(scope, receive, send))
    assert sent[0]["status"] == 413
    assert reads * len(chunk) <= MAX_BODY_BYTES + len(chunk)  # no more than one chunk past the limit was read


def test_a_chunked_body_over_http_is_413():
    c = TestClient(_echo_app())

    def body():  # no Content-Length: sent chunked
        yield b'{"a": "'
        for _ in range(40):
            yield b"y" * 65536
        yield b'"}'

    r = c.post("/echo", content=body(), headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and "larger than" in r.json()["detail"]
    small = c.post("/echo", content=iter([b'{"a": 1', b', "b": 2}']), headers={"Content-Type": "application/json"})
    assert small.status_code == 200 and small.json() == {"keys": 2}


def test_a_slow_body_is_cut_off():
    async def receive():
        await asyncio.sleep(10)
        return {"type": "http.request", "body": b"{}", "more_body": False}

    sent = []

    async def send(message):
        sent.append(message)

    async def never(scope, receive, send):
        raise AssertionError("the app must not be called")

    scope = {"type": "http", "method": "POST", "path": "/x", "query_string": b"", "headers": []}
    asyncio.run(BoundedBody(never, deadline_s=0.2)(scope, receive, send))
    assert sent[0]["status"] == 408


def test_control_character_checks():
    assert control_characters("a\x00b") and control_characters("\x1b[31m") and control_characters("\x7f")
    assert not control_characters("tab\tnew\nline\r ünïcode ✓")
    assert encoded_control_characters(b'{"text": "a\\u0000b"}') and encoded_control_characters(b"q=a%00b")
    assert encoded_control_characters(b'{"t": "\\u001B"}') and encoded_control_characters(b"q=%C2%85")
    assert not encoded_control_characters(b'{"text": "a\\\\u0000b"}')  # an escaped backslash, then "u0000": text
    assert not encoded_control_characters(b'{"text": "line\\nnext\\ttab \\u00e9"}')
    assert not encoded_control_characters(b"q=a%0Ab%09c%C3%A9")


def test_nul_is_refused_before_the_database(lab):
    c = TestClient(lab["app"]())
    base = f"/api/v1/models/{lab['slug']}"
    key = {"X-API-Key": lab["alice"]}
    for text in ("fires on \u0000", "bell \u0007", "escape \u001b[31m"):
        r = c.post(f"{base}/saes/L0/features/10/explanations", json={"text": text}, headers=key)
        assert r.status_code == 422, r.text
        assert "control character" in r.json()["detail"]
    made = c.post(f"{base}/saes/L0/features/10/explanations", json={"text": "ok"}, headers=key).json()
    r = c.patch(f"{base}/saes/L0/features/10/explanations/{made['id']}", json={"text": "x\u0000"}, headers=key)
    assert r.status_code == 422
    assert c.get(f"{base}/explanations/search", params={"q": "fires\x00"}).status_code == 422
    assert c.get("/search", params={"q": "a\x00"}).status_code == 422
    assert c.get("/", params={"text": "a\x00b"}).status_code == 422
    assert c.post("/api/v1/analyze", json={"text": "prompt \u0000", "model": lab["slug"]}).status_code == 422
    assert c.post("/api/v1/analyze", json={"text": "tab\tand\nnewline", "model": lab["slug"]}).status_code == 200
    token = sign_in(c, lab["alice"])
    form = c.post(f"/{lab['slug']}/L0/10/explanations", data={"text": "nul \x00 here", "csrf_token": token})
    assert form.status_code == 422
    assert c.get(f"{base}/explanations/search", params={"q": "fires"}).status_code == 200
    assert csrf_token(c)


def test_logs_never_carry_what_a_client_sent(lab, caplog):
    app = lab["app"]()

    @app.get("/boom")
    def boom(q: str = "") -> dict:
        raise DataError("SELECT ... WHERE text = %(t)s", {"t": q}, Exception(f"invalid byte in {q}"))

    app.router.routes.insert(0, app.router.routes.pop())  # before the pages' catch-all paths

    c = TestClient(app, raise_server_exceptions=False)
    with caplog.at_level(logging.INFO, logger="saex"):
        r = c.get("/boom", params={"q": "my-private-prompt"})
        c.post("/api/v1/analyze?secret=1", json={"text": "another private prompt", "model": lab["slug"]})
    assert r.status_code == 500 and "my-private-prompt" not in r.text
    lines = [JSONLines().format(rec) for rec in caplog.records if rec.name.startswith("saex")]
    assert any('"error"' in line for line in lines) and any('"status": 500' in line for line in lines)
    for line in lines:
        assert "private" not in line and "secret" not in line, line
        json.loads(line)


def test_error_summary_names_types_not_messages():
    try:
        raise DataError("INSERT INTO explanations (text) VALUES (%(text)s)", {"text": "users words"},
                        ValueError("A string literal cannot contain NUL (0x00) characters: users words"))
    except DataError as exc:
        out = error_summary(exc)
    assert "DataError" in out and "ValueError" in out and "users words" not in out and "test_hardening" in out


@pytest.mark.parametrize("path", ["/api/v1/info", "/sign-in"])
def test_ordinary_requests_still_pass(lab, path):
    assert TestClient(lab["app"]()).get(path).status_code == 200

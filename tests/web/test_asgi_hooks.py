"""The pure-ASGI middleware both services use: begin may answer alone, start edits headers as they are sent,
end hears every outcome (an app error as 500), and a streamed body passes through untouched."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.responses import PlainTextResponse, StreamingResponse
from fastapi.testclient import TestClient

from app.serving.asgi import Hooks


def make_app(seen: list) -> FastAPI:
    app = FastAPI()

    @app.get("/ok")
    def ok() -> PlainTextResponse:
        return PlainTextResponse("fine", headers={"X-Own": "route"})

    @app.get("/stream")
    def stream() -> StreamingResponse:
        return StreamingResponse((bytes([i]) * 100_000 for i in range(30)), media_type="application/octet-stream")

    @app.get("/boom")
    def boom() -> None:
        raise RuntimeError("a bug")

    def begin(request):
        if request.headers.get("x-refuse"):
            return PlainTextResponse("refused", status_code=418)
        request.state.tag = "t1"
        return None

    def start(request, headers):
        headers["X-Tag"] = request.state.tag
        headers.setdefault("X-Own", "middleware")

    app.add_middleware(Hooks, begin=begin, start=start, end=lambda request, status, s: seen.append((status, s)))
    return app


def test_hooks_edit_headers_stream_bodies_and_hear_every_outcome():
    seen: list = []
    with TestClient(make_app(seen), raise_server_exceptions=False) as c:
        r = c.get("/ok")
        assert r.text == "fine" and r.headers["X-Tag"] == "t1" and r.headers["X-Own"] == "route"
        big = c.get("/stream")
        assert big.content == b"".join(bytes([i]) * 100_000 for i in range(30))
        assert big.headers["X-Tag"] == "t1"
        assert c.get("/ok", headers={"X-Refuse": "1"}).status_code == 418
        assert c.get("/boom").status_code == 500
    assert [status for status, _ in seen] == [200, 200, 418, 500]
    assert all(seconds >= 0 for _, seconds in seen)

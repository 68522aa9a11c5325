"""The model-backed public API through the web app: an in-process worker (the embedded default's shape) and
HTTP workers spread round-robin with failover; an unreachable worker is a clear 503 with Retry-After."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
import zlib
from contextlib import contextmanager

import orjson
import pytest
import uvicorn
from fastapi.testclient import TestClient

from app import protocol as P
from app.config import Settings
from app.engine.engine import Engine
from app.engine.loading import attach_saes, load_model
from app.web.app import create_web_app
from app.web.worker_client import WorkerClient, WorkerError, WorkerPool
from app.worker.service import create_worker_app
from tests.conftest import TEXT

PROMPT = "The quick brown fox"
LONG = {"text": TEXT[:150], "top_k": 10}  # an answer of some KB: compressed when the client takes gzip


@pytest.fixture(scope="module")
def worker_app(tiny_model_dir, sae_dirs):
    model = load_model(str(tiny_model_dir))
    return create_worker_app(Engine(model, attach_saes(model, [str(p) for p in sae_dirs["topk"]]), "tiny"))


@pytest.fixture(scope="module")
def web(worker_app, tmp_path_factory):
    url = f"sqlite:///{tmp_path_factory.mktemp('webdb') / 'w.db'}"
    from app.store.db import upgrade

    upgrade(url)
    with TestClient(create_web_app(Settings(database_url=url), worker_app)) as c:
        yield c


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_info_analyze_and_dfa_through_the_web(web, worker_app):
    info = web.get("/api/v1/info").json()
    assert info["model"]["name"] == "tiny" and len(info["saes"]) == 2
    body = web.post("/api/v1/analyze", json={"text": PROMPT, "top_k": 3}).json()
    direct = TestClient(worker_app).post("/v1/analyze", json={"text": PROMPT, "top_k": 3}).json()
    assert body == direct
    d = web.post("/api/v1/dfa", json={"text": PROMPT, "layer": 1, "feature": 2, "position": 3}).json()
    assert len(d["contributions"]) == 4


def test_graph_and_circuit_discovery_through_the_web(web, worker_app):
    """The contract's attention-circuit endpoints under /api/v1 answer what the worker answers, and its 4xx
    messages come through."""
    graph = {"text": PROMPT, "layer": 1, "feature": 2, "position": 3, "max_depth": 2, "threshold": 0.0, "top_n": 5}
    body = web.post("/api/v1/graph", json=graph)
    assert body.status_code == 200, body.text
    assert body.json() == TestClient(worker_app).post("/v1/graph", json=graph).json()
    assert body.json()["root"] == "f:1:3:2" and body.json()["links"]
    bad = web.post("/api/v1/graph", json={**graph, "position": 999})
    assert bad.status_code == 404 and "position" in bad.json()["detail"]
    prompts = {"positive": [PROMPT, PROMPT + PROMPT], "negative": ["a b c d", "one two three"], "patching": False}
    found = web.post("/api/v1/circuits/discover", json=prompts)
    assert found.status_code == 200, found.text
    direct = TestClient(worker_app).post("/v1/circuits/discover", json=prompts).json()
    assert {**found.json(), "seconds": None} == {**direct, "seconds": None}  # all but the timings
    assert web.post("/api/v1/circuits/discover", json={"positive": [PROMPT]}).status_code == 422


def test_api_answers_are_the_workers_bytes_gzipped_when_the_client_takes_gzip(web, worker_app):
    direct = TestClient(worker_app).post("/v1/analyze", json=LONG, headers={"Accept-Encoding": "identity"})
    assert "content-encoding" not in direct.headers and len(direct.content) > 2048
    with web.stream("POST", "/api/v1/analyze", json=LONG, headers={"Accept-Encoding": "gzip"}) as r:
        raw = b"".join(r.iter_raw())
    assert r.status_code == 200 and r.headers["content-encoding"] == "gzip" and r.headers["vary"] == "Accept-Encoding"
    assert zlib.decompress(raw, wbits=31) == direct.content and len(raw) < len(direct.content) / 2
    plain = web.post("/api/v1/analyze", json=LONG, headers={"Accept-Encoding": "identity"})
    assert "content-encoding" not in plain.headers and plain.content == direct.content
    assert web.post("/api/v1/analyze", json=LONG).json() == direct.json()  # httpx asks for gzip and reads it


@contextmanager
def served(app):
    """app on uvicorn on a free port of the loopback, for the duration; yields its URL."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(5)


def test_an_http_worker_answers_gzipped_and_the_web_app_passes_it_on(worker_app, tmp_path):
    """Worker to web app over HTTP: the client asks for gzip, reads a gzipped answer as it came to pass it on,
    or decoded to parse it; 4xx details still read."""
    from app.store.db import upgrade

    async def ask(pool: WorkerPool):
        client, body = WorkerClient(pool), P.AnalyzeRequest(**LONG)
        try:
            gz = await client.passed_on("analyze", body, gzip=True)
            plain = await client.passed_on("analyze", body, gzip=False)
            parsed = await client.analyze(body)
            with pytest.raises(WorkerError, match="layers with SAEs"):
                await client.passed_on("analyze", body.model_copy(update={"layers": [5]}), gzip=True)
            return gz, plain, parsed
        finally:
            await pool.close()

    url = f"sqlite:///{tmp_path / 'gz.db'}"
    upgrade(url)
    with served(worker_app) as worker_url:
        pool = WorkerPool.over_http([worker_url])
        assert pool._clients[0].headers["accept-encoding"] == "gzip"
        (gz, gz_encoding), (plain, plain_encoding), parsed = asyncio.run(ask(pool))
        with TestClient(create_web_app(Settings(database_url=url, worker_urls=[worker_url]))) as c:
            with c.stream("POST", "/api/v1/analyze", json=LONG, headers={"Accept-Encoding": "gzip"}) as r:
                raw = b"".join(r.iter_raw())
            through = c.post("/api/v1/analyze", json=LONG)
    assert gz_encoding == "gzip" and plain_encoding is None
    assert zlib.decompress(gz, wbits=31) == plain and len(gz) < len(plain) / 2
    assert parsed == P.AnalyzeResponse.model_validate(orjson.loads(plain))  # typed, the contract's model
    assert r.headers["content-encoding"] == "gzip" and zlib.decompress(raw, wbits=31) == plain
    assert through.content == plain  # httpx decodes it


def test_worker_errors_pass_through(web):
    r = web.post("/api/v1/feature-trace", json={"text": PROMPT, "layer": 1, "feature": 999})
    assert r.status_code == 404 and "features are 0 to 127" in r.json()["detail"]
    r = web.post("/api/v1/analyze", json={"text": "fox " * 300})
    assert r.status_code == 413
    r = web.post("/api/v1/analyze", json={"text": PROMPT, "top_k": 0})
    assert r.status_code == 422  # refused by the web app itself


def test_steer_saves_a_permalink(web):
    r = web.post("/api/v1/steer", json={"text": PROMPT, "max_new_tokens": 4,
                                        "interventions": [{"layer": 1, "feature": 3, "mode": "add", "value": 0}]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["permalink"].startswith("/s/") and body["default"] == body["steered"]


def test_unreachable_worker_is_503(tmp_path):
    url = f"sqlite:///{tmp_path / 'x.db'}"
    from app.store.db import upgrade

    upgrade(url)
    settings = Settings(database_url=url, worker_urls=[f"http://127.0.0.1:{free_port()}"])
    with TestClient(create_web_app(settings)) as c:
        r = c.post("/api/v1/analyze", json={"text": PROMPT})
    assert r.status_code == 503
    assert "no inference worker is reachable" in r.json()["detail"] and r.headers["Retry-After"]


def test_failover_to_a_live_worker(worker_app, tmp_path):
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(worker_app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    url = f"sqlite:///{tmp_path / 'y.db'}"
    from app.store.db import upgrade

    upgrade(url)
    dead = f"http://127.0.0.1:{free_port()}"
    settings = Settings(database_url=url, worker_urls=[dead, f"http://127.0.0.1:{port}"])
    try:
        with TestClient(create_web_app(settings)) as c:
            codes = [c.post("/api/v1/tokenize", json={"text": PROMPT}).status_code for _ in range(6)]
    finally:
        server.should_exit = True
        thread.join(5)
    assert codes == [200] * 6


def test_rate_limit_on_expensive_endpoints(worker_app, tmp_path):
    url = f"sqlite:///{tmp_path / 'rl.db'}"
    from app.store.db import upgrade

    upgrade(url)
    with TestClient(create_web_app(Settings(database_url=url, rate_limit_per_minute=3), worker_app)) as c:
        codes = [c.post("/api/v1/analyze", json={"text": PROMPT}).status_code for _ in range(4)]
        assert codes == [200, 200, 200, 429]
        r = c.post("/api/v1/dfa", json={"text": PROMPT, "layer": 1, "feature": 1, "position": 1})
        assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1
        assert "at most 3 a minute" in r.json()["detail"]
        # an unknown API key gets no bucket of its own (issue 17: 403); cheap endpoints are not limited
        assert c.post("/api/v1/analyze", json={"text": PROMPT}, headers={"X-API-Key": "saex_x"}).status_code == 403
        assert all(c.post("/api/v1/tokenize", json={"text": PROMPT}).status_code == 200 for _ in range(5))


def test_ready(web, tmp_path):
    r = web.get("/ready")
    # issue 17: the workers' names only to an admin key; others see how many answer
    assert r.status_code == 200 and r.json()["database"] == "ok" and r.json()["workers"] == 1
    url = f"sqlite:///{tmp_path / 'nr.db'}"
    from app.store.db import upgrade

    upgrade(url)
    with TestClient(create_web_app(Settings(database_url=url, worker_urls=[f"http://127.0.0.1:{free_port()}"]))) as c:
        r = c.get("/ready")
    assert r.status_code == 503 and r.json()["workers"] == 0 and r.headers["Retry-After"]


def test_a_url_that_is_not_a_worker_is_a_clear_503(tmp_path):
    """A worker URL pointing at some other web server (200, HTML) must not become a 500."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class NotAWorker(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 (the standard library's name)
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            body = b"<html>an intranet page</html>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST  # noqa: N815 (the web app asks /v1/info first)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), NotAWorker)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"sqlite:///{tmp_path / 'nw.db'}"
    from app.store.db import upgrade

    upgrade(url)
    settings = Settings(database_url=url, worker_urls=[f"http://127.0.0.1:{server.server_address[1]}"])
    try:
        with TestClient(create_web_app(settings)) as c:
            r = c.post("/api/v1/analyze", json={"text": PROMPT})
    finally:
        server.shutdown()
    assert r.status_code == 503 and r.headers["Retry-After"]
    assert "not JSON" in r.json()["detail"] and "SAE Explorer worker" in r.json()["detail"]

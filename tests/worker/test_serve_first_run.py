"""`saex serve` on first run, as a real process on the demo model: it answers at once while its dashboards build in
a child process, the pages show the build's progress until it is done, and a build that fails says why on the page
while the server keeps serving."""

from __future__ import annotations

import signal
import time

import httpx
import pytest

from app.config import DEMO_DIR
from tests.processes import free_port, start_saex, stop, wait_http

pytestmark = [pytest.mark.process,
              pytest.mark.skipif(not (DEMO_DIR / "model" / "model.safetensors").exists(), reason="no demo model")]
POLLS = 'hx-trigger="every 2s"'
HX = {"HX-Request": "true"}


def serve(tmp_path, data) -> tuple:
    """`saex serve` with its default in-process model, once it answers /health."""
    port = free_port()
    web = start_saex(["serve", "--port", str(port), "--threads", "1", "--dashboard-tokens", "2048"],
                     tmp_path / "serve.log", env={"SAEX_DATA_DIR": str(data), "OMP_NUM_THREADS": "1"})
    base = f"http://127.0.0.1:{port}"
    try:
        wait_http(base + "/health", 180, web)
    except BaseException:
        stop(web)
        raise
    return web, httpx.Client(base_url=base, timeout=60)


def until_ended(c: httpx.Client, seconds: float = 240) -> str:
    """The build's status fragment once it no longer polls."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < seconds:
        text = c.get("/demo/build", headers=HX).text
        if POLLS not in text:
            return text
        time.sleep(0.5)
    raise TimeoutError(f"the dashboard build did not end within {seconds} s")


def test_saex_serve_answers_while_its_dashboards_build(tmp_path):
    web, c = serve(tmp_path, tmp_path / "data")
    try:
        first = c.get("/demo/build", headers=HX).text
        feature = c.get("/demo/L0/3")
        analysis = c.post("/api/v1/analyze", json={"text": "import os", "top_k": 3})
        done = until_ended(c)
        built = c.get("/demo/L0/3")
        web.send_signal(signal.SIGTERM)
        assert web.wait(30) == 0, (tmp_path / "serve.log").read_text()
    finally:
        stop(web)
    log = (tmp_path / "serve.log").read_text()
    assert POLLS in first, log  # the server answered before its build had ended
    assert feature.status_code == 200 and "not built yet" in feature.text and POLLS in feature.text
    assert analysis.status_code == 200  # prompts are analysed meanwhile
    assert "Dashboards built:</strong> 4,096 features" in done, log
    assert "Top activations" in built.text and 'id="build-status"' not in built.text


def test_a_failed_background_build_is_on_the_page_and_the_server_serves_on(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "builds").write_text("a file where the build keeps its checkpoints: saving one fails")
    web, c = serve(tmp_path, data)
    try:
        ended = until_ended(c)
        page = c.get("/demo/L1/5")
        health = c.get("/health")
        running = web.poll() is None
        web.send_signal(signal.SIGTERM)
        assert web.wait(30) == 0
    finally:
        stop(web)
    log = (tmp_path / "serve.log").read_text()
    assert "The dashboard build failed" in ended and "FileExistsError" in ended, log
    assert "The dashboard build failed" in page.text and "FileExistsError" in page.text
    assert health.status_code == 200 and running
    assert "Traceback" in log  # the details are in the server's log

"""What every browser test starts from: Debian's Chromium driven by Playwright, and the embedded default served as
`saex serve` serves it (in-process worker, dashboards and baseline explanations built into SQLite)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import uvicorn

from app.config import Settings

CHROMIUM = "/usr/bin/chromium"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def demo_server(data: Path, **settings) -> Iterator[tuple[str, Settings]]:
    """The demo served on a free port, its dashboards built over 8,192 tokens first; yields (base URL, settings)."""
    from app.cli import _engine_from_settings, _ensure_dashboards
    from app.store.db import upgrade
    from app.web.app import create_web_app
    from app.worker.service import create_worker_app

    config = Settings(data_dir=data, threads=1, **settings)
    upgrade(config.resolved_database_url)
    engine = _engine_from_settings(config)
    _ensure_dashboards(engine, config, tokens=8192)
    port = free_port()
    srv = uvicorn.Server(uvicorn.Config(create_web_app(config, create_worker_app(engine)), host="127.0.0.1",
                                        port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    while not srv.started:
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}", config
    finally:
        srv.should_exit = True
        thread.join(10)


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[str]:
    with demo_server(tmp_path_factory.mktemp("browser")) as (url, _):
        yield url


@pytest.fixture(scope="module")  # not the session: Playwright's sync API keeps an event loop running in this
def browser():                   # thread while it is open, and later tests call asyncio.run
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: `make test` installs Debian's chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync"])
        yield b
        b.close()

"""The worker as a process: the engine computes on the main thread (MainThreadExecutor) with the server on a
thread of its own; SIGTERM ends it gracefully (a request in flight is answered first, exit code 0) and a port that
is taken is a failed start, not a silent one."""

from __future__ import annotations

import signal
import socket
import threading
import time
from concurrent.futures import CancelledError

import httpx
import pytest

from app.config import DEMO_DIR
from app.worker.queue import MainThreadExecutor
from tests.processes import free_port, start_saex, stop, wait_http

demo = pytest.mark.skipif(not (DEMO_DIR / "model" / "model.safetensors").exists(), reason="no demo model")


def test_main_thread_executor_runs_calls_on_the_thread_that_serves_it():
    executor = MainThreadExecutor()
    ran_on: list[str] = []
    ok = executor.submit(lambda x: ran_on.append(threading.current_thread().name) or x * 2, 21)
    bad = executor.submit(lambda: 1 / 0)
    skipped = executor.submit(lambda: ran_on.append("cancelled call ran"))
    skipped.cancel()
    last = executor.submit(lambda: "last")
    executor.run_until(lambda: last.done(), poll_s=0.01)
    assert ok.result() == 42 and ran_on == [threading.current_thread().name]
    with pytest.raises(ZeroDivisionError):
        bad.result()
    assert skipped.cancelled() and last.result() == "last"
    waiting = executor.submit(lambda: "never")
    executor.shutdown(wait=False, cancel_futures=True)
    with pytest.raises(CancelledError):
        waiting.result(timeout=1)
    t0 = time.monotonic()
    executor.run_until(lambda: time.monotonic() - t0 > 0.05, poll_s=0.01)  # nothing left to run: returns
    assert not waiting.running()


@pytest.mark.process
@demo
def test_sigterm_answers_the_request_in_flight_then_exits_0(tmp_path):
    port = free_port()
    worker = start_saex(["worker", "--port", str(port), "--threads", "1"], tmp_path / "worker.log")
    base = f"http://127.0.0.1:{port}"
    try:
        wait_http(base + "/health", 60, worker)
        answer: dict = {}

        def discover() -> None:  # seconds of work (steering with a KV cache is now over in a fraction of one)
            r = httpx.post(base + "/v1/circuits/discover", timeout=60, json={"task": "induction"})
            answer["status"], answer["body"], answer["at"] = r.status_code, r.json(), time.monotonic()

        thread = threading.Thread(target=discover)
        thread.start()
        time.sleep(0.3)  # the discovery is computing
        worker.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        thread.join(60)
        assert worker.wait(30) == 0, (tmp_path / "worker.log").read_text()
    finally:
        stop(worker)
    assert answer["at"] > signalled, "the request ended before the signal: make it longer"
    assert answer["status"] == 200 and answer["body"]["heads"]


@pytest.mark.process
@demo
def test_a_port_in_use_is_a_failed_start(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        worker = start_saex(["worker", "--port", str(taken.getsockname()[1]), "--threads", "1"],
                            tmp_path / "worker.log")
        try:
            code = worker.wait(120)
        finally:
            stop(worker)
    assert code != 0
    assert "address already in use" in (tmp_path / "worker.log").read_text().lower()


@pytest.mark.process
@demo
def test_saex_serve_with_its_in_process_worker(tmp_path):
    """The README's first command: the web app with the embedded model computing on the main thread; its analysis
    equals the engine's, and SIGTERM ends it with exit code 0."""
    from app.config import load_settings
    from app.engine.engine import Engine
    from app.engine.loading import attach_saes, load_model

    port = free_port()
    web = start_saex(["serve", "--port", str(port), "--dashboard-tokens", "0"], tmp_path / "serve.log",
                     env={"SAEX_DATA_DIR": str(tmp_path / "data")})
    try:
        wait_http(f"http://127.0.0.1:{port}/health", 120, web)
        r = httpx.post(f"http://127.0.0.1:{port}/api/v1/analyze", json={"text": "The module", "top_k": 5}, timeout=60)
        web.send_signal(signal.SIGTERM)
        assert web.wait(30) == 0, (tmp_path / "serve.log").read_text()
    finally:
        stop(web)
    settings = load_settings()
    model = load_model(settings.model_spec())
    engine = Engine(model, attach_saes(model, settings.sae_specs()), "demo")
    assert r.status_code == 200 and r.json() == engine.analyze("The module", None, 5)

"""A bounded load test of a real worker process (the demo model, queue of 4) from this process over loopback:
32 concurrent clients for a fixed time. Every request must end in 200 or in 503 with Retry-After (the queue
sheds load), none in another 5xx or a hang, and the worker's memory must stay flat."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from app.config import DEMO_DIR
from tests.processes import free_port, start_saex, stop, wait_http

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not (DEMO_DIR / "model" / "model.safetensors").exists(), reason="no demo model")]
TEXT = "The Python standard library contains many modules, and each module has its own documentation. " * 2


async def hammer(base: str, clients: int, seconds: float) -> dict:
    outcomes: dict[str, int] = {}
    slowest = 0.0
    deadline = time.perf_counter() + seconds

    async def client() -> None:
        nonlocal slowest
        async with httpx.AsyncClient(base_url=base, timeout=30) as c:
            while time.perf_counter() < deadline:
                t0 = time.perf_counter()
                r = await c.post("/v1/analyze", json={"text": TEXT, "top_k": 10})
                slowest = max(slowest, time.perf_counter() - t0)
                key = str(r.status_code)
                if r.status_code == 503:
                    key += "+retry-after" if r.headers.get("Retry-After", "").isdigit() else "-no-retry-after"
                outcomes[key] = outcomes.get(key, 0) + 1
                if r.status_code == 503:
                    await asyncio.sleep(0.05)

    await asyncio.gather(*(client() for _ in range(clients)))
    return {"outcomes": outcomes, "slowest_s": slowest}


def test_32_concurrent_clients_are_served_or_shed(tmp_path):
    import psutil

    port = free_port()
    worker = start_saex(["worker", "--port", str(port), "--queue-size", "4", "--threads", "1"], tmp_path / "worker.log")
    base = f"http://127.0.0.1:{port}"
    try:
        wait_http(base + "/health", 60, worker)
        proc = psutil.Process(worker.pid)
        asyncio.run(hammer(base, 32, 3))  # warm up allocator and caches
        rss_before = proc.memory_info().rss
        result = asyncio.run(hammer(base, 32, 8))
        rss_after = proc.memory_info().rss
    finally:
        stop(worker)
    outcomes = result["outcomes"]
    print(result, rss_before, rss_after)
    assert set(outcomes) <= {"200", "503+retry-after"}, outcomes
    assert outcomes.get("200", 0) > 50 and outcomes.get("503+retry-after", 0) > 0  # served, and shed
    assert result["slowest_s"] < 10  # nothing hangs
    assert rss_after - rss_before < 50 * 2**20, (rss_before, rss_after)  # flat within 50 MB

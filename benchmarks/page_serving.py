"""Benchmark: serving feature pages from Postgres. Builds the demo dashboards into a Postgres database (unless
already there), starts `saex serve --worker-url ...` (the web app alone, as a deployment runs it) in a subprocess,
and loads it from this process over loopback: `--concurrency` clients for `--seconds`, each fetching random
feature pages. Prints p50/p95 latency, requests/s and the count of errors as JSON.

    python benchmarks/page_serving.py [--database-url postgresql+psycopg://postgres@127.0.0.1:5432/test]

Target (issue 5): p50 under 30 ms and no errors.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import time

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ensure_dashboards(url: str, tokens: int) -> None:
    from app.cli import _engine_from_settings, _ensure_dashboards
    from app.config import load_settings
    from app.store.db import upgrade

    settings = load_settings(database_url=url, threads=2)
    upgrade(url)
    _ensure_dashboards(_engine_from_settings(settings), settings, tokens)


async def load(base: str, paths: list[str], concurrency: int, seconds: float) -> dict:
    latencies: list[float] = []
    errors: dict[str, int] = {}
    deadline = time.perf_counter() + seconds

    async def client(seed: int) -> None:
        rng = random.Random(seed)
        async with httpx.AsyncClient(base_url=base, timeout=10) as c:
            while time.perf_counter() < deadline:
                t0 = time.perf_counter()
                try:
                    r = await c.get(rng.choice(paths))
                    if r.status_code != 200:
                        errors[str(r.status_code)] = errors.get(str(r.status_code), 0) + 1
                except httpx.HTTPError as exc:
                    errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
                latencies.append(time.perf_counter() - t0)

    t0 = time.perf_counter()
    await asyncio.gather(*(client(i) for i in range(concurrency)))
    wall = time.perf_counter() - t0
    s = sorted(latencies)
    return {"requests": len(s), "errors": errors, "requests_per_s": round(len(s) / wall, 1),
            "p50_ms": round(1000 * statistics.median(s), 2), "p95_ms": round(1000 * s[int(0.95 * (len(s) - 1))], 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", default="postgresql+psycopg://postgres@127.0.0.1:5432/saex_bench")
    parser.add_argument("--tokens", type=int, default=32_768, help="dashboard corpus tokens, if building")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=20)
    args = parser.parse_args()
    if args.database_url.startswith("postgresql"):
        admin = args.database_url.rsplit("/", 1)[0] + "/postgres"
        from sqlalchemy import create_engine, text

        engine = create_engine(admin, isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            name = args.database_url.rsplit("/", 1)[1]
            if not conn.execute(text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name}).first():
                conn.execute(text(f'CREATE DATABASE "{name}"'))
        engine.dispose()
    ensure_dashboards(args.database_url, args.tokens)
    port = free_port()
    env = {**os.environ, "DATABASE_URL": args.database_url}
    server = subprocess.Popen([sys.executable, "-m", "app.cli", "serve", "--port", str(port), "--worker-url",
                               "http://127.0.0.1:9"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(200):
            try:
                if httpx.get(base + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        paths = [f"/demo/L{layer}/{f}" for layer in (0, 1) for f in range(0, 2048, 7)]
        httpx.get(base + paths[0], timeout=10).raise_for_status()
        result = asyncio.run(load(base, paths, args.concurrency, args.seconds))
    finally:
        server.terminate()
        server.wait(10)
    print(json.dumps({"database": args.database_url.split("@")[-1], "concurrency": args.concurrency,
                      "seconds": args.seconds, "feature_page": result}, indent=2))


if __name__ == "__main__":
    main()

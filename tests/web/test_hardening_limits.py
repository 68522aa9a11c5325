"""Issue 17, finding 1: fair limits. Pages that compute count in the same per-client buckets as the API; unknown API
keys are refused (403) before they get a bucket; X-Forwarded-For picks no bucket (uvicorn believes it only from
SAEX_TRUSTED_PROXIES); steering costs max_new_tokens/8 units; one caller has at most two such requests in flight;
and in the worker's queue short requests go before waiting steering."""

from __future__ import annotations

import asyncio
import time

from fastapi.testclient import TestClient

from app.serving.server_options import uvicorn_options
from app.web.ratelimit import TokenBuckets, charged, steer_cost
from app.worker.queue import LONG, SHORT, BoundedQueue
from tests.web import test_hardening_sessions
from tests.web.forms import csrf_token

lab = test_hardening_sessions.lab  # the fixture: a model, keys and web apps on each database


def test_pages_and_api_share_one_bucket(lab):
    c = TestClient(lab["app"](rate_limit_per_minute=3))
    slug = lab["slug"]
    assert c.get("/", params={"text": "The quick brown fox", "model": slug}).status_code == 200
    assert c.get("/search", params={"text": "fox", "model": slug}).status_code == 200
    assert c.post("/api/v1/analyze", json={"text": "fox", "model": slug}).status_code == 200
    page = c.get("/", params={"text": "again", "model": slug})
    assert page.status_code == 429 and page.headers["Retry-After"].isdigit()
    assert c.post("/api/v1/analyze", json={"text": "fox", "model": slug}).status_code == 429
    form = c.post(f"/{slug}/steer", data={"csrf_token": csrf_token(c), "text": "fox", "max_new_tokens": 2})
    assert form.status_code == 429
    assert c.get("/").status_code == 200  # reading without a prompt computes nothing and costs nothing


def test_unknown_keys_are_refused_before_they_get_a_bucket(lab):
    c = TestClient(lab["app"](rate_limit_per_minute=2))
    slug = lab["slug"]
    for i in range(5):
        r = c.post("/api/v1/analyze", json={"text": "fox", "model": slug}, headers={"X-API-Key": f"saex_random{i}"})
        assert r.status_code == 403, r.text
    key = {"X-API-Key": lab["alice"]}
    assert [c.post("/api/v1/analyze", json={"text": "fox", "model": slug}, headers=key).status_code
            for _ in range(3)] == [200, 200, 429]


def test_forwarded_for_picks_no_bucket(lab):
    c = TestClient(lab["app"](rate_limit_per_minute=2))
    codes = [c.post("/api/v1/analyze", json={"text": "fox", "model": lab["slug"]},
                    headers={"X-Forwarded-For": f"10.0.0.{i}"}).status_code for i in range(3)]
    assert codes == [200, 200, 429]


def test_uvicorn_believes_forwarded_headers_only_from_trusted_proxies():
    assert uvicorn_options(trusted_proxies=[])["proxy_headers"] is False
    trusted = uvicorn_options(trusted_proxies=["10.1.2.3"])
    assert trusted["proxy_headers"] is True and trusted["forwarded_allow_ips"] == "10.1.2.3"


def test_steering_costs_by_its_tokens(lab):
    assert steer_cost(b'{"max_new_tokens": 64}', "application/json") == 8
    assert steer_cost(b"max_new_tokens=120&text=x", "application/x-www-form-urlencoded") == 15
    assert steer_cost(b"not json", "application/json") == 4  # the default 32 tokens
    c = TestClient(lab["app"](rate_limit_per_minute=10))
    body = {"text": "The quick brown fox", "max_new_tokens": 64, "interventions": [], "model": lab["slug"]}
    assert c.post("/api/v1/steer", json=body).status_code == 200
    assert c.post("/api/v1/steer", json=body).status_code == 429  # 8 + 8 > 10
    assert c.post("/api/v1/analyze", json={"text": "fox", "model": lab["slug"]}).status_code == 200  # 8 + 1


def test_which_requests_are_charged():
    assert charged("GET", "/", b"text=fox") and not charged("GET", "/", b"") and not charged("GET", "/", b"text=+")
    assert charged("POST", "/demo/steer", b"") and not charged("GET", "/demo/steer", b"")
    assert charged("POST", "/api/v1/models/demo/saes/L0/features/3/score", b"")
    assert charged("GET", "/demo/graph", b"text=x&feature=1") and not charged("GET", "/demo/L0/3", b"")
    assert not charged("POST", "/api/v1/tokenize", b"")


def test_buckets_weigh_costs():
    b = TokenBuckets(60)
    assert b.take("a", 50) == 0 and b.take("a", 20) > 0 and b.take("b", 20) == 0


def test_short_requests_go_before_waiting_long_ones():
    order = []

    def work(name, seconds):
        def run():
            time.sleep(seconds)
            order.append(name)
            return name
        return run

    async def main():
        q = BoundedQueue(8)
        first = asyncio.create_task(q.run(work("long-1", 0.2), LONG))
        await asyncio.sleep(0.05)
        rest = [asyncio.create_task(q.run(work("long-2", 0.05), LONG)),
                asyncio.create_task(q.run(work("short", 0.01), SHORT))]
        await asyncio.gather(first, *rest)
        q.shutdown()

    asyncio.run(main())
    assert order == ["long-1", "short", "long-2"]


def test_a_steering_flood_cannot_fill_the_short_lane():
    async def main():
        q = BoundedQueue(8, long_capacity=1)
        slow = [asyncio.create_task(q.run(lambda: time.sleep(0.2), LONG)) for _ in range(2)]
        await asyncio.sleep(0.02)
        refused = 0
        try:
            await q.run(lambda: None, LONG)
        except Exception:
            refused = 1
        short = await q.run(lambda: "ok", SHORT)
        await asyncio.gather(*slow)
        q.shutdown()
        return refused, short

    assert asyncio.run(main()) == (1, "ok")

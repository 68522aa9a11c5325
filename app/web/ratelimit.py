"""Fair limits on inference, one accounting for pages and API alike: every request that makes a worker compute
(the API's analyze, trace, DFA, graph, discovery, steering, scoring and explaining; the explorer with a prompt, the
search page's "what fires on this text", the graph, circuits and head pages, saved analyses, the steering form, a
feature page's score and explain forms) takes units from one token bucket per caller: a live API key (an unknown
or revoked one is refused, 403, before it gets a bucket), a signed-in browser (its key's bucket), else the client's
address (as the server saw it: X-Forwarded-For counts only from SAEX_TRUSTED_PROXIES, which uvicorn applies).
Steering costs max_new_tokens/8 units, the rest 1; and a caller may have at most MAX_IN_FLIGHT such requests in
flight at once (429 past it), so one client's flood waits at its own door, not in everyone's queue.
Knows nothing of torch; the store only through app.store.keys, to check a key."""

from __future__ import annotations

import hashlib
import json
import math
import re
import time
from typing import Annotated
from urllib.parse import parse_qs

from fastapi import Depends, Header, HTTPException, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import HTMLResponse, JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.store import keys

MAX_IN_FLIGHT = 2  # expensive requests one caller may have in flight at once
STEER_TOKENS_PER_UNIT = 8
KEY_CACHE_S = 30.0  # how long a key's check is reused (a revoked key still ends at its next write: auth checks live)

API = r"/api/v1(?:/models/[^/]+)?"
# (method, path pattern, query parameter that must be non-empty for it to compute, or None)
CHARGED = [(m, re.compile(p), q) for m, p, q in (
    ("POST", rf"^{API}/(analyze|feature-trace|dfa|graph|circuits/discover|steer)$", None),
    ("POST", rf"^{API}/saes/[^/]+/features/\d+/(score|explain)$", None),
    ("GET", r"^/$", "text"),
    ("GET", r"^/search$", "text"),
    ("GET", r"^/p/[^/]+$", None),
    ("GET", r"^/[^/]+/graph$", "text"),
    ("GET", r"^/[^/]+/circuits$", "task"),
    ("GET", r"^/[^/]+/heads/\d+/\d+$", None),
    ("POST", r"^/[^/]+/steer$", None),
    ("POST", r"^/[^/]+/[^/]+/\d+/(score|explain)$", None),
)]
STEER = re.compile(rf"^(?:{API}/steer|/[^/]+/steer)$")


class TokenBuckets:
    def __init__(self, per_minute: int, burst: int | None = None, max_callers: int = 100_000) -> None:
        self.rate = per_minute / 60.0  # tokens per second
        self.capacity = float(burst or per_minute)
        self.max_callers = max_callers
        self._state: dict[str, tuple[float, float]] = {}  # caller -> (tokens, last refill time)
        self.in_flight: dict[str, int] = {}

    def take(self, caller: str, cost: float = 1.0) -> float:
        """0 if the call may go ahead (its cost taken), else the seconds until it may."""
        cost = min(cost, self.capacity)  # a call dearer than a full bucket waits for a full bucket
        now = time.monotonic()
        tokens, last = self._state.get(caller, (self.capacity, now))
        tokens = min(self.capacity, tokens + (now - last) * self.rate)
        if tokens >= cost:
            if len(self._state) >= self.max_callers and caller not in self._state:
                self._state.clear()  # bounded memory: forget idle callers rather than grow without end
            self._state[caller] = (tokens - cost, now)
            return 0.0
        self._state[caller] = (tokens, now)
        return (cost - tokens) / self.rate if self.rate > 0 else 60.0


def _header_key(headers: dict[bytes, bytes]) -> str | None:
    key = headers.get(b"x-api-key")
    if key is None:
        auth = headers.get(b"authorization", b"")
        key = auth[7:].strip() if auth.lower().startswith(b"bearer ") else None
    return key.decode("latin-1") if key else None


def charged(method: str, path: str, query: bytes) -> bool:
    for m, pattern, param in CHARGED:
        if m == method and pattern.match(path):
            return param is None or bool(parse_qs(query.decode("latin-1")).get(param, [""])[0].strip())
    return False


def steer_cost(body: bytes, content_type: str) -> float:
    """Units of a steering request: its max_new_tokens / STEER_TOKENS_PER_UNIT (at least 1)."""
    tokens = 32
    try:
        if content_type.startswith("application/x-www-form-urlencoded"):
            tokens = int(parse_qs(body.decode())["max_new_tokens"][0])
        else:
            tokens = int(json.loads(body or b"{}").get("max_new_tokens", 32))
    except (ValueError, KeyError, IndexError, TypeError, AttributeError, UnicodeDecodeError):
        pass  # the route says what is wrong with it
    return max(1.0, min(tokens, 4096) / STEER_TOKENS_PER_UNIT)


class FairLimits:
    """The ASGI side of the module docstring: charges each expensive request to its caller's bucket before the app
    sees it (the app's state holds the buckets, `rate_limits`, and the database, `sessions`)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._keys: dict[str, tuple[int | None, float]] = {}  # sha256 of a key -> (key id or None, checked at)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        state = scope["app"].state if scope["type"] == "http" and "app" in scope else None
        buckets: TokenBuckets | None = getattr(state, "rate_limits", None)
        if buckets is None or not charged(scope["method"], scope["path"], scope.get("query_string", b"")):
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        key = _header_key(headers)
        if key:
            key_id = await self._key_id(state, key)
            if key_id is None:
                await self._refuse(scope, send, 403, "the API key is unknown or revoked")
                return
            caller = f"key:{key_id}"
        else:
            browser = scope.get("state", {}).get("browser")
            client = scope.get("client")
            caller = f"key:{browser.key_id}" if browser is not None and browser.key_id is not None else \
                "ip:" + (client[0] if client else "unknown")
        cost = 1.0
        if scope["method"] == "POST" and STEER.match(scope["path"]):
            body, receive = await _peek(receive)
            cost = steer_cost(body, headers.get(b"content-type", b"").decode("latin-1"))
        if buckets.in_flight.get(caller, 0) >= MAX_IN_FLIGHT:
            await self._refuse(scope, send, 429, f"too many requests at once: at most {MAX_IN_FLIGHT} of yours may "
                               "compute or wait at a time; retry when one has answered", 1)
            return
        wait = buckets.take(caller, cost)
        if wait > 0:
            detail = (f"too many requests: at most {buckets.capacity:.0f} a minute (units of work: a steering "
                      f"request costs max_new_tokens/{STEER_TOKENS_PER_UNIT}); retry in {math.ceil(wait)} s")
            await self._refuse(scope, send, 429, detail, math.ceil(wait))
            return
        scope.setdefault("state", {})["charged"] = True
        buckets.in_flight[caller] = buckets.in_flight.get(caller, 0) + 1
        try:
            await self.app(scope, receive, send)
        finally:
            left = buckets.in_flight.get(caller, 1) - 1
            if left > 0:
                buckets.in_flight[caller] = left
            else:
                buckets.in_flight.pop(caller, None)

    async def _key_id(self, state, key: str) -> int | None:
        digest = hashlib.sha256(key.encode()).hexdigest()
        now = time.monotonic()
        cached = self._keys.get(digest)
        if cached is not None and now - cached[1] < KEY_CACHE_S:
            return cached[0]

        def check() -> int | None:
            with state.sessions() as session, session.begin():
                record = keys.verify(session, key=key)
                return record.id if record is not None else None

        try:
            key_id = await run_in_threadpool(check)
        except Exception:  # the database is down: the route answers 503 as it would
            return -1
        if len(self._keys) > 10_000:
            self._keys.clear()
        self._keys[digest] = (key_id, now)
        return key_id

    async def _refuse(self, scope: Scope, send: Send, status: int, detail: str,
                      retry_after: int | None = None) -> None:
        headers = {"Retry-After": str(retry_after)} if retry_after else None
        if scope["path"].startswith("/api/"):
            response = JSONResponse({"detail": detail}, status_code=status, headers=headers)
        else:
            response = HTMLResponse(f"<!doctype html><title>Slow down</title><p>{detail}</p>", status_code=status,
                                    headers=headers)

        async def nothing() -> Message:
            return {"type": "http.disconnect"}

        await response(scope, nothing, send)


async def _peek(receive: Receive) -> tuple[bytes, Receive]:
    """The request's body (already bounded by app.serving.body_limit), and a receive that hands it on."""
    chunks, more = [], True
    while more:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunks.append(message.get("body", b""))
        more = message.get("more_body", False)
    body, sent = b"".join(chunks), False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return body, replay


def caller_id(request: Request, x_api_key: str | None, authorization: str | None) -> str:
    key = x_api_key or (authorization[7:].strip() if authorization and authorization.lower().startswith("bearer ")
                        else None)
    if key:  # by key (hashed: the key itself is never kept)
        return "key:" + hashlib.sha256(key.encode()).hexdigest()[:16]
    browser = getattr(request.state, "browser", None)
    if browser is not None and browser.key_id is not None:  # a signed-in browser counts as its key
        return f"key:{browser.key_id}"
    return "ip:" + (request.client.host if request.client else "unknown")


async def limit_expensive(request: Request, x_api_key: Annotated[str | None, Header()] = None,
                          authorization: Annotated[str | None, Header()] = None) -> None:
    """For a route FairLimits does not charge already (it marks those it did)."""
    buckets: TokenBuckets | None = request.app.state.rate_limits
    if buckets is None or getattr(request.state, "charged", False):
        return
    wait = buckets.take(caller_id(request, x_api_key, authorization))
    if wait > 0:
        raise HTTPException(429, f"too many requests: at most {buckets.capacity:.0f} a minute on this endpoint; "
                                 f"retry in {math.ceil(wait)} s", headers={"Retry-After": str(math.ceil(wait))})


RateLimited = Depends(limit_expensive)

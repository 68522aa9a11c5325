"""Rate limits on the expensive endpoints (analyze, feature trace, DFA, steering): a token bucket per API key, or
per client address for anonymous callers, in this process; over the limit a caller gets 429 with Retry-After.
Knows nothing of torch or the store."""

from __future__ import annotations

import hashlib
import math
import time
from typing import Annotated

from fastapi import Depends, Header, HTTPException, Request


class TokenBuckets:
    def __init__(self, per_minute: int, burst: int | None = None, max_callers: int = 100_000) -> None:
        self.rate = per_minute / 60.0  # tokens per second
        self.capacity = float(burst or per_minute)
        self.max_callers = max_callers
        self._state: dict[str, tuple[float, float]] = {}  # caller -> (tokens, last refill time)

    def take(self, caller: str) -> float:
        """0 if the call may go ahead, else the seconds until it may."""
        now = time.monotonic()
        tokens, last = self._state.get(caller, (self.capacity, now))
        tokens = min(self.capacity, tokens + (now - last) * self.rate)
        if tokens >= 1.0:
            if len(self._state) >= self.max_callers and caller not in self._state:
                self._state.clear()  # bounded memory: forget idle callers rather than grow without end
            self._state[caller] = (tokens - 1.0, now)
            return 0.0
        self._state[caller] = (tokens, now)
        return (1.0 - tokens) / self.rate if self.rate > 0 else 60.0


def caller_id(request: Request, x_api_key: str | None, authorization: str | None) -> str:
    key = x_api_key or (authorization[7:].strip() if authorization and authorization.lower().startswith("bearer ")
                        else None)
    if key:  # by key (hashed: the key itself is never kept), whether or not it is valid
        return "key:" + hashlib.sha256(key.encode()).hexdigest()[:16]
    browser = getattr(request.state, "browser", None)
    if browser is not None and browser.key_id is not None:  # a signed-in browser counts as its key
        return f"key-id:{browser.key_id}"
    return "ip:" + (request.client.host if request.client else "unknown")


async def limit_expensive(request: Request, x_api_key: Annotated[str | None, Header()] = None,
                    authorization: Annotated[str | None, Header()] = None) -> None:
    buckets: TokenBuckets | None = request.app.state.rate_limits
    if buckets is None:
        return
    wait = buckets.take(caller_id(request, x_api_key, authorization))
    if wait > 0:
        raise HTTPException(429, f"too many requests: at most {buckets.capacity:.0f} a minute on this endpoint; "
                                 f"retry in {math.ceil(wait)} s", headers={"Retry-After": str(math.ceil(wait))})


RateLimited = Depends(limit_expensive)

"""uvicorn's settings for both services, from the deployment's: forwarded headers believed only from trusted proxies,
and timeouts and limits for slow or greedy clients; knows nothing of torch, storage or the app's routes.

- proxy_headers / forwarded_allow_ips: X-Forwarded-For and -Proto are applied only when the connection comes from
  one of SAEX_TRUSTED_PROXIES (none by default: a client cannot choose its own address, hence its rate-limit bucket).
- timeout_keep_alive: an idle keep-alive connection is closed after this many seconds.
- http: uvicorn's own protocol with a deadline on a request's line and headers (app.serving.header_deadline: slow
  headers are closed after HEADER_TIMEOUT_S; uvicorn has no such timeout and headers are read before ASGI).
- h11_max_incomplete_event_size: the most bytes of request line and headers buffered before the request is refused
  (h11 only; httptools, used when installed, has its own fixed limits).
- limit_concurrency: past this many connections and tasks at once, new requests are answered 503 at once.
- A body is bounded in size and in time by app.serving.body_limit (1 MiB, 30 s: 413 and 408).
"""

from __future__ import annotations

from app.serving.header_deadline import HeaderDeadline

KEEP_ALIVE_S = 5
MAX_HEADER_BYTES = 64 * 1024
MAX_CONCURRENCY = 512


def uvicorn_options(*, trusted_proxies: list[str]) -> dict:
    """Keyword arguments for uvicorn.Config."""
    return {"proxy_headers": bool(trusted_proxies), "forwarded_allow_ips": ",".join(trusted_proxies) or None,
            "timeout_keep_alive": KEEP_ALIVE_S, "h11_max_incomplete_event_size": MAX_HEADER_BYTES,
            "limit_concurrency": MAX_CONCURRENCY, "http": HeaderDeadline}

"""gzip for both services' responses, when the client asks for it (Accept-Encoding: gzip): Starlette's GZipMiddleware
at a level picked for CPU, on every path or only on some; knows nothing of torch or storage.

GZIP_LEVEL: the worker's answer to a 128-token all-layer analysis at GPT-2-Small shape (12 SAEs of 24,576
latents, top 10) is 650 KB of JSON. Measured on it (benchmarks/scale_analyze.py, 2-core VM, quiet): level 1 writes
120 KB in 3.4 ms, level 6 100 KB in 10.1 ms, level 9 95 KB in 51 ms; decompressing takes 1.4 ms at any level.
Level 6 saves 20 KB for 6.7 ms more of a core: sooner on the client only over links slower than ~24 Mbit/s, and
never on the worker-to-web-app hop, so level 1. Bodies of 128 KiB and more are compressed on a thread (zlib lets
go of the GIL), not on the event loop.
"""

from __future__ import annotations

from starlette.datastructures import Headers
from starlette.middleware.gzip import GZipMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

GZIP_LEVEL = 1
GZIP_MIN_BYTES = 1024  # smaller bodies fit a packet or two either way


def accepts_gzip(headers: Headers) -> bool:
    """Whether a request's Accept-Encoding allows gzip (the rule GZipMiddleware applies)."""
    return "gzip" in headers.get("accept-encoding", "")


class Compressed:
    """GZipMiddleware on the paths under `prefixes` (every path when None); a response that already carries a
    Content-Encoding (a gzipped body passed on as it came) goes out as it is."""

    def __init__(self, app: ASGIApp, prefixes: tuple[str, ...] | None = None) -> None:
        self.app, self.prefixes = app, prefixes
        self.gzip = GZipMiddleware(app, minimum_size=GZIP_MIN_BYTES, compresslevel=GZIP_LEVEL)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and (self.prefixes is None or scope["path"].startswith(self.prefixes)):
            await self.gzip(scope, receive, send)
        else:
            await self.app(scope, receive, send)

"""One pure-ASGI middleware for both services' cross-cutting work (request ids and logs, body limits, security
headers, browser sessions). Unlike @app.middleware("http"), it never re-streams the response body through a
task group: it only sees the request, edits the response's headers as they are sent, and hears when it ends.
Knows nothing of torch or storage."""

from __future__ import annotations

import time
from collections.abc import Callable

from starlette.datastructures import MutableHeaders
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

Begin = Callable[[Request], Response | None]
Start = Callable[[Request, MutableHeaders], None]
End = Callable[[Request, int, float], None]


class Hooks:
    """begin(request) runs first and may answer by itself (a Response); start(request, headers) may edit the
    response's headers before they are sent; end(request, status, seconds) runs once the response is sent or
    the app raised (status 500 then; the exception goes on to the server-error handler)."""

    def __init__(self, app: ASGIApp, begin: Begin | None = None, start: Start | None = None,
                 end: End | None = None) -> None:
        self.app, self.begin, self.start, self.end = app, begin, start, end

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope, receive)
        t0 = time.perf_counter()
        status = 500
        if self.begin is not None:
            early = self.begin(request)
            if early is not None:
                await early(scope, receive, send)
                if self.end is not None:
                    self.end(request, early.status_code, time.perf_counter() - t0)
                return

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                if self.start is not None:
                    self.start(request, MutableHeaders(scope=message))
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            if self.end is not None:
                self.end(request, status, time.perf_counter() - t0)


def cookie_header(key: str, value: str, **options) -> str:
    """The Set-Cookie header value Starlette writes for these options."""
    response = Response()
    response.set_cookie(key, value, **options)
    return response.headers["set-cookie"]

"""Request bodies bounded however they arrive: a Content-Length past the limit is refused at once, and a body sent
without one (chunked) is read only up to the limit, then refused (413) without reading the rest; a body that
trickles in slower than the deadline allows is refused (408). Optionally, control characters (NUL, ...) in the
path, the query string or the body are refused (422) before any route sees them. The body read here is handed on
to the app as it came. Knows nothing of torch, storage or the app's routes."""

from __future__ import annotations

import asyncio
import time

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.serving.text_checks import control_characters, encoded_control_characters

MAX_BODY_BYTES = 1 << 20
BODY_DEADLINE_S = 30.0  # the whole body must have arrived this long after the headers (slow-body clients)
CONTROL_DETAIL = ("the request holds a control character (such as NUL) in its {where}: only tab, newline and "
                  "carriage return are allowed in text")


class BoundedBody:
    def __init__(self, app: ASGIApp, max_bytes: int = MAX_BODY_BYTES, deadline_s: float = BODY_DEADLINE_S,
                 refuse_control_characters: bool = False) -> None:
        self.app, self.max_bytes, self.deadline_s = app, max_bytes, deadline_s
        self.refuse_control = refuse_control_characters

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            await self._answer(scope, receive, send, 413, f"the request body is larger than {self.max_bytes} bytes")
            return
        if self.refuse_control:
            if control_characters(scope.get("path", "")):
                await self._answer(scope, receive, send, 422, CONTROL_DETAIL.format(where="path"))
                return
            if encoded_control_characters(scope.get("query_string", b"")):
                await self._answer(scope, receive, send, 422, CONTROL_DETAIL.format(where="query string"))
                return
        chunks: list[bytes] = []
        size, more, disconnected = 0, True, False
        deadline = time.monotonic() + self.deadline_s
        while more:
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                await self._answer(scope, None, send, 408, f"the request body did not arrive within "
                                   f"{self.deadline_s:g} s", close=True)
                return
            if message["type"] == "http.disconnect":
                disconnected = True
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:  # stop reading here: the rest is never buffered
                await self._answer(scope, None, send, 413, f"the request body is larger than {self.max_bytes} bytes",
                                   close=True)
                return
            chunks.append(chunk)
            more = message.get("more_body", False)
        body = b"".join(chunks)
        if self.refuse_control and body and encoded_control_characters(body):
            await self._answer(scope, None, send, 422, CONTROL_DETAIL.format(where="body"))
            return
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if not sent and not disconnected:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _answer(self, scope: Scope, receive: Receive | None, send: Send, status: int, detail: str,
                      close: bool = False) -> None:
        headers = {"Connection": "close"} if close else None  # a body left unread: the connection cannot be reused
        response = JSONResponse({"detail": detail}, status_code=status, headers=headers)

        async def nothing() -> Message:
            return {"type": "http.disconnect"}

        await response(scope, receive or nothing, send)

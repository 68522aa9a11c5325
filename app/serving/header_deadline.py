"""uvicorn's HTTP protocol with a deadline on reading a request's line and headers, which uvicorn lacks (its
keep-alive timer stops at a connection's first byte, and headers are read before any ASGI code runs): a client that
sends them slower than HEADER_TIMEOUT_S (byte by byte, say) is disconnected. Knows nothing of the app."""

from __future__ import annotations

import asyncio

from uvicorn.protocols.http.auto import AutoHTTPProtocol

HEADER_TIMEOUT_S = 10.0


class HeaderDeadline(AutoHTTPProtocol):  # type: ignore[misc, valid-type]
    """Armed when a connection opens and again when a response completes (the next request's headers are due);
    disarmed once those headers are read (a new request cycle began). Bodies have body_limit's own timeout."""

    header_timeout_s = HEADER_TIMEOUT_S

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.cycle is not self._armed_for:  # headers read: a request is under way
            self._disarm()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing() and (self.cycle is None or self.cycle.response_complete):
            self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._disarm()
        self._armed_for = self.cycle
        self._deadline = asyncio.get_running_loop().call_later(self.header_timeout_s, self._too_slow)

    def _disarm(self) -> None:
        deadline = getattr(self, "_deadline", None)
        if deadline is not None:
            deadline.cancel()
        self._deadline, self._armed_for = None, getattr(self, "cycle", None)

    def _too_slow(self) -> None:
        self._deadline = None
        if self.cycle is self._armed_for and not self.transport.is_closing():
            self.transport.close()

"""Issue 17, finding 8: slow-header connections are closed. uvicorn has no header-read timeout, so both services run
its protocol with a deadline (app.serving.header_deadline); here a real server with a short deadline closes a client
that trickles its headers, and still serves normal and keep-alive requests."""

from __future__ import annotations

import asyncio
import socket
import threading
import time

import pytest
import uvicorn

from app.serving.header_deadline import HeaderDeadline
from app.serving.server_options import uvicorn_options


class Quick(HeaderDeadline):
    header_timeout_s = 0.5


async def hello(scope, receive, send) -> None:
    if scope["type"] != "http":
        return
    if scope["path"] == "/slow":  # longer than the header deadline: a request being answered is never cut off
        await asyncio.sleep(0.8)
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})


@pytest.fixture
def port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(hello, host="127.0.0.1", port=port, http=Quick, log_level="error",
                                           lifespan="off", timeout_keep_alive=5))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    for _ in range(200):
        if server.started:
            break
        time.sleep(0.02)
    yield port
    server.should_exit = True
    thread.join(5)


def _closed(sock: socket.socket) -> bool:
    try:
        return sock.recv(1024) == b""
    except ConnectionResetError:
        return True


def test_both_services_use_the_deadline():
    assert uvicorn_options(trusted_proxies=[])["http"] is HeaderDeadline
    assert uvicorn_options(trusted_proxies=[])["timeout_keep_alive"] > 0


def test_trickled_headers_are_cut_off(port):
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.settimeout(5)
        t0 = time.monotonic()
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")
        for _ in range(3):  # a byte now and then keeps uvicorn's own keep-alive timer off
            time.sleep(0.2)
            try:
                sock.sendall(b"X")
            except OSError:
                break
        assert _closed(sock) and time.monotonic() - t0 < 3


def test_silent_connections_are_cut_off(port):
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.settimeout(5)
        assert _closed(sock)


def test_normal_and_keep_alive_requests_are_served(port):
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.settimeout(5)
        for path in (b"/slow", b"/", b"/slow"):
            sock.sendall(b"GET " + path + b" HTTP/1.1\r\nHost: x\r\n\r\n")
            data = b""
            while not data.endswith(b"ok"):
                chunk = sock.recv(1024)
                assert chunk, "the connection was closed"
                data += chunk
            assert data.startswith(b"HTTP/1.1 200")
            time.sleep(0.1)
        time.sleep(0.7)  # idle past the deadline between requests: closed
        assert _closed(sock)

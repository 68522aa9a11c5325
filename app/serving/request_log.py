"""Request ids and structured logs for both services: every request gets an id (a sane incoming X-Request-ID is
kept), echoed in the response, and one JSON log line with method, path, status and duration. Query strings and
bodies are never logged (they hold users' prompts); nor are stack traces sent to clients. Knows nothing of torch."""

from __future__ import annotations

import json
import logging
import re
import uuid

from fastapi import FastAPI, Request
from starlette.datastructures import MutableHeaders

from app.serving.asgi import Hooks

log = logging.getLogger("saex.requests")
REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


class JSONLines(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = {"ts": round(record.created, 3), "level": record.levelname.lower(), "logger": record.name,
                "message": record.getMessage(), **getattr(record, "fields", {})}
        if record.exc_info:  # server side only, for the operator: never the message, which may quote the request
            line["error"] = error_summary(record.exc_info[1])
        return json.dumps(line)


def error_summary(exc: BaseException | None) -> str:
    """An exception as its type, its cause's type and where it was raised: never its message, which can carry what
    a client sent (a database driver's error quotes the statement's parameters: the user's text)."""
    if exc is None:
        return "unknown"
    names = [type(exc).__name__]
    cause = getattr(exc, "orig", None) or exc.__cause__
    if cause is not None:
        names.append(f"{type(cause).__module__}.{type(cause).__name__}")
    where = ""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    if tb is not None:
        code = tb.tb_frame.f_code
        where = f" at {code.co_filename.rsplit('/', 1)[-1]}:{tb.tb_lineno} in {code.co_name}"
    return " from ".join(names) + where


def configure_logging(level: int = logging.INFO) -> None:
    """JSON lines on stderr for the app's loggers; called by the CLI, never at import."""
    handler = logging.StreamHandler()
    handler.setFormatter(JSONLines())
    root = logging.getLogger("saex")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


def install_request_log(app: FastAPI) -> None:
    def begin(request: Request) -> None:
        incoming = request.headers.get("X-Request-ID", "")
        request.state.request_id = incoming if REQUEST_ID.match(incoming) else uuid.uuid4().hex[:16]

    def start(request: Request, headers: MutableHeaders) -> None:
        headers["X-Request-ID"] = request.state.request_id

    def end(request: Request, status: int, seconds: float) -> None:
        log.info("request", extra={"fields": {
            "request_id": request.state.request_id, "method": request.method, "path": request.url.path,
            "status": status, "ms": round(1000 * seconds, 2)}})

    app.add_middleware(Hooks, begin=begin, start=start, end=end)

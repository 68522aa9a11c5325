"""Error bodies for both services: every error is `{"detail": "<words a user can act on>"}`, validation errors
included, and nothing a client sends ever yields a stack trace; knows nothing of torch or storage."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.serving.body_limit import MAX_BODY_BYTES, BoundedBody
from app.serving.request_log import install_request_log

log = logging.getLogger("saex")

__all__ = ["MAX_BODY_BYTES", "install_error_handlers", "http_error_detail", "http_error_json", "field_path"]


def field_path(loc: tuple) -> str:
    parts = [str(p) for p in loc if p != "body"]
    return ".".join(parts) or "body"


def describe_validation_error(exc: RequestValidationError) -> str:
    msgs = []
    for err in exc.errors()[:5]:
        msg = err.get("msg", "invalid")
        if err.get("type") == "json_invalid":
            msgs.append("the body is not valid JSON")
        elif err.get("type") == "extra_forbidden":
            msgs.append(f"{field_path(err.get('loc', ()))}: unknown field (check its spelling against the API)")
        else:
            msgs.append(f"{field_path(err.get('loc', ()))}: {msg}")
    return "; ".join(msgs)


def http_error_detail(exc: StarletteHTTPException) -> str:
    detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
    if exc.status_code == 400 and detail == "There was an error parsing the body":
        detail = "the body could not be read: send JSON encoded as UTF-8"
    return detail


async def http_error_json(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    return JSONResponse({"detail": http_error_detail(exc)}, status_code=exc.status_code,
                        headers=getattr(exc, "headers", None))


def install_error_handlers(app: FastAPI, refuse_control_characters: bool = False) -> None:
    """refuse_control_characters: 422 for NUL and other control characters in a request's path, query string or
    body (the web app, whose text reaches a database; the worker's language-model prompts may quote any text)."""
    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": describe_validation_error(exc)}, status_code=422)

    app.add_exception_handler(StarletteHTTPException, http_error_json)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        request_id = getattr(request.state, "request_id", "-")
        log.error("unexpected error", exc_info=exc, extra={"fields": {
            "request_id": request_id, "method": request.method, "path": request.url.path}})
        return JSONResponse({"detail": f"internal error (request {request_id}): this is a bug in SAE Explorer, "
                                       "please report it with the request id"}, status_code=500)

    install_request_log(app)
    # bodies bounded however they arrive (chunked too), read before any route; see app.serving.body_limit
    app.add_middleware(BoundedBody, refuse_control_characters=refuse_control_characters)

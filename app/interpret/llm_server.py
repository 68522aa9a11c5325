"""An OpenAI-compatible chat-completions server around the embedded model (`saex llm serve`), so that any OpenAI
client, ours included, can use it over HTTP; knows nothing of SAEs or explanations, and runs no torch itself (the
model does)."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.interpret.local_llm import MAX_TOP_LOGPROBS, LocalChatModel
from app.serving.api_errors import describe_validation_error
from app.serving.asgi import Hooks

log = logging.getLogger("saex")

MAX_TOKENS = 1024  # per request: at ~20 tokens/s on a CPU, longer answers would hold the model for minutes
DEFAULT_MAX_TOKENS = 256
MAX_MESSAGES = 256
MAX_CHARS = 64_000  # all messages together; the model's context (8,192 tokens) is checked after tokenising
MAX_BODY_BYTES = 1 << 20


class TextPart(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["text"]
    text: str


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "user", "assistant"]
    content: str | list[TextPart]

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")  # OpenAI clients send fields we have no use for (user, store, ...)
    model: str | None = None  # any name is accepted: this server has one model, named in the answer
    messages: list[Message] = Field(min_length=1, max_length=MAX_MESSAGES)
    max_tokens: int | None = Field(None, ge=1, le=MAX_TOKENS)
    max_completion_tokens: int | None = Field(None, ge=1, le=MAX_TOKENS)
    temperature: float | None = Field(None, ge=0, le=2)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    n: int | None = None
    stream: bool | None = None
    seed: int | None = None


class BadRequest(Exception):
    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message, self.param = message, param


def error_body(message: str, *, kind: str = "invalid_request_error", param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": param, "code": None}}


def _check(req: ChatRequest) -> None:
    """What pydantic's field limits cannot say."""
    if req.n not in (None, 1):
        raise BadRequest("n: only n=1 is supported; send one request per completion", "n")
    if req.stream:
        raise BadRequest("stream: streaming is not supported; send stream=false", "stream")
    if req.top_logprobs and not req.logprobs:
        raise BadRequest("top_logprobs needs logprobs=true", "logprobs")
    chars = sum(len(m.text()) for m in req.messages)
    if chars > MAX_CHARS:
        raise BadRequest(f"messages: {chars} characters in all, more than {MAX_CHARS}; shorten them", "messages")


def _logprobs_json(completion: Any) -> dict[str, Any] | None:
    if completion.logprobs is None:
        return None
    return {"content": [{"token": t.token, "logprob": t.logprob, "bytes": None,
                         "top_logprobs": [{"token": k, "logprob": v} for k, v in t.top.items()]}
                        for t in completion.logprobs]}


def build_app(model: LocalChatModel) -> FastAPI:
    """The server: GET /v1/models, POST /v1/chat/completions; every error answers OpenAI's {"error": {...}}."""
    app = FastAPI(title="saex llm", docs_url=None, redoc_url=None)
    created = int(time.time())

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": model.name, "object": "model", "created": created,
                                            "owned_by": "saex"}]}

    @app.post("/v1/chat/completions")
    async def chat_completions(req: ChatRequest) -> JSONResponse:
        _check(req)
        messages = [{"role": m.role, "content": m.text()} for m in req.messages]
        max_tokens = req.max_completion_tokens or req.max_tokens or DEFAULT_MAX_TOKENS
        try:
            completion = await asyncio.to_thread(
                model.complete, messages, max_tokens=max_tokens, temperature=req.temperature or 0.0,
                top_logprobs=req.top_logprobs or 0, logprobs=bool(req.logprobs), seed=req.seed)
        except ValueError as exc:  # the prompt does not fit the context
            raise BadRequest(str(exc), "messages") from exc
        return JSONResponse({
            "id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
            "model": model.name,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": completion.text},
                         "finish_reason": completion.finish_reason, "logprobs": _logprobs_json(completion)}],
            "usage": {"prompt_tokens": completion.prompt_tokens, "completion_tokens": completion.completion_tokens,
                      "total_tokens": completion.prompt_tokens + completion.completion_tokens}})

    @app.exception_handler(BadRequest)
    async def _bad(request: Request, exc: BadRequest) -> JSONResponse:
        return JSONResponse(error_body(exc.message, param=exc.param), status_code=400)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(error_body(describe_validation_error(exc)), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        message = f"{request.method} {request.url.path}: {exc.detail}; this server has GET /v1/models and POST " \
                  "/v1/chat/completions"
        return JSONResponse(error_body(message, kind=kind), status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.error("saex llm: unexpected error", exc_info=exc)
        return JSONResponse(error_body(f"internal error: {type(exc).__name__}", kind="server_error"),
                            status_code=500)

    def limit_body(request: Request) -> JSONResponse | None:
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > MAX_BODY_BYTES):
            return JSONResponse(error_body(f"the request body is larger than {MAX_BODY_BYTES} bytes"),
                                status_code=413)
        return None

    app.add_middleware(Hooks, begin=limit_body)
    return app

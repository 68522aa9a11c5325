"""Model-backed endpoints of the public API (shared/api.md) under /api/v1: validated here with the worker
contract's models, answered by a worker; steering results are saved for their permalink."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Request

from app import protocol as P
from app.serving.compression import accepts_gzip
from app.serving.json_response import FastJSON, JSONBytes
from app.store import results
from app.web.auth import CallerDep
from app.web.deps import SessionDep, SettingsDep
from app.web.ratelimit import RateLimited
from app.web.worker_client import WorkerClient, WorkerError, WorkerUnavailable

router = APIRouter(prefix="/api/v1", tags=["model"])
ERRORS = P.ERROR_RESPONSES


async def get_worker(request: Request) -> WorkerClient:
    return request.app.state.worker


WorkerDep = Annotated[WorkerClient, Depends(get_worker)]


def ask_failed(exc: Exception) -> None:
    if isinstance(exc, WorkerError):
        raise HTTPException(exc.status, exc.detail, headers=exc.headers or None) from exc
    raise HTTPException(503, exc.detail, headers={"Retry-After": str(exc.retry_after)}) from exc


async def ask(worker: WorkerClient, request: Request, method: str, path: str, body: dict | None = None) -> JSONBytes:
    """The worker's answer, passed on as it came, unread (it already has the contract's fields): gzipped when this
    request's client takes gzip and the worker compressed it."""
    try:
        content, encoding = await worker.forward(method, path, body, gzip=accepts_gzip(request.headers))
    except (WorkerError, WorkerUnavailable) as exc:
        ask_failed(exc)
    headers = {"Content-Encoding": encoding, "Vary": "Accept-Encoding"} if encoding else None
    return JSONBytes(content, headers=headers)


@router.get("/info", response_model=P.InfoResponse, responses=ERRORS)
async def info(worker: WorkerDep, request: Request) -> JSONBytes:
    return await ask(worker, request, "GET", "/v1/info")


@router.post("/tokenize", response_model=P.TokenizeResponse, responses=ERRORS)
async def tokenize(body: P.TextRequest, worker: WorkerDep, request: Request) -> JSONBytes:
    return await ask(worker, request, "POST", "/v1/tokenize", body.model_dump())


@router.post("/analyze", dependencies=[RateLimited], response_model=P.AnalyzeResponse, responses=ERRORS)
async def analyze(body: P.AnalyzeRequest, worker: WorkerDep, request: Request) -> JSONBytes:
    return await ask(worker, request, "POST", "/v1/analyze", body.model_dump())


@router.post("/feature-trace", dependencies=[RateLimited], response_model=P.FeatureTraceResponse, responses=ERRORS)
async def feature_trace(body: P.FeatureRequest, worker: WorkerDep, request: Request) -> JSONBytes:
    return await ask(worker, request, "POST", "/v1/feature-trace", body.model_dump())


@router.post("/dfa", dependencies=[RateLimited], response_model=P.DFAResponse, responses=ERRORS)
async def dfa(body: P.DFARequest, worker: WorkerDep, request: Request) -> JSONBytes:
    return await ask(worker, request, "POST", "/v1/dfa", body.model_dump())


@router.post("/steer", dependencies=[RateLimited], response_model=P.SteerResponse,
             responses={**ERRORS, **P.error_responses(403)})
async def steer(body: P.SteerRequest, worker: WorkerDep, session: SessionDep, settings: SettingsDep,
                who: CallerDep) -> FastJSON:
    """Runs default and steered generation; the result is saved behind `permalink` (null where saving needs an API
    key and none was sent)."""
    try:
        out = await worker.request("POST", "/v1/steer", body.model_dump())
    except (WorkerError, WorkerUnavailable) as exc:
        ask_failed(exc)
    if settings.saves_need_sign_in and who is None:
        return FastJSON({**out, "permalink": None})
    saved = results.save(session, kind="steering", model_slug=settings.served_slug(),
                         payload={"request": body.model_dump(), "result": out})
    return FastJSON({**out, "permalink": f"/s/{saved.id}"})

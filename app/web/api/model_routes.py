"""Model-backed endpoints of the public API (shared/api.md) under /api/v1: validated here with the worker
contract's models, routed by their `model` (and SAE set) to a worker that hosts it, whose answer is passed on
unread; steering results are saved for their permalink."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel

from app import protocol as P
from app.serving.compression import accepts_gzip
from app.serving.json_response import FastJSON, JSONBytes
from app.web.auth import CallerDep
from app.web.deployment import Deployment
from app.web.deps import SessionDep, SettingsDep
from app.web.ratelimit import RateLimited
from app.web.saves import SaveLimitsDep
from app.web.services import models as model_service
from app.web.services import steering

router = APIRouter(prefix="/api/v1", tags=["model"])
ERRORS = P.ERROR_RESPONSES


async def get_deployment(request: Request) -> Deployment:
    return request.app.state.deployment


DeploymentDep = Annotated[Deployment, Depends(get_deployment)]
ModelQuery = Annotated[P.Slug | None, Query(description="the model; default: the first")]


async def pass_on(deployment: Deployment, request: Request, endpoint: str, body: P.TextRequest) -> JSONBytes:
    """The answer of a worker that hosts the body's model (and SAE set or SAE), as it came: gzipped when this
    request's client takes gzip and the worker compressed it. (The app answers WorkerError, WorkerUnavailable and
    NotFound.)"""
    model, client = await deployment.client(body.model, getattr(body, "set", None), getattr(body, "sae_id", None))
    content, encoding = await client.passed_on(endpoint, body.model_copy(update={"model": model.name}),
                                               gzip=accepts_gzip(request.headers))
    headers = {"Content-Encoding": encoding, "Vary": "Accept-Encoding"} if encoding else None
    return JSONBytes(content, headers=headers)


@router.get("/models", response_model=list[P.ServedModel], responses=ERRORS)
async def models(deployment: DeploymentDep) -> list[BaseModel]:
    """Every model this deployment serves, with its SAEs of every set."""
    return await model_service.served_models(deployment=deployment)


@router.get("/info", response_model=P.InfoResponse, responses=ERRORS)
async def info(deployment: DeploymentDep, model: ModelQuery = None) -> BaseModel:
    return await model_service.model_info(deployment=deployment, model=model)


@router.post("/tokenize", response_model=P.TokenizeResponse, responses=ERRORS)
async def tokenize(body: P.TextRequest, deployment: DeploymentDep, request: Request) -> JSONBytes:
    return await pass_on(deployment, request, "tokenize", body)


@router.post("/analyze", dependencies=[RateLimited], response_model=P.AnalyzeResponse, responses=ERRORS)
async def analyze(body: P.AnalyzeRequest, deployment: DeploymentDep, request: Request) -> JSONBytes:
    return await pass_on(deployment, request, "analyze", body)


@router.post("/feature-trace", dependencies=[RateLimited], response_model=P.FeatureTraceResponse, responses=ERRORS)
async def feature_trace(body: P.FeatureRequest, deployment: DeploymentDep, request: Request) -> JSONBytes:
    return await pass_on(deployment, request, "feature_trace", body)


@router.post("/dfa", dependencies=[RateLimited], response_model=P.DFAResponse, responses=ERRORS)
async def dfa(body: P.DFARequest, deployment: DeploymentDep, request: Request) -> JSONBytes:
    return await pass_on(deployment, request, "dfa", body)


@router.post("/graph", dependencies=[RateLimited], response_model=P.GraphResponse, responses=ERRORS)
async def graph(body: P.GraphRequest, deployment: DeploymentDep, request: Request) -> JSONBytes:
    """An attribution graph (recursive DFA) of a feature's pre-activation at a position, exact with attention
    patterns and LayerNorm scales frozen at this prompt."""
    return await pass_on(deployment, request, "graph", body)


@router.post("/circuits/discover", dependencies=[RateLimited], response_model=P.DiscoverResponse, responses=ERRORS)
async def circuits_discover(body: P.DiscoverRequest, deployment: DeploymentDep, request: Request) -> JSONBytes:
    """Heads and head pairs whose SAE codes tell the positive prompts from the negative ones (O'Neill & Bui 2024)."""
    return await pass_on(deployment, request, "circuits_discover", body)


@router.post("/steer", dependencies=[RateLimited], response_model=P.SteerResponse,
             responses={**ERRORS, **P.error_responses(403)})
async def steer(body: P.SteerRequest, deployment: DeploymentDep, session: SessionDep, settings: SettingsDep,
                who: CallerDep, limits: SaveLimitsDep) -> FastJSON:
    """Runs default and steered generation; the result is saved behind `permalink` (null where saving needs an API
    key and none was sent)."""
    out = await steering.steer_and_save(deployment=deployment, session=session, body=body,
                                        save=not (settings.saves_need_sign_in and who is None), limits=limits)
    return FastJSON(out.model_dump())

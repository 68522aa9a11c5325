"""Store-backed endpoints of the public API (shared/api.md): feature dashboards, explanations and their search,
each under /api/v1/... (the first model) and /api/v1/models/{model}/... Thin: parse, call one service function,
answer; the app answers the services' NotFound with a 404."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from app import protocol as P
from app.store.explanations import MAX_TEXT
from app.web.auth import WriterDep
from app.web.deps import SessionDep, SettingsDep
from app.web.ratelimit import RateLimited
from app.web.services import features, interpretation, semantic

router = APIRouter(prefix="/api/v1", tags=["store"], responses=P.error_responses(400, 413, 422, 503))
ERR = P.error_responses(404)
WRITE_ERR = {**ERR, **P.error_responses(401, 403)}


class ExplanationIn(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    text: str = Field(min_length=1, max_length=MAX_TEXT)
    source: str = Field(default="human", pattern="^(human|automatic)$")
    score: float | None = Field(default=None, ge=-1e6, le=1e6)


class ExplanationEdit(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: str = Field(min_length=1, max_length=MAX_TEXT)


FeaturePath = Annotated[int, Field(ge=0, le=2**31 - 1)]
FEATURE = "/saes/{sae_id}/features/{feature}"
EXPLANATION = FEATURE + "/explanations/{explanation_id}"


def both(path: str) -> tuple[str, str]:
    """A store route's short form (the first model) and its /models/{model} form."""
    return path, "/models/{model}" + path


async def model_slug(request: Request, model: str | None = None) -> str:
    """The path's model (or ?model=), else the deployment's first."""
    return model or await request.app.state.deployment.default_name()


ModelDep = Annotated[str, Depends(model_slug)]  # resolved here, so that the routes stay plain `def` (on a thread)


@router.get(both(FEATURE)[0], responses=ERR)
@router.get(both(FEATURE)[1], responses=ERR)
def feature_dashboard(sae_id: str, feature: FeaturePath, session: SessionDep, model: ModelDep) -> dict:
    return features.feature_dashboard(session, model_slug=model, sae_id=sae_id,
                                      feature=feature)


@router.get(both(FEATURE + "/explanations")[0], responses=ERR)
@router.get(both(FEATURE + "/explanations")[1], responses=ERR)
def list_explanations(sae_id: str, feature: FeaturePath, session: SessionDep, model: ModelDep) -> list[dict]:
    return features.list_explanations(session, model_slug=model, sae_id=sae_id,
                                      feature=feature)


@router.post(both(FEATURE + "/explanations")[0], status_code=201, responses=WRITE_ERR)
@router.post(both(FEATURE + "/explanations")[1], status_code=201, responses=WRITE_ERR)
def add_explanation(sae_id: str, feature: FeaturePath, body: ExplanationIn,
                          session: SessionDep, key: WriterDep, model: ModelDep) -> dict:
    return features.add_explanation(session, model_slug=model, sae_id=sae_id,
                                    feature=feature, text=body.text, author=key.name, source=body.source,
                                    score=body.score, key=key)


@router.patch(both(EXPLANATION)[0], responses=WRITE_ERR)
@router.patch(both(EXPLANATION)[1], responses=WRITE_ERR)
def edit_explanation(sae_id: str, feature: FeaturePath, explanation_id: FeaturePath,
                           body: ExplanationEdit, session: SessionDep, key: WriterDep, model: ModelDep) -> dict:
    return features.edit_explanation(session, model_slug=model, sae_id=sae_id,
                                     feature=feature, explanation_id=explanation_id, text=body.text, by=key)


@router.delete(both(EXPLANATION)[0], status_code=204, responses=WRITE_ERR)
@router.delete(both(EXPLANATION)[1], status_code=204, responses=WRITE_ERR)
def delete_explanation(sae_id: str, feature: FeaturePath, explanation_id: FeaturePath,
                             session: SessionDep, key: WriterDep, model: ModelDep) -> Response:
    features.remove_explanation(session, model_slug=model, sae_id=sae_id,
                                feature=feature, explanation_id=explanation_id, by=key)
    return Response(status_code=204)


class ScoreIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: str = Field(min_length=1, max_length=MAX_TEXT)
    scorers: list[Literal["detection", "fuzzing", "embedding"]] = Field(default=["embedding"], min_length=1)


class ExplainIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    explainer: Literal["baseline", "llm"] = "baseline"
    scorers: list[Literal["detection", "fuzzing", "embedding"]] = Field(default=["embedding"])


@router.post(both(FEATURE + "/score")[0], dependencies=[RateLimited], responses=ERR)
@router.post(both(FEATURE + "/score")[1], dependencies=[RateLimited], responses=ERR)
async def score_explanation(sae_id: str, feature: FeaturePath, body: ScoreIn, session: SessionDep, model: ModelDep,
                            request: Request, settings: SettingsDep) -> dict:
    """Scores of any explanation text (delphi's detection, fuzzing, embedding); nothing is stored."""
    return await interpretation.score_text(session, deployment=request.app.state.deployment, settings=settings,
                                           model_slug=model,
                                           sae_id=sae_id, feature=feature, text=body.text, scorers=body.scorers)


@router.post(both(FEATURE + "/explain")[0], status_code=201, dependencies=[RateLimited], responses=WRITE_ERR)
@router.post(both(FEATURE + "/explain")[1], status_code=201, dependencies=[RateLimited], responses=WRITE_ERR)
async def explain_feature(sae_id: str, feature: FeaturePath, body: ExplainIn, session: SessionDep, key: WriterDep,
                          model: ModelDep, request: Request, settings: SettingsDep) -> dict:
    """Explain the feature (baseline or language model), score the explanation, store both."""
    return await interpretation.explain_feature(session, deployment=request.app.state.deployment,
                                                settings=settings, model_slug=model,
                                                sae_id=sae_id, feature=feature, explainer=body.explainer,
                                                scorers=body.scorers, author=key.name)


def semantic_indexes(request: Request) -> semantic.SemanticIndexes:
    return semantic.indexes_of(request.app.state)


SemanticDep = Annotated[semantic.SemanticIndexes, Depends(semantic_indexes)]


@router.get(both("/explanations/search")[0])
@router.get(both("/explanations/search")[1])
async def search_explanations(request: Request, session: SessionDep, model: ModelDep, indexes: SemanticDep,
                              q: Annotated[str, Query(min_length=1, max_length=500)],
                              limit: Annotated[int, Query(ge=1, le=200)] = 50,
                              mode: Annotated[Literal["text", "semantic"], Query(
                                  description="text: full-text; semantic: by meaning (needs a worker to embed "
                                              "the query; answers full-text with a message when none can)")] = "text"
                              ) -> dict:
    return await semantic.search(deployment=request.app.state.deployment, indexes=indexes, session=session,
                                 model_slug=model, q=q, limit=limit, mode=mode)

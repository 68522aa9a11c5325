"""Store-backed endpoints of the public API (shared/api.md): feature dashboards, explanations and their search.
Thin: parse, call one service function, answer."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Response
from pydantic import BaseModel, ConfigDict, Field

from app import protocol as P
from app.store.explanations import MAX_TEXT
from app.web import services
from app.web.auth import WriterDep
from app.web.deps import SessionDep, SettingsDep

router = APIRouter(prefix="/api/v1", tags=["store"], responses=P.error_responses(400, 413, 422, 503))
ERR = P.error_responses(404)


class ExplanationIn(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    text: str = Field(min_length=1, max_length=MAX_TEXT)
    source: str = Field(default="human", pattern="^(human|automatic)$")
    score: float | None = Field(default=None, ge=-1e6, le=1e6)


class ExplanationEdit(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: str = Field(min_length=1, max_length=MAX_TEXT)


def _not_found(exc: services.NotFound) -> HTTPException:
    return HTTPException(404, str(exc))


FeaturePath = Annotated[int, Field(ge=0, le=2**31 - 1)]


@router.get("/saes/{sae_id}/features/{feature}", responses=ERR)
def feature_dashboard(sae_id: str, feature: FeaturePath, session: SessionDep, settings: SettingsDep) -> dict:
    try:
        return services.feature_dashboard(session, model_slug=settings.served_slug(), sae_id=sae_id, feature=feature)
    except services.NotFound as exc:
        raise _not_found(exc) from exc


@router.get("/saes/{sae_id}/features/{feature}/explanations", responses=ERR)
def list_explanations(sae_id: str, feature: FeaturePath, session: SessionDep, settings: SettingsDep) -> list[dict]:
    try:
        return services.list_explanations(session, model_slug=settings.served_slug(), sae_id=sae_id, feature=feature)
    except services.NotFound as exc:
        raise _not_found(exc) from exc


@router.post("/saes/{sae_id}/features/{feature}/explanations", status_code=201,
             responses={**ERR, **P.error_responses(401, 403)})
def add_explanation(sae_id: str, feature: FeaturePath, body: ExplanationIn, session: SessionDep,
                    settings: SettingsDep, key: WriterDep) -> dict:
    try:
        return services.add_explanation(session, model_slug=settings.served_slug(), sae_id=sae_id, feature=feature,
                                        text=body.text, author=key.name, source=body.source, score=body.score)
    except services.NotFound as exc:
        raise _not_found(exc) from exc


@router.patch("/saes/{sae_id}/features/{feature}/explanations/{explanation_id}",
              responses={**ERR, **P.error_responses(401, 403)})
def edit_explanation(sae_id: str, feature: FeaturePath, explanation_id: FeaturePath, body: ExplanationEdit,
                     session: SessionDep, settings: SettingsDep, key: WriterDep) -> dict:
    try:
        return services.edit_explanation(session, model_slug=settings.served_slug(), sae_id=sae_id, feature=feature,
                                         explanation_id=explanation_id, text=body.text)
    except services.NotFound as exc:
        raise _not_found(exc) from exc


@router.delete("/saes/{sae_id}/features/{feature}/explanations/{explanation_id}", status_code=204,
               responses={**ERR, **P.error_responses(401, 403)})
def delete_explanation(sae_id: str, feature: FeaturePath, explanation_id: FeaturePath, session: SessionDep,
                       settings: SettingsDep, key: WriterDep) -> Response:
    try:
        services.remove_explanation(session, model_slug=settings.served_slug(), sae_id=sae_id, feature=feature,
                                    explanation_id=explanation_id)
    except services.NotFound as exc:
        raise _not_found(exc) from exc
    return Response(status_code=204)


@router.get("/explanations/search")
def search_explanations(session: SessionDep, settings: SettingsDep,
                        q: Annotated[str, Query(min_length=1, max_length=500)],
                        limit: Annotated[int, Query(ge=1, le=200)] = 50) -> dict:
    return {"query": q,
            "results": services.search_explanations(session, model_slug=settings.served_slug(), q=q, limit=limit)}

"""The feature page's interpretation forms: score any explanation text (nothing stored; the answer is a fragment)
and, signed in, explain the feature with the language model (the explanation and its scores are stored)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import HTMLResponse, Response

from app.store.explanations import MAX_TEXT
from app.web.auth import CallerDep, csrf_protect
from app.web.deps import SessionDep, SettingsDep
from app.web.pages.feature_pages import SIGN_IN, Feature, feature_context
from app.web.pages.render import render
from app.web.services import interpretation
from app.web.services.errors import Invalid
from app.web.worker_client import WorkerError, WorkerUnavailable

router = APIRouter(include_in_schema=False, dependencies=[Depends(csrf_protect)])
SCORERS = ("embedding", "detection", "fuzzing")


@router.post("/{model}/{sae_id}/{feature}/score", response_class=HTMLResponse)
async def score_form(request: Request, model: str, sae_id: str, feature: Feature, session: SessionDep,
                     settings: SettingsDep, text: Annotated[str, Form(min_length=1, max_length=MAX_TEXT)],
                     scorer: Annotated[list[str], Form()] = ("embedding",)) -> Response:
    ctx = {"model_slug": model, "sae_id": sae_id, "feature": feature, "text": text}
    try:
        result = await interpretation.score_text(session, deployment=request.app.state.deployment, settings=settings,
                                                 model_slug=model, sae_id=sae_id, feature=feature, text=text,
                                                 scorers=[s for s in SCORERS if s in scorer] or ["embedding"])
    except Invalid as exc:
        return render(request, "score_result.html", {**ctx, "error": str(exc)}, status_code=422)
    except (WorkerError, WorkerUnavailable) as exc:
        return render(request, "score_result.html", {**ctx, "error": exc.detail}, status_code=503)
    return render(request, "score_result.html", {**ctx, **result})


@router.post("/{model}/{sae_id}/{feature}/explain", response_class=HTMLResponse)
async def explain_form(request: Request, model: str, sae_id: str, feature: Feature, session: SessionDep,
                       settings: SettingsDep, who: CallerDep) -> Response:
    if who is None:
        ctx = feature_context(session, model, sae_id, feature)
        return render(request, "explanations.html", {**ctx, "form_error": SIGN_IN}, status_code=401)
    error = None
    try:
        await interpretation.explain_feature(session, deployment=request.app.state.deployment, settings=settings,
                                             model_slug=model, sae_id=sae_id, feature=feature, explainer="llm",
                                             scorers=["embedding"], author=who.name)
    except Invalid as exc:
        error = str(exc)
    except (WorkerError, WorkerUnavailable) as exc:
        error = exc.detail
    ctx = feature_context(session, model, sae_id, feature)
    return render(request, "explanations.html", {**ctx, "form_error": error}, status_code=422 if error else 200)

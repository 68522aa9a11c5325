"""The prompt explorer (/ and saved analyses at /p/{id}): a prompt's tokens, the features that fire on each per
layer with per-head contributions and explanations, a selected feature's activation over the tokens, and the
DFA of a selected token; with no prompt, the models and SAE sets this deployment serves. The state (model, text,
layer, feature, position) lives in the URL."""

from __future__ import annotations

from typing import Annotated
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Form, Query, Request
from fastapi.responses import HTMLResponse, Response

from app.protocol import MAX_TEXT_CHARS, Slug
from app.web.api.model_routes import DeploymentDep
from app.web.auth import CallerDep, csrf_protect
from app.web.deps import SessionDep, SettingsDep
from app.web.pages.render import redirect, render
from app.web.services import explorer as service
from app.web.services import models as model_service

router = APIRouter(include_in_schema=False, dependencies=[Depends(csrf_protect)])
Layer = Annotated[int | None, Query(ge=0, le=1000)]
Index = Annotated[int | None, Query(ge=0, le=2**31 - 1)]


def state_url(base: str = "/", **state) -> str:
    return base + "?" + urlencode({k: v for k, v in state.items() if v is not None and v != ""})


async def explorer_page(request: Request, ctx: dict, deployment, session, saved_id: str | None = None) -> Response:
    model = ctx["model"]

    def url(base: str = "/", **state) -> str:  # every link keeps the model the page is about
        return state_url(base, **{"model": model, **state})

    ctx = {**ctx, "state_url": url, "saved_id": saved_id, "max_chars": MAX_TEXT_CHARS}
    if not ctx["text"]:
        ctx["models"] = await model_service.model_cards(deployment=deployment, session=session)
    return render(request, "explorer.html", ctx, status_code=503 if ctx.get("retry_after") else 200)


@router.get("/", response_class=HTMLResponse)
async def explorer(request: Request, deployment: DeploymentDep, session: SessionDep,
                   text: Annotated[str, Query(max_length=MAX_TEXT_CHARS)] = "", layer: Layer = None,
                   feature: Index = None, pos: Index = None, model: Annotated[Slug | None, Query()] = None) -> Response:
    state = service.ExplorerState(text=text, layer=layer, feature=feature, pos=pos, model=model)
    ctx = await service.explore(deployment=deployment, session=session, state=state)
    return await explorer_page(request, ctx, deployment, session)


@router.post("/p")
async def save_analysis(request: Request, deployment: DeploymentDep, session: SessionDep, settings: SettingsDep,
                        who: CallerDep, text: Annotated[str, Form(min_length=1, max_length=MAX_TEXT_CHARS)],
                        layer: Annotated[int | None, Form(ge=0, le=1000)] = None,
                        feature: Annotated[int | None, Form(ge=0, le=2**31 - 1)] = None,
                        pos: Annotated[int | None, Form(ge=0, le=2**31 - 1)] = None,
                        model: Annotated[Slug | None, Form()] = None) -> Response:
    state = service.ExplorerState(text=text, layer=layer, feature=feature, pos=pos, model=model)
    if settings.saves_need_sign_in and who is None:  # off to sign in, then back to this analysis
        back = state_url(text=text, layer=layer, feature=feature, pos=pos, model=model)
        return redirect(request, "/sign-in?" + urlencode({"next": back}))
    slug = model or await deployment.default_name()
    return redirect(request, f"/p/{service.save_analysis(session=session, model_slug=slug, state=state)}")


@router.get("/p/{result_id}", response_class=HTMLResponse)
async def saved_analysis(request: Request, result_id: str, deployment: DeploymentDep,
                         session: SessionDep) -> Response:
    state = service.saved_state(session=session, result_id=result_id)
    ctx = await service.explore(deployment=deployment, session=session, state=state)
    return await explorer_page(request, ctx, deployment, session, saved_id=result_id)

"""The prompt explorer (/ and saved analyses at /p/{id}): a prompt's tokens coloured by the layer's strongest feature
or a chosen one, the features that fire on each per layer with per-head contributions and explanations, a selected
feature's activation over the tokens, and the DFA of a selected token; with no prompt, the models and SAE sets this
deployment serves. The state (model, text, layer, feature, position) lives in the URL; long prompts are posted and
live behind a saved analysis's short permalink instead."""

from __future__ import annotations

from typing import Annotated
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Form, Query, Request
from fastapi.responses import HTMLResponse, Response

from app.protocol import MAX_TEXT_CHARS, Slug
from app.web.api.model_routes import DeploymentDep
from app.web.auth import CallerDep, csrf_protect
from app.web.deps import SessionDep, SettingsDep
from app.web.pages.feature_pages import embed_headers
from app.web.pages.render import redirect, render
from app.web.saves import SaveLimitsDep
from app.web.services import explorer as service
from app.web.services import models as model_service

router = APIRouter(include_in_schema=False, dependencies=[Depends(csrf_protect)])
Layer = Annotated[int | None, Query(ge=0, le=1000)]
Index = Annotated[int | None, Query(ge=0, le=2**31 - 1)]
Flag = Annotated[bool, Query()]


def state_url(base: str = "/", **state) -> str:
    return base + "?" + urlencode({k: v for k, v in state.items() if v is not None and v != "" and v is not False})


async def explorer_page(request: Request, ctx: dict, deployment, session, saved_id: str | None = None,
                        embed_for: str | None = None) -> Response:
    """embed_for: the sites that may frame this page (SAEX_FRAME_ANCESTORS), for a saved analysis's embed view."""
    model = ctx["model"]

    def url(base: str = "/", **state) -> str:
        """A link to another state of this page: the prompt and model travel in it, or for a saved analysis only
        its id (/p/{id}?layer=..), so that no link carries a long prompt."""
        if saved_id is not None:
            state.pop("text", None)
            return state_url(f"/p/{saved_id}", moved=1, **state)
        return state_url(base, **{"model": model, **state})

    ctx = {**ctx, "state_url": url, "saved_id": saved_id, "max_chars": MAX_TEXT_CHARS,
           "long_text": service.LONG_TEXT, "shown_max": service.SHOWN}
    if not ctx["text"]:
        ctx["models"] = await model_service.model_cards(deployment=deployment, session=session)
    headers = None
    if embed_for is not None:
        ctx["embed"], headers = True, embed_headers(embed_for)
    return render(request, "explorer.html", ctx, status_code=503 if ctx.get("retry_after") else 200, headers=headers)


@router.get("/", response_class=HTMLResponse)
async def explorer(request: Request, deployment: DeploymentDep, session: SessionDep,
                   text: Annotated[str, Query(max_length=MAX_TEXT_CHARS)] = "", layer: Layer = None,
                   feature: Index = None, pos: Index = None, model: Annotated[Slug | None, Query()] = None,
                   all: Flag = False, truncate: Flag = False) -> Response:
    state = service.ExplorerState(text=text, layer=layer, feature=feature, pos=pos, model=model, all=all,
                                  truncate=truncate)
    ctx = await service.explore(deployment=deployment, session=session, state=state)
    return await explorer_page(request, ctx, deployment, session)


@router.post("/p")
async def save_analysis(request: Request, deployment: DeploymentDep, session: SessionDep, settings: SettingsDep,
                        who: CallerDep, limits: SaveLimitsDep,
                        text: Annotated[str, Form(min_length=1, max_length=MAX_TEXT_CHARS)],
                        layer: Annotated[int | None, Form(ge=0, le=1000)] = None,
                        feature: Annotated[int | None, Form(ge=0, le=2**31 - 1)] = None,
                        pos: Annotated[int | None, Form(ge=0, le=2**31 - 1)] = None,
                        model: Annotated[Slug | None, Form()] = None,
                        truncate: Annotated[bool, Form()] = False) -> Response:
    """Save an analysis behind a permalink: the Save button's, and the prompt form's for prompts too long for a
    URL (which may ask for the first n_ctx tokens: the cut text is what is saved)."""
    state = service.ExplorerState(text=text, layer=layer, feature=feature, pos=pos, model=model, truncate=truncate)
    if settings.saves_need_sign_in and who is None:
        if len(text) > service.LONG_TEXT:  # too long for a URL: shown here, unsaved
            ctx = await service.explore(deployment=deployment, session=session, state=state)
            ctx["notes"].append("Not saved: this server saves analyses for signed-in users only.")
            return await explorer_page(request, ctx, deployment, session)
        back = state_url(text=text, layer=layer, feature=feature, pos=pos, model=model)
        return redirect(request, "/sign-in?" + urlencode({"next": back}))  # off to sign in, then back here
    saved = await service.save_posted(deployment=deployment, session=session, state=state, limits=limits)
    return redirect(request, f"/p/{saved}")


@router.get("/p/{result_id}", response_class=HTMLResponse)
async def saved_analysis(request: Request, result_id: str, deployment: DeploymentDep, session: SessionDep,
                         settings: SettingsDep, layer: Layer = None, feature: Index = None, pos: Index = None,
                         all: Flag = False, moved: Flag = False, embed: Flag = False) -> Response:
    """?embed=1: without the site's chrome, framed only by SAEX_FRAME_ANCESTORS (as feature pages' embed view)."""
    state = service.saved_state(session=session, result_id=result_id, layer=layer, feature=feature, pos=pos,
                                show_all=all, moved=moved)
    ctx = await service.explore(deployment=deployment, session=session, state=state)
    return await explorer_page(request, ctx, deployment, session, saved_id=result_id,
                               embed_for=settings.frame_ancestors if embed else None)

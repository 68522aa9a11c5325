"""The steering page (/{model}/steer; results at /s/{id}): features picked by layer and index (or from a feature
page), mode, value (or strength in multiples of the feature's max activation), optional heads and positions; the
default and steered continuations side by side with per-token log-probabilities and where they part, saved behind a
permalink. A form sent back with an error keeps every field as typed."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Form, Query, Request
from fastapi.responses import HTMLResponse, Response
from pydantic import ValidationError

from app import protocol as P
from app.serving.api_errors import field_path
from app.web.api.model_routes import DeploymentDep
from app.web.auth import CallerDep, csrf_protect
from app.web.deps import SessionDep, SettingsDep
from app.web.pages.feature_pages import embed_headers
from app.web.pages.render import redirect, render
from app.web.saves import SaveLimitsDep
from app.web.services import steering as service
from app.web.services.errors import NotFound
from app.web.worker_client import WorkerError, WorkerUnavailable

router = APIRouter(include_in_schema=False, dependencies=[Depends(csrf_protect)])


async def page(request: Request, model: str, draft: dict, status: int = 200, session=None, deployment=None,
               **ctx) -> Response:
    rows = draft.get("interventions") or []
    if session is not None:  # each picked feature's best explanation and max activation beside its id
        service.explain_rows(session=session, model_slug=model, rows=rows)
    if status == 200:  # a form sent back with an error keeps its rows exactly; otherwise one blank row to fill
        draft["interventions"] = service.with_blank_row(rows)
    n_ctx = left = None
    if deployment is not None:  # the tokens field's limit: what fits the model's context after the prompt
        try:
            n_ctx, left = await service.context_left(deployment=deployment, model=model, text=draft.get("text", ""))
        except (WorkerError, WorkerUnavailable, NotFound):
            pass
    result = ctx.get("result")
    if result:
        ctx["diverge"] = service.divergence(result["default"]["token_ids"], result["steered"]["token_ids"])
    max_tokens = max(left, 0) if left is not None else n_ctx - 1 if n_ctx else 1024  # 1024: the contract's limit
    frame_ancestors = ctx.pop("frame_ancestors", "")
    headers = embed_headers(frame_ancestors) if ctx.get("embed") else None
    return render(request, "steer.html", {"model_slug": model, "draft": draft, "result": None,
                                          "steer_modes": P.STEER_MODES, "n_ctx": n_ctx, "max_tokens": max_tokens,
                                          **ctx}, status, headers=headers)


@router.get("/{model}/steer", response_class=HTMLResponse)
async def steer_form(request: Request, model: str, deployment: DeploymentDep, session: SessionDep,
                     layer: Annotated[int | None, Query(ge=0, le=1000)] = None,
                     feature: Annotated[int | None, Query(ge=0, le=2**31 - 1)] = None) -> Response:
    await deployment.model(model)  # NotFound unless a worker hosts it
    draft = service.new_draft(session=session, model_slug=model, layer=layer, feature=feature)
    return await page(request, model, draft, deployment=deployment)


@router.post("/{model}/steer", response_class=HTMLResponse)
async def steer_run(request: Request, model: str, deployment: DeploymentDep, session: SessionDep,
                    settings: SettingsDep, who: CallerDep, limits: SaveLimitsDep,
                    text: Annotated[str, Form(max_length=P.MAX_TEXT_CHARS)] = "",
                    max_new_tokens: Annotated[int, Form(ge=0, le=1024)] = 24,
                    temperature: Annotated[float, Form(ge=0, le=10)] = 0.0,
                    seed: Annotated[int, Form(ge=0, le=2**31 - 1)] = 0,
                    layer: Annotated[list[str], Form()] = (), feature: Annotated[list[str], Form()] = (),
                    mode: Annotated[list[str], Form()] = (), value: Annotated[list[str], Form()] = (),
                    heads: Annotated[list[str], Form()] = (), positions: Annotated[list[str], Form()] = ()) -> Response:
    form = service.SteerForm(text, max_new_tokens, temperature, seed, list(layer), list(feature), list(mode),
                             list(value), list(heads), list(positions))
    draft = {"text": text, "max_new_tokens": max_new_tokens, "temperature": temperature, "seed": seed,
             "interventions": form.rows()}
    save = not (settings.saves_need_sign_in and who is None)  # else shown, not saved
    try:
        out = await service.steer_and_save(deployment=deployment, session=session, body=form.request(model),
                                           save=save, limits=limits)
    except ValidationError as exc:
        problems = "; ".join(f"{field_path(e['loc'])}: {e['msg']}" for e in exc.errors()[:4])
        return await page(request, model, draft, 422, session, deployment, error=problems)
    except ValueError as exc:
        return await page(request, model, draft, 422, session, deployment, error=str(exc))
    except WorkerError as exc:
        status = exc.status if exc.status < 500 else 503
        return await page(request, model, draft, status, session, deployment, error=exc.detail)
    except WorkerUnavailable as exc:
        why = f"The inference worker is unavailable: {exc.detail}"
        return await page(request, model, draft, 503, session, error=why)
    if out.permalink is None:
        return await page(request, model, draft, session=session, deployment=deployment, result=out.model_dump())
    return redirect(request, out.permalink)


@router.get("/s/{result_id}", response_class=HTMLResponse)
async def steer_result(request: Request, result_id: str, session: SessionDep, deployment: DeploymentDep,
                       settings: SettingsDep, embed: Annotated[bool, Query()] = False) -> Response:
    """?embed=1: without the site's chrome, framed only by SAEX_FRAME_ANCESTORS (as feature pages' embed view)."""
    model, body, result = service.saved_steering(session=session, result_id=result_id)
    return await page(request, model, service.draft_of(body), session=session, deployment=deployment, result=result,
                      saved_id=result_id, embed=embed, frame_ancestors=settings.frame_ancestors)

"""The prompt explorer (/ and saved analyses at /p/{id}): a prompt's tokens, the features that fire on each per
layer with per-head contributions and explanations, a selected feature's activation over the tokens, and the
DFA of a selected token. The state (text, layer, feature, position) lives in the URL."""

from __future__ import annotations

from typing import Annotated
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Form, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from app.protocol import MAX_TEXT_CHARS
from app.store import explanations, results
from app.store.dashboards import find_sae
from app.web import figures, services
from app.web.api.model_routes import WorkerDep
from app.web.auth import CallerDep, csrf_protect
from app.web.deps import SessionDep, SettingsDep
from app.web.pages.render import render
from app.web.worker_client import WorkerClient, WorkerError, WorkerUnavailable

router = APIRouter(include_in_schema=False, dependencies=[Depends(csrf_protect)])


def state_url(base: str = "/", **state) -> str:
    return base + "?" + urlencode({k: v for k, v in state.items() if v is not None and v != ""})


async def explore(worker: WorkerClient, session, model_slug: str, text: str, layer: int | None,
                  feature: int | None, pos: int | None) -> dict:
    """Everything the explorer shows for this state; worker problems become a message, never a broken page."""
    ctx: dict = {"text": text, "layer": layer, "feature": feature, "pos": pos, "error": None, "analysis": None,
                 "build": services.build_status(session, model_slug=model_slug)}
    if not text:
        return ctx
    try:
        info = await worker.request("GET", "/v1/info")
        layers = [s["layer"] for s in info["saes"]]
        layer = layer if layer in layers else layers[-1]
        ctx.update(layer=layer, layers=layers, saes={s["layer"]: s for s in info["saes"]})
        analysis = await worker.request("POST", "/v1/analyze", {"text": text, "layers": [layer], "top_k": 8,
                                                                "head_contributions": True})
        ctx["analysis"] = analysis
        ctx["tokens"] = analysis["tokens"]
        ctx["rows"] = analysis["layers"][0]["top_features"]
        ctx["l0"] = analysis["layers"][0]["l0"]
        if pos is not None and not 0 <= pos < len(ctx["tokens"]):
            pos = ctx["pos"] = None
        if feature is not None:
            trace = await worker.request("POST", "/v1/feature-trace", {"text": text, "layer": layer,
                                                                       "feature": feature})
            ctx["trace"] = trace
            if pos is not None:
                dfa = await worker.request("POST", "/v1/dfa", {"text": text, "layer": layer, "feature": feature,
                                                               "position": pos})
                ctx["dfa"] = dfa
                ctx["dfa_sources"] = [sum(col) for col in zip(*dfa["contributions"], strict=True)]
                ctx["dfa_figure"] = figures.dfa_heatmap(dfa["contributions"], dfa["tokens"], pos)
                ctx["dfa_heads_figure"] = figures.head_bars([sum(r) for r in dfa["contributions"]],
                                                            "Each head's contribution", "pre-activation")
    except WorkerError as exc:
        ctx["error"] = exc.detail
    except WorkerUnavailable as exc:
        ctx["error"] = f"The inference worker is unavailable: {exc.detail}. Try again in {exc.retry_after} s."
        ctx["retry_after"] = exc.retry_after
    if ctx.get("rows"):
        sae = find_sae(session, sae_slug=f"L{ctx['layer']}", model_slug=model_slug)
        wanted = {e["feature"] for row in ctx["rows"] for e in row} | ({feature} if feature is not None else set())
        ctx["explained"] = explanations.first_text(session, sae=sae, features=wanted) if sae else {}
    return ctx


def page_context(ctx: dict, settings, saved_id: str | None = None) -> dict:
    return {**ctx, "model_slug": settings.served_slug(), "state_url": state_url, "saved_id": saved_id,
            "max_chars": MAX_TEXT_CHARS}


@router.get("/", response_class=HTMLResponse)
async def explorer(request: Request, worker: WorkerDep, session: SessionDep, settings: SettingsDep,
                   text: Annotated[str, Query(max_length=MAX_TEXT_CHARS)] = "",
                   layer: Annotated[int | None, Query(ge=0, le=1000)] = None,
                   feature: Annotated[int | None, Query(ge=0, le=2**31 - 1)] = None,
                   pos: Annotated[int | None, Query(ge=0, le=2**31 - 1)] = None) -> Response:
    ctx = await explore(worker, session, settings.served_slug(), text, layer, feature, pos)
    status = 503 if ctx.get("retry_after") else 200
    return render(request, "explorer.html", page_context(ctx, settings), status_code=status)


@router.post("/p")
async def save_analysis(request: Request, session: SessionDep, settings: SettingsDep, who: CallerDep,
                        text: Annotated[str, Form(min_length=1, max_length=MAX_TEXT_CHARS)],
                        layer: Annotated[int | None, Form(ge=0, le=1000)] = None,
                        feature: Annotated[int | None, Form(ge=0, le=2**31 - 1)] = None,
                        pos: Annotated[int | None, Form(ge=0, le=2**31 - 1)] = None) -> Response:
    if settings.saves_need_sign_in and who is None:  # off to sign in, then back to this analysis
        target = "/sign-in?" + urlencode({"next": state_url(text=text, layer=layer, feature=feature, pos=pos)})
        if request.headers.get("HX-Request") == "true":
            return Response(status_code=204, headers={"HX-Redirect": target})
        return RedirectResponse(target, status_code=303)
    saved = results.save(session, kind="analysis", model_slug=settings.served_slug(),
                         payload={"text": text, "layer": layer, "feature": feature, "pos": pos})
    target = f"/p/{saved.id}"
    if request.headers.get("HX-Request") == "true":
        return Response(status_code=204, headers={"HX-Redirect": target})
    return RedirectResponse(target, status_code=303)


@router.get("/p/{result_id}", response_class=HTMLResponse)
async def saved_analysis(request: Request, result_id: str, worker: WorkerDep, session: SessionDep,
                         settings: SettingsDep) -> Response:
    saved = results.load(session, result_id=result_id, kind="analysis")
    if saved is None:
        raise HTTPException(404, f"there is no saved analysis {result_id!r}")
    p = saved.payload
    ctx = await explore(worker, session, settings.served_slug(), p["text"], p.get("layer"), p.get("feature"),
                        p.get("pos"))
    return render(request, "explorer.html", page_context(ctx, settings, saved_id=result_id))

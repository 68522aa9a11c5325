"""The steering page (/{model}/steer; results at /s/{id}): features picked by layer and index (or from a feature
page), mode, value, optional heads and positions; the default and steered continuations side by side with
per-token log-probabilities, saved behind a permalink."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Form, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from pydantic import ValidationError

from app import protocol as P
from app.serving.api_errors import field_path
from app.store import results
from app.web.api.model_routes import WorkerDep
from app.web.auth import CallerDep, csrf_protect
from app.web.deps import SessionDep, SettingsDep
from app.web.pages.render import render
from app.web.services import NotFound
from app.web.worker_client import WorkerError, WorkerUnavailable

router = APIRouter(include_in_schema=False, dependencies=[Depends(csrf_protect)])


def parse_ints(text: str, what: str) -> list[int] | None:
    """'0, 3 5' -> [0, 3, 5]; blank -> None (all)."""
    parts = text.replace(",", " ").split()
    if not parts:
        return None
    try:
        return [int(p) for p in parts]
    except ValueError as exc:
        raise ValueError(f"{what} must be whole numbers separated by commas, got {text!r}") from exc


def form_number(text: str, kind: type, what: str):
    """A form field (always text) as the number the API wants, or a message that says what to type."""
    try:
        return kind(str(text).strip())
    except ValueError as exc:
        word = "a whole number" if kind is int else "a number"
        raise ValueError(f"{what} must be {word}, got {text!r}") from exc


def steer_form_request(text: str, max_new_tokens: int, temperature: float, seed: int, layer: list[str],
                       feature: list[str], mode: list[str], value: list[str], heads: list[str],
                       positions: list[str]) -> P.SteerRequest:
    interventions = []
    for i, (lay, feat) in enumerate(zip(layer, feature, strict=False)):
        if not str(feat).strip():
            continue
        interventions.append({
            "layer": form_number(lay, int, f"row {i + 1}: layer"),
            "feature": form_number(feat, int, f"row {i + 1}: feature"),
            "mode": mode[i] if i < len(mode) else "add",
            "value": form_number(value[i] if i < len(value) and str(value[i]).strip() else "0", float,
                                 f"row {i + 1}: value"),
            "heads": parse_ints(heads[i] if i < len(heads) else "", "heads"),
            "positions": parse_ints(positions[i] if i < len(positions) else "", "positions"),
        })
    return P.SteerRequest(text=text, max_new_tokens=max_new_tokens, temperature=temperature, seed=seed,
                          top_logprobs=5, interventions=interventions)


@router.get("/{model}/steer", response_class=HTMLResponse)
def steer_form(request: Request, model: str, settings: SettingsDep,
               layer: Annotated[int | None, Query(ge=0, le=1000)] = None,
               feature: Annotated[int | None, Query(ge=0, le=2**31 - 1)] = None) -> Response:
    if model != settings.served_slug():
        raise NotFound(f"this server serves model {settings.served_slug()!r}, not {model!r}")
    draft = {"text": "", "max_new_tokens": 24, "temperature": 0.0, "seed": 0,
             "interventions": [{"layer": layer if layer is not None else "", "feature": feature if feature is not None
                                else "", "mode": "add", "value": 8.0, "heads": None, "positions": None}]}
    return render(request, "steer.html", {"model_slug": model, "draft": draft, "result": None})


@router.post("/{model}/steer", response_class=HTMLResponse)
async def steer_run(request: Request, model: str, worker: WorkerDep, session: SessionDep, settings: SettingsDep,
                    who: CallerDep,
                    text: Annotated[str, Form(max_length=P.MAX_TEXT_CHARS)] = "",
                    max_new_tokens: Annotated[int, Form(ge=0, le=1024)] = 24,
                    temperature: Annotated[float, Form(ge=0, le=10)] = 0.0,
                    seed: Annotated[int, Form(ge=0, le=2**31 - 1)] = 0,
                    layer: Annotated[list[str], Form()] = (), feature: Annotated[list[str], Form()] = (),
                    mode: Annotated[list[str], Form()] = (), value: Annotated[list[str], Form()] = (),
                    heads: Annotated[list[str], Form()] = (), positions: Annotated[list[str], Form()] = ()) -> Response:
    if model != settings.served_slug():
        raise NotFound(f"this server serves model {settings.served_slug()!r}, not {model!r}")
    draft = {"text": text, "max_new_tokens": max_new_tokens, "temperature": temperature, "seed": seed,
             "interventions": [{"layer": a, "feature": b, "mode": c, "value": d, "heads": e, "positions": f}
                               for a, b, c, d, e, f in zip(layer, feature, mode, value, heads, positions,
                                                           strict=False)]}
    try:
        body = steer_form_request(text, max_new_tokens, temperature, seed, list(layer), list(feature), list(mode),
                                  list(value), list(heads), list(positions))
        out = await worker.request("POST", "/v1/steer", body.model_dump())
    except ValidationError as exc:
        problems = "; ".join(f"{field_path(e['loc'])}: {e['msg']}" for e in exc.errors()[:4])
        return render(request, "steer.html", {"model_slug": model, "draft": draft, "error": problems}, 422)
    except ValueError as exc:
        return render(request, "steer.html", {"model_slug": model, "draft": draft, "error": str(exc)}, 422)
    except WorkerError as exc:
        return render(request, "steer.html", {"model_slug": model, "draft": draft, "error": exc.detail},
                      exc.status if exc.status < 500 else 503)
    except WorkerUnavailable as exc:
        return render(request, "steer.html", {"model_slug": model, "draft": draft,
                                              "error": f"The inference worker is unavailable: {exc.detail}"}, 503)
    if settings.saves_need_sign_in and who is None:  # shown, not saved
        return render(request, "steer.html", {"model_slug": model, "draft": draft, "result": out})
    saved = results.save(session, kind="steering", model_slug=model,
                         payload={"request": body.model_dump(), "result": out})
    target = f"/s/{saved.id}"
    if request.headers.get("HX-Request") == "true":
        return Response(status_code=204, headers={"HX-Redirect": target})
    return RedirectResponse(target, status_code=303)


@router.get("/s/{result_id}", response_class=HTMLResponse)
def steer_result(request: Request, result_id: str, session: SessionDep, settings: SettingsDep) -> Response:
    saved = results.load(session, result_id=result_id, kind="steering")
    if saved is None:
        raise HTTPException(404, f"there is no saved steering result {result_id!r}")
    req = saved.payload["request"]
    draft = {**req, "interventions": [{**i, "heads": ", ".join(map(str, i["heads"] or [])),
                                       "positions": ", ".join(map(str, i["positions"] or []))}
                                      for i in req["interventions"]]}
    return render(request, "steer.html", {"model_slug": saved.model_slug, "draft": draft,
                                          "result": saved.payload["result"], "saved_id": result_id})

"""Finding features: search over explanations, "which features fire on this text" across all layers, and head
pages (the features a head writes most, by decoder share, with the head's induction and previous-token scores)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import HTMLResponse, Response
from sqlalchemy import select

from app.protocol import MAX_TEXT_CHARS
from app.store import explanations
from app.store.models import FeatureRecord
from app.web import services
from app.web.api.model_routes import WorkerDep
from app.web.deps import SessionDep, SettingsDep
from app.web.pages.render import render
from app.web.worker_client import WorkerError, WorkerUnavailable

router = APIRouter(include_in_schema=False)


async def features_on_text(worker, session, model_slug: str, text: str, limit: int = 40) -> list[dict]:
    """Across all layers, the features firing on the text, strongest first: max activation, tokens fired on."""
    analysis = await worker.request("POST", "/v1/analyze", {"text": text, "top_k": 16})
    found: dict[tuple[int, int], dict] = {}
    for layer in analysis["layers"]:
        for t, row in enumerate(layer["top_features"]):
            for e in row:
                key = (layer["layer"], e["feature"])
                hit = found.setdefault(key, {"layer": layer["layer"], "sae_id": layer["sae_id"],
                                             "feature": e["feature"], "max": 0.0, "tokens": 0, "at": t})
                hit["tokens"] += 1
                if e["activation"] > hit["max"]:
                    hit["max"], hit["at"] = e["activation"], t
    ranked = sorted(found.values(), key=lambda h: -h["max"])[:limit]
    for h in ranked:
        h["token"] = analysis["tokens"][h["at"]]
    by_sae: dict[str, set[int]] = {}
    for h in ranked:
        by_sae.setdefault(h["sae_id"], set()).add(h["feature"])
    for sae_id, feats in by_sae.items():
        sae = services.sae_or_404(session, sae_id=sae_id, model_slug=model_slug)
        texts = explanations.first_text(session, sae=sae, features=feats)
        for h in ranked:
            if h["sae_id"] == sae_id:
                h["explanation"] = texts.get(h["feature"], "")
    return ranked


@router.get("/search", response_class=HTMLResponse)
async def search(request: Request, worker: WorkerDep, session: SessionDep, settings: SettingsDep,
                 q: Annotated[str, Query(max_length=500)] = "",
                 text: Annotated[str, Query(max_length=MAX_TEXT_CHARS)] = "") -> Response:
    ctx = {"model_slug": settings.served_slug(), "q": q, "text": text, "hits": None, "firing": None, "error": None}
    if q.strip():
        ctx["hits"] = services.search_explanations(session, model_slug=settings.served_slug(), q=q, limit=50)
    if text.strip():
        try:
            ctx["firing"] = await features_on_text(worker, session, settings.served_slug(), text)
        except (WorkerError, WorkerUnavailable) as exc:
            ctx["error"] = exc.detail
        except services.NotFound as exc:
            ctx["error"] = str(exc)
    return render(request, "search.html", ctx)


@router.get("/{model}/heads/{layer}/{head}", response_class=HTMLResponse)
async def head_page(request: Request, model: str, layer: Annotated[int, Path(ge=0, le=1000)],
                    head: Annotated[int, Path(ge=0, le=1000)], worker: WorkerDep, session: SessionDep,
                    settings: SettingsDep) -> Response:
    if model != settings.served_slug():
        raise services.NotFound(f"this server serves model {settings.served_slug()!r}, not {model!r}")
    sae = services.sae_or_404(session, sae_id=f"L{layer}", model_slug=model)
    rows = session.execute(select(FeatureRecord.index, FeatureRecord.head_attribution, FeatureRecord.density)
                           .where(FeatureRecord.sae_id == sae.id)).all()
    n_heads = len(rows[0][1]) if rows else 0
    if rows and not 0 <= head < n_heads:
        raise services.NotFound(f"layer {layer} has heads 0 to {n_heads - 1}, not {head}")
    top = sorted(((f, shares[head], d) for f, shares, d in rows if d > 0), key=lambda r: -r[1])[:40]
    texts = explanations.first_text(session, sae=sae, features={f for f, _, _ in top})
    scores, error = None, None
    try:
        s = await worker.request("GET", "/v1/head-scores")
        scores = {"induction": s["induction"][layer][head], "previous_token": s["previous_token"][layer][head]}
    except (WorkerError, WorkerUnavailable) as exc:
        error = exc.detail
    except (IndexError, KeyError):
        error = f"the worker's model has no head {head} on layer {layer}"
    return render(request, "head.html", {"model_slug": model, "layer": layer, "head": head, "sae_id": sae.slug,
                                         "features": [{"feature": f, "share": sh, "density": d,
                                                       "explanation": texts.get(f, "")} for f, sh, d in top],
                                         "scores": scores, "error": error, "n_heads": n_heads,
                                         "built": bool(rows)})

"""Finding features: search over explanations, the features that fire on a text across all layers, and what a
head writes (the features of its layer's SAE by decoder share, with its induction and previous-token scores);
knows nothing of HTTP or torch."""

from __future__ import annotations

from sqlalchemy.orm import Session

from app import protocol as P
from app.store import explanations
from app.store.catalog import head_shares, sae_on_layer
from app.store.dashboards import explanation_body
from app.web.deployment import Deployment
from app.web.services import semantic
from app.web.services.errors import NotFound
from app.web.services.features import sae_or_404
from app.web.worker_client import WorkerError, WorkerUnavailable


def search_explanations(session: Session, *, model_slug: str, q: str, limit: int) -> list[dict]:
    return [{**explanation_body(x), "sae_id": sae.slug, "layer": sae.layer, "feature": x.feature}
            for x, sae in explanations.search(session, q=q, limit=limit, model_slug=model_slug)]


async def features_on_text(*, deployment: Deployment, session: Session, model: str | None, text: str,
                           limit: int = 40) -> list[dict]:
    """Across all layers, the features firing on the text, strongest first: max activation, tokens fired on."""
    served, client = await deployment.client(model)
    analysis = await client.analyze(P.AnalyzeRequest(model=served.name, text=text, top_k=16))
    found: dict[tuple[str, int], dict] = {}
    for layer in analysis.layers:
        for t, row in enumerate(layer.top_features):
            for e in row:
                hit = found.setdefault((layer.sae_id, e.feature), {
                    "layer": layer.layer, "sae_id": layer.sae_id, "feature": e.feature, "max": 0.0, "tokens": 0,
                    "at": t})
                hit["tokens"] += 1
                if e.activation > hit["max"]:
                    hit["max"], hit["at"] = e.activation, t
    ranked = sorted(found.values(), key=lambda h: -h["max"])[:limit]
    by_sae: dict[str, set[int]] = {}
    for h in ranked:
        h["token"] = analysis.tokens[h["at"]]
        by_sae.setdefault(h["sae_id"], set()).add(h["feature"])
    for sae_id, feats in by_sae.items():
        texts = explanations.best_text(session, sae=sae_or_404(session, sae_id=sae_id, model_slug=served.name),
                                        features=feats)
        for h in ranked:
            if h["sae_id"] == sae_id:
                h["explanation"] = texts.get(h["feature"], "")
    return ranked


async def search_page(*, deployment: Deployment, session: Session, model: str | None, q: str, text: str,
                      mode: str = "text", indexes: semantic.SemanticIndexes | None = None) -> dict:
    model_slug = model or await deployment.default_name()
    ctx = {"model_slug": model_slug, "q": q, "text": text, "hits": None, "firing": None, "error": None,
           "mode": mode, "note": None}
    if q.strip() and mode == "semantic" and indexes is not None:
        found = await semantic.search(deployment=deployment, indexes=indexes, session=session,
                                      model_slug=model_slug, q=q, limit=50, mode="semantic")
        ctx["hits"], ctx["note"] = found["results"], found.get("message")
    elif q.strip():
        ctx["hits"] = search_explanations(session, model_slug=model_slug, q=q, limit=50)
    if text.strip():
        try:
            ctx["firing"] = await features_on_text(deployment=deployment, session=session, model=model_slug,
                                                   text=text)
        except (WorkerError, WorkerUnavailable) as exc:
            ctx["error"] = exc.detail
        except NotFound as exc:
            ctx["error"] = str(exc)
    return ctx


async def head_page(*, deployment: Deployment, session: Session, model: str, layer: int, head: int) -> dict:
    """The features a head writes most (decoder share), with the head's scores from a worker of the model."""
    sae = sae_on_layer(session, model_slug=model, layer=layer)
    if sae is None:
        raise NotFound(f"model {model!r} has no SAE on layer {layer} in the store")
    rows = head_shares(session, sae=sae)
    n_heads = len(rows[0][1]) if rows else 0
    if rows and not 0 <= head < n_heads:
        raise NotFound(f"layer {layer} has heads 0 to {n_heads - 1}, not {head}")
    top = sorted(((f, shares[head], d) for f, shares, d in rows if d > 0), key=lambda r: -r[1])[:40]
    texts = explanations.best_text(session, sae=sae, features={f for f, _, _ in top})
    scores, error = None, None
    try:
        _, client = await deployment.client(model)
        s = await client.head_scores()
        scores = {"induction": s.induction[layer][head], "previous_token": s.previous_token[layer][head]}
    except (WorkerError, WorkerUnavailable) as exc:
        error = exc.detail
    except NotFound as exc:
        error = str(exc)
    except IndexError:
        error = f"the worker's model has no head {head} on layer {layer}"
    return {"model_slug": model, "layer": layer, "head": head, "sae_id": sae.slug, "scores": scores, "error": error,
            "features": [{"feature": f, "share": sh, "density": d, "explanation": texts.get(f, "")}
                         for f, sh, d in top], "n_heads": n_heads, "built": bool(rows)}

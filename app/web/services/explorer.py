"""The prompt explorer's state (model, text, layer, feature, position) turned into what the page shows: the
analysis of one layer with per-head contributions, a feature's trace, a position's DFA, the explanations of the
features listed; worker problems become a message, never a broken page. Saved analyses (/p/{id}). Knows nothing
of HTTP or torch."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from sqlalchemy.orm import Session

from app import protocol as P
from app.store import explanations, results
from app.store.dashboards import find_sae
from app.web import figures
from app.web.deployment import Deployment
from app.web.services.builds import build_status
from app.web.services.errors import NotFound
from app.web.worker_client import WorkerError, WorkerUnavailable


@dataclass
class ExplorerState:
    """What the explorer's URL holds."""

    text: str = ""
    layer: int | None = None
    feature: int | None = None
    pos: int | None = None
    model: str | None = None  # None: the deployment's first model


async def explore(*, deployment: Deployment, session: Session, state: ExplorerState) -> dict:
    """Everything the explorer shows for this state."""
    model_slug = state.model or await deployment.default_name()
    ctx: dict = {**asdict(state), "model_slug": model_slug, "error": None, "analysis": None,
                 "build": build_status(session, model_slug=model_slug)}
    if not state.text:
        return ctx
    text, layer, feature, pos = state.text, state.layer, state.feature, state.pos
    try:
        model, client = await deployment.client(state.model)
        saes = model.first_set().saes
        layers = [s.layer for s in saes]
        layer = layer if layer in layers else layers[-1]
        sae = next(s for s in saes if s.layer == layer)
        ctx.update(layer=layer, layers=layers, sae_id=sae.id)
        analysis = await client.analyze(P.AnalyzeRequest(model=model.name, text=text, layers=[layer], top_k=8,
                                                         head_contributions=True))
        ctx["analysis"], ctx["tokens"] = analysis, analysis.tokens
        ctx["rows"], ctx["l0"] = analysis.layers[0].top_features, analysis.layers[0].l0
        if pos is not None and not 0 <= pos < len(analysis.tokens):
            pos = ctx["pos"] = None
        if feature is not None:
            ctx["trace"] = await client.feature_trace(P.FeatureRequest(model=model.name, text=text, sae_id=sae.id,
                                                                       feature=feature))
            if pos is not None:
                dfa = await client.dfa(P.DFARequest(model=model.name, text=text, sae_id=sae.id, feature=feature,
                                                    position=pos))
                ctx["dfa"] = dfa
                ctx["dfa_sources"] = [sum(col) for col in zip(*dfa.contributions, strict=True)]
                ctx["dfa_figure"] = figures.dfa_heatmap(dfa.contributions, dfa.tokens, pos)
                ctx["dfa_heads_figure"] = figures.head_bars([sum(r) for r in dfa.contributions],
                                                            "Each head's contribution", "pre-activation")
    except (WorkerError, NotFound) as exc:
        ctx["error"] = getattr(exc, "detail", None) or str(exc)
    except WorkerUnavailable as exc:
        ctx["error"] = f"The inference worker is unavailable: {exc.detail}. Try again in {exc.retry_after} s."
        ctx["retry_after"] = exc.retry_after
    if ctx.get("rows"):
        stored = find_sae(session, sae_slug=ctx["sae_id"], model_slug=model_slug)
        wanted = {e.feature for row in ctx["rows"] for e in row} | ({feature} if feature is not None else set())
        ctx["explained"] = explanations.best_text(session, sae=stored, features=wanted) if stored else {}
    return ctx


def save_analysis(*, session: Session, model_slug: str, state: ExplorerState) -> str:
    """The saved analysis's id (its permalink is /p/{id})."""
    payload = {"text": state.text, "layer": state.layer, "feature": state.feature, "pos": state.pos,
               "model": state.model}
    return results.save(session, kind="analysis", model_slug=model_slug, payload=payload).id


def saved_state(*, session: Session, result_id: str) -> ExplorerState:
    saved = results.load(session, result_id=result_id, kind="analysis")
    if saved is None:
        raise NotFound(f"there is no saved analysis {result_id!r}")
    p = saved.payload
    return ExplorerState(text=p["text"], layer=p.get("layer"), feature=p.get("feature"), pos=p.get("pos"),
                         model=p.get("model") or saved.model_slug)

"""The prompt explorer's state (model, text, layer, feature, position) turned into what the page shows: the
analysis of one layer with per-head contributions, the token colouring and its legend, a feature's trace, a
position's DFA, the explanations of the features listed, a feature's hover card; bad ids and worker problems become
one message over a consistent page. Saved analyses (/p/{id}). Knows nothing of HTTP or torch."""

from __future__ import annotations

import asyncio
import re
from dataclasses import asdict, dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from app import protocol as P
from app.store import explanations, results
from app.store.dashboards import find_sae
from app.store.models import FeatureRecord
from app.web import figures
from app.web.deployment import Deployment
from app.web.services.builds import build_status
from app.web.services.errors import NotFound
from app.web.services.features import check_feature, sae_or_404
from app.web.worker_client import WorkerClient, WorkerError, WorkerUnavailable

LONG_TEXT = 1500  # characters past which the form posts and the analysis gets a permalink, not a long URL
SHOWN = 8  # features listed per token until "show all"
TOP_K = 64  # features asked for per token: past the k of the TopK SAEs served; more are counted, not listed
TOO_LONG = re.compile(r"the text is (\d+) tokens long")


@dataclass
class ExplorerState:
    """What the explorer's URL holds (a saved analysis holds the same, the text behind its id)."""

    text: str = ""
    layer: int | None = None
    feature: int | None = None
    pos: int | None = None
    model: str | None = None  # None: the deployment's first model
    all: bool = False  # every active feature of the selected token listed, not only the first SHOWN
    truncate: bool = False  # a prompt past the context: analyse its first n_ctx tokens rather than refuse it


async def fit_context(client: WorkerClient, model: str, text: str) -> tuple[str, int]:
    """(the longest prefix of text that fits the model's context, its token count): a bisection over characters,
    each step one /tokenize call (the worker refuses a text past the context with 413)."""

    async def count(prefix: str) -> int | None:
        try:
            return len((await client.tokenize(P.TextRequest(model=model, text=prefix))).tokens)
        except WorkerError as exc:
            if exc.status == 413:
                return None
            raise

    if (n := await count(text)) is not None:
        return text, n
    lo, hi, best = 1, len(text) - 1, (text[:1], 1)
    while lo <= hi:
        mid = (lo + hi) // 2
        n = await count(text[:mid])
        if n is None:
            hi = mid - 1
        else:
            lo, best = mid + 1, (text[:mid], n)
    return best


def colouring(tokens: list[str], rows: list[list[P.FeatureActivation]], trace: P.FeatureTraceResponse | None,
              prepends_bos: bool) -> dict:
    """Per token the value its background shows, with the legend's range: the chosen feature's activation (0 to its
    peak) or else the layer's largest feature activation (its smallest to its largest value over the prompt: with
    TopK SAEs every token has k active features, so a count says nothing). BOS, an attention sink that dwarfs the
    rest, is left out of the range."""
    if trace is not None:
        values = list(trace.activations)
    else:
        values = [row[0].activation if row else 0.0 for row in rows]
    ranged = values[1:] if prepends_bos and len(values) > 1 else values
    lo, hi = (min(ranged), max(ranged)) if ranged else (0.0, 1.0)
    if trace is not None:
        lo = min(0.0, lo)
    return {"values": values, "lo": lo, "hi": hi if hi > lo else lo + 1.0, "by_feature": trace is not None}


async def explore(*, deployment: Deployment, session: Session, state: ExplorerState) -> dict:
    """Everything the explorer shows for this state; `error` (with `error_link`, where to go instead) when part of
    the state names nothing, in which case that part is dropped and the rest shown."""
    model_slug = state.model or await deployment.default_name()
    ctx: dict = {**asdict(state), "model_slug": model_slug, "error": None, "error_link": None, "analysis": None,
                 "notes": [], "build": build_status(session, model_slug=model_slug), "n_ctx": None}
    try:
        model, client = await deployment.client(state.model)
    except NotFound:
        ctx["error"] = f"This deployment serves no model called {state.model!r}."
        ctx["error_link"] = ("/", "the models served")
        ctx["text"] = "" if not state.text else ctx["text"]
        return ctx
    except WorkerUnavailable as exc:
        return unavailable(ctx, exc)
    ctx["n_ctx"] = model.info.n_ctx
    if not state.text:
        return ctx
    text, layer, feature, pos = state.text, state.layer, state.feature, state.pos
    saes = model.first_set().saes
    layers = [s.layer for s in saes]
    if layer is not None and layer not in layers:
        ctx["error"] = (f"Model {model.name} has no SAE on layer {layer}: its SAEs are on layers "
                        f"{', '.join(map(str, layers))}. Showing layer {layers[-1]}.")
        ctx["error_link"] = (f"/{model.name}", f"{model.name}'s SAEs")
        feature = None
    layer = layer if layer in layers else layers[-1]
    sae = next(s for s in saes if s.layer == layer)
    ctx.update(layer=layer, layers=layers, sae_id=sae.id, d_sae=sae.d_sae)
    if feature is not None and not 0 <= feature < sae.d_sae:
        ctx["error"] = (f"Feature {feature} does not exist in SAE {sae.id}: its features are 0 to {sae.d_sae - 1}. "
                        "The prompt is shown without it.")
        ctx["error_link"] = (f"/{model.name}", f"{model.name}'s SAEs")
        feature = None
    ctx["feature"] = feature
    try:
        if state.truncate:
            cut, n = await fit_context(client, model.name, text)
            if cut != text:
                ctx["notes"].append(f"The prompt was cut to its first {n} tokens ({len(cut):,} of {len(text):,} "
                                    f"characters): the model reads at most {model.info.n_ctx}.")
                text = ctx["text"] = cut
        analysis = await client.analyze(P.AnalyzeRequest(model=model.name, text=text, layers=[layer], top_k=TOP_K,
                                                         head_contributions=True))
    except WorkerError as exc:
        too_long = TOO_LONG.search(exc.detail or "") if exc.status == 413 else None
        if too_long:
            ctx["too_long"] = int(too_long.group(1))
            ctx["error"] = (f"This prompt is {too_long.group(1)} tokens long, but model {model.name} reads at most "
                            f"{model.info.n_ctx}.")
        else:
            ctx["error"] = exc.detail
        return ctx
    except WorkerUnavailable as exc:
        return unavailable(ctx, exc)
    ctx["analysis"], ctx["tokens"] = analysis, analysis.tokens
    ctx["rows"], ctx["l0"] = analysis.layers[0].top_features, analysis.layers[0].l0
    if pos is not None and not 0 <= pos < len(analysis.tokens):
        ctx["notes"].append(f"Position {pos} is past the prompt's {len(analysis.tokens)} tokens: pick a token.")
        pos = ctx["pos"] = None
    trace = None
    try:
        if feature is not None:
            trace = await client.feature_trace(P.FeatureRequest(model=model.name, text=text, sae_id=sae.id,
                                                                feature=feature))
            if pos is not None:
                dfa = await client.dfa(P.DFARequest(model=model.name, text=text, sae_id=sae.id, feature=feature,
                                                    position=pos))
                ctx["dfa"] = dfa
                ctx["dfa_sources"] = [sum(col) for col in zip(*dfa.contributions, strict=True)]
                ctx["dfa_figure"] = figures.dfa_heatmap(dfa.contributions, dfa.tokens, pos)
                ctx["dfa_heads_figure"] = figures.head_bars([sum(r) for r in dfa.contributions],
                                                            "Each head's contribution", "pre-activation")
    except WorkerError as exc:
        ctx["error"], ctx["feature"], trace = exc.detail, None, None
    except WorkerUnavailable as exc:
        return unavailable(ctx, exc)
    ctx["trace"] = trace
    ctx["colour"] = colouring(analysis.tokens, ctx["rows"], trace, model.info.prepends_bos)
    stored = find_sae(session, sae_slug=sae.id, model_slug=model_slug)
    listed = ctx["rows"][pos] if pos is not None else []
    wanted = {e.feature for e in listed} | ({ctx["feature"]} if ctx["feature"] is not None else set())
    ctx["explained"] = explanations.best_text(session, sae=stored, features=wanted) if stored else {}
    ctx["shown"] = listed if state.all else listed[:SHOWN]
    return ctx


def unavailable(ctx: dict, exc: WorkerUnavailable) -> dict:
    ctx["error"] = f"The inference worker is unavailable: {exc.detail}. Try again in {exc.retry_after} s."
    ctx["retry_after"] = exc.retry_after
    ctx["analysis"] = None
    return ctx


def feature_card(*, session: Session, model_slug: str, sae_id: str, feature: int) -> dict:
    """What a feature's hover card shows: its best explanation, density, max activation and top logits, from its
    dashboard (only the explanation while none is built); NotFound for an SAE or feature that does not exist."""
    sae = sae_or_404(session, sae_id=sae_id, model_slug=model_slug)
    check_feature(sae, feature)
    row = session.execute(select(FeatureRecord.density, FeatureRecord.max_activation, FeatureRecord.logit_effects)
                          .where(FeatureRecord.sae_id == sae.id, FeatureRecord.index == feature)).first()
    return {"model_slug": model_slug, "sae_id": sae.slug, "layer": sae.layer, "feature": feature,
            "explanation": explanations.best_text(session, sae=sae, features={feature}).get(feature),
            "built": row is not None, "density": row.density if row else None,
            "max_activation": row.max_activation if row else None,
            "top_logits": (row.logit_effects or {}).get("top", [])[:5] if row else []}


def save_analysis(*, session: Session, model_slug: str, state: ExplorerState,
                  limits: results.SaveLimits | None = None) -> str:
    """The saved analysis's id (its permalink is /p/{id}); results.QuotaExceeded or ResultTooLarge past `limits`."""
    payload = {"text": state.text, "layer": state.layer, "feature": state.feature, "pos": state.pos,
               "model": state.model}
    return results.save(session, kind="analysis", model_slug=model_slug, payload=payload, limits=limits).id


async def save_posted(*, deployment: Deployment, session: Session, state: ExplorerState,
                      limits: results.SaveLimits | None = None) -> str:
    """Save a posted analysis, its prompt first cut to the model's context when `truncate` asks for it (so that the
    permalink holds what is analysed); the saved analysis's id."""
    model_slug = state.model or await deployment.default_name()
    if state.truncate:
        try:
            model, client = await deployment.client(state.model)
            state.text, _ = await fit_context(client, model.name, state.text)
        except (WorkerError, WorkerUnavailable, NotFound):
            pass  # saved as sent: its page says what went wrong
    return await asyncio.to_thread(  # off the event loop, as steering's save (SQLite's write lock)
        lambda: save_analysis(session=session, model_slug=model_slug, state=state, limits=limits))


def saved_state(*, session: Session, result_id: str, layer: int | None = None, feature: int | None = None,
                pos: int | None = None, show_all: bool = False, moved: bool = False) -> ExplorerState:
    """A saved analysis's state; with `moved` (its page's own links: /p/{id}?layer=..&pos=..), the layer, feature
    and position these give instead of the saved ones, so that a long prompt never travels in a URL."""
    saved = results.load(session, result_id=result_id, kind="analysis")
    if saved is None:
        raise NotFound(f"there is no saved analysis {result_id!r}")
    p = saved.payload
    if not moved:
        layer, feature, pos = p.get("layer"), p.get("feature"), p.get("pos")
    return ExplorerState(text=p["text"], layer=layer, feature=feature, pos=pos, all=show_all,
                         model=p.get("model") or saved.model_slug)

"""Feature pages (/{model}/{sae}/{feature}, the permalink people share): the dashboard from the store with its
charts and examples (each with its activation and per-head DFA, windows shown once), explanations with an edit
form, similar features, previous/next, a box to test the feature on one's own text (which opens the explorer at
the strongest token), copy-link, JSON and CSV export (?format=) and an embed view (?embed=1) that only the sites in
SAEX_FRAME_ANCESTORS may frame."""

from __future__ import annotations

import csv
import io
import json
from typing import Annotated, Literal
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Form, Path, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy.orm import Session

from app.store.explanations import MAX_TEXT
from app.web import figures
from app.web.api.model_routes import DeploymentDep
from app.web.auth import CallerDep, csrf_protect
from app.web.deps import SessionDep, SettingsDep
from app.web.pages.render import heat, render, show_token
from app.web.services import features as services
from app.web.services import probe
from app.web.services.builds import build_status
from app.web.services.errors import NotFound

router = APIRouter(include_in_schema=False, dependencies=[Depends(csrf_protect)])
SIGN_IN = "Sign in to write explanations: your session has ended or the key was revoked."
Feature = Annotated[int, Path(ge=0, le=2**31 - 1)]
Context = Annotated[int | None, Query(ge=0, le=64)]
MAX_TEST_CHARS = 10_000  # the test text travels on in the explorer's URL
# The embed view's own policy: the site's scripts only, no forms, framed only by the configured sites
EMBED_CSP = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
             "object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors {}")


def example_spans(ex: dict, peak: float, before: int | None = None,
                  after: int | None = None) -> list[tuple[str, str, str, bool]]:
    """One example as (token text, style, title, is the example's token) per token: the activation as background,
    the DFA toward the example's token as an underline on the sources before it; `before`/`after` tokens of
    context around the example's token (None: all that is stored)."""
    m = ex["max_position"]
    dfa_peak = max((abs(d) for d in ex["dfa"][: m + 1]), default=0.0) or 1.0
    lo = 0 if before is None else max(0, m - before)
    hi = len(ex["tokens"]) if after is None else min(len(ex["tokens"]), m + after + 1)
    out = []
    for i, (tok, act) in enumerate(zip(ex["tokens"], ex["activations"], strict=True)):
        if not lo <= i < hi:
            continue
        d = ex["dfa"][i] if i <= m else 0.0
        style = f"background: {heat(act, peak)};" + (f" box-shadow: inset 0 -3px 0 {heat(d, dfa_peak)};" if d else "")
        title = f"activation {act:.3f}" + (f" · DFA toward the outlined token {d:.3f}" if i <= m else "")
        out.append((show_token(tok), style, title, i == m))
    return out


def window(ex: dict) -> range:
    """The corpus positions an example's stored tokens cover."""
    start = ex["corpus_position"] - ex["max_position"]
    return range(start, start + len(ex["tokens"]))


def shown_once(top: list[dict], intervals: list[dict]) -> tuple[list[dict], list[dict], int]:
    """The examples worth showing: an example whose token already shows in a stronger example's window (an
    overlapping window of the same passage, or an interval example that is also a top one) is left out. Returns the
    kept top and interval examples and how many were left out."""
    seen: list[range] = []
    kept: tuple[list[dict], list[dict]] = ([], [])
    for group, examples in enumerate((top, intervals)):
        for ex in examples:
            p = ex.get("corpus_position", -1)
            if p >= 0 and any(p in w for w in seen):
                continue
            if p >= 0:
                seen.append(window(ex))
            kept[group].append(ex)
    return kept[0], kept[1], len(top) + len(intervals) - len(kept[0]) - len(kept[1])


def head_row(values: list[float]) -> list[tuple[str, float, float, bool]]:
    """An example's per-head DFA as (label, value, bar height 0-1 of the largest |value|, positive) per head."""
    peak = max((abs(v) for v in values), default=0.0) or 1.0
    return [(f"H{h}", v, abs(v) / peak, v >= 0) for h, v in enumerate(values)]


def feature_context(session: Session, model_slug: str, sae_id: str, feature: int, before: int | None = None,
                    after: int | None = None, every: bool = False) -> dict:
    sae = services.sae_or_404(session, sae_id=sae_id, model_slug=model_slug)
    services.check_feature(sae, feature)
    ctx = {"model_slug": model_slug, "sae_id": sae.slug, "layer": sae.layer, "feature": feature, "d_sae": sae.d_sae,
           "prev": feature - 1 if feature > 0 else None, "next": feature + 1 if feature + 1 < sae.d_sae else None,
           "before": before, "after": after, "every": every, "max_test_chars": MAX_TEST_CHARS}
    try:
        d = services.feature_dashboard(session, model_slug=model_slug, sae_id=sae_id, feature=feature)
    except NotFound as exc:
        return {**ctx, "dashboard": None, "missing": str(exc), "explanations": services.list_explanations(
            session, model_slug=model_slug, sae_id=sae_id, feature=feature),
            "build": build_status(session, model_slug=model_slug)}
    peak = d["max_activation"] or 1.0
    stored = d["top_examples"] + d["interval_examples"]
    for ex in stored:
        ex["spans"] = example_spans(ex, peak, before, after)
        ex["value"] = ex["activations"][ex["max_position"]]
        ex["heads"] = head_row(ex["dfa_heads"])
    top, intervals, hidden = (d["top_examples"], d["interval_examples"], 0) if every else shown_once(
        d["top_examples"], d["interval_examples"])
    stored_before = max((ex["max_position"] for ex in stored), default=0)
    stored_after = max((len(ex["tokens"]) - ex["max_position"] - 1 for ex in stored), default=0)
    similar = services.best_explanations(session, model_slug=model_slug, sae_id=sae_id,
                                         features={s["feature"] for s in d["similar_features"]})
    return {**ctx, "dashboard": d, "explanations": d["explanations"], "similar_explained": similar,
            "top": top, "intervals": intervals, "hidden": hidden,
            "stored_before": stored_before, "stored_after": stored_after,
            "histogram_figure": figures.activation_histogram(d["activation_histogram"]),
            "logit_figure": figures.logit_effects(d["logit_effects"]),
            "heads_figure": figures.head_bars(d["head_attribution"], "Head attribution (decoder weight share)",
                                              "share")}


CSV_FIELDS = ("kind", "rank", "interval", "activation", "token", "text", "max_position", "corpus_position",
              "tokens", "activations", "dfa", "dfa_heads")


def dashboard_csv(d: dict) -> str:
    """The dashboard's examples as CSV, one row per stored example (top first, then by interval); lists as JSON."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    for kind, examples in (("top", d["top_examples"]), ("interval", d["interval_examples"])):
        for rank, ex in enumerate(examples):
            m = ex["max_position"]
            writer.writerow({"kind": kind, "rank": rank, "interval": ex.get("interval", ""),
                             "activation": ex["activations"][m], "token": ex["tokens"][m],
                             "text": "".join(ex["tokens"]),
                             "max_position": m, "corpus_position": ex["corpus_position"],
                             **{k: json.dumps(ex[k], ensure_ascii=False)
                                for k in ("tokens", "activations", "dfa", "dfa_heads")}})
    return out.getvalue()


def export(d: dict, model_slug: str, fmt: str) -> Response:
    """JSON: the API's body for the feature (GET /api/v1/models/{model}/saes/{sae}/features/{feature}); CSV: its
    examples as rows. Both as downloads."""
    name = f"{model_slug}-{d['sae_id']}-{d['feature']}"
    if fmt == "json":
        return Response(json.dumps(d, ensure_ascii=False), media_type="application/json",
                        headers={"Content-Disposition": f'attachment; filename="{name}.json"'})
    return Response(dashboard_csv(d), media_type="text/csv; charset=utf-8",
                    headers={"Content-Disposition": f'attachment; filename="{name}.csv"'})


def embed_headers(frame_ancestors: str) -> dict[str, str]:
    """The embed view may be framed by the configured sites only ('none': by no site)."""
    return {"Content-Security-Policy": EMBED_CSP.format(frame_ancestors.strip() or "'none'")}


@router.get("/{model}/{sae_id}/{feature}", response_class=HTMLResponse)
def feature_page(request: Request, model: str, sae_id: str, feature: Feature, session: SessionDep,
                 settings: SettingsDep, format: Annotated[Literal["html", "json", "csv"], Query()] = "html",
                 embed: Annotated[bool, Query()] = False, before: Context = None, after: Context = None,
                 every: Annotated[bool, Query()] = False) -> Response:
    """?before=&after=: tokens of context shown around each example's token; ?every=1: overlapping windows too."""
    if format != "html":
        return export(services.feature_dashboard(session, model_slug=model, sae_id=sae_id, feature=feature), model,
                      format)
    ctx = feature_context(session, model, sae_id, feature, before, after, every)
    if embed:
        return render(request, "feature_embed.html", {**ctx, "embed": True},
                      headers=embed_headers(settings.frame_ancestors))
    return render(request, "feature.html", ctx)


@router.get("/{model}/{sae_id}/{feature}/test")
async def try_on_text(model: str, sae_id: str, feature: Feature, session: SessionDep, deployment: DeploymentDep,
                       text: Annotated[str, Query(max_length=MAX_TEST_CHARS)] = "") -> Response:
    """"Test on your text": the explorer on that text, coloured by this feature, at the token where it fires most."""
    state = await probe.strongest_position(deployment=deployment, session=session, model_slug=model, sae_id=sae_id,
                                           feature=feature, text=text)
    return RedirectResponse("/?" + urlencode({k: v for k, v in state.items() if v is not None}), status_code=303)


@router.post("/{model}/{sae_id}/{feature}/explanations/{explanation_id}", response_class=HTMLResponse)
def change_explanation_form(request: Request, model: str, sae_id: str, feature: Feature,
                            explanation_id: Annotated[int, Path(ge=0, le=2**31 - 1)], session: SessionDep,
                            who: CallerDep,
                            action: Annotated[str, Form(pattern="^(edit|delete)$")],
                            text: Annotated[str, Form(max_length=MAX_TEXT)] = "") -> Response:
    """Edit or delete one explanation from the feature page; needs a signed-in session like every write."""
    if who is None:
        ctx = feature_context(session, model, sae_id, feature)
        return render(request, "explanations.html", {**ctx, "form_error": SIGN_IN}, status_code=401)
    if action == "delete":
        services.remove_explanation(session, model_slug=model, sae_id=sae_id, feature=feature,
                                    explanation_id=explanation_id, by=who)
    elif text.strip():
        services.edit_explanation(session, model_slug=model, sae_id=sae_id, feature=feature,
                                  explanation_id=explanation_id, text=text, by=who)
    else:
        ctx = feature_context(session, model, sae_id, feature)
        ctx["form_error"] = "An explanation cannot be empty: delete it instead."
        return render(request, "explanations.html", ctx, status_code=422)
    ctx = feature_context(session, model, sae_id, feature)
    return render(request, "explanations.html", ctx)


@router.post("/{model}/{sae_id}/{feature}/explanations", response_class=HTMLResponse)
def add_explanation_form(request: Request, model: str, sae_id: str, feature: Feature, session: SessionDep,
                         who: CallerDep,
                         text: Annotated[str, Form(min_length=1, max_length=MAX_TEXT)]) -> Response:
    """The feature page's explanation form: needs a signed-in session (the author is the key's name)."""
    ctx = feature_context(session, model, sae_id, feature)
    if who is None:
        return render(request, "explanations.html", {**ctx, "form_error": SIGN_IN, "draft": text}, status_code=401)
    services.add_explanation(session, model_slug=model, sae_id=sae_id, feature=feature, text=text,
                             author=who.name, key=who)
    ctx["explanations"] = services.list_explanations(session, model_slug=model, sae_id=sae_id, feature=feature)
    return render(request, "explanations.html", ctx)

"""Feature pages (/{model}/{sae}/{feature}, the permalink people share): the dashboard from the store with its
charts and examples, explanations with an edit form, similar features, previous/next, and a box to test the
feature on one's own text (which opens the explorer coloured by it)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Form, Path, Request
from fastapi.responses import HTMLResponse, Response
from sqlalchemy.orm import Session

from app.store.explanations import MAX_TEXT
from app.web import figures
from app.web.auth import CallerDep, csrf_protect
from app.web.deps import SessionDep
from app.web.pages.render import heat, render, show_token
from app.web.services import features as services
from app.web.services.builds import build_status
from app.web.services.errors import NotFound

router = APIRouter(include_in_schema=False, dependencies=[Depends(csrf_protect)])
SIGN_IN = "Sign in to write explanations: your session has ended or the key was revoked."
Feature = Annotated[int, Path(ge=0, le=2**31 - 1)]


def example_spans(ex: dict, peak: float) -> list[tuple[str, str, str, bool]]:
    """One example as (token text, style, title, is the example's token) per token: the activation as background,
    the DFA toward the example's token as an underline on the sources before it."""
    m = ex["max_position"]
    dfa_peak = max((abs(d) for d in ex["dfa"][: m + 1]), default=0.0) or 1.0
    out = []
    for i, (tok, act) in enumerate(zip(ex["tokens"], ex["activations"], strict=True)):
        d = ex["dfa"][i] if i <= m else 0.0
        style = f"background: {heat(act, peak)};" + (f" box-shadow: inset 0 -3px 0 {heat(d, dfa_peak)};" if d else "")
        title = f"activation {act:.3f}" + (f" · DFA toward the outlined token {d:.3f}" if i <= m else "")
        out.append((show_token(tok), style, title, i == m))
    return out


def feature_context(session: Session, model_slug: str, sae_id: str, feature: int) -> dict:
    sae = services.sae_or_404(session, sae_id=sae_id, model_slug=model_slug)
    services.check_feature(sae, feature)
    ctx = {"model_slug": model_slug, "sae_id": sae.slug, "layer": sae.layer, "feature": feature, "d_sae": sae.d_sae,
           "prev": feature - 1 if feature > 0 else None, "next": feature + 1 if feature + 1 < sae.d_sae else None}
    try:
        d = services.feature_dashboard(session, model_slug=model_slug, sae_id=sae_id, feature=feature)
    except NotFound as exc:
        return {**ctx, "dashboard": None, "missing": str(exc), "explanations": services.list_explanations(
            session, model_slug=model_slug, sae_id=sae_id, feature=feature),
            "build": build_status(session, model_slug=model_slug)}
    peak = d["max_activation"] or 1.0
    for ex in d["top_examples"] + d["interval_examples"]:
        ex["spans"] = example_spans(ex, peak)
    similar = services.best_explanations(session, model_slug=model_slug, sae_id=sae_id,
                                         features={s["feature"] for s in d["similar_features"]})
    return {**ctx, "dashboard": d, "explanations": d["explanations"], "similar_explained": similar,
            "histogram_figure": figures.activation_histogram(d["activation_histogram"]),
            "logit_figure": figures.logit_effects(d["logit_effects"]),
            "heads_figure": figures.head_bars(d["head_attribution"], "Head attribution (decoder weight share)",
                                              "share")}


@router.get("/{model}/{sae_id}/{feature}", response_class=HTMLResponse)
def feature_page(request: Request, model: str, sae_id: str, feature: Feature, session: SessionDep) -> Response:
    return render(request, "feature.html", feature_context(session, model, sae_id, feature))


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

"""Service functions of the web app: each route calls one, which calls the store; knows nothing of HTTP
beyond raising NotFound/Invalid with a message for the user, and nothing of torch."""

from __future__ import annotations

from sqlalchemy.orm import Session

from app.store import explanations
from app.store.build_runs import as_utc, latest_run, run_seconds
from app.store.dashboards import explanation_body, find_sae, read_dashboard
from app.store.models import SAERecord, utcnow

STALLED_S = 600  # a running build that has reported nothing for this long has died without saying so (killed)


class NotFound(LookupError):
    pass


class Invalid(ValueError):
    pass


def sae_or_404(session: Session, *, sae_id: str, model_slug: str) -> SAERecord:
    sae = find_sae(session, sae_slug=sae_id, model_slug=model_slug)
    if sae is None:
        raise NotFound(f"there is no SAE {sae_id!r} for model {model_slug!r}: see /api/v1/info for the SAEs served")
    return sae


def check_feature(sae: SAERecord, feature: int) -> None:
    if not 0 <= feature < sae.d_sae:
        raise NotFound(f"feature {feature} does not exist in SAE {sae.slug}: features are 0 to {sae.d_sae - 1}")


def feature_dashboard(session: Session, *, model_slug: str, sae_id: str, feature: int) -> dict:
    sae = sae_or_404(session, sae_id=sae_id, model_slug=model_slug)
    check_feature(sae, feature)
    body = read_dashboard(session, sae=sae, feature=feature)
    if body is None:
        build = build_status(session, model_slug=model_slug)
        if build is not None and build["state"] == "running":
            raise NotFound(f"the dashboard of feature {feature} of SAE {sae.slug} is not built yet: a dashboard build "
                           f"is running ({build['summary']}); see /{model_slug}/build")
        failed = f"the last dashboard build failed ({build['error']}); " if build and build["state"] == "failed" else ""
        raise NotFound(f"no dashboard was built for feature {feature} of SAE {sae.slug}: {failed}run "
                       f"`saex dashboards build --layers {sae.layer}`")
    return body


def build_status(session: Session, *, model_slug: str) -> dict | None:
    """The latest dashboard build of this model as pages show it, or None if none ever ran. state: running, done,
    failed, or stalled (running, but silent for STALLED_S: its process was killed)."""
    run = latest_run(session, model_slug=model_slug)
    if run is None:
        return None
    idle = (utcnow() - as_utc(run.updated_at)).total_seconds()
    state = run.status
    if state == "running" and idle > STALLED_S:
        state = "stalled"
    percent = round(100 * run.done / run.total) if run.total else 0
    if run.phase == "pass":
        summary = f"corpus pass, {run.done:,} of {run.total:,} tokens, {percent}%"
    elif run.phase == "writing":
        summary = f"writing layer {run.layer}, {run.done:,} of {run.total:,} features"
    else:
        summary = "loading the model and the corpus"
    return {"id": run.id, "state": state, "phase": run.phase, "layer": run.layer, "done": run.done,
            "total": run.total, "percent": percent, "summary": summary, "features_written": run.features_written,
            "error": run.error, "seconds": run_seconds(run), "idle_seconds": idle}


def add_explanation(session: Session, *, model_slug: str, sae_id: str, feature: int, text: str, author: str,
                    source: str = "human", score: float | None = None) -> dict:
    sae = sae_or_404(session, sae_id=sae_id, model_slug=model_slug)
    check_feature(sae, feature)
    return explanation_body(explanations.create(session, sae=sae, feature=feature, text=text, author=author,
                                                source=source, score=score))


def _own_explanation(session: Session, model_slug: str, sae_id: str, feature: int, explanation_id: int):
    sae = sae_or_404(session, sae_id=sae_id, model_slug=model_slug)
    record = explanations.get(session, explanation_id=explanation_id)
    if record is None or record.sae_id != sae.id or record.feature != feature:
        raise NotFound(f"there is no explanation {explanation_id} on feature {feature} of SAE {sae_id}")
    return record


def edit_explanation(session: Session, *, model_slug: str, sae_id: str, feature: int, explanation_id: int,
                     text: str) -> dict:
    record = _own_explanation(session, model_slug, sae_id, feature, explanation_id)
    return explanation_body(explanations.update(session, record=record, text=text))


def remove_explanation(session: Session, *, model_slug: str, sae_id: str, feature: int, explanation_id: int) -> None:
    explanations.delete(session, record=_own_explanation(session, model_slug, sae_id, feature, explanation_id))


def list_explanations(session: Session, *, model_slug: str, sae_id: str, feature: int) -> list[dict]:
    sae = sae_or_404(session, sae_id=sae_id, model_slug=model_slug)
    check_feature(sae, feature)
    return [explanation_body(x) for x in explanations.for_feature(session, sae=sae, feature=feature)]


def search_explanations(session: Session, *, model_slug: str, q: str, limit: int) -> list[dict]:
    return [{**explanation_body(x), "sae_id": sae.slug, "layer": sae.layer, "feature": x.feature}
            for x, sae in explanations.search(session, q=q, limit=limit, model_slug=model_slug)]

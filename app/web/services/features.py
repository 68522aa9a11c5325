"""Features: an SAE of a model, a feature's dashboard and its explanations, from the store; knows nothing of HTTP
or torch."""

from __future__ import annotations

from sqlalchemy.orm import Session

from app.store import explanations
from app.store.dashboards import explanation_body, find_sae, read_dashboard
from app.store.models import SAERecord
from app.web.services.builds import build_status
from app.web.services.errors import NotFound


def sae_or_404(session: Session, *, sae_id: str, model_slug: str) -> SAERecord:
    sae = find_sae(session, sae_slug=sae_id, model_slug=model_slug)
    if sae is None:
        raise NotFound(f"there is no SAE {sae_id!r} for model {model_slug!r}: see /api/v1/models for the SAEs served")
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


def best_explanations(session: Session, *, model_slug: str, sae_id: str, features: set[int]) -> dict[int, str]:
    """Each of these features' best-scored explanation, for showing beside its id."""
    sae = sae_or_404(session, sae_id=sae_id, model_slug=model_slug)
    return explanations.best_text(session, sae=sae, features=features)

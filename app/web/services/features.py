"""Features: an SAE of a model, a feature's dashboard and its explanations, from the store; knows nothing of HTTP
or torch."""

from __future__ import annotations

from sqlalchemy.orm import Session

from app.serving.text_checks import control_characters
from app.store import explanations
from app.store.dashboards import explanation_body, find_sae, read_dashboard
from app.store.models import APIKey, SAERecord
from app.web.services.builds import build_status
from app.web.services.errors import Invalid, NotFound


class NotAllowed(PermissionError):
    """The caller's key may not do this (the app answers 403)."""


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


def check_text(text: str) -> None:
    """Invalid (422) for an explanation with no words, or with control characters (NUL, ...)."""
    if not text.strip():
        raise Invalid("an explanation cannot be empty or only whitespace: write what the feature does, or delete it")
    if control_characters(text):
        raise Invalid("an explanation cannot hold control characters (such as NUL); only newlines and tabs")


def add_explanation(session: Session, *, model_slug: str, sae_id: str, feature: int, text: str, author: str,
                    source: str = "human", score: float | None = None, key: APIKey | None = None) -> dict:
    """key: the key writing it, which owns it (may edit or delete it later, as may admin keys)."""
    check_text(text)
    sae = sae_or_404(session, sae_id=sae_id, model_slug=model_slug)
    check_feature(sae, feature)
    return explanation_body(explanations.create(session, sae=sae, feature=feature, text=text, author=author,
                                                source=source, score=score, key_id=key.id if key else None))


def _own_explanation(session: Session, model_slug: str, sae_id: str, feature: int, explanation_id: int):
    sae = sae_or_404(session, sae_id=sae_id, model_slug=model_slug)
    record = explanations.get(session, explanation_id=explanation_id)
    if record is None or record.sae_id != sae.id or record.feature != feature:
        raise NotFound(f"there is no explanation {explanation_id} on feature {feature} of SAE {sae_id}")
    return record


def _changeable(session: Session, model_slug: str, sae_id: str, feature: int, explanation_id: int, by: APIKey):
    record = _own_explanation(session, model_slug, sae_id, feature, explanation_id)
    if not explanations.may_change(record, by):
        whose = "an automatic explanation" if record.key_id is None else f"{record.author}'s explanation"
        raise NotAllowed(f"explanation {explanation_id} is {whose}: only the key that wrote it, or an admin key "
                         "(`saex keys create --admin`), may change or delete it; add your own instead")
    return record


def edit_explanation(session: Session, *, model_slug: str, sae_id: str, feature: int, explanation_id: int,
                     text: str, by: APIKey) -> dict:
    """by: the key editing it; NotAllowed unless it wrote the explanation or is an admin key. The old text is kept
    in the explanation's history."""
    check_text(text)
    record = _changeable(session, model_slug, sae_id, feature, explanation_id, by)
    return explanation_body(explanations.edit(session, record=record, text=text, by=by))


def remove_explanation(session: Session, *, model_slug: str, sae_id: str, feature: int, explanation_id: int,
                       by: APIKey) -> None:
    """by: as for edit_explanation; the deleted text is kept in the history."""
    explanations.remove(session, record=_changeable(session, model_slug, sae_id, feature, explanation_id, by), by=by)


def list_explanations(session: Session, *, model_slug: str, sae_id: str, feature: int) -> list[dict]:
    sae = sae_or_404(session, sae_id=sae_id, model_slug=model_slug)
    check_feature(sae, feature)
    return [explanation_body(x) for x in explanations.for_feature(session, sae=sae, feature=feature)]


def best_explanations(session: Session, *, model_slug: str, sae_id: str, features: set[int]) -> dict[int, str]:
    """Each of these features' best-scored explanation, for showing beside its id."""
    sae = sae_or_404(session, sae_id=sae_id, model_slug=model_slug)
    return explanations.best_text(session, sae=sae, features=features)

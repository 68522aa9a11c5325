"""Lists of features for the pages: a key's lists, one list with each feature's density, max activation and best
explanation, making and changing lists (only by the key that made one, or an admin key), and a list as rows for
export; knows nothing of HTTP or torch."""

from __future__ import annotations

from sqlalchemy import select, tuple_
from sqlalchemy.orm import Session

from app.serving.text_checks import control_characters
from app.store import collections
from app.store.explanations import best_text
from app.store.models import APIKey, FeatureList, FeatureRecord
from app.web.services.errors import Invalid, NotFound
from app.web.services.features import NotAllowed, check_feature, sae_or_404

EXPORT_FIELDS = ("model", "sae", "layer", "feature", "note", "density", "max_activation", "explanation", "url")


def _text(value: str, what: str, limit: int, required: bool = False) -> str:
    if required and not value.strip():
        raise Invalid(f"a list needs a {what}")
    if len(value) > limit:
        raise Invalid(f"the {what} is {len(value)} characters; at most {limit}")
    if control_characters(value):
        raise Invalid(f"the {what} cannot hold control characters (such as NUL); only newlines and tabs")
    return value


def _list(session: Session, list_id: str) -> FeatureList:
    record = collections.get(session, list_id=list_id)
    if record is None:
        raise NotFound(f"there is no list {list_id!r}: its link may be mistyped, or its owner deleted it")
    return record


def _changeable(session: Session, list_id: str, by: APIKey) -> FeatureList:
    record = _list(session, list_id)
    if not collections.may_change(record, by):
        raise NotAllowed(f"the list {record.title!r} is {record.author}'s: only the key that made it, or an admin "
                         "key, may change it; make your own list instead")
    return record


def lists_of(session: Session, *, who: APIKey) -> list[dict]:
    """The caller's lists, newest change first."""
    return [{"id": r.id, "title": r.title, "description": r.description, "count": n,
             "updated_at": r.updated_at.isoformat()} for r, n in collections.of_key(session, key_id=who.id)]


def new_list(session: Session, *, who: APIKey, title: str, description: str = "",
             first: tuple[str, str, int] | None = None) -> str:
    """The new list's id (its page is /lists/{id}); first: (model, SAE, feature) to put in it at once."""
    record = collections.create(session, title=_text(title, "title", collections.MAX_TITLE, required=True),
                                description=_text(description, "description", collections.MAX_NOTE), key=who)
    if first is not None:
        add_feature(session, list_id=record.id, who=who, model_slug=first[0], sae_id=first[1], feature=first[2])
    return record.id


def change_list(session: Session, *, list_id: str, who: APIKey, action: str, title: str = "",
                description: str = "") -> None:
    """action: rename (title and description) or delete."""
    record = _changeable(session, list_id, who)
    if action == "delete":
        collections.delete(session, record=record)
    else:
        collections.rename(session, record=record, title=_text(title, "title", collections.MAX_TITLE, required=True),
                           description=_text(description, "description", collections.MAX_NOTE))


def add_feature(session: Session, *, list_id: str, who: APIKey, model_slug: str, sae_id: str, feature: int,
                note: str = "") -> None:
    """Add a feature of an SAE of a model (any feature the SAE has, built or not)."""
    record = _changeable(session, list_id, who)
    sae = sae_or_404(session, sae_id=sae_id, model_slug=model_slug)
    check_feature(sae, feature)
    try:
        collections.add(session, record=record, sae=sae, feature=feature,
                        note=_text(note, "note", collections.MAX_NOTE))
    except collections.ListFull as exc:
        raise Invalid(str(exc)) from exc


def change_entry(session: Session, *, list_id: str, entry_id: int, who: APIKey, action: str, note: str = "") -> None:
    """action: note (replace the entry's note) or remove."""
    record = _changeable(session, list_id, who)
    found = collections.entry(session, record=record, entry_id=entry_id)
    if found is None:
        raise NotFound(f"the list {record.title!r} has no entry {entry_id}")
    if action == "remove":
        collections.remove(session, record=record, entry=found)
    else:
        collections.annotate(session, record=record, entry=found, note=_text(note, "note", collections.MAX_NOTE))


def list_view(session: Session, *, list_id: str, who: APIKey | None) -> dict:
    """A list with, per feature, its model, SAE, note, density and max activation (None until its dashboard is
    built) and best explanation; `mine` when the caller may change it."""
    record = _list(session, list_id)
    by_sae: dict[int, set[int]] = {}
    for e in record.entries:
        by_sae.setdefault(e.sae_id, set()).add(e.feature)
    stats = {}
    if record.entries:
        wanted = [(e.sae_id, e.feature) for e in record.entries]
        rows = session.execute(select(FeatureRecord.sae_id, FeatureRecord.index, FeatureRecord.density,
                                      FeatureRecord.max_activation)
                               .where(tuple_(FeatureRecord.sae_id, FeatureRecord.index).in_(wanted)))
        stats = {(s, f): (d, m) for s, f, d, m in rows}
    explained = {}
    for e in record.entries:
        if e.sae_id not in explained:
            explained[e.sae_id] = best_text(session, sae=e.sae, features=by_sae[e.sae_id])
    entries = []
    for e in record.entries:
        density, max_act = stats.get((e.sae_id, e.feature), (None, None))
        model = e.sae.model.slug
        entries.append({"id": e.id, "model": model, "sae": e.sae.slug, "layer": e.sae.layer, "feature": e.feature,
                        "note": e.note, "density": density, "max_activation": max_act,
                        "explanation": explained[e.sae_id].get(e.feature, ""),
                        "url": f"/{model}/{e.sae.slug}/{e.feature}"})
    return {"id": record.id, "title": record.title, "description": record.description, "author": record.author,
            "created_at": record.created_at.isoformat(), "updated_at": record.updated_at.isoformat(),
            "entries": entries, "mine": collections.may_change(record, who)}


def add_form(session: Session, *, who: APIKey | None, model_slug: str, sae_id: str, feature: int) -> dict:
    """For a feature page's "add to a list" box: the caller's lists, and which already hold this feature."""
    sae = sae_or_404(session, sae_id=sae_id, model_slug=model_slug)
    check_feature(sae, feature)
    if who is None:
        return {"signed_in": False, "lists": [], "holding": set()}
    mine = collections.of_key(session, key_id=who.id)
    return {"signed_in": True, "lists": [{"id": r.id, "title": r.title, "count": n} for r, n in mine],
            "holding": collections.holding(session, key_id=who.id, sae_id=sae.id, feature=feature)}

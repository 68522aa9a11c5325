"""Explanations of features: create, edit, delete, list, and full-text search (Postgres full-text search; every
word as a substring on SQLite); who may change one (the key that wrote it, or an admin key) and the history of its
edits; knows nothing of torch or HTTP."""

from __future__ import annotations

from sqlalchemy import and_, func, literal_column, select
from sqlalchemy.orm import Session

from app.store.models import APIKey, ExplanationEdit, ExplanationRecord, ModelRecord, SAERecord, utcnow

MAX_TEXT = 2000


def create(session: Session, *, sae: SAERecord, feature: int, text: str, author: str, source: str = "human",
           score: float | None = None, method: str | None = None, prompt_version: str | None = None,
           scores: dict | None = None, key_id: int | None = None) -> ExplanationRecord:
    """key_id: the key writing it, which alone (with admin keys) may change it later; None for automatic ones."""
    record = ExplanationRecord(sae_id=sae.id, feature=feature, text=text.strip(), author=author, source=source,
                               score=score, method=method or ("human" if source == "human" else "imported"),
                               prompt_version=prompt_version, scores=scores, key_id=key_id)
    session.add(record)
    session.flush()
    return record


def set_scores(session: Session, *, record: ExplanationRecord, scores: dict, score: float | None) -> None:
    """Replace the scores of these scorers (others kept) and the headline score."""
    record.scores = {**(record.scores or {}), **scores}
    record.score = score
    session.flush()


def find(session: Session, *, sae: SAERecord, feature: int, method: str,
         prompt_version: str | None) -> ExplanationRecord | None:
    """The newest explanation this method and prompt version wrote for the feature (a resumed run skips it)."""
    return session.scalars(select(ExplanationRecord).where(
        ExplanationRecord.sae_id == sae.id, ExplanationRecord.feature == feature, ExplanationRecord.method == method,
        ExplanationRecord.prompt_version == prompt_version).order_by(ExplanationRecord.id.desc()).limit(1)).first()


def get(session: Session, *, explanation_id: int) -> ExplanationRecord | None:
    return session.get(ExplanationRecord, explanation_id)


def update(session: Session, *, record: ExplanationRecord, text: str) -> ExplanationRecord:
    if text.strip() != record.text:  # its scores were of the old text
        record.scores, record.score = None, None
    record.text, record.updated_at = text.strip(), utcnow()
    session.flush()
    return record


def delete(session: Session, *, record: ExplanationRecord) -> None:
    session.delete(record)
    session.flush()


def may_change(record: ExplanationRecord, key: APIKey) -> bool:
    """An admin key may change any explanation; any other key only those it wrote. Automatic ones (baseline,
    language model, imported: written with no key) and those written before keys were recorded: admins only."""
    return bool(key.admin) or (record.key_id is not None and record.key_id == key.id)


def edit(session: Session, *, record: ExplanationRecord, text: str, by: APIKey) -> ExplanationRecord:
    """update(), with the old text, the editor and the time kept in the explanation's history."""
    old = record.text
    update(session, record=record, text=text)
    if record.text != old:
        session.add(ExplanationEdit(explanation_id=record.id, action="edit", old_text=old, new_text=record.text,
                                    key_id=by.id, editor=by.name))
        session.flush()
    return record


def remove(session: Session, *, record: ExplanationRecord, by: APIKey) -> None:
    """delete(), with the text it had, who deleted it and when kept in its history."""
    session.add(ExplanationEdit(explanation_id=record.id, action="delete", old_text=record.text, new_text=None,
                                key_id=by.id, editor=by.name))
    delete(session, record=record)


def history(session: Session, *, explanation_id: int) -> list[ExplanationEdit]:
    """The explanation's edits and deletion, oldest first."""
    return list(session.scalars(select(ExplanationEdit).where(ExplanationEdit.explanation_id == explanation_id)
                                .order_by(ExplanationEdit.id)))


BEST_FIRST = (ExplanationRecord.score.desc().nulls_last(), ExplanationRecord.updated_at.desc(),
              ExplanationRecord.id.desc())


def for_feature(session: Session, *, sae: SAERecord, feature: int) -> list[ExplanationRecord]:
    """Best-scored first; unscored ones after, newest first."""
    return list(session.scalars(select(ExplanationRecord).where(
        ExplanationRecord.sae_id == sae.id, ExplanationRecord.feature == feature).order_by(*BEST_FIRST)))


def search(session: Session, *, q: str, limit: int = 50,
           model_slug: str | None = None) -> list[tuple[ExplanationRecord, SAERecord]]:
    """Best matches first. Postgres: websearch syntax ("quoted phrases", -exclusions, or) ranked by ts_rank;
    SQLite: explanations containing every word, newest first."""
    q = q.replace("\x00", "").strip()  # Postgres cannot take NUL in text (the web refuses it before; scripts may not)
    if not q:
        return []
    base = select(ExplanationRecord, SAERecord).join(SAERecord, SAERecord.id == ExplanationRecord.sae_id)
    if model_slug is not None:
        base = base.join(ModelRecord, ModelRecord.id == SAERecord.model_id).where(ModelRecord.slug == model_slug)
    if session.get_bind().dialect.name == "postgresql":
        vector = literal_column("explanations.text_search")  # stored, indexed (migration 0004)
        query = func.websearch_to_tsquery("english", q)
        stmt = base.where(vector.op("@@")(query)).order_by(func.ts_rank(vector, query).desc(), ExplanationRecord.id)
    else:
        words = [w for w in q.split() if w]
        stmt = base.where(and_(*[ExplanationRecord.text.ilike(f"%{_escape_like(w)}%", escape="\\") for w in words]))
        stmt = stmt.order_by(ExplanationRecord.updated_at.desc(), ExplanationRecord.id)
    return [(x, s) for x, s in session.execute(stmt.limit(limit)).all()]


def _escape_like(word: str) -> str:
    return word.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def best_text(session: Session, *, sae: SAERecord, features: set[int]) -> dict[int, str]:
    """For each of these features that has explanations, the best-scored one's text (unscored: the newest)."""
    if not features:
        return {}
    out: dict[int, str] = {}
    wanted = sorted(features)
    for start in range(0, len(wanted), 5000):  # bound the IN list
        rows = session.execute(select(ExplanationRecord.feature, ExplanationRecord.text).where(
            ExplanationRecord.sae_id == sae.id, ExplanationRecord.feature.in_(wanted[start:start + 5000]))
            .order_by(*BEST_FIRST)).all()
        for f, text in rows:
            out.setdefault(f, text)  # the first row of a feature is its best
    return out


def by_feature_method_text(session: Session, *, sae: SAERecord,
                           features: set[int]) -> dict[tuple[int, str, str], ExplanationRecord]:
    """The SAE's explanations of these features by (feature, method, text), the oldest of equal ones: how imports
    find an explanation they already hold."""
    wanted = sorted(features)
    have: dict[tuple[int, str, str], ExplanationRecord] = {}
    for start in range(0, len(wanted), 5000):  # bound the IN list
        for record in session.scalars(select(ExplanationRecord).where(
                ExplanationRecord.sae_id == sae.id, ExplanationRecord.feature.in_(wanted[start:start + 5000]))
                .order_by(ExplanationRecord.id)):
            have.setdefault((record.feature, record.method, record.text), record)
    return have

"""Explanations of features: create, edit, delete, list, and full-text search (Postgres full-text search; every
word as a substring on SQLite); knows nothing of torch or HTTP."""

from __future__ import annotations

from sqlalchemy import and_, func, literal_column, select
from sqlalchemy.orm import Session

from app.store.models import ExplanationRecord, ModelRecord, SAERecord, utcnow

MAX_TEXT = 2000


def create(session: Session, *, sae: SAERecord, feature: int, text: str, author: str, source: str = "human",
           score: float | None = None) -> ExplanationRecord:
    record = ExplanationRecord(sae_id=sae.id, feature=feature, text=text.strip(), author=author, source=source,
                               score=score)
    session.add(record)
    session.flush()
    return record


def get(session: Session, *, explanation_id: int) -> ExplanationRecord | None:
    return session.get(ExplanationRecord, explanation_id)


def update(session: Session, *, record: ExplanationRecord, text: str) -> ExplanationRecord:
    record.text, record.updated_at = text.strip(), utcnow()
    session.flush()
    return record


def delete(session: Session, *, record: ExplanationRecord) -> None:
    session.delete(record)
    session.flush()


def for_feature(session: Session, *, sae: SAERecord, feature: int) -> list[ExplanationRecord]:
    return list(session.scalars(select(ExplanationRecord).where(
        ExplanationRecord.sae_id == sae.id, ExplanationRecord.feature == feature).order_by(ExplanationRecord.id)))


def search(session: Session, *, q: str, limit: int = 50,
           model_slug: str | None = None) -> list[tuple[ExplanationRecord, SAERecord]]:
    """Best matches first. Postgres: websearch syntax ("quoted phrases", -exclusions, or) ranked by ts_rank;
    SQLite: explanations containing every word, newest first."""
    q = q.strip()
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


def first_text(session: Session, *, sae: SAERecord, features: set[int]) -> dict[int, str]:
    """For each of these features that has explanations, the most recent one's text."""
    if not features:
        return {}
    rows = session.execute(select(ExplanationRecord.feature, ExplanationRecord.text).where(
        ExplanationRecord.sae_id == sae.id, ExplanationRecord.feature.in_(features))
        .order_by(ExplanationRecord.updated_at, ExplanationRecord.id)).all()
    return {f: text for f, text in rows}  # later rows (newer) win

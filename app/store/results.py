"""Saved prompt analyses and steering results behind permalinks; knows nothing of torch or HTTP."""

from __future__ import annotations

import secrets

from sqlalchemy.orm import Session

from app.store.models import SavedResult

KINDS = ("analysis", "steering")


def save(session: Session, *, kind: str, model_slug: str, payload: dict) -> SavedResult:
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}")
    record = SavedResult(id=secrets.token_urlsafe(8)[:10], kind=kind, model_slug=model_slug, payload=payload)
    session.add(record)
    session.flush()
    return record


def load(session: Session, *, result_id: str, kind: str | None = None) -> SavedResult | None:
    record = session.get(SavedResult, result_id)
    if record is None or (kind is not None and record.kind != kind):
        return None
    return record

"""API keys: created once and shown once, stored as a sha256 hash, revocable; knows nothing of HTTP."""

from __future__ import annotations

import hashlib
import secrets

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.store.models import APIKey, utcnow

PREFIX = "saex_"


def _hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def create_key(session: Session, *, name: str) -> tuple[str, APIKey]:
    """Returns the key (the only time it exists in clear) and its record."""
    key = PREFIX + secrets.token_urlsafe(32)
    record = APIKey(name=name, prefix=key[: len(PREFIX) + 6], key_hash=_hash(key))
    session.add(record)
    session.flush()
    return key, record


def verify(session: Session, *, key: str) -> APIKey | None:
    """The live key record for this key, or None for an unknown or revoked key."""
    if not key or not key.startswith(PREFIX) or len(key) > 200:
        return None
    record = session.scalar(select(APIKey).where(APIKey.key_hash == _hash(key)))
    if record is None or record.revoked_at is not None:
        return None
    record.last_used_at = utcnow()
    return record


def live(session: Session, *, key_id: int) -> APIKey | None:
    """The key with this id if it has not been revoked (a signed-in browser's key, checked at each use)."""
    record = session.get(APIKey, key_id)
    return record if record is not None and record.revoked_at is None else None


def revoke(session: Session, *, key_id: int) -> APIKey | None:
    record = session.get(APIKey, key_id)
    if record is not None and record.revoked_at is None:
        record.revoked_at = utcnow()
    return record


def list_keys(session: Session) -> list[APIKey]:
    return list(session.scalars(select(APIKey).order_by(APIKey.id)))

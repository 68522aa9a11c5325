"""API keys (created once and shown once, stored as a sha256 hash, revocable; admin keys may change anyone's writes)
and the server side of signed-in browser sessions (begun by signing in with a key, ended by signing out, expiring
here whatever the cookie says); knows nothing of HTTP."""

from __future__ import annotations

import hashlib
import secrets
from datetime import timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from app.store.models import APIKey, BrowserSession, utcnow

PREFIX = "saex_"


def _hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def create_key(session: Session, *, name: str, admin: bool = False) -> tuple[str, APIKey]:
    """Returns the key (the only time it exists in clear) and its record."""
    key = PREFIX + secrets.token_urlsafe(32)
    record = APIKey(name=name, prefix=key[: len(PREFIX) + 6], key_hash=_hash(key), admin=admin)
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
        session.execute(update(BrowserSession).where(BrowserSession.key_id == key_id,
                                                     BrowserSession.ended_at.is_(None)).values(ended_at=utcnow()))
    return record


def begin_browser_session(session: Session, *, key_id: int, max_age_s: int) -> str:
    """A new signed-in session for this key, lasting max_age_s from now; returns its id (for the cookie only)."""
    sid = secrets.token_urlsafe(32)
    now = utcnow()
    session.add(BrowserSession(id=_hash(sid), key_id=key_id, created_at=now,
                               expires_at=now + timedelta(seconds=max_age_s)))
    session.flush()
    return sid


def live_browser_session(session: Session, *, sid: str, key_id: int) -> APIKey | None:
    """The live key of a signed-in session: None when the session is unknown, ended (signed out), expired, of
    another key, or its key was revoked."""
    if not sid or len(sid) > 200:
        return None
    record = session.get(BrowserSession, _hash(sid))
    if record is None or record.key_id != key_id or record.ended_at is not None:
        return None
    expires = record.expires_at if record.expires_at.tzinfo else record.expires_at.replace(tzinfo=utcnow().tzinfo)
    if expires <= utcnow():  # SQLite hands datetimes back without their zone
        return None
    return live(session, key_id=key_id)


def end_browser_session(session: Session, *, sid: str) -> None:
    """Sign-out: the session's cookie is worthless from now on, wherever it was copied."""
    if sid and len(sid) <= 200:
        session.execute(update(BrowserSession).where(BrowserSession.id == _hash(sid),
                                                     BrowserSession.ended_at.is_(None)).values(ended_at=utcnow()))


def list_keys(session: Session) -> list[APIKey]:
    return list(session.scalars(select(APIKey).order_by(APIKey.id)))

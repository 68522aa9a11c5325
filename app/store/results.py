"""Saved prompt analyses and steering results behind permalinks, with per-owner daily quotas and a size limit;
knows nothing of torch or HTTP."""

from __future__ import annotations

import json
import math
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.store.models import SavedResult, utcnow

KINDS = ("analysis", "steering")
QUOTA_WINDOW = timedelta(hours=24)


@dataclass(frozen=True)
class SaveLimits:
    """Who a save counts against ("key:<id>" or "ip:<address hash>"; None: nobody, no quota) and the limits that
    apply: saves in QUOTA_WINDOW (None: no quota) and the largest payload's JSON in bytes (None: any size)."""

    owner: str | None = None
    per_day: int | None = None
    max_bytes: int | None = None


class SaveRefused(Exception):
    """A result that is not saved: `status` is the HTTP answer the caller gives (429 quota, 413 size)."""

    status = 400

    def __init__(self, detail: str, retry_after: int | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.retry_after = retry_after


class QuotaExceeded(SaveRefused):
    status = 429


class ResultTooLarge(SaveRefused):
    status = 413


def _aware(at: datetime) -> datetime:
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)  # SQLite hands back naive times


def check_quota(session: Session, limits: SaveLimits) -> None:
    """QuotaExceeded (with the seconds until the oldest save in the window leaves it) when `limits.owner` has saved
    `limits.per_day` results in the last 24 hours; callers check before computing what they would save."""
    if limits.owner is None or limits.per_day is None:
        return
    since = utcnow() - QUOTA_WINDOW
    recent = (SavedResult.owner == limits.owner) & (SavedResult.created_at > since)
    with session.no_autoflush:  # a pending write (a key's last use) is not flushed now: on SQLite that would hold
        # the write lock through the steering that follows the check
        count, oldest = session.execute(select(func.count(), func.min(SavedResult.created_at)).where(recent)).one()
    if count >= limits.per_day:
        wait = (_aware(oldest) + QUOTA_WINDOW - utcnow()).total_seconds() if oldest is not None else 60.0
        raise QuotaExceeded(f"saving is limited to {limits.per_day} results a day from you; this one is not saved "
                            f"(retry in {math.ceil(wait / 60)} min, or sign in with an API key)",
                            max(1, math.ceil(wait)))


def save(session: Session, *, kind: str, model_slug: str, payload: dict,
         limits: SaveLimits | None = None) -> SavedResult:
    """A new saved result; QuotaExceeded or ResultTooLarge (nothing stored) past `limits`."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}")
    limits = limits or SaveLimits()
    size = len(json.dumps(payload, separators=(",", ":")).encode())
    if limits.max_bytes is not None and size > limits.max_bytes:
        raise ResultTooLarge(f"this result is {size:,} bytes and the largest that may be saved {limits.max_bytes:,}: "
                             "it is not saved (ask for fewer tokens, or a shorter prompt)")
    check_quota(session, limits)
    record = SavedResult(id=secrets.token_urlsafe(8)[:10], kind=kind, model_slug=model_slug, payload=payload,
                         owner=limits.owner, size_bytes=size)
    session.add(record)
    session.flush()
    return record


def load(session: Session, *, result_id: str, kind: str | None = None) -> SavedResult | None:
    record = session.get(SavedResult, result_id)
    if record is None or (kind is not None and record.kind != kind):
        return None
    return record

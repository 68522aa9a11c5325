"""Lists (collections) of features: make, rename and delete a list, add features to it with a note, change or remove
an entry, read a list with its entries and one key's lists; who may change a list (the key that made it, or an
admin key). Knows nothing of torch or HTTP."""

from __future__ import annotations

import secrets

from sqlalchemy import func, select
from sqlalchemy.orm import Session, selectinload

from app.store.models import APIKey, FeatureList, FeatureListEntry, SAERecord, utcnow

MAX_TITLE = 200
MAX_NOTE = 2000
MAX_ENTRIES = 1000  # a list is for reading, not for dumping an SAE into


class ListFull(ValueError):
    """The list already holds MAX_ENTRIES features."""


def create(session: Session, *, title: str, description: str = "", key: APIKey) -> FeatureList:
    record = FeatureList(id=secrets.token_urlsafe(9)[:12], title=title.strip(), description=description.strip(),
                         author=key.name, key_id=key.id)
    session.add(record)
    session.flush()
    return record


def get(session: Session, *, list_id: str) -> FeatureList | None:
    """The list with its entries (and each entry's SAE) loaded, or None."""
    return session.scalar(select(FeatureList).where(FeatureList.id == list_id).options(
        selectinload(FeatureList.entries).selectinload(FeatureListEntry.sae)))


def of_key(session: Session, *, key_id: int) -> list[tuple[FeatureList, int]]:
    """The lists this key made, newest change first, each with how many features it holds."""
    counts = (select(FeatureListEntry.list_id, func.count().label("n")).group_by(FeatureListEntry.list_id)
              .subquery())
    rows = session.execute(select(FeatureList, func.coalesce(counts.c.n, 0))
                           .outerjoin(counts, counts.c.list_id == FeatureList.id)
                           .where(FeatureList.key_id == key_id)
                           .order_by(FeatureList.updated_at.desc(), FeatureList.id))
    return [(record, n) for record, n in rows]


def holding(session: Session, *, key_id: int, sae_id: int, feature: int) -> set[str]:
    """Ids of this key's lists that hold this feature."""
    return set(session.scalars(select(FeatureListEntry.list_id).join(FeatureList).where(
        FeatureList.key_id == key_id, FeatureListEntry.sae_id == sae_id, FeatureListEntry.feature == feature)))


def may_change(record: FeatureList, key: APIKey | None) -> bool:
    """The key that made the list may change it, and so may admin keys; nobody else."""
    return key is not None and (key.admin or (record.key_id is not None and record.key_id == key.id))


def rename(session: Session, *, record: FeatureList, title: str, description: str) -> FeatureList:
    record.title, record.description, record.updated_at = title.strip(), description.strip(), utcnow()
    session.flush()
    return record


def delete(session: Session, *, record: FeatureList) -> None:
    session.delete(record)
    session.flush()


def add(session: Session, *, record: FeatureList, sae: SAERecord, feature: int, note: str = "") -> FeatureListEntry:
    """Add a feature at the end of the list; a feature already there keeps its place and gets the note, if one is
    given. ListFull past MAX_ENTRIES."""
    entry = session.scalar(select(FeatureListEntry).where(
        FeatureListEntry.list_id == record.id, FeatureListEntry.sae_id == sae.id, FeatureListEntry.feature == feature))
    if entry is None:
        count, last = session.execute(select(func.count(), func.max(FeatureListEntry.position))
                                      .where(FeatureListEntry.list_id == record.id)).one()
        if count >= MAX_ENTRIES:
            raise ListFull(f"a list holds at most {MAX_ENTRIES} features")
        entry = FeatureListEntry(list_id=record.id, sae_id=sae.id, feature=feature, note=note.strip(),
                                 position=(last or 0) + 1)
        record.entries.append(entry)
    elif note.strip():
        entry.note = note.strip()
    record.updated_at = utcnow()
    session.flush()
    return entry


def entry(session: Session, *, record: FeatureList, entry_id: int) -> FeatureListEntry | None:
    found = session.get(FeatureListEntry, entry_id)
    return found if found is not None and found.list_id == record.id else None


def annotate(session: Session, *, record: FeatureList, entry: FeatureListEntry, note: str) -> FeatureListEntry:
    entry.note, record.updated_at = note.strip(), utcnow()
    session.flush()
    return entry


def remove(session: Session, *, record: FeatureList, entry: FeatureListEntry) -> None:
    record.entries.remove(entry)  # delete-orphan: the row goes
    record.updated_at = utcnow()
    session.flush()

"""Explanation embeddings in the store: write sentence vectors for explanations (float16 little-endian, unit length),
read them back in bulk for an in-process index (all, or those after an id), count, delete; knows nothing of torch,
of which embedding model computes the vectors (the caller names it), or of HTTP."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np
from sqlalchemy import delete as sql_delete
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.store.models import ExplanationEmbedding, ExplanationRecord, ModelRecord, SAERecord

READ_CHUNK = 20_000  # rows per round trip when reading vectors back (bounds the bytes objects alive at once)
IN_LIST = 5_000  # ids per IN (...) list


@dataclass(frozen=True)
class VectorChunk:
    """Rows of explanation_embeddings, ordered by explanation id."""

    ids: np.ndarray  # (n,) int64 explanation ids, ascending
    vectors: np.ndarray  # (n, d) float16, unit rows
    sae_ids: np.ndarray  # (n,) int32 saes.id of each explanation

    def __len__(self) -> int:
        return len(self.ids)


def pack(vector: np.ndarray) -> bytes:
    v = np.asarray(vector, dtype=np.float32).ravel()
    norm = float(np.linalg.norm(v))
    if not np.isfinite(norm) or norm == 0:
        raise ValueError("an embedding must be a finite, non-zero vector")
    return (v / norm).astype("<f2").tobytes()


def write(session: Session, *, explanation_ids: Iterable[int], vectors: np.ndarray, model: str) -> int:
    """Store (or replace) the vectors of these explanations, computed by the embedding model named `model`.
    vectors: (n, d), one row per id; stored unit length whatever their norm."""
    ids = [int(i) for i in explanation_ids]
    vectors = np.asarray(vectors)
    if vectors.ndim != 2 or len(vectors) != len(ids):
        raise ValueError(f"{len(ids)} explanation ids but vectors of shape {vectors.shape}")
    delete(session, explanation_ids=ids)  # replace: one embedding per explanation (the primary key)
    session.add_all([ExplanationEmbedding(explanation_id=i, model=model, vector=pack(v))
                     for i, v in zip(ids, vectors, strict=True)])
    session.flush()
    return len(ids)


def delete(session: Session, *, explanation_ids: Iterable[int] | None = None, model: str | None = None) -> int:
    """Delete the embeddings of these explanations (None: all), of one embedding model or any; how many went."""
    stmt = sql_delete(ExplanationEmbedding)
    if model is not None:
        stmt = stmt.where(ExplanationEmbedding.model == model)
    if explanation_ids is None:
        return session.execute(stmt).rowcount or 0
    ids, gone = sorted({int(i) for i in explanation_ids}), 0
    for start in range(0, len(ids), IN_LIST):
        gone += session.execute(stmt.where(ExplanationEmbedding.explanation_id.in_(ids[start:start + IN_LIST]))
                                ).rowcount or 0
    return gone


def embed_explanations(session: Session, embed_fn: Callable[[list[str]], np.ndarray],
                       explanation_ids: Iterable[int] | None = None, batch: int = 256, *, model: str) -> int:
    """Embed explanations' texts with embed_fn (texts -> (n, d) vectors) and store them under the embedding model's
    name; returns how many were written. explanation_ids: these (re-embedded even if they have a vector: after an
    edit), or None: every explanation without a vector of this model (a backfill). Flushes per batch; the caller
    commits (a backfill over a large store may commit between calls by passing ids in slices)."""
    if explanation_ids is not None:
        wanted = sorted({int(i) for i in explanation_ids})
        batches: Iterator[list[tuple[int, str]]] = (
            _texts(session, wanted[s:s + batch]) for s in range(0, len(wanted), batch))
    else:
        batches = _missing(session, model=model, batch=batch)
    written = 0
    for rows in batches:
        if rows:
            vectors = np.asarray(embed_fn([text for _, text in rows]))
            written += write(session, explanation_ids=[i for i, _ in rows], vectors=vectors, model=model)
    return written


def _texts(session: Session, ids: list[int]) -> list[tuple[int, str]]:
    return [(i, t) for i, t in session.execute(select(ExplanationRecord.id, ExplanationRecord.text)
                                               .where(ExplanationRecord.id.in_(ids)).order_by(ExplanationRecord.id))]


def _missing(session: Session, *, model: str, batch: int) -> Iterator[list[tuple[int, str]]]:
    """Batches of explanations with no vector of this model, by id (a cursor on the id, so each batch is new)."""
    after = 0
    while True:
        rows = session.execute(
            select(ExplanationRecord.id, ExplanationRecord.text)
            .outerjoin(ExplanationEmbedding, ExplanationEmbedding.explanation_id == ExplanationRecord.id)
            .where(ExplanationRecord.id > after,
                   (ExplanationEmbedding.explanation_id.is_(None)) | (ExplanationEmbedding.model != model))
            .order_by(ExplanationRecord.id).limit(batch)).all()
        if not rows:
            return
        after = rows[-1][0]
        yield [(i, t) for i, t in rows]


def iter_vectors(session: Session, *, model: str | None = None, after_id: int = 0,
                 chunk: int = READ_CHUNK) -> Iterator[VectorChunk]:
    """The stored vectors with explanation_id > after_id (of one embedding model, or all), in chunks by id."""
    stmt = (select(ExplanationEmbedding.explanation_id, ExplanationRecord.sae_id, ExplanationEmbedding.vector)
            .join(ExplanationRecord, ExplanationRecord.id == ExplanationEmbedding.explanation_id)
            .where(ExplanationEmbedding.explanation_id > after_id).order_by(ExplanationEmbedding.explanation_id))
    if model is not None:
        stmt = stmt.where(ExplanationEmbedding.model == model)
    # Core rather than the ORM's row handling (a fifth faster at 300,000 rows); a server-side cursor on Postgres
    result = session.connection().execute(stmt.execution_options(yield_per=chunk))
    for part in result.partitions():
        ids, sae_ids, blobs = zip(*part, strict=True)
        flat = np.frombuffer(b"".join(blobs), dtype="<f2")
        yield VectorChunk(np.asarray(ids, dtype=np.int64), flat.reshape(len(ids), -1),
                            np.asarray(sae_ids, dtype=np.int32))


def read(session: Session, *, model: str | None = None, after_id: int = 0) -> VectorChunk:
    """All of iter_vectors' chunks in one (ids, float16 matrix, sae ids)."""
    parts = list(iter_vectors(session, model=model, after_id=after_id))
    if not parts:
        return VectorChunk(np.zeros(0, np.int64), np.zeros((0, 0), np.float16), np.zeros(0, np.int32))
    return VectorChunk(np.concatenate([p.ids for p in parts]), np.concatenate([p.vectors for p in parts]),
                         np.concatenate([p.sae_ids for p in parts]))


def stats(session: Session, *, model: str | None = None, up_to: int | None = None) -> tuple[int, int]:
    """(how many vectors have explanation_id <= up_to (None: all), the largest explanation_id or 0): an index that
    holds n rows up to `up_to` is current when the first is n and the second is up_to."""
    count = func.count() if up_to is None else func.count().filter(ExplanationEmbedding.explanation_id <= up_to)
    stmt = select(count, func.coalesce(func.max(ExplanationEmbedding.explanation_id), 0))
    if model is not None:
        stmt = stmt.where(ExplanationEmbedding.model == model)
    n, top = session.execute(stmt).one()
    return int(n), int(top)


def sae_models(session: Session) -> dict[int, str]:
    """saes.id -> the slug of its model."""
    return {i: slug for i, slug in session.execute(
        select(SAERecord.id, ModelRecord.slug).join(ModelRecord, ModelRecord.id == SAERecord.model_id))}


def explanations_with_saes(session: Session, *, ids: list[int]) -> list[tuple[ExplanationRecord, SAERecord]]:
    """These explanations with their SAEs, in the order of `ids` (ids no longer stored are left out)."""
    found: dict[int, tuple[ExplanationRecord, SAERecord]] = {}
    for start in range(0, len(ids), IN_LIST):
        for x, sae in session.execute(select(ExplanationRecord, SAERecord)
                                      .join(SAERecord, SAERecord.id == ExplanationRecord.sae_id)
                                      .where(ExplanationRecord.id.in_(ids[start:start + IN_LIST]))):
            found[x.id] = (x, sae)
    return [found[i] for i in ids if i in found]


class StoredVectors:
    """One embedding model's vectors in the store, each read in a session of its own: the source of an in-process
    index (app.interpret.semantic_index.VectorSource), which outlives the requests that search it."""

    def __init__(self, sessions: Callable[[], Session], model: str) -> None:
        self.sessions, self.model = sessions, model

    def stats(self, up_to: int | None = None) -> tuple[int, int]:
        with self.sessions() as session:
            return stats(session, model=self.model, up_to=up_to)

    def chunks(self, after_id: int = 0) -> Iterator[VectorChunk]:
        with self.sessions() as session:
            yield from iter_vectors(session, model=self.model, after_id=after_id)

    def sae_models(self) -> dict[int, str]:
        with self.sessions() as session:
            return sae_models(session)

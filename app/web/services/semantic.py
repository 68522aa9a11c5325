"""Searching explanations by meaning: the query embedded by an inference worker (/v1/embed), the nearest stored
explanation embeddings from an in-process index, the explanations read from the store; full-text search where no
worker can embed. Knows nothing of HTTP or torch (the worker computes the embedding)."""

from __future__ import annotations

import threading

import anyio
import numpy as np
from sqlalchemy.orm import Session, sessionmaker

from app import protocol as P
from app.interpret.semantic_index import SemanticIndex
from app.store import explanation_embeddings as stored
from app.store import explanations
from app.store.dashboards import explanation_body
from app.store.models import ExplanationRecord, SAERecord
from app.web.deployment import Deployment
from app.web.services.errors import NotFound
from app.web.worker_client import WorkerError, WorkerUnavailable

MODES = ("text", "semantic")


class SemanticIndexes:
    """One web app's in-process indexes, one per embedding model (the model the worker names in /v1/embed)."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self.sessions = sessions
        self._indexes: dict[str, SemanticIndex] = {}
        self._lock = threading.Lock()

    def get(self, model: str) -> SemanticIndex:
        with self._lock:
            if model not in self._indexes:
                self._indexes[model] = SemanticIndex(stored.StoredVectors(self.sessions, model))
            return self._indexes[model]


_STATE_LOCK = threading.Lock()


def indexes_of(state) -> SemanticIndexes:
    """The app's indexes (on app.state), made on the first semantic search: nothing is loaded at startup."""
    with _STATE_LOCK:
        if getattr(state, "semantic_indexes", None) is None:
            state.semantic_indexes = SemanticIndexes(state.sessions)
        return state.semantic_indexes


def hit(x: ExplanationRecord, sae: SAERecord) -> dict:
    """A search result: the explanation's body with where it belongs (the full-text search's shape)."""
    return {**explanation_body(x), "sae_id": sae.slug, "layer": sae.layer, "feature": x.feature}


def text_hits(session: Session, *, model_slug: str, q: str, limit: int) -> list[dict]:
    return [hit(x, sae) for x, sae in explanations.search(session, q=q, limit=limit, model_slug=model_slug)]


async def search(*, deployment: Deployment, indexes: SemanticIndexes, session: Session, model_slug: str, q: str,
                 limit: int, mode: str = "text") -> dict:
    """mode "text": {"query", "results"}, full-text search as before. mode "semantic": {"query", "mode":
    "semantic", "embedding_model", "results"} with each result's "similarity" (cosine, -1 to 1), most similar first;
    when no worker can embed the query, or no explanation has an embedding yet, full-text results with "mode":
    "text" and a "message" saying why."""
    if mode != "semantic":
        return {"query": q, "results": await anyio.to_thread.run_sync(
            lambda: text_hits(session, model_slug=model_slug, q=q, limit=limit))}
    try:
        reply = await _embed(deployment, model_slug, q)
    except (WorkerError, WorkerUnavailable, NotFound) as exc:
        why = getattr(exc, "detail", None) or str(exc)
        return await _text_instead(session, model_slug=model_slug, q=q, limit=limit, message=(
            f"semantic search needs an inference worker to embed the query, and none could ({why}); "
            "these are full-text results"))
    index = indexes.get(reply.model)
    query = np.asarray(reply.vectors[0], dtype=np.float32)

    def nearest() -> list[dict] | None:
        index.refresh(wait=False)
        if len(index) == 0:
            return None
        found = index.search(query, limit, model_slug)
        similarity = dict(found)
        return [{**hit(x, sae), "similarity": round(similarity[x.id], 4)}
                for x, sae in stored.explanations_with_saes(session, ids=[i for i, _ in found])]

    results = await anyio.to_thread.run_sync(nearest)
    if results is None:
        return await _text_instead(session, model_slug=model_slug, q=q, limit=limit, message=(
            f"no explanation has an embedding of {reply.model} yet (`saex explain embed` computes them); these are "
            "full-text results"))
    return {"query": q, "mode": "semantic", "embedding_model": reply.model, "results": results}


async def _embed(deployment: Deployment, model_slug: str, q: str) -> P.EmbedResponse:
    """The query's embedding from a worker of the model searched, or else of the first model (any worker embeds
    alike: the embedding model does not depend on the model served)."""
    try:
        _, client = await deployment.client(model_slug)
    except NotFound:
        _, client = await deployment.client()
    return await client.embed(P.EmbedRequest(texts=[q]))


async def _text_instead(session: Session, *, model_slug: str, q: str, limit: int, message: str) -> dict:
    results = await anyio.to_thread.run_sync(lambda: text_hits(session, model_slug=model_slug, q=q, limit=limit))
    return {"query": q, "mode": "text", "message": message, "results": results}

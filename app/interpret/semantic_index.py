"""An in-process index for semantic search over explanations: one embedding model's vectors in one float32 matrix,
refreshed incrementally from a source (the store's, app.store.explanation_embeddings.StoredVectors), searched
exactly (a matrix-vector product and argpartition); knows numpy only: nothing of the database, of torch, of how a
query gets embedded, or of HTTP.

The matrix is float32 although the store keeps float16: numpy casts float16 to float32 at ~1.3 ns a value on the
machines measured (150 ms a query over 300,000 x 384), while a float32 matrix-vector product over the same rows
takes ~15 ms on one core. The price is memory: 1.5 KB an explanation, 460 MB at 300,000.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

GROWTH = 1.25  # the matrix grows by a quarter when full, so that appends rarely copy it
SPARE_ROWS = 1024


class Chunk(Protocol):
    ids: np.ndarray  # (m,) int64 explanation ids, ascending
    vectors: np.ndarray  # (m, d) float16 or float32, unit rows
    sae_ids: np.ndarray  # (m,) int32


class VectorSource(Protocol):
    """Where the index reads one embedding model's vectors (the store's explanation_embeddings)."""

    def stats(self, up_to: int | None = None) -> tuple[int, int]:
        """(how many vectors have an explanation id <= up_to (None: all), the largest explanation id or 0)."""
        ...

    def chunks(self, after_id: int = 0) -> Iterator[Chunk]:
        """The vectors of explanation ids > after_id, ascending, a chunk at a time."""
        ...

    def sae_models(self) -> dict[int, str]:
        """saes.id -> its model's slug."""
        ...


@dataclass
class _Snapshot:
    """What one search reads: views of the first n rows of the buffers, never written again once published (appends
    write rows past n; a rebuild makes new buffers)."""

    matrix: np.ndarray  # (n, d) float32, unit rows
    ids: np.ndarray  # (n,) int64 explanation ids, ascending
    sae_ids: np.ndarray  # (n,) int32
    sae_model: dict[int, str]  # saes.id -> model slug
    rows_by_model: dict[str, np.ndarray] = field(default_factory=dict)  # filled on first use

    @property
    def last_id(self) -> int:
        return int(self.ids[-1]) if len(self.ids) else 0

    def rows_of(self, model_slug: str) -> np.ndarray:
        rows = self.rows_by_model.get(model_slug)
        if rows is None:  # two threads may both compute it: same answer
            saes = np.asarray([s for s, m in self.sae_model.items() if m == model_slug], dtype=np.int32)
            rows = self.rows_by_model[model_slug] = np.flatnonzero(np.isin(self.sae_ids, saes))
        return rows


class SemanticIndex:
    """Every stored vector of one embedding model. Thread-safe: searches read an immutable snapshot; one refresh at
    a time builds the next.

    refresh() loads everything the first time; afterwards, at most every `check_every_s`, one query tells whether
    rows were added after the last loaded id (appended) or the rows up to it changed in number (deleted, or an older
    explanation embedded late: rebuilt). A vector replaced under the same id (re-embedded after an edit) is not
    seen by that count: a full rebuild every `rebuild_every_s` catches it, or invalidate()."""

    def __init__(self, source: VectorSource, *, check_every_s: float = 5.0,
                 rebuild_every_s: float | None = 3600.0) -> None:
        self.source = source
        self.check_every_s, self.rebuild_every_s = check_every_s, rebuild_every_s
        self._snap: _Snapshot | None = None
        self._buffers: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None  # matrix, ids, sae ids; capacity rows
        self._lock = threading.Lock()  # one refresh at a time
        self._checked_at = float("-inf")
        self._built_at = float("-inf")
        self.load_seconds: float | None = None  # of the last full build

    # --- what callers ask -----------------------------------------------------------------------------------------

    def __len__(self) -> int:
        return 0 if self._snap is None else len(self._snap.ids)

    @property
    def loaded(self) -> bool:
        return self._snap is not None

    @property
    def nbytes(self) -> int:
        """Memory held by the buffers (capacity, not just the rows in use)."""
        return 0 if self._buffers is None else sum(b.nbytes for b in self._buffers)

    def search(self, query: np.ndarray, k: int = 20, model_slug: str | None = None) -> list[tuple[int, float]]:
        """The k explanations nearest the query (cosine similarity), most similar first, as (explanation id,
        similarity); only those of SAEs of `model_slug` when given. Searches what is loaded (see refresh)."""
        snap = self._snap
        if snap is None or len(snap.ids) == 0 or k <= 0:
            return []
        q = np.asarray(query, dtype=np.float32).ravel()
        if q.shape[0] != snap.matrix.shape[1]:
            raise ValueError(f"the query has {q.shape[0]} dimensions, the index's vectors {snap.matrix.shape[1]}")
        norm = float(np.linalg.norm(q))
        if not np.isfinite(norm) or norm == 0:
            raise ValueError("the query vector must be finite and non-zero")
        q = q / norm
        rows = None if model_slug is None else snap.rows_of(model_slug)
        if rows is not None and len(rows) == len(snap.ids):
            rows = None  # every row is the model's
        if rows is None:
            scores = snap.matrix @ q  # (n,)
        elif len(rows) == 0:
            return []
        elif len(rows) < len(snap.ids) // 4:  # a small model: gather its rows rather than score every row
            scores = snap.matrix[rows] @ q  # (len(rows),)
        else:
            scores = (snap.matrix @ q)[rows]
        k = min(k, len(scores))
        top = np.argpartition(-scores, k - 1)[:k] if k < len(scores) else np.arange(len(scores))
        top = top[np.argsort(-scores[top], kind="stable")]
        picked = top if rows is None else rows[top]
        return [(int(i), float(s)) for i, s in zip(snap.ids[picked], scores[top], strict=True)]

    def refresh(self, *, wait: bool = True) -> None:
        """Bring the index up to the store, when `check_every_s` has passed since the last check. wait=False (for
        requests): check, append or rebuild on a thread of its own while searches answer from the loaded snapshot
        (a check is a count over the table: 60-90 ms at 300,000 rows on Postgres). The first load always waits."""
        if self._snap is not None and not self._due():
            return
        if self._snap is None or wait:
            with self._lock:
                if self._snap is None or self._due():  # else another thread did it while this one waited
                    self._update()
            return
        if not self._lock.acquire(blocking=False):
            return  # a refresh is under way
        self._checked_at = time.monotonic()  # the requests that follow do not start another

        def update_and_release() -> None:
            try:
                self._update()
            finally:
                self._lock.release()

        threading.Thread(target=update_and_release, name="semantic-index-refresh", daemon=True).start()

    def invalidate(self) -> None:
        """Rebuild at the next refresh (after vectors were replaced under the same ids)."""
        self._built_at = self._checked_at = float("-inf")

    # --- loading ----------------------------------------------------------------------------------------------

    def _due(self) -> bool:
        return time.monotonic() - self._checked_at >= self.check_every_s

    def _update(self) -> None:
        """Under the lock: everything the first time; then new rows appended, or everything again when the rows
        up to the last loaded id changed in number or the last full load is older than rebuild_every_s."""
        now = self._checked_at = time.monotonic()
        snap = self._snap
        if snap is None:
            self._rebuild()
            return
        n, top = self.source.stats(snap.last_id)
        if n != len(snap.ids) or (self.rebuild_every_s is not None and now - self._built_at > self.rebuild_every_s):
            self._rebuild()
        elif top > snap.last_id:
            self._append(snap)

    def _rebuild(self) -> None:
        """Everything from the store into new buffers, sized once from the count."""
        t0 = time.perf_counter()
        total, _ = self.source.stats()
        buffers, n = None, 0
        for part in self.source.chunks():  # room for 2% more rows before a copy
            buffers, n = self._put(buffers, n, part, capacity=total + total // 50 + SPARE_ROWS)
        sae_model = self.source.sae_models()
        self._buffers = buffers
        self._snap = self._publish(buffers, n, sae_model)
        self._built_at = time.monotonic()
        self.load_seconds = time.perf_counter() - t0

    def _append(self, snap: _Snapshot) -> None:
        buffers, n = self._buffers, len(snap.ids)
        for part in self.source.chunks(snap.last_id):
            buffers, n = self._put(buffers, n, part, capacity=int((n + len(part)) * GROWTH) + SPARE_ROWS)
        self._buffers = buffers
        self._snap = self._publish(buffers, n, self.source.sae_models())

    @staticmethod
    def _put(buffers, n: int, part: Chunk, capacity: int):
        """Write part's rows at row n, growing the buffers (a copy into new ones) when they are full."""
        m, d = part.vectors.shape
        if buffers is not None and buffers[0].shape[1] != d:
            raise ValueError(f"stored vectors of {d} dimensions among vectors of {buffers[0].shape[1]}: are two "
                             "embedding models stored under one name?")
        if buffers is None or n + m > len(buffers[1]):
            cap = max(capacity, n + m) if buffers is None else int((n + m) * GROWTH) + SPARE_ROWS
            grown = (np.empty((cap, d), np.float32), np.empty(cap, np.int64), np.empty(cap, np.int32))
            if buffers is not None:
                for new, old in zip(grown, buffers, strict=True):
                    new[:n] = old[:n]
            buffers = grown
        matrix, ids, sae_ids = buffers
        matrix[n:n + m] = part.vectors  # float16 -> float32, once per row
        ids[n:n + m], sae_ids[n:n + m] = part.ids, part.sae_ids
        return buffers, n + m

    @staticmethod
    def _publish(buffers, n: int, sae_model: dict[int, str]) -> _Snapshot:
        if buffers is None:
            return _Snapshot(np.zeros((0, 0), np.float32), np.zeros(0, np.int64), np.zeros(0, np.int32), sae_model)
        matrix, ids, sae_ids = buffers
        return _Snapshot(matrix[:n], ids[:n], sae_ids[:n], sae_model)

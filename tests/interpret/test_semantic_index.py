"""The in-process semantic index on Postgres and SQLite: the same top-k as brute force over the stored float16
vectors, the model filter, incremental refresh (appended, deleted, embedded late), and the embedding writer."""

from __future__ import annotations

import threading
import time
import uuid

import numpy as np
import pytest
from sqlalchemy import delete

from app.interpret.semantic_index import SemanticIndex
from app.store import explanation_embeddings as stored
from app.store import explanations
from app.store.dashboards import upsert_model, upsert_sae
from app.store.db import make_sessionmaker, transaction
from app.store.models import ModelRecord

D = 48  # small vectors: the index does not care about the width


def unit(rng: np.random.Generator, n: int) -> np.ndarray:
    v = rng.standard_normal((n, D)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


@pytest.fixture
def store(db_engine):
    """Two models of this test's own (a: two SAEs, b: one) and a unique embedding-model name, removed afterwards."""
    sessions = make_sessionmaker(db_engine)
    tag = uuid.uuid4().hex[:8]
    slugs = {"a": f"a-{tag}", "b": f"b-{tag}"}
    with transaction(sessions) as s:
        saes = {}
        for key, slug in slugs.items():
            model = upsert_model(s, slug=slug, name=slug, source="test", config={})
            for layer in range(2 if key == "a" else 1):
                saes[f"{key}{layer}"] = upsert_sae(s, model=model, slug=f"L{layer}", layer=layer,
                                                   hook_name=f"blocks.{layer}.attn.hook_z", d_sae=1000,
                                                   architecture="topk", source="test")
    yield {"sessions": sessions, "slugs": slugs, "saes": saes, "emb": f"emb-{tag}"}
    with transaction(sessions) as s:  # the database cascades to SAEs, explanations and embeddings
        s.execute(delete(ModelRecord).where(ModelRecord.slug.in_(list(slugs.values()))))


def add(store, sae_key: str, vectors: np.ndarray, *, embed: bool = True) -> list[int]:
    """Explanations on one SAE, one per vector, with those vectors stored (or not: embed=False)."""
    with transaction(store["sessions"]) as s:
        sae = store["saes"][sae_key]
        ids = [explanations.create(s, sae=sae, feature=f, text=f"explanation {f}", author="t").id
               for f in range(len(vectors))]
        if embed:
            stored.write(s, explanation_ids=ids, vectors=vectors, model=store["emb"])
    return ids


def brute_force(ids: list[int], vectors: np.ndarray, q: np.ndarray, k: int) -> list[tuple[int, float]]:
    m = vectors.astype(np.float16).astype(np.float32)  # what the store keeps
    scores = m @ (q / np.linalg.norm(q))
    order = np.argsort(-scores)[:k]
    return [(ids[i], float(scores[i])) for i in order]


def same(got: list[tuple[int, float]], want: list[tuple[int, float]]) -> None:
    assert [i for i, _ in got] == [i for i, _ in want]
    np.testing.assert_allclose([s for _, s in got], [s for _, s in want], atol=1e-5)


def test_top_k_and_model_filter_match_brute_force(store):
    rng = np.random.default_rng(0)
    va0, va1, vb = unit(rng, 900), unit(rng, 700), unit(rng, 300)  # model b: under a quarter of the rows
    ia0, ia1, ib = add(store, "a0", va0), add(store, "a1", va1), add(store, "b0", vb)
    index = SemanticIndex(stored.StoredVectors(store["sessions"], store["emb"]))
    index.refresh()
    assert len(index) == 1900 and index.nbytes >= 1900 * D * 4
    all_ids, all_vectors = ia0 + ia1 + ib, np.concatenate([va0, va1, vb])
    for q in unit(rng, 5):
        same(index.search(q, 10), brute_force(all_ids, all_vectors, q, 10))
        same(index.search(q, 7, store["slugs"]["a"]), brute_force(ia0 + ia1, np.concatenate([va0, va1]), q, 7))
        same(index.search(q * 3, 5, store["slugs"]["b"]), brute_force(ib, vb, q, 5))  # any norm
    assert index.search(unit(rng, 1)[0], 10, "no-such-model") == []
    assert len(index.search(unit(rng, 1)[0], 5000)) == 1900
    with pytest.raises(ValueError, match="dimensions"):
        index.search(np.ones(D + 1), 3)


def test_refresh_appends_new_rows_and_rebuilds_after_deletes(store):
    rng = np.random.default_rng(1)
    index = SemanticIndex(stored.StoredVectors(store["sessions"], store["emb"]), check_every_s=0)
    index.refresh()
    assert index.loaded and len(index) == 0 and index.search(unit(rng, 1)[0], 5) == []

    first = unit(rng, 50)
    first_ids = add(store, "a0", first)
    index.refresh()
    assert len(index) == 50 and index.search(first[3], 1)[0][0] == first_ids[3]

    buffers = index._buffers
    later = unit(rng, 20)
    later_ids = add(store, "b0", later)
    index.refresh()
    assert len(index) == 70 and index._buffers is buffers  # appended in place, not reloaded
    top_id, similarity = index.search(later[5], 1, store["slugs"]["b"])[0]
    assert top_id == later_ids[5] and similarity > 0.999

    with transaction(store["sessions"]) as s:  # deleting explanations deletes their vectors (cascade)
        for i in first_ids[:10]:
            explanations.delete(s, record=explanations.get(s, explanation_id=i))
    index.refresh()
    assert len(index) == 60
    found = {i for i, _ in index.search(first[0], 70)}
    assert found == set(first_ids[10:] + later_ids)

    # an older explanation embedded late (a backfill) sits below the last loaded id: found by the count
    late = unit(rng, 3)
    late_ids = add(store, "a1", late, embed=False)
    more_ids = add(store, "a1", unit(rng, 2))
    index.refresh()
    assert len(index) == 62
    with transaction(store["sessions"]) as s:
        stored.write(s, explanation_ids=late_ids, vectors=late, model=store["emb"])
    index.refresh()
    assert len(index) == 65 and index.search(late[1], 1)[0][0] == late_ids[1]
    assert more_ids[0] in {i for i, _ in index.search(late[0], 65)}


def test_refresh_checks_at_most_every_check_every_s_and_searches_run_alongside(store):
    rng = np.random.default_rng(2)
    add(store, "a0", unit(rng, 30))
    index = SemanticIndex(stored.StoredVectors(store["sessions"], store["emb"]), check_every_s=3600)
    index.refresh()
    add(store, "a0", unit(rng, 5))
    index.refresh(wait=False)
    assert len(index) == 30  # not checked again yet
    index.invalidate()
    errors: list[BaseException] = []

    def searches() -> None:
        try:
            for q in unit(rng, 50):
                assert len(index.search(q, 3)) == 3
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=searches) for _ in range(3)]
    for t in threads:
        t.start()
    index.refresh()
    for t in threads:
        t.join()
    assert errors == [] and len(index) == 35

    # for requests: the check and the load run on a thread of their own, searches answer meanwhile
    index.check_every_s = 0
    add(store, "b0", unit(rng, 4))
    index.refresh(wait=False)
    deadline = time.monotonic() + 30
    while len(index) != 39 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(index) == 39


def test_embed_explanations_backfills_what_lacks_a_vector_and_re_embeds_on_request(store):
    rng = np.random.default_rng(3)
    ids = add(store, "a0", unit(rng, 7), embed=False)
    calls: list[int] = []

    def embed_fn(texts: list[str]) -> np.ndarray:
        calls.append(len(texts))
        return np.stack([np.roll(np.arange(1, D + 1, dtype=np.float32), len(t)) for t in texts])

    with transaction(store["sessions"]) as s:
        assert stored.embed_explanations(s, embed_fn, batch=3, model=store["emb"]) == 7
    assert calls == [3, 3, 1]
    with transaction(store["sessions"]) as s:
        assert stored.embed_explanations(s, embed_fn, model=store["emb"]) == 0  # nothing left to backfill
        assert stored.embed_explanations(s, embed_fn, ids[:2], model=store["emb"]) == 2  # after an edit
        got = stored.read(s, model=store["emb"])
    assert list(got.ids) == ids and got.vectors.dtype == np.float16 and got.vectors.shape == (7, D)
    np.testing.assert_allclose(np.linalg.norm(got.vectors.astype(np.float32), axis=1), 1, atol=1e-3)
    with transaction(store["sessions"]) as s:
        assert stored.stats(s, model=store["emb"], up_to=ids[3]) == (4, ids[-1])
        assert stored.delete(s, explanation_ids=ids[:3]) == 3
        assert len(stored.read(s, model=store["emb"], after_id=ids[4])) == 2

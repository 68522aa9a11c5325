"""Semantic search over explanations through the real web app and an in-process worker, on Postgres and SQLite:
explanations embedded with the real MiniLM, a paraphrase finds the right one first, only the asked model's; without
a worker that can embed, a clear message and full-text results; mode=text answers as before."""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import delete

from app.config import Settings
from app.engine.engine import Engine
from app.engine.loading import attach_saes, load_model
from app.interpret.embedding import Embedder
from app.store import explanation_embeddings as stored
from app.store import explanations
from app.store.dashboards import upsert_model, upsert_sae
from app.store.db import make_sessionmaker, transaction
from app.store.models import ModelRecord
from app.web.app import create_web_app
from app.worker.service import create_worker_app

TEXTS = ["closing brackets and parentheses in Python code", "words about rain, storms and the weather",
         "French words and phrases", "years and dates such as 1999 or 2021",
         "names of large cities like Paris and Tokyo", "negative emotions: sadness, anger, grief"]
DECOY = "thunderstorms and heavy rain showers"  # another model's: never in this model's results


@pytest.fixture(scope="module")
def store(db_url, db_engine):
    """This module's model (its slug is the worker's model name) with explanations on two SAEs, another model with
    one, all embedded by the real embedder; removed afterwards."""
    slug = "sem-" + ("pg" if db_url.startswith("postgres") else "lite")
    other = slug + "-other"
    sessions = make_sessionmaker(db_engine)
    embedder = Embedder.shared()
    with transaction(sessions) as s:
        ids = []
        for model_slug, texts in ((slug, TEXTS), (other, [DECOY])):
            model = upsert_model(s, slug=model_slug, name=model_slug, source="test", config={})
            saes = [upsert_sae(s, model=model, slug=f"L{layer}", layer=layer, hook_name=f"blocks.{layer}.attn.hook_z",
                               d_sae=128, architecture="standard", source="test") for layer in (0, 1)]
            ids += [explanations.create(s, sae=saes[i % 2], feature=i, text=t, author="alice").id
                    for i, t in enumerate(texts)]
        assert stored.embed_explanations(s, embedder.embed, ids, model=embedder.name) == len(TEXTS) + 1
    yield {"slug": slug, "url": db_url}
    with transaction(sessions) as s:  # the database cascades to SAEs, explanations and embeddings
        s.execute(delete(ModelRecord).where(ModelRecord.slug.in_([slug, other])))


@pytest.fixture(scope="module")
def web(store, tiny_model_dir, sae_dirs):
    model = load_model(str(tiny_model_dir))
    engine = Engine(model, attach_saes(model, [str(p) for p in sae_dirs["standard"]]), store["slug"])
    with TestClient(create_web_app(Settings(database_url=store["url"]), create_worker_app(engine))) as c:
        yield c


@pytest.fixture(scope="module")
def web_only(store):
    """The web app with a worker URL where nothing answers."""
    settings = Settings(database_url=store["url"], model_slug=store["slug"], worker_urls=["http://127.0.0.1:9"])
    with TestClient(create_web_app(settings)) as c:
        yield c


def semantic(client: TestClient, q: str, **params) -> dict:
    r = client.get("/api/v1/explanations/search", params={"q": q, "mode": "semantic", **params})
    assert r.status_code == 200, r.text
    return r.json()


@pytest.mark.parametrize("query,expected", [
    ("precipitation forecast", TEXTS[1]), ("feeling unhappy or furious", TEXTS[5]),
    ("metropolitan areas", TEXTS[4]), ("source code punctuation", TEXTS[0]), ("en français", TEXTS[2])])
def test_a_paraphrase_finds_its_explanation_first(web, query, expected):
    body = semantic(web, query)
    assert body["mode"] == "semantic" and body["embedding_model"] == Embedder.shared().name
    first = body["results"][0]
    assert first["text"] == expected
    assert {"id", "text", "method", "author", "scores", "sae_id", "layer", "feature", "similarity"} <= first.keys()
    similarities = [h["similarity"] for h in body["results"]]
    assert similarities == sorted(similarities, reverse=True) and -1 <= similarities[-1] <= similarities[0] <= 1


def test_only_the_asked_models_explanations_and_the_limit(web, store):
    body = semantic(web, DECOY, limit=3)
    assert body["results"][0]["text"] == TEXTS[1] and len(body["results"]) == 3
    assert DECOY not in {h["text"] for h in semantic(web, DECOY, limit=50)["results"]}
    # a model in the store that no worker serves: the first model's worker embeds the query
    other = web.get(f"/api/v1/models/{store['slug']}-other/explanations/search",
                    params={"q": "rainy weather", "mode": "semantic"})
    assert other.status_code == 200 and [h["text"] for h in other.json()["results"]] == [DECOY]


def test_text_mode_answers_as_before(web):
    plain = web.get("/api/v1/explanations/search", params={"q": "weather"}).json()
    assert plain == web.get("/api/v1/explanations/search", params={"q": "weather", "mode": "text"}).json()
    assert set(plain) == {"query", "results"} and [h["text"] for h in plain["results"]] == [TEXTS[1]]
    assert "similarity" not in plain["results"][0]
    assert web.get("/api/v1/explanations/search", params={"q": "x", "mode": "fuzzy"}).status_code == 422


def test_without_a_worker_semantic_search_says_so_and_answers_full_text(web_only):
    body = semantic(web_only, "weather")
    assert body["mode"] == "text" and "semantic search needs an inference worker" in body["message"]
    assert [h["text"] for h in body["results"]] == [TEXTS[1]]
    page = web_only.get("/search", params={"q": "weather", "mode": "semantic"})
    assert page.status_code == 200 and "semantic search needs an inference worker" in page.text
    assert TEXTS[1] in page.text


def test_search_page_by_meaning(web):
    page = web.get("/search", params={"q": "feeling unhappy or furious", "mode": "semantic"})
    assert page.status_code == 200 and "closest in meaning to" in page.text
    assert re.search(r'<option value="semantic" selected>', page.text)
    rows = re.findall(r"<tr><td><a href=[^>]*>[^<]*</a></td><td>([^<]*)</td>", page.text)
    assert rows[0] == TEXTS[5] and len(rows) == len(TEXTS)
    words = web.get("/search", params={"q": "weather"})
    assert "Explanations matching" in words.text and "similarity" not in words.text

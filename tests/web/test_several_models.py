"""One web app, several models and SAE sets: real `saex worker` processes on two tiny models (each naming its model,
set and SAEs), discovered from their /v1/info; requests routed by `model` (default: the first), store routes under
/api/v1/models/{model}/, the home page listing both; and failover between two workers of one model when one is
killed."""

from __future__ import annotations

import signal

import pytest
from fastapi.testclient import TestClient

from app.config import Settings
from app.engine.engine import Engine
from app.engine.loading import attach_saes, load_model
from app.store.db import make_engine, make_sessionmaker, transaction, upgrade
from app.store.explanations import create as create_explanation
from app.web.app import create_web_app
from tests.conftest import make_model_folder
from tests.processes import free_port, start_saex, stop, wait_http

PROMPT = "The quick brown fox"
pytestmark = pytest.mark.process


def worker(tmp_path, name: str, model_dir, saes: list[str], slug: str, sae_set: str):
    port = free_port()
    args = ["worker", "--port", str(port), "--threads", "1", "--model", str(model_dir), "--model-slug", slug,
            "--sae-set", sae_set]
    for sae in saes:
        args += ["--sae", sae]
    proc = start_saex(args, tmp_path / f"{name}.log", env={"OMP_NUM_THREADS": "1"})
    return proc, f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def second_model_dir(tmp_path_factory):
    return make_model_folder(tmp_path_factory.mktemp("models") / "other", n_layers=2, seed=1)


def store(tmp_path, engines: dict[str, Engine]) -> str:
    """A store in which each model's SAEs are registered, with an explanation on feature 3 of its first SAE."""
    from app.jobs.dashboards import register

    url = f"sqlite:///{tmp_path / 'm.db'}"
    upgrade(url)
    db = make_engine(url)
    with transaction(make_sessionmaker(db)) as s:
        for slug, engine in engines.items():
            saes = register(s, engine, slug)
            create_explanation(s, sae=saes[0], feature=3, text=f"a feature of {slug}", author="t")
    db.dispose()
    return url


def test_two_models_served_at_once_through_one_web_app(tmp_path, tiny_model_dir, second_model_dir, sae_dirs):
    topk = [f"tk{i}={p}" for i, p in enumerate(sae_dirs["topk"])]
    std = [str(p) for p in sae_dirs["standard"]]  # default ids: L0, L1
    a, url_a = worker(tmp_path, "a", tiny_model_dir, topk, "alpha", "topk-128")
    b, url_b = worker(tmp_path, "b", second_model_dir, std, "beta", "std")
    try:
        for proc, url in ((a, url_a), (b, url_b)):
            wait_http(url + "/health", 120, proc)
        ref = {}
        for slug, folder, specs, sae_set in (("alpha", tiny_model_dir, topk, "topk-128"),
                                             ("beta", second_model_dir, std, "std")):
            model = load_model(str(folder))
            ref[slug] = Engine(model, attach_saes(model, specs), slug, sae_set)
        db = store(tmp_path, ref)
        with TestClient(create_web_app(Settings(database_url=db, worker_urls=[url_a, url_b]))) as c:
            models = c.get("/api/v1/models").json()
            assert [m["name"] for m in models] == ["alpha", "beta"]
            assert [(s["id"], s["layer"], s["set"]) for s in models[0]["saes"]] == [("tk0", 0, "topk-128"),
                                                                                    ("tk1", 1, "topk-128")]
            assert [(s["id"], s["set"]) for s in models[1]["saes"]] == [("L0", "std"), ("L1", "std")]
            assert c.get("/api/v1/info", params={"model": "beta"}).json()["model"]["name"] == "beta"
            # routed by model; no model: the first
            for slug in ("alpha", "beta"):
                r = c.post("/api/v1/analyze", json={"text": PROMPT, "model": slug, "top_k": 4})
                assert r.status_code == 200 and r.json() == ref[slug].analyze(PROMPT, None, 4)
            assert c.post("/api/v1/analyze", json={"text": PROMPT, "top_k": 4}).json() == \
                ref["alpha"].analyze(PROMPT, None, 4)
            trace = c.post("/api/v1/feature-trace", json={"text": PROMPT, "model": "alpha", "sae_id": "tk1",
                                                          "feature": 5}).json()
            assert trace == ref["alpha"].feature_trace(PROMPT, 1, 5)
            steer = c.post("/api/v1/steer", json={"text": PROMPT, "model": "beta", "max_new_tokens": 3,
                                                  "interventions": [{"layer": 1, "feature": 2, "value": 4.0}]})
            assert steer.status_code == 200 and steer.json()["permalink"].startswith("/s/")
            missing = c.post("/api/v1/analyze", json={"text": PROMPT, "model": "gamma"})
            assert missing.status_code == 404 and "alpha" in missing.json()["detail"]
            wrong_set = c.post("/api/v1/analyze", json={"text": PROMPT, "model": "beta", "set": "topk-128"})
            assert wrong_set.status_code == 404 and "sets: ['std']" in wrong_set.json()["detail"]
            # store routes: the short form is the first model, /models/{model}/ any
            short = c.get("/api/v1/saes/tk0/features/3/explanations").json()
            beta = c.get("/api/v1/models/beta/saes/L0/features/3/explanations").json()
            assert [x["text"] for x in short] == ["a feature of alpha"]
            assert [x["text"] for x in beta] == ["a feature of beta"]
            assert c.get("/api/v1/models/beta/saes/tk0/features/3/explanations").status_code == 404
            # pages: the home page lists both models and their SAE sets; each model's pages answer
            home = c.get("/").text
            assert all(word in home for word in ("alpha", "beta", "topk-128", "std", "tk1", "0 of 128"))
            assert c.get("/beta/steer").status_code == 200 and c.get("/gamma/steer").status_code == 404
            explored = c.get("/", params={"text": PROMPT, "model": "beta", "layer": 1, "feature": 3})
            assert explored.status_code == 200 and "/beta/L1/3" in explored.text
    finally:
        stop(a)
        stop(b)


def test_failover_between_two_workers_of_one_model(tmp_path, tiny_model_dir, sae_dirs):
    """Two workers of one model: kill one, and every request is still answered by the other."""
    specs = [str(p) for p in sae_dirs["standard"]]
    one, url_one = worker(tmp_path, "one", tiny_model_dir, specs, "tiny", "default")
    two, url_two = worker(tmp_path, "two", tiny_model_dir, specs, "tiny", "default")
    try:
        for proc, url in ((one, url_one), (two, url_two)):
            wait_http(url + "/health", 120, proc)
        db = store(tmp_path, {})
        with TestClient(create_web_app(Settings(database_url=db, worker_urls=[url_one, url_two]))) as c:
            models = c.get("/api/v1/models").json()
            assert [m["name"] for m in models] == ["tiny"]  # one model, pooled
            before = [c.post("/api/v1/analyze", json={"text": PROMPT, "top_k": 3}) for _ in range(4)]
            one.send_signal(signal.SIGKILL)
            one.wait(30)
            after = [c.post("/api/v1/analyze", json={"text": PROMPT, "top_k": 3}) for _ in range(6)]
            steer = c.post("/api/v1/steer", json={"text": PROMPT, "max_new_tokens": 2})
            ready = c.get("/ready").json()
    finally:
        stop(one)
        stop(two)
    assert [r.status_code for r in before + after] == [200] * 10
    assert all(r.json() == before[0].json() for r in after)
    assert steer.status_code == 200
    assert ready["workers"] == 1  # issue 17: how many answer (their URLs only to an admin key)

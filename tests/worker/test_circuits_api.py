"""The worker's attention-circuit endpoints: POST /v1/graph and /v1/circuits/discover answer the engine's numbers in
the contract's fields, and refuse bad or oversized input with a clear 4xx."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from app.engine.engine import Engine
from app.engine.loading import attach_saes, load_model
from app.worker.service import create_worker_app

PROMPT = "The quick brown fox jumps over the lazy dog"


@pytest.fixture(scope="module")
def engine(tiny_model_dir, sae_dirs) -> Engine:
    model = load_model(str(tiny_model_dir))
    return Engine(model, attach_saes(model, [str(p) for p in sae_dirs["standard"]]), "tiny")


@pytest.fixture(scope="module")
def client(engine) -> TestClient:
    with TestClient(create_worker_app(engine, queue_size=4)) as c:
        yield c


def test_graph_is_the_engines_and_sums_exactly(client, engine):
    n = len(engine.tokenize(PROMPT)["tokens"])
    body = {"text": PROMPT, "layer": 1, "feature": 5, "position": n - 1, "max_depth": 2, "threshold": 0.02,
            "top_n": 10}
    r = client.post("/v1/graph", json=body)
    assert r.status_code == 200, r.text
    graph = r.json()
    assert graph["root"] == f"f:1:{n - 1}:5" and len(graph["tokens"]) == n
    assert graph == engine.graph(PROMPT, 1, 5, n - 1, 2, 0.02, 10)
    values = {node["id"]: node["value"] for node in graph["nodes"]}
    sums: dict[str, float] = {}
    for link in graph["links"]:
        sums[link["target"]] = sums.get(link["target"], 0.0) + link["weight"]
    assert graph["root"] in sums
    for target, total in sums.items():
        assert abs(total - values[target]) <= 1e-4 * abs(values[target])
    by_sae_id = client.post("/v1/graph", json={**body, "layer": None, "sae_id": "L1"}).json()
    assert by_sae_id["root"] == graph["root"]


@pytest.mark.parametrize(("change", "status", "says"), [
    ({"position": 500}, 404, "outside the prompt"),
    ({"feature": 10_000}, 404, "does not exist"),
    ({"layer": 7}, 404, "no SAE on layer 7"),
    ({"max_depth": 0}, 422, "max_depth"),
    ({"top_n": 1000}, 422, "top_n"),
    ({"threshold": "0.1"}, 422, "threshold"),
    ({"text": "word " * 400}, 413, "shorten it"),
])
def test_graph_refuses_bad_input(client, change, status, says):
    body = {"text": PROMPT, "layer": 1, "feature": 5, "position": 1, **change}
    r = client.post("/v1/graph", json=body)
    assert r.status_code == status and says in r.text, r.text


def test_discover_on_the_builtin_task_and_on_lists(client, engine):
    r = client.post("/v1/circuits/discover", json={"task": "induction", "ground_truth": [{"layer": 1, "head": 0}]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert len(body["heads"]) == 8 and len(body["patching"]) == 8
    assert set(body["roc_auc"]) == {"codes", "patching"} and 0 <= body["roc_auc"]["codes"] <= 1
    assert body["edges"][0]["source"].keys() == {"layer", "head"}
    lists = {"positive": ["a b c a b c", "x y z x y z"], "negative": ["a b c d e f", "x y z u v w"],
             "patching": False, "max_edges": 5, "positions": "last"}
    body = client.post("/v1/circuits/discover", json=lists).json()
    assert len(body["edges"]) == 5 and body["patching"] is None and body["roc_auc"] is None
    direct = engine.discover_circuits(lists["positive"], lists["negative"], None, "last", 5, False)
    assert body["heads"] == direct["heads"] and body["edges"] == direct["edges"]


@pytest.mark.parametrize(("body", "status", "says"), [
    ({"positive": ["a b"]}, 422, "positive and negative"),
    ({"task": "induction", "positive": ["a"], "negative": ["b"]}, 422, "not both"),
    ({"task": "telepathy"}, 422, "induction"),  # the message lists the built-in tasks
    ({"positive": ["a"] * 65, "negative": ["b"]}, 422, "64"),
    ({"task": "induction", "ground_truth": [{"layer": 3, "head": 0}]}, 422, "ground_truth"),
    ({"positive": ["a " * 200], "negative": ["b"]}, 413, "context"),
])
def test_discover_refuses_bad_input(client, body, status, says):
    r = client.post("/v1/circuits/discover", json=body)
    assert r.status_code == status and says in r.text, r.text

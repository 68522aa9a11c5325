"""Issue 17, finding 9: `GET` (or any other method) on a POST-only API path is 405 with an `Allow` that names what
the path takes (the page routes' catch-alls used to answer 422 for /api/v1/analyze); `OPTIONS` says the same with
204; and the OpenAPI schema states the served model's limits (steer's max_new_tokens at most its n_ctx)."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from tests.web import test_hardening_sessions

lab = test_hardening_sessions.lab


@pytest.fixture(scope="module")
def c(lab):
    with TestClient(lab["app"]()) as client:
        yield client


@pytest.mark.parametrize("path", ["/api/v1/analyze", "/api/v1/steer", "/api/v1/dfa", "/api/v1/feature-trace",
                                  "/api/v1/graph", "/api/v1/circuits/discover", "/api/v1/tokenize",
                                  "/api/v1/models/{slug}/saes/L0/features/3/score"])
def test_get_on_a_post_only_path_is_405(c, lab, path):
    path = path.format(slug=lab["slug"])
    for method in ("GET", "PUT", "DELETE", "PATCH"):
        r = c.request(method, path)
        assert r.status_code == 405, (method, path, r.status_code, r.text)
        assert r.headers["Allow"] == "POST" and "POST" in r.json()["detail"]


def test_options_names_the_allowed_methods(c, lab):
    r = c.options("/api/v1/analyze")
    assert r.status_code == 204 and r.headers["Allow"] == "POST"
    r = c.options("/api/v1/models")
    assert r.status_code == 204 and set(r.headers["Allow"].split(", ")) == {"GET", "HEAD"}
    r = c.options(f"/api/v1/models/{lab['slug']}/saes/L0/features/5/explanations")
    assert r.status_code == 204 and {"GET", "POST"} <= set(r.headers["Allow"].split(", "))
    r = c.options(f"/api/v1/models/{lab['slug']}/saes/L0/features/5/explanations/7")
    assert r.status_code == 204 and r.headers["Allow"] == "DELETE, PATCH"
    assert c.options("/api/v1/no-such-thing").status_code == 404


def test_pages_and_the_api_keep_their_answers(c, lab):
    assert c.post("/api/v1/analyze", json={"text": "fox", "model": lab["slug"]}).status_code == 200
    assert c.get("/api/v1/models").status_code == 200 and c.head("/api/v1/models").status_code == 200
    for method in ("GET", "POST", "OPTIONS"):  # a path the API lacks is the API's 404, not a page route's 422
        r = c.request(method, "/api/v1/no-such/thing")
        assert r.status_code == 404 and r.json()["detail"]
    assert c.get(f"/{lab['slug']}/steer").status_code == 200


def test_the_schema_states_the_served_models_limits(c, lab):
    schema = c.get("/openapi.json").json()
    n_ctx = c.get("/api/v1/models").json()[0]["n_ctx"]
    steer = schema["components"]["schemas"]["SteerRequest"]["properties"]["max_new_tokens"]
    assert steer["maximum"] <= n_ctx and str(n_ctx) in steer.get("description", "")


def test_asking_for_more_tokens_than_the_context_holds_is_a_clear_4xx(c, lab):
    r = c.post("/api/v1/steer", json={"model": lab["slug"], "text": "fox", "max_new_tokens": 500})
    assert r.status_code == 422 and "at most" in r.json()["detail"]

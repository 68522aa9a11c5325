"""Property-based tests of the worker and the web app over their own OpenAPI documents (schemathesis): for
generated valid and invalid bodies, no 5xx, only documented status codes, responses that match their schemas, and
invalid bodies refused with a 4xx. Semantic refusals a schema cannot express (no SAE on that layer, a position past the
prompt) are 4xx with a message, tested elsewhere, so the check that every schema-valid body succeeds is left out."""

from __future__ import annotations

import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import negative_data_rejection, positive_data_acceptance


def run_mode(operation, mode: GenerationMode, examples: int) -> None:
    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=examples, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    def check(case):
        response = case.call()
        if mode == GenerationMode.NEGATIVE:  # refused with a 4xx (413 included: a body over 1 MB)
            assert 400 <= response.status_code < 500, (case.body, response.status_code, response.text)
        case.validate_response(response, excluded_checks=[positive_data_acceptance, negative_data_rejection])

    check()


def exercise(schema, examples: int = 25) -> list[str]:
    """Run every operation of the schema with valid and invalid generated bodies; return the operations run."""
    ran = []
    for result in schema.get_all_operations():
        operation = result.ok()
        modes = [GenerationMode.POSITIVE]
        if operation.method.upper() == "POST":  # an operation with no input has no invalid input to generate
            modes.append(GenerationMode.NEGATIVE)
        for mode in modes:
            run_mode(operation, mode, examples)
        ran.append(operation.label)
    return ran


def test_worker_api_conforms(tiny_engines):
    from app.worker.service import create_worker_app

    app = create_worker_app(tiny_engines["topk"])
    ran = exercise(schemathesis.openapi.from_asgi("/openapi.json", app))
    assert {"POST /v1/analyze", "POST /v1/steer", "POST /v1/dfa"} <= set(ran)


def test_web_api_conforms(tiny_engines, tmp_path):
    """The web app's whole API: model-backed routes through an in-process worker, store routes, auth failures."""
    from app.config import Settings
    from app.store.db import upgrade
    from app.web.app import create_web_app
    from app.worker.service import create_worker_app

    url = f"sqlite:///{tmp_path / 'fuzz.db'}"
    upgrade(url)
    app = create_web_app(Settings(database_url=url, rate_limit_per_minute=0),
                         create_worker_app(tiny_engines["jumprelu"]))
    ran = exercise(schemathesis.openapi.from_asgi("/openapi.json", app), examples=15)
    assert {"POST /api/v1/analyze", "POST /api/v1/steer", "GET /api/v1/saes/{sae_id}/features/{feature}",
            "POST /api/v1/saes/{sae_id}/features/{feature}/explanations", "GET /api/v1/explanations/search"} <= set(ran)

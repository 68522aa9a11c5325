"""The worker's HTTP API: the bodies of shared/api.md, equal to the engine's numbers, and every error case as
a clear 4xx/503 with a `detail` string, never a 500."""

from __future__ import annotations

import asyncio
import threading
import zlib

import httpx
import pytest
from fastapi.testclient import TestClient

from app.engine.engine import Engine
from app.engine.loading import attach_saes, load_model
from app.worker.service import create_worker_app

PROMPT = "The quick brown fox"


@pytest.fixture(scope="module")
def engine(tiny_model_dir, sae_dirs) -> Engine:
    model = load_model(str(tiny_model_dir))
    return Engine(model, attach_saes(model, [str(p) for p in sae_dirs["topk"]]), "tiny")


@pytest.fixture(scope="module")
def client(engine) -> TestClient:
    with TestClient(create_worker_app(engine, queue_size=4)) as c:
        yield c


def test_health_and_info(client):
    assert client.get("/health").json() == {"status": "ok"}
    info = client.get("/v1/info").json()
    assert info["model"] == {"name": "tiny", "n_layers": 2, "n_heads": 4, "d_head": 16, "d_model": 64, "n_ctx": 96,
                             "d_vocab": info["model"]["d_vocab"], "prepends_bos": True}
    assert [(s["id"], s["layer"], s["hook_name"], s["d_sae"], s["architecture"]) for s in info["saes"]] == [
        ("L0", 0, "blocks.0.attn.hook_z", 128, "topk"), ("L1", 1, "blocks.1.attn.hook_z", 128, "topk")]


def test_tokenize(client, engine):
    body = client.post("/v1/tokenize", json={"text": PROMPT}).json()
    assert body["tokens"][0] == "<|endoftext|>"
    assert body["token_ids"] == engine.model.to_tokens(PROMPT)[0].tolist()
    assert "".join(body["tokens"][1:]) == PROMPT


def test_analyze_matches_engine(client, engine):
    r = client.post("/v1/analyze", json={"text": PROMPT, "layers": [1], "top_k": 3})
    assert r.status_code == 200
    body = r.json()
    assert [layer["layer"] for layer in body["layers"]] == [1]
    assert body == {**engine.analyze(PROMPT, [1], 3)}
    assert all(len(row) <= 3 for row in body["layers"][0]["top_features"])
    assert len(body["layers"][0]["l0"]) == len(body["tokens"])
    both = client.post("/v1/analyze", json={"text": PROMPT}).json()
    assert [layer["sae_id"] for layer in both["layers"]] == ["L0", "L1"]


def test_answers_are_gzipped_when_the_client_takes_gzip_and_only_then(client, engine):
    body = {"text": PROMPT * 5, "top_k": 10}
    with client.stream("POST", "/v1/analyze", json=body, headers={"Accept-Encoding": "gzip, deflate"}) as r:
        raw = b"".join(r.iter_raw())
    assert r.headers["content-encoding"] == "gzip" and r.headers["vary"] == "Accept-Encoding"
    assert int(r.headers["content-length"]) == len(raw)
    plain = client.post("/v1/analyze", json=body, headers={"Accept-Encoding": "identity"})
    assert "content-encoding" not in plain.headers and len(plain.content) > 2048
    assert zlib.decompress(raw, wbits=31) == plain.content and len(raw) < len(plain.content) / 2
    assert plain.json() == engine.analyze(body["text"], None, 10)
    small = client.post("/v1/tokenize", json={"text": "fox"}, headers={"Accept-Encoding": "gzip"})
    assert "content-encoding" not in small.headers  # a body this small goes out as it is


def test_feature_trace_and_dfa(client):
    trace = client.post("/v1/feature-trace", json={"text": PROMPT, "layer": 1, "feature": 5}).json()
    n = len(trace["tokens"])
    assert len(trace["activations"]) == len(trace["pre_activations"]) == len(trace["bias_contribution"]) == n
    assert all(len(h) == 4 for h in trace["head_contributions"])
    dfa = client.post("/v1/dfa", json={"text": PROMPT, "layer": 1, "feature": 5, "position": n - 1}).json()
    assert len(dfa["contributions"]) == 4 and all(len(row) == n for row in dfa["contributions"])
    total = sum(map(sum, dfa["contributions"])) + dfa["bias_contribution"]
    assert total == pytest.approx(dfa["pre_activation"], rel=1e-4, abs=1e-5)
    assert dfa["pre_activation"] == pytest.approx(trace["pre_activations"][n - 1], rel=1e-5, abs=1e-6)


def test_steer_add_zero_identity_over_http(client):
    body = {"text": PROMPT, "max_new_tokens": 6, "temperature": 0.7, "seed": 5, "top_logprobs": 2,
            "interventions": [{"layer": 1, "feature": 17, "mode": "add", "value": 0.0}]}
    out = client.post("/v1/steer", json=body).json()
    assert out["default"] == out["steered"]
    assert len(out["default"]["logprobs"]) == 6
    assert all(len(e["top"]) == 2 for e in out["default"]["logprobs"])
    clamp = {**body, "temperature": 0.0, "interventions": [{"layer": 1, "feature": 17, "mode": "clamp", "value": 500}]}
    out = client.post("/v1/steer", json=clamp).json()
    assert out["default"]["token_ids"] != out["steered"]["token_ids"]


@pytest.mark.parametrize("path,body,status,needle", [
    ("/v1/analyze", {"text": "fox " * 200}, 413, "context is 96 tokens"),
    ("/v1/analyze", {"text": ""}, 422, "text"),
    ("/v1/analyze", {"text": PROMPT, "layers": [7]}, 404, "layers with SAEs: [0, 1]"),
    ("/v1/analyze", {"text": PROMPT, "top_k": 100000}, 422, "top_k"),
    ("/v1/analyze", {"text": PROMPT, "top_k": 0}, 422, "top_k"),
    ("/v1/analyze", {"text": PROMPT, "topk": 3}, 422, "unknown field"),
    ("/v1/analyze", {"text": 12}, 422, "text"),
    ("/v1/analyze", {}, 422, "text"),
    ("/v1/feature-trace", {"text": PROMPT, "layer": 1, "feature": 128}, 404, "features are 0 to 127"),
    ("/v1/feature-trace", {"text": PROMPT, "layer": 3, "feature": 1}, 404, "no SAE on layer 3"),
    ("/v1/feature-trace", {"text": PROMPT, "layer": -1, "feature": 1}, 422, "layer"),
    ("/v1/dfa", {"text": PROMPT, "layer": 1, "feature": 1, "position": 99}, 404, "positions 0 to"),
    ("/v1/steer", {"text": PROMPT, "max_new_tokens": -1}, 422, "max_new_tokens"),
    ("/v1/steer", {"text": PROMPT, "temperature": -0.5}, 422, "temperature"),
    ("/v1/steer", {"text": PROMPT, "top_logprobs": 1000}, 422, "top_logprobs"),
    ("/v1/steer", {"text": PROMPT, "interventions": [{"layer": 1, "feature": 2, "mode": "boost"}]}, 422, "mode"),
    ("/v1/steer", {"text": PROMPT, "interventions": [{"layer": 1, "feature": 900}]}, 404, "features are 0 to 127"),
    ("/v1/steer", {"text": PROMPT, "interventions": [{"layer": 1, "feature": 2, "heads": [9]}]}, 422, "heads 0 to 3"),
    ("/v1/steer", {"text": PROMPT, "interventions": [{"layer": 1, "feature": 2, "positions": [50]}]}, 422,
     "prompt positions 0 to"),
    ("/v1/steer", {"text": PROMPT, "interventions": [{"layer": 1, "feature": 2, "value": 1e300}]}, 422, "value"),
])
def test_bad_input_gets_a_clear_4xx(client, path, body, status, needle):
    r = client.post(path, json=body)
    assert r.status_code == status, r.text
    detail = r.json()["detail"]
    assert isinstance(detail, str) and needle in detail, detail


@pytest.mark.parametrize("raw", [
    b'{"text": "fox", "interventions": [{"layer": 1, "feature": 2, "value": NaN}]}',
    b'{"text": "fox", "temperature": Infinity}',
    b'{"text": "fox", ',
    b'\xff\xfe',
])
def test_non_finite_and_broken_json(client, raw):
    r = client.post("/v1/steer", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 422, r.text
    assert isinstance(r.json()["detail"], str)


def test_oversize_body_is_413(client):
    r = client.post("/v1/analyze", content=b'{"text": "' + b"a" * (2 << 20) + b'"}',
                    headers={"content-type": "application/json"})
    assert r.status_code == 413
    assert "larger than" in r.json()["detail"]


def test_full_queue_answers_503_with_retry_after(engine):
    """One request computes, `queue_size` wait, the next is refused at once with Retry-After."""
    app = create_worker_app(engine, queue_size=1)
    release = threading.Event()
    original = engine.analyze

    def slow_analyze(*args, **kwargs):
        release.wait(10)
        return original(*args, **kwargs)

    async def scenario():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://worker") as c:
            held = [asyncio.create_task(c.post("/v1/analyze", json={"text": PROMPT})) for _ in range(2)]
            await asyncio.sleep(0.2)  # one computing, one waiting
            refused = await c.post("/v1/analyze", json={"text": PROMPT})
            release.set()
            return refused, await asyncio.gather(*held)

    engine.analyze = slow_analyze
    try:
        refused, held = asyncio.run(scenario())
    finally:
        engine.analyze = original
    assert refused.status_code == 503
    assert int(refused.headers["Retry-After"]) >= 1
    assert "busy" in refused.json()["detail"]
    assert [r.status_code for r in held] == [200, 200]


def test_request_ids_and_json_logs(client, caplog):
    import json as _json
    import logging

    from app.serving.request_log import JSONLines

    with caplog.at_level(logging.INFO, logger="saex.requests"):
        r = client.post("/v1/analyze?secret=1", json={"text": "my private prompt", "top_k": 2})
        given = client.get("/health", headers={"X-Request-ID": "abc-123"})
        junk = client.get("/health", headers={"X-Request-ID": "<script>"})
    assert len(r.headers["X-Request-ID"]) == 16
    assert given.headers["X-Request-ID"] == "abc-123"
    assert junk.headers["X-Request-ID"] != "<script>"
    lines = [_json.loads(JSONLines().format(rec)) for rec in caplog.records if rec.name == "saex.requests"]
    first = next(line for line in lines if line["request_id"] == r.headers["X-Request-ID"])
    assert first["path"] == "/v1/analyze" and first["status"] == 200 and first["ms"] > 0
    text = "\n".join(_json.dumps(line) for line in lines)
    assert "private prompt" not in text and "secret" not in text  # no bodies, no query strings


def test_time_budget_stops_steering_between_tokens(engine):
    """A long generation under a small budget ends in 503 + Retry-After (stopped between tokens, not hung); the
    same request under the default budget is answered whole."""
    steer = {"text": PROMPT, "max_new_tokens": 80, "interventions": []}
    with TestClient(create_worker_app(engine, time_budget_s=0.02)) as tight:
        r = tight.post("/v1/steer", json=steer)
    assert r.status_code == 503 and r.headers["Retry-After"].isdigit()
    assert "time budget of 0.02 s" in r.json()["detail"]
    with TestClient(create_worker_app(engine)) as roomy:
        assert len(roomy.post("/v1/steer", json=steer).json()["steered"]["token_ids"]) == 80


def test_time_budget_counts_time_in_the_queue(engine):
    """A request still queued when its budget runs out is answered 503 without being computed."""
    app = create_worker_app(engine, queue_size=2, time_budget_s=0.3)
    release = threading.Event()
    original, calls = engine.analyze, []

    def slow_analyze(*args, **kwargs):
        calls.append(1)
        release.wait(10)
        return original(*args, **kwargs)

    async def scenario():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://worker") as c:
            first = asyncio.create_task(c.post("/v1/analyze", json={"text": PROMPT}))
            await asyncio.sleep(0.05)
            second = asyncio.create_task(c.post("/v1/analyze", json={"text": PROMPT}))
            await asyncio.sleep(0.5)  # past the second one's budget while it waits
            release.set()
            return await first, await second

    engine.analyze = slow_analyze
    try:
        first, second = asyncio.run(scenario())
    finally:
        engine.analyze = original
    assert first.status_code == 200  # it started within its budget; a forward pass is never cut off
    assert second.status_code == 503 and "waited in the queue" in second.json()["detail"]
    assert len(calls) == 1  # the second was never computed


def test_json_bodies_refuse_non_finite_numbers():
    from app.serving.json_response import FastJSON

    assert FastJSON({"a": [1.5, None], "b": "null"}).body == b'{"a":[1.5,null],"b":"null"}'
    for bad in ({"a": [float("nan")]}, {"a": {"b": float("inf")}}):
        with pytest.raises(ValueError, match="non-finite"):
            FastJSON(bad)


def test_a_result_holding_a_non_finite_number_is_a_500_with_the_request_id_never_a_null(engine, caplog):
    """The engine thread serialises results (compute's timed()); a NaN there must still end as the server-error
    answer, not as a body with null in it, and the queue must go on serving."""
    original = engine.analyze
    engine.analyze = lambda *args, **kwargs: {**original(PROMPT), "tokens": [float("nan")]}
    try:
        with TestClient(create_worker_app(engine), raise_server_exceptions=False) as c:
            r = c.post("/v1/analyze", json={"text": PROMPT}, headers={"X-Request-ID": "nan-1"})
            engine.analyze = original
            after = c.post("/v1/analyze", json={"text": PROMPT})
    finally:
        engine.analyze = original
    assert r.status_code == 500 and "nan-1" in r.json()["detail"] and "Traceback" not in r.text
    assert after.status_code == 200 and after.json() == original(PROMPT)


def test_a_small_pass_after_an_idle_spell_computes_on_one_thread(engine):
    """Threads: one intra-op thread for a small single pass after COLD_AFTER_S idle; all of them when warm, for a
    pass too big, or for anything that is not a single pass; the count is restored after each call."""
    import time

    import torch

    from app.worker.service import COLD_AFTER_S, SMALL_PASS_FLOPS, Threads

    threads = Threads(engine)
    seen = lambda: torch.get_num_threads()  # noqa: E731
    with engine.threads(2):
        threads.last_end = time.monotonic() - 2 * COLD_AFTER_S
        assert threads.run(seen, threads.single_pass(PROMPT)) == 1  # cold and small
        assert torch.get_num_threads() == 2
        assert threads.run(seen, threads.single_pass(PROMPT)) == 2  # warm: it just ran
        threads.last_end = time.monotonic() - 2 * COLD_AFTER_S
        assert threads.run(seen, None) == 2  # not a single pass (steering)
        threads.last_end = time.monotonic() - 2 * COLD_AFTER_S
        long_text = "x" * 10_000
        assert engine.pass_flops(engine.model.cfg.n_ctx) <= SMALL_PASS_FLOPS  # the tiny model: always small
        assert threads.run(seen, threads.single_pass(long_text)) == 1
        big = engine.pass_flops  # a model whose pass is large
        engine.pass_flops = lambda tokens: SMALL_PASS_FLOPS * 2
        try:
            threads.last_end = time.monotonic() - 2 * COLD_AFTER_S
            assert threads.run(seen, threads.single_pass(PROMPT)) == 2
        finally:
            engine.pass_flops = big
        threads.last_end = time.monotonic() - 2 * COLD_AFTER_S
        with pytest.raises(ZeroDivisionError):
            threads.run(lambda: 1 / 0, threads.single_pass(PROMPT))
        assert torch.get_num_threads() == 2 and time.monotonic() - threads.last_end < COLD_AFTER_S


def test_pass_flops_is_what_an_analysis_multiplies(engine):
    """Exactly torch's own FLOP count of the matrix products in a real analysis (the rest is elementwise)."""
    from torch.utils.flop_counter import FlopCounterMode

    for text in (PROMPT, "The quick brown fox jumps over the lazy dog. " * 3):
        tokens = len(engine.tokenize(text)["token_ids"])
        with FlopCounterMode(display=False) as counter:
            engine.analyze(text)
        assert counter.get_total_flops() == engine.pass_flops(tokens)


def test_a_worker_names_its_model_its_sae_set_and_each_sae(tiny_model_dir, sae_dirs):
    """`--model-slug`, `--sae-set` and `--sae id=folder` reach /v1/info; bodies naming another model or set are a
    404 that says which this worker serves, and a feature request may name its SAE by id instead of layer."""
    model = load_model(str(tiny_model_dir))
    specs = [f"narrow-{i}={p}" for i, p in enumerate(sae_dirs["standard"])]
    with TestClient(create_worker_app(Engine(model, attach_saes(model, specs), "tiny-b", "narrow"))) as c:
        info = c.get("/v1/info").json()
        assert info["model"]["name"] == "tiny-b"
        assert [(s["id"], s["layer"], s["set"]) for s in info["saes"]] == [("narrow-0", 0, "narrow"),
                                                                           ("narrow-1", 1, "narrow")]
        by_id = c.post("/v1/feature-trace", json={"text": PROMPT, "sae_id": "narrow-1", "feature": 3,
                                                  "model": "tiny-b"})
        by_layer = c.post("/v1/feature-trace", json={"text": PROMPT, "layer": 1, "feature": 3})
        assert by_id.status_code == 200 and by_id.json() == by_layer.json()
        assert c.post("/v1/dfa", json={"text": PROMPT, "sae_id": "narrow-0", "feature": 3, "position": 2}
                      ).json()["layer"] == 0
        for body, says in (({"model": "tiny"}, "serves model 'tiny-b'"), ({"set": "wide"}, "SAE set 'narrow'")):
            r = c.post("/v1/analyze", json={"text": PROMPT, **body})
            assert r.status_code == 404 and says in r.json()["detail"]
        r = c.post("/v1/feature-trace", json={"text": PROMPT, "sae_id": "narrow-1", "layer": 0, "feature": 3})
        assert r.status_code == 404 and "layer 1" in r.json()["detail"]
        r = c.post("/v1/feature-trace", json={"text": PROMPT, "feature": 3})
        assert r.status_code == 422 and "layer or its sae_id" in r.json()["detail"]

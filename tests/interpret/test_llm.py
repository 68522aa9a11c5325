"""The LLM client layer: OpenAIChatClient's retries, budget, logprobs and concurrency cap against an in-test
transport; the OpenAI-compatible server's answers and error bodies on a stand-in model; and (marked process) the
embedded SmolLM2 served by `saex llm serve` in a real process and asked by the client, and its greedy determinism."""

from __future__ import annotations

import asyncio
import json
import math
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from app.interpret.clients import make_client
from app.interpret.llm import BudgetExhausted, Completion, LLMError, OpenAIChatClient, TokenLogprob
from tests.processes import free_port, stop, wait_http

BASE = "http://llm.test/v1"
ASK = [{"role": "user", "content": "What is 2 + 2?"}]


def answer(text: str = "4", *, logprobs: dict | None = None, usage: tuple[int, int] = (7, 1)) -> dict:
    return {"id": "chatcmpl-x", "object": "chat.completion", "created": 0, "model": "m",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop",
                         "logprobs": logprobs}],
            "usage": {"prompt_tokens": usage[0], "completion_tokens": usage[1], "total_tokens": sum(usage)}}


def client_with(handler, **kwargs) -> tuple[OpenAIChatClient, list[float]]:
    """A client whose requests go to handler(request) -> httpx.Response, and the delays it slept between tries."""
    client = OpenAIChatClient(BASE, "m", transport=httpx.MockTransport(handler), **kwargs)
    slept: list[float] = []

    async def record(seconds: float) -> None:
        slept.append(seconds)

    client._sleep = record
    return client, slept


def run(client: OpenAIChatClient, **kwargs) -> Completion:
    async def go() -> Completion:
        try:
            return await client.chat(ASK, max_tokens=8, **kwargs)
        finally:
            await client.aclose()

    return asyncio.run(go())


def test_retries_5xx_with_growing_backoff_then_answers():
    statuses = iter([503, 502, 200])
    seen = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(json.loads(request.content))
        status = next(statuses)
        return httpx.Response(status, json=answer() if status == 200 else {"error": {"message": "busy"}})

    client, slept = client_with(handler, backoff_s=1.0)
    completion = run(client)
    assert completion.text == "4" and (completion.prompt_tokens, completion.completion_tokens) == (7, 1)
    assert len(seen) == 3 and client.requests_made == 3
    assert seen[0]["model"] == "m" and seen[0]["messages"] == ASK and seen[0]["max_tokens"] == 8
    assert "logprobs" not in seen[0]
    assert len(slept) == 2 and 0.5 <= slept[0] <= 1.5 and 1.0 <= slept[1] <= 3.0  # 1 s, then 2 s, +-50% jitter


def test_429_waits_as_long_as_retry_after_says():
    responses = iter([httpx.Response(429, headers={"Retry-After": "7"}, json={"error": {"message": "slow down"}}),
                      httpx.Response(200, json=answer())])
    client, slept = client_with(lambda request: next(responses))
    assert run(client).text == "4"
    assert slept == [7.0]


def test_no_retry_on_400_and_the_servers_words_are_in_the_error():
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return httpx.Response(400, json={"error": {"message": "max_tokens: must be at most 1024",
                                                   "type": "invalid_request_error"}})

    client, slept = client_with(handler)
    with pytest.raises(LLMError, match="max_tokens: must be at most 1024") as info:
        run(client)
    assert info.value.status == 400 and len(calls) == 1 and slept == []


def test_connection_errors_are_retried_then_reported():
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    client, slept = client_with(handler, retries=2)
    with pytest.raises(LLMError, match="failed after 3 attempts.*ConnectError"):
        run(client)
    assert client.requests_made == 3 and len(slept) == 2


def test_a_retry_after_beyond_a_minute_is_an_error_not_a_wait():
    client, slept = client_with(lambda r: httpx.Response(503, headers={"Retry-After": "3600"}, text="maintenance"))
    with pytest.raises(LLMError, match="retry after 3600 s.*maintenance"):
        run(client)
    assert slept == []


def test_budget_counts_requests_and_stops_before_sending():
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return httpx.Response(200, json=answer())

    client, _ = client_with(handler, budget_requests=2)

    async def go() -> None:
        await client.chat(ASK, max_tokens=4)
        await client.chat(ASK, max_tokens=4)
        with pytest.raises(BudgetExhausted, match="budget of 2"):
            await client.chat(ASK, max_tokens=4)
        await client.aclose()

    asyncio.run(go())
    assert len(calls) == 2 and client.prompt_tokens == 14 and client.completion_tokens == 2


def test_logprobs_are_requested_and_parsed():
    content = [{"token": "4", "logprob": -0.1, "bytes": [52],
                "top_logprobs": [{"token": "4", "logprob": -0.1}, {"token": "four", "logprob": -2.5}]},
               {"token": ".", "logprob": -0.7, "top_logprobs": []}]
    bodies = []

    def handler(request: httpx.Request) -> httpx.Response:
        bodies.append(json.loads(request.content))
        return httpx.Response(200, json=answer("4.", logprobs={"content": content}, usage=(7, 2)))

    client, _ = client_with(handler)
    completion = run(client, top_logprobs=2)
    assert bodies[0]["logprobs"] is True and bodies[0]["top_logprobs"] == 2
    assert completion.logprobs == [TokenLogprob("4", -0.1, {"4": -0.1, "four": -2.5}), TokenLogprob(".", -0.7, {})]


@pytest.mark.parametrize("logprobs", [None, {"content": None}, {}])
def test_a_server_without_logprobs_gives_none(logprobs):
    client, _ = client_with(lambda r: httpx.Response(200, json=answer(logprobs=logprobs)))
    assert run(client, top_logprobs=5).logprobs is None


def test_an_answer_without_choices_is_an_error():
    client, _ = client_with(lambda r: httpx.Response(200, json={"object": "error"}))
    with pytest.raises(LLMError, match="without choices"):
        run(client)


def test_never_more_than_max_in_flight_requests_at_once():
    in_flight = peak = 0

    async def handler(request: httpx.Request) -> httpx.Response:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.01)
        in_flight -= 1
        return httpx.Response(200, json=answer())

    client = OpenAIChatClient(BASE, "m", max_in_flight=3, transport=httpx.MockTransport(handler))

    async def go() -> list[Completion]:
        done = await asyncio.gather(*(client.chat(ASK, max_tokens=4) for _ in range(12)))
        await client.aclose()
        return done

    assert len(asyncio.run(go())) == 12
    assert peak == 3


def test_make_client_picks_http_when_given_a_url():
    client = make_client(url=BASE, model="m", api_key="k", max_in_flight=2, budget_requests=5)
    assert isinstance(client, OpenAIChatClient) and client.name == "m" and client.budget_requests == 5
    assert client.url == f"{BASE}/chat/completions"
    asyncio.run(client.aclose())
    with pytest.raises(ValueError, match="model name"):
        make_client(url=BASE, model=None, api_key=None, max_in_flight=1, budget_requests=None)


# --- the server, on a stand-in model ------------------------------------------------------------------------------


class EchoModel:
    """LocalChatModel's surface: complete() answers the last message back, one token per character."""

    name = "echo"

    def complete(self, messages, *, max_tokens, temperature=0.0, top_logprobs=0, logprobs=None, seed=None):
        if sum(len(m["content"]) for m in messages) > 5000:
            raise ValueError("the prompt does not fit the model's context: shorten the messages")
        text = messages[-1]["content"][:max_tokens]
        want = top_logprobs > 0 if logprobs is None else logprobs
        items = [TokenLogprob(c, -0.5, dict(list({c: -0.5, "?": -1.5}.items())[:top_logprobs])) for c in text]
        return Completion(text, items if want else None, sum(len(m["content"]) for m in messages), len(text),
                          "length" if len(text) == max_tokens else "stop")


def server_client(**kwargs) -> OpenAIChatClient:
    from app.interpret.llm_server import build_app

    transport = httpx.ASGITransport(app=build_app(EchoModel()))
    return OpenAIChatClient("http://llm.local/v1", "echo", transport=transport, retries=0, **kwargs)


def test_client_and_server_round_trip():
    completion = run(server_client(), top_logprobs=2)
    assert completion.text == "What is "  # max_tokens 8
    assert completion.finish_reason == "length" and completion.completion_tokens == 8
    assert completion.logprobs[0] == TokenLogprob("W", -0.5, {"W": -0.5, "?": -1.5})


def post(body, raw: bytes | None = None) -> httpx.Response:
    from app.interpret.llm_server import build_app

    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=build_app(EchoModel()))
        async with httpx.AsyncClient(transport=transport, base_url="http://llm.local") as http:
            if raw is not None:
                return await http.post("/v1/chat/completions", content=raw,
                                       headers={"content-type": "application/json"})
            return await http.post("/v1/chat/completions", json=body)

    return asyncio.run(go())


def test_the_answer_has_openais_shape():
    r = post({"model": "anything", "messages": ASK, "max_completion_tokens": 3, "logprobs": True, "user": "x"})
    assert r.status_code == 200
    body = r.json()
    assert body["object"] == "chat.completion" and body["model"] == "echo" and body["id"].startswith("chatcmpl-")
    choice = body["choices"][0]
    assert choice["message"] == {"role": "assistant", "content": "Wha"} and choice["finish_reason"] == "length"
    assert choice["logprobs"]["content"][0] == {"token": "W", "logprob": -0.5, "bytes": None, "top_logprobs": []}
    assert body["usage"] == {"prompt_tokens": 14, "completion_tokens": 3, "total_tokens": 17}
    plain = post({"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]}).json()
    assert plain["choices"][0]["logprobs"] is None and plain["choices"][0]["message"]["content"] == "hi"


@pytest.mark.parametrize(("body", "says"), [
    ({"messages": ASK, "n": 2}, "only n=1"),
    ({"messages": ASK, "stream": True}, "stream"),
    ({"messages": ASK, "max_tokens": 5000}, "max_tokens"),
    ({"messages": ASK, "top_logprobs": 21, "logprobs": True}, "top_logprobs"),
    ({"messages": ASK, "top_logprobs": 3}, "needs logprobs=true"),
    ({"messages": ASK, "temperature": -1}, "temperature"),
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "robot", "content": "hi"}]}, "role"),
    ({"model": "m"}, "messages"),
    ({"messages": [{"role": "user", "content": "x" * 70_000}]}, "characters"),
    ({"messages": [{"role": "user", "content": "x" * 6000}]}, "shorten"),
    (None, "not valid JSON"),
])
def test_bad_requests_are_400_with_openais_error_body(body, says):
    r = post(body, raw=b"{nope" if body is None else None)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error" and says in error["message"]


def test_unknown_paths_say_what_the_server_has():
    from app.interpret.llm_server import build_app

    async def go() -> tuple[httpx.Response, httpx.Response]:
        transport = httpx.ASGITransport(app=build_app(EchoModel()))
        async with httpx.AsyncClient(transport=transport, base_url="http://llm.local") as http:
            return await http.get("/v1/models"), await http.get("/v1/completions")

    models, missing = asyncio.run(go())
    assert models.json()["data"][0]["id"] == "echo"
    assert missing.status_code == 404 and "POST /v1/chat/completions" in missing.json()["error"]["message"]


# --- the real model -------------------------------------------------------------------------------------------------

SERVE = """
import argparse, sys
from app import cli_llm
parser = argparse.ArgumentParser(prog="saex")
cli_llm.add_parser(parser.add_subparsers(dest="command", required=True))
args = parser.parse_args(sys.argv[1:])
sys.exit(args.func(args))
"""


@pytest.mark.process
def test_saex_llm_serve_answers_the_client_with_logprobs(tmp_path: Path):
    port = free_port()
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-c", SERVE, "llm", "serve", "--port", str(port), "--threads", "1"],
                                stdout=out, stderr=subprocess.STDOUT, cwd=Path(__file__).resolve().parents[2])
    try:
        wait_http(f"http://127.0.0.1:{port}/v1/models", seconds=180, proc=proc)
        client = OpenAIChatClient(f"http://127.0.0.1:{port}/v1", "SmolLM2-135M-Instruct", retries=0)
        completion = run_real(client, [{"role": "user", "content": "What is the capital of France?"}])
    except BaseException:
        print(log.read_text()[-3000:])
        raise
    finally:
        stop(proc)
    assert completion.text.strip() and completion.prompt_tokens > 10 and 0 < completion.completion_tokens <= 12
    assert len(completion.logprobs) == completion.completion_tokens
    for item in completion.logprobs:
        probs = [math.exp(v) for v in item.top.values()]
        assert 0 < len(probs) <= 3 and all(0 < p <= 1 for p in probs) and sum(probs) <= 1 + 1e-4
        assert probs == sorted(probs, reverse=True)
        assert item.logprob == pytest.approx(max(item.top.values()))  # greedy: the token taken is the likeliest


def run_real(client: OpenAIChatClient, messages: list[dict[str, str]]) -> Completion:
    async def go() -> Completion:
        try:
            return await client.chat(messages, max_tokens=12, top_logprobs=3)
        finally:
            await client.aclose()

    return asyncio.run(go())


@pytest.mark.process
def test_local_model_greedy_is_deterministic_and_counts_usage():
    from app.interpret.local_llm import LocalChatModel

    model = LocalChatModel(threads=1, budget_requests=3)
    assert model.name == "SmolLM2-135M-Instruct"
    ask = [{"role": "user", "content": "Name a colour."}]

    async def go() -> list[Completion]:
        return [await model.chat(ask, max_tokens=8), await model.chat(ask, max_tokens=8, top_logprobs=2)]

    first, second = asyncio.run(go())
    assert first.text.strip() and first.text == second.text and first.logprobs is None
    assert [t.token for t in second.logprobs] == [t.token for t in second.logprobs if t.top]
    assert model.completion_tokens == first.completion_tokens + second.completion_tokens
    assert LocalChatModel(threads=1)._loaded is model._loaded  # loaded once per process
    model.complete(ask, max_tokens=1)
    with pytest.raises(BudgetExhausted):
        model.complete(ask, max_tokens=1)

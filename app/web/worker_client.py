"""The web app's one interface to inference workers: WorkerClient, one typed method per endpoint of the worker
contract (app.protocol's models in, its models out), over a WorkerPool of workers that host the same model and SAE
set: JSON over HTTP to their URLs (spread round-robin over healthy workers, failing over when one is down), or to an
in-process worker app handed in by the CLI (the embedded default). The worker's paths are written here and nowhere
else on the web side. Knows nothing of torch.

Errors: WorkerError carries a worker's 4xx answer (bad input, passed on as is); WorkerUnavailable means no
worker could answer (down, busy or timed out), which the web side answers with 503 and Retry-After.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
import zlib

import httpx
import orjson
from pydantic import BaseModel, ValidationError

from app import protocol as P

JSON_HEADERS = {"content-type": "application/json"}
TOKEN_HEADER = "X-Worker-Token"  # the shared secret (SAEX_WORKER_TOKEN) workers require when they have one
# each endpoint of the worker contract: method, path, answer model
ENDPOINTS: dict[str, tuple[str, str, type[BaseModel]]] = {
    "info": ("GET", "/v1/info", P.InfoResponse),
    "head_scores": ("GET", "/v1/head-scores", P.HeadScoresResponse),
    "tokenize": ("POST", "/v1/tokenize", P.TokenizeResponse),
    "analyze": ("POST", "/v1/analyze", P.AnalyzeResponse),
    "feature_trace": ("POST", "/v1/feature-trace", P.FeatureTraceResponse),
    "dfa": ("POST", "/v1/dfa", P.DFAResponse),
    "steer": ("POST", "/v1/steer", P.SteerResponse),
    "graph": ("POST", "/v1/graph", P.GraphResponse),
    "circuits_discover": ("POST", "/v1/circuits/discover", P.DiscoverResponse),
    "windows": ("POST", "/v1/windows", P.WindowsResponse),
    "embed": ("POST", "/v1/embed", P.EmbedResponse),
}


class WorkerError(Exception):
    def __init__(self, status: int, detail: str, headers: dict | None = None) -> None:
        super().__init__(detail)
        self.status, self.detail, self.headers = status, detail, headers or {}


class WorkerUnavailable(Exception):
    def __init__(self, detail: str, retry_after: int = 5) -> None:
        super().__init__(detail)
        self.detail, self.retry_after = detail, retry_after


class WorkerPool:
    """Workers that host the same model and SAE set: POST/GET JSON on the first healthy one; a worker that fails to
    connect is skipped for `cooldown` seconds and the request goes to the next one."""

    def __init__(self, clients: list[httpx.AsyncClient], names: list[str], cooldown: float = 10.0,
                 timeout: float = 120.0) -> None:
        if not clients:
            raise ValueError("a worker pool needs at least one worker")
        self._clients, self.names = clients, names
        self._down_until = [0.0] * len(clients)
        self._next = itertools.cycle(range(len(clients)))
        self.cooldown, self.timeout = cooldown, timeout

    @classmethod
    def over_http(cls, urls: list[str], timeout: float = 120.0) -> WorkerPool:
        return cls([http_client(u, timeout) for u in urls], urls, timeout=timeout)

    @classmethod
    def in_process(cls, worker_app, timeout: float = 120.0) -> WorkerPool:
        return cls([in_process_client(worker_app, timeout)], ["in-process worker"], timeout=timeout)

    def first_client(self) -> httpx.AsyncClient:
        return self._clients[0]

    async def close(self) -> None:
        await asyncio.gather(*(c.aclose() for c in self._clients))

    def _order(self) -> list[int]:
        start = next(self._next)
        n = len(self._clients)
        ring = [(start + i) % n for i in range(n)]
        now = time.monotonic()
        return [i for i in ring if self._down_until[i] <= now] + [i for i in ring if self._down_until[i] > now]

    async def request(self, method: str, path: str, body: dict | None = None) -> dict:
        """The worker's JSON answer, parsed."""
        name, _, content = await self._answer(method, path, body, raw=False)
        try:  # orjson: a 60 KB analysis parses in 0.27 ms, against 1.3 ms for the standard library's json
            return orjson.loads(content)
        except orjson.JSONDecodeError as exc:
            raise WorkerUnavailable(f"{name} answered with a body that is not JSON; is that URL an SAE Explorer "
                                    "worker?") from exc

    async def forward(self, method: str, path: str, body: dict | None = None,
                      gzip: bool = False) -> tuple[bytes, str | None]:
        """The worker's JSON answer as it came, to be passed on unread: (body, its Content-Encoding). gzip: the
        caller's client takes gzip, so a gzipped answer stays gzipped (None: the body is plain JSON). Parsing and
        writing it again would cost the web app 4.7 ms for a 128-token all-layer analysis at GPT-2-Small shape,
        9.6 ms with decompressing and compressing it again."""
        name, headers, content = await self._answer(method, path, body, raw=True,
                                                    accept="gzip" if gzip else "identity")
        if not headers.get("content-type", "").startswith("application/json"):
            raise WorkerUnavailable(f"{name} answered with a body that is not JSON; is that URL an SAE Explorer "
                                    "worker?")
        return content, headers.get("content-encoding")

    async def _answer(self, method: str, path: str, body: dict | None, raw: bool,
                      accept: str | None = None) -> tuple[str, httpx.Headers, bytes]:
        """The first worker's successful answer: (its name, the response's headers, the body: as sent when raw,
        else decoded). Fails over past workers that are down or busy; raises WorkerError for a 4xx and
        WorkerUnavailable when none could answer."""
        headers = {**(JSON_HEADERS if body is not None else {}), **({"Accept-Encoding": accept} if accept else {})}
        content = None if body is None else _dumps(body)
        busy: WorkerError | None = None
        last = ""
        for i in self._order():
            client = self._clients[i]
            try:
                r = await client.send(client.build_request(method, path, content=content, headers=headers or None),
                                      stream=True)
                try:
                    data = b"".join([c async for c in r.aiter_raw()]) if raw else await r.aread()
                finally:
                    await r.aclose()
            except (httpx.ConnectError, httpx.ConnectTimeout, httpx.RemoteProtocolError, httpx.ReadError) as exc:
                self._down_until[i] = time.monotonic() + self.cooldown
                last = f"{self.names[i]}: {type(exc).__name__}"
                continue
            except httpx.TimeoutException as exc:
                raise WorkerUnavailable(f"the worker did not answer within {self.timeout:.0f} s", 10) from exc
            if r.status_code == 503:  # busy: try another worker, else pass the busy answer on
                busy = WorkerError(503, _detail(r, data, raw), {"Retry-After": r.headers.get("Retry-After", "5")})
                continue
            if r.status_code >= 500:
                self._down_until[i] = time.monotonic() + self.cooldown
                last = f"{self.names[i]}: HTTP {r.status_code}"
                continue
            self._down_until[i] = 0.0
            if r.status_code >= 400:
                raise WorkerError(r.status_code, _detail(r, data, raw), {k: v for k, v in r.headers.items()
                                                                         if k.lower() == "retry-after"})
            return f"{self.names[i]} (HTTP {r.status_code})", r.headers, data
        if busy is not None:
            raise WorkerUnavailable(busy.detail, int(busy.headers.get("Retry-After", "5") or 5))
        raise WorkerUnavailable(f"no inference worker is reachable ({last}); it may be restarting")

    async def healthy(self) -> list[str]:
        return await healthy_workers(self._clients, self.names)


async def healthy_workers(clients: list[httpx.AsyncClient], names: list[str]) -> list[str]:
    """The names of the workers whose /health answers 200 within 2 s, asked one after another."""
    out = []
    for client, name in zip(clients, names, strict=True):
        try:
            if (await client.get("/health", timeout=2.0)).status_code == 200:
                out.append(name)
        except httpx.HTTPError:
            pass
    return out


def _token(token: str | None) -> dict:
    return {TOKEN_HEADER: token} if token else {}


def http_client(url: str, timeout: float = 120.0, token: str | None = None) -> httpx.AsyncClient:
    # gzip: a 128-token all-layer analysis at GPT-2-Small shape is 650 KB of JSON, 120 KB gzipped
    return httpx.AsyncClient(base_url=url.rstrip("/"), timeout=httpx.Timeout(timeout, connect=3.0),
                             headers={"Accept-Encoding": "gzip", **_token(token)})


def in_process_client(worker_app, timeout: float = 120.0, token: str | None = None) -> httpx.AsyncClient:
    # identity: compressing for a hop inside one process would only cost time at both ends
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=worker_app), base_url="http://worker",
                             timeout=timeout, headers={"Accept-Encoding": "identity", **_token(token)})


class WorkerClient:
    """One typed method per endpoint of the worker contract, over a pool of workers of one model and SAE set. The
    answers are the contract's models; `passed_on` gives an answer's bytes unread, for the public API."""

    def __init__(self, pool: WorkerPool) -> None:
        self.pool = pool

    async def _call(self, endpoint: str, body: BaseModel | None = None):
        method, path, answer = ENDPOINTS[endpoint]
        data = await self.pool.request(method, path, None if body is None else body.model_dump())
        try:
            return answer.model_validate(data)
        except ValidationError as exc:
            raise WorkerUnavailable(f"a worker's {path} answer does not fit the contract ({exc.error_count()} "
                                    "problems); is it another version of SAE Explorer?") from exc

    async def info(self) -> P.InfoResponse:
        return await self._call("info")

    async def head_scores(self) -> P.HeadScoresResponse:
        return await self._call("head_scores")

    async def tokenize(self, body: P.TextRequest) -> P.TokenizeResponse:
        return await self._call("tokenize", body)

    async def analyze(self, body: P.AnalyzeRequest) -> P.AnalyzeResponse:
        return await self._call("analyze", body)

    async def feature_trace(self, body: P.FeatureRequest) -> P.FeatureTraceResponse:
        return await self._call("feature_trace", body)

    async def dfa(self, body: P.DFARequest) -> P.DFAResponse:
        return await self._call("dfa", body)

    async def steer(self, body: P.SteerRequest) -> P.SteerResponse:
        return await self._call("steer", body)

    async def graph(self, body: P.GraphRequest) -> P.GraphResponse:
        return await self._call("graph", body)

    async def circuits_discover(self, body: P.DiscoverRequest) -> P.DiscoverResponse:
        return await self._call("circuits_discover", body)

    async def windows(self, body: P.WindowsRequest) -> P.WindowsResponse:
        return await self._call("windows", body)

    async def embed(self, body: P.EmbedRequest) -> P.EmbedResponse:
        return await self._call("embed", body)

    def chat_client(self, max_in_flight: int = 2):
        """An OpenAI-compatible client of this model's worker's embedded chat model (/llm/v1), set up as that small
        model needs (one example per scorer prompt, no activation lists)."""
        from app.interpret.llm import OpenAIChatClient

        http = self.pool.first_client()
        client = OpenAIChatClient(str(http.base_url).rstrip("/") + "/llm/v1", "SmolLM2-135M-Instruct",
                                  api_key=http.headers.get(TOKEN_HEADER),  # the worker takes it as a bearer
                                  max_in_flight=max_in_flight, timeout_s=300,
                                  transport=getattr(http, "_transport", None))
        client.examples_per_prompt, client.explainer_activations, client.lenient_answers = 1, False, True
        return client

    async def passed_on(self, endpoint: str, body: BaseModel | None, gzip: bool) -> tuple[bytes, str | None]:
        """The answer of `endpoint` (a key of ENDPOINTS) as the worker sent it, and its Content-Encoding."""
        method, path, _ = ENDPOINTS[endpoint]
        return await self.pool.forward(method, path, None if body is None else body.model_dump(), gzip=gzip)


def _dumps(body: dict) -> bytes:
    try:
        return orjson.dumps(body)
    except TypeError:  # an integer past 64 bits (a layer of -2**63-1, say): the worker says what is wrong with it
        return json.dumps(body, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()


def _detail(r: httpx.Response, data: bytes, raw: bool) -> str:
    try:
        if raw and r.headers.get("content-encoding") == "gzip":
            data = zlib.decompress(data, wbits=31)
        detail = orjson.loads(data).get("detail")
    except (ValueError, AttributeError, zlib.error):
        detail = None
    return detail if isinstance(detail, str) else f"the worker answered HTTP {r.status_code}"

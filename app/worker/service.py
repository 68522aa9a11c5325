"""The inference worker's HTTP service: the model-backed endpoints of shared/api.md under /v1, over one engine
behind a bounded queue; knows nothing of storage or of how the engine was loaded."""

from __future__ import annotations

import asyncio
import hmac
import time
from collections.abc import Callable, Generator
from concurrent.futures import Executor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Request, Response

from app import protocol as P
from app.engine.engine import Engine, InputError, NotFound, TooLong
from app.engine.steering import OverBudget
from app.serving.api_errors import install_error_handlers
from app.serving.compression import Compressed
from app.serving.json_response import JSONBytes, json_bytes
from app.worker.queue import LONG, SHORT, BoundedQueue, QueueFull

ERRORS = P.ERROR_RESPONSES


COLD_AFTER_S = 0.06  # idle this long, and a virtual machine's other cores come back slowly
SMALL_PASS_FLOPS = 2e9  # a single pass this small computes faster on one thread after an idle spell


class Threads:
    """How many intra-op threads each computation gets. After the worker sat idle for COLD_AFTER_S, a virtual
    machine's other cores come back slowly: for some milliseconds every parallel kernel waits for them. Measured
    on the demo model (2 vCPUs, 2 torch threads, same runs): after 100 ms idle, a 64-token analysis took 14.2 ms of
    engine time on 2 threads and 7.2 ms on one (128 tokens: 18.4 and 12.0); back to back, 2 threads were the
    faster (4.8 and 6.2; 7.4 and 10.2). In-process, 64 tokens after an idle spell of 25, 50, 75, 100 and 150 ms:
    7.3, 7.9, 15.6, 15.9 and 16.4 ms on 2 threads, 8.6-9.5 ms on one throughout. So a single pass of at most
    SMALL_PASS_FLOPS that follows an idle spell of COLD_AFTER_S runs on one thread, everything else on all."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.last_end = 0.0  # time.monotonic() when the last computation ended

    def single_pass(self, text: str) -> int | None:
        """Threads for one forward pass over text, asked when it starts: 1 when cold and small, else None (all)."""
        if time.monotonic() - self.last_end <= COLD_AFTER_S:
            return None
        tokens = min(len(text.encode()) + 1, self.engine.model.cfg.n_ctx)  # a byte-level BPE token is >= 1 byte
        return 1 if self.engine.pass_flops(tokens) <= SMALL_PASS_FLOPS else None

    def run(self, fn: Callable[[], dict], threads: int | None) -> dict:
        try:
            if threads is None:
                return fn()
            with self.engine.threads(threads):
                return fn()
        finally:
            self.last_end = time.monotonic()


@dataclass
class Worker:
    """What every endpoint works with: the engine, its queue, the time budget per request, the thread policy."""

    engine: Engine
    queue: BoundedQueue
    budget_s: float
    threads: Threads


# One dependency, `async def`: FastAPI runs a plain `def` dependency on a pool thread (a thread hop each), and
# resolving each dependency costs time of its own (four of them were a third of the app's time per request).
async def get_worker(request: Request) -> Worker:
    return request.app.state.worker


WorkerDep = Annotated[Worker, Depends(get_worker)]


async def compute(worker: Worker, fn: Callable[[], Any], single_pass_over: str | None = None,
                  lane: int = SHORT, steps: bool = False) -> Response:
    """Run fn on the engine thread; map input errors, a full queue and a spent time budget (counted from now, so
    time waiting in the queue counts) to their HTTP answers. single_pass_over: the text, when fn is one forward
    pass over it (the thread policy then decides how many intra-op threads it gets). lane: LONG for generation and
    other long work, which waits behind short requests in a small lane of its own (see BoundedQueue). steps: fn
    returns a generator that computes in steps (yielding between them) and returns the result; each step takes
    its turn in the lane (BoundedQueue.run_steps), so short requests run between a generation's tokens."""
    queue, budget_s, threads = worker.queue, worker.budget_s, worker.threads
    deadline = time.monotonic() + budget_s

    def timed() -> tuple[bytes, float]:
        """fn's result as JSON and the seconds fn took. The engine thread serialises it too: the result is still
        in its caches there, while the event loop's thread would read it cold (a 128-token analysis: 0.6-0.8 ms
        from the loop's thread, 0.16 ms where it was made)."""
        if time.monotonic() > deadline:
            raise OverBudget("the request waited in the queue past its time budget")
        t0 = time.perf_counter()
        n = None if single_pass_over is None else threads.single_pass(single_pass_over)
        result = threads.run(fn, n)
        seconds = time.perf_counter() - t0
        return json_bytes(result), seconds

    def timed_steps() -> Generator[None, None, tuple[bytes, float]]:
        """timed, a step at a time: the seconds are those of the steps alone, not of the work between them."""
        if time.monotonic() > deadline:
            raise OverBudget("the request waited in the queue past its time budget")
        gen, seconds = fn(), 0.0
        while True:
            t0 = time.perf_counter()
            try:
                threads.run(lambda: next(gen), None)
            except StopIteration as done:
                seconds += time.perf_counter() - t0
                return json_bytes(done.value), seconds
            seconds += time.perf_counter() - t0
            yield

    try:
        t_wait = time.perf_counter()
        body, seconds = await (queue.run_steps(timed_steps(), lane) if steps else queue.run(timed, lane))
        total = time.perf_counter() - t_wait
        return JSONBytes(body, headers={"Server-Timing": f"engine;dur={1000 * seconds:.2f}, "
                                                           f"queue;dur={1000 * (total - seconds):.2f}"})
    except QueueFull as exc:
        raise HTTPException(503, f"the worker is busy: {queue.pending} requests are queued; retry shortly",
                            headers={"Retry-After": str(exc.retry_after)}) from exc
    except OverBudget as exc:
        raise HTTPException(503, f"the worker's time budget of {budget_s:g} s per request ran out ({exc}); retry "
                                 "when it is less busy, or ask for fewer new tokens",
                            headers={"Retry-After": str(queue.retry_after())}) from exc
    except NotFound as exc:
        raise HTTPException(404, str(exc)) from exc
    except TooLong as exc:
        raise HTTPException(413, str(exc)) from exc
    except InputError as exc:
        raise HTTPException(422, str(exc)) from exc


def hosts(engine: Engine, body: P.ModelBody, sae_set: str | None = None) -> None:
    """404 unless this worker hosts the model (and SAE set) a body names: a web app that routed it here by mistake,
    or a client at the wrong worker, is told which one it reached."""
    if body.model is not None and body.model != engine.name:
        raise HTTPException(404, f"this worker serves model {engine.name!r}, not {body.model!r}")
    if sae_set is not None and sae_set != engine.sae_set:
        raise HTTPException(404, f"this worker serves SAE set {engine.sae_set!r} of model {engine.name!r}, "
                                 f"not {sae_set!r}")


def sae_layer(engine: Engine, body: P.FeatureRequest) -> int:
    """The layer of the SAE a feature request names, by its id or its layer (both must agree)."""
    hosts(engine, body)
    if body.sae_id is None:
        return body.layer
    try:
        sae = engine.sae_named(body.sae_id)
    except NotFound as exc:
        raise HTTPException(404, str(exc)) from exc
    if body.layer is not None and body.layer != sae.layer:
        raise HTTPException(404, f"SAE {sae.sae_id!r} sits on layer {sae.layer}, not {body.layer}")
    return sae.layer


class EmbeddedChatModel:
    """The embedded chat model (SmolLM2-135M-Instruct) behind the OpenAI-compatible routes of `saex llm serve`, as
    an ASGI app loaded on its first request (~17 s, ~1 GB): how the web app explains features with no language model
    server configured. It runs on threads of its own, not the engine's queue."""

    def __init__(self) -> None:
        self._app = None
        self._lock = asyncio.Lock()

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return
        if self._app is None:
            async with self._lock:
                if self._app is None:
                    try:
                        from app.interpret.llm_server import build_app
                        from app.interpret.local_llm import LocalChatModel

                        self._app = build_app(await asyncio.to_thread(LocalChatModel))
                    except Exception as exc:  # not installed, say: the caller is told, the worker goes on
                        body = json_bytes({"error": {"message": f"the embedded chat model cannot load: {exc}; "
                                                     "install it (make install) or configure SAEX_LLM_URL",
                                                     "type": "server_error"}})
                        await send({"type": "http.response.start", "status": 501,
                                    "headers": [(b"content-type", b"application/json")]})
                        await send({"type": "http.response.body", "body": body})
                        return
        await self._app(scope, receive, send)


class RequireToken:
    """With a shared secret configured (SAEX_WORKER_TOKEN), every request but /health must carry it, as the
    X-Worker-Token header (the web app's worker client) or a bearer token (its OpenAI-compatible chat client, at
    /llm); anything else is answered 401 before it reaches a route or the queue."""

    def __init__(self, app, token: str) -> None:
        self.app, self.token = app, token.encode()

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["path"] == "/health":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        sent = headers.get(b"x-worker-token")
        auth = headers.get(b"authorization", b"")
        if sent is None and auth.lower().startswith(b"bearer "):
            sent = auth[7:].strip()
        if sent is not None and hmac.compare_digest(sent, self.token):
            await self.app(scope, receive, send)
            return
        body = json_bytes({"detail": "this worker needs its token: send SAEX_WORKER_TOKEN as the X-Worker-Token "
                                     "header"})
        await send({"type": "http.response.start", "status": 401,
                    "headers": [(b"content-type", b"application/json"), (b"www-authenticate", b"Bearer")]})
        await send({"type": "http.response.body", "body": body})


def create_worker_app(engine: Engine, queue_size: int = 16, time_budget_s: float = 60.0,
                      executor: Executor | None = None, token: str | None = None) -> FastAPI:
    """time_budget_s: the most one request may take, queueing included; steering stops between tokens when it
    runs out, and a request still queued then is answered 503 without being computed. executor: where the engine
    computes (see BoundedQueue). token: a shared secret every request but /health must carry (RequireToken)."""
    queue = BoundedQueue(queue_size, executor)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        queue.shutdown()

    app = FastAPI(title="SAE Explorer worker", version="0.1.0", lifespan=lifespan,
                  description="Model-backed endpoints of the SAE Explorer API")
    app.state.worker = Worker(engine, queue, time_budget_s, Threads(engine))
    app.add_middleware(Compressed)  # innermost: the request log's time includes compressing
    install_error_handlers(app)
    if token:
        app.add_middleware(RequireToken, token=token)

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok"}

    @app.get("/v1/info", response_model=P.InfoResponse)
    async def info(w: WorkerDep) -> dict:
        return w.engine.info()

    @app.get("/v1/head-scores", response_model=P.HeadScoresResponse)
    async def head_scores(w: WorkerDep) -> Response:
        """Per layer and head: induction and previous-token scores on repeated random tokens."""
        return await compute(w, w.engine.head_scores)

    @app.post("/v1/tokenize", response_model=P.TokenizeResponse, responses=ERRORS)
    async def tokenize(body: P.TextRequest, w: WorkerDep) -> Response:
        hosts(w.engine, body)
        return await compute(w, lambda: w.engine.tokenize(body.text), body.text)

    @app.post("/v1/analyze", response_model=P.AnalyzeResponse, responses=ERRORS)
    async def analyze(body: P.AnalyzeRequest, w: WorkerDep) -> Response:
        hosts(w.engine, body, body.set)
        return await compute(w, lambda: w.engine.analyze(body.text, body.layers, body.top_k, body.head_contributions),
                             body.text)

    @app.post("/v1/feature-trace", response_model=P.FeatureTraceResponse, responses=ERRORS)
    async def feature_trace(body: P.FeatureRequest, w: WorkerDep) -> Response:
        layer = sae_layer(w.engine, body)
        return await compute(w, lambda: w.engine.feature_trace(body.text, layer, body.feature), body.text)

    @app.post("/v1/dfa", response_model=P.DFAResponse, responses=ERRORS)
    async def dfa(body: P.DFARequest, w: WorkerDep) -> Response:
        layer = sae_layer(w.engine, body)
        return await compute(w, lambda: w.engine.dfa(body.text, layer, body.feature, body.position), body.text)

    @app.post("/v1/steer", response_model=P.SteerResponse, responses=ERRORS)
    async def steer(body: P.SteerRequest, w: WorkerDep) -> Response:
        """The contract's InterventionSpec objects go to the engine as they are (its fields are the engine's)."""
        hosts(w.engine, body, body.set)
        deadline = time.monotonic() + w.budget_s
        return await compute(w, lambda: w.engine.steer_steps(body.text, body.interventions, body.max_new_tokens,
                                                             body.temperature, body.seed, body.top_logprobs,
                                                             deadline),
                             lane=LONG, steps=True)

    @app.post("/v1/graph", response_model=P.GraphResponse, responses=ERRORS)
    async def graph(body: P.GraphRequest, w: WorkerDep) -> Response:
        """An attribution graph (recursive DFA) of a feature's pre-activation at a position."""
        layer = sae_layer(w.engine, body)
        return await compute(w, lambda: w.engine.graph(body.text, layer, body.feature, body.position, body.max_depth,
                                                       body.threshold, body.top_n, body.expand))

    @app.post("/v1/circuits/discover", response_model=P.DiscoverResponse, responses=ERRORS)
    async def discover_circuits(body: P.DiscoverRequest, w: WorkerDep) -> Response:
        """Heads and head pairs whose SAE codes tell positive prompts from negative ones (O'Neill & Bui 2024)."""
        hosts(w.engine, body, body.set)
        return await compute(w, lambda: w.engine.discover_circuits(
            body.positive, body.negative, body.task, body.positions, body.max_edges, body.patching, body.ground_truth))
    app.mount("/llm", EmbeddedChatModel())  # OpenAI-compatible /llm/v1/chat/completions, loaded on first use

    @app.post("/v1/windows", response_model=P.WindowsResponse, responses=ERRORS)
    async def windows(body: P.WindowsRequest, w: WorkerDep) -> Response:
        """One feature's activations on token windows, each read as its own prompt (explanation scoring)."""
        layer = sae_layer(w.engine, body)
        return await compute(w, lambda: w.engine.window_activations(layer, body.feature, body.windows))

    @app.post("/v1/embed", response_model=P.EmbedResponse, responses=ERRORS)
    async def embed(body: P.EmbedRequest, w: WorkerDep) -> Response:
        """Sentence embeddings (explanation scoring and semantic search), on the engine's queue."""
        from app.interpret.embedding import Embedder

        def run() -> dict:
            embedder = Embedder.shared()
            return {"model": embedder.name, "vectors": embedder.embed(list(body.texts)).tolist()}
        return await compute(w, run)
    return app

"""The inference worker's HTTP service: the model-backed endpoints of shared/api.md under /v1, over one engine
behind a bounded queue; knows nothing of storage or of how the engine was loaded."""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import asynccontextmanager
from typing import Annotated

from fastapi import Depends, FastAPI, HTTPException, Request

from app import protocol as P
from app.api_errors import install_error_handlers
from app.engine.engine import Engine, InputError, NotFound, TooLong
from app.engine.steering import OverBudget
from app.json_response import FastJSON
from app.worker.queue import BoundedQueue, QueueFull

ERRORS = P.ERROR_RESPONSES


def get_engine(request: Request) -> Engine:
    return request.app.state.engine


def get_queue(request: Request) -> BoundedQueue:
    return request.app.state.queue


EngineDep = Annotated[Engine, Depends(get_engine)]
QueueDep = Annotated[BoundedQueue, Depends(get_queue)]


def get_budget(request: Request) -> float:
    return request.app.state.time_budget_s


BudgetDep = Annotated[float, Depends(get_budget)]


async def compute(queue: BoundedQueue, fn: Callable[[], dict], budget_s: float | None = None) -> FastJSON:
    """Run fn on the engine thread; map input errors, a full queue and a spent time budget (counted from now, so
    time waiting in the queue counts) to their HTTP answers."""
    deadline = None if budget_s is None else time.monotonic() + budget_s

    def timed() -> tuple[dict, float]:
        if deadline is not None and time.monotonic() > deadline:
            raise OverBudget("the request waited in the queue past its time budget")
        t0 = time.perf_counter()
        return fn(), time.perf_counter() - t0

    try:
        t_wait = time.perf_counter()
        result, seconds = await queue.run(timed)
        total = time.perf_counter() - t_wait
        return FastJSON(result, headers={"Server-Timing": f"engine;dur={1000 * seconds:.2f}, "
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


def create_worker_app(engine: Engine, queue_size: int = 16, time_budget_s: float = 60.0) -> FastAPI:
    """time_budget_s: the most one request may take, queueing included; steering stops between tokens when it
    runs out, and a request still queued then is answered 503 without being computed."""
    queue = BoundedQueue(queue_size)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        queue.shutdown()

    app = FastAPI(title="SAE Explorer worker", version="0.1.0", lifespan=lifespan,
                  description="Model-backed endpoints of the SAE Explorer API")
    app.state.engine = engine
    app.state.queue = queue
    app.state.time_budget_s = time_budget_s
    install_error_handlers(app)

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok"}

    @app.get("/v1/info", response_model=P.InfoResponse)
    async def info(engine: EngineDep) -> dict:
        return engine.info()

    @app.get("/v1/head-scores")
    async def head_scores(engine: EngineDep, queue: QueueDep, budget: BudgetDep) -> FastJSON:
        """Per layer and head: induction and previous-token scores on repeated random tokens."""
        return await compute(queue, engine.head_scores, budget)

    @app.post("/v1/tokenize", response_model=P.TokenizeResponse, responses=ERRORS)
    async def tokenize(body: P.TextRequest, engine: EngineDep, queue: QueueDep, budget: BudgetDep) -> FastJSON:
        return await compute(queue, lambda: engine.tokenize(body.text), budget)

    @app.post("/v1/analyze", response_model=P.AnalyzeResponse, responses=ERRORS)
    async def analyze(body: P.AnalyzeRequest, engine: EngineDep, queue: QueueDep, budget: BudgetDep) -> FastJSON:
        return await compute(queue, lambda: engine.analyze(body.text, body.layers, body.top_k, body.head_contributions),
                             budget)

    @app.post("/v1/feature-trace", response_model=P.FeatureTraceResponse, responses=ERRORS)
    async def feature_trace(body: P.FeatureRequest, engine: EngineDep, queue: QueueDep,
                            budget: BudgetDep) -> FastJSON:
        return await compute(queue, lambda: engine.feature_trace(body.text, body.layer, body.feature), budget)

    @app.post("/v1/dfa", response_model=P.DFAResponse, responses=ERRORS)
    async def dfa(body: P.DFARequest, engine: EngineDep, queue: QueueDep, budget: BudgetDep) -> FastJSON:
        return await compute(queue, lambda: engine.dfa(body.text, body.layer, body.feature, body.position), budget)

    @app.post("/v1/steer", response_model=P.SteerResponse, responses=ERRORS)
    async def steer(body: P.SteerRequest, engine: EngineDep, queue: QueueDep, budget: BudgetDep) -> FastJSON:
        edits = [i.model_dump() for i in body.interventions]
        deadline = time.monotonic() + budget
        return await compute(queue, lambda: engine.steer(body.text, edits, body.max_new_tokens, body.temperature,
                                                         body.seed, body.top_logprobs, deadline), budget)
    return app

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
from app.json_response import FastJSON
from app.worker.queue import BoundedQueue, QueueFull

ERRORS = P.ERROR_RESPONSES


def get_engine(request: Request) -> Engine:
    return request.app.state.engine


def get_queue(request: Request) -> BoundedQueue:
    return request.app.state.queue


EngineDep = Annotated[Engine, Depends(get_engine)]
QueueDep = Annotated[BoundedQueue, Depends(get_queue)]


async def compute(queue: BoundedQueue, fn: Callable[[], dict]) -> FastJSON:
    """Run fn on the engine thread; map input errors and a full queue to their HTTP answers."""
    def timed() -> tuple[dict, float]:
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
    except NotFound as exc:
        raise HTTPException(404, str(exc)) from exc
    except TooLong as exc:
        raise HTTPException(413, str(exc)) from exc
    except InputError as exc:
        raise HTTPException(422, str(exc)) from exc


def create_worker_app(engine: Engine, queue_size: int = 16) -> FastAPI:
    queue = BoundedQueue(queue_size)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        queue.shutdown()

    app = FastAPI(title="SAE Explorer worker", version="0.1.0", lifespan=lifespan,
                  description="Model-backed endpoints of the SAE Explorer API")
    app.state.engine = engine
    app.state.queue = queue
    install_error_handlers(app)

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok"}

    @app.get("/v1/info", response_model=P.InfoResponse)
    async def info(engine: EngineDep) -> dict:
        return engine.info()

    @app.get("/v1/head-scores")
    async def head_scores(engine: EngineDep, queue: QueueDep) -> FastJSON:
        """Per layer and head: induction and previous-token scores on repeated random tokens."""
        return await compute(queue, engine.head_scores)

    @app.post("/v1/tokenize", response_model=P.TokenizeResponse, responses=ERRORS)
    async def tokenize(body: P.TextRequest, engine: EngineDep, queue: QueueDep) -> FastJSON:
        return await compute(queue, lambda: engine.tokenize(body.text))

    @app.post("/v1/analyze", response_model=P.AnalyzeResponse, responses=ERRORS)
    async def analyze(body: P.AnalyzeRequest, engine: EngineDep, queue: QueueDep) -> FastJSON:
        return await compute(queue, lambda: engine.analyze(body.text, body.layers, body.top_k, body.head_contributions))

    @app.post("/v1/feature-trace", response_model=P.FeatureTraceResponse, responses=ERRORS)
    async def feature_trace(body: P.FeatureRequest, engine: EngineDep, queue: QueueDep) -> FastJSON:
        return await compute(queue, lambda: engine.feature_trace(body.text, body.layer, body.feature))

    @app.post("/v1/dfa", response_model=P.DFAResponse, responses=ERRORS)
    async def dfa(body: P.DFARequest, engine: EngineDep, queue: QueueDep) -> FastJSON:
        return await compute(queue, lambda: engine.dfa(body.text, body.layer, body.feature, body.position))

    @app.post("/v1/steer", response_model=P.SteerResponse, responses=ERRORS)
    async def steer(body: P.SteerRequest, engine: EngineDep, queue: QueueDep) -> FastJSON:
        edits = [i.model_dump() for i in body.interventions]
        return await compute(queue, lambda: engine.steer(body.text, edits, body.max_new_tokens, body.temperature,
                                                         body.seed, body.top_logprobs))
    return app

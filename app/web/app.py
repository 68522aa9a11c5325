"""The web app's factory: FastAPI with the public API (and, later, the pages); the database and the worker
client are created here, at start-up, from settings, never at import."""

from __future__ import annotations

from contextlib import asynccontextmanager

from fastapi import FastAPI

from app.api_errors import install_error_handlers
from app.config import Settings
from app.store.db import make_engine, make_sessionmaker
from app.web.api import model_routes, store_routes
from app.web.worker_client import WorkerClient


def create_web_app(settings: Settings, worker_app=None) -> FastAPI:
    """worker_app: an in-process worker (an ASGI app) for the embedded default; otherwise the web app talks to
    settings.worker_urls over HTTP."""
    db = make_engine(settings.resolved_database_url)
    if worker_app is not None:
        worker = WorkerClient.in_process(worker_app)
    elif settings.worker_urls:
        worker = WorkerClient.over_http(settings.worker_urls)
    else:
        raise ValueError("the web app needs a worker: give --worker-url, or run the embedded default in-process")

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        await worker.close()
        db.dispose()

    app = FastAPI(title="SAE Explorer", version="0.1.0", lifespan=lifespan,
                  description="Attention-output SAE features: dashboards, explanations, prompt analysis, steering")
    app.state.settings = settings
    app.state.sessions = make_sessionmaker(db)
    app.state.worker = worker
    install_error_handlers(app)
    app.include_router(model_routes.router)
    app.include_router(store_routes.router)

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok"}

    return app

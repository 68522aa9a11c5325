"""The web app's factory: FastAPI with the public API (and, later, the pages); the database and the worker
client are created here, at start-up, from settings, never at import."""

from __future__ import annotations

from contextlib import asynccontextmanager

from fastapi import FastAPI

from app.api_errors import install_error_handlers
from app.config import Settings
from app.store.db import make_engine, make_sessionmaker
from app.web.api import store_routes


def create_web_app(settings: Settings) -> FastAPI:
    db = make_engine(settings.resolved_database_url)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        db.dispose()

    app = FastAPI(title="SAE Explorer", version="0.1.0", lifespan=lifespan,
                  description="Attention-output SAE features: dashboards, explanations, prompt analysis, steering")
    app.state.settings = settings
    app.state.sessions = make_sessionmaker(db)
    install_error_handlers(app)
    app.include_router(store_routes.router)

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok"}

    return app

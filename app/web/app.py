"""The web app's factory: FastAPI with the public API, the pages and the vendored browser libraries; the database
and the worker client are created here, from settings, never at import. Knows nothing of torch."""

from __future__ import annotations

from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from sqlalchemy import text
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.config import Settings
from app.serving.api_errors import http_error_detail, http_error_json, install_error_handlers
from app.serving.asgi import Hooks
from app.serving.compression import Compressed
from app.serving.head import HeadAsGet
from app.serving.methods import AllowedMethods
from app.store import keys
from app.store.db import make_engine, make_sessionmaker
from app.store.results import SaveRefused
from app.web.api import model_routes, store_routes
from app.web.auth import CookieSigner, install_sessions, live_session, session_secret, sign_in_gate
from app.web.deployment import Deployment
from app.web.deps import DATABASE_DOWN
from app.web.pages import (
    account,
    builds,
    cards,
    discover,
    explain_pages,
    explorer,
    feature_pages,
    graph,
    indexes,
    lists,
    steering,
)
from app.web.pages.render import FRONTEND, render
from app.web.ratelimit import FairLimits, TokenBuckets
from app.web.services.errors import Invalid, NotFound
from app.web.services.features import NotAllowed
from app.web.worker_client import WorkerError, WorkerUnavailable

# Only the app's own scripts run; styles may be inline (token colours, Plotly's and htmx's own style elements)
CSP = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
       "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'")

# browser libraries installed from the npm registry by `npm ci --prefix frontend`, served by the app (no CDN)
VENDOR = {"htmx.min.js": FRONTEND / "node_modules" / "htmx.org" / "dist" / "htmx.min.js",
          "plotly.min.js": FRONTEND / "node_modules" / "plotly.js-dist-min" / "plotly.min.js"}


TITLES = {401: "Sign-in needed", 403: "Not allowed", 404: "Not found", 413: "Too large", 422: "Check the input",
          429: "Slow down", 503: "Unavailable for a moment"}


def with_model_limits(schema: dict, n_ctx: int | None) -> dict:
    """steer's max_new_tokens at most the largest served context (the prompt's tokens count too), text's limit said."""
    fields = schema.get("components", {}).get("schemas", {}).get("SteerRequest", {}).get("properties", {})
    if "max_new_tokens" in fields and n_ctx is not None:
        fields["max_new_tokens"]["maximum"] = min(fields["max_new_tokens"].get("maximum", n_ctx), n_ctx)
    if "max_new_tokens" in fields:
        fields["max_new_tokens"]["description"] = (
            "new tokens to generate: the prompt's tokens and these must fit the model's context (n_ctx" +
            (f", {n_ctx} tokens for the served models" if n_ctx is not None else "") + "; larger asks are 422)")
    if "text" in fields:
        fields["text"]["description"] = "the prompt; past the model's context (n_ctx tokens) it is refused (413)"
    return schema


def create_web_app(settings: Settings, worker_app=None) -> FastAPI:
    """worker_app: an in-process worker (an ASGI app) for the embedded default; otherwise the web app talks to
    settings.worker_urls over HTTP, each hosting a model and SAE set it names in /v1/info."""
    # first: a guessable secret (the example's placeholder, or short) refuses to start before anything else
    signer = CookieSigner(session_secret(settings.secret_key, settings.data_dir), settings.session_hours * 3600)
    fallback = settings.served_slug()  # the first model's name while no worker has said which it hosts
    if worker_app is not None:
        deployment = Deployment.in_process(worker_app, fallback, settings.worker_token)
    elif settings.worker_urls:
        deployment = Deployment.over_http(settings.worker_urls, fallback, settings.worker_token)
    else:
        raise ValueError("the web app needs a worker: give --worker-url, or run the embedded default in-process")
    db = make_engine(settings.resolved_database_url)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        await deployment.close()
        db.dispose()

    app = FastAPI(title="SAE Explorer", version="0.1.0", lifespan=lifespan, docs_url=None,  # /docs: indexes.api_docs
                  dependencies=[Depends(live_session)] + ([Depends(sign_in_gate)] if settings.read_requires_sign_in
                                                          else []),
                  description="Attention-output SAE features: dashboards, explanations, prompt analysis, steering. "
                              "Reading is open unless the server requires sign-in; writes need an API key "
                              "(X-API-Key header) or a signed-in browser session with its CSRF token.")
    app.state.settings = settings
    app.state.sessions = make_sessionmaker(db)
    app.state.deployment = deployment
    app.state.rate_limits = TokenBuckets(settings.rate_limit_per_minute) if settings.rate_limit_per_minute else None
    app.add_middleware(Compressed, prefixes=("/api/",))  # innermost: the request log's time includes compressing
    app.add_middleware(FairLimits)  # inside the body bound (it may read a steering body) and the sessions
    install_error_handlers(app, refuse_control_characters=True)
    install_sessions(app, signer, secure=settings.secure_cookies)

    def security_headers(request: Request, headers: MutableHeaders) -> None:
        headers.setdefault("Content-Security-Policy", CSP)
        headers.setdefault("X-Content-Type-Options", "nosniff")
        headers.setdefault("X-Frame-Options", "DENY")
        headers.setdefault("Referrer-Policy", "same-origin")
        if headers.get("content-type", "").startswith("text/html"):  # pages carry this browser's CSRF token
            headers["Cache-Control"] = "no-store"
            headers.append("Vary", "HX-Request")  # a fragment and its full page differ
        location = headers.get("location")
        if location and location.startswith(("http://", "https://")):  # never built from the Host header
            _, _, rest = location.partition("://")
            if rest.split("/", 1)[0] == request.headers.get("host", ""):
                path = "/" + rest.split("/", 1)[1] if "/" in rest else "/"
                headers["location"] = (settings.base_url or "").rstrip("/") + path

    app.add_middleware(AllowedMethods)  # inside the security headers: 405 (and OPTIONS) on API paths, with Allow
    app.add_middleware(Hooks, start=security_headers)
    app.add_middleware(HeadAsGet)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        """Pages answer errors as a page with the message (the API and redirects keep their JSON)."""
        path = request.url.path
        if exc.status_code < 400 or path.startswith(("/api/", "/static/")) or path in ("/health", "/ready"):
            return await http_error_json(request, exc)
        title = TITLES.get(exc.status_code, "Something went wrong")
        return render(request, "error.html", {"message": http_error_detail(exc), "model_slug": fallback,
                                              "title": title}, status_code=exc.status_code,
                      headers=getattr(exc, "headers", None))

    def error(request: Request, status: int, detail: str, headers: dict | None = None):
        """A service's or a worker's error: JSON for the API, a page with the message otherwise."""
        if request.url.path.startswith("/api/"):
            return JSONResponse({"detail": detail}, status_code=status, headers=headers)
        return render(request, "error.html", {"message": detail, "model_slug": fallback,
                                              "title": TITLES.get(status, "Something went wrong")},
                      status_code=status, headers=headers)

    @app.exception_handler(NotFound)
    async def _not_found(request: Request, exc: NotFound):
        return error(request, 404, str(exc))

    @app.exception_handler(NotAllowed)
    async def _not_allowed(request: Request, exc: NotAllowed):  # a key changing what is not its own
        return error(request, 403, str(exc))

    @app.exception_handler(Invalid)
    async def _invalid(request: Request, exc: Invalid):  # input the service could not use: what to change
        return error(request, 422, str(exc))

    api_validation = app.exception_handlers[RequestValidationError]

    @app.exception_handler(RequestValidationError)
    async def _bad_request(request: Request, exc: RequestValidationError):
        """The API keeps its JSON; a page's path that names nothing (/demo/L1/abc, /demo/L1/-1) is a 404 page, a page's
        bad query or form a 422 page."""
        if request.url.path.startswith("/api/"):
            return await api_validation(request, exc)
        errors = exc.errors()
        in_path = all(e.get("loc", ("",))[0] == "path" for e in errors)
        detail = "; ".join(f"{e['loc'][-1]}: {e.get('msg', 'invalid')}" for e in errors[:5] if e.get("loc"))
        if in_path:
            return error(request, 404, f"there is no page at {request.url.path} ({detail})")
        return error(request, 422, f"this page cannot use its input: {detail}")

    @app.exception_handler(SaveRefused)
    async def _save_refused(request: Request, exc: SaveRefused):  # a save quota (429) or an over-size result (413)
        return error(request, exc.status, exc.detail,
                     {"Retry-After": str(exc.retry_after)} if exc.retry_after else None)

    @app.exception_handler(WorkerError)
    async def _worker_error(request: Request, exc: WorkerError):  # a worker's 4xx (or busy 503), passed on
        return error(request, exc.status, exc.detail, exc.headers or None)

    @app.exception_handler(WorkerUnavailable)
    async def _worker_unavailable(request: Request, exc: WorkerUnavailable):
        return error(request, 503, exc.detail, {"Retry-After": str(exc.retry_after)})

    app.include_router(model_routes.router)
    app.include_router(store_routes.router)
    plain_openapi = app.openapi

    def openapi() -> dict:
        """The OpenAPI document with the served models' limits, once their workers have said what they host."""
        return with_model_limits(plain_openapi(), max((m.info.n_ctx for m in deployment.known()), default=None))

    app.openapi = openapi  # type: ignore[method-assign]
    for path in VENDOR.values():
        if not path.is_file():
            raise ValueError(f"{path} is missing: install the browser libraries with `npm ci --prefix frontend` "
                             "(make run does)")

    @app.get("/static/vendor/{name}", include_in_schema=False)
    def vendor(name: str) -> FileResponse:
        if name not in VENDOR:
            raise HTTPException(404, f"no vendored file {name!r}")
        return FileResponse(VENDOR[name], media_type="text/javascript",
                            headers={"Cache-Control": "public, max-age=86400"})

    app.mount("/static", StaticFiles(directory=FRONTEND / "static"), name="static")
    app.include_router(account.router)
    app.include_router(explorer.router)
    app.include_router(steering.router)  # before feature pages: /{model}/steer is not /{model}/{sae}/{feature}
    app.include_router(builds.router)
    app.include_router(graph.router)
    app.include_router(discover.router)
    app.include_router(explain_pages.router)
    app.include_router(cards.router)  # before feature pages: /{model}/{sae}/{feature}/card is a card
    app.include_router(lists.router)  # /lists/{id} before /{model}/{sae}
    app.include_router(indexes.router)  # /{model}, /{model}/{sae} (never /health, /ready...: indexes.RESERVED)
    app.include_router(feature_pages.router)

    @app.get("/health")
    def health() -> dict:
        """The process is up (for restarts)."""
        return {"status": "ok"}

    @app.get("/ready")
    async def ready(request: Request) -> JSONResponse:
        """Ready to serve: the database answers and at least one worker is healthy (for load balancers). The detail
        (which workers) only to an admin key: worker URLs are internals."""
        checks = {"database": "ok", "workers": await deployment.healthy()}
        admin = False
        try:
            with app.state.sessions() as session, session.begin():
                session.execute(text("SELECT 1"))
                key = request.headers.get("x-api-key")
                record = keys.verify(session, key=key) if key else None
                admin = record is not None and record.admin
        except DATABASE_DOWN:
            checks["database"] = "unavailable"
        ok = checks["database"] == "ok" and bool(checks["workers"])
        if not admin:  # how many workers answer, not where they are
            checks["workers"] = len(checks["workers"])
        body = {"status": "ready" if ok else "not ready", **checks}
        return JSONResponse(body, status_code=200 if ok else 503, headers=None if ok else {"Retry-After": "5"})

    return app

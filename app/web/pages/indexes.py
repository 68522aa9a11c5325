"""Index pages: a model (/{model}: its SAE sets and SAEs, with dashboards and explanations counted) and an SAE
(/{model}/{sae}: its features as a table sorted, filtered and searched by token through the URL); the API's own
docs page (/docs, no assets from elsewhere) and the favicon. The state is in the URL."""

from __future__ import annotations

from dataclasses import asdict, replace
from typing import Annotated, Literal
from urllib.parse import urlencode

from fastapi import APIRouter, Query, Request
from fastapi.responses import FileResponse, HTMLResponse, Response
from fastapi.routing import APIRoute
from starlette.routing import Match
from starlette.types import Scope

from app.web.api.model_routes import DeploymentDep
from app.web.deps import SessionDep
from app.web.pages.render import FRONTEND, render
from app.web.services import indexes as service

# The app's own top-level names: the app registers some of them (/health, /ready) after the pages, where
# /{model} would otherwise answer them
RESERVED = frozenset({"health", "ready", "docs", "redoc", "openapi.json", "favicon.ico", "static", "api", "lists",
                      "search", "sign-in", "sign-out", "p", "s"})


class ModelRoute(APIRoute):
    """A page route whose first path segment is a model's name, never one of RESERVED."""

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        if self.path.startswith("/{model}") and scope.get("path", "/").split("/")[1] in RESERVED:
            return Match.NONE, {}
        return super().matches(scope)


router = APIRouter(include_in_schema=False, route_class=ModelRoute)
Filter = Annotated[str, Query(max_length=service.MAX_QUERY)]
Sort = Annotated[Literal["id", "density", "max_activation", "hits"], Query()]


def table_link(base: str, query: service.TableQuery) -> str:
    """The SAE index's URL for this query, defaults left out (the sort too, when it is the automatic one)."""
    automatic = ("hits", True) if query.token.strip() else ("id", False)
    if (query.sort, query.desc) == automatic:
        query = replace(query, sort=None, desc=False)
    default = asdict(service.TableQuery())
    state = {k: ("1" if v is True else v) for k, v in asdict(query).items() if v != default[k]}
    return base + ("?" + urlencode(state) if state else "")


@router.get("/favicon.ico", include_in_schema=False)
def favicon() -> FileResponse:
    return FileResponse(FRONTEND / "static" / "favicon.svg", media_type="image/svg+xml",
                        headers={"Cache-Control": "public, max-age=86400"})


@router.get("/docs", response_class=HTMLResponse)
def api_docs(request: Request) -> Response:
    """The API's endpoints, read from /openapi.json, on a page of our own (Swagger UI would come from a CDN)."""
    return render(request, "api_docs.html", {"groups": service.api_endpoints(request.app.openapi()),
                                             "model_slug": request.app.state.settings.served_slug()})


@router.get("/{model}", response_class=HTMLResponse)
async def model_page(request: Request, model: str, deployment: DeploymentDep, session: SessionDep) -> Response:
    return render(request, "model_index.html", await service.model_index(deployment=deployment, session=session,
                                                                         model=model))


@router.get("/{model}/{sae_id}", response_class=HTMLResponse)
def sae_page(request: Request, model: str, sae_id: str, session: SessionDep,
             sort: Sort | None = None, desc: Annotated[bool, Query()] = False,
             q: Filter = "", token: Filter = "", page: Annotated[int, Query(ge=1, le=10**6)] = 1) -> Response:
    query = service.TableQuery(sort=sort, desc=desc, q=q, token=token, page=page)
    ctx = service.sae_index(session=session, model_slug=model, sae_id=sae_id, query=query)
    return render(request, "sae_index.html", {**ctx, "link": lambda **change: table_link(
        f"/{model}/{ctx['sae_id']}", replace(ctx["query"], **change))})

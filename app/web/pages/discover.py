"""Finding features: search over explanations, "which features fire on this text" across all layers, and head
pages (the features a head writes most, by decoder share, with the head's induction and previous-token scores)."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import HTMLResponse, Response

from app.protocol import MAX_TEXT_CHARS, Slug
from app.web.api.model_routes import DeploymentDep
from app.web.api.store_routes import SemanticDep
from app.web.deps import SessionDep
from app.web.pages.render import render
from app.web.services import discovery

router = APIRouter(include_in_schema=False)


@router.get("/search", response_class=HTMLResponse)
async def search(request: Request, deployment: DeploymentDep, session: SessionDep, indexes: SemanticDep,
                 q: Annotated[str, Query(max_length=500)] = "",
                 text: Annotated[str, Query(max_length=MAX_TEXT_CHARS)] = "",
                 model: Annotated[Slug | None, Query()] = None,
                 mode: Annotated[Literal["text", "semantic"], Query()] = "text") -> Response:
    ctx = await discovery.search_page(deployment=deployment, session=session, model=model, q=q, text=text,
                                      mode=mode, indexes=indexes)
    return render(request, "search.html", ctx)


@router.get("/{model}/heads/{layer}/{head}", response_class=HTMLResponse)
async def head_page(request: Request, model: str, layer: Annotated[int, Path(ge=0, le=1000)],
                    head: Annotated[int, Path(ge=0, le=1000)], deployment: DeploymentDep,
                    session: SessionDep) -> Response:
    ctx = await discovery.head_page(deployment=deployment, session=session, model=model, layer=layer, head=head)
    return render(request, "head.html", ctx)

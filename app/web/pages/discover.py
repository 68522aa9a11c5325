"""Finding features and heads: search over explanations, "which features fire on this text" across all layers, head
pages (the features a head writes most, by decoder share, with the head's induction and previous-token scores), and
circuit discovery (/{model}/circuits: the heads whose SAE codes tell a task's positive prompts from its negative)."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import HTMLResponse, Response

from app.protocol import MAX_TEXT_CHARS, Slug
from app.web.api.model_routes import DeploymentDep
from app.web.api.store_routes import SemanticDep
from app.web.deps import SessionDep
from app.web.pages.render import render
from app.web.services import circuits, discovery

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


Text = Annotated[str, Query(max_length=64 * 2000)]  # a side's prompts, one a line
Short = Annotated[str, Query(max_length=400)]


@router.get("/{model}/circuits", response_class=HTMLResponse)
async def circuits_page(request: Request, model: str, deployment: DeploymentDep, task: Short = "induction",
                        positive: Text = "", negative: Text = "", positions: Short = "all", patching: Short = "",
                        truth: Short = "", run: Short = "") -> Response:
    state = circuits.DiscoveryState(task=task, positive=positive, negative=negative, positions=positions,
                                    patching=patching, truth=truth, run=run)
    ctx = await circuits.discovery_page(deployment=deployment, model=model, state=state)
    headers = {"Retry-After": str(ctx["retry_after"])} if ctx.get("retry_after") else None
    return render(request, "discover_circuits.html", ctx, status_code=ctx["status"], headers=headers)

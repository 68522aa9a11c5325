"""The attribution-graph page (/{model}/graph?text=&layer=&feature=&pos=&depth=&threshold=&top_n=): the URL is the
state, so every graph is a permalink (expand=f:L:s:g,... opens leaves in place); `format=json` answers the graph's
JSON as a download instead of the page, `format=neuronpedia` the same graph in circuit-tracer's / Neuronpedia's
attribution-graph JSON."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response

from app.protocol import MAX_TEXT_CHARS
from app.web.api.model_routes import DeploymentDep
from app.web.pages.render import render
from app.web.services import graph as service

router = APIRouter(include_in_schema=False)
Field = Annotated[str, Query(max_length=40)]  # numbers, read by the service so that a bad one gets a page


@router.get("/{model}/graph", response_class=HTMLResponse)
async def graph_page(request: Request, model: str, deployment: DeploymentDep,
                     text: Annotated[str, Query(max_length=MAX_TEXT_CHARS)] = "", layer: Field = "",
                     feature: Field = "", pos: Field = "", depth: Field = "2", threshold: Field = "0.02",
                     top_n: Field = "10", expand: Annotated[str, Query(max_length=64 * 41)] = "",
                     format: Annotated[str, Query(pattern="^(html|json|neuronpedia)$")] = "html") -> Response:
    state = service.GraphState(text=text, layer=layer, feature=feature, pos=pos, depth=depth, threshold=threshold,
                               top_n=top_n, expand=expand)
    ctx = await service.graph_page(deployment=deployment, model=model, state=state,
                                   neuronpedia=format == "neuronpedia")
    headers = {"Retry-After": str(ctx["retry_after"])} if ctx.get("retry_after") else None
    if format != "html":
        if ctx["graph"] is None:
            return JSONResponse({"detail": ctx["error"] or "give text, feature and pos"},
                                status_code=ctx["status"] if ctx["error"] else 422, headers=headers)
        name = f"graph-{model}-{ctx['graph'].root.replace(':', '_')}{'-neuronpedia' if format != 'json' else ''}.json"
        body = ctx["neuronpedia"] if format == "neuronpedia" else ctx["graph"].model_dump()
        return JSONResponse(body, headers={"Content-Disposition": f'attachment; filename="{name}"'})
    return render(request, "graph.html", ctx, status_code=ctx["status"], headers=headers)

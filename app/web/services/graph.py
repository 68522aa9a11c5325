"""The graph page's state (text, layer, feature, position, depth, threshold, top_n, expand, as the URL spells them)
turned into an attribution graph from the model's worker, its figure, the root's incoming links, the feature pages
its nodes open and the URLs that open a node in place; bad input and worker problems become a message and a status,
never a broken page. Knows nothing of HTTP or torch."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from urllib.parse import urlencode

from pydantic import ValidationError

from app import protocol as P
from app.serving.api_errors import field_path
from app.web import figures
from app.web.deployment import Deployment
from app.web.services.errors import Invalid, NotFound
from app.web.services.graph_neuronpedia import neuronpedia_graph
from app.web.worker_client import WorkerClient, WorkerError, WorkerUnavailable

URL_NAMES = {"position": "pos", "max_depth": "depth"}  # the request's field -> its name in the page's URL


@dataclass
class GraphState:
    """What the graph page's URL holds, as text (a permalink may carry anything)."""

    text: str = ""
    layer: str = ""
    feature: str = ""
    pos: str = ""
    depth: str = "2"
    threshold: str = "0.02"
    top_n: str = "10"
    expand: str = ""  # feature node ids opened past depth, comma-separated: f:L:s:g,f:L:s:g


def expand_ids(state: GraphState) -> list[str]:
    """The URL's expand list, in order, without blanks or repeats."""
    return list(dict.fromkeys(e.strip() for e in state.expand.split(",") if e.strip()))


def page_url(model: str, state: GraphState, expand: list[str] | None = None) -> str:
    """This graph's permalink, with `expand` in place of the state's list when given."""
    q = {k: v for k, v in asdict(state).items() if k != "expand"}
    opened = expand_ids(state) if expand is None else expand
    if opened:
        q["expand"] = ",".join(opened)
    return f"/{model}/graph?{urlencode(q)}"


def _number(state: GraphState, name: str, kind: type) -> int | float | None:
    raw = getattr(state, name).strip()
    if not raw:
        return None
    try:
        return kind(raw)
    except ValueError as exc:
        raise Invalid(f"{name} must be {'a whole number' if kind is int else 'a number'}, got {raw!r}") from exc


def graph_request(*, model: str, state: GraphState, default_layer: int) -> P.GraphRequest:
    """The contract's request for this state, or Invalid with a message naming the URL's fields."""
    values = {name: _number(state, name, kind) for name, kind in (("layer", int), ("feature", int), ("pos", int),
              ("depth", int), ("threshold", float), ("top_n", int))}
    for name in ("feature", "pos"):
        if values[name] is None:
            raise Invalid(f"give {name}: the graph is of one feature at one position")
    try:
        return P.GraphRequest(model=model, text=state.text, feature=values["feature"], position=values["pos"],
                              layer=default_layer if values["layer"] is None else values["layer"],
                              expand=expand_ids(state),
                              **{k: v for k, v in (("max_depth", values["depth"]), ("threshold", values["threshold"]),
                                                   ("top_n", values["top_n"])) if v is not None})
    except ValidationError as exc:
        raise Invalid("; ".join(f"{URL_NAMES.get(field_path(e['loc']), field_path(e['loc']))}: {e['msg']}"
                                for e in exc.errors()[:4])) from exc


async def graph_page(*, deployment: Deployment, model: str, state: GraphState, neuronpedia: bool = False) -> dict:
    """Everything the graph page shows; ctx["status"] is the page's HTTP status (4xx/503 with ctx["error"]); with
    `neuronpedia`, ctx["neuronpedia"] is the graph in Neuronpedia's JSON (app/web/services/graph_neuronpedia.py)."""
    ctx: dict = {**asdict(state), "model_slug": model, "error": None, "status": 200, "graph": None}
    if not state.text:
        return ctx
    try:
        served, client = await deployment.client(model)
        saes = {s.layer: s.id for s in served.first_set().saes}
        if state.pos.strip() == "last":
            state = await last_position(client=client, model=served.name, state=state)
            ctx.update(text=state.text, pos=state.pos)
        request = graph_request(model=served.name, state=state, default_layer=max(saes))
        ctx["layer"] = str(request.layer)
        graph = await client.graph(request)
    except Invalid as exc:
        return {**ctx, "error": str(exc), "status": 422}
    except NotFound as exc:
        return {**ctx, "error": str(exc), "status": 404}
    except WorkerError as exc:
        return {**ctx, "error": exc.detail, "status": exc.status}
    except WorkerUnavailable as exc:
        return {**ctx, "error": f"The inference worker is unavailable: {exc.detail}. Try again in "
                                f"{exc.retry_after} s.", "status": 503, "retry_after": exc.retry_after}
    nodes = {n.id: n for n in graph.nodes}
    urls = {n.id: f"/{model}/{saes[n.layer]}/{n.feature}" for n in graph.nodes
            if n.kind == "feature" and n.layer in saes}
    state = replace(state, layer=ctx["layer"])
    opened, asked = {e.target for e in graph.links}, expand_ids(state)
    expand_urls = {n.id: page_url(model, state, [*asked, n.id]) for n in graph.nodes
                   if n.kind == "feature" and n.id not in opened}
    collapse_urls = {i: page_url(model, state, [e for e in asked if e != i]) for i in asked if i in opened}
    if neuronpedia:
        ctx["neuronpedia"] = neuronpedia_graph(graph.model_dump(), model=model, text=state.text, saes=saes, params={
            "max_depth": request.max_depth, "threshold": request.threshold, "top_n": request.top_n,
            "expand": request.expand, "layer": request.layer, "feature": request.feature,
            "position": request.position})
    incoming = sorted((e for e in graph.links if e.target == graph.root), key=lambda e: -abs(e.weight))
    ctx.update(graph=graph, figure=figures.attribution_graph(graph.model_dump(), urls, expand_urls),
               expand_urls=expand_urls, collapse_urls=collapse_urls, url=page_url(model, state),
               root=nodes[graph.root],
               root_label=figures.node_label(nodes[graph.root].model_dump(), graph.tokens), urls=urls,
               root_links=[{"source": e.source, "label": figures.node_label(nodes[e.source].model_dump(),
                                                                             graph.tokens),
                            "url": urls.get(e.source), "head": e.head, "weight": e.weight} for e in incoming])
    return ctx


async def last_position(*, client: WorkerClient, model: str, state: GraphState) -> GraphState:
    """pos=last (the feature pages' trace links, which do not tokenize) as the text's last position. A text that
    starts with the BOS token's own text (a dashboard window that began a corpus row) would get BOS twice: that
    text is dropped, so that positions are the window's."""
    tokens = await client.tokenize(P.TextRequest(model=model, text=state.text))
    ids, text = tokens.token_ids, state.text
    if len(ids) >= 2 and ids[0] == ids[1] and text.startswith(tokens.tokens[1]) and len(text) > len(tokens.tokens[1]):
        text = text[len(tokens.tokens[1]):]
        return replace(state, text=text, pos=str(len(ids) - 2))
    return replace(state, pos=str(len(ids) - 1))

"""The circuit-discovery page's state (a built-in task or prompt lists, one prompt a line, positions, patching, a
known circuit to score against, as the URL spells them) turned into ranked heads and head pairs from the model's
worker (O'Neill & Bui 2024, with activation patching beside), a figure and tables; bad input and worker problems
become a message and a status. Knows nothing of HTTP or torch."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass

from pydantic import ValidationError

from app import protocol as P
from app.serving.api_errors import field_path
from app.web.deployment import Deployment
from app.web.figures_circuits import head_score_grid
from app.web.services.errors import Invalid, NotFound
from app.web.worker_client import WorkerError, WorkerUnavailable

TASKS = P.DISCOVERY_TASKS
TASK_NAMES = {"induction": "induction (random tokens repeated vs not)",
              "ioi": "indirect object identification (Wang et al. 2022)",
              "greater_than": "greater-than (Hanna et al. 2023)",
              "docstring": "docstring arguments (Heimersheim & Janiak 2023)", "custom": "my prompts"}


@dataclass
class DiscoveryState:
    """What the page's URL holds, as text."""

    task: str = "induction"  # a built-in task, or "custom" for the lists
    positive: str = ""  # one prompt a line
    negative: str = ""
    positions: str = "all"
    patching: str = ""  # "1": also run the patching baseline
    truth: str = ""  # the known circuit: "0.5 1.0 1.1" (layer.head, spaces or commas)
    run: str = ""  # "1" once the form is sent


def parse_heads(text: str) -> list[P.HeadRef] | None:
    """ "0.5 1.0, 1.6" -> heads; None for a blank field; Invalid names the first bad one."""
    parts = [p for p in re.split(r"[\s,;]+", text.strip()) if p]
    if not parts:
        return None
    heads = []
    for p in parts:
        m = re.fullmatch(r"(\d+)\.(\d+)", p)
        if m is None:
            raise Invalid(f"known circuit: write heads as layer.head (e.g. 0.5 1.0), not {p!r}")
        heads.append(P.HeadRef(layer=int(m.group(1)), head=int(m.group(2))))
    return heads


def discover_request(*, model: str, state: DiscoveryState) -> P.DiscoverRequest:
    if state.task not in (*TASKS, "custom"):
        raise Invalid(f"task must be one of {[*TASKS, 'custom']}, not {state.task!r}")
    lists = {}
    if state.task == "custom":
        lists = {side: [line for line in getattr(state, side).splitlines() if line.strip()]
                 for side in ("positive", "negative")}
    try:
        return P.DiscoverRequest(model=model, task=None if state.task == "custom" else state.task,
                                 positions=state.positions, patching=state.patching == "1",
                                 ground_truth=parse_heads(state.truth), **lists)
    except ValidationError as exc:
        raise Invalid("; ".join(f"{field_path(e['loc']) or 'prompts'}: {e['msg']}" for e in exc.errors()[:4])) from exc


async def discovery_page(*, deployment: Deployment, model: str, state: DiscoveryState) -> dict:
    """Everything the page shows; ctx["status"] is its HTTP status (4xx/503 with ctx["error"])."""
    ctx: dict = {**asdict(state), "model_slug": model, "tasks": TASK_NAMES, "error": None, "status": 200,
                 "result": None}
    if state.run != "1":
        return ctx
    try:
        served, client = await deployment.client(model)
        result = await client.circuits_discover(discover_request(model=served.name, state=state))
    except Invalid as exc:
        return {**ctx, "error": str(exc), "status": 422}
    except NotFound as exc:
        return {**ctx, "error": str(exc), "status": 404}
    except WorkerError as exc:
        return {**ctx, "error": exc.detail, "status": exc.status}
    except WorkerUnavailable as exc:
        return {**ctx, "error": f"The inference worker is unavailable: {exc.detail}. Try again in "
                                f"{exc.retry_after} s.", "status": 503, "retry_after": exc.retry_after}
    body = result.model_dump()
    rank = {(h["layer"], h["head"]): i + 1 for i, h in enumerate(body["patching"] or [])}
    patch = {(h["layer"], h["head"]): h["score"] for h in body["patching"] or []}
    truth = {(h.layer, h.head) for h in parse_heads(state.truth) or []}
    ctx.update(result=body, figures=[head_score_grid(body["heads"], "Node score (codes seen in positives only)")]
               + ([head_score_grid(body["patching"], "Patching effect (log-prob drop)")] if body["patching"] else []),
               heads=[{**h, "patching": patch.get((h["layer"], h["head"])),
                       "patching_rank": rank.get((h["layer"], h["head"])),
                       "known": (h["layer"], h["head"]) in truth} for h in body["heads"]],
               edges=body["edges"][:20])
    return ctx

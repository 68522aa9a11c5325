"""Index pages' contents: a model with its SAE sets (features with dashboards and with explanations per SAE), an SAE's
features as a sortable, filterable table (by explanation text, or by a token its top examples fire on), and the
API's endpoints from its OpenAPI document; knows nothing of HTTP or torch."""

from __future__ import annotations

import struct
from dataclasses import dataclass, replace

from sqlalchemy import distinct, func, select
from sqlalchemy.orm import Session

from app.store.catalog import features_built, saes_of
from app.store.dashboards import token_texts
from app.store.explanations import best_text
from app.store.models import ExampleRecord, ExplanationRecord, FeatureRecord
from app.web.deployment import Deployment
from app.web.services.errors import Invalid
from app.web.services.features import sae_or_404

SORTS = ("id", "density", "max_activation", "hits")  # hits: top examples on the searched token
PER_PAGE = 50
MAX_QUERY = 200


async def model_index(*, deployment: Deployment, session: Session, model: str) -> dict:
    """The model's shape, and per SAE set its SAEs with d_sae, dashboards built and features explained. NotFound
    when no worker hosts the model."""
    served = await deployment.model(model)
    stored = {s.slug: s for s in saes_of(session, model_slug=served.name)}
    ids = [s.id for s in stored.values()]
    built = features_built(session, sae_ids=ids)
    explained = dict(session.execute(
        select(ExplanationRecord.sae_id, func.count(distinct(ExplanationRecord.feature)))
        .where(ExplanationRecord.sae_id.in_(ids)).group_by(ExplanationRecord.sae_id)).all()) if ids else {}
    sets = []
    for sae_set in served.sets.values():
        rows = []
        for sae in sae_set.saes:
            record = stored.get(sae.id)
            metrics = record.metrics if record is not None else {}
            rows.append({"id": sae.id, "layer": sae.layer, "hook_name": sae.hook_name, "d_sae": sae.d_sae,
                         "architecture": sae.architecture, "l0": metrics.get("l0"),
                         "ce_recovered": metrics.get("ce_recovered"),
                         "built": built.get(record.id, 0) if record else 0,
                         "explained": explained.get(record.id, 0) if record else 0})
        sets.append({"name": sae_set.name, "saes": rows})
    return {"model_slug": served.name, "info": served.info, "sets": sets}


@dataclass
class TableQuery:
    """What the SAE index's URL holds."""

    sort: str | None = None  # None: by hits (most first) when a token is searched, else by id
    desc: bool = False
    q: str = ""  # explanation text contains this (case-insensitive)
    token: str = ""  # top examples fire on this token (its text, surrounding spaces ignored)
    page: int = 1


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _token_ids(session: Session, model_id: int, token: str) -> set[int]:
    """Ids of tokens whose text is `token`, ignoring case and surrounding whitespace (" the", "The", "the")."""
    wanted = token.strip().casefold()
    return {i for i, text in token_texts(session, model_id=model_id).items() if text.strip().casefold() == wanted}


def _hits(session: Session, sae_id: int, ids: set[int]) -> dict[int, int]:
    """feature -> how many of its top examples have one of these tokens as the example's token. Reads one int32 of
    each example's packed ids (the token at max_position), so a scan of every top example stays cheap."""
    rows = session.execute(select(FeatureRecord.index, ExampleRecord.token_ids, ExampleRecord.max_position)
                           .join(ExampleRecord, ExampleRecord.feature_id == FeatureRecord.id)
                           .where(FeatureRecord.sae_id == sae_id, ExampleRecord.kind == "top"))
    out: dict[int, int] = {}
    for feature, packed, m in rows:
        if 0 <= m and 4 * (m + 1) <= len(packed) and struct.unpack_from("<i", packed, 4 * m)[0] in ids:
            out[feature] = out.get(feature, 0) + 1
    return out


def sae_index(*, session: Session, model_slug: str, sae_id: str, query: TableQuery) -> dict:
    """One page of the SAE's features with dashboards: id, density, max activation, best explanation (and, when a
    token is searched, how many top examples fire on it), sorted and filtered as the query says."""
    sae = sae_or_404(session, sae_id=sae_id, model_slug=model_slug)
    if query.sort is None:
        query = replace(query, sort="hits", desc=True) if query.token.strip() else replace(query, sort="id")
    if query.sort not in SORTS or (query.sort == "hits" and not query.token.strip()):
        raise Invalid(f"sort by one of {', '.join(SORTS[:3])} (or hits, with a token)")
    if len(query.q) > MAX_QUERY or len(query.token) > MAX_QUERY:
        raise Invalid(f"a filter is at most {MAX_QUERY} characters")
    stmt = select(FeatureRecord.index, FeatureRecord.density, FeatureRecord.max_activation).where(
        FeatureRecord.sae_id == sae.id)
    if query.q.strip():
        stmt = stmt.where(FeatureRecord.index.in_(select(ExplanationRecord.feature).where(
            ExplanationRecord.sae_id == sae.id,
            ExplanationRecord.text.ilike(f"%{_escape_like(query.q.strip())}%", escape="\\"))))
    hits: dict[int, int] = {}
    if query.token.strip():
        hits = _hits(session, sae.id, _token_ids(session, sae.model_id, query.token))
        stmt = stmt.where(FeatureRecord.index.in_(sorted(hits)))
    rows = [{"feature": f, "density": d, "max_activation": m, "hits": hits.get(f, 0)}
            for f, d, m in session.execute(stmt)]
    key = "feature" if query.sort == "id" else query.sort
    rows.sort(key=lambda r: (r[key], -r["feature"] if query.desc else r["feature"]), reverse=query.desc)
    pages = max(1, -(-len(rows) // PER_PAGE))
    page = min(max(1, query.page), pages)
    shown = rows[(page - 1) * PER_PAGE: page * PER_PAGE]
    explained = best_text(session, sae=sae, features={r["feature"] for r in shown})
    for r in shown:
        r["explanation"] = explained.get(r["feature"], "")
    return {"model_slug": model_slug, "sae_id": sae.slug, "layer": sae.layer, "d_sae": sae.d_sae,
            "architecture": sae.architecture, "rows": shown, "total": len(rows), "page": page, "pages": pages,
            "per_page": PER_PAGE, "query": query, "built": features_built(session, sae_ids=[sae.id]).get(sae.id, 0)}


def api_endpoints(openapi: dict) -> list[dict]:
    """The API's operations from its OpenAPI document, grouped by tag: method, path, summary, parameters, whether
    it takes a JSON body (and its schema's name) and the status codes it answers."""
    groups: dict[str, list[dict]] = {}
    for path, item in openapi.get("paths", {}).items():
        for method, op in item.items():
            if method not in ("get", "post", "put", "patch", "delete"):
                continue
            body = op.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema", {})
            groups.setdefault((op.get("tags") or ["api"])[0], []).append({
                "method": method.upper(), "path": path, "summary": op.get("summary", ""),
                "description": op.get("description", ""),
                "parameters": [{"name": p["name"], "in": p["in"], "required": p.get("required", False),
                                "description": p.get("description", "")} for p in op.get("parameters", [])],
                "body": body.get("$ref", "").rsplit("/", 1)[-1] or ("JSON" if body else ""),
                "responses": sorted(op.get("responses", {}))})
    return [{"tag": tag, "operations": ops} for tag, ops in groups.items()]

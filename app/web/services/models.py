"""Models and SAE sets: which the deployment serves (from its workers) with what the store knows of each SAE
(features with dashboards, L0 and CE loss recovered when measured), for the home page and /api/v1/models; knows
nothing of HTTP or torch."""

from __future__ import annotations

from sqlalchemy.orm import Session

from app import protocol as P
from app.store.catalog import features_built, saes_of
from app.web.deployment import Deployment


async def served_models(*, deployment: Deployment) -> list[P.ServedModel]:
    return [m.as_contract() for m in await deployment.models()]


async def model_info(*, deployment: Deployment, model: str | None) -> P.InfoResponse:
    return (await deployment.model(model)).info_response()


async def model_cards(*, deployment: Deployment, session: Session) -> list[dict]:
    """Per served model: its shape and its SAE sets, each SAE with d_sae, L0, CE recovered and dashboards built."""
    cards = []
    for model in await deployment.models():
        stored = {s.slug: s for s in saes_of(session, model_slug=model.name)}
        built = features_built(session, sae_ids=[s.id for s in stored.values()])
        sets = []
        for sae_set in model.sets.values():
            rows = []
            for sae in sae_set.saes:
                record = stored.get(sae.id)
                metrics = record.metrics if record is not None else {}
                rows.append({"id": sae.id, "layer": sae.layer, "d_sae": sae.d_sae, "architecture": sae.architecture,
                             "l0": metrics.get("l0"), "ce_recovered": metrics.get("ce_recovered"),
                             "built": built.get(record.id, 0) if record is not None else 0})
            sets.append({"name": sae_set.name, "saes": rows})
        cards.append({"name": model.name, "info": model.info, "sets": sets})
    return cards

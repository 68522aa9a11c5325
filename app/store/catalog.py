"""What the store holds per model and SAE, for the pages that list and browse them: features built per SAE, an
SAE by layer, each feature's head shares; knows nothing of torch or HTTP."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.store.models import FeatureRecord, ModelRecord, SAERecord


def saes_of(session: Session, *, model_slug: str) -> list[SAERecord]:
    return list(session.scalars(select(SAERecord).join(ModelRecord).where(ModelRecord.slug == model_slug)
                                .order_by(SAERecord.sae_set, SAERecord.layer, SAERecord.slug)))


def features_built(session: Session, *, sae_ids: list[int]) -> dict[int, int]:
    """SAE record id -> how many of its features have a dashboard."""
    if not sae_ids:
        return {}
    rows = session.execute(select(FeatureRecord.sae_id, func.count()).where(FeatureRecord.sae_id.in_(sae_ids))
                           .group_by(FeatureRecord.sae_id))
    return {sae_id: n for sae_id, n in rows}


def sae_on_layer(session: Session, *, model_slug: str, layer: int, sae_set: str | None = None) -> SAERecord | None:
    """The model's SAE on this layer: of sae_set when given, else of the first set (by name) that has one."""
    query = (select(SAERecord).join(ModelRecord).where(ModelRecord.slug == model_slug, SAERecord.layer == layer)
             .order_by(SAERecord.sae_set != "default", SAERecord.sae_set, SAERecord.id))
    if sae_set is not None:
        query = query.where(SAERecord.sae_set == sae_set)
    return session.scalars(query).first()


def head_shares(session: Session, *, sae: SAERecord) -> list[tuple[int, list[float], float]]:
    """(feature, its decoder's share per head, density) of every built feature of the SAE."""
    rows = session.execute(select(FeatureRecord.index, FeatureRecord.head_attribution, FeatureRecord.density)
                           .where(FeatureRecord.sae_id == sae.id))
    return [(f, shares, d) for f, shares, d in rows]

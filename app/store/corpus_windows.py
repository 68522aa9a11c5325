"""Windows of a dashboard corpus, read back from the stored examples of an SAE's features: where explanation
scorers find their non-activating candidates; knows nothing of torch, models or HTTP."""

from __future__ import annotations

import random

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.store.dashboards import token_texts
from app.store.models import ExampleRecord, FeatureRecord, SAERecord
from app.store.packing import unpack_ids


def sample_windows(session: Session, *, sae: SAERecord, n: int, ctx_len: int, seed: int,
                   exclude_feature: int | None = None) -> list[tuple[list[int], list[str]]]:
    """Up to n (token ids, token texts) windows of at most ctx_len tokens around other features' example tokens
    (three quarters of the window before it), chosen at random (seeded) among the first 20·n stored examples."""
    query = select(ExampleRecord.token_ids, ExampleRecord.max_position).join(FeatureRecord).where(
        FeatureRecord.sae_id == sae.id)
    if exclude_feature is not None:
        query = query.where(FeatureRecord.index != exclude_feature)
    total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    if total == 0:
        return []
    rng = random.Random(seed)
    offset = rng.randrange(max(1, total - 20 * n)) if total > 20 * n else 0
    rows = session.execute(query.order_by(ExampleRecord.id).offset(offset).limit(20 * n)).all()
    rows = rng.sample(rows, min(n, len(rows)))
    texts = token_texts(session, model_id=sae.model_id)
    out = []
    for packed, at in rows:
        ids = unpack_ids(packed)
        start = max(0, min(at - (3 * ctx_len) // 4, len(ids) - ctx_len))
        ids = ids[start:start + ctx_len]
        out.append((ids, [texts.get(i, f"<{i}>") for i in ids]))
    return out

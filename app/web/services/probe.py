"""Trying a feature on one's own text (the feature page's "test on your text"): where on the text the feature fires
most, as the prompt explorer's state that opens there; knows nothing of HTTP or torch."""

from __future__ import annotations

from sqlalchemy.orm import Session

from app import protocol as P
from app.web.deployment import Deployment
from app.web.services.errors import Invalid
from app.web.services.features import check_feature, sae_or_404


async def strongest_position(*, deployment: Deployment, session: Session, model_slug: str, sae_id: str,
                             feature: int, text: str) -> dict:
    """The explorer's URL state (text, layer, feature, pos, model) at the token where the feature's activation is
    highest; pos is None when it fires nowhere on the text."""
    if not text.strip():
        raise Invalid("type some text to test the feature on")
    sae = sae_or_404(session, sae_id=sae_id, model_slug=model_slug)
    check_feature(sae, feature)
    model, client = await deployment.client(model_slug)
    trace = await client.feature_trace(P.FeatureRequest(model=model.name, text=text, sae_id=sae.slug,
                                                        feature=feature))
    acts = trace.activations
    best = max(range(len(acts)), key=acts.__getitem__, default=None)
    pos = best if best is not None and acts[best] > 0 else None
    return {"text": text, "layer": trace.layer, "feature": feature, "pos": pos, "model": model.name}

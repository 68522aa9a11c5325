"""What Neuronpedia export and import share: their error, the SAE they name, the sidecar's file name and the
vocabulary as an array; knows nothing of the row format (app/store/neuronpedia_format.py), torch or HTTP.

Export and import are app/store/neuronpedia_export.py and app/store/neuronpedia_import.py; the layout is a source folder
of `features/`, `activations/` and `explanations/` `batch-N.jsonl.gz` files (see app/store/neuronpedia_format.py for
the format and where it comes from).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.store.dashboards import find_sae
from app.store.models import ModelRecord, SAERecord

SIDECAR = "saex.json"  # our description of the SAE; Neuronpedia reads only its own file names
Progress = Callable[[str], None]


class NeuronpediaError(ValueError):
    """Bad input to an export or import (unknown SAE, missing or occupied folder, malformed file), in words a user can
    act on."""


def _sae(session: Session, model_slug: str, sae_slug: str) -> SAERecord:
    sae = find_sae(session, sae_slug=sae_slug, model_slug=model_slug)
    if sae is None:
        model = session.scalar(select(ModelRecord).where(ModelRecord.slug == model_slug))
        if model is None:
            known = session.scalars(select(ModelRecord.slug).order_by(ModelRecord.slug)).all()
            raise NeuronpediaError(f"no model {model_slug!r} in the store (models: {', '.join(known) or 'none'})")
        known = [s.slug for s in model.saes]
        raise NeuronpediaError(f"model {model_slug!r} has no SAE {sae_slug!r} (its SAEs: {', '.join(known) or 'none'})")
    return sae

def _vocabulary(texts: dict[int, str]) -> np.ndarray:
    """Token texts as an array indexed by id (ids without one read "<id>"): one take per example, not a lookup
    per token."""
    vocab = np.array([f"<{i}>" for i in range(max(texts, default=0) + 1)], dtype=object)
    for i, t in texts.items():
        vocab[i] = t
    return vocab


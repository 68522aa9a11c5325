"""Evaluates a model and its SAEs on a fixed sample of the held-out dashboard corpus: per-SAE reconstruction
metrics, per-head induction and previous-token scores; used by `saex eval`, the model card and the tests."""

from __future__ import annotations

import torch

from app.engine.engine import Engine
from app.jobs.corpus import pack
from app.training.corpus import dashboard_documents
from app.training.model import induction_scores, previous_token_scores


def dashboard_sequences(engine: Engine, n_sequences: int) -> torch.Tensor:
    """(n, n_ctx) token ids from the held-out corpus, packed in order, each row starting with BOS."""
    return pack(engine, dashboard_documents(), n_sequences * engine.model.cfg.n_ctx)


def evaluate_engine(engine: Engine, n_sequences: int = 64, batch: int = 16) -> dict:
    ids = dashboard_sequences(engine, n_sequences)
    per_batch = [engine.reconstruction(ids[i : i + batch]) for i in range(0, n_sequences, batch)]
    saes = []
    for j, first in enumerate(per_batch[0]):
        mean = {k: sum(b[j][k] for b in per_batch) / len(per_batch)
                for k in ("fve", "l0", "ce_clean", "ce_spliced", "ce_zero_ablated")}
        mean["ce_recovered"] = (mean["ce_zero_ablated"] - mean["ce_spliced"]) / (
            mean["ce_zero_ablated"] - mean["ce_clean"])
        saes.append({"sae_id": first["sae_id"], "layer": first["layer"], **mean})
    model = engine.model
    with torch.inference_mode():
        ind, first_half, second_half = induction_scores(model, model.tokenizer.bos_token_id)
        prev = previous_token_scores(model, ids[:16, :64])
    return {"tokens": int(ids.numel()), "saes": saes, "induction_scores": ind.tolist(),
            "previous_token_scores": prev.tolist(), "repeat_first_half_loss": first_half,
            "repeat_second_half_loss": second_half}

"""Evaluates a model and its SAEs on a fixed sample of the held-out dashboard corpus: per-SAE reconstruction
metrics, and the per-head induction and previous-token scores of app/engine/head_scores.py (the head page's);
used by `saex eval`, the model card and the tests; knows nothing of dashboards or the web app."""

from __future__ import annotations

import torch

from app.engine.engine import Engine
from app.engine.head_scores import head_scores
from app.training.corpus import dashboard_documents
from app.training.tokenizer import pack_documents


def dashboard_sequences(engine: Engine, n_sequences: int) -> torch.Tensor:
    """(n, n_ctx) token ids from the held-out corpus, packed in order, each row starting with BOS."""
    tok, n_ctx = engine.model.tokenizer, engine.model.cfg.n_ctx
    return pack_documents(dashboard_documents(), lambda doc: tok.encode(doc, add_special_tokens=False),
                          tok.bos_token_id, n_ctx, n_sequences * n_ctx)


def evaluate_engine(engine: Engine, n_sequences: int = 64, batch: int = 16) -> dict:
    ids = dashboard_sequences(engine, n_sequences)
    per_batch = [engine.reconstruction(ids[i : i + batch]) for i in range(0, len(ids), batch)]
    saes = []
    for j, first in enumerate(per_batch[0]):
        mean = {k: sum(b[j][k] for b in per_batch) / len(per_batch)
                for k in ("fve", "l0", "ce_clean", "ce_spliced", "ce_zero_ablated")}
        mean["ce_recovered"] = (mean["ce_zero_ablated"] - mean["ce_spliced"]) / (
            mean["ce_zero_ablated"] - mean["ce_clean"])
        saes.append({"sae_id": first["sae_id"], "layer": first["layer"], **mean})
    heads = head_scores(engine.model)
    return {"tokens": int(ids.numel()), "saes": saes, "induction_scores": heads.induction.tolist(),
            "previous_token_scores": heads.previous_token.tolist(), "repeat_first_half_loss": heads.first_half_loss,
            "repeat_second_half_loss": heads.second_half_loss}

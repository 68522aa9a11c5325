"""A feature's activations on token windows, each read as its own prompt (BOS first where the model prepends
one): how explanation scorers check that a non-activating example really is one; knows nothing of the app."""

from __future__ import annotations

import torch

from app.engine import features as F
from app.engine.saes import AttnSAE


def window_activations(model, sae: AttnSAE, windows: list[list[int]], feature: int | None, bos: int | None,
                       batch_size: int = 64, max_only: bool = False) -> list[torch.Tensor]:
    """Per window, the activations on its own tokens: (len(window),) of `feature`, or (len(window), d_sae) of every
    feature when feature is None; with max_only, each window's largest per feature instead ((), or (d_sae,)): what
    a pool of a thousand windows keeps at 24,576 latents (100 KB a window, not 3 MB). Windows are right-padded into
    batches; causal attention keeps the padding from reaching earlier tokens."""
    out: list[torch.Tensor] = []
    lead = 0 if bos is None else 1
    device = next(model.parameters()).device
    for start in range(0, len(windows), batch_size):
        chunk = windows[start:start + batch_size]
        width = max(map(len, chunk)) + lead
        ids = torch.zeros(len(chunk), width, dtype=torch.long)  # (batch, pos)
        for i, w in enumerate(chunk):
            if bos is not None:
                ids[i, 0] = bos
            ids[i, lead:lead + len(w)] = torch.tensor(w)
        z = F.capture(model, ids.to(device), [sae.hook_name])[sae.hook_name]  # (batch, pos, head_index, d_head)
        with torch.inference_mode():
            acts, _ = sae.encode(F.flat_z(z))  # (batch, pos, d_sae)
            picked = acts if feature is None else acts[..., feature]
            rows = (picked[i, lead:lead + len(w)] for i, w in enumerate(chunk))
            out.extend((r.amax(0) if max_only else r).cpu() for r in rows)
    return out

"""How well each SAE reconstructs hook_z on some tokens: fraction of variance explained, L0, and next-token
loss clean, with the SAE spliced in, and with hook_z zero-ablated; knows nothing of HTTP or storage."""

from __future__ import annotations

import torch
from transformer_lens import HookedTransformer

from app.engine.features import capture, flat_z
from app.engine.saes import AttnSAE


def _splice(sae: AttnSAE):
    def hook(z: torch.Tensor, hook) -> torch.Tensor:  # z (B, T, head_index, d_head)
        acts, _ = sae.encode(flat_z(z[:, 1:]))
        return torch.cat([z[:, :1], sae.decode(acts).view_as(z[:, 1:]).to(z.dtype)], dim=1)  # BOS kept as is

    return hook


def _zero(z: torch.Tensor, hook) -> torch.Tensor:
    return torch.zeros_like(z)


def reconstruction_metrics(model: HookedTransformer, saes: list[AttnSAE], ids: torch.Tensor) -> list[dict]:
    """ids (B, T), each row starting with BOS, whose hook_z is kept as is (SAEs are trained without it).

    Per SAE: fve, l0 (mean active latents per token, BOS excluded), ce_clean, ce_spliced, ce_zero_ablated and
    ce_recovered = (zero - spliced) / (zero - clean)."""
    out = []
    with torch.inference_mode():
        clean = float(model(ids, return_type="loss"))
        for sae in saes:
            # (B, T-1, d_in): BOS is an outlier that every SAE skips
            x = flat_z(capture(model, ids, [sae.hook_name])[sae.hook_name])[:, 1:]
            acts, _ = sae.encode(x)
            x_hat = sae.decode(acts)
            resid = (x - x_hat).pow(2).sum()
            total = (x - x.mean(dim=(0, 1))).pow(2).sum()
            spliced = float(model.run_with_hooks(ids, return_type="loss", fwd_hooks=[(sae.hook_name, _splice(sae))]))
            zero = float(model.run_with_hooks(ids, return_type="loss", fwd_hooks=[(sae.hook_name, _zero)]))
            out.append({
                "sae_id": sae.sae_id, "layer": sae.layer, "fve": float(1 - resid / total),
                "l0": float((acts > 0).sum(-1).float().mean()), "ce_clean": clean, "ce_spliced": spliced,
                "ce_zero_ablated": zero, "ce_recovered": (zero - spliced) / (zero - clean) if zero != clean else 0.0,
            })
    return out

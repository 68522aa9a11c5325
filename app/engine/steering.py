"""Steering: generation with SAE-latent edits on hook_z that keep the SAE's reconstruction error, so that an edit
of size zero leaves every logit bit-for-bit unchanged; knows nothing of HTTP or storage.

z' = z + Σ_edits (a'_f - a_f) · W_dec[f] (masked to some heads, at some positions), which equals
SAE-decode(a') + (z - SAE-decode(a)): the edited reconstruction plus the untouched error term.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from transformer_lens import HookedTransformer

from app.engine.features import flat_z
from app.engine.saes import AttnSAE

MODES = ("add", "clamp", "ablate")


class OverBudget(RuntimeError):
    """Generation passed its deadline (checked between tokens, so a forward pass is never cut in half)."""


@dataclass(frozen=True)
class Intervention:
    layer: int
    feature: int
    mode: str  # add (a += value), clamp (a = value) or ablate (a = 0)
    value: float = 0.0
    heads: tuple[int, ...] | None = None  # None: all heads
    positions: tuple[int, ...] | None = None  # prompt positions; None: every position, generated ones too


def _edit_hook(sae: AttnSAE, edits: list[Intervention], prompt_len: int):
    directions = torch.stack([sae.decoder_direction(e.feature, list(e.heads) if e.heads else None) for e in edits])
    features = torch.tensor([e.feature for e in edits])

    def hook(z: torch.Tensor, hook) -> torch.Tensor:  # z (B, T, head_index, d_head)
        x = flat_z(z)  # (B, T, d_in)
        acts, _ = sae.encode(x)
        a = acts[..., features]  # (B, T, n_edits)
        delta = torch.empty_like(a)
        for i, e in enumerate(edits):
            if e.mode == "add":
                delta[..., i] = e.value
            elif e.mode == "clamp":
                delta[..., i] = e.value - a[..., i]
            else:
                delta[..., i] = -a[..., i]
            if e.positions is not None:
                keep = torch.zeros(z.shape[1], dtype=torch.bool, device=z.device)
                keep[[p for p in e.positions if p < min(prompt_len, z.shape[1])]] = True
                delta[..., i] = delta[..., i] * keep
        return z + (delta @ directions.to(delta.dtype)).view_as(z).to(z.dtype)

    return hook


@dataclass
class Generation:
    token_ids: list[int]
    logprobs: list[float]  # of each generated token, at temperature 1
    top: list[list[tuple[int, float]]]  # per generated token, the most likely tokens


def generate(
    model: HookedTransformer,
    ids: torch.Tensor,
    max_new_tokens: int,
    temperature: float,
    seed: int,
    top_logprobs: int,
    saes: dict[int, AttnSAE],
    interventions: list[Intervention],
    deadline: float | None = None,
) -> Generation:
    """Greedy (temperature 0) or seeded sampling from ids (1, T), with interventions on hook_z; stops with
    OverBudget once time.monotonic() passes deadline."""
    prompt_len = ids.shape[1]
    hooks = []
    for layer in sorted({e.layer for e in interventions}):
        edits = [e for e in interventions if e.layer == layer]
        hooks.append((saes[layer].hook_name, _edit_hook(saes[layer], edits, prompt_len)))
    generator = torch.Generator(device=ids.device).manual_seed(seed)
    out = Generation([], [], [])
    with torch.inference_mode():
        for _ in range(max_new_tokens):
            if ids.shape[1] >= model.cfg.n_ctx:
                break
            if deadline is not None and time.monotonic() > deadline:
                raise OverBudget(f"generation passed its time budget after {len(out.token_ids)} tokens")
            logits = model.run_with_hooks(ids, fwd_hooks=hooks)[0, -1].float()  # (d_vocab,)
            if not torch.isfinite(logits).all():
                raise FloatingPointError("the edited model produced non-finite logits")
            logp = logits.log_softmax(-1)
            if temperature < 1e-6:  # greedy; also keeps logits / temperature from overflowing
                nxt = int(logits.argmax())
            else:
                probs = ((logits - logits.max()) / temperature).softmax(-1)  # the top logit is 0: never inf - inf
                nxt = int(torch.multinomial(probs, 1, generator=generator))
            top = logp.topk(top_logprobs) if top_logprobs else None
            out.token_ids.append(nxt)
            out.logprobs.append(float(logp[nxt]))
            out.top.append(list(zip(top.indices.tolist(), top.values.tolist(), strict=True)) if top else [])
            ids = torch.cat([ids, torch.tensor([[nxt]], device=ids.device)], dim=1)
    return out

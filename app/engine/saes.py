"""One attention-output SAE on `blocks.L.attn.hook_z`, wrapping a SAELens SAE with the linear pieces that
attributions need; knows nothing of models beyond the hook_z shape, nor of HTTP or storage.

For every architecture the encoder pre-activation is linear in the input,
    pre = (x - b_dec·[apply_b_dec_to_input]) @ W_eff + b_eff,
and the activation is a function of the whole pre-activation vector (TopK, gated) or of each entry:
- standard: relu(pre); jumprelu: relu(pre)·[pre > threshold]; topk: the k largest, relu'd;
- gated: the magnitude path is the pre-activation (W_eff = W_enc·exp(r_mag), b_eff = b_mag) and a feature is
  on where the gate pre-activation x_c @ W_enc + b_gate is positive, so activation = pre wherever it fires;
- topk with rescale_acts_by_decoder_norm: W_eff and b_eff carry the decoder-norm scale, as SAELens applies it.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch
from sae_lens import SAE

SUPPORTED_ARCHITECTURES = ("standard", "jumprelu", "topk", "gated")
# Normalisations that SAELens leaves out at inference; the others rescale each token and break linearity.
SUPPORTED_NORMALIZATIONS = ("none", "expected_average_only_in")
# TopK's active count from its k largest pre-activations rather than a pass over all of them, from this many
# (T·d_sae) on: a pass over pre-activations that no longer sit in cache costs more than a top-k of k rather than n.
# Measured on one thread, counting pass vs top-32: T=128, d_sae=2,048: 1.2 vs 1.5 ms; 512 x 2,048: 9.1 vs 10.0;
# 128 x 8,192: 9.4 vs 3.9; 128 x 24,576: 31 vs 16; 512 x 24,576: 182 vs 63.
COUNT_FROM_TOP_K = 1 << 20


@dataclass
class AttnSAE:
    sae_id: str  # e.g. "L1"
    layer: int
    sae: SAE  # the SAELens object: its own encode is the reference our tests compare against
    n_heads: int
    d_head: int
    source: str  # where it was loaded from, for /v1/info and error messages

    def __post_init__(self) -> None:
        sae, cfg = self.sae, self.sae.cfg
        self.architecture: str = cfg.architecture()
        W_enc = sae.W_enc.detach()  # (d_in, d_sae)
        if self.architecture == "gated":
            self.W_eff = W_enc * sae.r_mag.detach().exp()
            self.b_eff = sae.b_mag.detach().clone()
            self.b_gate = sae.b_gate.detach()
        else:
            self.W_eff = W_enc
            self.b_eff = sae.b_enc.detach().clone()
        self.dec_scale = torch.ones(cfg.d_sae, dtype=W_enc.dtype, device=W_enc.device)
        self.rescaled = bool(getattr(cfg, "rescale_acts_by_decoder_norm", False))
        if self.rescaled:
            self.dec_scale = sae.W_dec.detach().norm(dim=-1)  # (d_sae,)
            self.W_eff = self.W_eff * self.dec_scale
            self.b_eff = self.b_eff * self.dec_scale
        self.W_dec = sae.W_dec.detach()  # (d_sae, d_in)
        self.b_dec_in = sae.b_dec.detach() * float(cfg.apply_b_dec_to_input)  # subtracted from the input
        self.threshold = sae.threshold.detach() if self.architecture == "jumprelu" else None
        self.k = int(cfg.k) if self.architecture == "topk" else None

    @property
    def d_sae(self) -> int:
        return int(self.sae.cfg.d_sae)

    @property
    def d_in(self) -> int:
        return int(self.sae.cfg.d_in)

    @property
    def hook_name(self) -> str:
        return f"blocks.{self.layer}.attn.hook_z"

    def bias_term(self) -> torch.Tensor:
        """(d_sae,) the part of the pre-activation that no head contributes: b_eff - b_dec·W_eff."""
        return self.b_eff - self.b_dec_in @ self.W_eff

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (..., d_in) -> (activations, pre-activations), both (..., d_sae), computed as SAELens does."""
        x_c = x.to(self.W_eff.dtype) - self.b_dec_in
        if self.architecture == "gated":
            pre = x_c @ self.W_eff + self.b_eff
            gate = (x_c @ self.sae.W_enc + self.b_gate) > 0
            return pre.relu() * gate, pre
        pre = x_c @ self.sae.W_enc + self.sae.b_enc
        if self.rescaled:
            pre = pre * self.dec_scale
        if self.architecture == "standard":
            return pre.relu(), pre
        if self.architecture == "jumprelu":
            return pre.relu() * (pre > self.threshold), pre
        values, indices = pre.topk(self.k, dim=-1, sorted=False)
        return torch.zeros_like(pre).scatter_(-1, indices, values.relu()), pre

    def encode_topk(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """TopK SAEs only: x (..., d_in) -> (values, indices), each (..., k), the activations that `encode` scatters
        into its dense result (zero where a chosen pre-activation is negative), in no particular order."""
        pre = (x.to(self.W_eff.dtype) - self.b_dec_in) @ self.sae.W_enc + self.sae.b_enc
        if self.rescaled:
            pre = pre * self.dec_scale
        values, indices = pre.topk(self.k, dim=-1, sorted=False)
        return values.relu(), indices

    def top_active(self, x: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (T, d_in) -> the n largest activations per token (values, indices, both (T, n), largest first) and
        the active-feature count per token (T,). For TopK SAEs straight from the k largest pre-activations, with
        no dense activation matrix; the same numbers as topk over `encode`."""
        if self.architecture == "topk" and n <= self.k:
            pre = (x.to(self.W_eff.dtype) - self.b_dec_in) @ self.sae.W_enc + self.sae.b_enc  # (T, d_sae)
            if self.rescaled:
                pre = pre * self.dec_scale
            if pre.numel() < COUNT_FROM_TOP_K:
                values, indices = pre.topk(n, dim=-1)  # sorted, largest first: the first n of the k the SAE keeps
                # of the k largest pre-activations, as many are positive as there are positive ones, up to k
                return values.relu(), indices, (pre > 0).sum(-1).clamp_max(self.k)
            values, indices = pre.topk(self.k, dim=-1)  # (T, k) sorted, largest first: the k the SAE keeps
            # the active ones are the positive ones among them: all k when k or more pre-activations are positive
            return values[:, :n].relu(), indices[:, :n], (values > 0).sum(-1)
        acts, _ = self.encode(x)
        values, indices = acts.topk(min(n, acts.shape[-1]), dim=-1)
        return values, indices, (acts > 0).sum(-1)

    @cached_property
    def decoder_norms(self) -> torch.Tensor:
        """(d_sae,) ‖W_dec[f]‖: cosines between decoder rows without a normalised copy of the decoder (75 MB a
        layer at 24,576 x 768)."""
        return self.W_dec.norm(dim=-1)

    def decoder_direction(self, feature: int, heads: list[int] | None = None) -> torch.Tensor:
        """(d_in,) what one unit of this latent adds to hook_z (flattened), optionally only some heads' slices."""
        direction = self.W_dec[feature] / self.dec_scale[feature]
        if heads is None:
            return direction
        mask = torch.zeros(self.n_heads, self.d_head, dtype=direction.dtype, device=direction.device)
        mask[heads] = 1.0
        return direction * mask.flatten()

    def decode(self, acts: torch.Tensor) -> torch.Tensor:
        """(..., d_sae) -> (..., d_in), SAELens's decode without hooks."""
        return (acts / self.dec_scale) @ self.W_dec + self.sae.b_dec.detach()

"""Trains one TopK SAE per layer on `blocks.L.attn.hook_z` (all heads concatenated) of a model, all layers from
the same forward passes, and writes SAELens-format folders (`cfg.json`, `sae_weights.safetensors`,
`sparsity.safetensors`); knows nothing of the app.

After Kissane et al. 2024, with TopK activations (Gao et al. 2024) in place of ReLU + L1: L0 is set by k, the
decoder rows stay unit-norm, and an auxiliary loss on the top dead latents (aux-k) keeps latents alive.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from sae_lens import TopKSAE, TopKSAEConfig
from sae_lens.saes.sae import SAEMetadata
from safetensors.torch import save_file
from tqdm import tqdm
from transformer_lens import HookedTransformer

from app.engine.features import capture
from app.training.model import Batches, ModelTrainConfig, split_tokens


@dataclass
class SAETrainConfig:
    expansion: int = 8  # d_sae = expansion · n_heads · d_head
    k: int = 24  # active latents per token
    aux_k: int = 256  # dead latents used by the auxiliary loss
    aux_coeff: float = 1 / 32
    dead_after_tokens: int = 500_000  # a latent silent this long counts as dead
    batch_size: int = 4096  # activations per step
    lr: float = 4e-4
    warmup_steps: int = 50
    total_tokens: int = 6_000_000  # activations per layer
    seq_per_refill: int = 64  # sequences per forward pass of the model
    repeat_fraction: float = 0.25  # share of sequences with a repeated span, so induction features are seen
    seed: int = 0
    threads: int = 2


class TopKTrainer(torch.nn.Module):
    """The trainable SAE: pre = (x - b_dec) @ W_enc + b_enc; the k largest, relu'd; x_hat = a @ W_dec + b_dec."""

    def __init__(self, d_in: int, d_sae: int, k: int) -> None:
        super().__init__()
        self.k = k
        W_dec = torch.randn(d_sae, d_in)
        W_dec /= W_dec.norm(dim=-1, keepdim=True)
        self.W_dec = torch.nn.Parameter(W_dec)  # (d_sae, d_in), unit rows
        self.W_enc = torch.nn.Parameter(W_dec.T.clone())  # (d_in, d_sae)
        self.b_enc = torch.nn.Parameter(torch.zeros(d_sae))
        self.b_dec = torch.nn.Parameter(torch.zeros(d_in))

    def forward(self, x: torch.Tensor, dead: torch.Tensor, aux_k: int) -> tuple[torch.Tensor, dict]:
        pre = (x - self.b_dec) @ self.W_enc + self.b_enc  # (B, d_sae)
        vals, idx = pre.topk(self.k, dim=-1)  # (B, k)
        vals = vals.relu()
        # decode from the k active rows only: (B, k, 1) * (B, k, d_in), far cheaper than a dense (B, d_sae) matmul
        x_hat = (vals.unsqueeze(-1) * self.W_dec[idx]).sum(1) + self.b_dec
        err = x - x_hat
        mse = err.pow(2).sum(-1).mean()
        total_var = (x - x.mean(0)).pow(2).sum(-1).mean()
        aux = torch.zeros((), device=x.device)
        if dead.any():  # reconstruct the error from the top dead latents
            dead_pre = pre.masked_fill(~dead, -math.inf)
            kk = min(aux_k, int(dead.sum()))
            dvals, didx = dead_pre.topk(kk, dim=-1)  # (B, kk)
            dead_recon = (dvals.relu().unsqueeze(-1) * self.W_dec[didx]).sum(1)  # (B, d_in)
            aux = (err.detach() - dead_recon).pow(2).sum(-1).mean() / total_var.clamp_min(1e-8)
        fired = torch.zeros(pre.shape[-1], dtype=torch.bool, device=x.device)
        fired[idx[vals > 0]] = True
        stats = {"fve": float(1 - mse / total_var), "fired": fired}
        return mse / total_var, {"aux": aux, **stats}

    @torch.no_grad()
    def normalise_decoder(self) -> None:
        """Unit-norm decoder rows; remove the gradient's component along each row first."""
        W = self.W_dec
        if W.grad is not None:
            W.grad -= (W.grad * W).sum(-1, keepdim=True) * W
        W /= W.norm(dim=-1, keepdim=True)


def to_sae_lens(trainer: TopKTrainer, layer: int, model_name: str, context_size: int) -> TopKSAE:
    d_sae, d_in = trainer.W_dec.shape
    cfg = TopKSAEConfig(
        d_in=d_in, d_sae=d_sae, k=trainer.k, apply_b_dec_to_input=True, reshape_activations="hook_z",
        metadata=SAEMetadata(hook_name=f"blocks.{layer}.attn.hook_z", model_name=model_name,
                             context_size=context_size, prepend_bos=True, dataset_path="saex offline corpus"),
    )
    sae = TopKSAE(cfg)
    sae.load_state_dict({k: v.detach().clone() for k, v in trainer.state_dict().items()}, strict=True)
    return sae


def save_sae_folder(sae: TopKSAE, density: torch.Tensor, out: Path, report: dict) -> None:
    sae.save_model(out)
    # SAELens's sparsity file: log10 of each latent's firing frequency
    save_file({"sparsity": density.clamp_min(1e-10).log10().contiguous()}, out / "sparsity.safetensors")
    (out / "training_report.json").write_text(json.dumps(report, indent=2))


def train_saes(model: HookedTransformer, tokens_path: Path, out_dir: Path, cfg: SAETrainConfig,
               layers: list[int] | None = None) -> list[dict]:
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    layers = layers if layers is not None else list(range(model.cfg.n_layers))
    d_in = model.cfg.n_heads * model.cfg.d_head
    d_sae = cfg.expansion * d_in
    train_tokens, _ = split_tokens(np.asarray(np.load(tokens_path, mmap_mode="r")))
    seq_cfg = ModelTrainConfig(n_ctx=model.cfg.n_ctx, batch_size=cfg.seq_per_refill,
                               repeat_fraction=cfg.repeat_fraction)
    batches = Batches(train_tokens, seq_cfg, bos=0, seed=cfg.seed + 7)
    saes = {layer: TopKTrainer(d_in, d_sae, cfg.k) for layer in layers}
    opts = {layer: torch.optim.Adam(s.parameters(), lr=cfg.lr, betas=(0.9, 0.999)) for layer, s in saes.items()}
    last_fired = {layer: torch.zeros(d_sae, dtype=torch.long) for layer in layers}  # tokens seen when last fired
    fire_count = {layer: torch.zeros(d_sae) for layer in layers}
    hooks = [f"blocks.{layer}.attn.hook_z" for layer in layers]
    total_steps = cfg.total_tokens // cfg.batch_size
    seen, step, t0 = 0, 0, time.time()
    bar = tqdm(total=total_steps, desc="train SAEs", unit="step")
    buffer: dict[int, torch.Tensor] = {}
    while step < total_steps:
        if not buffer or buffer[layers[0]].shape[0] < cfg.batch_size:  # refill from fresh model activations
            store = capture(model, batches(), hooks)
            perm = None
            for layer, h in zip(layers, hooks, strict=True):
                x = store[h][:, 1:].flatten(-2).reshape(-1, d_in)  # (B·(T-1), d_in): BOS excluded
                perm = torch.randperm(x.shape[0]) if perm is None else perm
                fresh = x[perm]
                buffer[layer] = torch.cat([buffer[layer], fresh]) if layer in buffer else fresh
            if step == 0:
                for layer in layers:  # start b_dec at the data mean
                    saes[layer].b_dec.data.copy_(buffer[layer].mean(0))
            continue
        lr = cfg.lr * min(1.0, (step + 1) / cfg.warmup_steps) * min(1.0, 2 * (1 - step / total_steps) + 0.1)
        log = {}
        for layer in layers:
            x, buffer[layer] = buffer[layer][: cfg.batch_size], buffer[layer][cfg.batch_size :]
            dead = (seen - last_fired[layer]) > cfg.dead_after_tokens
            loss, stats = saes[layer](x, dead, cfg.aux_k)
            loss = loss + cfg.aux_coeff * stats["aux"]
            opts[layer].zero_grad(set_to_none=True)
            loss.backward()
            saes[layer].normalise_decoder()
            for g in opts[layer].param_groups:
                g["lr"] = lr
            opts[layer].step()
            saes[layer].normalise_decoder()
            last_fired[layer][stats["fired"]] = seen + cfg.batch_size
            log[f"fve{layer}"] = f"{stats['fve']:.3f}"
            log[f"dead{layer}"] = int(dead.sum())
        seen += cfg.batch_size
        step += 1
        bar.set_postfix(**log, act_s=f"{seen / (time.time() - t0):.0f}")
        bar.update()
    bar.close()
    # density over a fresh sample, for sparsity.safetensors and the dead fraction
    n = 0
    with torch.no_grad():
        for _ in range(8):
            store = capture(model, batches(), hooks)
            for layer, h in zip(layers, hooks, strict=True):
                x = store[h][:, 1:].flatten(-2).reshape(-1, d_in)
                pre = (x - saes[layer].b_dec) @ saes[layer].W_enc + saes[layer].b_enc
                vals, idx = pre.topk(cfg.k, dim=-1)
                fire_count[layer] += torch.zeros_like(pre).scatter_(-1, idx, (vals > 0).float()).sum(0)
            n += x.shape[0]
    reports = []
    for layer in layers:
        density = fire_count[layer] / n
        report = {"layer": layer, "train_config": asdict(cfg), "tokens": seen,
                  "dead_fraction": float((density == 0).float().mean())}
        save_sae_folder(to_sae_lens(saes[layer], layer, model.cfg.model_name, model.cfg.n_ctx), density,
                        out_dir / f"L{layer}", report)
        reports.append(report)
    return reports

"""Trains the demo language model, nanoGPT-style, as a TransformerLens HookedTransformer, and writes it as a
model folder (`config.json`, `model.safetensors`, `tokenizer.json`); knows nothing of SAEs or the app beyond the
engine's head scores.

Plain text alone forms no induction heads in the few million tokens that two CPU cores can train on, so half of
each batch holds a real text span repeated to the end of the sequence (documents and passages recur in real
corpora too); with it, previous-token and induction heads form after ~6M tokens.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from tqdm import tqdm
from transformer_lens import HookedTransformer, HookedTransformerConfig

from app.engine.head_scores import head_scores
from app.training.checkpoints import Checkpoint, load_checkpoint, save_checkpoint


@dataclass
class ModelTrainConfig:
    # model
    n_layers: int = 2  # attention layers
    d_model: int = 256
    n_heads: int = 8
    d_head: int = 32
    n_ctx: int = 128  # training and model context length
    d_vocab: int = 4096  # must match the tokenizer
    attn_only: bool = True  # no MLPs: with them, no induction heads formed within 6M tokens here
    # data
    repeat_fraction: float = 0.5  # share of sequences holding a repeated real-text span
    min_span: int = 8  # repeated span length range, in tokens
    max_span: int = 64
    # optimisation
    batch_size: int = 32  # sequences per step (4,096 tokens)
    lr: float = 2e-3
    min_lr: float = 2e-4  # the rate at the end of the final linear decay
    warmup_steps: int = 100
    decay_fraction: float = 0.2  # warmup, constant lr, then a linear decay over the last 20% of steps
    weight_decay: float = 0.01  # AdamW's default
    max_tokens: int = 9_000_000  # stop after this many training tokens
    grad_clip: float = 0.0  # 0: no clipping
    # bookkeeping
    eval_every: int = 200  # steps between evaluations and checkpoints
    eval_batches: int = 8
    seed: int = 0
    threads: int = 2  # torch threads; give a background job its own


def hooked_config(cfg: ModelTrainConfig) -> HookedTransformerConfig:
    return HookedTransformerConfig(
        n_layers=cfg.n_layers, d_model=cfg.d_model, n_heads=cfg.n_heads, d_head=cfg.d_head, n_ctx=cfg.n_ctx,
        d_vocab=cfg.d_vocab, attn_only=cfg.attn_only, act_fn=None if cfg.attn_only else "gelu",
        d_mlp=None if cfg.attn_only else 4 * cfg.d_model, normalization_type="LN",
        positional_embedding_type="standard", default_prepend_bos=True, seed=cfg.seed, model_name="saex-demo",
        original_architecture="saex-demo", tokenizer_prepends_bos=False,
    )


class Batches:
    """Random training sequences from a token array: BOS, then n_ctx-1 tokens of real text; a share of them
    hold a real span repeated to the end of the sequence."""

    def __init__(self, tokens: np.ndarray, cfg: ModelTrainConfig, bos: int, seed: int) -> None:
        self.tokens, self.cfg, self.bos = tokens, cfg, bos
        self.rng = np.random.default_rng(seed)

    def __call__(self) -> torch.Tensor:
        cfg, T = self.cfg, self.cfg.n_ctx - 1
        starts = self.rng.integers(0, len(self.tokens) - T, cfg.batch_size)
        x = np.stack([self.tokens[s : s + T] for s in starts]).astype(np.int64)  # (B, T)
        for row in np.flatnonzero(self.rng.random(cfg.batch_size) < cfg.repeat_fraction):
            span = int(self.rng.integers(cfg.min_span, min(cfg.max_span, T // 2) + 1))
            prefix = int(self.rng.integers(0, T - 2 * span + 1))
            block = x[row, prefix : prefix + span].copy()
            reps = np.resize(block, T - prefix)  # the span, repeated to the end
            x[row, prefix:] = reps
        bos = np.full((cfg.batch_size, 1), self.bos, dtype=np.int64)
        return torch.from_numpy(np.concatenate([bos, x], axis=1))  # (B, n_ctx)


def split_tokens(tokens: np.ndarray, block: int = 65536, every: int = 50) -> tuple[np.ndarray, np.ndarray]:
    """Every `every`-th block of `block` tokens goes to validation; the rest to training."""
    n_blocks = len(tokens) // block
    idx = np.arange(n_blocks)
    val = np.concatenate([tokens[i * block : (i + 1) * block] for i in idx[idx % every == 0]])
    train = np.concatenate([tokens[i * block : (i + 1) * block] for i in idx[idx % every != 0]])
    return train, val


@torch.no_grad()
def validation_loss(model: HookedTransformer, val: np.ndarray, cfg: ModelTrainConfig, bos: int) -> float:
    plain = Batches(val, ModelTrainConfig(**{**asdict(cfg), "repeat_fraction": 0.0}), bos, seed=1234)
    return float(np.mean([model(plain(), return_type="loss").item() for _ in range(cfg.eval_batches)]))


def lr_at(step: int, total: int, cfg: ModelTrainConfig) -> float:
    """Warmup, then constant (circuits such as induction heads form mid-run, at full rate), then linear decay."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    decay_start = int(total * (1 - cfg.decay_fraction))
    if step < decay_start:
        return cfg.lr
    t = (step - decay_start) / max(1, total - decay_start)
    return cfg.lr + t * (cfg.min_lr - cfg.lr)


def save_model_folder(model: HookedTransformer, tokenizer_path: Path, out: Path) -> None:
    """The model folder format that the engine loads: HookedTransformerConfig fields, weights, tokenizer."""
    out.mkdir(parents=True, exist_ok=True)
    fields = model.cfg.to_dict()
    keep = {k: v for k, v in fields.items() if isinstance(v, (int, float, str, bool, type(None)))}
    (out / "config.json").write_text(json.dumps(keep, indent=2, sort_keys=True))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, out / "model.safetensors")
    (out / "tokenizer.json").write_bytes(tokenizer_path.read_bytes())


def train_model(cfg: ModelTrainConfig, tokens_path: Path, tokenizer_path: Path, run_dir: Path, out: Path) -> dict:
    """Train (resuming from run_dir's checkpoint if there is one), then write the model folder to `out`."""
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    run_dir.mkdir(parents=True, exist_ok=True)
    tokens = np.load(tokens_path, mmap_mode="r")
    train, val = split_tokens(np.asarray(tokens))
    bos = 0  # <|endoftext|> is token 0 of our tokenizer
    model = HookedTransformer(hooked_config(cfg))
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr,
    )
    total_steps = cfg.max_tokens // (cfg.batch_size * cfg.n_ctx)
    step, history = 0, []
    batches = Batches(train, cfg, bos, seed=cfg.seed)
    ckpt = load_checkpoint(run_dir)
    if ckpt is not None:  # resume: the checkpoint carries the arguments that rebuilt it
        schedule = ("max_tokens", "decay_fraction", "eval_every", "threads")  # may change on resume: how long to go
        if {k: v for k, v in ckpt.config.items() if k not in schedule} != {
                k: v for k, v in asdict(cfg).items() if k not in schedule}:
            raise ValueError(f"{run_dir} holds a checkpoint written with another config; delete it or pass the "
                             "same arguments")
        model.load_state_dict(ckpt.model)
        opt.load_state_dict(ckpt.optimizer)
        step, history = ckpt.step, ckpt.history
        batches.rng.bit_generator.state = ckpt.numpy_rng  # the batches an uninterrupted run would draw next
        torch.set_rng_state(ckpt.torch_rng)
    bar = tqdm(total=total_steps, initial=step, desc="train model", unit="step")
    t0 = time.time()
    while step < total_steps:
        for group in opt.param_groups:
            group["lr"] = lr_at(step, total_steps, cfg)
        loss = model(batches(), return_type="loss")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        step += 1
        tok_s = (step - bar.initial) * cfg.batch_size * cfg.n_ctx / (time.time() - t0)
        bar.set_postfix(loss=f"{loss.item():.3f}", tok_s=f"{tok_s:.0f}")
        bar.update()
        if step % cfg.eval_every == 0 or step == total_steps:
            model.eval()
            heads = head_scores(model, bos)
            row = {"step": step, "tokens": step * cfg.batch_size * cfg.n_ctx, "train_loss": loss.item(),
                   "val_loss": validation_loss(model, val, cfg, bos), "induction_max": heads.induction.max().item(),
                   "prev_token_max": heads.previous_token.max().item(),
                   "repeat_first_half": heads.first_half_loss, "repeat_second_half": heads.second_half_loss}
            model.train()
            history.append(row)
            tqdm.write(json.dumps(row))
            save_checkpoint(run_dir, Checkpoint(
                step=step, history=history, config=asdict(cfg), model=model.state_dict(), optimizer=opt.state_dict(),
                numpy_rng=batches.rng.bit_generator.state, torch_rng=torch.get_rng_state()))
    bar.close()
    model.eval()
    save_model_folder(model, tokenizer_path, out)
    heads = head_scores(model, bos)
    report = {"history": history, "val_loss": validation_loss(model, val, cfg, bos),
              "induction_scores": heads.induction.tolist(), "previous_token_scores": heads.previous_token.tolist(),
              "repeat_first_half_loss": heads.first_half_loss, "repeat_second_half_loss": heads.second_half_loss,
              "config": asdict(cfg)}
    (out / "training_report.json").write_text(json.dumps(report, indent=2))
    return report

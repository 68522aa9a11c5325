"""Random-weight models and hook_z SAEs of any shape, written in the folder formats the engine loads: how the
project stands in for a researcher's GPT-2-Small-sized model and its 12 SAEs of 24,576 latents where no hub can
be reached. Timing and memory do not depend on trained weights; only sparsity does, so a ReLU SAE's encoder bias
is set to give a realistic L0. Knows nothing of the app beyond the folder formats.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from sae_lens import StandardSAE, StandardSAEConfig, TopKSAE, TopKSAEConfig
from sae_lens.saes.sae import SAEMetadata
from tokenizers import Tokenizer
from transformer_lens import HookedTransformer, HookedTransformerConfig

from app.training.model import save_model_folder


@dataclass(frozen=True)
class Shape:
    """A model and SAE shape; the defaults are GPT-2 Small's with Kissane et al.'s SAE width."""

    n_layers: int = 12
    d_model: int = 768
    n_heads: int = 12
    d_head: int = 64
    d_mlp: int = 3072
    n_ctx: int = 1024
    d_vocab: int = 50257
    d_sae: int = 24576
    architecture: str = "topk"  # "topk" (k latents per token) or "standard" (ReLU, bias set for about l0 latents)
    k: int = 32
    l0: int = 64  # the ReLU SAE's target mean number of active latents per token
    seed: int = 0

    def slug(self) -> str:
        return (f"L{self.n_layers}-d{self.d_model}-h{self.n_heads}-v{self.d_vocab}-s{self.d_sae}-{self.architecture}"
                f"-k{self.k if self.architecture == 'topk' else self.l0}-seed{self.seed}")


GPT2_SMALL = Shape()


def widen_tokenizer(source: Path, d_vocab: int, out: Path) -> None:
    """A byte-level BPE tokenizer with exactly d_vocab ids: `source`'s vocabulary and merges, then unused
    single-piece tokens (never produced by the merges, but decodable) up to d_vocab."""
    raw = json.loads(source.read_text())
    vocab: dict[str, int] = raw["model"]["vocab"]
    n = max(vocab.values()) + 1
    if n > d_vocab:
        raise ValueError(f"{source} already has {n} tokens, more than d_vocab={d_vocab}")
    for i in range(n, d_vocab):
        vocab[f"Ġunused{i}"] = i
    out.write_text(json.dumps(raw))
    assert Tokenizer.from_file(str(out)).get_vocab_size() == d_vocab


def build_model(shape: Shape, tokenizer_source: Path, out: Path) -> HookedTransformer:
    cfg = HookedTransformerConfig(
        n_layers=shape.n_layers, d_model=shape.d_model, n_heads=shape.n_heads, d_head=shape.d_head,
        d_mlp=shape.d_mlp, n_ctx=shape.n_ctx, d_vocab=shape.d_vocab, act_fn="gelu_new", normalization_type="LN",
        model_name=f"synthetic-{shape.slug()}", original_architecture="GPT2LMHeadModel", seed=shape.seed,
        default_prepend_bos=True, tokenizer_prepends_bos=False,
    )
    torch.manual_seed(shape.seed)
    model = HookedTransformer(cfg)  # TransformerLens's GPT-2 initialisation, seeded
    out.parent.mkdir(parents=True, exist_ok=True)
    tok = out.parent / f"{out.name}-tokenizer.json"
    widen_tokenizer(tokenizer_source, shape.d_vocab, tok)
    save_model_folder(model, tok, out)
    tok.unlink()
    return model


def build_sae(shape: Shape, layer: int, sample_z: torch.Tensor, out: Path) -> None:
    """One SAELens SAE on blocks.{layer}.attn.hook_z with random weights; sample_z (N, n_heads·d_head) is hook_z
    on random tokens, from which a ReLU SAE's bias is set so that about shape.l0 latents fire per token."""
    d_in = shape.n_heads * shape.d_head
    metadata = SAEMetadata(hook_name=f"blocks.{layer}.attn.hook_z", model_name=f"synthetic-{shape.slug()}",
                           context_size=128, prepend_bos=True, dataset_path="random weights")
    gen = torch.Generator().manual_seed(shape.seed * 1000 + layer)
    W_dec = torch.randn(shape.d_sae, d_in, generator=gen)
    W_dec /= W_dec.norm(dim=-1, keepdim=True)  # (d_sae, d_in), unit rows as trained SAEs keep them
    scale = sample_z.norm(dim=-1).mean().clamp_min(1e-6)
    W_enc = W_dec.T.contiguous() / scale  # pre-activations of order one on this layer's hook_z
    b_dec = sample_z.mean(0)
    if shape.architecture == "topk":
        cfg = TopKSAEConfig(d_in=d_in, d_sae=shape.d_sae, k=shape.k, apply_b_dec_to_input=True,
                            reshape_activations="hook_z", metadata=metadata)
        sae = TopKSAE(cfg)
        b_enc = torch.zeros(shape.d_sae)
    elif shape.architecture == "standard":
        cfg = StandardSAEConfig(d_in=d_in, d_sae=shape.d_sae, apply_b_dec_to_input=True,
                                reshape_activations="hook_z", metadata=metadata)
        sae = StandardSAE(cfg)
        pre = (sample_z - b_dec) @ W_enc  # (N, d_sae)
        # one threshold for the layer: the value that about l0 of each token's d_sae pre-activations exceed
        frac = shape.l0 / shape.d_sae
        kth = max(1, int(round(pre.numel() * (1 - frac))))
        threshold = pre.flatten().kthvalue(kth).values
        b_enc = torch.full((shape.d_sae,), -float(threshold))
    else:
        raise ValueError(f"architecture must be 'topk' or 'standard', got {shape.architecture!r}")
    sae.load_state_dict({"W_enc": W_enc, "W_dec": W_dec, "b_enc": b_enc, "b_dec": b_dec}, strict=True)
    sae.save_model(out)


def build(shape: Shape, root: Path, tokenizer_source: Path, sample_tokens: int = 2048) -> tuple[Path, list[Path]]:
    """The model folder and one SAE folder per layer under root/<shape slug>/, built once: a folder holding a
    `done.json` is reused as it is. Returns (model folder, SAE folders by layer)."""
    base = root / shape.slug()
    model_dir, sae_dirs = base / "model", [base / "saes" / f"L{layer}" for layer in range(shape.n_layers)]
    if (base / "done.json").is_file():
        return model_dir, sae_dirs
    model = build_model(shape, tokenizer_source, model_dir)
    gen = torch.Generator().manual_seed(shape.seed)
    seq = min(128, shape.n_ctx)
    ids = torch.randint(0, shape.d_vocab, (max(1, sample_tokens // seq), seq), generator=gen)
    names = [f"blocks.{layer}.attn.hook_z" for layer in range(shape.n_layers)]
    with torch.inference_mode():
        _, cache = model.run_with_cache(ids, names_filter=names)
    for layer, out in enumerate(sae_dirs):
        build_sae(shape, layer, cache[names[layer]].flatten(-2).flatten(0, 1).clone(), out)
    (base / "done.json").write_text(json.dumps(asdict(shape), indent=2))
    return model_dir, sae_dirs

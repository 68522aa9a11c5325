"""A lean forward pass to the attention hooks (hook_v, hook_pattern, hook_z) of TransformerLens models of the
common GPT-2 shape: pre-norm blocks, absolute positions, causal global multi-head attention, a plain MLP or none.
It runs the same operations as HookedTransformer's own forward on the same weights, so its numbers are bit for bit
TransformerLens's (tested), but without what costs a short prompt most on a CPU: the attention weights rearranged
on every call, three layer norms per attention where one gives the same numbers, and the hook machinery. A model of
any other shape, a hook point other than those three, or a model with hooks attached goes through TransformerLens
(`supported` says why not). Knows nothing of SAEs, HTTP or storage.
"""

from __future__ import annotations

import weakref

import torch
import torch.nn.functional as F
from transformer_lens import HookedTransformer
from transformer_lens.components import Attention
from transformer_lens.components.mlps.mlp import MLP
from transformer_lens.utilities.activation_functions import softcap_enabled
from transformer_lens.utilities.architectures import POST_NORM_ARCHITECTURES

HOOKS = ("hook_v", "hook_pattern", "hook_z")  # the attention hook points this pass can give


def unsupported(model: HookedTransformer) -> str | None:
    """Why the lean pass cannot stand in for this model's forward, or None when it can."""
    cfg = model.cfg
    checks = {
        "positional embeddings are not absolute": cfg.positional_embedding_type != "standard",
        "normalisation is not LayerNorm": cfg.normalization_type not in ("LN", "LNPre"),
        "the dtype is not float32 or float64": cfg.dtype not in (torch.float32, torch.float64),
        "attention is not causal and global": cfg.attention_dir != "causal" or bool(cfg.attn_types)
        and any(t != "global" for t in cfg.attn_types) or cfg.use_local_attn,
        "attention has a variant": softcap_enabled(cfg.attn_scores_soft_cap) or cfg.use_attn_in
        or cfg.use_split_qkv_input or cfg.use_attn_result or cfg.use_qk_norm or cfg.clip_qkv is not None
        or cfg.use_logn_attn or cfg.use_attention_sinks or not cfg.use_attn_scale,
        "the block layout is not pre-norm": cfg.parallel_attn_mlp or cfg.use_normalization_before_and_after
        or cfg.original_architecture in POST_NORM_ARCHITECTURES or cfg.post_embedding_ln,
        "weights are quantised or spread over devices": cfg.load_in_4bit or cfg.n_devices != 1,
        "the tokenizer pads on the left": model.tokenizer is not None and model.tokenizer.padding_side == "left",
    }
    for reason, failed in checks.items():
        if failed:
            return reason
    for block in model.blocks:
        if type(block.attn) is not Attention:  # grouped-query, bidirectional, ... attention classes
            return f"attention is {type(block.attn).__name__}"
        if not cfg.attn_only and type(block.mlp) is not MLP:  # gated, mixture-of-experts, ...
            return f"the MLP is {type(block.mlp).__name__}"
    return None


class LeanForward:
    """The lean pass for one model; `stale` says when its copies of the attention weights no longer match. The
    copies cost the attention weights' size once (GPT-2 small: 113 MB), made on the first capture."""

    def __init__(self, model: HookedTransformer) -> None:
        self.sources = [p for block in model.blocks for p in (block.attn.W_Q, block.attn.W_K, block.attn.W_V,
                                                             block.attn.b_Q, block.attn.b_K, block.attn.b_V,
                                                             block.attn.W_O, block.attn.b_O)]
        self.versions = [p._version for p in self.sources]
        with torch.inference_mode():
            # the layouts TransformerLens makes on every call: (head d_head) d_model, and d_model (head d_head)
            self.qkv = [[(w.permute(0, 2, 1).reshape(-1, w.shape[1]).contiguous(), b.reshape(-1))
                         for w, b in ((a.W_Q, a.b_Q), (a.W_K, a.b_K), (a.W_V, a.b_V))]
                        for a in (block.attn for block in model.blocks)]
            self.out = [block.attn.W_O.permute(2, 0, 1).reshape(model.cfg.d_model, -1).contiguous()
                        for block in model.blocks]

    def stale(self) -> bool:
        """True when a weight was changed in place since the copies were made (load_state_dict does that)."""
        return any(p._version != v for p, v in zip(self.sources, self.versions, strict=True))

    def run(self, model: HookedTransformer, ids: torch.Tensor, names: list[str]) -> dict[str, torch.Tensor]:
        """ids (B, T) -> the activations named (each blocks.L.attn.<one of HOOKS>) of the model these weights came
        from, stopping after the last one."""
        cfg = model.cfg
        wanted: dict[int, set[str]] = {}
        for name in names:
            _, layer, _, hook = name.split(".")
            wanted.setdefault(int(layer), set()).add(hook)
        B, T = ids.shape
        H, d_head = cfg.n_heads, cfg.d_head
        store: dict[str, torch.Tensor] = {}
        with torch.inference_mode():
            resid = model.embed.W_E[ids, :] + model.pos_embed.W_pos[:T, :].unsqueeze(0)  # (B, T, d_model)
            positions = torch.arange(T, device=ids.device)
            causal = (positions[None, :] <= positions[:, None])[None, None]  # (1, 1, query, key)
            for layer in range(max(wanted) + 1):
                block, attn = model.blocks[layer], model.blocks[layer].attn
                x = block.ln1(resid)
                x_qk = x + 0.0  # TransformerLens adds a shortformer term of 0.0 to the query and key inputs
                q, k, v = (F.linear(inp, w, b).reshape(B, T, H, d_head)
                           for inp, (w, b) in zip((x_qk, x_qk, x), self.qkv[layer], strict=True))
                scores = q.permute(0, 2, 1, 3) @ k.permute(0, 2, 3, 1) / attn.attn_scale  # (B, head, query, key)
                scores = torch.where(causal, scores, attn.IGNORE.to(scores.device))
                pattern = F.softmax(scores, dim=-1)
                # TransformerLens's where(isnan, 0, pattern) in one kernel; infinities stay as they are
                pattern = pattern.nan_to_num_(0.0, float("inf"), float("-inf")).to(v.dtype)
                z = (pattern @ v.permute(0, 2, 1, 3)).permute(0, 2, 1, 3)  # (B, T, head, d_head)
                for hook, value in (("hook_v", v), ("hook_pattern", pattern), ("hook_z", z)):
                    if hook in wanted.get(layer, ()):
                        store[f"blocks.{layer}.attn.{hook}"] = value
                if layer == max(wanted):
                    break
                attn_out = F.linear(z.reshape(B, T, H * d_head), self.out[layer], attn.b_O)
                resid = resid + attn_out
                if not cfg.attn_only:
                    resid = resid + block.mlp(block.ln2(resid))
        return store


_PASSES: weakref.WeakKeyDictionary[HookedTransformer, LeanForward | None] = weakref.WeakKeyDictionary()


def lean_forward(model: HookedTransformer, names: list[str]) -> LeanForward | None:
    """The lean pass for this model and these hook names, or None when TransformerLens's forward must run."""
    parts = [n.split(".") for n in names]
    if not names or any(len(p) != 4 or p[0] != "blocks" or p[2] != "attn" or p[3] not in HOOKS for p in parts):
        return None
    if any(point.fwd_hooks or point._forward_hooks for point in model.hook_dict.values()):
        return None  # someone's hooks must see this forward pass
    lean = _PASSES.get(model, False)
    if lean is False or (lean is not None and lean.stale()):
        lean = _PASSES[model] = LeanForward(model) if unsupported(model) is None else None
    return lean

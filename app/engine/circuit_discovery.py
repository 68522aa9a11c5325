"""Circuit discovery from positive and negative prompts, after O'Neill & Bui 2024 ("Sparse autoencoders enable
scalable and reliable circuit identification"), with activation patching on the same prompts as the baseline;
knows nothing of HTTP, storage or how the model was loaded.

Codes: a head's code at a token is the SAE latent it contributes most to there, argmax_f z_{t,h} · W_eff[h-slice, f]
(the head contributions of design.md), taken at each prompt's last token (as the paper takes one code per example
and head) or at every token. Node score of a head: |P − N| / |P ∪ N|, P and N the sets of its codes on the positive
and on the negative prompts (the paper's normalised count of codes unique to the positives). Edge score of a pair of
heads: |P2 − N2| / (|P2| + |N2|), P2 and N2 the sets of code pairs the two heads show together at one token.

Patching baseline: per head, the positive prompts' mean log-probability of their own next tokens, minus the same
with that head's z replaced, at every position both prompts have, by its z on the paired negative prompt.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformer_lens import HookedTransformer

from app.engine.circuit_tasks import TASKS, induction_task  # noqa: F401  (the built-in tasks live there)
from app.engine.saes import AttnSAE

POSITIONS = ("all", "last")
MAX_PROMPTS = 64  # per side
MAX_EDGES = 1000
PATCH_PROMPTS = 16  # the patching baseline runs on at most this many positive prompts: n_heads forwards each


@dataclass(frozen=True)
class Head:
    layer: int
    head: int


def _z(model: HookedTransformer, ids: torch.Tensor, layers: Sequence[int]) -> dict[int, torch.Tensor]:
    """ids (1, T) -> per layer hook_z (T, head_index, d_head)."""
    names = {f"blocks.{i}.attn.hook_z" for i in layers}
    _, cache = model.run_with_cache(ids, names_filter=lambda n: n in names, stop_at_layer=max(layers) + 1)
    return {i: cache[f"blocks.{i}.attn.hook_z"][0] for i in layers}


def head_codes(model: HookedTransformer, saes: dict[int, AttnSAE], ids: torch.Tensor, positions: str) -> torch.Tensor:
    """(n_tokens, n_heads_total) int64: per token used (the last, or all) and per head (layers with an SAE, in
    order, heads within), the latent its contribution z_{t,h} · W_eff[h-slice, f] is largest for."""
    layers = sorted(saes)
    zs = _z(model, ids, layers)
    out = []
    for layer in layers:
        sae = saes[layer]
        z = zs[layer] if positions == "all" else zs[layer][-1:]  # (T', head_index, d_head)
        W = sae.W_eff.view(sae.n_heads, sae.d_head, -1)  # (head_index, d_head, d_sae)
        codes = torch.empty(z.shape[0], sae.n_heads, dtype=torch.long)
        for h in range(sae.n_heads):  # one head at a time: (T', d_sae), never (T', head_index, d_sae)
            codes[:, h] = (z[:, h].to(W.dtype) @ W[h]).argmax(-1).cpu()
        out.append(codes)
    return torch.cat(out, dim=1)


def node_scores(pos_codes: torch.Tensor, neg_codes: torch.Tensor) -> list[float]:
    """Codes (n, n_heads_total) of positive and negative tokens -> per head |P − N| / |P ∪ N|."""
    scores = []
    for i in range(pos_codes.shape[1]):
        p, n = set(pos_codes[:, i].tolist()), set(neg_codes[:, i].tolist())
        scores.append(len(p - n) / len(p | n) if p | n else 0.0)
    return scores


def edge_scores(pos_codes: torch.Tensor, neg_codes: torch.Tensor) -> dict[tuple[int, int], float]:
    """Per pair of heads i < j: |P2 − N2| / (|P2| + |N2|) over the code pairs they show together at one token.
    Vectorised per head i: pair (c_i, c_j) of column j is the key (j·D + c_i)·D + c_j, D past the largest code."""
    D = int(max(pos_codes.max(), neg_codes.max())) + 1
    n_heads = pos_codes.shape[1]
    out = {}
    for i in range(n_heads - 1):
        m = n_heads - i - 1
        cols = torch.arange(m)

        def keys(codes: torch.Tensor, i=i, cols=cols) -> torch.Tensor:
            return ((cols * D + codes[:, i, None]) * D + codes[:, i + 1:]).flatten().unique()

        p, n = keys(pos_codes), keys(neg_codes)
        only_p = p[~torch.isin(p, n)]
        per_column = [torch.bincount(k // (D * D), minlength=m) for k in (only_p, p, n)]  # keys per column j
        unique, total = per_column[0], per_column[1] + per_column[2]
        for j, (u, tot) in enumerate(zip(unique.tolist(), total.tolist(), strict=True)):
            out[(i, i + 1 + j)] = u / tot if tot else 0.0
    return out


def next_token_logprob(model: HookedTransformer, ids: torch.Tensor, hooks: list) -> torch.Tensor:
    """ids (B, T) -> (B,) mean log-probability of each sequence's own next tokens."""
    logits = model.run_with_hooks(ids, fwd_hooks=hooks)
    logprobs = logits[:, :-1].float().log_softmax(-1).gather(-1, ids[:, 1:, None])[..., 0]  # (B, T-1)
    return logprobs.mean(-1)


def patching_scores(model: HookedTransformer, layers: Sequence[int], positive: Sequence[torch.Tensor],
                    negative: Sequence[torch.Tensor]) -> list[float]:
    """Per head of `layers` (in order): mean over positive prompts of the drop in their next-token log-probability
    when that head's z is patched from the paired negative prompt (positive i with negative i mod len). One batched
    forward per prompt and layer: row h patches head h."""
    H = model.cfg.n_heads
    effects = torch.zeros(len(layers), H)
    for k, ids in enumerate(positive):
        other = negative[k % len(negative)]
        n = min(ids.shape[1], other.shape[1])
        zs = _z(model, other, layers)
        clean = float(next_token_logprob(model, ids, [])[0])
        batch = ids.expand(H, -1)
        for li, layer in enumerate(layers):
            corrupt = zs[layer][:n]  # (n, head_index, d_head)

            def patch(z, hook, corrupt=corrupt):
                z = z.clone()
                rows = torch.arange(H)
                z[rows, : corrupt.shape[0], rows] = corrupt.transpose(0, 1)  # row h: head h's z from the negative
                return z

            patched = next_token_logprob(model, batch, [(f"blocks.{layer}.attn.hook_z", patch)])
            effects[li] += clean - patched.cpu()
    return (effects / len(positive)).flatten().tolist()


def roc_auc(scores: Sequence[float], truth: Sequence[bool]) -> float | None:
    """The probability that a head of the ground truth scores above one outside it (ties count half); None when
    either group is empty."""
    pos = [s for s, t in zip(scores, truth, strict=True) if t]
    neg = [s for s, t in zip(scores, truth, strict=True) if not t]
    if not pos or not neg:
        return None
    wins = sum((p > q) + 0.5 * (p == q) for p in pos for q in neg)
    return wins / (len(pos) * len(neg))


def discover(model: HookedTransformer, saes: dict[int, AttnSAE], positive: Sequence[torch.Tensor],
             negative: Sequence[torch.Tensor], positions: str = "all", max_edges: int = 100, patching: bool = True,
             ground_truth: Sequence[Head] | None = None) -> dict:
    """positive, negative: token ids (1, T) each. The contract's {"heads", "edges"}, highest score first, plus
    "patching" (the baseline's per-head scores, highest first) and, given a ground truth, "roc_auc" for both.
    positions "all" (the default) takes every token's codes: on the demo's induction task it ranks the induction
    heads first (ROC-AUC 0.82 against the model card's five heads), "last" only the last token's (0.71)."""
    if positions not in POSITIONS:
        raise ValueError(f"positions must be one of {POSITIONS}, got {positions!r}")
    layers = sorted(saes)
    heads = [Head(layer, h) for layer in layers for h in range(saes[layer].n_heads)]
    t0 = time.perf_counter()
    with torch.inference_mode():
        pos_codes = torch.cat([head_codes(model, saes, ids, positions) for ids in positive])
        neg_codes = torch.cat([head_codes(model, saes, ids, positions) for ids in negative])
        nodes = node_scores(pos_codes, neg_codes)
        edges = edge_scores(pos_codes, neg_codes)
        t_codes = time.perf_counter() - t0
        patch = patching_scores(model, layers, positive[:PATCH_PROMPTS], negative) if patching else None
        t_patch = time.perf_counter() - t0 - t_codes

    def head_dict(h: Head) -> dict:
        return {"layer": h.layer, "head": h.head}

    ranked = sorted(range(len(heads)), key=lambda i: -nodes[i])
    top_edges = sorted(edges.items(), key=lambda kv: -kv[1])[:max_edges]
    out = {
        "heads": [{**head_dict(heads[i]), "score": nodes[i]} for i in ranked],
        "edges": [{"source": head_dict(heads[i]), "target": head_dict(heads[j]), "score": s}
                  for (i, j), s in top_edges],
        "patching": None, "roc_auc": None, "seconds": {"codes": t_codes},
    }
    if patch is not None:
        out["patching"] = [{**head_dict(heads[i]), "score": patch[i]}
                           for i in sorted(range(len(heads)), key=lambda i: -patch[i])]
        out["seconds"]["patching"] = t_patch
    if ground_truth is not None:
        truth = [h in set(ground_truth) for h in heads]
        out["roc_auc"] = {"codes": roc_auc(nodes, truth),
                          "patching": roc_auc(patch, truth) if patch is not None else None}
    return out

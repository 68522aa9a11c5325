"""Attribution graphs (recursive DFA): the exact linear decomposition of one attention-SAE feature's pre-activation
at one position of a prompt, with attention patterns and LayerNorm scales frozen at that prompt; knows nothing of
HTTP, storage or how the model was loaded.

With patterns A and the ln1 scales σ frozen, everything upstream of a layer-L feature f at position t is linear:

    pre_f(t) = bias_f + Σ_{h,s} A^h_{t,s} · v^h_s · w_h,      w_h = W_eff[h-slice, f]          (DFA)
    v^h_s · w_h = Σ_c (c_s − mean(c_s))/σ_s · w_ln · W_V^h w_h  +  (b_ln W_V^h + b_V^h) · w_h

where the c are the components of resid_pre_L at s: token and position embeddings, each earlier layer's attention
output (opened, where that layer has an SAE, into its active features a_g(s)·W_dec[g]·W_O, its reconstruction
error and the constant b_dec·W_O + b_O) and each earlier MLP's output. (c − mean c)·u = c·(u − mean u), so a
component's weight through head h is A^h_{t,s}/σ_s · c · centre(w_ln ⊙ W_V^h w_h). Constants (SAE bias term,
LayerNorm and value biases, b_dec·W_O + b_O) go to the node's bias link. An earlier feature is a node whose value is
its own pre-activation at its position, opened the same way, to max_depth.

The decomposition runs in float64 on the float32 forward pass's activations; the links into every expanded node sum
to its value (the pre-activation the SAE computes) to within float32 rounding.

Node ids: f:L:s:g (feature), tok:s, pos:s, sae_error:L:s, attn_out:L:s, mlp:L:s, bias:<target id>,
pruned:<target id>. A feature node's value is its pre-activation; a bias or pruned node's value is its one link's
weight; a token, position, error, attention or MLP node's value is the sum of its links' weights (what it
contributes to the nodes shown).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Collection
from dataclasses import dataclass

import torch
from transformer_lens import HookedTransformer
from transformer_lens.utilities.architectures import POST_NORM_ARCHITECTURES

from app.engine.saes import AttnSAE

MAX_GRAPH_TOKENS = 256  # prompt length at most: memory and time grow with tokens x active features x layers
MAX_EXPANDED = 256  # feature nodes opened per graph at most: top_n^depth grows fast, and each costs a pass of matmuls


def unsupported(model: HookedTransformer) -> str | None:
    """Why the frozen-pattern decomposition does not hold for this model, or None when it does."""
    cfg = model.cfg
    if cfg.normalization_type not in ("LN", "LNPre"):
        return f"normalisation is {cfg.normalization_type}, not LayerNorm"
    if cfg.parallel_attn_mlp or cfg.use_normalization_before_and_after or cfg.post_embedding_ln \
            or cfg.original_architecture in POST_NORM_ARCHITECTURES:
        return "the block layout is not pre-norm"
    if cfg.positional_embedding_type not in ("standard", "rotary"):
        return f"positional embeddings are {cfg.positional_embedding_type}"
    if cfg.use_attn_in or cfg.use_split_qkv_input or cfg.use_attn_result:
        return "attention inputs are split per head"
    return None


@dataclass
class _Layer:
    """One layer's frozen quantities, float64: what its attention reads (l <= root layer) and writes (l < root)."""

    pattern: torch.Tensor  # (head_index, dest, src)
    scale: torch.Tensor  # (pos,) ln1's σ
    W_V: torch.Tensor  # (head_index, d_model, d_head)
    b_V: torch.Tensor  # (head_index, d_head)
    w_ln: torch.Tensor  # (d_model,)
    b_ln: torch.Tensor  # (d_model,)
    # what it writes, for layers below the root's
    W_O: torch.Tensor | None = None  # (head_index·d_head, d_model)
    b_O: torch.Tensor | None = None  # (d_model,)
    row_act: torch.Tensor | None = None  # (n_active,) float64: a_g(s) / decoder scale, per active (s, g)
    row_pos: torch.Tensor | None = None  # (n_active,)
    row_feat: torch.Tensor | None = None  # (n_active,)
    row_uid: torch.Tensor | None = None  # (n_active,): index of its feature in `dirs`
    dirs: torch.Tensor | None = None  # (n_distinct, d_in) float32: W_dec rows of the features active anywhere
    error: torch.Tensor | None = None  # (pos, d_in): z − SAE reconstruction
    b_dec: torch.Tensor | None = None  # (d_in,)
    attn_out: torch.Tensor | None = None  # (pos, d_model), layers without an SAE
    mlp_out: torch.Tensor | None = None  # (pos, d_model), models with MLPs
    pre: torch.Tensor | None = None  # (pos, d_sae) float32 pre-activations, layers with an SAE


class _Frozen:
    """One forward pass's activations, and the per-layer pieces the decomposition reads."""

    def __init__(self, model: HookedTransformer, saes: dict[int, AttnSAE], ids: torch.Tensor, top: int) -> None:
        names = {f"blocks.{i}.{n}" for i in range(top + 1) for n in ("attn.hook_pattern", "ln1.hook_scale")}
        names |= {f"blocks.{i}.attn.hook_z" for i in range(top + 1) if i in saes}
        names |= {f"blocks.{i}.hook_attn_out" for i in range(top) if i not in saes}
        if not model.cfg.attn_only:
            names |= {f"blocks.{i}.hook_mlp_out" for i in range(top)}
        _, cache = model.run_with_cache(ids, names_filter=lambda n: n in names, stop_at_layer=top + 1)
        d = torch.float64
        self.T = ids.shape[1]
        self.embed = model.W_E[ids[0]].to(d)  # (pos, d_model)
        self.pos = model.W_pos[: self.T].to(d) if model.cfg.positional_embedding_type == "standard" else None
        self.layers: list[_Layer] = []
        for i in range(top + 1):
            block = model.blocks[i]
            attn, ln = block.attn, block.ln1
            W_V, b_V = attn.W_V.to(d), attn.b_V.to(d)
            if W_V.shape[0] != model.cfg.n_heads:  # grouped-query attention: each value head serves several heads
                rep = model.cfg.n_heads // W_V.shape[0]
                W_V, b_V = W_V.repeat_interleave(rep, 0), b_V.repeat_interleave(rep, 0)
            has_w = hasattr(ln, "w")
            layer = _Layer(
                pattern=cache[f"blocks.{i}.attn.hook_pattern"][0].to(d),
                scale=cache[f"blocks.{i}.ln1.hook_scale"][0, :, 0].to(d),
                W_V=W_V, b_V=b_V,
                w_ln=ln.w.to(d) if has_w else torch.ones(model.cfg.d_model, dtype=d, device=W_V.device),
                b_ln=ln.b.to(d) if has_w else torch.zeros(model.cfg.d_model, dtype=d, device=W_V.device),
            )
            if i in saes:
                sae = saes[i]
                z32 = cache[f"blocks.{i}.attn.hook_z"][0].flatten(-2)  # (pos, head_index·d_head)
                acts, pre = sae.encode(z32)
                layer.pre = pre
                if i < top:
                    s_idx, g_idx = (acts > 0).nonzero(as_tuple=True)
                    uniq, layer.row_uid = g_idx.unique(return_inverse=True)
                    # the distinct features' rows, not one row per (s, g): T·k rows of d_in doubles would be GBs
                    layer.dirs = sae.W_dec[uniq]
                    # what multiplies W_dec[g] in the decoder, per active (s, g)
                    layer.row_act = acts[s_idx, g_idx].to(d) / sae.dec_scale[g_idx].to(d)
                    layer.row_pos, layer.row_feat = s_idx, g_idx
                    layer.b_dec = sae.sae.b_dec.detach().to(d)
                    # the reconstruction from the active rows only: a dense (pos, d_sae) @ (d_sae, d_in) in float64
                    # was most of a GPT-2-shaped graph's time
                    recon = torch.zeros_like(z32, dtype=d).index_add_(
                        0, s_idx, layer.row_act[:, None] * layer.dirs.to(d)[layer.row_uid])
                    layer.error = z32.to(d) - recon - layer.b_dec
            if i < top:
                layer.W_O = attn.W_O.to(d).flatten(0, 1)
                layer.b_O = attn.b_O.to(d)
                if i not in saes:
                    layer.attn_out = cache[f"blocks.{i}.hook_attn_out"][0].to(d)
                if not model.cfg.attn_only:
                    layer.mlp_out = cache[f"blocks.{i}.hook_mlp_out"][0].to(d)
            self.layers.append(layer)


def _incoming(fr: _Frozen, saes: dict[int, AttnSAE], L: int, t: int, f: int) -> tuple[list[str], torch.Tensor, float]:
    """The exact decomposition of feature f's pre-activation at (L, t): source ids (n,), weights (n, head_index) of
    each source through each head, and the bias (everything constant)."""
    sae, lay = saes[L], fr.layers[L]
    d = torch.float64
    H = lay.W_V.shape[0]
    w = sae.W_eff[:, f].to(d).view(H, -1)  # (head_index, d_head)
    u = torch.einsum("hmd,hd->hm", lay.W_V, w) * lay.w_ln  # (head_index, d_model)
    u = u - u.mean(-1, keepdim=True)  # a component c enters as (c − mean c)·u = c·(u − mean u)
    A = lay.pattern[:, t, : t + 1]  # (head_index, src)
    coef = (A / lay.scale[: t + 1]).T  # (src, head_index)
    S = t + 1
    head_bias = (lay.b_ln @ lay.W_V + lay.b_V) * w  # (head_index, d_head)
    bias = float(sae.bias_term()[f]) + float((A.sum(-1) * head_bias.sum(-1)).sum())

    ids: list[str] = []
    blocks: list[torch.Tensor] = []

    def add(prefix: str, vectors: torch.Tensor) -> None:  # vectors (src, d_model): one component per position
        blocks.append((vectors[:S] @ u.T) * coef)
        ids.extend(f"{prefix}{s}" for s in range(S))

    add("tok:", fr.embed)
    if fr.pos is not None:
        add("pos:", fr.pos)
    for i in range(L):
        src = fr.layers[i]
        if src.row_act is not None:
            M = src.W_O @ u.T  # (d_in, head_index): a unit of z at layer i, read by each head of the target
            keep = src.row_pos <= t
            pos, feat = src.row_pos[keep], src.row_feat[keep]
            per_feature = src.dirs.to(d) @ M  # (n_distinct, head_index)
            blocks.append(src.row_act[keep, None] * per_feature[src.row_uid[keep]] * coef[pos])
            ids.extend(f"f:{i}:{s}:{g}" for s, g in zip(pos.tolist(), feat.tolist(), strict=True))
            blocks.append((src.error[:S] @ M) * coef)
            ids.extend(f"sae_error:{i}:{s}" for s in range(S))
            bias += float(((src.b_dec @ M + src.b_O @ u.T) * coef).sum())
        else:
            add(f"attn_out:{i}:", src.attn_out)
        if src.mlp_out is not None:
            add(f"mlp:{i}:", src.mlp_out)
    return ids, torch.cat(blocks), bias


def _feature_of(node_id: str) -> tuple[int, int, int]:
    """"f:L:s:g" -> (L, s, g)."""
    _, L, s, g = node_id.split(":")
    return int(L), int(s), int(g)


def _node(node_id: str, value: float) -> dict:
    kind, *rest = node_id.split(":")
    nums = [int(x) for x in rest] if kind not in ("bias", "pruned") else []
    if kind == "f":
        return {"id": node_id, "kind": "feature", "layer": nums[0], "position": nums[1], "feature": nums[2],
                "value": value}
    if kind in ("tok", "pos"):
        return {"id": node_id, "kind": "token" if kind == "tok" else "position", "layer": None,
                "position": nums[0], "feature": None, "value": value}
    if kind in ("sae_error", "attn_out", "mlp"):
        return {"id": node_id, "kind": kind, "layer": nums[0], "position": nums[1], "feature": None, "value": value}
    return {"id": node_id, "kind": kind, "layer": None, "position": None, "feature": None, "value": value}


def attribution_graph(model: HookedTransformer, saes: dict[int, AttnSAE], ids: torch.Tensor, layer: int,
                      position: int, feature: int, max_depth: int = 2, threshold: float = 0.02,
                      top_n: int = 10, expand: Collection[str] = ()) -> dict:
    """The graph of feature `feature` of layer `layer`'s SAE at `position` of token ids (1, T), as the contract's
    {"root", "nodes", "links"}. Per expanded node, links (source, head) under threshold·|value| or past the top_n
    largest by |weight| are summed into one `pruned` link; the bias link is always kept. Feature nodes are opened
    breadth first to max_depth levels (the root is level 1), at most MAX_EXPANDED of them; a feature node whose id
    is in `expand` is opened wherever the graph reaches it, past max_depth too (its new sources are not, unless
    named as well), so that a page can open a leaf in place. Ids in `expand` the graph never reaches are ignored."""
    why = unsupported(model)
    if why is not None:
        raise ValueError(f"attribution graphs need a pre-norm LayerNorm transformer: {why}")
    with torch.inference_mode():
        return _graph(model, saes, ids, layer, position, feature, max_depth, threshold, top_n, frozenset(expand))


def _graph(model: HookedTransformer, saes: dict[int, AttnSAE], ids: torch.Tensor, layer: int, position: int,
           feature: int, max_depth: int, threshold: float, top_n: int, expand: frozenset[str]) -> dict:
    fr = _Frozen(model, saes, ids, layer)
    root = f"f:{layer}:{position}:{feature}"
    values: dict[str, float] = {root: float(fr.layers[layer].pre[position, feature])}
    links: list[dict] = []
    queue, seen, expanded = deque([(root, 1)]), {root}, 0
    while queue and expanded < MAX_EXPANDED:
        target, depth = queue.popleft()
        L, t, f = _feature_of(target)
        expanded += 1
        src_ids, weights, bias = _incoming(fr, saes, L, t, f)
        value = values[target]
        flat = weights.flatten()  # (n·head_index,): source i through head h at i·H + h
        H = weights.shape[1]
        order = flat.abs().argsort(descending=True)[:top_n]
        order = order[flat[order].abs() >= threshold * abs(value)]
        for k in order.tolist():
            source, head, weight = src_ids[k // H], k % H, float(flat[k])
            links.append({"source": source, "target": target, "weight": weight, "head": head})
            if source.startswith("f:") and source not in seen:
                seen.add(source)
                sl, st, sf = _feature_of(source)
                values[source] = float(fr.layers[sl].pre[st, sf])
                if depth < max_depth or source in expand:
                    queue.append((source, depth + 1))
        links.append({"source": f"bias:{target}", "target": target, "weight": bias, "head": None})
        if order.numel() < flat.numel():
            mask = torch.ones_like(flat, dtype=torch.bool)
            mask[order] = False
            links.append({"source": f"pruned:{target}", "target": target, "weight": float(flat[mask].sum()),
                          "head": None})
    # leaves: the sum of what they send; bias and pruned nodes send one link each
    out_sum: dict[str, float] = {}
    for link in links:
        out_sum[link["source"]] = out_sum.get(link["source"], 0.0) + link["weight"]
    nodes = [_node(root, values[root])]
    for node_id in out_sum:
        if node_id.startswith("f:"):
            nodes.append(_node(node_id, values[node_id]))
        else:
            nodes.append(_node(node_id, out_sum[node_id]))
    return {"root": root, "nodes": nodes, "links": links}


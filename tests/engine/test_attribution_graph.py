"""Attribution graphs: every expanded node's incoming links sum to its value, and each link is what TransformerLens
computes when that component is removed at its source with attention patterns and LayerNorm scales frozen (and
the layers in between held at their clean outputs, so that only the link's own path changes)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from app.engine.attribution_graph import attribution_graph
from app.engine.loading import attach_saes, load_model
from tests.conftest import make_model_folder, make_sae

DEMO = Path("artifacts/demo")
REPEATED = "def add(a, b):\n    return a + b\ndef add(a, b):\n    return a + b"
TEXT = "The quick brown fox jumps over the lazy dog. The quick brown fox"
ALL = {"threshold": 0.0, "top_n": 10**9}  # nothing pruned


@pytest.fixture(scope="module")
def demo():
    model = load_model(str(DEMO / "model"))
    return model, {s.layer: s for s in attach_saes(model, [str(DEMO / "saes" / f"L{i}") for i in (0, 1)])}


@pytest.fixture(scope="module")
def tiny3(tmp_path_factory):
    """3 layers with MLPs; SAEs (standard, gated, topk) on layers 1 and 2 only, so layer 0 is an opaque attn_out."""
    root = tmp_path_factory.mktemp("graph")
    folder = make_model_folder(root / "tiny3", n_layers=3, attn_only=False)
    model = load_model(str(folder))
    paths = [make_sae(root / "L1", 1, "gated"), make_sae(root / "L2", 2, "standard")]
    return model, {s.layer: s for s in attach_saes(model, [str(p) for p in paths])}


@pytest.fixture(scope="module")
def tiny3_all(tmp_path_factory):
    """The same shape with an SAE (jumprelu, topk, standard) on every layer."""
    root = tmp_path_factory.mktemp("graph_all")
    folder = make_model_folder(root / "tiny3", n_layers=3, attn_only=False, seed=1)
    model = load_model(str(folder))
    paths = [make_sae(root / f"L{i}", i, arch) for i, arch in enumerate(("jumprelu", "topk", "standard"))]
    return model, {s.layer: s for s in attach_saes(model, [str(p) for p in paths])}


def strongest(model, saes, ids, layer, position) -> int:
    z = model.run_with_cache(ids, names_filter=f"blocks.{layer}.attn.hook_z")[1][f"blocks.{layer}.attn.hook_z"]
    acts, _ = saes[layer].encode(z[0, position].flatten())
    return int(acts.argmax())


def check_sums(graph) -> int:
    values = {n["id"]: n["value"] for n in graph["nodes"]}
    assert len(values) == len(graph["nodes"]), "node ids are unique"
    sums: dict[str, float] = {}
    for link in graph["links"]:
        assert link["source"] in values and link["target"] in values
        sums[link["target"]] = sums.get(link["target"], 0.0) + link["weight"]
    for target, total in sums.items():
        assert values[target] != 0.0
        assert abs(total - values[target]) <= 1e-4 * abs(values[target]), target
    return len(sums)


@pytest.mark.parametrize("which", ["demo", "tiny3", "tiny3_all"])
@pytest.mark.parametrize("prune", [ALL, {"threshold": 0.02, "top_n": 10}, {"threshold": 0.3, "top_n": 3}])
def test_links_into_every_expanded_node_sum_to_its_value(request, which, prune):
    model, saes = request.getfixturevalue(which)
    ids = model.to_tokens(REPEATED if which == "demo" else TEXT)
    top = max(saes)
    t = ids.shape[1] - 1
    f = strongest(model, saes, ids, top, t)
    graph = attribution_graph(model, saes, ids, top, t, f, max_depth=3, **prune)
    assert graph["root"] == f"f:{top}:{t}:{f}"
    expanded = check_sums(graph)
    assert expanded >= (2 if prune is ALL else 1)  # unpruned: the root and at least one earlier feature
    kinds = {n["kind"] for n in graph["nodes"]}
    assert {"feature", "bias"} <= kinds
    if prune is ALL:
        assert "pruned" not in kinds
        assert {"token", "sae_error"} <= kinds
        assert ("mlp" in kinds) == (which != "demo")
        assert ("attn_out" in kinds) == (which == "tiny3")
    else:
        per_target: dict[str, int] = {}
        for link in graph["links"]:
            if link["head"] is not None:
                per_target[link["target"]] = per_target.get(link["target"], 0) + 1
        assert max(per_target.values(), default=0) <= prune["top_n"]


def test_root_value_is_the_saes_pre_activation(demo):
    model, saes = demo
    ids = model.to_tokens(REPEATED)
    t = ids.shape[1] - 1
    f = strongest(model, saes, ids, 1, t)
    graph = attribution_graph(model, saes, ids, 1, t, f, max_depth=1, **ALL)
    z = model.run_with_cache(ids, names_filter="blocks.1.attn.hook_z")[1]["blocks.1.attn.hook_z"][0, t]
    sl = saes[1].sae
    pre = ((z.flatten() - sl.b_dec) @ sl.W_enc + sl.b_enc).detach()  # SAELens's parameters: TopK's pre-activation
    assert graph["nodes"][0]["id"] == graph["root"]
    assert graph["nodes"][0]["value"] == pytest.approx(float(pre[f]), rel=1e-5)
    for node in graph["nodes"]:
        if node["kind"] == "feature" and node["layer"] == 0:  # an upstream feature's value: its pre-activation
            z0 = model.run_with_cache(ids, names_filter="blocks.0.attn.hook_z")[1]["blocks.0.attn.hook_z"]
            s0 = saes[0].sae
            p0 = ((z0[0, node["position"]].flatten() - s0.b_dec) @ s0.W_enc + s0.b_enc).detach()
            assert node["value"] == pytest.approx(float(p0[node["feature"]]), rel=1e-5)


# --- frozen-pattern recomputation through TransformerLens ----------------------------------------------------------


def frozen_hooks(model, ids, top: int, hold_from: int) -> list:
    """Hooks that freeze every attention pattern and ln1 scale up to layer `top` at the clean run's values, and hold
    the outputs of every MLP from layer hold_from on and every attention layer after it at their clean values."""
    _, cache = model.run_with_cache(ids)
    hooks = []
    for i in range(top + 1):
        for name in (f"blocks.{i}.attn.hook_pattern", f"blocks.{i}.ln1.hook_scale"):
            clean = cache[name]
            # split qkv inputs give ln1 a head axis: (batch, pos, head_index, 1); the clean scale is per position
            hooks.append((name, lambda x, hook, clean=clean: clean if clean.shape == x.shape
                          else clean.unsqueeze(-2).expand_as(x)))
        held = []
        if i < top and not model.cfg.attn_only and i >= hold_from:
            held.append(f"blocks.{i}.hook_mlp_out")
        if hold_from < i < top:
            held.append(f"blocks.{i}.hook_attn_out")
        for name in held:
            hooks.append((name, lambda x, hook, clean=cache[name]: clean))
    return hooks


def root_pre(model, saes, ids, top, t, f, hooks) -> float:
    store = {}

    def keep(x, hook):
        store["z"] = x

    model.run_with_hooks(ids, fwd_hooks=[*hooks, (f"blocks.{top}.attn.hook_z", keep)], stop_at_layer=top + 1)
    return float(saes[top].encode(store["z"][0, t].flatten())[1][f])


@pytest.mark.parametrize("which", ["demo", "tiny3_all"])
def test_ablating_an_upstream_feature_changes_the_root_by_its_links(request, which):
    """Remove a_g(s)·W_dec[g] from layer l's hook_z at s, patterns and LayerNorm scales frozen, later layers held:
    the root's pre-activation drops by the sum of that feature's links into it (one per head)."""
    model, saes = request.getfixturevalue(which)
    ids = model.to_tokens(REPEATED if which == "demo" else TEXT)
    top, t = max(saes), ids.shape[1] - 1
    f = strongest(model, saes, ids, top, t)
    graph = attribution_graph(model, saes, ids, top, t, f, max_depth=1, **ALL)
    into_root: dict[str, float] = {}
    for link in graph["links"]:
        if link["target"] == graph["root"] and link["source"].startswith("f:"):
            into_root[link["source"]] = into_root.get(link["source"], 0.0) + link["weight"]
    checked = 0
    for source, weight in sorted(into_root.items(), key=lambda kv: -abs(kv[1]))[:4]:
        layer, s, g = (int(x) for x in source.split(":")[1:])
        sae = saes[layer]
        z = model.run_with_cache(ids, names_filter=f"blocks.{layer}.attn.hook_z")[1][f"blocks.{layer}.attn.hook_z"]
        a = float(sae.sae.encode(z[0, s])[g])  # SAELens takes hook_z's (head_index, d_head) as it is
        write = (a * sae.sae.W_dec[g]).view(sae.n_heads, sae.d_head)  # SAELens's decoder row: no scale here

        def ablate(x, hook, s=s, write=write):
            x = x.clone()
            x[0, s] -= write
            return x

        hooks = frozen_hooks(model, ids, top, hold_from=layer)
        clean = root_pre(model, saes, ids, top, t, f, hooks)
        ablated = root_pre(model, saes, ids, top, t, f, [*hooks, (f"blocks.{layer}.attn.hook_z", ablate)])
        assert clean == pytest.approx(graph["nodes"][0]["value"], rel=1e-5, abs=1e-5)
        assert clean - ablated == pytest.approx(weight, rel=1e-3, abs=2e-5)
        checked += 1
    assert checked >= 2


def component(model, saes, ids, cache, node_id: str) -> tuple[int, torch.Tensor]:
    """(source position, the residual-stream vector that node contributes at it), from TransformerLens's cache."""
    kind, *nums = node_id.split(":")
    n = [int(x) for x in nums]
    if kind == "tok":
        return n[0], model.W_E[ids[0, n[0]]]
    if kind == "pos":
        return n[0], model.W_pos[n[0]]
    if kind == "mlp":
        return n[1], cache[f"blocks.{n[0]}.hook_mlp_out"][0, n[1]]
    if kind == "attn_out":
        return n[1], cache[f"blocks.{n[0]}.hook_attn_out"][0, n[1]]
    W_O = model.blocks[n[0]].attn.W_O.flatten(0, 1)  # (head_index·d_head, d_model)
    sae = saes[n[0]]
    z = cache[f"blocks.{n[0]}.attn.hook_z"][0, n[1]]  # (head_index, d_head), as SAELens's hook_z SAEs take it
    if kind == "sae_error":
        return n[1], (z - sae.sae.decode(sae.sae.encode(z))).flatten() @ W_O
    a = sae.sae.encode(z)[n[2]]
    return n[1], (a * sae.sae.W_dec[n[2]]) @ W_O


@pytest.mark.parametrize("which", ["tiny3", "tiny3_all"])
def test_each_link_is_its_components_effect_through_its_head(request, which):
    """Per head: remove a component from head h's value input only (TransformerLens's split qkv inputs), patterns
    and scales frozen: the root moves by exactly that (source, head) link's weight. Every kind of source."""
    model, saes = request.getfixturevalue(which)
    ids = model.to_tokens(TEXT)
    top, t = max(saes), ids.shape[1] - 1
    f = strongest(model, saes, ids, top, t)
    graph = attribution_graph(model, saes, ids, top, t, f, max_depth=1, **ALL)
    _, cache = model.run_with_cache(ids)
    best: dict[str, dict] = {}
    for link in graph["links"]:
        if link["target"] != graph["root"] or link["head"] is None:
            continue
        kind = link["source"].split(":")[0]
        if kind not in best or abs(link["weight"]) > abs(best[kind]["weight"]):
            best[kind] = link
    assert {"tok", "pos", "mlp", "sae_error", "f"} <= best.keys()
    model.set_use_split_qkv_input(True)
    try:
        hooks = frozen_hooks(model, ids, top, hold_from=0)
        clean = root_pre(model, saes, ids, top, t, f, hooks)
        for link in best.values():
            s, c = component(model, saes, ids, cache, link["source"])

            def remove(x, hook, s=s, c=c, h=link["head"]):
                x = x.clone()
                x[0, s, h] -= c
                return x

            ablated = root_pre(model, saes, ids, top, t, f, [*hooks, (f"blocks.{top}.hook_v_input", remove)])
            assert clean - ablated == pytest.approx(link["weight"], rel=1e-3, abs=2e-5), link
    finally:
        model.set_use_split_qkv_input(False)


def test_the_demo_induction_path(demo):
    """On a repeated sequence, an L1 feature at a token of the second copy reads, through an induction head (1.0,
    1.1, 1.5 or 1.6), L0 features at the token after the first occurrence, which hold that token itself (the value
    path: what is copied). The previous-token head 0.5 acts on the keys, i.e. on the frozen pattern, so it is not a
    link of this graph."""
    model, saes = demo
    n = 20
    rand = torch.randint(1, model.cfg.d_vocab, (n,), generator=torch.Generator().manual_seed(0))
    ids = torch.cat([torch.zeros(1, dtype=torch.long), rand, rand])[None]  # BOS, then n random tokens twice
    T = ids.shape[1]
    t = T - 2  # a token of the second copy whose earlier occurrence is at t - n
    f = strongest(model, saes, ids, 1, t)
    graph = attribution_graph(model, saes, ids, 1, t, f, max_depth=2, threshold=0.02, top_n=10)
    check_sums(graph)
    into_root = [lk for lk in graph["links"] if lk["target"] == graph["root"] and lk["source"].startswith("f:0:")]
    top = max(into_root, key=lambda lk: lk["weight"])
    src_pos = int(top["source"].split(":")[2])
    assert top["head"] in (0, 1, 5, 6)
    assert src_pos == t - n + 1  # the token after the earlier occurrence
    into_src = [lk for lk in graph["links"] if lk["target"] == top["source"] and lk["head"] is not None]
    assert max(into_src, key=lambda lk: abs(lk["weight"]))["source"] == f"tok:{src_pos}"

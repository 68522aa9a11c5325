"""An attribution graph (shared/api.md, "Attention circuits") in the attribution-graph JSON of circuit-tracer and
Neuronpedia's graph viewer (circuit_tracer/frontend/graph_models.py: metadata, qParams, nodes, links), mapped where
the fields mean the same; knows nothing of HTTP, torch or how the graph was computed.

The mapping (what has no counterpart is said so, not invented):

- metadata: slug "saex-<model>-<root>", scan = the model's name, transcoder_list = the SAE ids of the graph's layers,
  prompt and prompt_tokens as the worker tokenised them (BOS included), node_threshold null (ours prunes links,
  not nodes: the pruning settings go in metadata.saex), schema_version 1.
- qParams: the root pinned and clicked, linkType "both", no supernodes.
- nodes: an SAE feature f:L:s:g -> feature_type "cross layer transcoder" (the viewer's only kind of feature node;
  ours are attention-output SAE features), node_id "L_g_s", layer "L", feature g (the SAE's own index, not
  circuit-tracer's pairing of layer and index), ctx_idx s, activation = its pre-activation (the value that the
  links into it sum to). A token embedding tok:s -> "embedding", node_id "E_<token id>_s", layer "E", feature s (as
  circuit-tracer). The position embedding pos:s -> "embedding" too, node_id "E_pos_s". An SAE error, and a layer's
  attention or MLP output with no SAE to open it -> "mlp reconstruction error" (the viewer's opaque node), node_ids
  "L_error_s", "L_attn_s", "L_mlp_s". Every node keeps our id and kind in saex_id and saex_kind, and gets clerp
  (its label) and influence: the share of the root's value that flows through it, found by handing each opened
  node's value back to its sources in proportion to their links (exact for the linear part; the root has 1).
- links: {source, target, weight} as ours, the head dropped (the viewer has no field for it). The bias and pruned
  nodes have no counterpart and are left out with their links, so an exported node's links sum to its activation
  less its bias and pruned remainder.
"""

from __future__ import annotations

from app.web.figures import node_label  # the page's labels, so that the export and the page name nodes alike

OPAQUE = {"sae_error": "error", "attn_out": "attn", "mlp": "mlp"}


def _node_id(node: dict, token_ids: list[int]) -> str | None:
    kind, layer, pos = node["kind"], node.get("layer"), node.get("position")
    if kind == "feature":
        return f"{layer}_{node['feature']}_{pos}"
    if kind == "token":
        return f"E_{token_ids[pos] if pos < len(token_ids) else -1}_{pos}"
    if kind == "position":
        return f"E_pos_{pos}"
    if kind in OPAQUE:
        return f"{layer}_{OPAQUE[kind]}_{pos}"
    return None  # bias, pruned


def influence(graph: dict) -> dict[str, float]:
    """Per node id: the share of the root's value that reaches the root through it (root 1.0). Each opened node
    hands its share back to its sources in proportion to weight / its value; links go from lower layers up, so
    handing back from the root down, in order of layer then position, visits every target before its sources."""
    values = {n["id"]: n["value"] for n in graph["nodes"]}
    into: dict[str, list[dict]] = {}
    for link in graph["links"]:
        into.setdefault(link["target"], []).append(link)
    share = {graph["root"]: 1.0}
    by_kind = {n["id"]: n for n in graph["nodes"]}
    opened = sorted(into, key=lambda i: (-(by_kind[i].get("layer") or 0), -(by_kind[i].get("position") or 0)))
    for target in opened:
        if not values[target] or target not in share:
            continue
        for link in into[target]:
            share[link["source"]] = share.get(link["source"], 0.0) + share[target] * link["weight"] / values[target]
    return share


def neuronpedia_graph(graph: dict, *, model: str, text: str, saes: dict[int, str], params: dict) -> dict:
    """The graph (the worker's GraphResponse as a dict) as circuit-tracer's graph JSON; `saes`: layer -> SAE id,
    `params`: the request's pruning settings and expand list, kept under metadata.saex."""
    tokens, token_ids = graph.get("tokens", []), graph.get("token_ids", [])
    share = influence(graph)

    nodes, ids = [], {}
    for n in graph["nodes"]:
        node_id = _node_id(n, token_ids)
        if node_id is None:
            continue
        ids[n["id"]] = node_id
        kind = n["kind"]
        nodes.append({
            "node_id": node_id, "jsNodeId": node_id,
            "feature": n["feature"] if kind == "feature" else n["position"] if kind == "token" else -1,
            "layer": "E" if kind in ("token", "position") else str(n["layer"]),
            "ctx_idx": n["position"], "reverse_ctx_idx": 0, "run_idx": 0,
            "feature_type": {"feature": "cross layer transcoder", "token": "embedding",
                             "position": "embedding"}.get(kind, "mlp reconstruction error"),
            "token_prob": 0.0, "is_target_logit": False, "clerp": node_label(n, tokens),
            "influence": share.get(n["id"]), "activation": n["value"] if kind == "feature" else None,
            "saex_id": n["id"], "saex_kind": kind,
        })
    root = ids[graph["root"]]
    layers = sorted({n["layer"] for n in graph["nodes"] if n["kind"] == "feature"})
    return {
        "metadata": {"slug": f"saex-{model}-{graph['root'].replace(':', '-')}", "scan": model,
                     "transcoder_list": [saes[i] for i in layers if i in saes], "prompt_tokens": tokens,
                     "prompt": text, "node_threshold": None, "schema_version": 1,
                     "saex": {"root": graph["root"], **params}},
        "qParams": {"pinnedIds": [root], "supernodes": [], "linkType": "both", "clickedId": root, "sg_pos": ""},
        "nodes": nodes,
        "links": [{"source": ids[e["source"]], "target": ids[e["target"]], "weight": e["weight"]}
                  for e in graph["links"] if e["source"] in ids and e["target"] in ids],
    }

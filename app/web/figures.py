"""Plotly figures as pure functions returning figure dicts (the page hands them to Plotly.newPlot); knows nothing
of HTTP, storage or torch."""

from __future__ import annotations

import re

LAYOUT = {"margin": {"l": 48, "r": 12, "t": 28, "b": 40}, "height": 240, "paper_bgcolor": "rgba(0,0,0,0)",
          "plot_bgcolor": "rgba(0,0,0,0)", "font": {"size": 12}}
POSITIVE, NEGATIVE = "#2f6fde", "#d1495b"
ZERO = "rgba(127,127,127,0.12)"  # a heatmap's zero: a faint grey that reads on light and dark pages alike
BYTE_FALLBACK = re.compile(r"<0x([0-9A-Fa-f]{2})>")  # SentencePiece's byte tokens
CONTROL = {"\n": "↵", "\t": "→", "\r": "␍", "\x00": "␀"}


def show_token(token: str, *, lines: bool = False) -> str:
    """A token as visible text, the one way every page and chart shows tokens: a newline as ↵ (followed by a real
    line break when `lines`, for the token strip, so that code keeps its shape), a tab as →, other control
    characters and byte-fallback tokens (<0xE2>) as their hex (\\xE2), spaces at either end as · (in the strip,
    `lines`, spaces stay spaces: the tokens' boxes show them), the empty token as ∅. Escaping is the caller's job."""
    whole = BYTE_FALLBACK.fullmatch(token)
    if whole:
        return f"\\x{whole.group(1).upper()}"
    body = BYTE_FALLBACK.sub(lambda m: f"\\x{m.group(1).upper()}", token)
    if not lines:
        stripped = body.strip(" ")
        if not stripped:
            return "·" * len(body) or "∅"
        lead, trail = len(body) - len(body.lstrip(" ")), len(body) - len(body.rstrip(" "))
        body = "·" * lead + stripped + "·" * trail
    out = []
    for ch in body:
        if ch == "\n":
            out.append("↵\n" if lines else "↵")
        elif ch in CONTROL:
            out.append(CONTROL[ch])
        elif ord(ch) < 32 or ord(ch) == 127:
            out.append(f"\\x{ord(ch):02X}")
        else:
            out.append(ch)
    return "".join(out) or "∅"


def activation_histogram(histogram: dict, title: str = "Activation histogram (nonzero)") -> dict:
    edges, counts = histogram.get("bin_edges", []), histogram.get("counts", [])
    centers = [(a + b) / 2 for a, b in zip(edges, edges[1:], strict=False)]
    widths = [b - a for a, b in zip(edges, edges[1:], strict=False)]
    return {
        "data": [{"type": "bar", "x": centers, "y": counts, "width": widths, "marker": {"color": POSITIVE},
                  "hovertemplate": "activation %{x:.3g}<br>%{y} tokens<extra></extra>"}],
        "layout": {**LAYOUT, "title": {"text": title}, "xaxis": {"title": {"text": "activation"}},
                   "yaxis": {"title": {"text": "tokens"}}, "bargap": 0},
    }


def plotly_text(text: str) -> str:
    """Text for a Plotly label or hover: Plotly reads its labels as a little HTML (<b>, <a href>, entities), so a
    token such as <|endoftext|> would vanish, or markup in a prompt act; escaped, it shows as typed."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def logit_effects(effects: dict) -> dict:
    """Horizontal bars, one per token; rows at integer positions labelled by show_token, so that two tokens that
    look alike stay two rows."""
    top, bottom = effects.get("top", []), effects.get("bottom", [])
    rows = sorted(top + bottom, key=lambda e: e["value"])  # most negative at the bottom, most positive on top
    labels = [plotly_text(show_token(e["token"])) for e in rows]
    return {
        "data": [{"type": "bar", "orientation": "h", "x": [e["value"] for e in rows], "y": list(range(len(rows))),
                  "customdata": labels,
                  "marker": {"color": [POSITIVE if e["value"] >= 0 else NEGATIVE for e in rows]},
                  "hovertemplate": "%{customdata}: %{x:.3f}<extra></extra>"}],
        "layout": {**LAYOUT, "height": max(240, 16 * len(rows) + 60), "title": {"text": "Logit effect (W_dec·W_O·W_U)"},
                   "xaxis": {"title": {"text": "logit change per unit of activation"}},
                   "yaxis": {"automargin": True, "tickmode": "array", "tickvals": list(range(len(rows))),
                             "ticktext": labels, "tickfont": {"family": "ui-monospace, monospace"}}},
    }


def head_bars(values: list[float], title: str, y_title: str) -> dict:
    return {
        "data": [{"type": "bar", "x": [f"H{h}" for h in range(len(values))], "y": values,
                  "marker": {"color": [POSITIVE if v >= 0 else NEGATIVE for v in values]},
                  "hovertemplate": "%{x}: %{y:.3f}<extra></extra>"}],
        "layout": {**LAYOUT, "title": {"text": title}, "yaxis": {"title": {"text": y_title}}},
    }


def dfa_heatmap(contributions: list[list[float]], tokens: list[str], position: int) -> dict:
    """Heads x source positions up to the destination; diverging colours centred on zero. Every source is labelled
    (position: token); past ~40 sources the figure grows wider than its panel, which scrolls, rather than skip
    labels."""
    sources = list(range(position + 1))
    z = [[row[s] for s in sources] for row in contributions]
    peak = max((abs(v) for row in z for v in row), default=1.0) or 1.0
    labels = [plotly_text(f"{s}: {show_token(tokens[s])}") for s in sources]
    wide = len(sources) > 40
    layout = {**LAYOUT, "height": 60 + 22 * len(z) + (150 if wide else 100),
              "margin": {**LAYOUT["margin"], "l": 96, "r": 24},  # room for the first source's slanted label
              "title": {"text": f"DFA toward position {position}"},
              "xaxis": {"title": {"text": "source token (position: token)"}, "tickmode": "array",
                        "tickvals": sources, "ticktext": labels, "tickangle": -60, "automargin": True,
                        "tickfont": {"family": "ui-monospace, monospace", "size": 10 if wide else 12}},
              "yaxis": {"title": {"text": "head"}, "autorange": "reversed"}}
    if wide:  # 13 px a label: every one of them readable
        layout["width"] = 120 + 13 * len(sources)
    return {
        "data": [{"type": "heatmap", "z": z, "x": sources, "y": [f"H{h}" for h in range(len(z))],
                  "customdata": [labels for _ in z], "zmin": -peak, "zmax": peak,
                  "colorscale": [[0, NEGATIVE], [0.5, ZERO], [1, POSITIVE]],
                  "colorbar": {"title": {"text": "contribution to<br>pre-activation", "side": "right"},
                               "thickness": 12},
                  "hovertemplate": "%{y} ← %{customdata}<br>%{z:.4f}<extra></extra>"}],
        "layout": layout,
    }


# --- attribution graphs (shared/api.md, "Attention circuits") ----------------------------------------------------

EMBED_ROW, OTHER_ROW = -1, -2  # rows under the layers: embeddings; SAE errors, opaque outputs, biases, pruned
KIND_NAMES = {"feature": "features", "token": "token embeddings", "position": "position embeddings",
              "sae_error": "SAE errors", "attn_out": "attention outputs", "mlp": "MLP outputs", "bias": "biases",
              "pruned": "pruned remainders"}
KIND_COLOURS = {"feature": POSITIVE, "token": "#3a9e6f", "position": "#8fbf5a", "sae_error": "#e08a1e",
                "attn_out": "#9b6bcc", "mlp": "#b07a4f", "bias": "#888888", "pruned": "#bbbbbb"}


def node_label(node: dict, tokens: list[str]) -> str:
    """A node in words: "L0 feature 1901 at 12 ' of'", "token at 12 ' of'", "bias of f:1:12:17"."""
    kind, pos, layer = node["kind"], node.get("position"), node.get("layer")
    if kind in ("bias", "pruned"):
        return f"{'bias' if kind == 'bias' else 'pruned links'} of {node['id'].split(':', 1)[1]}"
    at = f" at {pos}" + (f" {tokens[pos]!r}" if pos is not None and 0 <= pos < len(tokens) else "")
    what = {"feature": f"feature {node.get('feature')}", "token": "token", "position": "position",
            "sae_error": "SAE error", "attn_out": "attention output", "mlp": "MLP output"}[kind]
    return f"{'' if layer is None else f'L{layer} '}{what}{at}"


def graph_positions(graph: dict) -> dict[str, tuple[float, float]]:
    """Where each node sits: x = its token position, y = its layer for features, EMBED_ROW for token and position
    embeddings, OTHER_ROW for the rest (bias and pruned at their target's position); nodes sharing a cell are
    spread across it, the largest |value| first."""
    nodes = {n["id"]: n for n in graph["nodes"]}
    cells: dict[tuple[int, int], list[dict]] = {}
    for n in graph["nodes"]:
        row = n["layer"] if n["kind"] == "feature" else EMBED_ROW if n["kind"] in ("token", "position") else OTHER_ROW
        pos = n.get("position")
        if pos is None:  # bias:<target> and pruned:<target>
            pos = (nodes.get(n["id"].split(":", 1)[1]) or {}).get("position") or 0
        cells.setdefault((pos, row), []).append(n)
    order = list(KIND_NAMES)
    out = {}
    for (pos, row), members in cells.items():
        members.sort(key=lambda n: (order.index(n["kind"]), -abs(n["value"]), n["id"]))
        k = len(members)
        spread = min(0.7, 0.2 * (k - 1))
        for i, n in enumerate(members):
            out[n["id"]] = (pos + (spread * (i / (k - 1) - 0.5) if k > 1 else 0.0), float(row))
    return out


def attribution_graph(graph: dict, urls: dict[str, str] | None = None,
                      expand_urls: dict[str, str] | None = None) -> dict:
    """Nodes at (position, layer) sized by |value|, links as lines as wide as |weight| (blue positive, red
    negative) with a hover point at each link's middle naming its head; per node, its `expand_urls` entry (node id
    -> this graph with that node opened) or else its `urls` entry (node id -> its feature page) goes in customdata,
    which the page's script follows on click."""
    urls, expand_urls = urls or {}, expand_urls or {}
    clicks = {**urls, **expand_urls}
    tokens = graph.get("tokens", [])
    nodes = {n["id"]: n for n in graph["nodes"]}
    xy = graph_positions(graph)
    node_peak = max((abs(n["value"]) for n in graph["nodes"]), default=1.0) or 1.0
    link_peak = max((abs(e["weight"]) for e in graph["links"]), default=1.0) or 1.0
    data: list[dict] = []
    mid_x, mid_y, mid_text, mid_colour = [], [], [], []
    for e in graph["links"]:
        if e["source"] not in xy or e["target"] not in xy:
            continue
        (x0, y0), (x1, y1) = xy[e["source"]], xy[e["target"]]
        colour = POSITIVE if e["weight"] >= 0 else NEGATIVE
        data.append({"type": "scatter", "mode": "lines", "x": [x0, x1], "y": [y0, y1], "hoverinfo": "skip",
                     "showlegend": False, "opacity": 0.5, "name": "link",
                     "line": {"color": colour, "width": round(0.5 + 6 * abs(e["weight"]) / link_peak, 2)}})
        target = nodes[e["target"]]
        head = "no head" if e["head"] is None else f"through head {target.get('layer')}.{e['head']}"
        mid_x.append((x0 + x1) / 2)
        mid_y.append((y0 + y1) / 2)
        mid_colour.append(colour)
        mid_text.append(f"{e['source']} → {e['target']}<br>{head}<br>weight {e['weight']:.4g}")
    data.append({"type": "scatter", "mode": "markers", "name": "links", "x": mid_x, "y": mid_y,
                 "hovertext": mid_text, "hoverinfo": "text", "showlegend": False,
                 "marker": {"size": 4, "color": mid_colour, "opacity": 0.5}})
    root = graph.get("root")
    groups = [("root", "root feature", [n for n in graph["nodes"] if n["id"] == root])]
    groups += [(kind, name, [n for n in graph["nodes"] if n["kind"] == kind and n["id"] != root])
               for kind, name in KIND_NAMES.items()]
    for kind, name, members in groups:
        if not members:
            continue
        data.append({
            "type": "scatter", "mode": "markers+text" if kind in ("root", "feature") else "markers", "name": name,
            "x": [xy[n["id"]][0] for n in members], "y": [xy[n["id"]][1] for n in members],
            "text": [str(n["feature"]) for n in members] if kind in ("root", "feature") else None,
            # labels of nodes left of their cell's centre go below them, so that neighbours' labels do not collide
            "textposition": ["bottom center" if xy[n["id"]][0] < round(xy[n["id"]][0]) else "top center"
                             for n in members], "customdata": [clicks.get(n["id"], "") for n in members],
            "hovertext": [f"{n['kind']} {n['id']}<br>{node_label(n, tokens)}<br>value {n['value']:.4g}"
                          + ("<br>click: open it here (its sources)" if n["id"] in expand_urls
                             else "<br>click: its feature page" if n["id"] in urls else "") for n in members],
            "hoverinfo": "text",
            "marker": {"size": [max(18 if kind == "root" else 0, round(8 + 22 * (abs(n["value"]) / node_peak) ** 0.5,
                                                                  1)) for n in members],
                       "color": KIND_COLOURS["feature" if kind == "root" else kind], "opacity": 0.9,
                       "symbol": "star" if kind == "root" else "circle",
                       "line": {"width": 2 if kind == "root" else 0.5, "color": "#222"}}})
    positions = sorted({int(round(x)) for x, _ in xy.values()})
    layers = sorted({int(y) for _, y in xy.values() if y >= 0})
    rows = [OTHER_ROW, EMBED_ROW, *layers]
    return {
        "data": data,
        "layout": {**LAYOUT, "height": 160 + 110 * len(rows), "hovermode": "closest",
                   "margin": {**LAYOUT["margin"], "l": 130, "b": 90},
                   "title": {"text": f"Attribution graph of {graph.get('root', '')}"},
                   "legend": {"orientation": "h", "y": -0.25},
                   "xaxis": {"tickmode": "array", "tickvals": positions, "zeroline": False, "tickangle": -45,
                             "ticktext": [f"{p}: {repr(tokens[p])[1:-1]}" if p < len(tokens) else str(p)
                                          for p in positions], "range": [min(positions, default=0) - 0.6,
                                                                         max(positions, default=0) + 0.6]},
                   "yaxis": {"tickmode": "array", "tickvals": rows, "zeroline": False,
                             "ticktext": ["error · bias · pruned", "embeddings", *(f"layer {y}" for y in layers)],
                             "range": [OTHER_ROW - 0.6, (layers[-1] if layers else 0) + 0.6]}},
    }

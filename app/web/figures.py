"""Plotly figures as pure functions returning figure dicts (the page hands them to Plotly.newPlot); knows nothing
of HTTP, storage or torch."""

from __future__ import annotations

LAYOUT = {"margin": {"l": 48, "r": 12, "t": 28, "b": 40}, "height": 240, "paper_bgcolor": "rgba(0,0,0,0)",
          "plot_bgcolor": "rgba(0,0,0,0)", "font": {"size": 12}}
POSITIVE, NEGATIVE = "#2f6fde", "#d1495b"


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


def logit_effects(effects: dict) -> dict:
    top, bottom = effects.get("top", []), effects.get("bottom", [])
    rows = sorted(top + bottom, key=lambda e: e["value"])  # most negative at the bottom, most positive on top
    return {
        "data": [{"type": "bar", "orientation": "h", "x": [e["value"] for e in rows],
                  "y": [repr(e["token"])[1:-1] or "␣" for e in rows],
                  "marker": {"color": [POSITIVE if e["value"] >= 0 else NEGATIVE for e in rows]},
                  "hovertemplate": "%{y}: %{x:.3f}<extra></extra>"}],
        "layout": {**LAYOUT, "height": max(240, 16 * len(rows) + 60), "title": {"text": "Logit effect (W_dec·W_O·W_U)"},
                   "yaxis": {"automargin": True, "type": "category"}},
    }


def head_bars(values: list[float], title: str, y_title: str) -> dict:
    return {
        "data": [{"type": "bar", "x": [f"H{h}" for h in range(len(values))], "y": values,
                  "marker": {"color": [POSITIVE if v >= 0 else NEGATIVE for v in values]},
                  "hovertemplate": "%{x}: %{y:.3f}<extra></extra>"}],
        "layout": {**LAYOUT, "title": {"text": title}, "yaxis": {"title": {"text": y_title}}},
    }


def dfa_heatmap(contributions: list[list[float]], tokens: list[str], position: int) -> dict:
    """Heads x source positions up to the destination; diverging colours centred on zero."""
    sources = list(range(position + 1))
    z = [[row[s] for s in sources] for row in contributions]
    peak = max((abs(v) for row in z for v in row), default=1.0) or 1.0
    labels = [f"{s}: {repr(tokens[s])[1:-1]}" for s in sources]
    return {
        "data": [{"type": "heatmap", "z": z, "x": labels, "y": [f"H{h}" for h in range(len(z))],
                  "zmin": -peak, "zmax": peak, "colorscale": [[0, NEGATIVE], [0.5, "#f4f4f4"], [1, POSITIVE]],
                  "hovertemplate": "%{y} ← %{x}<br>%{z:.4f}<extra></extra>"}],
        "layout": {**LAYOUT, "height": 60 + 22 * len(z), "title": {"text": f"DFA toward position {position}"},
                   "xaxis": {"type": "category", "tickangle": -45, "automargin": True}},
    }

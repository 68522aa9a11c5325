"""Plotly figures of circuit discovery as pure functions returning figure dicts: per-head scores on a layer x head
grid; knows nothing of HTTP, storage or torch."""

from __future__ import annotations

from app.web.figures import LAYOUT


def head_score_grid(heads: list[dict], title: str) -> dict:
    """heads [{"layer", "head", "score"}] -> a heatmap, one row per layer (lowest at the bottom), one column per
    head; a head not listed is blank."""
    layers = sorted({h["layer"] for h in heads})
    n_heads = max((h["head"] for h in heads), default=-1) + 1
    z: list[list[float | None]] = [[None] * n_heads for _ in layers]
    row = {layer: i for i, layer in enumerate(layers)}
    for h in heads:
        z[row[h["layer"]]][h["head"]] = h["score"]
    return {
        "data": [{"type": "heatmap", "z": z, "x": list(range(n_heads)), "y": [f"layer {x}" for x in layers],
                  "colorscale": "Blues", "hovertemplate": "%{y} head %{x}: %{z:.3f}<extra></extra>"}],
        "layout": {**LAYOUT, "height": 120 + 40 * len(layers), "title": {"text": title},
                   "xaxis": {"title": {"text": "head"}, "dtick": 1}},
    }

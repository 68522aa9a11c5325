"""The Plotly figures are pure functions of the numbers the pages already hold: the tests read the figure dicts
(traces, their data, axis titles, colours, sizes), including empty inputs and a single token."""

from __future__ import annotations

import json

import pytest

from app.web.figures import (
    EMBED_ROW,
    LAYOUT,
    NEGATIVE,
    OTHER_ROW,
    POSITIVE,
    activation_histogram,
    attribution_graph,
    dfa_heatmap,
    head_bars,
    logit_effects,
    show_token,
)


def only_trace(fig: dict) -> dict:
    assert set(fig) == {"data", "layout"} and len(fig["data"]) == 1
    json.dumps(fig, allow_nan=False)  # handed to Plotly.newPlot as JSON
    return fig["data"][0]


# --- activation histogram --------------------------------------------------------------------------------------


def test_histogram_bars_sit_on_bin_centres_with_bin_widths():
    fig = activation_histogram({"bin_edges": [0.0, 1.0, 2.0, 4.0], "counts": [5, 3, 1]})
    bar = only_trace(fig)
    assert bar["type"] == "bar"
    assert bar["x"] == [0.5, 1.5, 3.0] and bar["width"] == [1.0, 1.0, 2.0] and bar["y"] == [5, 3, 1]
    assert bar["marker"]["color"] == POSITIVE
    layout = fig["layout"]
    assert layout["title"]["text"] == "Activation histogram (nonzero)"
    assert layout["xaxis"]["title"]["text"] == "activation" and layout["yaxis"]["title"]["text"] == "tokens"
    assert layout["bargap"] == 0 and layout["height"] == LAYOUT["height"]


def test_histogram_with_one_bin_and_a_title():
    fig = activation_histogram({"bin_edges": [0.5, 2.5], "counts": [7]}, title="Layer 1")
    bar = only_trace(fig)
    assert (bar["x"], bar["width"], bar["y"]) == ([1.5], [2.0], [7])
    assert fig["layout"]["title"]["text"] == "Layer 1"


@pytest.mark.parametrize("histogram", [{}, {"bin_edges": [], "counts": []}, {"bin_edges": [1.0], "counts": []}])
def test_empty_histogram_is_an_empty_bar_trace_with_its_axes(histogram):
    fig = activation_histogram(histogram)
    bar = only_trace(fig)
    assert bar["x"] == [] and bar["y"] == [] and bar["width"] == []
    assert fig["layout"]["xaxis"]["title"]["text"] == "activation"


# --- logit effects ---------------------------------------------------------------------------------------------


def test_logit_effects_sorted_with_the_most_positive_on_top():
    fig = logit_effects({"top": [{"token": " the", "value": 2.0}, {"token": "x", "value": 1.0}],
                         "bottom": [{"token": "\n", "value": -3.0}, {"token": "", "value": -0.5}]})
    bar = only_trace(fig)
    assert bar["type"] == "bar" and bar["orientation"] == "h"
    assert bar["x"] == [-3.0, -0.5, 1.0, 2.0]  # Plotly draws the first category at the bottom
    # rows at integer positions, labelled as every page shows tokens (show_token): ↵, ∅, a leading space as ·
    assert bar["y"] == [0, 1, 2, 3] and fig["layout"]["yaxis"]["tickvals"] == [0, 1, 2, 3]
    assert fig["layout"]["yaxis"]["ticktext"] == bar["customdata"] == ["↵", "∅", "x", "·the"]
    assert bar["marker"]["color"] == [NEGATIVE, NEGATIVE, POSITIVE, POSITIVE]
    layout = fig["layout"]
    assert layout["title"]["text"] == "Logit effect (W_dec·W_O·W_U)"
    assert layout["yaxis"]["tickmode"] == "array" and layout["height"] == 240


def test_logit_effects_grow_with_their_rows_and_a_zero_is_positive():
    rows = [{"token": f"t{i}", "value": float(i)} for i in range(20)]
    fig = logit_effects({"top": rows, "bottom": []})
    bar = only_trace(fig)
    assert fig["layout"]["height"] == 16 * 20 + 60
    assert bar["marker"]["color"][0] == POSITIVE and bar["x"][0] == 0.0


@pytest.mark.parametrize("effects", [{}, {"top": [], "bottom": []}])
def test_no_logit_effects(effects):
    fig = logit_effects(effects)
    bar = only_trace(fig)
    assert bar["x"] == [] and bar["y"] == [] and bar["marker"]["color"] == []
    assert fig["layout"]["height"] == 240


# --- per-head bars ---------------------------------------------------------------------------------------------


def test_head_bars_one_bar_per_head_coloured_by_sign():
    fig = head_bars([0.5, -0.25, 0.0], "Head attribution", "share")
    bar = only_trace(fig)
    assert bar["x"] == ["H0", "H1", "H2"] and bar["y"] == [0.5, -0.25, 0.0]
    assert bar["marker"]["color"] == [POSITIVE, NEGATIVE, POSITIVE]
    assert fig["layout"]["title"]["text"] == "Head attribution"
    assert fig["layout"]["yaxis"]["title"]["text"] == "share"


def test_head_bars_for_one_head_and_for_none():
    assert only_trace(head_bars([1.0], "t", "y"))["x"] == ["H0"]
    bar = only_trace(head_bars([], "t", "y"))
    assert bar["x"] == [] and bar["y"] == [] and bar["marker"]["color"] == []


# --- DFA heatmap -----------------------------------------------------------------------------------------------


def test_dfa_heatmap_shows_heads_by_sources_up_to_the_destination():
    contributions = [[0.1, -0.2, 0.3, 9.0], [0.0, 0.4, -0.5, -9.0]]  # (head, source); source 3 is after position 2
    fig = dfa_heatmap(contributions, ["<bos>", "a", "\n", "b"], position=2)
    heat = only_trace(fig)
    assert heat["type"] == "heatmap"
    assert heat["z"] == [[0.1, -0.2, 0.3], [0.0, 0.4, -0.5]]
    assert heat["x"] == [0, 1, 2] and heat["y"] == ["H0", "H1"]
    assert fig["layout"]["xaxis"]["ticktext"] == ["0: &lt;bos&gt;", "1: a", "2: ↵"]  # each labelled, escaped for Plotly
    assert (heat["zmin"], heat["zmax"]) == (-0.5, 0.5)  # centred on zero, from the shown cells only
    assert heat["colorscale"][0] == [0, NEGATIVE] and heat["colorscale"][-1] == [1, POSITIVE]
    layout = fig["layout"]
    assert layout["title"]["text"] == "DFA toward position 2"
    assert layout["height"] == 60 + 22 * 2 + 100 and layout["xaxis"]["tickvals"] == [0, 1, 2]
    assert layout["xaxis"]["title"]["text"] and layout["yaxis"]["title"]["text"] == "head"
    assert heat["colorbar"]["title"]["text"]


def test_dfa_heatmap_of_one_token():
    fig = dfa_heatmap([[0.25], [-0.75]], ["<|endoftext|>"], position=0)
    heat = only_trace(fig)
    assert heat["z"] == [[0.25], [-0.75]] and fig["layout"]["xaxis"]["ticktext"] == ["0: &lt;|endoftext|&gt;"]
    assert (heat["zmin"], heat["zmax"]) == (-0.75, 0.75)
    assert fig["layout"]["title"]["text"] == "DFA toward position 0"


def test_dfa_heatmap_of_zeros_or_no_heads_keeps_a_colour_range():
    heat = only_trace(dfa_heatmap([[0.0, 0.0]], ["a", "b"], position=1))
    assert (heat["zmin"], heat["zmax"]) == (-1.0, 1.0)
    fig = dfa_heatmap([], ["a"], position=0)
    heat = only_trace(fig)
    assert heat["z"] == [] and heat["y"] == [] and (heat["zmin"], heat["zmax"]) == (-1.0, 1.0)
    assert fig["layout"]["height"] == 60 + 100


def test_dfa_heatmap_labels_every_source_of_a_long_prompt():
    tokens = ["<bos>"] + [f" w{i}" for i in range(99)]
    fig = dfa_heatmap([[0.1] * 100] * 4, tokens, position=99)
    xaxis = fig["layout"]["xaxis"]
    assert xaxis["tickmode"] == "array" and xaxis["tickvals"] == list(range(100)) and len(xaxis["ticktext"]) == 100
    assert xaxis["ticktext"][5] == "5: ·w4"
    assert fig["layout"]["width"] >= 13 * 100  # wider than its panel (which scrolls) rather than skip labels


@pytest.mark.parametrize(("token", "label", "in_strip"), [
    (" the", "·the", " the"), ("\n   ", "↵···", "↵\n   "), ("", "∅", "∅"), ("  ", "··", "  "),
    ("<0xE2>", "\\xE2", "\\xE2"), ("a\tb", "a→b", "a→b"), ("\x07", "\\x07", "\\x07"), ("\x00", "␀", "␀")])
def test_show_token_one_way_everywhere(token, label, in_strip):
    assert show_token(token) == label and show_token(token, lines=True) == in_strip


def test_figures_do_not_share_or_change_the_base_layout():
    before = json.dumps(LAYOUT, sort_keys=True)
    a = head_bars([1.0], "a", "y")
    b = logit_effects({"top": [{"token": "x", "value": 1.0}] * 30})
    assert a["layout"]["height"] == 240 and b["layout"]["height"] == 16 * 30 + 60
    assert json.dumps(LAYOUT, sort_keys=True) == before and a["layout"] is not LAYOUT


# --- attribution graph -----------------------------------------------------------------------------------------

GRAPH = {"tokens": ["<bos>", "a", " b", " a"], "root": "f:1:3:5",
         "nodes": [{"id": "f:1:3:5", "kind": "feature", "layer": 1, "position": 3, "feature": 5, "value": 2.0},
                   {"id": "f:0:2:7", "kind": "feature", "layer": 0, "position": 2, "feature": 7, "value": 1.5},
                   {"id": "f:0:2:9", "kind": "feature", "layer": 0, "position": 2, "feature": 9, "value": -0.5},
                   {"id": "tok:2", "kind": "token", "layer": None, "position": 2, "feature": None, "value": 1.0},
                   {"id": "bias:f:1:3:5", "kind": "bias", "layer": None, "position": None, "value": 0.5},
                   {"id": "pruned:f:1:3:5", "kind": "pruned", "layer": None, "position": None, "value": -0.2}],
         "links": [{"source": "f:0:2:7", "target": "f:1:3:5", "weight": 1.7, "head": 3},
                   {"source": "bias:f:1:3:5", "target": "f:1:3:5", "weight": 0.5, "head": None},
                   {"source": "pruned:f:1:3:5", "target": "f:1:3:5", "weight": -0.2, "head": None},
                   {"source": "tok:2", "target": "f:0:2:7", "weight": 1.0, "head": 1}]}


def traces(fig: dict, name: str) -> list[dict]:
    return [t for t in fig["data"] if t["name"] == name]


def test_graph_nodes_sit_at_position_and_layer_with_the_rest_on_rows_below():
    fig = attribution_graph(GRAPH)
    json.dumps(fig, allow_nan=False)
    (root,) = traces(fig, "root feature")
    assert (root["x"], root["y"], root["marker"]["symbol"]) == ([3.0], [1.0], "star")
    (features,) = traces(fig, "features")
    assert features["y"] == [0.0, 0.0] and features["text"] == ["7", "9"]
    assert features["x"][0] < 2 < features["x"][1] and abs(features["x"][0] + features["x"][1] - 4) < 1e-9
    assert features["marker"]["size"][0] > features["marker"]["size"][1]  # |1.5| > |-0.5|
    assert traces(fig, "token embeddings")[0]["y"] == [EMBED_ROW]
    bias, pruned = traces(fig, "biases")[0], traces(fig, "pruned remainders")[0]
    assert bias["y"] == pruned["y"] == [OTHER_ROW] and 2.5 < bias["x"][0] < pruned["x"][0] < 3.5  # by their target
    layout = fig["layout"]
    assert layout["yaxis"]["tickvals"] == [OTHER_ROW, EMBED_ROW, 0, 1]
    assert layout["xaxis"]["tickvals"] == [2, 3] and layout["xaxis"]["ticktext"] == ["2:  b", "3:  a"]


def test_graph_links_are_lines_as_wide_as_their_weight_with_the_head_in_hover():
    fig = attribution_graph(GRAPH, urls={"f:0:2:7": "/demo/L0/7"})
    lines = traces(fig, "link")
    assert len(lines) == len(GRAPH["links"]) and all(t["mode"] == "lines" for t in lines)
    widths = [t["line"]["width"] for t in lines]
    assert widths[0] == max(widths) and widths[2] == min(widths)
    assert [t["line"]["color"] for t in lines] == [POSITIVE, POSITIVE, NEGATIVE, POSITIVE]
    assert lines[0]["x"] == [2 - 0.1, 3.0] and lines[0]["y"] == [0.0, 1.0]
    (mids,) = traces(fig, "links")
    assert "through head 1.3" in mids["hovertext"][0] and "weight 1.7" in mids["hovertext"][0]
    assert "no head" in mids["hovertext"][1] and "through head 0.1" in mids["hovertext"][3]
    (features,) = traces(fig, "features")
    assert features["customdata"] == ["/demo/L0/7", ""]
    assert "f:0:2:7" in features["hovertext"][0] and "L0 feature 7 at 2" in features["hovertext"][0]
    assert "value 1.5" in features["hovertext"][0] and "feature page" in features["hovertext"][0]


def test_graph_of_a_lone_root():
    fig = attribution_graph({"tokens": ["x"], "root": "f:0:0:1", "links": [],
                             "nodes": [{"id": "f:0:0:1", "kind": "feature", "layer": 0, "position": 0,
                                        "feature": 1, "value": 0.0}]})
    json.dumps(fig, allow_nan=False)
    assert traces(fig, "root feature")[0]["x"] == [0.0] and traces(fig, "links")[0]["x"] == []

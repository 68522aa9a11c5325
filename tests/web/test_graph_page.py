"""The graph page beyond drawing: leaves opened in place through the URL (expand=...), trace links from feature-page
examples (pos=last), and the Neuronpedia graph JSON export; on the tiny random model's site of test_pages."""

from __future__ import annotations

import html
import re
from urllib.parse import parse_qs, urlsplit

from tests.web.test_pages import site  # noqa: F401

Q = {"text": "The quick brown fox jumps over the lazy dog", "layer": 1, "feature": 5, "pos": 8, "depth": 1,
     "threshold": 0.0, "top_n": 6}


def graph_json(c, **extra) -> dict:
    r = c.get("/demo/graph", params={**Q, **extra, "format": "json"})
    assert r.status_code == 200, r.text
    return r.json()


def sums_hold(graph: dict) -> set[str]:
    values = {n["id"]: n["value"] for n in graph["nodes"]}
    sums: dict[str, float] = {}
    for link in graph["links"]:
        sums[link["target"]] = sums.get(link["target"], 0.0) + link["weight"]
    for target, total in sums.items():
        assert abs(total - values[target]) <= 1e-4 * abs(values[target]), target
    return set(sums)


def test_a_leaf_opens_in_place_through_the_url(site):  # noqa: F811
    c, _ = site
    base = graph_json(c)
    assert sums_hold(base) == {base["root"]}
    page = c.get("/demo/graph", params=Q).text
    opens = [html.unescape(u) for u in re.findall(r'<a class="expand" href="([^"]+)"', page)]
    leaves = [n["id"] for n in base["nodes"] if n["kind"] == "feature" and n["id"] != base["root"]]
    assert leaves and len(opens) == len(leaves)
    url = opens[0]
    leaf = parse_qs(urlsplit(url).query)["expand"][0]
    assert leaf in leaves
    grown_page = c.get(url)
    assert grown_page.status_code == 200
    grown = graph_json(c, expand=leaf)
    assert sums_hold(grown) == {base["root"], leaf}
    assert len(grown["nodes"]) > len(base["nodes"])
    figure = re.search(r'<div class="plot graph"><script type="application/json">(.*?)</script>', page, re.S).group(1)
    assert "expand=" in figure and "open it here" in figure  # clicking a leaf in the figure opens it too
    assert len(re.findall(r"<li><a href=", grown_page.text)) == len([n for n in grown["nodes"]
                                                                     if n["kind"] == "feature"])
    close = re.search(r'<a class="collapse" href="([^"]+)"', grown_page.text)
    assert close and "expand" not in html.unescape(close.group(1))  # closing the only opened node: the base URL
    # the other leaves open with both in the URL (chains past depth: tests/engine); a malformed id is a clear 422
    others = [html.unescape(u) for u in re.findall(r'<a class="expand" href="([^"]+)"', grown_page.text)]
    assert all(parse_qs(urlsplit(u).query)["expand"][0].startswith(leaf + ",f:") for u in others)
    bad = c.get("/demo/graph", params={**Q, "expand": "f:0:x:1"})
    assert bad.status_code == 422 and "expand" in bad.text


def test_trace_links_from_feature_page_examples(site):  # noqa: F811
    c, _ = site
    pages = (c.get(f"/demo/L1/{f}").text for f in range(128))
    links = [html.unescape(u) for p in pages for u in re.findall(r'<a class="trace" href="([^"]+)"', p)]
    assert links and all("pos=last" in u and "layer=1" in u for u in links)
    # the tiny corpus is random token ids, many of them control bytes, which no query string may hold: take an
    # example whose text up to its token has none
    clean = [u for u in links if not re.search(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]",
                                                 parse_qs(urlsplit(u).query)["text"][0])]
    graph = c.get(clean[0])
    assert graph.status_code == 200 and "Could not build" not in graph.text
    q = parse_qs(urlsplit(clean[0]).query)
    tokens = c.post("/api/v1/tokenize", json={"text": q["text"][0].removeprefix("<|endoftext|>")}).json()["tokens"]
    root = re.search(r'name="pos" type="number" min="0" value="(\d+)"', graph.text).group(1)
    assert int(root) == len(tokens) - 1  # the example's token: the last of its text, BOS once
    # a text that starts with BOS's own text gets BOS once, not twice
    twice = c.get("/demo/graph", params={**Q, "text": "<|endoftext|>The quick brown", "pos": "last"})
    assert twice.status_code == 200
    assert re.search(r'name="pos" type="number" min="0" value="(\d+)"', twice.text).group(1) == str(
        len(c.post("/api/v1/tokenize", json={"text": "The quick brown"}).json()["tokens"]) - 1)


def test_neuronpedia_export_maps_the_graph(site):  # noqa: F811
    c, _ = site
    ours = graph_json(c, depth=2)
    r = c.get("/demo/graph", params={**Q, "depth": 2, "format": "neuronpedia"})
    assert r.status_code == 200 and "neuronpedia" in r.headers["content-disposition"]
    np_graph = r.json()
    meta = np_graph["metadata"]
    assert meta["scan"] == "demo" and meta["prompt"] == Q["text"] and meta["prompt_tokens"] == ours["tokens"]
    assert meta["schema_version"] == 1 and meta["saex"]["root"] == ours["root"] and meta["transcoder_list"]
    nodes = {n["node_id"]: n for n in np_graph["nodes"]}
    assert len(nodes) == len(np_graph["nodes"])
    root = next(n for n in np_graph["nodes"] if n["saex_id"] == ours["root"])
    assert np_graph["qParams"]["clickedId"] == root["node_id"] and root["influence"] == 1.0
    L, s, g = (int(x) for x in ours["root"].split(":")[1:])
    assert (root["node_id"], root["layer"], root["feature"], root["ctx_idx"]) == (f"{L}_{g}_{s}", str(L), g, s)
    assert root["feature_type"] == "cross layer transcoder"
    kinds = {n["saex_kind"]: n["feature_type"] for n in np_graph["nodes"]}
    assert kinds.get("token", "embedding") == "embedding" and "bias" not in kinds and "pruned" not in kinds
    for link in np_graph["links"]:
        assert link.keys() == {"source", "target", "weight"} and link["source"] in nodes and link["target"] in nodes
    kept = [e for e in ours["links"] if not e["source"].startswith(("bias:", "pruned:"))]
    assert len(np_graph["links"]) == len(kept)

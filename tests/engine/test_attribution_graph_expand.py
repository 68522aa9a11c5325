"""Attribution graphs opened in place: feature nodes named in `expand` are opened past max_depth, and every opened
node's incoming links still sum to its value."""

from __future__ import annotations

from app.engine.attribution_graph import attribution_graph
from tests.engine.test_attribution_graph import REPEATED, TEXT, check_sums, demo, strongest, tiny3_all  # noqa: F401


def targets(graph: dict) -> set[str]:
    return {link["target"] for link in graph["links"]}


def leaves(graph: dict) -> list[str]:
    """Feature nodes that are not opened, strongest value first."""
    opened = targets(graph)
    return [n["id"] for n in sorted(graph["nodes"], key=lambda n: -abs(n["value"]))
            if n["kind"] == "feature" and n["id"] not in opened]


def test_expanding_a_leaf_opens_it_and_keeps_the_sums(demo):  # noqa: F811
    model, saes = demo
    ids = model.to_tokens(REPEATED)
    t = ids.shape[1] - 1
    f = strongest(model, saes, ids, 1, t)
    base = attribution_graph(model, saes, ids, 1, t, f, max_depth=1)
    assert targets(base) == {base["root"]}
    leaf = leaves(base)[0]
    grown = attribution_graph(model, saes, ids, 1, t, f, max_depth=1, expand=[leaf, "f:0:0:999999"])
    assert targets(grown) == {base["root"], leaf}  # the unreached id is ignored
    assert check_sums(grown) == 2
    assert len(grown["nodes"]) > len(base["nodes"])
    assert {n["id"] for n in base["nodes"]} <= {n["id"] for n in grown["nodes"]}
    same_root = [lk for lk in grown["links"] if lk["target"] == base["root"]]
    assert same_root == [lk for lk in base["links"] if lk["target"] == base["root"]]  # the root's links unchanged


def test_expanding_a_chain_past_max_depth(tiny3_all):  # noqa: F811
    """Three layers with SAEs: depth 1 opens the root only; expanding an L1 leaf, then an L0 leaf it reads, opens
    both, and the L0 leaf's new sources stay closed."""
    model, saes = tiny3_all
    ids = model.to_tokens(TEXT)
    t = ids.shape[1] - 1
    f = strongest(model, saes, ids, 2, t)
    base = attribution_graph(model, saes, ids, 2, t, f, max_depth=1, threshold=0.0, top_n=40)
    l1 = next(i for i in leaves(base) if i.startswith("f:1:"))
    step = attribution_graph(model, saes, ids, 2, t, f, max_depth=1, threshold=0.0, top_n=40, expand=[l1])
    l0 = next(i for i in leaves(step) if i.startswith("f:0:") and any(
        lk["source"] == i and lk["target"] == l1 for lk in step["links"]))
    both = attribution_graph(model, saes, ids, 2, t, f, max_depth=1, threshold=0.0, top_n=40, expand=[l1, l0])
    assert targets(both) == {base["root"], l1, l0}
    assert check_sums(both) == 3

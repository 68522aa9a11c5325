"""Circuit discovery (O'Neill & Bui 2024) on the demo model's induction task, against its model card's circuit
(previous-token head 0.5, induction heads 1.0, 1.1, 1.6 and 1.5), with activation patching as the baseline."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from app.engine.circuit_discovery import Head, discover, edge_scores, induction_task, node_scores, roc_auc
from app.engine.loading import attach_saes, load_model

DEMO = Path("artifacts/demo")
CARD = [Head(0, 5), Head(1, 0), Head(1, 1), Head(1, 5), Head(1, 6)]


@pytest.fixture(scope="module")
def demo():
    model = load_model(str(DEMO / "model"))
    return model, {s.layer: s for s in attach_saes(model, [str(DEMO / "saes" / f"L{i}") for i in (0, 1)])}


def test_scores_count_codes_as_the_paper_does():
    pos = torch.tensor([[1, 7], [2, 7], [3, 8]])  # (tokens, heads): codes
    neg = torch.tensor([[1, 7], [1, 9]])
    assert node_scores(pos, neg) == [2 / 3, 1 / 3]  # head 0: {2, 3} of {1, 2, 3}; head 1: {8} of {7, 8, 9}
    # pairs: P2 = {(1,7), (2,7), (3,8)}, N2 = {(1,7), (1,9)}: 2 unique of 3 + 2
    assert edge_scores(pos, neg) == {(0, 1): 2 / 5}
    assert roc_auc([3.0, 2.0, 1.0, 0.5], [True, False, True, False]) == 0.75
    assert roc_auc([1.0, 1.0], [True, False]) == 0.5
    assert roc_auc([1.0], [True]) is None


def test_discovery_ranks_the_demo_induction_heads_first(demo):
    model, saes = demo
    positive, negative = induction_task(model, bos=0)
    result = discover(model, saes, positive, negative, ground_truth=CARD)
    ranked = [(h["layer"], h["head"]) for h in result["heads"]]
    assert len(ranked) == 16 and [h["score"] for h in result["heads"]] == sorted(
        (h["score"] for h in result["heads"]), reverse=True)
    # the four induction heads lead; the previous-token head 0.5 does the same work on repeated and on random
    # tokens, so its codes do not tell them apart and it ranks low (the method's blind spot on this task)
    assert set(ranked[:5]) >= {(1, 0), (1, 1), (1, 5), (1, 6)}
    assert result["roc_auc"]["codes"] >= 0.8  # 0.818 measured (seed 0); 0.98 against the induction heads alone
    assert result["roc_auc"]["patching"] >= 0.75  # 0.80: patching finds 0.5 first but also the token head 0.3
    assert [(p["layer"], p["head"]) for p in result["patching"]][0] == (0, 5)
    edge = result["edges"][0]
    assert set(edge) == {"source", "target", "score"} and set(edge["source"]) == {"layer", "head"}
    induction_only = discover(model, saes, positive, negative, patching=False, ground_truth=CARD[1:])
    assert induction_only["roc_auc"]["codes"] >= 0.95  # 0.98: 1.0, 1.1, 1.6 first, 1.5 fifth after 0.0


def test_last_position_codes_and_invalid_positions(demo):
    model, saes = demo
    positive, negative = induction_task(model, bos=0, n_prompts=4, seq_len=8)
    result = discover(model, saes, positive, negative, positions="last", patching=False)
    assert result["patching"] is None and result["roc_auc"] is None
    with pytest.raises(ValueError, match="positions"):
        discover(model, saes, positive, negative, positions="first")

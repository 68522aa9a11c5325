"""What a feature's weights alone say (head attribution, logit effects, similar features), computed feature chunk by
feature chunk as a dashboard build does at 24,576 features, equals the whole-matrix computation: the full
(d_sae, d_vocab) logit-effect matrix and the full (d_sae, d_sae) cosine matrix, each ranked per row."""

from __future__ import annotations

import pytest
import torch

from app.engine.engine import Engine


@pytest.fixture(scope="module", params=["topk", "gated"])
def engine(tiny_engines, request) -> Engine:
    return tiny_engines[request.param]


def whole_matrix(engine: Engine, layer: int, k: int) -> list[dict]:
    sae, model = engine.saes[layer], engine.model
    W_O = model.blocks[layer].attn.W_O.reshape(-1, model.cfg.d_model)  # (head·d_head, d_model)
    effect = sae.W_dec @ W_O @ model.W_U  # (d_sae, d_vocab), whole
    unit = sae.W_dec / sae.W_dec.norm(dim=-1, keepdim=True)
    cos = unit @ unit.T  # (d_sae, d_sae), whole
    cos.fill_diagonal_(-2.0)
    norms = sae.W_dec.view(sae.d_sae, sae.n_heads, sae.d_head).norm(dim=-1)
    out = []
    for f in range(sae.d_sae):
        top, bottom = effect[f].topk(k), (-effect[f]).topk(k)
        sim = cos[f].topk(k)
        out.append({"top": (top.indices.tolist(), top.values), "bottom": (bottom.indices.tolist(), -bottom.values),
                    "similar": (sim.indices.tolist(), sim.values), "heads": norms[f] / norms[f].sum()})
    return out


@pytest.mark.parametrize("chunk", [1, 7, 128])
def test_chunked_weight_statistics_equal_the_whole_matrices(engine, chunk):
    layer, k = 1, 10
    expected = whole_matrix(engine, layer, k)
    features = list(range(engine.saes[layer].d_sae))
    got = []
    for i in range(0, len(features), chunk):
        got += engine.feature_weights(layer, features[i : i + chunk], k=k)
    assert len(got) == len(expected)
    for mine, ref in zip(got, expected, strict=True):
        for side in ("top", "bottom"):
            ids, values = ref[side]
            assert [e["token"] for e in mine["logit_effects"][side]] == engine.to_str(ids)
            torch.testing.assert_close(torch.tensor([e["value"] for e in mine["logit_effects"][side]]), values)
        ids, values = ref["similar"]
        assert [e["feature"] for e in mine["similar_features"]] == ids
        torch.testing.assert_close(torch.tensor([e["cosine"] for e in mine["similar_features"]]), values)
        torch.testing.assert_close(torch.tensor(mine["head_attribution"]), ref["heads"])

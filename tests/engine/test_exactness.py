"""The engine's numbers against independent references: SAELens's own encode (activations and the
hook_sae_acts_pre pre-activations) on hook_z taken from TransformerLens's run_with_cache, and the identities
of shared/design.md (head contributions + bias = pre-activation; DFA + bias = pre-activation)."""

from __future__ import annotations

import pytest
import torch
from transformer_lens import HookedTransformer

from app.engine.engine import Engine
from tests.conftest import ARCHITECTURES, TEXT

PROMPT = TEXT[:70]


@pytest.fixture(scope="module")
def engines(tiny_engines) -> dict[str, Engine]:
    return tiny_engines


def reference(engine: Engine, arch: str, layer: int):
    """SAELens's encode and pre-activation on TransformerLens's cached hook_z for PROMPT."""
    model: HookedTransformer = engine.model
    tokens = model.to_tokens(PROMPT)
    _, cache = model.run_with_cache(tokens)
    z = cache[f"blocks.{layer}.attn.hook_z"][0]  # (T, head_index, d_head)
    sae = engine.saes[layer].sae  # the SAELens object, reshaping hook_z itself
    with torch.no_grad():
        _, sae_cache = sae.run_with_cache(z)
    return sae_cache["hook_sae_acts_post"], sae_cache["hook_sae_acts_pre"], cache


@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize("layer", [0, 1])
def test_activations_equal_saelens(engines, arch, layer):
    engine = engines[arch]
    ref_acts, ref_pre, _ = reference(engine, arch, layer)
    assert (ref_acts > 0).sum() > 20, "the test SAE must have active latents to compare"
    for feature in range(0, engine.saes[layer].d_sae, 7):
        trace = engine.feature_trace(PROMPT, layer, feature)
        torch.testing.assert_close(torch.tensor(trace["activations"]), ref_acts[:, feature], atol=1e-5, rtol=0)
        # (gated: SAELens's hook_sae_acts_pre is the magnitude path, which is what we report as pre-activation)
        torch.testing.assert_close(torch.tensor(trace["pre_activations"]), ref_pre[:, feature], atol=1e-5, rtol=0)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_analyze_top_features_equal_saelens_topk(engines, arch):
    engine = engines[arch]
    result = engine.analyze(PROMPT, top_k=5)
    for layer_result in result["layers"]:
        ref_acts, _, _ = reference(engine, arch, layer_result["layer"])
        assert layer_result["l0"] == (ref_acts > 0).sum(-1).tolist()
        for t, row in enumerate(layer_result["top_features"]):
            ref_vals = ref_acts[t].topk(5).values
            ref_vals = ref_vals[ref_vals > 0]
            torch.testing.assert_close(torch.tensor([f["activation"] for f in row]), ref_vals, atol=1e-5, rtol=0)
            for f in row:
                assert abs(ref_acts[t, f["feature"]] - f["activation"]) < 1e-5


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_analyze_json_prints_each_activation_as_its_shortest_float32(engines, arch):
    """The answer as the worker writes it (json_bytes) and a client parses it: every activation reads back as
    SAELens's float32 value, printed with no more digits than that float32 needs (numpy's shortest repr)."""
    import numpy as np
    import orjson

    from app.serving.json_response import json_bytes

    engine = engines[arch]
    result = orjson.loads(json_bytes(engine.analyze(PROMPT, top_k=5)))
    n = 0
    for layer_result in result["layers"]:
        ref_acts, _, _ = reference(engine, arch, layer_result["layer"])
        for t, row in enumerate(layer_result["top_features"]):
            for f in row:
                want = np.float32(ref_acts[t, f["feature"]].item())
                assert np.float32(f["activation"]) == want
                assert f["activation"] == float(str(want))  # the decimal numpy's shortest repr writes
                n += 1
    assert n > 20


def assert_rel(a: float, b: float, terms: list[float], rel: float = 1e-4) -> None:
    """|a - b| within `rel` of the sum's scale: the larger of |a|, |b| and Σ|terms| (a sum of terms that cancel
    to near zero carries the rounding of the terms, not of the result)."""
    scale = max(abs(a), abs(b), sum(abs(t) for t in terms))
    assert abs(a - b) <= rel * scale, (a, b, scale)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_head_contributions_plus_bias_equal_pre_activation(engines, arch):
    engine = engines[arch]
    for feature in (0, 5, 77):
        trace = engine.feature_trace(PROMPT, 1, feature)
        for heads, bias, pre in zip(trace["head_contributions"], trace["bias_contribution"], trace["pre_activations"],
                                    strict=True):
            assert len(heads) == 4
            assert_rel(sum(heads) + bias, pre, [*heads, bias])


def test_head_contributions_against_transformer_lens_z(engines):
    """Independent of our code: z from run_with_cache, W_enc from the SAELens object."""
    engine = engines["standard"]
    _, _, cache = reference(engine, "standard", 1)
    z = cache["blocks.1.attn.hook_z"][0]  # (T, head, d_head)
    W_enc = engine.saes[1].sae.W_enc.detach()  # (d_in, d_sae)
    expected = torch.einsum("thd,hd->th", z, W_enc[:, 9].view(4, 16))
    got = torch.tensor(engine.feature_trace(PROMPT, 1, 9)["head_contributions"])
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_dfa_plus_bias_equals_pre_activation(engines, arch):
    engine = engines[arch]
    n = len(engine.tokenize(PROMPT)["tokens"])
    for position in (0, 3, n - 1):
        for feature in (2, 40):
            d = engine.dfa(PROMPT, 1, feature, position)
            contrib = torch.tensor(d["contributions"])  # (head, src)
            assert contrib.shape == (4, n)
            assert torch.all(contrib[:, position + 1 :] == 0), "no attribution to sources after the destination"
            terms = [*contrib.flatten().tolist(), d["bias_contribution"]]
            assert_rel(float(contrib.sum()) + d["bias_contribution"], d["pre_activation"], terms)
            trace = engine.feature_trace(PROMPT, 1, feature)
            assert_rel(d["pre_activation"], trace["pre_activations"][position], terms)
            # summed over sources, DFA is each head's contribution
            torch.testing.assert_close(contrib.sum(1), torch.tensor(trace["head_contributions"][position]),
                                       atol=1e-5, rtol=1e-4)


def test_dfa_against_pattern_and_values(engines):
    """DFA computed by hand from TransformerLens's cached pattern and v."""
    engine = engines["jumprelu"]
    _, _, cache = reference(engine, "jumprelu", 0)
    pattern, v = cache["blocks.0.attn.hook_pattern"][0], cache["blocks.0.attn.hook_v"][0]
    W_enc = engine.saes[0].sae.W_enc.detach()[:, 11].view(4, 16)
    expected = pattern[:, 6, :] * torch.einsum("shd,hd->hs", v, W_enc)
    got = torch.tensor(engine.dfa(PROMPT, 0, 11, 6)["contributions"])
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-5)


def test_head_attribution_and_logit_effects(engines):
    engine = engines["topk"]
    sae = engine.saes[1].sae
    [w] = engine.feature_weights(1, [5], k=4)
    norms = sae.W_dec.detach()[5].view(4, 16).norm(dim=-1)
    torch.testing.assert_close(torch.tensor(w["head_attribution"]), norms / norms.sum())
    assert abs(sum(w["head_attribution"]) - 1) < 1e-6
    model = engine.model
    effect = torch.einsum("hd,hdm,mv->v", sae.W_dec.detach()[5].view(4, 16), model.W_O[1], model.W_U)
    top = effect.topk(4)
    assert [e["value"] for e in w["logit_effects"]["top"]] == pytest.approx(top.values.tolist(), rel=1e-5)
    assert [e["token"] for e in w["logit_effects"]["top"]] == model.to_str_tokens(top.indices)
    bottom = (-effect).topk(4)
    assert [e["value"] for e in w["logit_effects"]["bottom"]] == pytest.approx((-bottom.values).tolist(), rel=1e-5)
    cos = torch.nn.functional.cosine_similarity(sae.W_dec.detach(), sae.W_dec.detach()[5:6], dim=-1)
    cos[5] = -2
    assert [s["feature"] for s in w["similar_features"]] == cos.topk(4).indices.tolist()


def test_reconstruction_metrics_against_saelens_forward(engines):
    engine = engines["standard"]
    ids = engine.encode_text(PROMPT)
    metrics = {m["layer"]: m for m in engine.reconstruction(ids)}
    model = engine.model
    _, cache = model.run_with_cache(ids)
    for layer in (0, 1):
        sae = engine.saes[layer].sae
        z = cache[f"blocks.{layer}.attn.hook_z"][0, 1:]
        with torch.no_grad():
            z_hat = sae(z)  # SAELens forward: decode(encode), reshaped back to (T, head, d_head)
        x, x_hat = z.flatten(-2), z_hat.flatten(-2)
        fve = 1 - (x - x_hat).pow(2).sum() / (x - x.mean(0)).pow(2).sum()
        assert metrics[layer]["fve"] == pytest.approx(float(fve), rel=1e-4)
        assert metrics[layer]["ce_clean"] == pytest.approx(float(model(ids, return_type="loss")), rel=1e-6)

        def splice(act, hook, sae=sae):
            act = act.clone()
            act[:, 1:] = sae(act[:, 1:])
            return act

        with torch.no_grad():
            spliced = model.run_with_hooks(ids, return_type="loss", fwd_hooks=[(f"blocks.{layer}.attn.hook_z", splice)])
        assert metrics[layer]["ce_spliced"] == pytest.approx(float(spliced), rel=1e-5)


def test_analyze_head_contributions_equal_the_trace(engines):
    engine = engines["jumprelu"]
    out = engine.analyze(PROMPT, [1], top_k=4, head_contributions=True)
    for t, row in enumerate(out["layers"][0]["top_features"]):
        for entry in row:
            trace = engine.feature_trace(PROMPT, 1, entry["feature"])
            assert entry["heads"] == pytest.approx(trace["head_contributions"][t], rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("count_from_top_k", [False, True])
@pytest.mark.parametrize("shift", [0.0, -2.0, -100.0])
def test_top_active_equals_topk_of_saelens_encode(engines, shift, count_from_top_k, monkeypatch):
    """TopK: top_active reads the n largest and counts L0 without the SAE's k largest; with the encoder bias shifted
    down, fewer than k pre-activations are positive (and at -100 none are), so both sides of its count are met.
    Both ways of counting: over every pre-activation (small T·d_sae), and over the k largest (large)."""
    import copy

    from app.engine import saes

    monkeypatch.setattr(saes, "COUNT_FROM_TOP_K", 0 if count_from_top_k else 1 << 30)
    sae = copy.deepcopy(engines["topk"].saes[1])
    with torch.no_grad():
        sae.sae.b_enc += shift
    _, cache = engines["topk"].model.run_with_cache(engines["topk"].model.to_tokens(PROMPT))
    z = cache["blocks.1.attn.hook_z"][0]  # (T, head_index, d_head)
    with torch.no_grad():
        ref = sae.sae.encode(z)  # SAELens's own TopK encode (it flattens hook_z itself)
    x = z.flatten(-2)
    values, indices, l0 = sae.top_active(x, 5)
    assert l0.tolist() == (ref > 0).sum(-1).tolist()
    counts = set(l0.tolist())
    assert (shift == 0.0 and max(counts) == sae.k) or (shift == -100.0 and counts == {0}) or min(counts) < sae.k
    torch.testing.assert_close(values, ref.topk(5, dim=-1).values, atol=1e-6, rtol=0)
    assert torch.equal(ref.gather(1, indices)[values > 0], values[values > 0])

"""Steering: an edit of size zero leaves the output bit-for-bit unchanged; edits equal SAELens's
decode(edited latents) + error; heads and positions limit an edit exactly; the KV-cached generation of default and
steered together gives what the uncached reference gives, run by run."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch

from app.engine.engine import Engine
from app.engine.loading import attach_saes, load_model
from app.engine.steering import (
    MODES,
    Generation,
    Intervention,
    OverBudget,
    _edit_hook,
    generate,
    generate_uncached,
)
from tests.conftest import ARCHITECTURES

PROMPT = "The quick brown fox"


@pytest.fixture(scope="module")
def engines(tiny_engines) -> dict[str, Engine]:
    return tiny_engines


@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_add_zero_is_identity(engines, arch, temperature):
    engine = engines[arch]
    edits = [Intervention(0, 3, "add", 0.0), Intervention(1, 7, "add", 0.0, heads=(1,), positions=(1, 2))]
    out = engine.steer(PROMPT, edits, max_new_tokens=12, temperature=temperature, seed=3, top_logprobs=3)
    assert out["default"]["token_ids"] == out["steered"]["token_ids"]
    assert out["default"]["logprobs"] == out["steered"]["logprobs"]  # exact floats: bit-for-bit
    assert len(out["default"]["token_ids"]) == 12


def test_default_equals_plain_transformer_lens_greedy(engines):
    engine = engines["standard"]
    model = engine.model
    out = engine.steer(PROMPT, [], max_new_tokens=8, temperature=0.0, top_logprobs=2)
    ids = model.to_tokens(PROMPT)
    for token, entry in zip(out["default"]["token_ids"], out["default"]["logprobs"], strict=True):
        logp = model(ids)[0, -1].log_softmax(-1)
        assert token == int(logp.argmax())
        assert entry["logprob"] == pytest.approx(float(logp[token]), abs=1e-6)
        ids = torch.cat([ids, torch.tensor([[token]])], 1)
    assert out["default"]["text"] == model.tokenizer.decode(out["default"]["token_ids"])


def test_seeded_sampling_is_reproducible(engines):
    engine = engines["standard"]
    a = engine.steer(PROMPT, [], max_new_tokens=10, temperature=1.0, seed=11)
    b = engine.steer(PROMPT, [], max_new_tokens=10, temperature=1.0, seed=11)
    assert a["default"]["token_ids"] == b["default"]["token_ids"]


def _z(engine: Engine, layer: int) -> torch.Tensor:
    _, cache = engine.model.run_with_cache(engine.model.to_tokens(PROMPT))
    return cache[f"blocks.{layer}.attn.hook_z"]  # (1, T, head, d_head)


@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize("mode,value", [("add", 3.0), ("clamp", 5.0), ("ablate", 0.0)])
def test_edit_equals_saelens_decode_plus_error(engines, arch, mode, value):
    engine = engines[arch]
    sae_obj = engine.saes[1].sae
    z = _z(engine, 1)
    with torch.no_grad():
        acts = sae_obj.encode(z[0])  # (T, d_sae), SAELens reshapes hook_z itself
        feature = int(acts[2].argmax())  # a live latent, so ablate and clamp do something
        edited = acts.clone()
        if mode == "add":
            edited[:, feature] += value
        elif mode == "clamp":
            edited[:, feature] = value
        else:
            edited[:, feature] = 0
        error = z[0] - sae_obj.decode(acts)
        expected = sae_obj.decode(edited) + error
    hook = _edit_hook(engine.saes[1], [Intervention(1, feature, mode, value)], prompt_len=z.shape[1])
    got = hook(z.clone(), None)[0]
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(got, z[0]), "the edit must change hook_z"


def test_heads_and_positions_limit_the_edit(engines):
    engine = engines["standard"]
    z = _z(engine, 0)
    hook = _edit_hook(engine.saes[0], [Intervention(0, 5, "add", 4.0, heads=(1, 3), positions=(2, 4))], z.shape[1])
    delta = hook(z.clone(), None) - z  # (1, T, head, d_head)
    changed = delta.abs().sum(-1)[0] > 0  # (T, head)
    expected = torch.zeros_like(changed)
    for p in (2, 4):
        for h in (1, 3):
            expected[p, h] = True
    assert torch.equal(changed, expected)
    W_dec = engine.saes[0].sae.W_dec.detach()[5].view(4, 16)
    torch.testing.assert_close(delta[0, 2, 1], 4.0 * W_dec[1])


def test_positions_none_reaches_generated_tokens(engines):
    """With positions null the edit applies to generated tokens too; with prompt positions it does not."""
    engine = engines["standard"]
    big = [Intervention(1, 9, "add", 200.0)]
    last = len(engine.tokenize(PROMPT)["tokens"]) - 1
    everywhere = engine.steer(PROMPT, big, max_new_tokens=6)
    at_prompt = engine.steer(PROMPT, [Intervention(1, 9, "add", 200.0, positions=(last,))], max_new_tokens=6)
    assert everywhere["steered"]["token_ids"] != everywhere["default"]["token_ids"]
    # the first generated token depends only on the prompt, edited the same at `last`... unless other positions
    # matter: compare the logprobs of later tokens, which differ only through generated positions
    assert everywhere["steered"]["logprobs"] != at_prompt["steered"]["logprobs"]


@pytest.mark.parametrize("temperature", [5e-199, 1e-7, 1e-5, 10.0])
def test_extreme_temperatures_sample_safely(engines, temperature):
    """Found by schemathesis: a tiny temperature overflowed logits / T into NaN probabilities."""
    out = engines["standard"].steer(PROMPT, [], max_new_tokens=4, temperature=temperature, seed=413)
    assert len(out["default"]["token_ids"]) == 4
    if temperature < 1e-6:
        greedy = engines["standard"].steer(PROMPT, [], max_new_tokens=4, temperature=0.0)
        assert out["default"]["token_ids"] == greedy["default"]["token_ids"]


def test_a_passed_deadline_stops_generation(engines):
    engine = engines["standard"]
    with pytest.raises(OverBudget, match="after 0 tokens"):
        engine.steer("The quick brown fox", [], max_new_tokens=5, deadline=time.monotonic() - 1)
    assert len(engine.steer("The quick brown fox", [], max_new_tokens=5,
                            deadline=time.monotonic() + 60)["steered"]["token_ids"]) == 5


# --- the KV-cached generate against the uncached reference --------------------------------------------------------

DEMO = Path(__file__).resolve().parents[2] / "artifacts" / "demo"
LIMITS = {"all": {}, "heads": {"heads": (1, 2)}, "positions": {"positions": (1, 3)}}
MODE_VALUES = {"add": 3.0, "clamp": 5.0, "ablate": 0.0}


@pytest.fixture(scope="module")
def demo_engine() -> Engine:
    if not (DEMO / "model" / "model.safetensors").exists():
        pytest.skip("demo not trained yet")
    model = load_model(str(DEMO / "model"))
    return Engine(model, attach_saes(model, [str(DEMO / "saes" / f"L{layer}") for layer in (0, 1)]), "demo")


def _live_feature(engine: Engine, layer: int, position: int) -> int:
    """The latent most active at `position` of PROMPT, so that clamp and ablate change something."""
    acts, _ = engine.saes[layer].encode(_z(engine, layer)[0, position].flatten())
    return int(acts.argmax())


def _assert_same(got: Generation, ref: Generation) -> None:
    """The same tokens, and log-probabilities (chosen and top) to 1e-5 (absolute and relative): the cached pass
    multiplies matrices of other shapes, so its sums round differently (on the demo model's sharp logits up to
    ~1.2e-5 on a log-probability of -5, a few float32 steps of the logits)."""
    assert got.token_ids == ref.token_ids
    torch.testing.assert_close(torch.tensor(got.logprobs), torch.tensor(ref.logprobs), atol=1e-5, rtol=1e-5)
    assert [[i for i, _ in t] for t in got.top] == [[i for i, _ in t] for t in ref.top]
    torch.testing.assert_close(torch.tensor([[v for _, v in t] for t in got.top]),
                               torch.tensor([[v for _, v in t] for t in ref.top]), atol=1e-5, rtol=1e-5)


def _check_cached_equals_uncached(engine: Engine, edits: list[Intervention], temperature: float,
                                  new_tokens: int = 12, seed: int = 5) -> tuple[Generation, Generation]:
    ids = engine.encode_text(PROMPT)
    args = (engine.model, ids, new_tokens, temperature, seed, 3, engine.saes)  # top_logprobs 3
    default, steered = generate(*args, edits)
    _assert_same(default, generate_uncached(*args, []))
    _assert_same(steered, generate_uncached(*args, edits))
    return default, steered


@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("limit", LIMITS)
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_cached_equals_uncached(engines, arch, mode, limit, temperature):
    """Default and steered together with a KV cache give what two uncached runs give, for every architecture,
    mode and limit, greedy and seeded sampling (each row with its own generator, as each old run had)."""
    engine = engines[arch]
    # layer 0: an edit at prompt positions of the last layer would not reach the generated tokens' logits
    feature = _live_feature(engine, 0, 3)
    edits = [Intervention(0, feature, mode, MODE_VALUES[mode], **LIMITS[limit])]
    default, steered = _check_cached_equals_uncached(engine, edits, temperature)
    assert steered.logprobs != default.logprobs, "the edit must change the continuation"


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_cached_equals_uncached_with_edits_on_two_layers(engines, temperature):
    """Several edits on one layer (summed in one product) and on two layers, with mixed limits."""
    engine = engines["jumprelu"]
    f0, f1 = _live_feature(engine, 0, 2), _live_feature(engine, 1, 1)
    edits = [Intervention(0, f0, "clamp", 4.0, positions=(2,)), Intervention(1, f1, "ablate", heads=(0, 3)),
             Intervention(1, 7, "add", -2.0, positions=(0, 4))]
    _check_cached_equals_uncached(engine, edits, temperature, seed=9)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("limit", LIMITS)
@pytest.mark.parametrize("temperature", [0.0, 0.7])
def test_cached_equals_uncached_on_the_demo_model(demo_engine, mode, limit, temperature):
    """The same on the trained demo model and its TopK SAEs, where a live feature steers real text."""
    feature = _live_feature(demo_engine, 0, 3)
    value = {"add": 20.0, "clamp": 20.0, "ablate": 0.0}[mode]
    edits = [Intervention(0, feature, mode, value, **LIMITS[limit])]
    default, steered = _check_cached_equals_uncached(demo_engine, edits, temperature, new_tokens=16)
    assert steered.logprobs != default.logprobs, "the edit must change the continuation"


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_add_zero_in_the_batch_is_the_default_row_bit_for_bit(engines, demo_engine, temperature):
    """An edit of size 0 on the steered row leaves it equal to the default row in every bit, positions limited
    or not, on the tiny model and the demo model."""
    for engine in (engines["topk"], demo_engine):
        ids = engine.encode_text(PROMPT)
        edits = [Intervention(0, 3, "add", 0.0), Intervention(1, 5, "add", 0.0, heads=(1,), positions=(1, 2))]
        default, steered = generate(engine.model, ids, 16, temperature, 2, 4, engine.saes, edits)
        assert steered == default  # token ids, log-probabilities and top lists, exactly


def test_generation_stops_at_the_context(engines):
    """max_new_tokens past the context stops at n_ctx, cached as uncached."""
    engine = engines["standard"]
    ids = engine.encode_text(PROMPT)
    n_ctx = engine.model.cfg.n_ctx
    edits = [Intervention(1, 9, "add", 2.0)]
    default, steered = generate(engine.model, ids, n_ctx, 0.0, 0, 0, engine.saes, edits)
    assert len(default.token_ids) == len(steered.token_ids) == n_ctx - ids.shape[1]
    assert steered.top[0] == []  # top_logprobs 0: no top lists
    _assert_same(steered, generate_uncached(engine.model, ids, n_ctx, 0.0, 0, 0, engine.saes, edits))


def test_non_finite_logits_name_the_steered_run(engines):
    """Only the steered row can go non-finite, and the error says so. It takes an infinite value: a finite huge
    one is normalised away by the next LayerNorm (the engine itself accepts finite values only)."""
    engine = engines["standard"]
    with pytest.raises(FloatingPointError, match="steered run"):
        generate(engine.model, engine.encode_text(PROMPT), 4, 0.0, 0, 0, engine.saes,
                 [Intervention(0, 9, "add", float("inf"))])


def test_default_row_equals_transformer_lens_cached_generate(engines, demo_engine):
    """The default row greedily continues as TransformerLens's own KV-cached generate does."""
    for engine in (engines["standard"], demo_engine):
        ids = engine.encode_text(PROMPT)
        default, _ = generate(engine.model, ids, 10, 0.0, 0, 0, engine.saes, [Intervention(1, 4, "add", 5.0)])
        with torch.inference_mode():
            theirs = engine.model.generate(ids, max_new_tokens=10, do_sample=False, use_past_kv_cache=True,
                                           stop_at_eos=False, verbose=False)
        assert default.token_ids == theirs[0, ids.shape[1]:].tolist()


def test_the_engine_implements_exactly_the_contracts_modes():
    """The list of modes is the contract's (app/protocol.py); the engine implements each of them and no other."""
    from app.protocol import STEER_MODES

    assert MODES == STEER_MODES


def test_the_contracts_intervention_spec_goes_to_the_engine_as_it_is(engines):
    """The worker hands the contract's InterventionSpec objects to the engine unconverted: same result as the
    engine's own Intervention."""
    from app.protocol import InterventionSpec

    engine = engines["standard"]
    spec = InterventionSpec(layer=1, feature=9, mode="clamp", value=30.0, heads=[0, 2], positions=[1])
    ours = Intervention(1, 9, "clamp", 30.0, heads=(0, 2), positions=(1,))
    assert engine.steer(PROMPT, [spec], max_new_tokens=4) == engine.steer(PROMPT, [ours], max_new_tokens=4)

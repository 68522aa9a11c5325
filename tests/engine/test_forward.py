"""The lean forward pass against TransformerLens's own: bit for bit the same hook_v, hook_pattern and hook_z on
every model shape it takes, TransformerLens's forward for every other shape, for other hook points, and whenever
hooks are attached; weights changed in place are seen."""

from __future__ import annotations

import pytest
import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

from app.engine.features import capture
from app.engine.forward import lean_forward, unsupported

NAMES = [f"blocks.{layer}.attn.{hook}" for layer in range(3) for hook in ("hook_v", "hook_pattern", "hook_z")]


def make(**overrides) -> HookedTransformer:
    cfg = dict(n_layers=3, d_model=48, n_heads=4, d_head=12, d_mlp=96, n_ctx=40, d_vocab=101, act_fn="gelu_new",
               normalization_type="LN", seed=0)
    cfg.update(overrides)
    model = HookedTransformer(HookedTransformerConfig(**cfg))
    with torch.no_grad():  # LayerNorm weights start at one and biases at zero: make them count
        for name, p in model.named_parameters():
            if name.endswith((".w", ".b", "b_Q", "b_K", "b_V", "b_O", "b_in", "b_out")):
                p.add_(0.1 * torch.randn_like(p))
    return model.eval()


def tokens(model: HookedTransformer, batch: int = 3, T: int = 33) -> torch.Tensor:
    return torch.randint(0, model.cfg.d_vocab, (batch, T), generator=torch.Generator().manual_seed(1))


SUPPORTED = {
    "mlp gelu_new, LN": {},
    "attention only": {"attn_only": True},
    "LNPre (folded weights)": {"normalization_type": "LNPre"},
    "relu MLP": {"act_fn": "relu"},
    "float64": {"dtype": torch.float64},
}


@pytest.mark.parametrize("overrides", SUPPORTED.values(), ids=SUPPORTED.keys())
def test_lean_pass_is_bit_for_bit_transformer_lens(overrides):
    model = make(**overrides)
    assert unsupported(model) is None
    ids = tokens(model)
    _, cache = model.run_with_cache(ids)
    assert lean_forward(model, NAMES) is not None
    got = capture(model, ids, NAMES)
    for name in NAMES:
        assert torch.equal(got[name], cache[name]), name
    # only as far as it is asked: one layer's z alone, for one prompt
    _, one = model.run_with_cache(ids[:1])
    assert torch.equal(capture(model, ids[:1], ["blocks.1.attn.hook_z"])["blocks.1.attn.hook_z"],
                       one["blocks.1.attn.hook_z"])


UNSUPPORTED = {
    "rotary": {"positional_embedding_type": "rotary", "rotary_dim": 12},
    "RMSNorm": {"normalization_type": "RMS"},
    "grouped-query attention": {"n_key_value_heads": 2},
    "attention soft cap": {"attn_scores_soft_cap": 30.0},
    "gated MLP": {"gated_mlp": True, "act_fn": "silu"},
    "parallel attention and MLP": {"parallel_attn_mlp": True},
}


@pytest.mark.parametrize("overrides", UNSUPPORTED.values(), ids=UNSUPPORTED.keys())
def test_other_shapes_go_through_transformer_lens(overrides):
    model = make(**overrides)
    assert unsupported(model) is not None
    assert lean_forward(model, NAMES) is None
    ids = tokens(model)
    _, cache = model.run_with_cache(ids)
    got = capture(model, ids, NAMES)
    for name in NAMES:
        assert torch.equal(got[name], cache[name]), name


def test_other_hook_points_and_attached_hooks_go_through_transformer_lens():
    model = make()
    assert lean_forward(model, ["blocks.0.hook_resid_post"]) is None
    seen = []
    model.blocks[0].attn.hook_z.add_hook(lambda act, hook: seen.append(hook.name))
    try:
        assert lean_forward(model, NAMES) is None
        capture(model, tokens(model), ["blocks.1.attn.hook_z"])
        assert seen == ["blocks.0.attn.hook_z"]  # the user's hook ran
    finally:
        model.reset_hooks()
    assert lean_forward(model, NAMES) is not None


def test_weights_changed_in_place_are_seen():
    model, other = make(), make(seed=5)
    ids = tokens(model)
    before = capture(model, ids, NAMES)
    model.load_state_dict(other.state_dict())  # copies into the same parameters, in place
    after = capture(model, ids, NAMES)
    _, cache = model.run_with_cache(ids)
    assert not torch.equal(before["blocks.2.attn.hook_z"], after["blocks.2.attn.hook_z"])
    for name in NAMES:
        assert torch.equal(after[name], cache[name]), name

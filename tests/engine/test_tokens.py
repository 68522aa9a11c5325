"""The engine's direct path to token ids gives exactly TransformerLens's to_tokens, for a tokenizer that adds the
BOS itself and for one to which TransformerLens prepends it, and steps aside wherever it could differ."""

from __future__ import annotations

import pytest
from transformer_lens import HookedTransformer

from app.engine.engine import Engine, TooLong
from app.engine.loading import attach_saes, load_model
from app.engine.tokens import direct_encoder

TEXTS = [
    "The quick brown fox", " leading space", "trailing space ", "\n\nnew\r\nlines\tand tabs", "<|endoftext|>",
    "a<|endoftext|>b <|endoftext|> c", "SELECT name FROM users WHERE id = 1;", "naïve café — 東京 🙂 \u200b", "x" * 40,
    "def add(a, b):\n    return a + b\n", "   ", "0123456789" * 3,
]


def gpt2_style(model_dir) -> HookedTransformer:
    """The same model with a tokenizer that adds no BOS (as TransformerLens keeps one for OLMo, or where a
    tokenizer cannot be rebuilt to add it): TransformerLens then prepends the BOS text itself."""
    from transformers import PreTrainedTokenizerFast

    model = load_model(str(model_dir))
    tok = model.tokenizer
    plain = PreTrainedTokenizerFast(tokenizer_file=str(model_dir / "tokenizer.json"), bos_token=tok.bos_token,
                                    eos_token=tok.eos_token, pad_token=tok.pad_token)
    model.tokenizer = plain
    model.cfg.tokenizer_prepends_bos = len(plain.encode("")) > 0  # TransformerLens's own test, from set_tokenizer
    return model


@pytest.fixture(scope="module")
def models(tiny_model_dir) -> dict[str, HookedTransformer]:
    model = load_model(str(tiny_model_dir))
    return {"tokenizer adds BOS": model, "TransformerLens prepends BOS": gpt2_style(tiny_model_dir)}


@pytest.mark.parametrize("kind", ["tokenizer adds BOS", "TransformerLens prepends BOS"])
def test_direct_ids_equal_to_tokens(models, sae_dirs, kind):
    model = models[kind]
    assert model.cfg.tokenizer_prepends_bos == (kind == "tokenizer adds BOS")
    engine = Engine(model, attach_saes(model, [str(p) for p in sae_dirs["topk"]]), "tiny")
    assert engine._direct_ids is not None  # the path under test is taken
    for text in TEXTS:
        want = model.to_tokens(text, prepend_bos=True, truncate=False)
        assert engine._direct_ids(text) == want[0].tolist(), text
        assert engine.encode_text(text).tolist() == want.tolist()
        assert engine.encode_text(text).dtype == want.dtype


def test_direct_path_steps_aside_when_truncation_is_left_on_and_too_long_still_says_so(models, sae_dirs):
    model = models["tokenizer adds BOS"]
    engine = Engine(model, attach_saes(model, [str(p) for p in sae_dirs["topk"]]), "tiny")
    long_text = "The quick brown fox jumps over the lazy dog. " * 40
    model.to_tokens(long_text, truncate=True)  # leaves truncation at n_ctx on the shared Rust tokenizer
    assert engine._direct_ids(long_text) is None
    with pytest.raises(TooLong, match="context is 96 tokens"):
        engine.encode_text(long_text)
    assert engine._direct_ids(long_text) is not None  # to_tokens(truncate=False) turned truncation off again


def test_no_direct_path_where_transformer_lens_strips_the_tokenizers_bos(models):
    model = models["tokenizer adds BOS"]
    model.cfg.default_prepend_bos = False
    try:
        assert direct_encoder(model) is None
    finally:
        model.cfg.default_prepend_bos = True

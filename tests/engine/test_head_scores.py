"""One definition of the induction and previous-token scores (app/engine/head_scores.py): checked against a plain
loop over the attention patterns, and the same numbers from Engine.head_scores (the worker's /v1/head-scores and
so the head page) and from `saex eval`."""

from __future__ import annotations

import json

import pytest
import torch

from app.engine.head_scores import BATCH, head_scores, repeated_random_tokens
from app.engine.loading import load_model


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    return load_model(str(tiny_model_dir))


def test_tokens_are_two_copies_after_bos_and_never_bos(model):
    bos = model.tokenizer.bos_token_id
    tokens = repeated_random_tokens(model, bos)
    n = (model.cfg.n_ctx - 1) // 2  # the tiny model's context is shorter than 1 + 2·SEQ_LEN
    assert tokens.shape == (BATCH, 1 + 2 * n)
    assert (tokens[:, 0] == bos).all() and (tokens[:, 1:] != bos).all()
    assert torch.equal(tokens[:, 1 : n + 1], tokens[:, n + 1 :])
    assert torch.equal(tokens, repeated_random_tokens(model, bos))  # a fixed generator


def test_scores_equal_a_loop_over_the_patterns(model):
    bos = model.tokenizer.bos_token_id
    tokens = repeated_random_tokens(model, bos)
    n = (tokens.shape[1] - 1) // 2
    with torch.inference_mode():
        logits, cache = model.run_with_cache(tokens)
    scores = head_scores(model)
    for layer in range(model.cfg.n_layers):
        pattern = cache[f"blocks.{layer}.attn.hook_pattern"]  # (B, head_index, q, k)
        for head in range(model.cfg.n_heads):
            # second copy: the token at q = n + 1 + i repeats the one at 1 + i, followed by the one at 2 + i
            induction = sum(pattern[b, head, n + 1 + i, 2 + i] for b in range(BATCH) for i in range(n)) / (BATCH * n)
            previous = sum(pattern[b, head, q, q - 1] for b in range(BATCH) for q in range(2, 2 * n + 1)) / (
                BATCH * (2 * n - 1))
            assert scores.induction[layer, head].item() == pytest.approx(induction.item(), rel=1e-5)
            assert scores.previous_token[layer, head].item() == pytest.approx(previous.item(), rel=1e-5)
    logprobs = logits.log_softmax(-1)
    first = -torch.stack([logprobs[b, t - 1, tokens[b, t]] for b in range(BATCH) for t in range(2, n + 1)]).mean()
    second = -torch.stack([logprobs[b, t - 1, tokens[b, t]] for b in range(BATCH) for t in range(n + 2, 2 * n + 1)])
    assert scores.first_half_loss == pytest.approx(first.item(), rel=1e-5)
    assert scores.second_half_loss == pytest.approx(second.mean().item(), rel=1e-5)
    lean = head_scores(model, losses=False)  # no unembedding, the same scores
    assert torch.equal(lean.induction, scores.induction) and torch.equal(lean.previous_token, scores.previous_token)
    assert lean.first_half_loss is None and lean.second_half_loss is None


def test_head_page_numbers_and_saex_eval_are_the_same_function(tiny_engines, tmp_path, capsys, monkeypatch):
    """The worker answers /v1/head-scores with Engine.head_scores; `saex eval` prints evaluate_engine's."""
    from fastapi.testclient import TestClient

    from app import cli
    from app.training.evaluate import evaluate_engine
    from app.worker.service import create_worker_app

    engine = tiny_engines["topk"]
    expected = head_scores(engine.model)
    with TestClient(create_worker_app(engine)) as c:
        served = c.get("/v1/head-scores").json()
    assert served == {"induction": expected.induction.tolist(), "previous_token": expected.previous_token.tolist()}
    report = evaluate_engine(engine, n_sequences=2, batch=2)
    assert report["induction_scores"] == served["induction"]
    assert report["previous_token_scores"] == served["previous_token"]
    assert report["repeat_second_half_loss"] == expected.second_half_loss
    # and through the command itself
    monkeypatch.setattr(cli, "_engine_from_settings", lambda settings: engine)
    assert cli.main(["eval", "--sequences", "2"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["induction_scores"] == served["induction"]
    assert printed["previous_token_scores"] == served["previous_token"]

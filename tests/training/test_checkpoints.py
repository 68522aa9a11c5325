"""The demo model's training checkpoint is safetensors + JSON, no pickle, and a run interrupted at a checkpoint
and resumed takes exactly the steps an uninterrupted run takes (same batches, optimizer state, weights)."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from app.training.checkpoints import Checkpoint, load_checkpoint, save_checkpoint
from app.training.model import ModelTrainConfig, train_model
from tests.conftest import make_tokenizer

STEP_TOKENS = 4 * 32  # batch_size · n_ctx
TINY = ModelTrainConfig(n_layers=1, d_model=32, n_heads=2, d_head=16, n_ctx=32, d_vocab=300, batch_size=4,
                        warmup_steps=2, decay_fraction=0.0, max_tokens=4 * STEP_TOKENS, eval_every=2, eval_batches=1,
                        threads=1)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt")
    tokens = np.random.default_rng(0).integers(1, TINY.d_vocab, 3 * 65536).astype(np.uint16)  # 2 train blocks, 1 val
    np.save(root / "tokens.npy", tokens)
    make_tokenizer(root / "tokenizer.json")
    return root


def test_resumed_run_takes_the_uninterrupted_runs_steps(data, tmp_path):
    whole = train_model(TINY, data / "tokens.npy", data / "tokenizer.json", tmp_path / "run-a", tmp_path / "out-a")
    # the same run stopped after its step-2 checkpoint, then resumed with the full length
    half = replace(TINY, max_tokens=2 * STEP_TOKENS)
    train_model(half, data / "tokens.npy", data / "tokenizer.json", tmp_path / "run-b", tmp_path / "out-b")
    assert load_checkpoint(tmp_path / "run-b").step == 2
    resumed = train_model(TINY, data / "tokens.npy", data / "tokenizer.json", tmp_path / "run-b", tmp_path / "out-b")
    assert [r["train_loss"] for r in resumed["history"]] == [r["train_loss"] for r in whole["history"]]
    a, b = load_file(tmp_path / "out-a" / "model.safetensors"), load_file(tmp_path / "out-b" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ca, cb = load_checkpoint(tmp_path / "run-a"), load_checkpoint(tmp_path / "run-b")
    assert ca.step == cb.step == 4 and ca.numpy_rng == cb.numpy_rng
    assert all(torch.equal(ca.optimizer["state"][i][k], cb.optimizer["state"][i][k])
               for i in ca.optimizer["state"] for k in ca.optimizer["state"][i])


def test_a_resume_without_the_saved_generator_state_would_differ(data, tmp_path):
    """The check above can fail: reseeding the batch sampler on resume (the old behaviour) changes the next step."""
    half = replace(TINY, max_tokens=2 * STEP_TOKENS)
    train_model(half, data / "tokens.npy", data / "tokenizer.json", tmp_path / "run", tmp_path / "out")
    meta = json.loads((tmp_path / "run" / "ckpt.json").read_text())
    meta["numpy_rng"] = np.random.default_rng(TINY.seed + 2).bit_generator.state
    (tmp_path / "run" / "ckpt.json").write_text(json.dumps(meta))
    resumed = train_model(TINY, data / "tokens.npy", data / "tokenizer.json", tmp_path / "run", tmp_path / "out")
    whole = train_model(TINY, data / "tokens.npy", data / "tokenizer.json", tmp_path / "run-a", tmp_path / "out-a")
    assert resumed["history"][-1]["train_loss"] != whole["history"][-1]["train_loss"]


def test_checkpoint_files_are_safetensors_and_json(data, tmp_path):
    run = tmp_path / "run"
    train_model(replace(TINY, max_tokens=2 * STEP_TOKENS), data / "tokens.npy", data / "tokenizer.json", run,
                tmp_path / "out")
    assert sorted(p.name for p in run.iterdir()) == ["ckpt-00000002.safetensors", "ckpt.json"]
    meta = json.loads((run / "ckpt.json").read_text())
    assert meta["weights"] == "ckpt-00000002.safetensors" and meta["step"] == 2
    assert meta["config"]["d_model"] == 32 and meta["numpy_rng"]["bit_generator"] == "PCG64"
    tensors = load_file(run / meta["weights"])
    assert "model.embed.W_E" in tensors and "optimizer.0.exp_avg" in tensors
    with pytest.raises(ValueError, match="another config"):  # the arguments that rebuild the run are checked
        train_model(replace(TINY, d_model=64, d_head=32), data / "tokens.npy", data / "tokenizer.json", run,
                    tmp_path / "out")


def test_a_later_checkpoint_replaces_the_earlier_and_a_pickle_is_refused(tmp_path):
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters())
    model(torch.ones(3)).sum().backward()
    opt.step()
    for step in (1, 2):
        save_checkpoint(tmp_path, Checkpoint(step=step, history=[{"step": step}], config={"a": 1},
                                             model=model.state_dict(), optimizer=opt.state_dict(),
                                             numpy_rng=np.random.default_rng(0).bit_generator.state,
                                             torch_rng=torch.get_rng_state()))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt-00000002.safetensors", "ckpt.json"]
    back = load_checkpoint(tmp_path)
    fresh = torch.optim.AdamW(model.parameters())
    fresh.load_state_dict(back.optimizer)
    assert fresh.state_dict()["param_groups"] == opt.state_dict()["param_groups"]
    assert torch.equal(back.torch_rng, torch.get_rng_state())
    (tmp_path / "ckpt.pt").write_bytes(b"")
    with pytest.raises(ValueError, match="no longer read"):
        load_checkpoint(tmp_path)

"""The embedded default's recipe, end to end in smoke mode (a few steps on a tiny corpus): every `saex train`
step runs through the CLI and writes exactly the files that the engine's loader then reads."""

from __future__ import annotations

import json

from app.cli import main
from app.engine.engine import Engine
from app.engine.loading import attach_saes, load_model


def test_train_pipeline_smoke(tmp_path, capsys):
    corpus, build = tmp_path / "corpus", tmp_path / "build"
    assert main(["train", "corpus", "--smoke", "--out", str(corpus)]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["documents"] == 200
    assert main(["train", "tokenizer", "--smoke", "--corpus", str(corpus), "--out", str(build)]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["vocab_size"] == 512
    model_dir, saes_dir = tmp_path / "model", tmp_path / "saes"
    assert main(["train", "model", "--smoke", "--tokens", str(build / "tokens.npy"), "--tokenizer",
                 str(build / "tokenizer.json"), "--run-dir", str(tmp_path / "run"), "--out", str(model_dir)]) == 0
    assert {p.name for p in model_dir.iterdir()} >= {"config.json", "model.safetensors", "tokenizer.json"}
    assert (tmp_path / "run" / "ckpt.json").exists() and list((tmp_path / "run").glob("ckpt-*.safetensors"))
    # a second run resumes from the checkpoint: nothing left to train, same weights written again
    before = (model_dir / "model.safetensors").read_bytes()
    assert main(["train", "model", "--smoke", "--tokens", str(build / "tokens.npy"), "--tokenizer",
                 str(build / "tokenizer.json"), "--run-dir", str(tmp_path / "run"), "--out", str(model_dir)]) == 0
    assert (model_dir / "model.safetensors").read_bytes() == before
    assert main(["train", "saes", "--smoke", "--model", str(model_dir), "--tokens", str(build / "tokens.npy"),
                 "--out", str(saes_dir)]) == 0
    assert {p.name for p in (saes_dir / "L0").iterdir()} >= {"cfg.json", "sae_weights.safetensors",
                                                            "sparsity.safetensors"}
    model = load_model(str(model_dir))
    engine = Engine(model, attach_saes(model, [str(saes_dir / "L0")]), "smoke")
    out = engine.analyze("def main():\n    return 0", top_k=3)
    assert max(out["layers"][0]["l0"]) <= 4  # TopK with k = 4

"""Loading models and SAEs from every supported source, and the clear errors for everything that does not fit.
Hugging Face cache sources are tested on caches built here, offline, in a subprocess (the hub library reads
its cache location at import)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from app.engine.engine import Engine
from app.engine.loading import LoadError, attach_saes, load_model, read_sae
from tests.conftest import make_sae

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    return load_model(str(tiny_model_dir))


def test_model_folder_matches_its_weights(tiny_model_dir, model):
    from safetensors.torch import load_file

    state = load_file(tiny_model_dir / "model.safetensors")
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, state[name]), name
    assert model.cfg.n_layers == 2 and model.cfg.n_heads == 4
    assert model.to_str_tokens("The fox")[0] == "<|endoftext|>"  # BOS prepended once
    assert model.to_tokens("The fox").tolist()[0].count(0) == 1


def test_model_folder_errors(tmp_path, tiny_model_dir):
    with pytest.raises(LoadError, match="does not exist"):
        load_model(str(tmp_path / "nope"))
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{")
    with pytest.raises(LoadError, match="has no model.safetensors"):
        load_model(str(broken))
    for name in ("model.safetensors", "tokenizer.json"):
        (broken / name).write_bytes((tiny_model_dir / name).read_bytes())
    with pytest.raises(LoadError, match="not valid JSON"):
        load_model(str(broken))
    cfg = json.loads((tiny_model_dir / "config.json").read_text())
    (broken / "config.json").write_text(json.dumps({**cfg, "d_model": 32, "d_head": 8}))
    with pytest.raises(LoadError, match="does not match"):
        load_model(str(broken))


@pytest.mark.parametrize("problem,match", [
    ("missing", "no such folder or file"),
    ("not_hook_z", "blocks.L.attn.hook_z"),
    ("wrong_d_in", "d_in is 32"),
    ("past_last_layer", "past the model's last layer"),
    ("two_on_one_layer", "both sit on layer 0"),
    ("no_weights", "no sae_weights.safetensors"),
    ("unsupported_norm", "normalize_activations='layer_norm'"),
])
def test_sae_errors_name_the_file(tmp_path, model, sae_dirs, problem, match):
    good = str(sae_dirs["standard"][0])
    specs = {
        "missing": [str(tmp_path / "missing")],
        "two_on_one_layer": [good, str(sae_dirs["topk"][0])],
    }.get(problem)
    if specs is None:
        folder = make_sae(tmp_path / problem, 0, "standard", d_in=32 if problem == "wrong_d_in" else 64)
        cfg = json.loads((folder / "cfg.json").read_text())
        if problem == "not_hook_z":
            cfg["metadata"]["hook_name"] = "blocks.0.hook_resid_pre"
        if problem == "past_last_layer":
            cfg["metadata"]["hook_name"] = "blocks.5.attn.hook_z"
        if problem == "unsupported_norm":
            cfg["normalize_activations"] = "layer_norm"
        (folder / "cfg.json").write_text(json.dumps(cfg))
        if problem == "no_weights":
            (folder / "sae_weights.safetensors").unlink()
        specs = [str(folder)]
    with pytest.raises(LoadError, match=match) as err:
        attach_saes(model, specs)
    assert any(Path(s).name in str(err.value) for s in specs), "the error names the file"


def write_kissane(folder: Path, layer: int, d_in: int = 64, d_sae: int = 128, seed: int = 0) -> Path:
    """Files in the layout of Kissane et al.'s release: {run}.pt with W_enc/W_dec/b_enc/b_dec, {run}_cfg.json."""
    g = torch.Generator().manual_seed(seed)
    folder.mkdir(parents=True, exist_ok=True)
    run = folder / f"tiny_L{layer}_Hcat_z_v9"
    state = {"W_enc": torch.randn(d_in, d_sae, generator=g) * 0.3, "W_dec": torch.randn(d_sae, d_in, generator=g),
             "b_enc": torch.randn(d_sae, generator=g) * 0.1, "b_dec": torch.randn(d_in, generator=g) * 0.1}
    torch.save(state, str(run) + ".pt")
    cfg = {"act_name": f"blocks.{layer}.attn.hook_z", "act_size": d_in, "dict_size": d_sae, "dict_mult": 2,
           "l1_coeff": 1.8, "model_name": "tiny", "layer": layer, "site": "z"}
    Path(str(run) + "_cfg.json").write_text(json.dumps(cfg))
    return Path(str(run) + ".pt")


def test_kissane_files_encode_like_their_formula(tmp_path, model):
    pt = write_kissane(tmp_path, 0)
    engine = Engine(model, attach_saes(model, [str(pt)]), "tiny")
    state = torch.load(pt, weights_only=True)
    _, cache = model.run_with_cache(model.to_tokens("The quick brown fox"))
    x = cache["blocks.0.attn.hook_z"][0].flatten(-2)
    expected = torch.relu((x - state["b_dec"]) @ state["W_enc"] + state["b_enc"])  # their AutoEncoder.forward
    got = torch.tensor([engine.feature_trace("The quick brown fox", 0, f)["activations"] for f in range(128)]).T
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    with pytest.raises(LoadError, match="_cfg.json is missing"):
        Path(str(pt)[:-3] + "_cfg.json").unlink()
        read_sae(str(pt))


def test_kissane_pickle_is_refused(tmp_path):
    """weights_only=True: a .pt holding arbitrary objects is refused, never executed."""
    import fractions

    pt = write_kissane(tmp_path, 0)
    torch.save({"W_enc": fractions.Fraction(1, 3)}, pt)  # any non-tensor class: unpickling it would run code
    with pytest.raises(LoadError, match="not a plain tensor state dict"):
        read_sae(str(pt))


def _snapshot(cache: Path, repo_id: str) -> Path:
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    commit = "0" * 40
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    snap = repo / "snapshots" / commit
    snap.mkdir(parents=True, exist_ok=True)
    return snap


def _run_offline(code: str, hf_home: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "PYTHONPATH": str(REPO)}
    env.pop("HF_HUB_CACHE", None)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True,
                          timeout=300)


@pytest.mark.process
def test_saelens_registry_release_from_local_cache(tmp_path, tiny_model_dir):
    """`release:sae_id` resolves through SAELens's registry to files in the local cache (here the Kissane et al.
    GPT-2 release's file names, with tiny weights), with no network."""
    import yaml
    from sae_lens.loading import pretrained_saes_directory  # noqa: F401  (the registry ships with SAELens)

    registry = yaml.safe_load((Path(pretrained_saes_directory.__file__).parent.parent / "pretrained_saes.yaml")
                              .read_text())
    release = registry["gpt2-small-hook-z-kk"]
    entry = next(s for s in release["saes"] if s["id"] == "blocks.0.hook_z")
    snap = _snapshot(tmp_path / "hf" / "hub", release["repo_id"])
    pt = write_kissane(tmp_path / "k", 0)
    (snap / entry["path"]).write_bytes(pt.read_bytes())
    (snap / entry["path"].replace(".pt", "_cfg.json")).write_bytes(Path(str(pt)[:-3] + "_cfg.json").read_bytes())
    result = _run_offline(f"""
        import torch
        from app.engine.loading import load_model, attach_saes
        model = load_model({str(tiny_model_dir)!r})
        [sae] = attach_saes(model, ["gpt2-small-hook-z-kk:blocks.0.hook_z"])
        ref = torch.load({str(pt)!r}, weights_only=True)
        assert torch.equal(sae.sae.W_enc.detach(), ref["W_enc"]) and sae.layer == 0
        print("OK", sae.source)
    """, tmp_path / "hf")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "OK gpt2-small-hook-z-kk:blocks.0.hook_z" in result.stdout
    missing = _run_offline("""
        from app.engine.loading import read_sae, LoadError
        try:
            read_sae("gpt2-small-hook-z-kk:blocks.3.hook_z")
        except LoadError as e:
            print("LoadError", e)
    """, tmp_path / "hf")
    assert "LoadError could not load SAELens release 'gpt2-small-hook-z-kk' id 'blocks.3.hook_z'" in missing.stdout


@pytest.mark.process
def test_transformer_lens_name_from_local_cache(tmp_path, tiny_model_dir):
    """`--model gpt2` loads through TransformerLens from the local cache (a tiny GPT-2 written with transformers),
    and its next-token distribution equals transformers' own forward pass."""
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    snap = _snapshot(tmp_path / "hf" / "hub", "gpt2")
    tok = PreTrainedTokenizerFast(tokenizer_file=str(tiny_model_dir / "tokenizer.json"), bos_token="<|endoftext|>",
                                  eos_token="<|endoftext|>")
    tok.save_pretrained(snap)
    torch.manual_seed(0)
    hf = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=64, n_head=4, n_positions=96, n_ctx=96, vocab_size=len(tok),
                                    bos_token_id=0, eos_token_id=0)).eval()  # eval: no dropout
    hf.save_pretrained(snap)
    ids = [0, 40, 41, 42, 43]
    with torch.no_grad():
        ref = hf(torch.tensor([ids])).logits.log_softmax(-1)
    torch.save(ref, tmp_path / "ref.pt")
    sae = make_sae(tmp_path / "sae", 1, "standard")
    result = _run_offline(f"""
        import torch
        from app.engine.loading import load_model, attach_saes
        model = load_model("gpt2")
        assert model.cfg.n_layers == 2 and model.cfg.d_model == 64
        [sae] = attach_saes(model, [{str(sae)!r}])
        got = model(torch.tensor([{ids}])).log_softmax(-1)
        ref = torch.load({str(tmp_path / "ref.pt")!r})
        torch.testing.assert_close(got, ref, atol=1e-4, rtol=1e-4)
        print("OK")
    """, tmp_path / "hf")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "OK" in result.stdout
    unknown = _run_offline("""
        from app.engine.loading import load_model, LoadError
        try:
            load_model("gpt2-medium")
        except LoadError as e:
            print("LoadError", e)
    """, tmp_path / "hf")
    assert "LoadError could not load model 'gpt2-medium'" in unknown.stdout


def test_sae_folder_with_sparsity_file_loads(tmp_path, model):
    folder = make_sae(tmp_path / "s", 1, "jumprelu")
    save_file({"sparsity": torch.full((128,), -2.0)}, folder / "sparsity.safetensors")
    [sae] = attach_saes(model, [str(folder)])
    assert sae.architecture == "jumprelu" and sae.d_sae == 128


def test_sae_weights_are_realigned_and_unchanged(model, sae_dirs):
    """safetensors gives views into one buffer, often off a 64-byte boundary; attach_saes copies those (BLAS reads
    them faster) and the copies hold the same numbers as the files."""
    from safetensors.torch import load_file

    from app.engine.loading import ALIGNMENT

    for arch, folders in sae_dirs.items():
        for sae in attach_saes(model, [str(folders[0])]):
            stored = load_file(folders[0] / "sae_weights.safetensors")
            for name, param in sae.sae.named_parameters():
                assert param.data_ptr() % ALIGNMENT == 0, (arch, name)
                assert torch.equal(param.detach(), stored[name]), (arch, name)

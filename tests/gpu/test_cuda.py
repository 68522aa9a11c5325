"""The engine and the dashboard build on a CUDA device (skipped where there is none; CI has none): every
architecture's activations equal SAELens's encode on the same device, the analysis, trace, DFA and steering
agree with the CPU engine on the same weights, and a dashboard build on the GPU stores what the CPU build stores."""

from __future__ import annotations

import os

import pytest
import torch

from app.engine.engine import Engine
from app.engine.loading import attach_saes, load_model
from tests.conftest import ARCHITECTURES, TEXT

# SAEX_TEST_DEVICE=cpu runs the same checks against a second CPU engine (to check the tests themselves here)
DEVICE = os.environ.get("SAEX_TEST_DEVICE", "cuda")
pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(DEVICE == "cuda" and not torch.cuda.is_available(), reason="needs a CUDA device")]

PROMPT = TEXT[:70]


@pytest.fixture(scope="module")
def cuda_engines(tiny_model_dir, sae_dirs) -> dict[str, Engine]:
    out = {}
    for arch in ARCHITECTURES:
        model = load_model(str(tiny_model_dir), device=DEVICE)
        out[arch] = Engine(model, attach_saes(model, [str(p) for p in sae_dirs[arch]], device=DEVICE), "tiny")
    return out


def close(a, b, atol: float = 2e-4) -> None:
    torch.testing.assert_close(torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64),
                               atol=atol, rtol=1e-4)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_weights_and_activations_live_on_the_gpu_and_equal_saelens(cuda_engines, arch):
    engine = cuda_engines[arch]
    assert next(engine.model.parameters()).device.type == DEVICE
    model = engine.model
    _, cache = model.run_with_cache(model.to_tokens(PROMPT))
    for layer, attached in engine.saes.items():
        assert attached.sae.W_dec.device.type == DEVICE
        z = cache[f"blocks.{layer}.attn.hook_z"][0]
        with torch.no_grad():
            _, sae_cache = attached.sae.run_with_cache(z)
        ref = sae_cache["hook_sae_acts_post"]
        for feature in range(0, attached.d_sae, 9):
            trace = engine.feature_trace(PROMPT, layer, feature)
            torch.testing.assert_close(torch.tensor(trace["activations"]), ref[:, feature].cpu(), atol=1e-5, rtol=0)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_gpu_engine_agrees_with_the_cpu_engine(cuda_engines, tiny_engines, arch):
    gpu, cpu = cuda_engines[arch], tiny_engines[arch]
    a, b = gpu.analyze(PROMPT, top_k=5, head_contributions=True), cpu.analyze(PROMPT, top_k=5,
                                                                                head_contributions=True)
    assert a["token_ids"] == b["token_ids"]
    for la, lb in zip(a["layers"], b["layers"], strict=True):
        assert la["l0"] == lb["l0"]
        for ra, rb in zip(la["top_features"], lb["top_features"], strict=True):
            close([e["activation"] for e in ra], [e["activation"] for e in rb])
            close([e["heads"] for e in ra], [e["heads"] for e in rb])
    ta, tb = gpu.feature_trace(PROMPT, 1, 5), cpu.feature_trace(PROMPT, 1, 5)
    for field in ("activations", "pre_activations", "head_contributions"):
        close(ta[field], tb[field])
    da, db = gpu.dfa(PROMPT, 1, 5, 10), cpu.dfa(PROMPT, 1, 5, 10)
    close(da["contributions"], db["contributions"])
    assert abs(da["pre_activation"] - db["pre_activation"]) < 2e-4


def test_steering_on_the_gpu(cuda_engines):
    from app.engine.steering import Intervention

    engine = cuda_engines["standard"]
    out = engine.steer(PROMPT, [Intervention(1, 5, "add", 0.0)], 12, 0.0, 0, 3)
    assert out["default"]["tokens"] == out["steered"]["tokens"]  # add 0 is the identity, on the GPU too
    pushed = engine.steer(PROMPT, [Intervention(1, 5, "clamp", 50.0, heads=(0, 2))], 12, 0.0, 0, 3)
    assert pushed["default"]["tokens"] == out["default"]["tokens"]
    assert len(pushed["steered"]["tokens"]) == 12


def test_dashboard_build_on_the_gpu_equals_the_cpu_build(cuda_engines, tiny_engines, tmp_path):
    from app.jobs import dashboards as job
    from app.store.dashboards import find_sae, read_dashboard
    from app.store.db import make_engine, make_sessionmaker, upgrade

    corpus = torch.randint(1, tiny_engines["jumprelu"].model.cfg.d_vocab, (10, 40),
                           generator=torch.Generator().manual_seed(1))
    corpus[:, 0] = 0
    params = job.BuildParams(corpus="random", tokens=400, top_k=5, n_intervals=4, per_interval=2)
    stored = {}
    for name, engine in (("gpu", cuda_engines["jumprelu"]), ("cpu", tiny_engines["jumprelu"])):
        url = f"sqlite:///{tmp_path / name}.db"
        upgrade(url)
        factory = make_sessionmaker(make_engine(url))
        job.build(engine, factory, corpus, params, model_slug="m", batch_size=3, progress=False)
        with factory() as s:
            stored[name] = {(layer, f): read_dashboard(s, sae=find_sae(s, sae_slug=f"L{layer}", model_slug="m"),
                                                       feature=f) for layer in (0, 1) for f in range(128)}
    for key, g in stored["gpu"].items():
        c = stored["cpu"][key]
        assert g["density"] == c["density"], key
        assert abs(g["max_activation"] - c["max_activation"]) < 1e-3, key
        assert [(e["max_position"], e["token_ids"]) for e in g["top_examples"]] == \
               [(e["max_position"], e["token_ids"]) for e in c["top_examples"]], key
        for eg, ec in zip(g["top_examples"], c["top_examples"], strict=True):
            close(eg["activations"], ec["activations"], atol=2e-3)  # stored as float16
            close(eg["dfa"], ec["dfa"], atol=2e-3)

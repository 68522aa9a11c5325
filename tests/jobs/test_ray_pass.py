"""The Ray path of a dashboard build: corpus shards as tasks on a local Ray instance, merged on the driver,
give the same statistics (top examples included) as the local single pass."""

from __future__ import annotations

import pytest
import torch

from app.config import Settings
from app.engine.engine import Engine
from app.engine.loading import attach_saes, load_model
from app.jobs.dashboards import run_pass
from app.jobs.ray_pass import ray_pass
from tests.engine.test_dashboard_stats import assert_same_reservoirs


@pytest.fixture(scope="module")
def ray_local():
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.mark.slow
def test_ray_shards_equal_local_pass(ray_local, tiny_model_dir, sae_dirs):
    sae_specs = [str(p) for p in sae_dirs["gated"]]
    model = load_model(str(tiny_model_dir))
    engine = Engine(model, attach_saes(model, sae_specs), "tiny")
    corpus = torch.randint(1, model.cfg.d_vocab, (9, 40), generator=torch.Generator().manual_seed(5))
    corpus[:, 0] = 0
    local = run_pass(engine, corpus, [0, 1], batch_size=2, top_k=5, progress=False)
    settings = Settings(model=str(tiny_model_dir), saes=sae_specs)
    distributed = ray_pass(settings, shards=3)(engine, corpus, [0, 1], 2, 5)
    for layer in (0, 1):
        a, b = local[layer], distributed[layer]
        assert a.tokens_seen == b.tokens_seen
        ta, tb = a.sorted_top(), b.sorted_top()
        assert torch.equal(ta.position, tb.position)  # the same top examples
        torch.testing.assert_close(ta.value, tb.value)
        torch.testing.assert_close(ta.dfa, tb.dfa)
        assert torch.equal(a.hist, b.hist) and torch.equal(a.fire_count, b.fire_count)
        assert_same_reservoirs(a, b)

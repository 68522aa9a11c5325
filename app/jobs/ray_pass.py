"""The corpus pass of a dashboard build as Ray tasks: each task loads the engine from the same model and SAE
files (a lab's shared storage), computes the statistics of its shard of corpus rows, and the driver merges them.
Merging is exact (power-of-two histograms, hash-keyed reservoirs, top-k), so the result equals the local pass."""

from __future__ import annotations

from collections.abc import Callable

import torch

from app.config import Settings
from app.engine.dashboard_stats import FeatureStats, load_state_dict, state_dict
from app.engine.engine import Engine


def _shard(model_spec: str, sae_specs: list[str], device: str, corpus: torch.Tensor, start: int, stop: int,
           layers: list[int], batch_size: int, top_k: int, threads: int) -> dict[int, dict[str, torch.Tensor]]:
    from app.engine.loading import attach_saes, load_model
    from app.jobs.dashboards import run_pass

    torch.set_num_threads(threads)
    model = load_model(model_spec, device)
    engine = Engine(model, attach_saes(model, sae_specs, device), "shard")
    stats = run_pass(engine, corpus, layers, batch_size, top_k, rows=range(start, stop), progress=False)
    return {layer: state_dict(s) for layer, s in stats.items()}


def ray_pass(settings: Settings, address: str = "auto", shards: int = 4, threads: int = 1,
             init_kwargs: dict | None = None) -> Callable[..., dict[int, FeatureStats]]:
    def run(engine: Engine, corpus: torch.Tensor, layers: list[int], batch_size: int, top_k: int):
        import ray

        if not ray.is_initialized():
            ray.init(address=address, **(init_kwargs or {}))
        task = ray.remote(num_cpus=threads)(_shard)
        corpus_ref = ray.put(corpus)
        rows = corpus.shape[0]
        bounds = [round(i * rows / shards) for i in range(shards + 1)]
        refs = [task.remote(settings.model_spec(), settings.sae_specs(), settings.device, corpus_ref, a, b, layers,
                            batch_size, top_k, threads) for a, b in zip(bounds, bounds[1:], strict=False) if b > a]
        merged: dict[int, FeatureStats] = {}
        for part in ray.get(refs):  # in shard order; merging is order-independent anyway
            for layer, state in part.items():
                stats = FeatureStats(engine.saes[layer], k=top_k)
                load_state_dict(stats, state)
                if layer in merged:
                    merged[layer].merge(stats)
                else:
                    merged[layer] = stats
        return merged

    return run

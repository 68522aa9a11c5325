"""Loading the engine a command works with, from settings: shared by the commands of app/cli.py and
app/cli_explain.py; imports torch only when called."""

from __future__ import annotations

from app.config import use_offline_hub


def engine_from_settings(settings):
    """The model and SAEs the settings name, loaded as an Engine (torch threads and offline hub set first)."""
    import torch

    from app.engine.engine import Engine
    from app.engine.loading import attach_saes, load_model
    from app.serving.memory import keep_freed_memory

    keep_freed_memory()  # before the first tensor: freed memory stays mapped for the next request
    if settings.threads:
        torch.set_num_threads(settings.threads)
    use_offline_hub()
    model = load_model(settings.model_spec(), settings.device)
    saes = attach_saes(model, settings.sae_specs(), settings.device)
    return Engine(model, saes, settings.served_slug(), settings.sae_set)

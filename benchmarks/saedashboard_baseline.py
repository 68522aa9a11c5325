"""SAEDashboard's throughput on our model, SAEs and tokens, for benchmarks/dashboards.py. It runs inside a virtual
environment of its own (sae-dashboard needs transformer-lens < 3, unlike the app), so it imports nothing of the
app: it reads the model folder and SAELens SAE folders directly.

    SAEDASH_VENV/bin/python benchmarks/saedashboard_baseline.py MODEL_DIR TOKENS.npy SAE_DIR [SAE_DIR ...]

Prints one JSON object: seconds and tokens/s for all features of every SAE (one SaeVisRunner run per SAE, as
SAEDashboard is used), on the CPU.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from sae_dashboard.sae_vis_data import SaeVisConfig
from sae_dashboard.sae_vis_runner import SaeVisRunner
from sae_lens import SAE
from safetensors.torch import load_file
from transformer_lens import HookedTransformer, HookedTransformerConfig


def main() -> None:
    model_dir, tokens_path, *sae_dirs = sys.argv[1:]
    torch.set_num_threads(int(__import__("os").environ.get("BENCH_THREADS", "2")))
    cfg = json.loads((Path(model_dir) / "config.json").read_text())
    fields = HookedTransformerConfig.__dataclass_fields__
    model = HookedTransformer(HookedTransformerConfig(**{k: v for k, v in cfg.items() if k in fields}))
    # TransformerLens 3.9 saves the causal-mask buffers empty; 2.x rebuilds them at construction
    state = {k: v for k, v in load_file(Path(model_dir) / "model.safetensors").items()
             if not k.endswith((".mask", ".IGNORE"))}
    model.load_state_dict(state, strict=False)
    model.eval()
    tokens = torch.from_numpy(np.load(tokens_path)).long()
    out = {"tokens": int(tokens.numel()), "saes": []}
    t_all = time.perf_counter()
    for sae_dir in sae_dirs:
        sae = SAE.load_from_disk(sae_dir)
        # SAEDashboard folds decoder norms into the encoder, which SAELens refuses for TopK SAEs; ours have
        # unit-norm decoder rows, so the fold is the identity: check that, and skip it
        assert torch.allclose(sae.W_dec.norm(dim=-1), torch.ones(sae.cfg.d_sae), atol=1e-4)
        sae.fold_W_dec_norm = lambda: None
        features = list(range(sae.cfg.d_sae))
        vis_cfg = SaeVisConfig(hook_point=sae.cfg.metadata.hook_name, features=features,
                               minibatch_size_features=256, minibatch_size_tokens=64, device="cpu", verbose=False)
        t0 = time.perf_counter()
        SaeVisRunner(vis_cfg).run(encoder=sae, model=model, tokens=tokens)
        out["saes"].append({"sae": sae_dir, "seconds": time.perf_counter() - t0})
    seconds = time.perf_counter() - t_all
    out.update(seconds=seconds, tokens_per_s=tokens.numel() / seconds)
    print(json.dumps(out))


if __name__ == "__main__":
    main()

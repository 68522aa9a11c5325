"""Benchmark: dashboard build throughput (tokens/s, all layers, all features) beside the bare forward pass plus
SAE encode on the same tokens, and bytes stored per feature; with SAEDashboard's throughput on the same model,
SAEs and tokens when `sae-dashboard` is importable here.

    python benchmarks/dashboards.py [--tokens 131072] [--threads 2] [--model PATH --sae PATH ...]

Prints one JSON object. Targets (issue 4): >= 10x SAEDashboard's throughput; our build >= 30% of the bare
forward+encode throughput; <= 20 KB stored per feature on average.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from sqlalchemy import func, select

from app.config import load_settings
from app.engine.features import capture, flat_z
from app.jobs.corpus import load_corpus
from app.jobs.dashboards import BuildParams, build
from app.store.db import make_engine, make_sessionmaker, upgrade
from app.store.models import ExampleRecord, FeatureRecord


def bare_throughput(engine, corpus: torch.Tensor, batch_size: int) -> float:
    """Forward pass to the last SAE layer with hook_z captured, and every SAE's encode: nothing else."""
    hooks = [s.hook_name for s in engine.saes.values()]
    t0 = time.perf_counter()
    with torch.inference_mode():
        for i in range(0, corpus.shape[0], batch_size):
            zs = capture(engine.model, corpus[i : i + batch_size], hooks)
            for sae in engine.saes.values():
                sae.encode(flat_z(zs[sae.hook_name]))
    return corpus.numel() / (time.perf_counter() - t0)


def stored_bytes(factory) -> dict:
    with factory() as s:
        n_features = s.scalar(select(func.count()).select_from(FeatureRecord))
        blobs = s.scalar(select(func.sum(func.length(ExampleRecord.token_ids) + func.length(ExampleRecord.activations)
                                         + func.length(ExampleRecord.dfa) + func.length(ExampleRecord.dfa_heads))))
        rows = s.scalar(select(func.count()).select_from(ExampleRecord))
        json_bytes = sum(len(json.dumps([f.histogram, f.logit_effects, f.head_attribution, f.similar]))
                         for f in s.scalars(select(FeatureRecord)))
    return {"features": n_features, "examples": rows, "example_blob_bytes": int(blobs or 0),
            "feature_json_bytes": json_bytes}


def saedashboard_throughput(settings, corpus: torch.Tensor, python: str | None, threads: int) -> dict:
    """SAEDashboard on the same model, SAEs and tokens, run by benchmarks/saedashboard_baseline.py in the
    interpreter of its own virtual environment (it cannot be installed beside our pins)."""
    if python is None:
        return {"status": "not measured: pass --saedashboard-python VENV/bin/python, a virtual environment with "
                          "sae-dashboard installed (it needs transformer-lens < 3, so it cannot share ours)"}
    import os
    import subprocess
    import sys

    import numpy as np

    with tempfile.TemporaryDirectory() as tmp:
        tokens = Path(tmp) / "tokens.npy"
        np.save(tokens, corpus.numpy())
        script = Path(__file__).with_name("saedashboard_baseline.py")
        run = subprocess.run([python, str(script), settings.model_spec(), str(tokens), *settings.sae_specs()],
                             capture_output=True, text=True, env={**os.environ, "BENCH_THREADS": str(threads)})
    if run.returncode != 0:
        print(run.stderr[-3000:], file=sys.stderr)
        return {"status": f"failed with exit code {run.returncode}"}
    return json.loads(run.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model")
    parser.add_argument("--sae", action="append")
    parser.add_argument("--tokens", type=int, default=131_072)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--saedashboard-python", help="python of a virtual environment with sae-dashboard")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from app.cli import _engine_from_settings

    settings = load_settings(model=args.model, saes=args.sae)
    engine = _engine_from_settings(settings)
    corpus, name = load_corpus(engine, "stdlib", args.tokens)
    bare = bare_throughput(engine, corpus, args.batch_size)
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{Path(tmp) / 'bench.db'}"
        upgrade(url)
        db = make_engine(url)
        factory = make_sessionmaker(db)
        summary = build(engine, factory, corpus, BuildParams(corpus=name, tokens=int(corpus.numel())),
                        batch_size=args.batch_size, progress=False)
        sizes = stored_bytes(factory)
        db.dispose()
        db_file = (Path(tmp) / "bench.db").stat().st_size
    n_features = sizes["features"]
    result = {
        "model": engine.info()["model"], "saes": [s["id"] for s in engine.info()["saes"]], "threads": args.threads,
        "tokens": int(corpus.numel()), "features": n_features,
        "bare_forward_plus_encode_tokens_per_s": round(bare),
        "our_pass_tokens_per_s": round(summary["pass_tokens_per_s"]),
        "our_full_build_tokens_per_s": round(corpus.numel() / summary["seconds"]),
        "full_build_seconds": round(summary["seconds"], 1),
        "full_build_over_bare": round(corpus.numel() / summary["seconds"] / bare, 3),
        "bytes_per_feature_blobs_and_json": round((sizes["example_blob_bytes"] + sizes["feature_json_bytes"])
                                                  / max(1, n_features)),
        "bytes_per_feature_sqlite_file": round(db_file / max(1, n_features)),
        "examples": sizes["examples"],
    }
    baseline = saedashboard_throughput(settings, corpus, args.saedashboard_python, args.threads)
    result["saedashboard"] = baseline
    if "tokens_per_s" in baseline:
        result["ours_over_saedashboard"] = round(result["our_full_build_tokens_per_s"] / baseline["tokens_per_s"], 1)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

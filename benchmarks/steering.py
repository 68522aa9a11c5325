"""Benchmark: Engine.steer (default and steered continuations, 32 new tokens, one `add` intervention, greedy) beside
TransformerLens's own KV-cached generate run twice for the same tokens (default, then steered with the same SAE
edit hooked in through model.hooks), at GPT-2-Small shape (random weights, 12 SAEs of 24,576 latents) and on the
shipped demo model; the two ways take turns in a shuffled order in one run.

    python benchmarks/steering.py [--threads 2] [--demo-iters 20] [--gpt2-iters 3] [--skip-gpt2]

Prints one JSON object. Targets (issue 13): at most 1.0x TransformerLens's generate at GPT-2 shape, and under
250 ms for 32 tokens on the demo. The GPT-2-shape fixture is built once under the temp folder (~2 GB, minutes).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import statistics
import tempfile
import time
from pathlib import Path

import torch

from app.engine.engine import Engine
from app.engine.loading import attach_saes, load_model
from app.engine.steering import Intervention, LayerEdit

DEMO = Path("artifacts/demo")
PROMPT = "Once upon a time, in a small village by the sea, there lived an old fisherman who"
NEW_TOKENS = 32


def fixture(name: str) -> tuple[str, list[str]]:
    """The model folder and SAE folders of the named fixture; the GPT-2 one is built (or waited for) first."""
    if name == "demo":
        return str(DEMO / "model"), [str(p) for p in sorted((DEMO / "saes").iterdir())]
    from app.training.synthetic import GPT2_SMALL, build

    root = Path(tempfile.gettempdir()) / "saex-scale"
    base = root / GPT2_SMALL.slug()
    for _ in range(120):  # another process may be building it: its done.json comes last
        if (base / "done.json").is_file() or not (base / "model").exists():
            break
        time.sleep(5)
    model_dir, sae_dirs = build(GPT2_SMALL, root, DEMO / "model" / "tokenizer.json")
    return str(model_dir), [str(p) for p in sae_dirs]


def bench(name: str, iters: int) -> dict:
    model_dir, sae_dirs = fixture(name)
    model = load_model(model_dir)
    return measure_steering(Engine(model, attach_saes(model, sae_dirs), name), iters)


def measure_steering(engine: Engine, iters: int) -> dict:
    """Engine.steer against TransformerLens's generate x2 on this engine, `iters` shuffled turns."""
    model = engine.model
    layer = sorted(engine.saes)[len(engine.saes) // 2]
    spec = Intervention(layer, 17, "add", 8.0)
    ids = engine.encode_text(PROMPT)
    edit = LayerEdit(engine.saes[layer], [Intervention(layer, 17, "add", 8.0)], ids.shape[1])

    def ours() -> dict:
        return engine.steer(PROMPT, [spec], max_new_tokens=NEW_TOKENS, temperature=0.0)

    def transformer_lens() -> list[list[int]]:
        out = []
        for hooks in ([], [(edit.sae.hook_name, edit)]):  # default, then steered
            with torch.inference_mode(), model.hooks(fwd_hooks=hooks):
                tokens = model.generate(ids, max_new_tokens=NEW_TOKENS, do_sample=False, use_past_kv_cache=True,
                                        stop_at_eos=False, verbose=False)
            out.append(tokens[0, ids.shape[1]:].tolist())
        return out

    # the same continuations both ways (greedy; a near-tie could differ in the last float bit)
    mine, theirs = ours(), transformer_lens()
    same = [mine["default"]["token_ids"], mine["steered"]["token_ids"]] == theirs
    times: dict[str, list[float]] = {"engine_steer": [], "transformer_lens_generate_x2": []}
    ways = {"engine_steer": ours, "transformer_lens_generate_x2": transformer_lens}
    order, rng = list(ways), random.Random(0)
    for _ in range(iters):
        rng.shuffle(order)  # each way follows the other as often: what ran just before moves a call's time
        for way in order:
            t0 = time.perf_counter()
            ways[way]()
            times[way].append(time.perf_counter() - t0)
    p50 = {way: 1000 * statistics.median(ts) for way, ts in times.items()}
    cfg = model.cfg
    return {
        "model": {"n_layers": cfg.n_layers, "d_model": cfg.d_model, "n_heads": cfg.n_heads, "d_vocab": cfg.d_vocab,
                  "d_sae": engine.saes[layer].d_sae, "architecture": engine.saes[layer].architecture},
        "prompt_tokens": ids.shape[1], "new_tokens": NEW_TOKENS, "intervention": dataclasses.asdict(spec),
        "iters": iters,
        "same_tokens_as_transformer_lens": same,
        "p50_ms": {way: round(v, 1) for way, v in p50.items()},
        "ratio_to_transformer_lens": round(p50["engine_steer"] / p50["transformer_lens_generate_x2"], 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--demo-iters", type=int, default=20)
    parser.add_argument("--gpt2-iters", type=int, default=3)  # each turn takes seconds at this shape
    parser.add_argument("--skip-gpt2", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    result: dict = {"threads": args.threads, "demo": bench("demo", args.demo_iters)}
    result["demo"]["target_ms"] = 250
    if not args.skip_gpt2:
        result["gpt2_small_shape"] = bench("gpt2-small-shape", args.gpt2_iters)
        result["gpt2_small_shape"]["target_ratio"] = 1.0
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

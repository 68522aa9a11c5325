"""Benchmark: an all-layer analysis at GPT-2-Small shape (12 layers, 12 heads x 64, 12 TopK SAEs of 24,576 latents,
random weights from app/training/synthetic.py): p50 of Engine.analyze against the plain SAELens way in the same
run, and the size of the answer a client receives, for a 128-token and a 512-token prompt.

    python benchmarks/scale_analyze.py [--reps 5] [--threads 2]

Prints one JSON object. Target (issue 13): for 128 tokens, the answer under 300 KB as a client receives it (gzip,
which every HTTP client asks for) and our p50 at most half of the SAELens way's.

The SAELens way is the one benchmarks/analyze_latency.py times: a HookedSAETransformer with the same weights, every
SAE spliced in with its error term, run_with_cache_with_saes, then top-k and the active count per token. Our side
is Engine.analyze(text, layers=None, top_k=10), the request `{"text": ..., "layers": null}`. Both are timed in
turns, in a shuffled order each turn, so both meet the same drift of a shared machine's speed. The response bytes
are the worker's: the body json_bytes writes, and that body gzipped as app/serving/compression.py sends it;
`float64_bytes` is the same answer with its activations printed as float64 (17 digits), as the worker wrote them before.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import time
import zlib
from pathlib import Path

import orjson
import torch
from analyze_latency import saelens_way  # benchmarks/ is on sys.path: run as a script, or via scale.py

from app.serving.compression import GZIP_LEVEL
from app.serving.json_response import json_bytes
from app.training.evaluate import dashboard_sequences

TOP_K = 10  # the request's default
PROMPT_TOKENS = (128, 512)


def prompt_of(engine, n_tokens: int) -> str:
    """Held-out text that tokenises to exactly n_tokens tokens, BOS included."""
    tok = engine.model.tokenizer
    row = dashboard_sequences(engine, 1)[0, 1:].tolist()
    ids = row[: n_tokens - 1]
    for _ in range(8):  # decode-encode may merge differently: trim until it round-trips to the length
        text = tok.decode(ids)
        got = len(engine.tokenize(text)["tokens"])
        if got == n_tokens:
            return text
        ids = tok.encode(text, add_special_tokens=False)[: n_tokens - 1]
    raise RuntimeError(f"no text of exactly {n_tokens} tokens found")


def check_equal(body: dict, reference: list) -> None:
    """Our answer against the SAELens way's: the same active counts, and activations that are its float32 values."""
    for layer, (vals, _idx, l0) in zip(body["layers"], reference, strict=True):
        # the SAELens way splices each SAE in as reconstruction + error, which equals hook_z only to rounding, so
        # later layers see hook_z off by ~1e-7 and a pre-activation at the ReLU's edge can flip (seen: 1 token of
        # 512 at layer 5, standard SAEs); ours is TransformerLens's clean forward bit for bit
        off = [(a, b) for a, b in zip(layer["l0"], l0, strict=True) if a != b]
        assert all(abs(a - b) <= 1 for a, b in off) and len(off) <= max(1, len(l0) // 100), off
        for row, want in zip(layer["top_features"], vals, strict=True):
            got = [f["activation"] for f in row]
            want = [v for v in want if v > 0]
            assert len(got) == len(want)
            assert all(abs(a - b) <= 1e-4 * max(1.0, abs(b)) for a, b in zip(got, want, strict=True))


def as_float64_digits(body: dict) -> dict:
    """The same answer with each activation the exact float64 of its float32 value (17 printed digits)."""
    import numpy as np

    return {**body, "layers": [
        {**layer, "top_features": [[{**f, "activation": float(np.float32(f["activation"]))} for f in row]
                                   for row in layer["top_features"]]}
        for layer in body["layers"]]}


def timed(fn, reps: int) -> tuple[float, object]:
    """Median seconds of fn over reps calls, and its last result."""
    times, out = [], None
    for _ in range(reps):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def measure_analyze(engine, reps: int) -> dict:
    """p50 ms of Engine.analyze (all layers, top_k 10) against the SAELens way, interleaved, and the answer's bytes
    raw and gzipped, for 128- and 512-token prompts (each at most the model's context). The engine is left as it
    was (the SAELens way switches its SAEs' error term on while it runs)."""
    saes = [s.sae for s in engine.saes.values()]
    error_terms = [sae.use_error_term for sae in saes]
    try:
        return _measure(engine, saelens_way(engine, TOP_K), reps)
    finally:
        for sae, error_term in zip(saes, error_terms, strict=True):
            sae.use_error_term = error_term


def _measure(engine, reference, reps: int) -> dict:
    out: dict = {"threads": torch.get_num_threads(), "reps": reps, "top_k": TOP_K, "gzip_level": GZIP_LEVEL,
                 "prompts": {}}
    for n_tokens in PROMPT_TOKENS:
        if n_tokens > engine.model.cfg.n_ctx:
            continue
        text = prompt_of(engine, n_tokens)
        ways = {"engine": lambda text=text: engine.analyze(text, None, TOP_K),
                "saelens": lambda text=text: reference(text)}
        body = ways["engine"]()
        check_equal(body, ways["saelens"]())
        times: dict[str, list[float]] = {name: [] for name in ways}
        order, rng = list(ways), random.Random(0)
        for _ in range(reps):
            rng.shuffle(order)  # a new order each turn: neither way always follows the other
            for name in order:
                t0 = time.perf_counter()
                ways[name]()
                times[name].append(time.perf_counter() - t0)
        p50 = {name: 1000 * statistics.median(t) for name, t in times.items()}
        dump_s, raw = timed(lambda body=body: json_bytes(body), 5)
        levels = gzip_levels(raw)
        gz = zlib.compress(raw, GZIP_LEVEL, wbits=31)
        assert orjson.loads(zlib.decompress(gz, wbits=31)) == body
        out["prompts"][f"{n_tokens}_tokens"] = {
            "tokens": len(body["tokens"]),
            "engine_p50_ms": round(p50["engine"], 1), "saelens_p50_ms": round(p50["saelens"], 1),
            "ratio_p50_engine_over_saelens": round(p50["engine"] / p50["saelens"], 3),
            # the ratio within each turn, then its median: steadier where the machine's speed drifts between turns
            "paired_ratio_p50": round(statistics.median(e / r for e, r in zip(times["engine"], times["saelens"],
                                                                                strict=True)), 3),
            "raw_bytes": len(raw), "gzip_bytes": len(gz), "float64_bytes": len(orjson.dumps(as_float64_digits(body))),
            "serialise_ms": round(1000 * dump_s, 2), "gzip_ms": levels[str(GZIP_LEVEL)]["ms"], "gzip_levels": levels,
        }
    return out


def gzip_levels(raw: bytes) -> dict:
    """Bytes and median ms to gzip `raw` at levels 1 to 6 and 9, and ms to decompress (how GZIP_LEVEL was picked)."""
    out = {}
    for level in (1, 2, 3, 4, 5, 6, 9):
        seconds, gz = timed(lambda level=level: zlib.compress(raw, level, wbits=31), 5)
        inflate_s, _ = timed(lambda gz=gz: zlib.decompress(gz, wbits=31), 5)
        out[str(level)] = {"bytes": len(gz), "ms": round(1000 * seconds, 2),
                           "decompress_ms": round(1000 * inflate_s, 2)}
    return out


def load_gpt2_shape_engine():
    """The engine on the GPT-2-shape fixture, built once under the temp folder (reused while its done.json is
    there; while another process builds it, wait for that)."""
    from app.cli import _engine_from_settings
    from app.config import load_settings
    from app.training.synthetic import GPT2_SMALL, build

    root = Path(tempfile.gettempdir()) / "saex-scale"
    base = root / GPT2_SMALL.slug()
    for _ in range(1800):  # a build in progress has made the folder but not yet done.json
        if not base.is_dir() or (base / "done.json").is_file():
            break
        time.sleep(1)
    model_dir, sae_dirs = build(GPT2_SMALL, root, Path("artifacts/demo/model/tokenizer.json"))
    return _engine_from_settings(load_settings(model=str(model_dir), saes=[str(p) for p in sae_dirs]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    engine = load_gpt2_shape_engine()
    torch.set_num_threads(args.threads)
    print(json.dumps({"model": engine.info()["model"], **measure_analyze(engine, args.reps)}, indent=2))


if __name__ == "__main__":
    main()

"""Benchmark at the researcher's scale: a GPT-2-Small-shaped model (12 layers, d_model 768, 12 heads, random
weights) with 12 hook_z SAEs of 24,576 latents (TopK k=32, or ReLU with a bias set for L0 of about 64), built once
and cached under the temp folder. Each part runs in its own process (peak memory is that process's own) and is
a same-run ratio where a reference exists. Prints one JSON object.

    python benchmarks/scale.py [--parts worker,dashboards,store,analyze,steer] [--arch topk] [--tokens 4096]
                               [--threads 2] [--database-url postgresql+psycopg://postgres@127.0.0.1:5432/saex_scale]

- worker: `saex worker` start-up time (until /v1/info answers) and its RSS.
- dashboards: `saex dashboards build` in-process over a corpus of --tokens: peak RSS, pass tokens/s, and tokens/s
  of a bare forward pass plus the 12 encodes on the same tokens in the same process (target: peak <= 8 GB,
  pass >= 50% of bare). Written to the Postgres database of --database-url (created if missing).
- store: with every feature's dashboard stored (and one explanation per feature), `saex serve` alone; a second
  process loads it with random feature pages and searches (bounded: --load-concurrency clients for
  --load-seconds) while this one times feature pages and explanation searches one at a time: p50s, bytes per
  stored feature.
- analyze: p50 and response bytes at 128 and 512 tokens, all layers, vs the SAELens way (benchmarks/scale_analyze.py).
- steer: 32 new tokens, one intervention, vs TransformerLens's KV-cached generate (benchmarks/steering.py).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CACHE = Path(tempfile.gettempdir()) / "saex-scale"
TOKENIZER = ROOT / "artifacts" / "demo" / "model" / "tokenizer.json"
PARTS = ("worker", "dashboards", "store", "analyze", "steer")


def fixture(arch: str) -> tuple[Path, list[Path]]:
    from app.training.synthetic import GPT2_SMALL, build

    return build(dataclasses.replace(GPT2_SMALL, architecture=arch), CACHE, TOKENIZER)


def peak_rss_gb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)  # Linux: kilobytes


def ensure_database(url: str) -> None:
    if not url.startswith("postgresql"):
        return
    from sqlalchemy import create_engine, text

    admin = create_engine(url.rsplit("/", 1)[0] + "/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        name = url.rsplit("/", 1)[1]
        if not conn.execute(text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name}).first():
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()


def load_engine(arch: str):
    from app.engine.engine import Engine
    from app.engine.loading import attach_saes, load_model

    model_dir, sae_dirs = fixture(arch)
    model = load_model(str(model_dir))
    return Engine(model, attach_saes(model, [str(p) for p in sae_dirs]), f"gpt2-shape-{arch}")


# --- parts, each run in a child process ------------------------------------------------------------------------

def part_worker(args) -> dict:
    import httpx
    import psutil

    model_dir, sae_dirs = fixture(args.arch)
    port = free_port()
    cmd = [sys.executable, "-m", "app.cli", "worker", "--model", str(model_dir), "--port", str(port),
           "--threads", str(args.threads)] + [x for p in sae_dirs for x in ("--sae", str(p))]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(proc.stderr.read().decode()[-2000:])
            try:
                if httpx.get(f"http://127.0.0.1:{port}/v1/info", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.05)
        started = time.perf_counter() - t0
        httpx.post(f"http://127.0.0.1:{port}/v1/analyze", json={"text": "hello world " * 50}, timeout=60)
        rss = psutil.Process(proc.pid).memory_info().rss
    finally:
        proc.terminate()
        proc.wait(30)
    return {"startup_s": round(started, 2), "rss_gb_after_one_analyze": round(rss / 2**30, 2)}


def part_dashboards(args) -> dict:
    import torch

    from app.engine.features import capture, flat_z
    from app.jobs.dashboards import BuildParams, build, plan_layer_groups, run_pass
    from app.store.db import make_engine, make_sessionmaker, upgrade

    torch.set_num_threads(args.threads)
    engine = load_engine(args.arch)
    g = torch.Generator().manual_seed(0)
    T = 128
    corpus = torch.randint(0, engine.model.cfg.d_vocab, (max(1, args.tokens // T), T), generator=g)
    corpus[:, 0] = engine.model.tokenizer.bos_token_id
    rss_loaded = peak_rss_gb()
    hooks = [s.hook_name for s in engine.saes.values()]
    t0, c0 = time.perf_counter(), time.process_time()
    with torch.inference_mode():
        for i in range(0, corpus.shape[0], args.batch_size):
            zs = capture(engine.model, corpus[i : i + args.batch_size], hooks)
            for sae in engine.saes.values():
                sae.encode(flat_z(zs[sae.hook_name]))
            del zs
    bare = corpus.numel() / (time.perf_counter() - t0)
    bare_cpu = corpus.numel() / (time.process_time() - c0)  # CPU seconds: less moved by other processes' load
    params = BuildParams(corpus=f"random-{args.tokens}", tokens=int(corpus.numel()))
    memory = int(args.stats_memory_gb * 2**30)
    groups = plan_layer_groups(engine, sorted(engine.saes), params.top_k, memory)
    out = {"tokens": int(corpus.numel()), "batch_size": args.batch_size, "layer_groups": groups,
           "rss_gb_after_loading": rss_loaded, "bare_forward_plus_encode_tokens_per_s": round(bare, 1),
           "bare_tokens_per_cpu_s": round(bare_cpu, 1)}
    if args.pass_only:  # the corpus pass alone, as the build runs it (one pass per group of layers)
        t0, c0 = time.perf_counter(), time.process_time()
        for group in groups:
            stats = run_pass(engine, corpus, group, args.batch_size, params.top_k, progress=False)
            del stats
        seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
        return {**out, "pass_only": True, "peak_rss_gb": peak_rss_gb(), "pass_seconds": round(seconds, 1),
                "pass_tokens_per_s": round(corpus.numel() / seconds, 1),
                "pass_over_bare": round(corpus.numel() / seconds / bare, 3),
                "pass_tokens_per_cpu_s": round(corpus.numel() / cpu, 1),
                "pass_over_bare_cpu_time": round(corpus.numel() / cpu / bare_cpu, 3)}
    ensure_database(args.database_url)
    upgrade(args.database_url)
    db = make_engine(args.database_url)
    summary = build(engine, make_sessionmaker(db), corpus, params, model_slug=f"gpt2-shape-{args.arch}",
                    batch_size=args.batch_size, progress=False, stats_memory_bytes=memory)
    db.dispose()
    out.update(features_written=summary["features_written"], peak_rss_gb=peak_rss_gb())
    if summary["features_written"]:
        out.update(pass_tokens_per_s=round(summary["pass_tokens_per_s"], 1),
                   pass_over_bare=round(summary["pass_tokens_per_s"] / bare, 3),
                   pass_seconds=round(summary["pass_seconds"], 1), build_seconds=round(summary["seconds"], 1))
    return out


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def explanation_words() -> list[str]:
    """Words for synthetic explanations: the demo tokenizer's whole-word tokens (about 2,000), to be drawn with
    Zipf frequencies as words in real explanations are (a 20-word vocabulary made every search match a fifth of
    all rows)."""
    vocab = json.loads(TOKENIZER.read_text())["model"]["vocab"]
    words = sorted({w[1:].lower() for w in vocab if w.startswith("Ġ") and w[1:].isalpha() and len(w) > 3})
    random.Random(0).shuffle(words)  # Zipf ranks at random, not alphabetical
    return words


def zipf_sample(rng: random.Random, words: list[str], n: int) -> list[str]:
    weights = [1 / (i + 1) for i in range(len(words))]
    return rng.choices(words, weights=weights, k=n)


def ensure_explanations(url: str, model_slug: str) -> int:
    """One explanation of 4 to 9 Zipf-drawn words per stored feature (seeded), inserted once."""
    from sqlalchemy import delete, func, insert, select

    from app.store.db import make_engine
    from app.store.models import ExplanationRecord, FeatureRecord, ModelRecord, SAERecord

    db = make_engine(url)
    rng, words = random.Random(0), explanation_words()
    with db.begin() as conn:
        model_id = conn.scalar(select(ModelRecord.id).where(ModelRecord.slug == model_slug))
        saes = conn.execute(select(SAERecord.id, SAERecord.d_sae).where(SAERecord.model_id == model_id)).all()
        ours = ExplanationRecord.sae_id.in_([s for s, _ in saes])
        conn.execute(delete(ExplanationRecord).where(ours, ExplanationRecord.author == "bench"))  # an older scheme
        have = conn.scalar(select(func.count()).select_from(ExplanationRecord).where(ours))
        if not have:
            for sae_id, _ in saes:
                features = conn.scalars(select(FeatureRecord.index).where(FeatureRecord.sae_id == sae_id)).all()
                rows = [{"sae_id": sae_id, "feature": f, "text": " ".join(zipf_sample(rng, words, rng.randint(4, 9))),
                         "author": "bench-zipf", "source": "human"} for f in features]
                for i in range(0, len(rows), 5000):
                    conn.execute(insert(ExplanationRecord), rows[i : i + 5000])
        n = conn.scalar(select(func.count()).select_from(ExplanationRecord).where(ours))
    db.dispose()
    return int(n)


def store_bytes(url: str) -> dict:
    from sqlalchemy import func, select, text

    from app.store.db import make_engine
    from app.store.models import FeatureRecord

    db = make_engine(url)
    with db.connect() as conn:
        features = conn.scalar(select(func.count()).select_from(FeatureRecord))
        out = {"features_stored": int(features)}
        fired = conn.scalar(select(func.count()).select_from(FeatureRecord).where(FeatureRecord.max_activation > 0))
        out["features_that_fired"] = int(fired)
        if db.dialect.name == "postgresql":
            size = conn.scalar(text("SELECT pg_database_size(current_database())"))
            tables = conn.scalar(text("SELECT pg_total_relation_size('features') + pg_total_relation_size('examples')"))
            out.update(database_bytes=int(size), bytes_per_feature_database=round(size / max(1, features)),
                       bytes_per_feature_features_and_examples=round(tables / max(1, features)),
                       bytes_per_fired_feature_features_and_examples=round(tables / max(1, fired)))
    db.dispose()
    return out


async def _load(base: str, paths: list[str], concurrency: int, seconds: float) -> dict:
    import httpx

    latencies, errors = [], 0
    deadline = time.perf_counter() + seconds

    async def client(seed: int) -> None:
        nonlocal errors
        rng = random.Random(seed)
        async with httpx.AsyncClient(base_url=base, timeout=30) as c:
            while time.perf_counter() < deadline:
                t0 = time.perf_counter()
                r = await c.get(rng.choice(paths))
                errors += r.status_code != 200
                latencies.append(time.perf_counter() - t0)

    await asyncio.gather(*(client(i) for i in range(concurrency)))
    return {"requests": len(latencies), "errors": errors,
            "p50_ms": round(1000 * statistics.median(latencies), 1) if latencies else None}


def part_load(args) -> dict:
    """The second process of the store part: bounded load on the web app."""
    paths = json.loads(args.paths)
    return asyncio.run(_load(args.base, paths, args.load_concurrency, args.load_seconds))


def part_store(args) -> dict:
    import httpx

    slug = f"gpt2-shape-{args.arch}"
    n_explanations = ensure_explanations(args.database_url, slug)
    port = free_port()
    env = {**os.environ, "DATABASE_URL": args.database_url, "SAEX_MODEL_SLUG": slug}
    log = open(Path(tempfile.gettempdir()) / "saex-scale-serve.log", "wb")  # a pipe nobody reads would fill and
    server = subprocess.Popen([sys.executable, "-m", "app.cli", "serve", "--port", str(port), "--worker-url",
                               "http://127.0.0.1:9"], env=env, stdout=subprocess.DEVNULL, stderr=log)  # block it
    base = f"http://127.0.0.1:{port}"
    rng = random.Random(1)
    features = [(rng.randrange(12), rng.randrange(24576)) for _ in range(400)]
    api = [f"/api/v1/saes/L{layer}/features/{f}" for layer, f in features]  # the first model: SAEX_MODEL_SLUG
    pages = [f"/{slug}/L{layer}/{f}" for layer, f in features]
    words = explanation_words()
    searches = [f"/api/v1/explanations/search?q={'+'.join(zipf_sample(rng, words, 2))}" for _ in range(100)]
    try:
        for _ in range(600):
            try:
                if httpx.get(base + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        with httpx.Client(base_url=base, timeout=30) as c:
            c.get(api[0])  # token texts are read once per process
            load = subprocess.Popen([sys.executable, __file__, "--part", "_load", "--base", base, "--paths",
                                     json.dumps(pages[:200] + searches[:50]), "--load-concurrency",
                                     str(args.load_concurrency), "--load-seconds", str(args.load_seconds)],
                                    stdout=subprocess.PIPE, text=True)
            timed: dict[str, list[float]] = {"feature_json": [], "feature_page": [], "explanation_search": []}
            statuses: dict[str, set[int]] = {k: set() for k in timed}
            sizes: list[int] = []
            deadline = time.perf_counter() + args.load_seconds * 0.9
            i = 0
            while time.perf_counter() < deadline:
                for name, url in (("feature_json", api[i % len(api)]), ("feature_page", pages[-1 - i % 200]),
                                  ("explanation_search", searches[i % len(searches)])):
                    t0 = time.perf_counter()
                    r = c.get(url)
                    timed[name].append(time.perf_counter() - t0)
                    statuses[name].add(r.status_code)
                    if name == "feature_json":
                        sizes.append(len(r.content))
                i += 1
            background = json.loads(load.communicate()[0].strip().splitlines()[-1])
    finally:
        server.terminate()
        server.wait(30)
        log.close()
    out = {name: {"p50_ms": round(1000 * statistics.median(v), 1), "n": len(v), "statuses": sorted(statuses[name]),
                  "p95_ms": round(1000 * sorted(v)[int(0.95 * (len(v) - 1))], 1)} for name, v in timed.items()}
    out["feature_json"]["median_bytes"] = int(statistics.median(sizes))
    out.update(background_load={"concurrency": args.load_concurrency, "seconds": args.load_seconds, **background},
               explanations_stored=n_explanations, **store_bytes(args.database_url))
    return out


def part_analyze(args) -> dict:
    import torch

    sys.path.insert(0, str(Path(__file__).parent))
    from scale_analyze import measure_analyze

    torch.set_num_threads(args.threads)
    return measure_analyze(load_engine(args.arch), args.reps)


def part_steer(args) -> dict:
    import torch

    sys.path.insert(0, str(Path(__file__).parent))
    from steering import measure_steering

    torch.set_num_threads(args.threads)
    return measure_steering(load_engine(args.arch), args.reps)


def run_child(part: str, args) -> dict:
    cmd = [sys.executable, __file__, "--part", part, "--arch", args.arch, "--tokens", str(args.tokens),
           "--threads", str(args.threads), "--database-url", args.database_url, "--reps", str(args.reps),
           "--batch-size", str(args.batch_size), "--stats-memory-gb", str(args.stats_memory_gb),
           *(["--pass-only"] if args.pass_only else []),
           "--load-concurrency", str(args.load_concurrency), "--load-seconds", str(args.load_seconds)]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    run = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    if run.returncode != 0:
        return {"error": run.stderr[-3000:]}
    return json.loads(run.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", default=",".join(PARTS))
    parser.add_argument("--part", help=argparse.SUPPRESS)
    parser.add_argument("--arch", default="topk", choices=["topk", "standard"])
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--stats-memory-gb", type=float, default=4.0)
    parser.add_argument("--pass-only", action="store_true", help="dashboards: time the corpus pass, write nothing")
    parser.add_argument("--database-url", default="postgresql+psycopg://postgres@127.0.0.1:5432/saex_scale")
    parser.add_argument("--load-concurrency", type=int, default=4)
    parser.add_argument("--load-seconds", type=float, default=20)
    parser.add_argument("--base", help=argparse.SUPPRESS)
    parser.add_argument("--paths", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.part:
        sys.path.insert(0, str(ROOT))
        fn = {"worker": part_worker, "dashboards": part_dashboards, "store": part_store, "analyze": part_analyze,
              "steer": part_steer, "_load": part_load}[args.part]
        print(json.dumps(fn(args)))
        return
    fixture(args.arch)  # built once, before anything is timed
    result = {"shape": "GPT-2 Small: 12 layers, d_model 768, 12 heads x 64, d_vocab 50257; 12 SAEs x 24,576",
              "arch": args.arch, "threads": args.threads}
    for part in args.parts.split(","):
        result[part] = run_child(part, args)
        print(f"scale: {part} done", file=sys.stderr)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

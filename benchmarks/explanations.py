"""Benchmark and sanity check of automatic explanations on the demo SAEs: for a seeded sample of features, the
embedded language model's explanation (delphi's protocol), the baseline from dashboard statistics, and a shuffled
explanation (another feature's language-model explanation) are each scored by detection, fuzzing and embedding.
Shuffled explanations must score near chance (0.5): that is how we know the scorers measure something. Also the
throughput: features explained and scored per minute with the embedded model on this machine.

    python benchmarks/explanations.py [--sae-id L1] [--features 16] [--threads 1] [--llm-url URL --llm-model NAME]

Needs the demo's dashboards in the store (`saex dashboards build`). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import time

import torch

from app.cli_engine import engine_from_settings
from app.config import load_settings
from app.interpret import explainers, pipeline
from app.interpret.clients import make_client
from app.interpret.embedding import Embedder
from app.interpret.examples import ExampleConfig, TooFewExamples, from_dashboard
from app.jobs.explain import CandidatePool
from app.store import dashboards
from app.store.db import make_engine, make_sessionmaker

SCORERS = ["detection", "fuzzing", "embedding"]


def distribution(values: list[float]) -> dict:
    values = sorted(v for v in values if v is not None)
    if not values:
        return {"n": 0}
    q = statistics.quantiles(values, n=4) if len(values) > 1 else [values[0]] * 3
    return {"n": len(values), "mean": round(statistics.mean(values), 3), "q1": round(q[0], 3),
            "median": round(q[1], 3), "q3": round(q[2], 3)}


async def main_async(args) -> dict:
    settings = load_settings(threads=args.threads, llm_url=args.llm_url, llm_model=args.llm_model)
    torch.set_num_threads(args.threads)
    engine = engine_from_settings(settings)
    factory = make_sessionmaker(make_engine(settings.resolved_database_url))
    embedder = Embedder.shared()
    llm = make_client(url=settings.llm_url, model=settings.llm_model, api_key=None, max_in_flight=4,
                      budget_requests=None)
    config = ExampleConfig(n_test=args.n_test, n_non_activating=args.n_test)

    async def embed(texts):
        return embedder.embed(texts)

    with factory() as session:
        sae = dashboards.find_sae(session, sae_slug=args.sae_id, model_slug=settings.served_slug())
        pool = CandidatePool.build(engine, session, sae, config.ctx_len)
        built = sorted(dashboards.built_features(session, sae=sae))
        chosen = random.Random(args.seed).sample(built, min(len(built), 3 * args.features))
        cases = []
        for f in chosen:
            board = dashboards.read_dashboard(session, sae=sae, feature=f)
            try:
                cases.append((f, board, from_dashboard(board, config)))
            except TooFewExamples:
                continue
            if len(cases) == args.features:
                break
    t0 = time.perf_counter()
    llm_texts, explain_s = [], []
    for _, _board, ex in cases:
        t = time.perf_counter()
        explained = await explainers.explain_llm(llm, ex.train, ex.max_activation)
        explain_s.append(time.perf_counter() - t)
        llm_texts.append(explained.text)
    kinds = {"llm": llm_texts,
             "baseline": [explainers.explain_baseline(b, layer=sae.layer).text for _, b, _ in cases],
             "shuffled": [llm_texts[(i + 1) % len(llm_texts)] for i in range(len(cases))]}
    results = {k: {s: [] for s in SCORERS} for k in kinds}
    score_s = []
    for i, (f, _, ex) in enumerate(cases):
        non = pool.non_activating(f, config.n_non_activating, config.seed)
        for kind, texts in kinds.items():
            t = time.perf_counter()
            scored = await pipeline.score(texts[i], ex, non, SCORERS, llm=llm, embed=embed)
            if kind == "llm":
                score_s.append(time.perf_counter() - t)
            for s in SCORERS:
                m = "auroc" if s == "embedding" else "balanced_accuracy"
                results[kind][s].append(scored.scores[s][m])
                if s != "embedding":
                    results[kind].setdefault(f"{s}_auroc", []).append(scored.scores[s]["auroc"])
    total = sum(explain_s) + sum(score_s)
    return {
        "sae": args.sae_id, "features": [f for f, _, _ in cases], "llm": llm.name, "threads": args.threads,
        "test_examples": config.n_test, "non_activating": config.n_non_activating,
        "explain_seconds_per_feature": round(statistics.mean(explain_s), 2),
        "score_seconds_per_feature_3_scorers": round(statistics.mean(score_s), 2),
        "features_explained_and_scored_per_minute": round(60 * len(cases) / total, 2),
        "wall_seconds": round(time.perf_counter() - t0, 1),
        "scores": {k: {s: distribution(v) for s, v in r.items()} for k, r in results.items()},
        "examples": [{"feature": f, "llm": kinds["llm"][i], "baseline": kinds["baseline"][i]}
                     for i, (f, _, _) in enumerate(cases[:8])],
    }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--sae-id", default="L1")
    p.add_argument("--features", type=int, default=16)
    p.add_argument("--n-test", type=int, default=20)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--llm-url")
    p.add_argument("--llm-model")
    print(json.dumps(asyncio.run(main_async(p.parse_args())), indent=1))


if __name__ == "__main__":
    main()

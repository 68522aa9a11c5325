"""The `saex explain` command: explain and score an SAE's features into the store (`saex explain`), score any
text without storing it (`saex explain score`), and embed stored explanations for semantic search
(`saex explain embed`); heavy imports happen inside the commands."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

from app.config import load_settings


def add_parser(sub, model_args) -> None:
    e = sub.add_parser("explain", help="explain and score SAE features (delphi-style), or score a given text")
    e.add_argument("action", nargs="?", choices=["run", "score", "embed"], default="run",
                   help="run (default): explain features into the store; score: print the scores of --text for "
                   "--feature without storing anything; embed: embed stored explanations for semantic search")
    model_args(e)
    e.add_argument("--sae-id", dest="sae_id", help="the SAE's id in the store, e.g. L1 (default: every SAE served)")
    e.add_argument("--features", default="all", help="'all', a range such as 0-99, or indices such as 5,17")
    e.add_argument("--feature", type=int, help="score: the feature")
    e.add_argument("--text", help="score: the explanation to score")
    e.add_argument("--explainer", choices=["baseline", "llm"], default="baseline")
    e.add_argument("--scorers", default="embedding",
                   help="comma-separated: detection, fuzzing, embedding (detection and fuzzing need a language "
                   "model); '' for none")
    e.add_argument("--limit", type=int, help="explain at most this many features this run")
    e.add_argument("--concurrency", type=int, default=4, help="features in progress at once")
    e.add_argument("--llm-url", help="an OpenAI-compatible server, e.g. http://127.0.0.1:8081/v1 (default: the "
                   "embedded SmolLM2-135M-Instruct, in this process)")
    e.add_argument("--llm-model", help="the model name that server expects")
    e.add_argument("--no-log-probs", action="store_true", help="scorers ask for no log-probabilities (no AUROC)")
    e.add_argument("--delphi-dir", type=Path, help="also write delphi's result folder (explanations/, scores/) here")
    e.add_argument("--threads", type=int, help="torch threads")
    e.add_argument("--quiet", action="store_true")
    e.set_defaults(func=cmd_explain)


def cmd_explain(args: argparse.Namespace) -> int:
    try:
        settings = load_settings(args.config, model=args.model, saes=args.sae, threads=args.threads,
                                 model_slug=args.model_slug, sae_set=args.sae_set, llm_url=args.llm_url,
                                 llm_model=args.llm_model)
        scorers = [s.strip() for s in args.scorers.split(",") if s.strip()]
        if args.action == "score" and (args.feature is None or not args.text or not args.sae_id):
            raise ValueError("score needs --sae-id, --feature and --text")
    except ValueError as exc:
        print(f"saex explain: {exc}", file=sys.stderr)
        return 2
    from app.cli_engine import engine_from_settings
    from app.engine.loading import LoadError
    from app.interpret.clients import make_client
    from app.interpret.embedding import Embedder
    from app.interpret.pipeline import NeedsLanguageModel
    from app.store.db import make_engine, make_sessionmaker, upgrade

    url = settings.resolved_database_url
    upgrade(url)
    factory = make_sessionmaker(make_engine(url))
    needs_llm = args.explainer == "llm" or any(s != "embedding" for s in scorers)
    try:
        if args.action == "embed":
            return _embed(factory, Embedder.shared())
        engine = engine_from_settings(settings)
        llm = make_client(url=settings.llm_url, model=settings.llm_model, api_key=settings.llm_api_key,
                          max_in_flight=settings.llm_max_in_flight,
                          budget_requests=settings.llm_budget_requests) if needs_llm else None
        embed = Embedder.shared().embed if "embedding" in scorers else None
        if args.action == "score":
            print(json.dumps(_score(engine, factory, settings.served_slug(), args, scorers, llm, embed), indent=1))
            return 0
        return _run(engine, factory, settings.served_slug(), args, scorers, llm, embed)
    except (LoadError, ValueError, NeedsLanguageModel, RuntimeError, OSError) as exc:
        print(f"saex explain: {exc}", file=sys.stderr)
        return 2


def _run(engine, factory, model_slug: str, args, scorers, llm, embed) -> int:
    from app.jobs.explain import RunParams, run

    params = RunParams(explainer=args.explainer, scorers=scorers, limit=args.limit, concurrency=args.concurrency,
                       log_probs=not args.no_log_probs, delphi_dir=args.delphi_dir)
    sae_ids = [args.sae_id] if args.sae_id else [s.sae_id for s in engine.saes.values()]
    for sae_id in sae_ids:
        summary = run(engine, factory, sae_id, model_slug, args.features, params, llm, embed,
                      progress=not args.quiet)
        print(json.dumps(summary))
        if summary["explained"]:  # what was written is found by meaning too (semantic search)
            from app.interpret.embedding import Embedder

            _embed(factory, Embedder.shared())
        if summary["stopped"]:
            print(f"saex explain: stopped: {summary['stopped']}", file=sys.stderr)
            return 3
    return 0


def _score(engine, factory, model_slug: str, args, scorers, llm, embed) -> dict:
    from app.interpret import pipeline
    from app.interpret.examples import from_dashboard
    from app.jobs.explain import CandidatePool
    from app.store import dashboards

    with factory() as session:
        sae = dashboards.find_sae(session, sae_slug=args.sae_id, model_slug=model_slug)
        if sae is None:
            raise ValueError(f"no SAE {args.sae_id!r} of model {model_slug!r} in the store")
        if not 0 <= args.feature < sae.d_sae:
            raise ValueError(f"--feature {args.feature}: features of {sae.slug} are 0 to {sae.d_sae - 1}")
        dashboard = dashboards.read_dashboard(session, sae=sae, feature=args.feature)
        if dashboard is None:
            raise ValueError(f"feature {args.feature} of {sae.slug} has no dashboard: build dashboards first")
        examples = from_dashboard(dashboard)
        pool = CandidatePool.build(engine, session, sae, 32)
    non = pool.non_activating(args.feature, 30, 22)

    async def embed_async(texts):
        return embed(texts)

    result = asyncio.run(pipeline.score(args.text, examples, non, scorers, llm=llm,
                                        embed=embed_async if embed else None))
    return {"sae_id": sae.slug, "feature": args.feature, "text": args.text, "scores": result.scores,
            "score": result.headline}


def _embed(factory, embedder) -> int:
    from app.store import explanation_embeddings

    with factory() as session, session.begin():
        n = explanation_embeddings.embed_explanations(session, embedder.embed, model=embedder.name)
    print(json.dumps({"embedded": n, "model": embedder.name}))
    return 0

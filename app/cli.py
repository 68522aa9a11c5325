"""The `saex` command line: parses arguments and calls one function per command; heavy imports (torch) happen
inside the commands that need them, so `saex --help` is instant."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from app.cli_engine import engine_from_settings as _engine_from_settings
from app.cli_store import cmd_db, cmd_interop, cmd_keys
from app.config import load_settings
from app.serving.server_options import uvicorn_options


def _serve(app, executor=None, **config) -> int:
    """uvicorn with `config`; with an executor (a MainThreadExecutor), the server runs on a thread of its own and
    the engine's calls on this, the main thread (faster there, see MainThreadExecutor). SIGINT and SIGTERM end it
    gracefully either way: requests in flight are answered first."""
    import signal
    import threading

    import uvicorn

    from app.serving.memory import freeze_loaded_objects

    server = uvicorn.Server(uvicorn.Config(app, **config))
    freeze_loaded_objects()  # start-up is done: what exists now lives as long as the process
    if executor is None:
        server.run()
        return 0 if server.started else 1
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, server.handle_exit)
    thread = threading.Thread(target=server.run, name="http", daemon=True)
    thread.start()
    executor.run_until(lambda: not thread.is_alive())
    thread.join()
    return 0 if server.started else 1  # it never started: the port is taken, say (uvicorn said why)


def cmd_worker(args: argparse.Namespace) -> int:
    from app.engine.loading import LoadError
    from app.worker.queue import MainThreadExecutor
    from app.worker.service import create_worker_app

    try:
        settings = load_settings(args.config, model=args.model, saes=args.sae, device=args.device,
                                 threads=args.threads, queue_size=args.queue_size, model_slug=args.model_slug,
                                 sae_set=args.sae_set)
        engine = _engine_from_settings(settings)
    except (LoadError, ValueError) as exc:
        print(f"saex worker: {exc}", file=sys.stderr)
        return 2
    info = engine.info()
    saes = ", ".join(f"{s['id']} (layer {s['layer']})" for s in info["saes"])
    print(f"saex worker: model {info['model']['name']!r}, SAE set {engine.sae_set!r}: {saes}; serving on "
          f"http://{args.host}:{args.port}", file=sys.stderr)
    executor = MainThreadExecutor()
    app = create_worker_app(engine, settings.queue_size, settings.time_budget_s, executor, settings.worker_token)
    # our own JSON request log replaces uvicorn's access log, which prints query strings
    return _serve(app, executor, host=args.host, port=args.port, log_level="warning", access_log=False,
                  **uvicorn_options(trusted_proxies=settings.trusted_proxies))


def cmd_serve(args: argparse.Namespace) -> int:
    from app.store.db import upgrade
    from app.web.app import create_web_app
    from app.worker.queue import MainThreadExecutor

    try:
        settings = load_settings(args.config, model=args.model, saes=args.sae, device=args.device,
                                 worker_urls=args.worker_url, queue_size=args.queue_size, threads=args.threads,
                                 model_slug=args.model_slug, sae_set=args.sae_set)
        if settings.secret_key:  # a guessable secret refuses at once, before the model loads
            from app.web.auth import check_secret

            check_secret(settings.secret_key)
        upgrade(settings.resolved_database_url)
        engine, worker_app, executor = None, None, None
        if not settings.worker_urls:  # the embedded default: an in-process worker, missing dashboards built behind it
            from app.worker.service import create_worker_app

            engine = _engine_from_settings(settings)
            executor = MainThreadExecutor()
            worker_app = create_worker_app(engine, settings.queue_size, settings.time_budget_s, executor,
                                           settings.worker_token)
        app = create_web_app(settings, worker_app)
    except ValueError as exc:  # bad settings, or a model/SAE that cannot be served (LoadError is a ValueError)
        print(f"saex serve: {exc}", file=sys.stderr)
        return 2
    background = None
    if engine is not None and args.dashboard_tokens > 0:
        background = _start_dashboard_build(engine, settings, args)
    print(f"saex serve: http://{args.host}:{args.port}/", file=sys.stderr)
    try:
        return _serve(app, executor, host=args.host, port=args.port, log_level="warning", access_log=False,
                      **uvicorn_options(trusted_proxies=settings.trusted_proxies))
    finally:
        if background is not None:
            background.stop()


def _start_dashboard_build(engine, settings, args: argparse.Namespace):
    """Start building whatever dashboards are missing (nothing, once they exist) over the held-out corpus, in a
    child process that records its progress in the store while the server answers; returns its BackgroundBuild."""
    from app.jobs.background import BackgroundBuild, build_command
    from app.jobs.dashboards import register
    from app.store.build_runs import start_run
    from app.store.db import make_engine, make_sessionmaker, transaction

    factory = make_sessionmaker(make_engine(settings.resolved_database_url))
    with transaction(factory) as session:
        register(session, engine, engine.name)  # feature pages can say "not built yet" from the start
        run_id = start_run(session, model_slug=engine.name).id
    argv = build_command(run_id, tokens=args.dashboard_tokens, model_slug=engine.name, model=args.model,
                         saes=args.sae, config=args.config, device=args.device, sae_set=engine.sae_set)
    return BackgroundBuild(factory, run_id, argv)


def _ensure_dashboards(engine, settings, tokens: int) -> None:
    """Build whatever dashboards are missing, in the foreground: for the benchmarks and tests that need them built
    before they serve (`saex serve` builds them in the background, see _start_dashboard_build)."""
    from app.jobs.corpus import load_corpus
    from app.jobs.dashboards import BuildParams, build
    from app.store.db import make_engine, make_sessionmaker

    corpus, name = load_corpus(engine, "stdlib", tokens)
    db = make_engine(settings.resolved_database_url)
    build(engine, make_sessionmaker(db), corpus, BuildParams(corpus=name, tokens=int(corpus.numel())),
          model_slug=engine.name, work_dir=settings.data_dir / "builds")
    from app.jobs.explain import baseline_where_missing

    baseline_where_missing(make_sessionmaker(db), engine.name)  # as a first run does: no feature a bare id
    db.dispose()


def cmd_eval(args: argparse.Namespace) -> int:
    from app.engine.loading import LoadError
    from app.training.evaluate import evaluate_engine

    try:
        engine = _engine_from_settings(load_settings(args.config, model=args.model, saes=args.sae))
    except (LoadError, ValueError) as exc:
        print(f"saex eval: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(evaluate_engine(engine, n_sequences=args.sequences), indent=2))
    return 0


def cmd_dashboards(args: argparse.Namespace) -> int:
    import os

    from app.engine.loading import LoadError
    from app.jobs.corpus import load_corpus
    from app.jobs.dashboards import BuildParams, build
    from app.jobs.progress import RunRecorder
    from app.store.db import make_engine, make_sessionmaker, upgrade

    if args.nice:
        os.nice(args.nice)
    try:
        settings = load_settings(args.config, model=args.model, saes=args.sae, device=args.device,
                                 threads=args.threads, model_slug=args.model_slug, sae_set=args.sae_set)
    except ValueError as exc:
        print(f"saex dashboards: {exc}", file=sys.stderr)
        return 2
    url = settings.resolved_database_url
    upgrade(url)
    db = make_engine(url)
    factory = make_sessionmaker(db)
    # a run that `saex serve` started records everything, load errors too; one of our own starts with the build
    run = RunRecorder(factory, args.run_id, parent_pid=args.parent_pid) if args.run_id is not None else None
    try:
        engine = _engine_from_settings(settings)
        corpus, name = load_corpus(engine, args.corpus, args.tokens)
        layers = args.layers or None
        if layers and (bad := [x for x in layers if x not in engine.saes]):
            raise ValueError(f"no SAE on layers {bad}; layers with SAEs: {sorted(engine.saes)}")
    except (LoadError, ValueError, OSError) as exc:
        if run is not None:
            run.fail(str(exc))
        print(f"saex dashboards: {exc}", file=sys.stderr)
        return 2
    pass_fn = None
    if args.ray_address or args.ray:
        from app.jobs.ray_pass import ray_pass

        pass_fn = ray_pass(settings, address=args.ray_address or "auto", shards=args.shards)
    params = BuildParams(corpus=name, tokens=int(corpus.numel()))
    run = run or RunRecorder.start(factory, model_slug=engine.name)
    try:
        summary = build(engine, factory, corpus, params, model_slug=engine.name, layers=layers,
                        batch_size=args.batch_size, work_dir=settings.data_dir / "builds", pass_fn=pass_fn,
                        stats_memory_bytes=int(args.stats_memory_gb * 2**30),
                        checkpoint_seconds=args.checkpoint_seconds, progress=not args.quiet, on_progress=run)
        if not args.no_explain:  # no feature shown as a bare id: a baseline explanation where there is none
            from app.jobs.explain import baseline_where_missing

            summary["baseline_explanations"] = baseline_where_missing(factory, engine.name, progress=not args.quiet)
            summary["embedded_explanations"] = _embed_new_explanations(factory)
    except BaseException as exc:  # the page says why; the traceback goes to the log
        run.fail(exc)
        raise
    run.finish(summary)
    db.dispose()
    print(json.dumps(summary))
    return 0


def _embed_new_explanations(factory) -> int | str:
    """Sentence embeddings of the explanations that have none, for semantic search (~200 a second); the reason
    instead when the embedding model is not installed."""
    from app.interpret.embedding import Embedder
    from app.store import explanation_embeddings

    try:
        embedder = Embedder.shared()
    except (RuntimeError, OSError) as exc:
        return f"skipped: {exc}"
    with factory() as session, session.begin():
        return explanation_embeddings.embed_explanations(session, embedder.embed, model=embedder.name)


def cmd_train(args: argparse.Namespace) -> int:
    from app.training import commands

    return commands.run(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="saex", description="SAE Explorer: attention-output SAE features")
    sub = parser.add_subparsers(dest="command", required=True)

    def model_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--model", help="model folder or TransformerLens name (default: the embedded demo)")
        p.add_argument("--sae", action="append", help="SAE folder, Kissane .pt file or release:id, or id=any of "
                       "those to give it an id (default id: L<layer>); repeat per layer")
        p.add_argument("--config", type=Path, help="TOML file with the same settings (model, saes, device, ...)")
        p.add_argument("--model-slug", help="the model's name in URLs, the API and the store (default: 'demo', or "
                       "the model folder's name)")
        p.add_argument("--sae-set", help="the name of this set of SAEs (default: 'default')")

    w = sub.add_parser("worker", help="serve the model-backed API (/v1/...)")
    model_args(w)
    w.add_argument("--port", type=int, default=8001)
    w.add_argument("--host", default="127.0.0.1")
    w.add_argument("--device", choices=["cpu", "cuda"])
    w.add_argument("--threads", type=int, help="torch threads")
    w.add_argument("--queue-size", type=int, help="requests that may wait before the worker answers 503")
    w.set_defaults(func=cmd_worker)

    v = sub.add_parser("serve", help="the web app (with an in-process worker unless --worker-url is given)")
    model_args(v)
    v.add_argument("--port", type=int, default=8000)
    v.add_argument("--host", default="127.0.0.1")
    v.add_argument("--worker-url", action="append", help="an inference worker (repeat to spread load over several)")
    v.add_argument("--device", choices=["cpu", "cuda"])
    v.add_argument("--threads", type=int, help="torch threads of the in-process worker")
    v.add_argument("--queue-size", type=int)
    v.add_argument("--dashboard-tokens", type=int, default=131_072,
                   help="corpus tokens for the dashboards that the in-process default builds in the background while "
                   "it serves, when some are missing (0: build none)")
    v.set_defaults(func=cmd_serve)

    e = sub.add_parser("eval", help="reconstruction metrics of each SAE on the dashboard corpus")
    model_args(e)
    e.add_argument("--sequences", type=int, default=64)
    e.set_defaults(func=cmd_eval)

    d = sub.add_parser("db", help="database migrations")
    d.add_argument("action", choices=["upgrade"])
    d.add_argument("--config", type=Path)
    d.set_defaults(func=cmd_db)

    b = sub.add_parser("dashboards", help="build feature dashboards into the store")
    b.add_argument("action", choices=["build"])
    model_args(b)
    b.add_argument("--tokens", type=int, default=262_144, help="corpus tokens to stream through the model")
    b.add_argument("--corpus", default="stdlib", help="'stdlib' (held-out Python standard library), a .txt file or "
                   "a .npy array of token ids")
    b.add_argument("--layers", type=int, nargs="*", help="layers to build (default: all)")
    b.add_argument("--batch-size", type=int, default=8, help="sequences per forward pass")
    b.add_argument("--stats-memory-gb", type=float, default=4.0,
                   help="memory for the statistics of the layers sharing one corpus pass; layers beyond it take "
                   "further passes (GPT-2 Small's 24,576-feature SAEs: 0.5 GB a layer)")
    b.add_argument("--device", choices=["cpu", "cuda"])
    b.add_argument("--ray", action="store_true", help="run corpus shards as tasks on the Ray cluster ('auto')")
    b.add_argument("--ray-address", help="address of an existing Ray cluster")
    b.add_argument("--shards", type=int, default=4)
    b.add_argument("--checkpoint-seconds", type=float, default=60.0,
                   help="save the pass's state this often, so that a killed build resumes (default 60)")
    b.add_argument("--threads", type=int, help="torch threads")
    b.add_argument("--nice", type=int, default=0, help="lower this process's CPU priority by this much")
    b.add_argument("--quiet", action="store_true", help="no progress bars (progress is recorded in the store)")
    b.add_argument("--no-explain", action="store_true", help="write no baseline explanations for the features "
                   "that have none (by default each gets one from its dashboard statistics, ~10 ms a feature)")
    b.add_argument("--run-id", type=int, help=argparse.SUPPRESS)  # the dashboard run `saex serve` started for it
    b.add_argument("--parent-pid", type=int, help=argparse.SUPPRESS)  # stop once this process (saex serve) is gone
    b.set_defaults(func=cmd_dashboards)

    k = sub.add_parser("keys", help="API keys for writes")
    k.add_argument("action", choices=["create", "revoke", "list"])
    k.add_argument("--name", default="key")
    k.add_argument("--id", type=int)
    k.add_argument("--admin", action="store_true", help="create an admin key: it may edit or delete anyone's "
                   "explanations, and sees /ready's detail")
    k.add_argument("--config", type=Path)
    k.set_defaults(func=cmd_keys)

    for action, what in (("export", "write"), ("import", "read")):
        x = sub.add_parser(action, help=f"{what} one SAE's dashboards and explanations in Neuronpedia's export layout")
        x.add_argument("format", choices=["neuronpedia"])
        x.add_argument("--model-slug", default="demo", help="the model's name in the store")
        x.add_argument("--sae", required=True, help="the SAE's id within the model, e.g. L0")
        x.add_argument("--config", type=Path)
        if action == "export":
            x.add_argument("--out", type=Path, required=True, help="a new folder: the source folder "
                           "(Neuronpedia's exports/<modelId>/<sourceId>/)")
            x.add_argument("--source-set", default="att-saex", help="Neuronpedia source set; the source id is "
                           "'<layer>-<set>'")
            x.add_argument("--neuronpedia-model", help="Neuronpedia's model id (default: the model slug)")
            x.add_argument("--batch-size", type=int, default=1024, help="features a batch file")
        else:
            x.add_argument("folder", type=Path, help="a Neuronpedia source folder (features/, activations/, "
                           "explanations/); the model and SAE must be in the store already")
        x.set_defaults(func=cmd_interop)

    from app import cli_explain, cli_interop, cli_llm

    cli_explain.add_parser(sub, model_args)
    cli_llm.add_parser(sub)
    cli_interop.add_parsers(sub)

    t = sub.add_parser("train", help="build the embedded default: corpus, tokenizer, model, SAEs")
    from app.training.commands import add_train_parsers

    add_train_parsers(t)
    t.set_defaults(func=cmd_train)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command in ("serve", "worker"):
        from app.serving.request_log import configure_logging

        configure_logging()
    from sqlalchemy.exc import OperationalError

    try:
        return args.func(args)
    except OperationalError as exc:  # a database that is down, unknown or refuses us: say which, no traceback
        reason = str(exc.orig if exc.orig is not None else exc).strip().splitlines()[0]
        print(f"saex {args.command}: cannot use the database ({reason}); check DATABASE_URL and that the server "
              "is up", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

"""The `saex` command line: parses arguments and calls one function per command; heavy imports (torch) happen
inside the commands that need them, so `saex --help` is instant."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from app.config import load_settings, use_offline_hub


def _engine_from_settings(settings):
    import torch

    from app.engine.engine import Engine
    from app.engine.loading import attach_saes, load_model

    if settings.threads:
        torch.set_num_threads(settings.threads)
    use_offline_hub()
    model = load_model(settings.model_spec(), settings.device)
    saes = attach_saes(model, settings.sae_specs(), settings.device)
    name = "demo" if settings.model is None else Path(settings.model).name or settings.model
    return Engine(model, saes, name)


def cmd_worker(args: argparse.Namespace) -> int:
    import uvicorn

    from app.engine.loading import LoadError
    from app.worker.service import create_worker_app

    try:
        settings = load_settings(args.config, model=args.model, saes=args.sae, device=args.device,
                                 threads=args.threads, queue_size=args.queue_size)
        engine = _engine_from_settings(settings)
    except (LoadError, ValueError) as exc:
        print(f"saex worker: {exc}", file=sys.stderr)
        return 2
    info = engine.info()
    print(f"saex worker: {info['model']['name']} with SAEs on layers {[s['layer'] for s in info['saes']]}, "
          f"serving on http://{args.host}:{args.port}", file=sys.stderr)
    uvicorn.run(create_worker_app(engine, settings.queue_size), host=args.host, port=args.port, log_level="info")
    return 0


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


def cmd_train(args: argparse.Namespace) -> int:
    from app.training import commands

    return commands.run(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="saex", description="SAE Explorer: attention-output SAE features")
    sub = parser.add_subparsers(dest="command", required=True)

    def model_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--model", help="model folder or TransformerLens name (default: the embedded demo)")
        p.add_argument("--sae", action="append", help="SAE folder, Kissane .pt file or release:id; repeat per layer")
        p.add_argument("--config", type=Path, help="TOML file with the same settings (model, saes, device, ...)")

    w = sub.add_parser("worker", help="serve the model-backed API (/v1/...)")
    model_args(w)
    w.add_argument("--port", type=int, default=8001)
    w.add_argument("--host", default="127.0.0.1")
    w.add_argument("--device", choices=["cpu", "cuda"])
    w.add_argument("--threads", type=int, help="torch threads")
    w.add_argument("--queue-size", type=int, help="requests that may wait before the worker answers 503")
    w.set_defaults(func=cmd_worker)

    e = sub.add_parser("eval", help="reconstruction metrics of each SAE on the dashboard corpus")
    model_args(e)
    e.add_argument("--sequences", type=int, default=64)
    e.set_defaults(func=cmd_eval)

    t = sub.add_parser("train", help="build the embedded default: corpus, tokenizer, model, SAEs")
    from app.training.commands import add_train_parsers

    add_train_parsers(t)
    t.set_defaults(func=cmd_train)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())

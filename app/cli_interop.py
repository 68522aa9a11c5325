"""The `saex explanations export|import` commands: one SAE's explanations with their scores as a delphi result folder
or as Neuronpedia explanation rows; no model, no torch (the formats are app/store/delphi_format.py and
app/store/neuronpedia_explanations.py; whole SAEs with dashboards move with `saex export|import neuronpedia`)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from app.config import load_settings


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """`saex explanations ...` on the command line's subcommands."""
    p = sub.add_parser("explanations", help="export or import one SAE's explanations and scores as a delphi result "
                       "folder or Neuronpedia explanation rows",
                       description="delphi: PATH is a run folder (explanations/<module>_latent<N>.txt, "
                       "scores/<scorer>/...). neuronpedia: PATH is a .jsonl or .jsonl.gz file of Explanation rows "
                       "(import also takes a folder of them).")
    p.add_argument("action", choices=["export", "import"])
    p.add_argument("path", type=Path, help="the delphi run folder, or the Neuronpedia rows file")
    p.add_argument("--format", required=True, choices=["delphi", "neuronpedia"])
    p.add_argument("--model-slug", default="demo", help="the model's name in the store")
    p.add_argument("--sae", required=True, help="the SAE's id within the model, e.g. L0")
    p.add_argument("--config", type=Path)
    p.add_argument("--method", help="export: only explanations of this method (e.g. llm:<model>, baseline); import "
                   "(delphi): the method to record (default: llm:<run_config.json's explainer_model>)")
    p.add_argument("--features", help="export: only these features, e.g. 0-99,120 (default: every explained one)")
    p.add_argument("--module", help="delphi: the module (hook point) in file names (export default: the SAE's hook "
                   "name; import default: the folder's only module, else the SAE's hook name)")
    p.add_argument("--author", help="delphi import: the author to record (default: delphi)")
    p.add_argument("--layer", help="neuronpedia: the source id in rows, e.g. 6-res-jb (export default: the SAE's id; "
                   "import: only rows of this layer)")
    p.add_argument("--neuronpedia-model", help="neuronpedia export: the modelId in rows (default: the model slug)")
    p.set_defaults(func=cmd_explanations)


def feature_list(spec: str) -> list[int]:
    """'0-99,120' -> the indices; ValueError says what to fix."""
    out: set[int] = set()
    for part in (p.strip() for p in spec.split(",")):
        try:
            a, _, b = part.partition("-")
            lo, hi = int(a), int(b or a)
            if lo < 0 or hi < lo:
                raise ValueError
        except ValueError:
            raise ValueError(f"--features {spec!r}: give a range such as 0-99 or indices such as 5,17 (could not "
                             f"read {part!r})") from None
        out.update(range(lo, hi + 1))
    return sorted(out)


def cmd_explanations(args: argparse.Namespace) -> int:
    from app.store import delphi_format, neuronpedia_explanations
    from app.store.dashboards import find_sae
    from app.store.db import make_engine, make_sessionmaker, transaction, upgrade

    name = f"saex explanations {args.action}"
    try:
        url = load_settings(args.config).resolved_database_url
        features = None if args.features is None else feature_list(args.features)
    except ValueError as exc:
        print(f"{name}: {exc}", file=sys.stderr)
        return 2
    upgrade(url)
    db = make_engine(url)
    try:
        with transaction(make_sessionmaker(db)) as session:
            sae = find_sae(session, sae_slug=args.sae, model_slug=args.model_slug)
            if sae is None:
                raise ValueError(f"no SAE {args.sae!r} of model {args.model_slug!r} in the store")
            if args.format == "delphi" and args.action == "export":
                summary = delphi_format.export_delphi(session, sae, args.path, module_name=args.module,
                                                      features=features, method=args.method)
            elif args.format == "delphi":
                summary = delphi_format.import_delphi(session, sae, args.path, module_name=args.module,
                                                      author=args.author, method=args.method)
            elif args.action == "export":
                summary = neuronpedia_explanations.export_explanations(
                    session, sae, args.path, model_id=args.neuronpedia_model, layer=args.layer, features=features,
                    method=args.method)
            else:
                summary = neuronpedia_explanations.import_explanations(session, sae, args.path, layer=args.layer)
    except (ValueError, OSError) as exc:  # bad input: say what, never a traceback; nothing is stored
        print(f"{name}: {exc}", file=sys.stderr)
        return 2
    finally:
        db.dispose()
    print(json.dumps(summary))
    return 0

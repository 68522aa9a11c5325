"""The `saex` commands that work on the store alone: migrations, API keys, and moving an SAE's dashboards to and from
Neuronpedia's export layout; no model, no torch (the rest of the command line is app/cli.py)."""

from __future__ import annotations

import argparse
import json
import sys

from app.config import load_settings


def cmd_db(args: argparse.Namespace) -> int:
    from app.store.db import upgrade

    url = load_settings(args.config).resolved_database_url
    upgrade(url)
    print(f"saex db: {url.split('@')[-1]} is at the latest migration", file=sys.stderr)
    return 0


def cmd_keys(args: argparse.Namespace) -> int:
    from app.store import keys
    from app.store.db import make_engine, make_sessionmaker, transaction, upgrade

    url = load_settings(args.config).resolved_database_url
    upgrade(url)
    with transaction(make_sessionmaker(make_engine(url))) as session:
        if args.action == "create":
            key, record = keys.create_key(session, name=args.name, admin=getattr(args, "admin", False))
            print(key)
            role = "an admin key" if record.admin else "key"
            print(f"saex keys: created {role} {record.id} ({record.prefix}...) for {args.name!r}; it is shown only "
                  "once", file=sys.stderr)
        elif args.action == "revoke":
            if keys.revoke(session, key_id=args.id) is None:
                print(f"saex keys: no key {args.id}", file=sys.stderr)
                return 2
            print(f"saex keys: revoked key {args.id}", file=sys.stderr)
        else:
            for k in keys.list_keys(session):
                state = f"revoked {k.revoked_at:%Y-%m-%d}" if k.revoked_at else "live"
                print(f"{k.id}\t{k.prefix}...\t{k.name}\t{state}" + ("\tadmin" if k.admin else ""))
    return 0


def cmd_interop(args: argparse.Namespace) -> int:
    """`saex export neuronpedia` and `saex import neuronpedia`: one SAE's dashboards and explanations."""
    from app.store.db import make_engine, make_sessionmaker, upgrade
    from app.store.neuronpedia import NeuronpediaError
    from app.store.neuronpedia_export import export_sae
    from app.store.neuronpedia_import import import_sae

    name = f"saex {args.command}"
    try:
        url = load_settings(args.config).resolved_database_url
    except ValueError as exc:
        print(f"{name}: {exc}", file=sys.stderr)
        return 2
    upgrade(url)
    db = make_engine(url)

    def say(line: str) -> None:
        print(f"{name}: {line}", file=sys.stderr)

    try:
        with make_sessionmaker(db)() as session:
            if args.command == "export":
                summary = export_sae(session, args.model_slug, args.sae, args.out, args.batch_size,
                                     source_set=args.source_set, neuronpedia_model=args.neuronpedia_model,
                                     progress=say)
            else:
                summary = import_sae(session, args.folder, args.model_slug, args.sae, progress=say)
    except (NeuronpediaError, OSError) as exc:  # bad input: say what, never a traceback
        print(f"{name}: {exc}", file=sys.stderr)
        return 2
    finally:
        db.dispose()
    print(json.dumps(summary))
    return 0

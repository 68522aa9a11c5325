"""Shared fixtures: a tiny random model in the model-folder format and SAEs of every architecture, built and
saved with SAELens's own classes; weights are random, so only the math is under test here."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# apps made in tests sign their session cookies with this, rather than keep a secret file in ./data
os.environ.setdefault("SAEX_SECRET_KEY", "tests-only-secret-0123456789abcdef")

torch = pytest.importorskip("torch")

torch.set_num_threads(1)  # keep tests out of a background training job's way

TEXT = (
    "The quick brown fox jumps over the lazy dog. def add(a, b):\n    return a + b\n"
    "In the beginning was the Word, and the Word was with God. SELECT name FROM users WHERE id = 1;\n"
)


def make_tokenizer(path: Path) -> None:
    from app.training.tokenizer import train_tokenizer

    train_tokenizer([TEXT * 20], vocab_size=300).save(str(path))


def make_model_folder(folder: Path, *, n_layers: int = 2, attn_only: bool = False, seed: int = 0) -> Path:
    from tokenizers import Tokenizer
    from transformer_lens import HookedTransformer

    from app.training.model import ModelTrainConfig, hooked_config, save_model_folder

    folder.mkdir(parents=True, exist_ok=True)
    tok_path = folder.parent / f"{folder.name}-tokenizer.json"
    make_tokenizer(tok_path)
    vocab = Tokenizer.from_file(str(tok_path)).get_vocab_size()
    cfg = hooked_config(ModelTrainConfig(n_layers=n_layers, d_model=64, n_heads=4, d_head=16, n_ctx=96,
                                         d_vocab=vocab, attn_only=attn_only, seed=seed))
    model = HookedTransformer(cfg)
    save_model_folder(model, tok_path, folder)
    return folder


ARCHITECTURES = ("standard", "jumprelu", "topk", "gated")


def make_sae(folder: Path, layer: int, architecture: str, d_in: int = 64, d_sae: int = 128, seed: int = 0,
             **extra) -> Path:
    """Build an SAE with SAELens's classes, give it weights under which many latents fire, save it."""
    from sae_lens import (
        GatedSAE,
        GatedSAEConfig,
        JumpReLUSAE,
        JumpReLUSAEConfig,
        StandardSAE,
        StandardSAEConfig,
        TopKSAE,
        TopKSAEConfig,
    )
    from sae_lens.saes.sae import SAEMetadata

    classes = {"standard": (StandardSAE, StandardSAEConfig), "jumprelu": (JumpReLUSAE, JumpReLUSAEConfig),
               "topk": (TopKSAE, TopKSAEConfig), "gated": (GatedSAE, GatedSAEConfig)}
    sae_cls, cfg_cls = classes[architecture]
    if architecture == "topk":
        extra.setdefault("k", 8)
    cfg = cfg_cls(d_in=d_in, d_sae=d_sae, reshape_activations="hook_z",
                  metadata=SAEMetadata(hook_name=f"blocks.{layer}.attn.hook_z", model_name="tiny"), **extra)
    torch.manual_seed(seed + layer)
    sae = sae_cls(cfg)
    with torch.no_grad():
        for name, p in sae.named_parameters():
            if name in ("b_dec", "b_enc", "b_gate", "b_mag", "r_mag"):
                p.copy_(torch.randn_like(p) * 0.1)
            elif name == "threshold":
                p.copy_(torch.rand_like(p) * 0.1)
    sae.save_model(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return make_model_folder(tmp_path_factory.mktemp("models") / "tiny")


@pytest.fixture(scope="session")
def sae_dirs(tmp_path_factory) -> dict[str, list[Path]]:
    """For each architecture, one SAE folder per layer of the tiny model."""
    root = tmp_path_factory.mktemp("saes")
    return {arch: [make_sae(root / f"{arch}-L{layer}", layer, arch) for layer in (0, 1)] for arch in ARCHITECTURES}


# --- databases: real Postgres (127.0.0.1:5432, database `test`) and SQLite, schema from the real migrations ---

POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def fresh_database(url: str) -> None:
    """Drop whatever an earlier run left, then build the schema with the real migrations."""
    from sqlalchemy import text

    from app.store.db import make_engine, upgrade

    if url.startswith("postgresql"):
        engine = make_engine(url)
        with engine.begin() as conn:
            conn.execute(text("DROP SCHEMA public CASCADE; CREATE SCHEMA public"))
        engine.dispose()
    upgrade(url)


@pytest.fixture(scope="session", params=["sqlite", "postgres"])
def db_url(request, tmp_path_factory) -> str:
    url = POSTGRES_URL if request.param == "postgres" else f"sqlite:///{tmp_path_factory.mktemp('db') / 'saex.db'}"
    fresh_database(url)
    return url


@pytest.fixture(scope="session")
def db_engine(db_url):
    from app.store.db import make_engine

    engine = make_engine(db_url)
    yield engine
    engine.dispose()


@pytest.fixture
def session(db_engine):
    """A session inside a transaction that is rolled back after the test (commits become savepoints)."""
    from sqlalchemy.orm import Session

    with db_engine.connect() as conn:
        outer = conn.begin()
        s = Session(bind=conn, join_transaction_mode="create_savepoint", expire_on_commit=False)
        try:
            yield s
        finally:
            s.close()
            outer.rollback()


@pytest.fixture(scope="session")
def tiny_engines(tiny_model_dir, sae_dirs) -> dict:
    """An engine on the tiny model for each SAE architecture (each with its own model object)."""
    from app.engine.engine import Engine
    from app.engine.loading import attach_saes, load_model

    out = {}
    for arch in ARCHITECTURES:
        model = load_model(str(tiny_model_dir))
        out[arch] = Engine(model, attach_saes(model, [str(p) for p in sae_dirs[arch]]), "tiny")
    return out

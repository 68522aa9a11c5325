"""The token corpus a dashboard build streams: rows of n_ctx tokens, BOS first; from the held-out Python standard
library (present wherever Python is, so the embedded default needs no download), a text file, or token ids."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from app.engine.engine import Engine
from app.training.corpus import DOC_SEPARATOR, dashboard_documents
from app.training.tokenizer import pack_documents


def pack(engine: Engine, documents, n_tokens: int) -> torch.Tensor:
    """(rows, n_ctx) token ids of the documents, in order, with the engine's tokenizer; each row starts with BOS."""
    tok = engine.model.tokenizer
    return pack_documents(documents, lambda doc: tok.encode(doc, add_special_tokens=False), tok.bos_token_id,
                          engine.model.cfg.n_ctx, n_tokens)


def load_corpus(engine: Engine, spec: str, n_tokens: int) -> tuple[torch.Tensor, str]:
    """(rows, n_ctx) token ids and a name for the corpus."""
    if spec == "stdlib":
        return pack(engine, dashboard_documents(), n_tokens), "stdlib-heldout"
    path = Path(spec)
    if not path.is_file():
        raise ValueError(f"corpus {spec!r}: no such file (give 'stdlib', a .txt file or a .npy of token ids)")
    if path.suffix == ".npy":
        ids = np.load(path).astype(np.int64).ravel()
        if ids.size and (ids.min() < 0 or ids.max() >= engine.model.cfg.d_vocab):
            raise ValueError(f"corpus {spec}: token ids must lie in 0..{engine.model.cfg.d_vocab - 1}")
        T = engine.model.cfg.n_ctx
        rows = min(max(1, n_tokens // T), ids.size // (T - 1))
        if rows == 0:
            raise ValueError(f"corpus {spec} is shorter than one context window")
        body = torch.from_numpy(ids[: rows * (T - 1)]).view(rows, T - 1)
        return torch.cat([torch.full((rows, 1), engine.model.tokenizer.bos_token_id), body], 1), path.stem
    text = path.read_text("utf-8", errors="replace")
    docs = text.split(DOC_SEPARATOR) if DOC_SEPARATOR in text else text.split("\n\n")
    return pack(engine, docs, n_tokens), path.stem

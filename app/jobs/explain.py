"""The explain job (`saex explain`): explains an SAE's features from their stored dashboards and scores each
explanation, writing them to the store as it goes, so an interrupted run resumes where it stopped; runs beside the
engine (to check non-activating windows and embed text) with any language model client."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from tqdm import tqdm

from app.engine.engine import Engine
from app.engine.windows import window_activations
from app.interpret import pipeline, prompts
from app.interpret.examples import Example, ExampleConfig, TooFewExamples
from app.interpret.explainers import BASELINE_VERSION
from app.interpret.llm import BudgetExhausted, LLMClient
from app.store import dashboards, explanations
from app.store.corpus_windows import sample_windows
from app.store.delphi_format import write_delphi_explanation, write_delphi_scores, write_run_config
from app.store.models import SAERecord

POOL_WINDOWS = 1024  # candidate non-activating windows per SAE, read once for every feature of a run


def parse_features(spec: str, d_sae: int) -> list[int]:
    """'all', '0-99', '5,17,230' or a mix ('0-9,100') -> sorted feature indices; ValueError says what to fix."""
    if spec.strip() == "all":
        return list(range(d_sae))
    out: set[int] = set()
    for part in spec.split(","):
        part = part.strip()
        try:
            if "-" in part:
                a, b = (int(x) for x in part.split("-", 1))
                if a > b:
                    raise ValueError
                out.update(range(a, b + 1))
            else:
                out.add(int(part))
        except ValueError:
            raise ValueError(f"--features {spec!r}: give 'all', a range such as 0-99, or indices such as 5,17 "
                             f"(could not read {part!r})") from None
    bad = [f for f in out if not 0 <= f < d_sae]
    if bad:
        raise ValueError(f"--features: {sorted(bad)[:5]} outside the SAE's features 0 to {d_sae - 1}")
    return sorted(out)


@dataclass
class CandidatePool:
    """Windows of the dashboard corpus (other features' example windows) and, per window, which features fire on it
    when it is read as its own prompt: every feature's non-activating examples come from here."""

    windows: list[Example]
    fires: torch.Tensor  # (window, d_sae) bool

    @classmethod
    def build(cls, engine: Engine, session: Session, sae: SAERecord, ctx_len: int, n: int = POOL_WINDOWS,
              seed: int = 42) -> CandidatePool:
        sampled = sample_windows(session, sae=sae, n=n, ctx_len=ctx_len, seed=seed)
        if not sampled:
            raise ValueError(f"SAE {sae.slug} has no dashboards: build them first (saex dashboards build)")
        windows = [Example(texts, [0.0] * len(ids), -1.0, ids) for ids, texts in sampled]
        layer_sae = engine.sae(sae.layer)
        bos = engine.model.tokenizer.bos_token_id if engine.prepend_bos else None
        maxima = window_activations(engine.model, layer_sae, [w.token_ids for w in windows], None, bos, max_only=True)
        fires = torch.stack(maxima) > 0  # (window, d_sae)
        return cls(windows, fires)

    def non_activating(self, feature: int, n: int, seed: int) -> list[Example]:
        return pipeline.sample_non_activating(self.windows, self.fires[:, feature].numpy(), n, seed + feature)


@dataclass
class RunParams:
    explainer: str  # "baseline" or "llm"
    scorers: list[str]
    limit: int | None = None  # features explained this run at most
    concurrency: int = 4  # features in progress at once
    log_probs: bool = True
    delphi_dir: Path | None = None  # also write delphi's result folder (explanations/, scores/<scorer>/) here
    examples: ExampleConfig = field(default_factory=ExampleConfig)


def _done(session: Session, sae: SAERecord, feature: int, method: str, version: str, scorers: list[str]) -> bool:
    record = explanations.find(session, sae=sae, feature=feature, method=method, prompt_version=version)
    return record is not None and all(s in (record.scores or {}) for s in scorers)


def run(engine: Engine, factory: sessionmaker[Session], sae_slug: str, model_slug: str, features: str,
        params: RunParams, llm: LLMClient | None, embed: Callable[[list[str]], np.ndarray] | None,
        progress: bool = True) -> dict:
    """Explain and score the features; returns a summary. Features already explained by this method and prompt
    version with every asked scorer are skipped, so running it again resumes."""
    pipeline.check_scorers(params.scorers, llm)
    if params.explainer == "llm" and llm is None:
        raise pipeline.NeedsLanguageModel("the llm explainer needs a language model")
    method = "baseline" if params.explainer == "baseline" else f"llm:{llm.name}"
    version = BASELINE_VERSION if params.explainer == "baseline" else prompts.PROMPT_VERSION
    with factory() as session:
        sae = dashboards.find_sae(session, sae_slug=sae_slug, model_slug=model_slug)
        if sae is None:
            raise ValueError(f"no SAE {sae_slug!r} of model {model_slug!r} in the store")
        wanted = parse_features(features, sae.d_sae)
        built = dashboards.built_features(session, sae=sae)
        todo = [f for f in wanted if f in built and not _done(session, sae, f, method, version, params.scorers)]
        pool = CandidatePool.build(engine, session, sae, params.examples.ctx_len) if params.scorers else None
    if params.limit is not None:
        todo = todo[: params.limit]
    summary = {"sae": sae_slug, "method": method, "asked": len(wanted), "without_dashboard": len(set(wanted) - built),
               "already_done": len(wanted) - len(set(wanted) - built) - len(todo), "explained": 0,
               "too_few_examples": 0, "stopped": None}
    if params.delphi_dir is not None:  # import_delphi reads the method back from the explainer model named here
        write_run_config(params.delphi_dir, hookpoints=[sae.hook_name], scorers=params.scorers,
                         explainer_model=None if llm is None or params.explainer == "baseline" else llm.name,
                         extra={"saex_method": method, "saex_prompt_version": version})
    bar = tqdm(total=len(todo), unit="feature", desc=f"explain {sae_slug}", disable=not progress)

    async def embed_async(texts: list[str]) -> np.ndarray:
        return embed(texts)

    async def one(feature: int) -> None:
        with factory() as session:
            dashboard = dashboards.read_dashboard(session, sae=sae, feature=feature)
        try:
            explained, examples = await pipeline.explain(dashboard, sae.layer, params.explainer, llm=llm,
                                                         config=params.examples)
        except TooFewExamples:
            summary["too_few_examples"] += 1
            return
        result = pipeline.ScoreResult({})
        if params.scorers:
            non = pool.non_activating(feature, params.examples.n_non_activating, params.examples.seed)
            result = await pipeline.score(explained.text, examples, non, params.scorers, llm=llm,
                                          embed=embed_async if embed else None, log_probs=params.log_probs)
        with factory() as session, session.begin():
            stored = session.get(SAERecord, sae.id)
            explanations.create(session, sae=stored, feature=feature, text=explained.text,
                                author=method, source="automatic", method=method, prompt_version=version,
                                scores=result.scores, score=result.headline)
        if params.delphi_dir is not None:
            write_delphi_explanation(params.delphi_dir, sae.hook_name, feature, explained.text)
            for scorer, rows in result.rows.items():
                write_delphi_scores(params.delphi_dir, sae.hook_name, feature, scorer, rows)
        summary["explained"] += 1
        bar.update(1)

    async def main() -> None:
        queue = list(reversed(todo))

        async def lane() -> None:
            while queue:
                await one(queue.pop())

        try:
            await asyncio.gather(*(lane() for _ in range(max(1, params.concurrency))))
        except BudgetExhausted as exc:
            summary["stopped"] = str(exc)

    asyncio.run(main())
    bar.close()
    return summary


def baseline_where_missing(factory: sessionmaker[Session], model_slug: str, progress: bool = False) -> int:
    """A baseline explanation (no language model, no scores: milliseconds a feature) for every built feature of the
    model's SAEs that has no explanation yet, so that no feature is shown as a bare id; returns how many."""
    from app.interpret.explainers import explain_baseline
    from app.store.models import ExplanationRecord, ModelRecord

    written = 0
    with factory() as session:
        saes = session.scalars(select(SAERecord).join(ModelRecord).where(ModelRecord.slug == model_slug)).all()
        plan = []
        for sae in saes:
            explained = set(session.scalars(select(ExplanationRecord.feature).where(
                ExplanationRecord.sae_id == sae.id)))
            plan.append((sae.id, sae.slug, sorted(dashboards.built_features(session, sae=sae) - explained)))
    for sae_id, slug, todo in plan:
        for start in tqdm(range(0, len(todo), 256), desc=f"baseline explanations {slug}", disable=not progress):
            with factory() as session, session.begin():
                sae = session.get(SAERecord, sae_id)
                for feature in todo[start:start + 256]:
                    dashboard = dashboards.read_dashboard(session, sae=sae, feature=feature)
                    text = explain_baseline(dashboard, layer=sae.layer).text
                    explanations.create(session, sae=sae, feature=feature, text=text, author="baseline",
                                        source="automatic", method="baseline", prompt_version=BASELINE_VERSION)
                    written += 1
    return written

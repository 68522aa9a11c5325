"""Scoring any explanation text of a feature, and explaining a feature on request, for the API: examples from the
stored dashboard, non-activating windows checked by the model's worker, embeddings from the worker, detection and
fuzzing through the configured language model server; knows nothing of HTTP or torch."""

from __future__ import annotations

import numpy as np
from sqlalchemy.orm import Session

from app import protocol as P
from app.interpret import pipeline
from app.interpret.examples import Example, ExampleConfig, TooFewExamples, from_dashboard
from app.interpret.llm import LLMClient, LLMError, OpenAIChatClient
from app.store import explanations
from app.store.corpus_windows import sample_windows
from app.store.dashboards import explanation_body, read_dashboard
from app.web.deployment import Deployment
from app.web.services.errors import Invalid, NotFound
from app.web.services.features import check_feature, sae_or_404

CONFIG = ExampleConfig()


class NoLanguageModel(Invalid):
    pass


def llm_from_settings(settings) -> LLMClient | None:
    """The configured OpenAI-compatible server's client, or None (the web app never loads a model itself)."""
    if not settings.llm_url:
        return None
    return OpenAIChatClient(settings.llm_url, settings.llm_model or "default", api_key=settings.llm_api_key,
                            max_in_flight=settings.llm_max_in_flight)


def _needs(llm: LLMClient | None, scorers: list[str], explainer: str | None = None) -> None:
    if llm is None and (explainer == "llm" or any(s != "embedding" for s in scorers)):
        raise NoLanguageModel("no language model server is configured: set SAEX_LLM_URL and SAEX_LLM_MODEL (an "
                              "OpenAI-compatible server such as `saex llm serve`, vLLM or Ollama), or ask for the "
                              "'embedding' scorer and the 'baseline' explainer only")
    unknown = [s for s in scorers if s not in ("detection", "fuzzing", "embedding")]
    if unknown:
        raise Invalid(f"unknown scorers {unknown}: choose from detection, fuzzing, embedding")


async def _inputs(session: Session, deployment: Deployment, model_slug: str, sae_id: str, feature: int):
    sae = sae_or_404(session, sae_id=sae_id, model_slug=model_slug)
    check_feature(sae, feature)
    dashboard = read_dashboard(session, sae=sae, feature=feature)
    if dashboard is None:
        raise NotFound(f"feature {feature} of SAE {sae.slug} has no dashboard yet: build dashboards first")
    try:
        examples = from_dashboard(dashboard, CONFIG)
    except TooFewExamples as exc:
        raise Invalid(str(exc)) from exc
    candidates = sample_windows(session, sae=sae, n=2 * CONFIG.n_non_activating, ctx_len=CONFIG.ctx_len,
                                seed=CONFIG.seed + feature, exclude_feature=feature)
    _, client = await deployment.client(model_slug, sae_id=sae.slug)
    answer = await client.windows(P.WindowsRequest(model=model_slug, sae_id=sae.slug, feature=feature,
                                                   windows=[ids for ids, _ in candidates]))
    non = [Example(texts, [0.0] * len(ids), -1.0, ids) for (ids, texts), acts in
           zip(candidates, answer.activations, strict=True) if max(acts, default=0.0) <= 0.0][:CONFIG.n_non_activating]

    async def embed(texts: list[str]) -> np.ndarray:
        out = []
        for start in range(0, len(texts), 256):
            reply = await client.embed(P.EmbedRequest(texts=texts[start:start + 256]))
            out.extend(reply.vectors)
        return np.asarray(out, dtype=np.float32)

    return sae, dashboard, examples, non, embed


async def score_text(session: Session, *, deployment: Deployment, llm: LLMClient | None, model_slug: str,
                     sae_id: str, feature: int, text: str, scorers: list[str]) -> dict:
    _needs(llm, scorers)
    _, _, examples, non, embed = await _inputs(session, deployment, model_slug, sae_id, feature)
    try:
        result = await pipeline.score(text, examples, non, scorers, llm=llm, embed=embed)
    except LLMError as exc:
        raise NoLanguageModel(f"the language model server failed: {exc}") from exc
    return {"scores": result.scores, "score": result.headline, "non_activating": len(non),
            "test_examples": len(examples.test)}


async def explain_feature(session: Session, *, deployment: Deployment, llm: LLMClient | None, model_slug: str,
                          sae_id: str, feature: int, explainer: str, scorers: list[str], author: str) -> dict:
    _needs(llm, scorers, explainer)
    sae, dashboard, examples, non, embed = await _inputs(session, deployment, model_slug, sae_id, feature)
    try:
        explained, examples = await pipeline.explain(dashboard, sae.layer, explainer, llm=llm, config=CONFIG)
        result = await pipeline.score(explained.text, examples, non, scorers, llm=llm, embed=embed)
    except LLMError as exc:
        raise NoLanguageModel(f"the language model server failed: {exc}") from exc
    record = explanations.create(session, sae=sae, feature=feature, text=explained.text, author=author,
                                 source="automatic", method=explained.method,
                                 prompt_version=explained.prompt_version, scores=result.scores,
                                 score=result.headline)
    return explanation_body(record)

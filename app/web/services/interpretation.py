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
from app.web.worker_client import WorkerClient

CONFIG = ExampleConfig(n_test=20, n_non_activating=20)  # interactive: ~40 scorer prompts, not delphi's 100


class LanguageModelFailed(Invalid):
    pass


def llm_for(settings, worker: WorkerClient) -> LLMClient:
    """The configured OpenAI-compatible server's client, else the model's worker's embedded chat model (the web app
    never loads a model itself)."""
    if settings.llm_url:
        return OpenAIChatClient(settings.llm_url, settings.llm_model or "default", api_key=settings.llm_api_key,
                                max_in_flight=settings.llm_max_in_flight)
    return worker.chat_client()


def _check(scorers: list[str]) -> None:
    unknown = [s for s in scorers if s not in ("detection", "fuzzing", "embedding")]
    if unknown:
        raise Invalid(f"unknown scorers {unknown}: choose from detection, fuzzing, embedding")


async def _inputs(session: Session, deployment: Deployment, settings, model_slug: str, sae_id: str, feature: int):
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
    llm = llm_for(settings, client)
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

    return sae, dashboard, examples, non, embed, llm


async def score_text(session: Session, *, deployment: Deployment, settings, model_slug: str, sae_id: str,
                     feature: int, text: str, scorers: list[str]) -> dict:
    _check(scorers)
    _, _, examples, non, embed, llm = await _inputs(session, deployment, settings, model_slug, sae_id, feature)
    try:
        result = await pipeline.score(text, examples, non, scorers, llm=llm, embed=embed)
    except LLMError as exc:
        raise LanguageModelFailed(f"the language model failed: {exc}") from exc
    finally:
        await llm.aclose()
    return {"scores": result.scores, "score": result.headline, "non_activating": len(non),
            "test_examples": len(examples.test)}


async def explain_feature(session: Session, *, deployment: Deployment, settings, model_slug: str, sae_id: str,
                          feature: int, explainer: str, scorers: list[str], author: str) -> dict:
    _check(scorers)
    sae, dashboard, examples, non, embed, llm = await _inputs(session, deployment, settings, model_slug, sae_id,
                                                              feature)
    try:
        explained, examples = await pipeline.explain(dashboard, sae.layer, explainer, llm=llm, config=CONFIG)
        result = await pipeline.score(explained.text, examples, non, scorers, llm=llm, embed=embed)
    except LLMError as exc:
        raise LanguageModelFailed(f"the language model failed: {exc}") from exc
    finally:
        await llm.aclose()
    record = explanations.create(session, sae=sae, feature=feature, text=explained.text, author=author,
                                 source="automatic", method=explained.method,
                                 prompt_version=explained.prompt_version, scores=result.scores,
                                 score=result.headline)
    return explanation_body(record)

"""The worker contract: request and response bodies of the model-backed API (shared/api.md), shared by the worker
and the web app's worker client; knows nothing of torch, HTTP frameworks or storage."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

MAX_TEXT_CHARS = 100_000  # far past any context; longer bodies are refused before tokenising


def _no_text_or_bool(value):
    """JSON numbers only: "3" or true is refused where a number belongs (3.0 is an integer, as in JSON Schema)."""
    if isinstance(value, (str, bool)):
        raise ValueError("must be a JSON number, not a string or boolean")
    return value


def _bool_only(value):
    if not isinstance(value, bool):
        raise ValueError("must be true or false")
    return value


Int = Annotated[int, BeforeValidator(_no_text_or_bool)]
Float = Annotated[float, BeforeValidator(_no_text_or_bool)]
Bool = Annotated[bool, BeforeValidator(_bool_only)]
MAX_SEED = 2**53 - 1  # the largest integer every JSON client represents exactly


class Body(BaseModel):
    model_config = ConfigDict(allow_inf_nan=False, extra="forbid")


class Reply(BaseModel):
    model_config = ConfigDict(allow_inf_nan=False)


# --- info and tokens ---------------------------------------------------------------------------------------------


class ModelInfo(Reply):
    name: str
    n_layers: int
    n_heads: int
    d_head: int
    d_model: int
    n_ctx: int
    d_vocab: int
    prepends_bos: bool = True


class SAEInfo(Reply):
    id: str
    layer: int
    hook_name: str
    d_sae: int
    architecture: str
    source: str = ""


class InfoResponse(Reply):
    model: ModelInfo
    saes: list[SAEInfo]


class TextRequest(Body):
    text: str = Field(min_length=1, max_length=MAX_TEXT_CHARS, description="the prompt")


class TokenizeResponse(Reply):
    tokens: list[str]
    token_ids: list[int]


# --- analysis ----------------------------------------------------------------------------------------------------


class AnalyzeRequest(TextRequest):
    layers: list[Int] | None = Field(default=None, max_length=256, description="layers to analyse; null: all")
    top_k: Int = Field(default=10, ge=1, le=256, description="features kept per token")
    head_contributions: Bool = Field(default=False, description="also give each listed feature's per-head "
                                     "contributions z_{t,h} · W_enc[h-slice, f] as `heads`")


class FeatureActivation(Reply):
    feature: int
    activation: float
    heads: list[float] | None = None  # only when head_contributions was asked for


class LayerAnalysis(Reply):
    layer: int
    sae_id: str
    top_features: list[list[FeatureActivation]]  # one list per token, largest first
    l0: list[int]  # active features per token


class AnalyzeResponse(TokenizeResponse):
    layers: list[LayerAnalysis]


class FeatureRequest(TextRequest):
    layer: Int = Field(ge=0)
    feature: Int = Field(ge=0)


class FeatureTraceResponse(TokenizeResponse):
    layer: int
    feature: int
    activations: list[float]
    pre_activations: list[float]
    head_contributions: list[list[float]]  # per token: z_{t,h} · W_enc[h-slice, f]
    bias_contribution: list[float]  # per token; heads + bias = pre_activation


class DFARequest(FeatureRequest):
    position: Int = Field(ge=0, description="destination position, BOS included")


class DFAResponse(TokenizeResponse):
    layer: int
    feature: int
    position: int
    pre_activation: float
    activation: float
    contributions: list[list[float]]  # [head][source position]; zero after `position`
    bias_contribution: float  # sum(contributions) + bias_contribution = pre_activation


# --- steering ----------------------------------------------------------------------------------------------------


class InterventionSpec(Body):
    layer: Int = Field(ge=0)
    feature: Int = Field(ge=0)
    mode: Literal["add", "clamp", "ablate"] = "add"
    value: Float = Field(default=0.0, ge=-1e6, le=1e6)
    heads: list[Int] | None = Field(default=None, min_length=1, max_length=1024, description="null: all heads")
    positions: list[Int] | None = Field(default=None, min_length=1, max_length=100_000,
                                        description="prompt positions; null: every position, generated ones too")


class SteerRequest(TextRequest):
    max_new_tokens: Int = Field(default=32, ge=0, le=1024)
    temperature: Float = Field(default=0.0, ge=0.0, le=10.0)
    seed: Int = Field(default=0, ge=0, le=MAX_SEED)
    top_logprobs: Int = Field(default=5, ge=0, le=20)
    interventions: list[InterventionSpec] = Field(default_factory=list, max_length=64)


class TokenLogprob(Reply):
    token: str
    logprob: float


class GeneratedToken(TokenLogprob):
    top: list[TokenLogprob]


class Continuation(Reply):
    text: str  # the generated continuation only
    tokens: list[str]
    token_ids: list[int]
    logprobs: list[GeneratedToken]


class SteerResponse(Reply):
    default: Continuation
    steered: Continuation
    permalink: str | None = None


class ErrorResponse(Reply):
    detail: str


def error_responses(*codes: int) -> dict[int, dict]:
    """OpenAPI `responses` for these status codes, each with the one error body `{"detail": "..."}`."""
    return {code: {"model": ErrorResponse} for code in codes}


# the error answers every model-backed endpoint may give, for the OpenAPI documents of worker and web app
ERROR_RESPONSES = error_responses(400, 404, 413, 422, 429, 503)

"""The worker contract: request and response bodies of the model-backed API (shared/api.md), shared by the worker
and the web app's worker client; knows nothing of torch, HTTP frameworks or storage."""

from __future__ import annotations

import re
from typing import Annotated, Literal, get_args

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, model_validator

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


SLUG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")  # model names, SAE ids and SAE set names: one URL segment


def _slug(value: str) -> str:
    if not SLUG.match(value):
        raise ValueError("must be 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit")
    return value


Slug = Annotated[str, AfterValidator(_slug)]
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


DEFAULT_SAE_SET = "default"


class SAEInfo(Reply):
    id: str  # unique within its model; several SAEs (of several sets) may sit on one layer
    layer: int
    hook_name: str
    d_sae: int
    architecture: str
    source: str = ""
    set: str = DEFAULT_SAE_SET  # the SAE set it belongs to (one worker hosts one set of one model)


class InfoResponse(Reply):
    model: ModelInfo
    saes: list[SAEInfo]


class ServedModel(ModelInfo):
    """One entry of GET /api/v1/models: a model and every SAE its workers host, of every set."""

    saes: list[SAEInfo]


class HeadScoresResponse(Reply):
    induction: list[list[float]]  # [layer][head]
    previous_token: list[list[float]]


class ModelBody(Body):
    model: Slug | None = Field(default=None, description="the model to ask; null: the deployment's first model")


class TextRequest(ModelBody):
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
    set: Slug | None = Field(default=None, description="the SAE set to analyse with; null: the model's first")


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
    layer: Int | None = Field(default=None, ge=0, description="the SAE's layer (or name the SAE by sae_id)")
    feature: Int = Field(ge=0)
    sae_id: Slug | None = Field(default=None, description="the SAE; null: the layer's SAE of the model's first set")

    @model_validator(mode="after")
    def _names_an_sae(self) -> FeatureRequest:
        if self.layer is None and self.sae_id is None:
            raise ValueError("name the SAE: give its layer or its sae_id")
        return self


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


# add: latent += value; clamp: latent = value; ablate: latent = 0. The one list of modes: forms offer these, the
# contract accepts these, and the engine's tests hold its implementation to them.
SteerMode = Literal["add", "clamp", "ablate"]
STEER_MODES: tuple[str, ...] = get_args(SteerMode)


class InterventionSpec(Body):
    """One steering edit: the one shape a steering spec has from the form to the engine (which reads these fields
    as they are, see app/engine/steering.py's Intervention)."""

    layer: Int = Field(ge=0)
    feature: Int = Field(ge=0)
    mode: SteerMode = "add"
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
    set: Slug | None = Field(default=None, description="the SAE set whose SAEs the edits use; null: the model's first")


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


# --- attention circuits ------------------------------------------------------------------------------------------


class GraphRequest(DFARequest):
    """An attribution graph of one feature's pre-activation at one position (layer or sae_id, feature, position)."""

    max_depth: Int = Field(default=2, ge=1, le=4, description="levels of feature nodes opened, the root included")
    threshold: Float = Field(default=0.02, ge=0.0, le=1.0, description="links under this share of their target's "
                             "|value| go to its pruned node")
    top_n: Int = Field(default=10, ge=1, le=100, description="links kept per node, largest |weight| first")
    expand: list[Annotated[str, Field(pattern=r"^f:\d+:\d+:\d+$", max_length=40)]] = Field(
        default_factory=list, max_length=64, description="feature node ids (f:layer:position:feature) opened one "
        "more level wherever the graph reaches them, past max_depth too")


GraphNodeKind = Literal["feature", "token", "position", "sae_error", "attn_out", "mlp", "bias", "pruned"]


class GraphNode(Reply):
    id: str  # f:L:s:g, tok:s, pos:s, sae_error:L:s, attn_out:L:s, mlp:L:s, bias:<target>, pruned:<target>
    kind: GraphNodeKind
    layer: int | None = None
    position: int | None = None
    feature: int | None = None
    value: float  # a feature's pre-activation; another node's: the sum of the weights of its links


class GraphLink(Reply):
    source: str
    target: str
    weight: float  # the source's contribution to the target; the links into an expanded node sum to its value
    head: int | None  # the head of the target's layer it passes through; null for bias and pruned


class GraphResponse(TokenizeResponse):
    root: str
    nodes: list[GraphNode]
    links: list[GraphLink]


MAX_DISCOVERY_PROMPTS = 64  # per side
DiscoveryTask = Literal["induction", "ioi", "greater_than", "docstring"]  # app/engine/circuit_tasks.py's TASKS
DISCOVERY_TASKS: tuple[str, ...] = get_args(DiscoveryTask)


class HeadRef(Body):
    layer: Int = Field(ge=0)
    head: Int = Field(ge=0)


class DiscoverRequest(ModelBody):
    positive: list[Annotated[str, Field(min_length=1, max_length=MAX_TEXT_CHARS)]] = Field(
        default_factory=list, max_length=MAX_DISCOVERY_PROMPTS, description="prompts that show the behaviour")
    negative: list[Annotated[str, Field(min_length=1, max_length=MAX_TEXT_CHARS)]] = Field(
        default_factory=list, max_length=MAX_DISCOVERY_PROMPTS, description="prompts that do not")
    task: DiscoveryTask | None = Field(
        default=None, description="a built-in task in place of the lists: induction = repeated vs non-repeated random "
        "tokens; ioi, greater_than, docstring = the templates of Wang et al. 2022, Hanna et al. 2023, Heimersheim & "
        "Janiak 2023 against their corrupted forms (app/engine/circuit_tasks.py)")
    positions: Literal["all", "last"] = Field(default="all", description="codes at every token or the last only")
    max_edges: Int = Field(default=100, ge=0, le=1000)
    patching: Bool = Field(default=True, description="also score heads by activation patching (the baseline)")
    ground_truth: list[HeadRef] | None = Field(default=None, max_length=4096,
                                               description="the known circuit: ROC-AUC of both scores against it")
    set: Slug | None = Field(default=None, description="the SAE set whose SAEs give the codes; null: the first")

    @model_validator(mode="after")
    def _has_prompts(self) -> DiscoverRequest:
        if self.task is None and (not self.positive or not self.negative):
            raise ValueError("give positive and negative prompts (at least one of each), or a built-in task")
        if self.task is not None and (self.positive or self.negative):
            raise ValueError("give either a built-in task or prompt lists, not both")
        return self


class HeadScore(Reply):
    layer: int
    head: int
    score: float


class HeadRefReply(Reply):
    layer: int
    head: int


class EdgeScore(Reply):
    source: HeadRefReply
    target: HeadRefReply
    score: float


class DiscoverResponse(Reply):
    heads: list[HeadScore]  # highest score first
    edges: list[EdgeScore]
    patching: list[HeadScore] | None = None  # the baseline, highest effect first
    roc_auc: dict[str, float | None] | None = None  # {"codes", "patching"}, when a ground truth was given
    seconds: dict[str, float]


# --- interpretation: embeddings and activations on given windows -------------------------------------------------


class EmbedRequest(Body):
    texts: list[Annotated[str, Field(max_length=4000)]] = Field(min_length=1, max_length=256)


class EmbedResponse(Reply):
    model: str
    vectors: list[list[float]]  # unit length, one per text


class WindowsRequest(ModelBody):
    """One feature's activations on token windows (each read with BOS first, as its own prompt)."""

    layer: Int | None = Field(default=None, ge=0)
    sae_id: Slug | None = None
    feature: Int = Field(ge=0)
    windows: list[Annotated[list[Int], Field(min_length=1, max_length=256)]] = Field(min_length=1, max_length=512)

    @model_validator(mode="after")
    def _names_an_sae(self) -> WindowsRequest:
        if self.layer is None and self.sae_id is None:
            raise ValueError("name the SAE: give its layer or its sae_id")
        return self


class WindowsResponse(Reply):
    activations: list[list[float]]  # [window][token], the window's own tokens (not BOS)

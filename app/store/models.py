"""SQLAlchemy 2 models of the store: models and their SAEs, a shared token table, feature dashboards and their
examples, explanations, saved results (permalinks), API keys, dashboard builds and their runs, lists of features;
knows nothing of torch or HTTP.

Examples keep token ids and per-token numbers as packed little-endian arrays (int32 ids, float16 values): a
feature's 70 examples fit in a few KB, and the token text comes from the shared `tokens` table.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {dict: JSON, list: JSON}


class ModelRecord(Base):
    __tablename__ = "models"

    id: Mapped[int] = mapped_column(primary_key=True)
    slug: Mapped[str] = mapped_column(String(64), unique=True)  # the {model} of URLs, e.g. "demo"
    name: Mapped[str] = mapped_column(String(200))
    source: Mapped[str] = mapped_column(Text)  # folder or TransformerLens name it was loaded from
    config: Mapped[dict]  # n_layers, n_heads, d_head, d_model, n_ctx, d_vocab
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    saes: Mapped[list[SAERecord]] = relationship(back_populates="model",
                                                 order_by="(SAERecord.sae_set, SAERecord.layer)")


class SAERecord(Base):
    __tablename__ = "saes"
    # several SAEs may sit on one layer (of several sets); the slug names one within its model
    __table_args__ = (UniqueConstraint("model_id", "slug"),
                      Index("ix_saes_model_id_layer", "model_id", "layer"))

    id: Mapped[int] = mapped_column(primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"), index=True)
    slug: Mapped[str] = mapped_column(String(64))  # the {sae} of URLs and sae_id of the API, e.g. "L1"
    layer: Mapped[int]
    sae_set: Mapped[str] = mapped_column(String(64), default="default", server_default="default")
    hook_name: Mapped[str] = mapped_column(String(200))
    d_sae: Mapped[int]
    architecture: Mapped[str] = mapped_column(String(32))
    source: Mapped[str] = mapped_column(Text)
    metrics: Mapped[dict] = mapped_column(default=dict)  # fve, l0, ce_recovered, ... when measured
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    model: Mapped[ModelRecord] = relationship(back_populates="saes")


class TokenRecord(Base):
    """The text of each token id of a model's vocabulary, shared by every stored example."""

    __tablename__ = "tokens"

    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"), primary_key=True)
    token_id: Mapped[int] = mapped_column(primary_key=True)
    text: Mapped[str] = mapped_column(Text)


class DashboardBuild(Base):
    __tablename__ = "dashboard_builds"

    id: Mapped[int] = mapped_column(primary_key=True)
    sae_id: Mapped[int] = mapped_column(ForeignKey("saes.id", ondelete="CASCADE"), index=True)
    status: Mapped[str] = mapped_column(String(16))  # running, done, failed
    params: Mapped[dict]  # corpus, tokens, context window, k, ...
    params_key: Mapped[str] = mapped_column(String(64), index=True)  # sha256 of the params, to find a build's kin
    features_written: Mapped[int] = mapped_column(default=0)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class BuildRun(Base):
    """One run of the dashboard build job over all its layers (`saex dashboards build`, or the build that `saex
    serve` starts in the background): what it is doing now, for the web app's progress fragment. It exists from the
    run's start, because a DashboardBuild row per layer begins only when that layer's writing does, after the
    corpus pass (most of a build's time) and after any failure to load."""

    __tablename__ = "dashboard_runs"

    id: Mapped[int] = mapped_column(primary_key=True)
    model_slug: Mapped[str] = mapped_column(String(64), index=True)
    status: Mapped[str] = mapped_column(String(16))  # running, done, failed
    phase: Mapped[str] = mapped_column(String(16))  # starting, pass, writing, done
    layer: Mapped[int | None]  # the layer being written; None in the pass, which covers every layer at once
    done: Mapped[int] = mapped_column(BigInteger, default=0)  # the pass's tokens, or the layer's features written
    total: Mapped[int] = mapped_column(BigInteger, default=0)
    features_written: Mapped[int] = mapped_column(default=0)  # by the whole run, once it is done
    error: Mapped[str | None] = mapped_column(Text)  # why it failed
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)  # its last report
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class FeatureRecord(Base):
    __tablename__ = "features"
    __table_args__ = (UniqueConstraint("sae_id", "index"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    sae_id: Mapped[int] = mapped_column(ForeignKey("saes.id", ondelete="CASCADE"))
    index: Mapped[int]
    build_id: Mapped[int | None] = mapped_column(ForeignKey("dashboard_builds.id", ondelete="SET NULL"))
    density: Mapped[float] = mapped_column(Float)  # fraction of corpus tokens on which it fires
    max_activation: Mapped[float] = mapped_column(Float)
    histogram: Mapped[dict]  # {"bin_edges": [...], "counts": [...]}, nonzero activations
    logit_effects: Mapped[dict]  # {"top": [{"token", "value"}], "bottom": [...]}
    head_attribution: Mapped[list]  # one share per head, summing to 1
    similar: Mapped[list]  # [{"feature", "cosine"}]

    examples: Mapped[list[ExampleRecord]] = relationship(
        back_populates="feature", cascade="all, delete-orphan", order_by="(ExampleRecord.kind, ExampleRecord.rank)"
    )


class PackedBytes(LargeBinary):
    """Packed arrays as bytes, handed to the driver as they are: sqlite3 and psycopg both take bytes for BLOB and
    bytea, and skipping the per-value bind processing matters at a few hundred thousand examples per build."""

    cache_ok = True

    def bind_processor(self, dialect):
        return None


class ExampleRecord(Base):
    __tablename__ = "examples"

    id: Mapped[int] = mapped_column(primary_key=True)
    feature_id: Mapped[int] = mapped_column(ForeignKey("features.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(8))  # "top" or "interval"
    rank: Mapped[int]  # order within its kind (top: by activation; interval: by interval, then activation)
    interval: Mapped[int | None]  # 0-9 for interval examples
    max_position: Mapped[int]  # index in the window of the token whose activation this example shows
    corpus_position: Mapped[int] = mapped_column(BigInteger)  # that token's position in the build's corpus
    token_ids: Mapped[bytes] = mapped_column(PackedBytes)  # int32 LE
    activations: Mapped[bytes] = mapped_column(PackedBytes)  # float16 LE, one per token
    dfa: Mapped[bytes] = mapped_column(PackedBytes)  # float16 LE: attribution of each source to max_position
    dfa_heads: Mapped[bytes] = mapped_column(PackedBytes)  # float16 LE: each head's total of that attribution

    feature: Mapped[FeatureRecord] = relationship(back_populates="examples")


class ExplanationRecord(Base):
    __tablename__ = "explanations"
    __table_args__ = (Index("ix_explanations_sae_id_feature", "sae_id", "feature"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    sae_id: Mapped[int] = mapped_column(ForeignKey("saes.id", ondelete="CASCADE"))
    feature: Mapped[int] = mapped_column(index=True)
    text: Mapped[str] = mapped_column(Text)
    author: Mapped[str] = mapped_column(String(200))
    source: Mapped[str] = mapped_column(String(16), default="human")  # human or automatic
    method: Mapped[str] = mapped_column(String(120), default="human")  # human, baseline, llm:<model>, imported
    prompt_version: Mapped[str | None] = mapped_column(String(32))  # of the explainer that wrote it
    score: Mapped[float | None] = mapped_column(Float)  # the headline of `scores` (see interpret.metrics); ranks
    scores: Mapped[dict | None]  # {"detection": {"balanced_accuracy", "f1", "auroc", "n"}, "fuzzing": ..., ...}
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)
    # the key that wrote it (None: an automatic explanation, an import, or written before keys were recorded):
    # only that key, or an admin key, may edit or delete it
    key_id: Mapped[int | None] = mapped_column(ForeignKey("api_keys.id", ondelete="SET NULL"), index=True)


class ExplanationEdit(Base):
    """One edit or deletion of an explanation: the text before, who changed it and when. No foreign key to the
    explanation, so that a deletion's record outlives it."""

    __tablename__ = "explanation_edits"

    id: Mapped[int] = mapped_column(primary_key=True)
    explanation_id: Mapped[int] = mapped_column(index=True)
    action: Mapped[str] = mapped_column(String(8))  # "edit" or "delete"
    old_text: Mapped[str] = mapped_column(Text)
    new_text: Mapped[str | None] = mapped_column(Text)  # None for a deletion
    key_id: Mapped[int | None] = mapped_column(ForeignKey("api_keys.id", ondelete="SET NULL"))
    editor: Mapped[str] = mapped_column(String(200))  # the key's name then
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ExplanationEmbedding(Base):
    """An explanation's sentence embedding, for semantic search (float16, unit length)."""

    __tablename__ = "explanation_embeddings"

    explanation_id: Mapped[int] = mapped_column(ForeignKey("explanations.id", ondelete="CASCADE"), primary_key=True)
    model: Mapped[str] = mapped_column(String(120))
    vector: Mapped[bytes] = mapped_column(PackedBytes)


class SavedResult(Base):
    """A prompt analysis or steering result behind a permalink (/p/{id}, /s/{id})."""

    __tablename__ = "saved_results"

    id: Mapped[str] = mapped_column(String(16), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))  # "analysis" or "steering"
    model_slug: Mapped[str] = mapped_column(String(64))
    payload: Mapped[dict]
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    # who saved it, for quotas: "key:<id>" or "ip:<address hash>" (None: saved before quotas were kept)
    owner: Mapped[str | None] = mapped_column(String(80))
    size_bytes: Mapped[int | None]  # the payload's JSON size

    __table_args__ = (Index("ix_saved_results_owner_created_at", "owner", "created_at"),)


class APIKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    prefix: Mapped[str] = mapped_column(String(12))  # shown in listings; the key itself is never stored
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)  # sha256 hex of the whole key
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    admin: Mapped[bool] = mapped_column(Boolean, default=False, server_default="0")  # may edit anyone's writes


class BrowserSession(Base):
    """A signed-in browser's session, on the server: signing out ends it, and it expires here whatever its cookie
    says. The cookie carries the session's id; this table keeps only its sha256."""

    __tablename__ = "browser_sessions"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # sha256 hex of the id in the cookie
    key_id: Mapped[int] = mapped_column(ForeignKey("api_keys.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    ended_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class FeatureList(Base):
    """A named list (collection) of features, Neuronpedia's "lists": made by one API key (or the browser signed in
    with it), which alone (with admin keys) may change it; anyone who may read the site may read it by its id."""

    __tablename__ = "feature_lists"

    id: Mapped[str] = mapped_column(String(16), primary_key=True)  # random: the permalink /lists/{id}
    title: Mapped[str] = mapped_column(String(200))
    description: Mapped[str] = mapped_column(Text, default="")
    author: Mapped[str] = mapped_column(String(200))  # the key's name when it was made
    key_id: Mapped[int | None] = mapped_column(ForeignKey("api_keys.id", ondelete="SET NULL"), index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)

    entries: Mapped[list[FeatureListEntry]] = relationship(
        back_populates="feature_list", cascade="all, delete-orphan", order_by="FeatureListEntry.position")


class FeatureListEntry(Base):
    """One feature of a list, with the list owner's note on it; a feature appears once per list."""

    __tablename__ = "feature_list_entries"
    __table_args__ = (UniqueConstraint("list_id", "sae_id", "feature"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    list_id: Mapped[str] = mapped_column(ForeignKey("feature_lists.id", ondelete="CASCADE"), index=True)
    sae_id: Mapped[int] = mapped_column(ForeignKey("saes.id", ondelete="CASCADE"), index=True)
    feature: Mapped[int]
    note: Mapped[str] = mapped_column(Text, default="")
    position: Mapped[int] = mapped_column(default=0)  # order within the list: when it was added
    added_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    feature_list: Mapped[FeatureList] = relationship(back_populates="entries")
    sae: Mapped[SAERecord] = relationship()


__all__ = ["Base", "ModelRecord", "SAERecord", "TokenRecord", "DashboardBuild", "BuildRun", "FeatureRecord",
           "ExampleRecord", "ExplanationRecord", "ExplanationEdit", "SavedResult", "APIKey", "BrowserSession",
           "FeatureList", "FeatureListEntry"]

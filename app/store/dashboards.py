"""Writing and reading feature dashboards: models, SAEs, the token table, features with their examples;
knows nothing of torch or HTTP. The dashboard builder hands plain Python values to `write_features`."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field

from sqlalchemy import delete, func, insert, select
from sqlalchemy.orm import Session

from app.store.models import (
    DashboardBuild,
    ExampleRecord,
    ExplanationRecord,
    FeatureRecord,
    ModelRecord,
    SAERecord,
    TokenRecord,
    utcnow,
)
from app.store.packing import pack_ids, pack_values, unpack_ids, unpack_values


@dataclass
class ExampleData:
    kind: str  # "top" or "interval"
    rank: int
    token_ids: Sequence[int] | bytes  # lists, numpy arrays, or bytes already packed (int32 ids, float16 values)
    activations: Sequence[float] | bytes
    max_position: int
    dfa: Sequence[float] | bytes  # per source token: attribution toward max_position, summed over heads
    dfa_heads: Sequence[float] | bytes  # per head: its total attribution
    interval: int | None = None
    corpus_position: int = -1  # position of the example's token in the build's corpus


@dataclass
class FeatureDashboard:
    index: int
    density: float
    max_activation: float
    histogram: dict
    logit_effects: dict
    head_attribution: list[float]
    similar: list[dict]
    examples: list[ExampleData] = field(default_factory=list)


@dataclass
class ExampleColumns:
    """Many features' examples as columns whose arrays are already packed (int32 ids, float16 values): how the
    dashboard builder hands over a few hundred thousand examples without a Python object each. Row i belongs to
    the feature whose index is feature[i]; every column has one entry per row."""

    feature: list[int]
    kind: list[str]
    rank: list[int]
    interval: list[int | None]
    max_position: list[int]
    corpus_position: list[int]
    token_ids: list[bytes]
    activations: list[bytes]
    dfa: list[bytes]
    dfa_heads: list[bytes]


def upsert_model(session: Session, *, slug: str, name: str, source: str, config: dict) -> ModelRecord:
    record = session.scalar(select(ModelRecord).where(ModelRecord.slug == slug))
    if record is None:
        record = ModelRecord(slug=slug, name=name, source=source, config=config)
        session.add(record)
    else:
        record.name, record.source, record.config = name, source, config
    session.flush()
    return record


def upsert_sae(session: Session, *, model: ModelRecord, slug: str, layer: int, hook_name: str, d_sae: int,
               architecture: str, source: str, metrics: dict | None = None, sae_set: str = "default") -> SAERecord:
    record = session.scalar(select(SAERecord).where(SAERecord.model_id == model.id, SAERecord.slug == slug))
    if record is None:
        record = SAERecord(model_id=model.id, slug=slug, layer=layer, hook_name=hook_name, d_sae=d_sae,
                           architecture=architecture, source=source, metrics=metrics or {}, sae_set=sae_set)
        session.add(record)
    else:
        record.layer, record.hook_name, record.d_sae, record.sae_set = layer, hook_name, d_sae, sae_set
        record.architecture, record.source = architecture, source
        if metrics is not None:
            record.metrics = metrics
    session.flush()
    return record


def put_tokens(session: Session, *, model: ModelRecord, texts: list[str]) -> None:
    """The whole vocabulary's token texts, written once per model."""
    have = session.scalar(select(func.count()).select_from(TokenRecord).where(TokenRecord.model_id == model.id))
    if have == len(texts):
        return
    _TOKEN_TEXTS.pop((str(session.get_bind().engine.url), model.id), None)
    session.execute(delete(TokenRecord).where(TokenRecord.model_id == model.id))
    # Postgres text cannot hold NUL: the byte-level token for 0x00 is stored as its visible symbol
    rows = [{"model_id": model.id, "token_id": i, "text": t.replace("\x00", "\u2400")} for i, t in enumerate(texts)]
    session.execute(insert(TokenRecord), rows)


def params_key(params: dict) -> str:
    return hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()


def start_build(session: Session, *, sae: SAERecord, params: dict) -> DashboardBuild:
    build = DashboardBuild(sae_id=sae.id, status="running", params=params, params_key=params_key(params))
    session.add(build)
    session.flush()
    return build


def finish_build(session: Session, *, build_id: int, status: str = "done") -> None:
    build = session.get(DashboardBuild, build_id)
    build.status, build.finished_at = status, utcnow()


def built_features(session: Session, *, sae: SAERecord, build_params: dict | None = None) -> set[int]:
    """Indices of this SAE's features that have a dashboard (from a build with these params, if given)."""
    query = select(FeatureRecord.index).where(FeatureRecord.sae_id == sae.id)
    if build_params is not None:
        builds = select(DashboardBuild.id).where(DashboardBuild.sae_id == sae.id,
                                                 DashboardBuild.params_key == params_key(build_params))
        query = query.where(FeatureRecord.build_id.in_(builds))
    return set(session.scalars(query))


def write_features(session: Session, *, sae: SAERecord, build_id: int | None,
                   dashboards: list[FeatureDashboard], columns: ExampleColumns | None = None) -> None:
    """Replace these features' dashboards, with their examples from each dashboard's list and from `columns`;
    callers run it in one transaction per batch of features, so a killed build leaves every feature either whole or
    untouched."""
    if not dashboards:
        return
    indices = [d.index for d in dashboards]
    if columns is not None and not set(columns.feature) <= set(indices):
        raise ValueError("example columns name features that are not among the dashboards written")
    session.execute(delete(FeatureRecord).where(FeatureRecord.sae_id == sae.id, FeatureRecord.index.in_(indices)))
    rows = session.execute(
        insert(FeatureRecord).returning(FeatureRecord.id, FeatureRecord.index, sort_by_parameter_order=True),
        [{"sae_id": sae.id, "index": d.index, "build_id": build_id, "density": d.density,
          "max_activation": d.max_activation, "histogram": d.histogram, "logit_effects": d.logit_effects,
          "head_attribution": d.head_attribution, "similar": d.similar} for d in dashboards],
    ).all()
    ids = {index: fid for fid, index in rows}
    examples = [
        (ids[d.index], e.kind, e.rank, e.interval, e.max_position, e.corpus_position, pack_ids(e.token_ids),
         pack_values(e.activations), pack_values(e.dfa), pack_values(e.dfa_heads))
        for d in dashboards for e in d.examples
    ]
    if columns is not None:
        c = columns
        examples += zip([ids[f] for f in c.feature], c.kind, c.rank, c.interval, c.max_position, c.corpus_position,
                        c.token_ids, c.activations, c.dfa, c.dfa_heads, strict=True)
    if examples:  # straight to the driver's executemany: a build writes a few hundred thousand plain rows
        connection = session.connection()
        dialect = connection.dialect
        mark = "?" if dialect.paramstyle == "qmark" else "%s"
        names = ", ".join(dialect.identifier_preparer.quote(c) for c in EXAMPLE_COLUMNS)
        marks = ", ".join([mark] * len(EXAMPLE_COLUMNS))
        connection.exec_driver_sql(f"INSERT INTO {ExampleRecord.__tablename__} ({names}) VALUES ({marks})", examples)
    if build_id is not None:
        build = session.get(DashboardBuild, build_id)
        build.features_written += len(dashboards)


EXAMPLE_COLUMNS = ("feature_id", "kind", "rank", "interval", "max_position", "corpus_position", "token_ids",
                   "activations", "dfa", "dfa_heads")  # the order of write_features' row tuples


# A model's token texts never change once written (put_tokens writes the whole vocabulary once), so readers keep
# them per database and model instead of asking for thousands of ids on every page.
_TOKEN_TEXTS: dict[tuple[str, int], dict[int, str]] = {}


def token_texts(session: Session, *, model_id: int) -> dict[int, str]:
    key = (str(session.get_bind().engine.url), model_id)
    texts = _TOKEN_TEXTS.get(key)
    if texts is None:
        texts = dict(session.execute(select(TokenRecord.token_id, TokenRecord.text)
                                     .where(TokenRecord.model_id == model_id)).all())
        if texts:
            _TOKEN_TEXTS[key] = texts
    return texts


def find_sae(session: Session, *, sae_slug: str, model_slug: str | None = None) -> SAERecord | None:
    query = select(SAERecord).where(SAERecord.slug == sae_slug)
    if model_slug is not None:
        query = query.join(ModelRecord).where(ModelRecord.slug == model_slug)
    return session.scalars(query.order_by(SAERecord.id)).first()


def read_dashboard(session: Session, *, sae: SAERecord, feature: int) -> dict | None:
    """The API body of a feature's dashboard (shared/api.md), or None when none was built."""
    record = session.scalar(select(FeatureRecord).where(FeatureRecord.sae_id == sae.id, FeatureRecord.index == feature))
    if record is None:
        return None
    examples = session.scalars(select(ExampleRecord).where(ExampleRecord.feature_id == record.id)
                               .order_by(ExampleRecord.kind, ExampleRecord.rank)).all()
    unpacked = [(e, unpack_ids(e.token_ids)) for e in examples]
    texts = token_texts(session, model_id=sae.model_id)

    def body(e: ExampleRecord, ids: list[int]) -> dict:
        out = {"tokens": [texts.get(i, f"<{i}>") for i in ids], "token_ids": ids,
               "activations": unpack_values(e.activations), "max_position": e.max_position,
               "corpus_position": e.corpus_position,
               "dfa": unpack_values(e.dfa), "dfa_heads": unpack_values(e.dfa_heads)}
        if e.interval is not None:
            out["interval"] = e.interval
        return out

    explanations = session.scalars(select(ExplanationRecord).where(
        ExplanationRecord.sae_id == sae.id, ExplanationRecord.feature == feature).order_by(
        ExplanationRecord.score.desc().nulls_last(), ExplanationRecord.updated_at.desc(),
        ExplanationRecord.id.desc())).all()  # best-scored first, as explanations.BEST_FIRST
    return {
        "sae_id": sae.slug, "layer": sae.layer, "feature": feature, "density": record.density,
        "max_activation": record.max_activation, "activation_histogram": record.histogram,
        "logit_effects": record.logit_effects, "head_attribution": record.head_attribution,
        "top_examples": [body(e, ids) for e, ids in unpacked if e.kind == "top"],
        "interval_examples": [body(e, ids) for e, ids in unpacked if e.kind == "interval"],
        "similar_features": record.similar,
        "explanations": [explanation_body(x) for x in explanations],
    }


def explanation_body(x: ExplanationRecord) -> dict:
    return {"id": x.id, "text": x.text, "method": x.method, "author": x.author, "source": x.source,
            "score": x.score, "scores": x.scores or {}, "prompt_version": x.prompt_version,
            "created_at": x.created_at.isoformat(), "updated_at": x.updated_at.isoformat()}

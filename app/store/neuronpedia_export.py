"""Export one SAE's dashboards and explanations from the store as a Neuronpedia source folder; knows nothing of
importing (app/store/neuronpedia_import.py), of the row format (app/store/neuronpedia_format.py), torch or HTTP.

It streams: it reads and writes one batch of features at a time, so a GPT-2-sized SAE never sits in memory whole.
"""

from __future__ import annotations

import functools
import json
import shutil
from pathlib import Path

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.store.dashboards import token_texts
from app.store.models import (
    DashboardBuild,
    ExampleRecord,
    ExplanationRecord,
    FeatureRecord,
    ModelRecord,
    SAERecord,
    utcnow,
)
from app.store.neuronpedia import SIDECAR, NeuronpediaError, Progress, _sae, _vocabulary
from app.store.neuronpedia_explanation_rows import explanation_row
from app.store.neuronpedia_format import (
    DEFAULT_CREATOR_ID,
    KINDS,
    JsonlGzWriter,
    Where,
    activation_row,
    feature_row,
    interval_bins,
)
from app.store.packing import unpack_values

BATCH_SIZE = 1024  # features a batch, as in Neuronpedia's exports


def export_sae(session: Session, model_slug: str, sae_slug: str, out_dir: Path, batch_size: int = BATCH_SIZE, *,
               source_set: str = "att-saex", neuronpedia_model: str | None = None,
               creator_id: str = DEFAULT_CREATOR_ID, creator_name: str = "SAE Explorer",
               progress: Progress | None = None) -> dict:
    """Write one SAE's dashboards and explanations as Neuronpedia source folder `out_dir` (its place in a Neuronpedia
    export tree is `{modelId}/{sourceId}/`). The folder is written beside it under `.partial` and renamed when whole;
    it must not exist yet, or be empty. Returns counts and the Neuronpedia ids used."""
    if batch_size < 1:
        raise NeuronpediaError("the batch size must be at least 1")
    sae = _sae(session, model_slug, sae_slug)
    model = session.get(ModelRecord, sae.model_id)
    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise NeuronpediaError(f"{out_dir} already exists and is not an empty folder: choose a new folder")
    at = Where(model_id=neuronpedia_model or model.slug, source_id=f"{sae.layer}-{source_set}",
               source_set=source_set, creator_id=creator_id)
    work = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(work, ignore_errors=True)  # what an interrupted export left
    for kind in KINDS:
        (work / kind).mkdir(parents=True)
    builds = {b.id: b.params for b in session.scalars(select(DashboardBuild).where(DashboardBuild.sae_id == sae.id)
                                                       .order_by(DashboardBuild.id))}
    _write_metadata(work, at, model, sae, builds, creator_name, batch_size)
    texts = _vocabulary(token_texts(session, model_id=model.id))
    counts = {"features": 0, "activations": 0, "explanations": 0, "batches": 0}
    for n in range(-(-sae.d_sae // batch_size)):
        lo, hi = n * batch_size, min(sae.d_sae, (n + 1) * batch_size)
        features = {f.index: f for f in session.scalars(select(FeatureRecord).where(
            FeatureRecord.sae_id == sae.id, FeatureRecord.index >= lo, FeatureRecord.index < hi))}
        explained = set(session.scalars(select(ExplanationRecord.feature).distinct().where(
            ExplanationRecord.sae_id == sae.id, ExplanationRecord.feature >= lo, ExplanationRecord.feature < hi)))
        if not features and not explained:
            continue
        name = f"batch-{n}.jsonl.gz"
        _write(work / "features" / name, (feature_row(at, i, _stored(features.get(i)))
                                          for i in sorted(features.keys() | explained)), counts, "features")
        _write(work / "activations" / name, _activation_rows(session, at, sae, lo, hi, features, builds, texts),
               counts, "activations")
        _write(work / "explanations" / name, _explanation_rows(session, at, sae, lo, hi), counts, "explanations")
        counts["batches"] += 1
        if progress:
            progress(f"batch {n}: features {lo} to {hi - 1}")
    if out_dir.exists():
        out_dir.rmdir()
    work.rename(out_dir)
    return {**counts, "modelId": at.model_id, "sourceId": at.source_id, "folder": str(out_dir)}


def _write(path: Path, rows, counts: dict, kind: str) -> None:
    writer = None
    try:
        for row in rows:
            writer = writer or JsonlGzWriter(path)
            writer.write(row)
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    if writer is not None:  # no file for a batch with no rows of this kind
        writer.close()
        counts[kind] += writer.rows


def _stored(f: FeatureRecord | None) -> dict | None:
    if f is None:
        return None
    return {"density": f.density, "max_activation": f.max_activation, "histogram": f.histogram,
            "logit_effects": f.logit_effects, "head_attribution": f.head_attribution, "similar": f.similar}


def _activation_rows(session: Session, at: Where, sae: SAERecord, lo: int, hi: int,
                     features: dict[int, FeatureRecord], builds: dict[int, dict], texts: np.ndarray):
    """The batch's examples, streamed from the database feature by feature, top examples first."""
    bins = functools.lru_cache(maxsize=4096)(  # per feature and interval, not per example
        lambda index, interval: interval_bins(features[index].max_activation, features[index].histogram, interval,
                                              (builds.get(features[index].build_id) or {}).get("n_intervals", 10)))
    stmt = (select(FeatureRecord.index, ExampleRecord.kind, ExampleRecord.rank, ExampleRecord.interval,
                   ExampleRecord.max_position, ExampleRecord.corpus_position, ExampleRecord.token_ids,
                   ExampleRecord.activations, ExampleRecord.dfa, ExampleRecord.dfa_heads)
            .join(FeatureRecord, FeatureRecord.id == ExampleRecord.feature_id)
            .where(FeatureRecord.sae_id == sae.id, FeatureRecord.index >= lo, FeatureRecord.index < hi)
            .order_by(FeatureRecord.index, ExampleRecord.kind.desc(), ExampleRecord.rank))
    for index, kind, rank, interval, max_position, corpus_position, ids, acts, dfa, heads in session.execute(
            stmt, execution_options={"yield_per": 2000}):
        token_ids = np.frombuffer(ids, dtype="<i4")
        inside = (token_ids >= 0) & (token_ids < len(texts))
        tokens = texts[np.where(inside, token_ids, 0)]
        tokens[~inside] = [f"<{i}>" for i in token_ids[~inside]]
        example = {"kind": kind, "rank": rank, "interval": interval, "max_position": max_position,
                   "corpus_position": corpus_position, "token_ids": token_ids.tolist(),
                   "activations": unpack_values(acts), "dfa": unpack_values(dfa), "dfa_heads": unpack_values(heads)}
        yield activation_row(at, index, example, tokens.tolist(), bins(index, interval if kind == "interval" else None))


def _explanation_rows(session: Session, at: Where, sae: SAERecord, lo: int, hi: int):
    stmt = (select(ExplanationRecord).where(ExplanationRecord.sae_id == sae.id, ExplanationRecord.feature >= lo,
                                            ExplanationRecord.feature < hi)
            .order_by(ExplanationRecord.feature, ExplanationRecord.id))
    for x in session.scalars(stmt):
        yield explanation_row(at, x.feature, {"id": x.id, "text": x.text, "author": x.author, "source": x.source,
                                              "score": x.score, "created_at": x.created_at, "method": x.method,
                                              "prompt_version": x.prompt_version, "scores": x.scores,
                                              "updated_at": x.updated_at})


def _write_metadata(folder: Path, at: Where, model: ModelRecord, sae: SAERecord, builds: dict[int, dict],
                    creator_name: str, batch_size: int) -> None:
    """model.jsonl, sourceset.jsonl and source.jsonl, which Neuronpedia's import creates with Prisma (only its own
    fields, so none of ours), and our sidecar describing the SAE."""
    now = utcnow().isoformat()
    cfg = model.config or {}
    params = builds[max(builds)] if builds else {}
    rows = {
        "model.jsonl": {"id": at.model_id, "displayNameShort": model.slug, "displayName": model.name,
                        "creatorId": at.creator_id, "tlensId": None, "dimension": cfg.get("d_model"),
                        "visibility": "PUBLIC", "inferenceEnabled": False, "instruct": False,
                        "layers": cfg.get("n_layers", 0), "neuronsPerLayer": cfg.get("d_mlp", 0), "owner": creator_name,
                        "website": None, "createdAt": now, "updatedAt": now},
        "sourceset.jsonl": {"modelId": at.model_id, "name": at.source_set, "hasDashboards": True,
                            "visibility": "PUBLIC", "description": "Attention output (hook_z) SAEs",
                            "type": "", "creatorName": creator_name, "urls": [], "creatorId": at.creator_id,
                            "releaseName": None, "showDfa": True, "showHeadAttribution": True, "createdAt": now},
        "source.jsonl": {"id": at.source_id, "modelId": at.model_id, "setName": at.source_set,
                         "hasDashboards": True, "inferenceEnabled": False, "visibility": "PUBLIC",
                         "creatorId": at.creator_id, "dataset": params.get("corpus"),
                         "num_prompts": None, "num_tokens_in_prompt": None, "notes": f"SAE Explorer {sae.hook_name}",
                         "createdAt": now},
    }
    for name, row in rows.items():
        (folder / name).write_text(json.dumps(row) + "\n")
    sidecar = {"format": "saex-neuronpedia", "version": 1, "batch_size": batch_size,
               "neuronpedia": {"modelId": at.model_id, "sourceId": at.source_id, "sourceSetName": at.source_set},
               "model": {"slug": model.slug, "name": model.name, "config": cfg},
               "sae": {"slug": sae.slug, "layer": sae.layer, "hook_name": sae.hook_name, "d_sae": sae.d_sae,
                       "architecture": sae.architecture, "source": sae.source, "metrics": sae.metrics},
               "builds": list(builds.values())}
    (folder / SIDECAR).write_text(json.dumps(sidecar, indent=1) + "\n")


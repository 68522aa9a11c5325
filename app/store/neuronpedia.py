"""Export and import one SAE's dashboards and explanations in Neuronpedia's export layout (a source folder of
`features/`, `activations/` and `explanations/` `batch-N.jsonl.gz` files; see app/store/neuronpedia_format.py for
the format and where it comes from); knows nothing of torch or HTTP.

Both stream: export reads and writes one batch of features at a time, import one batch file at a time, so a
GPT-2-sized SAE never sits in memory whole. Import commits each batch in its own transaction: a failure keeps every
batch already imported and nothing of the one that failed, and importing again replaces dashboards and skips
explanations already there.
"""

from __future__ import annotations

import functools
import json
import shutil
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import numpy as np
from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from app.store.dashboards import ExampleColumns, FeatureDashboard, find_sae, token_texts, write_features
from app.store.models import (
    DashboardBuild,
    ExampleRecord,
    ExplanationRecord,
    FeatureRecord,
    ModelRecord,
    SAERecord,
    utcnow,
)
from app.store.neuronpedia_format import (
    DEFAULT_CREATOR_ID,
    KINDS,
    JsonlGzWriter,
    NeuronpediaFormatError,
    ParsedExample,
    Where,
    activation_row,
    batch_files,
    explanation_row,
    feature_index,
    feature_row,
    interval_bins,
    parse_activation,
    parse_explanation,
    parse_feature,
    read_rows,
    source_of,
)
from app.store.packing import unpack_values

BATCH_SIZE = 1024  # features a batch, as in Neuronpedia's exports
SIDECAR = "saex.json"  # our description of the SAE; Neuronpedia reads only its own file names
Progress = Callable[[str], None]


class NeuronpediaError(ValueError):
    """Bad input to an export or import (unknown SAE, missing or occupied folder, malformed file), in words a user can
    act on."""


def _sae(session: Session, model_slug: str, sae_slug: str) -> SAERecord:
    sae = find_sae(session, sae_slug=sae_slug, model_slug=model_slug)
    if sae is None:
        model = session.scalar(select(ModelRecord).where(ModelRecord.slug == model_slug))
        if model is None:
            known = session.scalars(select(ModelRecord.slug).order_by(ModelRecord.slug)).all()
            raise NeuronpediaError(f"no model {model_slug!r} in the store (models: {', '.join(known) or 'none'})")
        known = [s.slug for s in model.saes]
        raise NeuronpediaError(f"model {model_slug!r} has no SAE {sae_slug!r} (its SAEs: {', '.join(known) or 'none'})")
    return sae


# --- export ---------------------------------------------------------------------------------------------------------


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


def _vocabulary(texts: dict[int, str]) -> np.ndarray:
    """Token texts as an array indexed by id (ids without one read "<id>"): one take per example, not a lookup
    per token."""
    vocab = np.array([f"<{i}>" for i in range(max(texts, default=0) + 1)], dtype=object)
    for i, t in texts.items():
        vocab[i] = t
    return vocab


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
                                              "score": x.score, "created_at": x.created_at,
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


# --- import ---------------------------------------------------------------------------------------------------------


def import_sae(session: Session, in_dir: Path, model_slug: str, sae_slug: str, *,
               progress: Progress | None = None) -> dict:
    """Read a Neuronpedia source folder (ours or Neuronpedia's own export) into an SAE already in the store,
    committing one batch file at a time. Returns counts."""
    sae = _sae(session, model_slug, sae_slug)
    folder = Path(in_dir)
    if not folder.is_dir():
        raise NeuronpediaError(f"{folder} is not a folder")
    if not (folder / "features").is_dir():
        raise NeuronpediaError(f"{folder} has no features/ folder: give the folder of one Neuronpedia source "
                               "(exports/<modelId>/<sourceId>/, holding features/, activations/ and explanations/)")
    _check_sidecar(folder, sae)
    try:
        return _import(session, folder, sae, progress)
    except NeuronpediaFormatError as exc:
        raise NeuronpediaError(str(exc)) from None


def _check_sidecar(folder: Path, sae: SAERecord) -> None:
    path = folder / SIDECAR
    if not path.exists():
        return  # Neuronpedia's own exports have none
    try:
        d_sae = json.loads(path.read_text())["sae"]["d_sae"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise NeuronpediaError(f"{path}: not the description of an SAE ({exc})") from None
    if d_sae != sae.d_sae:
        raise NeuronpediaError(f"{path}: the exported SAE has {d_sae} features, but {sae.slug} has {sae.d_sae}")


def _import(session: Session, folder: Path, sae: SAERecord, progress: Progress | None) -> dict:
    d_sae = sae.d_sae
    texts = token_texts(session, model_id=sae.model_id)
    vocab, ids_of = (_vocabulary(texts), {}) if texts else (None, None)
    for i in sorted(texts, reverse=True):  # a text several ids share reads as its smallest id
        ids_of[texts[i]] = i
    feature_files = batch_files(folder, "features")
    # where each feature's row is: (file, line), a few ints a feature, so the rows themselves stay on disk
    located: dict[int, tuple[int, int]] = {}
    source: str | None = None
    for fi, path in enumerate(feature_files):
        for n, row in read_rows(path):
            where = f"{path}, line {n}"
            index = feature_index(row, where, d_sae)
            source = source or source_of(row, where)
            _same_source(row, where, source)
            if index in located:
                other = feature_files[located[index][0]]
                raise NeuronpediaFormatError(f"{where}: feature {index} has a second row (the first is in {other}, "
                                             f"line {located[index][1]})")
            located[index] = (fi, n)
    counts = {"features": 0, "examples": 0, "explanations": 0, "explanations_skipped": 0, "batches": 0}
    done: dict[int, Path] = {}  # feature -> the activations file its dashboard came with

    def commit(dashboards: list[FeatureDashboard], columns: ExampleColumns | None) -> None:
        try:
            write_features(session, sae=sae, build_id=None, dashboards=dashboards, columns=columns)
            session.commit()
        except BaseException:
            session.rollback()
            raise
        counts["features"] += len(dashboards)
        counts["examples"] += len(columns.feature) if columns else 0
        counts["batches"] += 1

    for path in batch_files(folder, "activations"):  # a batch: an activations file and its features' rows
        examples: dict[int, list[ParsedExample]] = defaultdict(list)
        for n, row in read_rows(path):
            where = f"{path}, line {n}"
            _same_source(row, where, source)
            ex = parse_activation(row, where, d_sae, vocab, ids_of)
            if ex.index not in located:
                raise NeuronpediaFormatError(f"{where}: an example of feature {ex.index}, which has no row in "
                                             f"{folder / 'features'}")
            if ex.index in done:
                raise NeuronpediaFormatError(f"{where}: feature {ex.index}'s examples are split between "
                                             f"{done[ex.index]} and this file; each feature's must be in one file")
            examples[ex.index].append(ex)
        stored = _feature_rows(feature_files, located, sorted(examples))
        dashboards = [_dashboard(i, stored[i]) for i in sorted(examples) if stored[i] is not None]
        commit(dashboards, _columns({d.index: examples[d.index] for d in dashboards}))
        done.update(dict.fromkeys(examples, path))
        if progress:
            progress(f"{path.name}: {len(dashboards)} dashboards")
    rest = sorted(set(located) - set(done))  # features with no examples (dead ones, say): batches of their files
    for fi in sorted({located[i][0] for i in rest}):
        indices = [i for i in rest if located[i][0] == fi]
        stored = _feature_rows(feature_files, located, indices)
        dashboards = [_dashboard(i, stored[i]) for i in indices if stored[i] is not None]
        if dashboards:
            commit(dashboards, None)
            if progress:
                progress(f"{feature_files[fi].name}: {len(dashboards)} dashboards without examples")
    for path in batch_files(folder, "explanations"):
        added, skipped = _import_explanations(session, sae, path, source)
        counts["explanations"] += added
        counts["explanations_skipped"] += skipped
        counts["batches"] += 1
        if progress:
            progress(f"{path.name}: {added} explanations")
    return {**counts, "sourceId": source}


def _feature_rows(files: list[Path], located: dict[int, tuple[int, int]], indices: list[int]) -> dict[int, dict | None]:
    """The stored dashboard fields of these features, read from their files' lines."""
    wanted: dict[int, dict[int, int]] = defaultdict(dict)  # file -> line -> feature
    for i in indices:
        fi, line = located[i]
        wanted[fi][line] = i
    out = {}
    for fi, lines in wanted.items():
        for n, row in read_rows(files[fi]):
            if n in lines:
                out[lines[n]] = parse_feature(row, f"{files[fi]}, line {n}")
    return out


def _dashboard(index: int, stored: dict) -> FeatureDashboard:
    return FeatureDashboard(index=index, density=stored["density"], max_activation=stored["max_activation"],
                            histogram=stored["histogram"], logit_effects=stored["logit_effects"],
                            head_attribution=stored["head_attribution"], similar=stored["similar"])


def _columns(examples: dict[int, list[ParsedExample]]) -> ExampleColumns:
    """Examples as stored columns. Rows with our extras keep their kind, rank and interval; others (Neuronpedia's) are
    top examples when binMin is -1, ranked by activation, and interval examples numbered by their binMin."""
    c = ExampleColumns([], [], [], [], [], [], [], [], [], [])
    for index, rows in examples.items():
        if not all(e.kind is not None and e.rank is not None for e in rows):
            top = sorted((e for e in rows if e.bin_min == -1), key=lambda e: -e.peak)
            rest = [e for e in rows if e.bin_min != -1]
            number = {b: k for k, b in enumerate(sorted({e.bin_min for e in rest}))}
            rest.sort(key=lambda e: (number[e.bin_min], -e.peak))
            for rank, e in enumerate(top):
                e.kind, e.rank, e.interval = "top", rank, None
            for rank, e in enumerate(rest):
                e.kind, e.rank, e.interval = "interval", rank, number[e.bin_min]
        for e in rows:
            c.feature.append(index)
            c.kind.append(e.kind)
            c.rank.append(e.rank)
            c.interval.append(e.interval if e.kind == "interval" else None)
            c.max_position.append(e.max_position)
            c.corpus_position.append(e.corpus_position)
            c.token_ids.append(e.token_ids)
            c.activations.append(e.activations)
            c.dfa.append(e.dfa)
            c.dfa_heads.append(e.dfa_heads)
    return c


def _same_source(row: dict, where: str, source: str | None) -> None:
    layer = source_of(row, where)
    if source is not None and layer != source:
        raise NeuronpediaFormatError(f"{where}: a row of source {layer!r} among rows of {source!r}: give the folder "
                                     "of one source")


def _import_explanations(session: Session, sae: SAERecord, path: Path, source: str | None) -> tuple[int, int]:
    """One explanations file in one transaction; an explanation already stored (same feature, text, author and
    source) is skipped, so that importing twice adds nothing."""
    parsed = []
    for n, row in read_rows(path):
        _same_source(row, f"{path}, line {n}", source)
        parsed.append(parse_explanation(row, f"{path}, line {n}", sae.d_sae))
    if not parsed:
        return 0, 0
    try:
        have = set(session.execute(select(ExplanationRecord.feature, ExplanationRecord.text, ExplanationRecord.author,
                                          ExplanationRecord.source).where(
            ExplanationRecord.sae_id == sae.id, ExplanationRecord.feature.in_({x["feature"] for x in parsed}))).all())
        new = []
        for x in parsed:
            key = (x["feature"], x["text"], x["author"], x["source"])
            if key not in have:
                have.add(key)
                now = utcnow()
                new.append({"sae_id": sae.id, **x, "created_at": x["created_at"] or now,
                            "updated_at": x["updated_at"] or now})
        if new:
            session.execute(insert(ExplanationRecord), new)
        session.commit()
    except BaseException:
        session.rollback()
        raise
    return len(new), len(parsed) - len(new)

"""Import a Neuronpedia source folder (ours or Neuronpedia's own export) into an SAE already in the store; knows
nothing of exporting (app/store/neuronpedia_export.py), the row format (app/store/neuronpedia_format.py), torch or HTTP.

It streams, one batch file at a time, so a GPT-2-sized SAE never sits in memory whole, and commits each batch in its
own transaction: a failure keeps every batch already imported and nothing of the one that failed, and importing
again replaces dashboards and skips explanations already there.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from app.store.dashboards import ExampleColumns, FeatureDashboard, token_texts, write_features
from app.store.models import ExplanationRecord, SAERecord, utcnow
from app.store.neuronpedia import SIDECAR, NeuronpediaError, Progress, _sae, _vocabulary
from app.store.neuronpedia_explanation_rows import parse_explanation
from app.store.neuronpedia_format import (
    NeuronpediaFormatError,
    ParsedExample,
    batch_files,
    feature_index,
    parse_activation,
    parse_feature,
    read_rows,
    source_of,
)


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

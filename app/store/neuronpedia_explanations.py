"""Explanations with their scores as rows of Neuronpedia's `Explanation` table, in a JSONL or gzipped JSONL file, both
ways; knows nothing of dashboards (app/store/neuronpedia_export.py and _import.py move whole SAEs), torch or HTTP.

A row carries Neuronpedia's fields (hijohnnylin/neuronpedia `apps/webapp/prisma/schema.prisma`, `Explanation` and
`ExplanationScore`): id, modelId, layer (the source id; ours: the SAE's id unless another is given), index (a
string), description, authorId, typeName, explanationModelName, scoreV1, scoreV2, createdAt, updatedAt, and the
scores as Neuronpedia's API nests them: [{explanationScoreTypeName, explanationScoreModelName, value, jsonDetails}].

Ours are written as: typeName "saex-<method>" (e.g. "saex-llm:Qwen2.5-7B-Instruct", "saex-baseline"),
explanationModelName the model of an "llm:<model>" method, scoreV1 our headline score (0 when unscored:
Neuronpedia's column is not nullable), scoreV2 null, one score per scorer typed "saex-detection", "saex-fuzzing" or
"saex-embedding" whose value is that scorer's headline metric (balanced accuracy; embedding: AUROC) and whose
jsonDetails is our summary as JSON. They are not Neuronpedia's "eleuther_recall" / "eleuther_fuzz" /
"eleuther_embedding", whose jsonDetails are delphi's per-example rows, which the store does not keep. What
Neuronpedia has no field for (author, source, method, prompt version, the scores as stored) rides in `saex`.

Import reads our rows exactly and Neuronpedia's own leniently: its bulk export files hold only some keys (index,
description, explanationModelName, typeName, ...). An "eleuther_*" score with its rows in jsonDetails is summarised
as delphi's folder rows are (app/store/delphi_format.py); other scores, and those whose rows do not read, are kept as
{"value", "scorer_model"} under their type name, out of the headline.
"""

from __future__ import annotations

import gzip
import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.interpret import metrics
from app.store import explanations
from app.store.delphi_format import DelphiFormatError, summarize
from app.store.models import ExplanationRecord, SAERecord
from app.store.neuronpedia_format import DEFAULT_CREATOR_ID, EXTRA, NeuronpediaFormatError, feature_index, row_id

TYPE_PREFIX = "saex-"
ELEUTHER = {"eleuther_recall": "detection", "eleuther_detection": "detection", "eleuther_fuzz": "fuzzing",
            "eleuther_embedding": "embedding"}  # Neuronpedia's scorer types that run delphi's scorers


class NeuronpediaExplanationsError(ValueError):
    """A file that is not Neuronpedia explanation rows, or a row that cannot be read, naming the file and line."""


# --- export ---------------------------------------------------------------------------------------------------------


def explanation_row(x: ExplanationRecord, *, model_id: str, layer: str,
                    creator_id: str = DEFAULT_CREATOR_ID) -> dict:
    """One stored explanation as a Neuronpedia Explanation row with its scores."""
    scores = []
    for name, summary in (x.scores or {}).items():
        if not isinstance(summary, dict):
            continue
        if name in metrics.HEADLINE:
            kind, value = TYPE_PREFIX + name, summary.get(metrics.HEADLINE[name])
        else:  # a score read from Neuronpedia, under its own type name
            kind, value = name, summary.get("value")
        if value is not None:
            scores.append({"explanationScoreTypeName": kind, "explanationScoreModelName": summary.get("scorer_model"),
                           "value": value, "jsonDetails": json.dumps(summary)})
    return {
        "id": row_id(model_id, layer, x.feature, "explanation", x.id),
        "modelId": model_id, "layer": layer, "index": str(x.feature), "description": x.text, "authorId": creator_id,
        "typeName": TYPE_PREFIX + x.method,
        "explanationModelName": x.method.removeprefix("llm:") if x.method.startswith("llm:") else None,
        "scoreV1": x.score if x.score is not None else 0.0, "scoreV2": None,
        "createdAt": x.created_at.isoformat(), "updatedAt": x.updated_at.isoformat(), "scores": scores,
        EXTRA: {"author": x.author, "source": x.source, "method": x.method, "prompt_version": x.prompt_version,
                "score": x.score, "scores": x.scores},
    }


def export_explanations(session: Session, sae: SAERecord, path: Path, *, model_id: str | None = None,
                        layer: str | None = None, features: Iterable[int] | None = None, method: str | None = None,
                        creator_id: str = DEFAULT_CREATOR_ID) -> dict:
    """Write the SAE's explanations (all of them, or those of `features` / `method`) as Neuronpedia Explanation rows,
    one JSON object a line, gzipped when `path` ends in .gz. modelId defaults to the model's slug and layer to the
    SAE's id. The file appears whole or not at all. Returns counts."""
    path = Path(path)
    model_id, layer = model_id or sae.model.slug, layer or sae.slug
    stmt = select(ExplanationRecord).where(ExplanationRecord.sae_id == sae.id)
    if method is not None:
        stmt = stmt.where(ExplanationRecord.method == method)
    wanted = None if features is None else sorted(set(features))
    part = path.with_name(path.name + ".part")
    n = 0
    with (gzip.open(part, "wb", compresslevel=5) if path.name.endswith(".gz") else open(part, "wb")) as f:
        for start in range(0, 1 if wanted is None else len(wanted), 5000):  # bound the IN list
            chunk = stmt if wanted is None else stmt.where(ExplanationRecord.feature.in_(wanted[start:start + 5000]))
            for x in session.scalars(chunk.order_by(ExplanationRecord.feature, ExplanationRecord.id)):
                f.write(orjson.dumps(explanation_row(x, model_id=model_id, layer=layer, creator_id=creator_id)) + b"\n")
                n += 1
    os.replace(part, path)
    return {"explanations": n, "modelId": model_id, "layer": layer, "path": str(path)}


# --- import ---------------------------------------------------------------------------------------------------------


@dataclass
class _Parsed:
    feature: int
    text: str
    author: str
    source: str
    method: str
    prompt_version: str | None
    scores: dict
    score: float | None


def row_files(path: Path) -> list[Path]:
    """A file, or a folder's .jsonl and .jsonl.gz files (a Neuronpedia source folder: those of its explanations/),
    batch-N files in batch order."""
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise NeuronpediaExplanationsError(f"{path}: no such file or folder")
    folder = path / "explanations" if (path / "explanations").is_dir() else path
    files = [p for p in folder.iterdir() if p.is_file() and p.name.endswith((".jsonl", ".jsonl.gz"))]
    if not files:
        raise NeuronpediaExplanationsError(f"{folder} holds no .jsonl or .jsonl.gz files of explanation rows")

    def order(p: Path) -> tuple:
        stem = p.name.split(".")[0]
        number = stem.removeprefix("batch-")
        return (0, int(number), "") if stem.startswith("batch-") and number.isdigit() else (1, 0, p.name)

    return sorted(files, key=order)


def read_rows(path: Path) -> Iterator[tuple[str, dict]]:
    """(where, row) of a JSONL file, gzipped or not; blank lines skipped."""
    try:
        with open(path, "rb") as raw:
            gzipped = raw.read(2) == b"\x1f\x8b"
        with (gzip.open(path, "rb") if gzipped else open(path, "rb")) as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = orjson.loads(line)
                except orjson.JSONDecodeError as exc:
                    raise NeuronpediaExplanationsError(f"{path}, line {n}: not a JSON row ({exc})") from None
                if not isinstance(row, dict):
                    raise NeuronpediaExplanationsError(f"{path}, line {n}: a row must be a JSON object")
                yield f"{path}, line {n}", row
    except (OSError, EOFError) as exc:
        raise NeuronpediaExplanationsError(f"{path}: cannot read it ({exc})") from None


def parse_row(row: dict, where: str, d_sae: int) -> _Parsed:
    try:
        feature = feature_index(row, where, d_sae)
    except NeuronpediaFormatError as exc:
        raise NeuronpediaExplanationsError(str(exc)) from None
    text = row.get("description")
    if not isinstance(text, str) or not text.strip():
        raise NeuronpediaExplanationsError(f"{where}: `description` must be a non-empty string")
    extra = row.get(EXTRA) if isinstance(row.get(EXTRA), dict) else {}
    type_name = row.get("typeName") if isinstance(row.get("typeName"), str) else None
    model = row.get("explanationModelName") if isinstance(row.get("explanationModelName"), str) else None
    ours = type_name[len(TYPE_PREFIX):] if type_name and type_name.startswith(TYPE_PREFIX) else None
    method = extra.get("method") or ours or (f"llm:{model}" if model else "imported" if type_name else "human")
    source = extra.get("source") if extra.get("source") in ("human", "automatic") else (
        "automatic" if model or type_name else "human")
    author = extra.get("author") or model or row.get("authorId") or "neuronpedia"
    if extra:
        prompt_version = extra.get("prompt_version")
    else:  # Neuronpedia's explanation type names the explainer and its prompt
        prompt_version = None if ours else type_name
    scores = extra["scores"] if isinstance(extra.get("scores"), dict) else _scores(row.get("scores"), where)
    score = extra.get("score") if isinstance(extra.get("score"), int | float) else metrics.headline(scores)
    return _Parsed(feature, text.strip(), str(author)[:200], source, str(method)[:120],
                   None if prompt_version is None else str(prompt_version)[:32], scores, score)


def _scores(entries: object, where: str) -> dict:
    if entries is None:
        return {}
    if not isinstance(entries, list):
        raise NeuronpediaExplanationsError(f"{where}: `scores` must be a list")
    out: dict = {}
    for i, s in enumerate(entries):
        if not isinstance(s, dict) or not isinstance(s.get("explanationScoreTypeName"), str):
            raise NeuronpediaExplanationsError(f"{where}, score {i}: a score needs an `explanationScoreTypeName`")
        kind, value, model = s["explanationScoreTypeName"], s.get("value"), s.get("explanationScoreModelName")
        if value is not None and (not isinstance(value, int | float) or isinstance(value, bool)):
            raise NeuronpediaExplanationsError(f"{where}, score {i}: `value` must be a number")
        details = s.get("jsonDetails")
        try:
            details = json.loads(details) if isinstance(details, str) and details else details
        except ValueError:
            details = None
        name = kind.removeprefix(TYPE_PREFIX)
        if kind.startswith(TYPE_PREFIX) and name in metrics.HEADLINE:
            key, summary = name, details if isinstance(details, dict) else {metrics.HEADLINE[name]: value}
        elif kind in ELEUTHER and isinstance(details, list) and details:
            try:
                key, summary = ELEUTHER[kind], summarize(ELEUTHER[kind], details, "jsonDetails")
            except DelphiFormatError as exc:  # rows of another shape than delphi's: the value alone, and why
                key, summary = kind, {"value": value, "unread": str(exc)}
        else:  # a measure of Neuronpedia's own, or one without its rows: kept, but out of the headline
            key, summary = kind, {"value": value}
        if model is not None:
            summary["scorer_model"] = model
        out[key] = summary
    return out


def import_explanations(session: Session, sae: SAERecord, path: Path, *, layer: str | None = None) -> dict:
    """Read Neuronpedia Explanation rows (a file, or a folder of them) into the SAE. Rows of another `layer` (the
    source id) than the one given are skipped; without one, every row that names a layer must name the same.
    Importing again adds nothing: an explanation with the same feature, method and text gets the scores read now.
    Every row is read and checked before anything is stored. Flushes, does not commit. Returns counts."""
    counts = {"explanations": 0, "updated": 0, "unchanged": 0, "other_layer": 0, "scored": 0}
    parsed: list[_Parsed] = []
    seen: str | None = layer
    for file in row_files(path):
        for where, row in read_rows(file):
            at = row.get("layer")
            if at is not None:
                if seen is None:
                    seen = str(at)
                elif str(at) != seen:
                    if layer is not None:
                        counts["other_layer"] += 1
                        continue
                    raise NeuronpediaExplanationsError(f"{where}: a row of layer {at!r} among rows of {seen!r}: name "
                                                       "the layer (source id) to import")
            parsed.append(parse_row(row, where, sae.d_sae))
    have = explanations.by_feature_method_text(session, sae=sae, features={x.feature for x in parsed})
    for x in parsed:
        counts["scored"] += bool(x.scores)
        record = have.get((x.feature, x.method, x.text))
        if record is None:
            have[(x.feature, x.method, x.text)] = explanations.create(
                session, sae=sae, feature=x.feature, text=x.text, author=x.author, source=x.source, method=x.method,
                prompt_version=x.prompt_version, scores=x.scores or None, score=x.score)
            counts["explanations"] += 1
        elif x.scores:  # one scored again: its new scores (the text and method are the same)
            score = next((v for v in (metrics.headline({**(record.scores or {}), **x.scores}), x.score, record.score)
                          if v is not None), None)
            explanations.set_scores(session, record=record, scores=x.scores, score=score)
            counts["updated"] += 1
        else:
            counts["unchanged"] += 1
    return {**counts, "layer": seen}

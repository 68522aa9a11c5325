"""The Explanation rows of a Neuronpedia source export (explanations/batch-*.jsonl.gz, beside its features and
activations): written from stored explanations and read back, our extras (author, method, prompt version, scores)
carried in the EXTRA field; knows nothing of the database session or of torch."""

from __future__ import annotations

from datetime import datetime

from app.store.neuronpedia_format import EXTRA, NeuronpediaFormatError, Where, _num, feature_index, row_id


def explanation_row(at: Where, index: int, x: dict) -> dict:
    """An Explanation row from a stored explanation (id, text, author, source, score, created_at, updated_at).
    typeName and explanationModelName name rows of Neuronpedia's own tables, so they stay null; the score goes in
    the `scores` shape of Neuronpedia's API (its exports leave ExplanationScore rows out, its importer ignores it)."""
    return {
        "id": row_id(at.model_id, at.source_id, index, "explanation", x["id"]),
        "modelId": at.model_id, "layer": at.source_id, "index": str(index), "authorId": at.creator_id,
        "description": x["text"], "typeName": None, "explanationModelName": None,
        "createdAt": x["created_at"].isoformat(), "updatedAt": x["updated_at"].isoformat(),
        "scores": [] if x["score"] is None else [{"value": x["score"], "explanationScoreTypeName": None,
                                                   "explanationScoreModelName": None}],
        EXTRA: {k: x.get(k) for k in ("author", "source", "score", "method", "prompt_version", "scores")},
    }


def parse_explanation(row: dict, where: str, d_sae: int) -> dict:
    """Stored fields of an explanation (feature, text, author, source, score, created_at, updated_at) from an
    Explanation row; without our extras, an explanation with an explainer model or type is automatic, by that model."""
    index = feature_index(row, where, d_sae)
    text = row.get("description")
    if not isinstance(text, str) or not text.strip():
        raise NeuronpediaFormatError(f"{where}: `description` must be a non-empty string")
    extra = row.get(EXTRA) if isinstance(row.get(EXTRA), dict) else {}
    machine = row.get("explanationModelName") or row.get("typeName")
    author = extra.get("author") or row.get("explanationModelName") or row.get("authorId") or "neuronpedia"
    source = extra.get("source") if extra.get("source") in ("human", "automatic") else (
        "automatic" if machine else "human")
    score = extra.get("score") if EXTRA in row else next(
        (s.get("value") for s in row.get("scores") or [] if isinstance(s, dict)), None)
    created = _time(row.get("createdAt"), where, "createdAt")
    scores = extra.get("scores") if isinstance(extra.get("scores"), dict) else None
    return {"feature": index, "text": text, "author": str(author)[:200], "source": source,
            "score": None if score is None else _num(score, where, "score"), "scores": scores,
            "method": str(extra.get("method") or ("human" if source == "human" else "imported"))[:120],
            "prompt_version": extra.get("prompt_version") if isinstance(extra.get("prompt_version"), str) else None,
            "created_at": created, "updated_at": _time(row.get("updatedAt"), where, "updatedAt") or created}


def _time(value, where: str, field: str) -> datetime | None:
    if value is None:
        return None
    try:
        return datetime.fromisoformat(value)
    except (TypeError, ValueError):
        raise NeuronpediaFormatError(f"{where}: `{field}` must be an ISO 8601 time, got {value!r:.60}") from None

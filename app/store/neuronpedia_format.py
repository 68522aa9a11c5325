"""Neuronpedia's export layout, row by row: our feature dashboards, examples and explanations as the JSON rows of
Neuronpedia's `Neuron`, `Activation` and `Explanation` tables and back, and the gzipped JSONL batch files that hold
them; knows nothing of databases, torch or HTTP (app/store/neuronpedia_export.py and _import.py move the rows).

The format, carried over field for field (fields and layout only, no code) from hijohnnylin/neuronpedia, and for
files since moved or removed there, from zazer0/neuronpedia (a copy of it):

- hijohnnylin `apps/webapp/prisma/schema.prisma`: the columns of `Neuron` (maxActApprox, frac_nonzero,
  freq_hist_data_bar_heights/_values, pos_str/pos_values, neg_str/neg_values, decoder_weights_dist,
  topkCosSimIndices/Values, ...), `Activation` (tokens, values, maxValue, maxValueTokenIndex, minValue, dfaValues,
  dfaTargetIndex, dfaMaxValue, binMin, binMax, binContains, qualifyingTokenIndex, ...), `Explanation` (description,
  authorId, typeName, explanationModelName, createdAt, ...) and `ExplanationScore` (value, explanationScoreTypeName,
  ...); every row is keyed by modelId, layer (the source id "{layer}-{source set}", e.g. "0-att-kk") and index,
  all three strings.
- hijohnnylin `utils/neuronpedia-utils/neuronpedia_utils/export-data.py`: a source's folder `{modelId}/{sourceId}/`
  holds model.jsonl, source.jsonl, sourceset.jsonl and `features/`, `activations/`, `explanations/` of
  `batch-N.jsonl.gz` (gzip level 5, 1,024 features a batch; activations batch N holds the examples of features
  N·1024 to N·1024+1023); the columns each file carries.
- zazer0 `utils/neuronpedia-utils/neuronpedia_utils/convert-saedashboard-to-neuronpedia-export.py` and its
  `db_models/*.py`: maxValue, maxValueTokenIndex and minValue are taken over the example's values; the fields of
  the metadata rows.
- hijohnnylin `apps/webapp/lib/db/import.ts` and zazer0 `apps/webapp/app/api/admin/import/route.ts`: Neuronpedia
  imports a file by the keys of its first row that are columns of the table (`jsonb_to_recordset`, ON CONFLICT DO
  NOTHING), so extra keys are ignored, every row of a file must have the same keys, and ids (cuids made by the
  client) must be in the rows; model, source set and source rows go through Prisma's create, which refuses unknown
  keys.
- jbloomAus/SAEDashboard `sae_dashboard/neuronpedia/neuronpedia_converter.py`: decoder_weights_dist is the
  weight-based attribution by head; freq_hist bar values are bin centres and heights counts; top examples have
  binMin -1, binMax the feature's maximum and binContains -1, interval examples their interval's bounds and the
  fraction of activations in it; dfaValues has one value per token, toward dfaTargetIndex, and dfaMaxValue is their
  maximum.

What Neuronpedia has no field for rides in each row's `saex` object (ignored by Neuronpedia's importer), so that
our own export and import round-trip exactly: histogram bin edges; each example's kind, rank, interval, token ids,
max_position, corpus position and per-head DFA; each explanation's author, source and score. Rows without it
(Neuronpedia's own exports) are read too, from Neuronpedia's fields alone: their tokens come as text, read as the
smallest id with that text in the model's vocabulary.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import re
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import orjson

from app.store.packing import pack_ids, pack_values

EXTRA = "saex"  # the key of what Neuronpedia has no field for
DEFAULT_CREATOR_ID = "clkht01d40000jv08hvalcvly"  # the creator id Neuronpedia's own export scripts default to
KINDS = ("features", "activations", "explanations")
BATCH = re.compile(r"^batch-(\d+)\.jsonl\.gz$")


class NeuronpediaFormatError(ValueError):
    """A file or row that does not follow the format; the message names the file and line."""


# --- files ----------------------------------------------------------------------------------------------------------


class JsonlGzWriter:
    """Rows to a gzipped JSONL file, written under a temporary name and renamed when whole, so that a file of
    this name is never a half-written batch. Level 1, not Neuronpedia's 5: compressing was two thirds of an
    export's time at level 5, and any level reads the same."""

    def __init__(self, path: Path) -> None:
        self.path, self.tmp = path, path.with_name(path.name + ".tmp")
        self.file = gzip.open(self.tmp, "wb", compresslevel=1)
        self.rows = 0

    def write(self, row: dict) -> None:
        self.file.write(orjson.dumps(row) + b"\n")
        self.rows += 1

    def close(self) -> None:
        self.file.close()
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        self.file.close()
        self.tmp.unlink(missing_ok=True)


def batch_files(folder: Path, kind: str) -> list[Path]:
    """The batch files of one kind in a source folder, by batch number (other .jsonl.gz files after them, by name)."""
    sub = folder / kind
    if not sub.is_dir():
        return []
    files = [p for p in sub.iterdir() if p.name.endswith(".jsonl.gz") and p.is_file()]
    return sorted(files, key=lambda p: (0, int(m.group(1)), "") if (m := BATCH.match(p.name)) else (1, 0, p.name))


def read_rows(path: Path) -> Iterator[tuple[int, dict]]:
    """(line number, row) of a gzipped JSONL file, one line at a time; blank lines are skipped."""
    try:
        with gzip.open(path, "rb") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = orjson.loads(line)
                except orjson.JSONDecodeError as exc:
                    raise NeuronpediaFormatError(f"{path}, line {n}: not a JSON row ({exc})") from None
                if not isinstance(row, dict):
                    raise NeuronpediaFormatError(f"{path}, line {n}: a row must be a JSON object")
                yield n, row
    except (OSError, EOFError, zlib.error) as exc:  # not gzip, truncated, unreadable
        raise NeuronpediaFormatError(f"{path}: not a readable gzip file ({exc})") from None


def row_id(*parts: object) -> str:
    """A 25-character id for a row (Neuronpedia's ids are 25-character cuids), the same on every export."""
    return "saex" + hashlib.sha256("/".join(map(str, parts)).encode()).hexdigest()[:21]


# --- rows out -------------------------------------------------------------------------------------------------------


@dataclass
class Where:
    """Where rows go in Neuronpedia: model id, source id ("{layer}-{set}"), its set, and who created them."""

    model_id: str
    source_id: str
    source_set: str
    creator_id: str = DEFAULT_CREATOR_ID


def feature_row(at: Where, index: int, record: dict | None) -> dict:
    """A Neuron row from a dashboard's stored fields (density, max_activation, histogram, logit_effects,
    head_attribution, similar); None: a feature with explanations but no dashboard (Neuronpedia keys explanations to
    a Neuron row, so it gets an empty one, marked so that our import skips it)."""
    d = record or {"density": 0.0, "max_activation": 0.0, "histogram": {"bin_edges": [], "counts": []},
                   "logit_effects": {"top": [], "bottom": []}, "head_attribution": [], "similar": []}
    edges, counts = d["histogram"].get("bin_edges", []), d["histogram"].get("counts", [])
    top, bottom = d["logit_effects"].get("top", []), d["logit_effects"].get("bottom", [])
    return {
        "modelId": at.model_id, "layer": at.source_id, "index": str(index), "creatorId": at.creator_id,
        "sourceSetName": at.source_set, "maxActApprox": d["max_activation"], "frac_nonzero": d["density"],
        "freq_hist_data_bar_heights": counts,
        "freq_hist_data_bar_values": [(a + b) / 2 for a, b in zip(edges, edges[1:], strict=False)],
        "logits_hist_data_bar_heights": [], "logits_hist_data_bar_values": [],
        "neuron_alignment_indices": [], "neuron_alignment_values": [], "neuron_alignment_l1": [],
        "correlated_neurons_indices": [], "correlated_neurons_pearson": [], "correlated_neurons_l1": [],
        "decoder_weights_dist": d["head_attribution"],
        "pos_str": [t["token"] for t in top], "pos_values": [t["value"] for t in top],
        "neg_str": [t["token"] for t in bottom], "neg_values": [t["value"] for t in bottom],
        "topkCosSimIndices": [s["feature"] for s in d["similar"]],
        "topkCosSimValues": [s["cosine"] for s in d["similar"]],
        "hasVector": False, "vector": [], "vectorLabel": None, "hookName": None,
        EXTRA: {"bin_edges": edges} if record is not None else {"no_dashboard": True},
    }


def activation_row(at: Where, index: int, example: dict, tokens: list[str], bins: tuple[float, float, float]) -> dict:
    """An Activation row from a stored example (kind, rank, interval, max_position, corpus_position, token_ids,
    activations, dfa, dfa_heads as lists) and its tokens' texts; bins: (binMin, binMax, binContains)."""
    values, dfa, target = example["activations"], example["dfa"], example["max_position"]
    peak = max(range(len(values)), key=values.__getitem__) if values else 0
    return {
        "id": row_id(at.model_id, at.source_id, index, example["kind"], example["rank"]),
        "modelId": at.model_id, "layer": at.source_id, "index": str(index), "creatorId": at.creator_id,
        "dataSource": None, "dataIndex": None, "tokens": tokens, "values": values,
        "maxValue": values[peak] if values else 0.0, "maxValueTokenIndex": peak,
        "minValue": min(values) if values else 0.0,
        "dfaValues": dfa, "dfaTargetIndex": target if dfa else None, "dfaMaxValue": max(dfa) if dfa else None,
        "binMin": bins[0], "binMax": bins[1], "binContains": bins[2], "qualifyingTokenIndex": target,
        EXTRA: {"kind": example["kind"], "rank": example["rank"], "interval": example["interval"],
                "max_position": target, "corpus_position": example["corpus_position"],
                "token_ids": example["token_ids"], "dfa_heads": example["dfa_heads"]},
    }


def interval_bins(max_activation: float, histogram: dict, interval: int | None, n_intervals: int,
                  ) -> tuple[float, float, float]:
    """(binMin, binMax, binContains) as SAEDashboard writes them: (-1, max, -1) for a top example; an interval's
    bounds and the fraction of the histogram's activations whose bin centre falls in it."""
    if interval is None:
        return -1.0, max_activation, -1.0
    lo, hi = max_activation * interval / n_intervals, max_activation * (interval + 1) / n_intervals
    edges, counts = histogram.get("bin_edges", []), histogram.get("counts", [])
    total = sum(counts)
    last = interval == n_intervals - 1
    inside = sum(c for a, b, c in zip(edges, edges[1:], counts, strict=False)
                 if lo <= (a + b) / 2 < hi or (last and (a + b) / 2 >= hi))
    return lo, hi, inside / total if total else 0.0


# --- rows in --------------------------------------------------------------------------------------------------------

NUMBERS, INTS, STRS = frozenset((int, float)), frozenset((int,)), frozenset((str,))  # JSON values' exact types


def _num(value, where: str, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise NeuronpediaFormatError(f"{where}: `{field}` must be a number, got {value!r:.60}")
    return float(value)


def _int(value, where: str, field: str) -> int:
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise NeuronpediaFormatError(f"{where}: `{field}` must be an integer, got {value!r:.60}")
    return value


def _list(row: dict, field: str, where: str, kinds: frozenset, required: bool = False) -> list:
    value = row.get(field)
    if value is None and not required:
        return []
    if not isinstance(value, list) or not set(map(type, value)) <= kinds:  # by exact type: no bools, at C speed
        what = {NUMBERS: "numbers", INTS: "integers", STRS: "strings"}[kinds]
        raise NeuronpediaFormatError(f"{where}: `{field}` must be a list of {what}")
    return value


def feature_index(row: dict, where: str, d_sae: int) -> int:
    if "index" not in row:
        raise NeuronpediaFormatError(f"{where}: the row has no `index`")
    index = _int(row["index"], where, "index")
    if not 0 <= index < d_sae:
        raise NeuronpediaFormatError(f"{where}: feature index {index} is outside this SAE's 0 to {d_sae - 1}")
    return index


def source_of(row: dict, where: str) -> str:
    layer = row.get("layer")
    if not isinstance(layer, str | int) or isinstance(layer, bool):
        raise NeuronpediaFormatError(f"{where}: the row has no `layer` (the source id, e.g. \"0-att-kk\")")
    return str(layer)


def parse_feature(row: dict, where: str) -> dict | None:
    """The stored dashboard fields of a Neuron row, or None for one our export marked as having no dashboard."""
    extra = row.get(EXTRA) if isinstance(row.get(EXTRA), dict) else {}
    if extra.get("no_dashboard"):
        return None
    centres = _list(row, "freq_hist_data_bar_values", where, NUMBERS)
    heights = _list(row, "freq_hist_data_bar_heights", where, NUMBERS)
    if len(centres) != len(heights):
        raise NeuronpediaFormatError(f"{where}: freq_hist_data_bar_values and _heights differ in length")
    edges = extra.get("bin_edges")
    if not (isinstance(edges, list) and len(edges) == len(heights) + 1):
        edges = edges_from_centres(centres)
    pos_str, neg_str = _list(row, "pos_str", where, STRS), _list(row, "neg_str", where, STRS)
    pos_values, neg_values = _list(row, "pos_values", where, NUMBERS), _list(row, "neg_values", where, NUMBERS)
    cos_i, cos_v = _list(row, "topkCosSimIndices", where, INTS), _list(row, "topkCosSimValues", where, NUMBERS)
    if len(pos_str) != len(pos_values) or len(neg_str) != len(neg_values) or len(cos_i) != len(cos_v):
        raise NeuronpediaFormatError(f"{where}: pos_str/pos_values, neg_str/neg_values or topkCosSimIndices/Values "
                                     "differ in length")
    return {
        "density": _num(row.get("frac_nonzero", 0.0), where, "frac_nonzero"),
        "max_activation": _num(row.get("maxActApprox") or 0.0, where, "maxActApprox"),
        "histogram": {"bin_edges": edges, "counts": [round(h) for h in heights]},
        "logit_effects": {"top": [{"token": t, "value": v} for t, v in zip(pos_str, pos_values, strict=True)],
                          "bottom": [{"token": t, "value": v} for t, v in zip(neg_str, neg_values, strict=True)]},
        "head_attribution": _list(row, "decoder_weights_dist", where, NUMBERS),
        "similar": [{"feature": i, "cosine": v} for i, v in zip(cos_i, cos_v, strict=True)],
    }


def edges_from_centres(centres: list[float]) -> list[float]:
    """Bin edges of equal-width bins from their centres (Neuronpedia keeps only centres)."""
    if not centres:
        return []
    width = centres[1] - centres[0] if len(centres) > 1 else 2 * abs(centres[0]) or 1.0
    return [c - width / 2 for c in centres] + [centres[-1] + width / 2]


@dataclass
class ParsedExample:
    """One Activation row, packed as stored; kind/rank/interval are None where the row lacks our extras."""

    index: int
    kind: str | None
    rank: int | None
    interval: int | None
    bin_min: float
    peak: float  # the activation at max_position, to rank examples read without our extras
    max_position: int
    corpus_position: int
    token_ids: bytes
    activations: bytes
    dfa: bytes
    dfa_heads: bytes


def parse_activation(row: dict, where: str, d_sae: int, vocab: np.ndarray | None,
                     ids_of: dict[str, int] | None) -> ParsedExample:
    """vocab: the target model's token texts, an object array indexed by id (None: unknown, token ids are then
    taken on trust); ids_of: text to id, for rows with tokens only as text (Neuronpedia's own); None without a
    vocabulary."""
    index = feature_index(row, where, d_sae)
    tokens = _list(row, "tokens", where, STRS, required=True)
    values = _list(row, "values", where, NUMBERS, required=True)
    if len(values) != len(tokens):
        raise NeuronpediaFormatError(f"{where}: `values` has {len(values)} entries for {len(tokens)} tokens")
    dfa = _list(row, "dfaValues", where, NUMBERS)
    if dfa and len(dfa) != len(tokens):
        raise NeuronpediaFormatError(f"{where}: `dfaValues` has {len(dfa)} entries for {len(tokens)} tokens")
    extra = row.get(EXTRA) if isinstance(row.get(EXTRA), dict) else {}
    position = extra.get("max_position", row.get("qualifyingTokenIndex"))
    if position is None:
        position = row.get("dfaTargetIndex")
    if position is None:
        position = row.get("maxValueTokenIndex", 0)
    position = _int(position, where, "qualifyingTokenIndex")
    if tokens and not 0 <= position < len(tokens):
        raise NeuronpediaFormatError(f"{where}: the example's token index {position} is outside its "
                                     f"{len(tokens)} tokens")
    ids = extra.get("token_ids")
    if ids is not None:
        ids = _list(extra, "token_ids", where + f" (`{EXTRA}`)", INTS)
        if len(ids) != len(tokens):
            raise NeuronpediaFormatError(f"{where}: `{EXTRA}.token_ids` has {len(ids)} ids for {len(tokens)} tokens")
        if vocab is not None and ids:
            a = np.asarray(ids)
            if a.min() < 0 or a.max() >= len(vocab):
                raise NeuronpediaFormatError(f"{where}: token ids must be from 0 to {len(vocab) - 1}, this model's "
                                             "vocabulary")
            differ = np.flatnonzero(vocab[a] != np.array(tokens, dtype=object))
            if len(differ):
                k = int(differ[0])
                raise NeuronpediaFormatError(
                    f"{where}: token id {ids[k]} is {tokens[k]!r} in the file but {vocab[ids[k]]!r} in this model's "
                    "vocabulary: the export comes from a model with another tokenizer")
    elif ids_of is None:
        raise NeuronpediaFormatError(f"{where}: the row has tokens only as text and this model has no token table to "
                                     "read them with")
    else:
        try:
            ids = [ids_of[t] for t in tokens]
        except KeyError as exc:
            raise NeuronpediaFormatError(f"{where}: token {exc.args[0]!r} is not in this model's vocabulary") from None
    heads = _list(extra, "dfa_heads", where + f" (`{EXTRA}`)", NUMBERS)
    kind = extra.get("kind") if extra.get("kind") in ("top", "interval") else None
    bin_min = row.get("binMin")
    return ParsedExample(
        index=index, kind=kind, rank=_int(extra["rank"], where, "rank") if kind and "rank" in extra else None,
        interval=_int(extra["interval"], where, "interval") if kind and extra.get("interval") is not None else None,
        bin_min=-1.0 if bin_min is None else _num(bin_min, where, "binMin"),
        peak=float(values[position]) if values else 0.0, max_position=position,
        corpus_position=_int(extra.get("corpus_position", -1), where, "corpus_position"),
        token_ids=pack_ids(ids), activations=pack_values(values), dfa=pack_values(dfa), dfa_heads=pack_values(heads),
    )

"""delphi result folders (EleutherAI's auto-interpretation runs) in and out of the store: each latent's explanation
and its scores, in delphi's layout and file formats; knows nothing of torch, HTTP or language models, nor of the
rest of a delphi run (cached activations in latents/, neighbours, plots).

The layout, as delphi's __main__.py writes it (one folder per run):

    run_config.json                          the run's settings; `explainer_model` names the explainer
    explanations/<module>_latent<N>.txt      one JSON string: the explanation
    scores/<scorer>/<module>_latent<N>.txt   a JSON array: one row per example the scorer was shown

Scorer folders carry delphi's names: "detection", "fuzz" (ours: "fuzzing") and "embedding". Detection and fuzz rows
are {str_tokens, activations, distance, activating, prediction, probability, correct}; embedding rows {text,
distance, similarity}, where an example activates when its distance (its quantile) is 0 or more. Our summary of a
scorer comes from its rows as app/interpret/metrics.py computes it, per latent (delphi's own analysis pools all
latents).

The store keeps each explanation's summary scores, not the per-example rows, so export_delphi writes the explanation
files and, for the scores, `saex_scores.json`: each exported latent's text, author, source, method, prompt version
and summary scores. delphi ignores that file; import_delphi reads it for the scorers that have no rows, and for the
method and author of our own exports. Rows exist only while scoring: `saex explain` writes them as it goes with
write_delphi_scores (and the explanation with write_delphi_explanation), and import_delphi reads them back.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import orjson
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.interpret import metrics
from app.store import explanations
from app.store.models import ExplanationRecord, SAERecord

SCORER_FOLDERS = {"detection": "detection", "fuzzing": "fuzz", "embedding": "embedding"}  # ours -> delphi's
OURS = {folder: ours for ours, folder in SCORER_FOLDERS.items()}
SUMMARY_FILE = "saex_scores.json"
SUMMARY_FORMAT = "saex-delphi-scores/1"
UNPARSED = "Explanation could not be parsed"  # how delphi's explainer writes a reply it could not read
NUMBER = (int, float)


class DelphiFormatError(ValueError):
    """A folder that is not a delphi run, or a file in it that cannot be read, in words a user can act on."""


def latent_name(module: str, feature: int) -> str:
    """delphi's name of a latent (`Latent.__repr__`), the stem of its files."""
    return f"{module}_latent{feature}"


def parse_latent_name(stem: str) -> tuple[str, int] | None:
    module, sep, index = stem.rpartition("_latent")
    if not sep or not module or not index.isdigit():
        return None
    return module, int(index)


def _check_module(module: str) -> str:
    if not module or "/" in module or module.startswith("."):
        raise DelphiFormatError(f"module name {module!r} cannot name a file (delphi's names look like "
                                "'blocks.1.attn.hook_z')")
    return module


def _dump(path: Path, value: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY))
    return path


def write_delphi_explanation(folder: Path, module: str, feature: int, text: str) -> Path:
    """explanations/<module>_latent<N>.txt: the explanation as one JSON string, as delphi writes it."""
    return _dump(Path(folder) / "explanations" / f"{latent_name(_check_module(module), feature)}.txt", text)


def write_delphi_scores(folder: Path, module: str, feature: int, scorer: str, rows: Sequence[dict]) -> Path:
    """scores/<scorer>/<module>_latent<N>.txt: one scorer's per-example rows (ours, as app/interpret/scorers.py
    returns them, are already delphi's); `scorer` is ours ("fuzzing") or delphi's ("fuzz")."""
    folder_name = SCORER_FOLDERS.get(scorer, scorer)
    if folder_name not in OURS:
        raise DelphiFormatError(f"unknown scorer {scorer!r}: choose from {sorted(SCORER_FOLDERS)}")
    path = Path(folder) / "scores" / folder_name / f"{latent_name(_check_module(module), feature)}.txt"
    return _dump(path, list(rows))


def write_run_config(folder: Path, *, hookpoints: Sequence[str], explainer_model: str | None = None,
                     scorers: Iterable[str] = (), extra: dict | None = None) -> Path:
    """run_config.json with the few RunConfig fields we know (delphi writes them all); `explainer_model` is what
    import_delphi turns into the method "llm:<model>", so a run of ours should name its model here."""
    config = {**(extra or {}), "hookpoints": list(hookpoints),
              "scorers": [SCORER_FOLDERS.get(s, s) for s in scorers]}
    if explainer_model is not None:
        config["explainer_model"] = explainer_model
    path = Path(folder) / "run_config.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(config, indent=4))
    return path


# --- rows -> summary ------------------------------------------------------------------------------------------------


def summarize(scorer: str, rows: Sequence[dict], where: str = "rows") -> dict:
    """Our summary of one scorer's per-example rows (`scorer` ours or delphi's name). Detection and fuzzing:
    balanced accuracy and F1 of the predictions (rows without one count as failed), AUROC of the probabilities
    where the rows have them; embedding: AUROC of the similarity. Neuronpedia's copies of these rows (`ground_truth`
    for `activating`, prediction -1 for none) read too."""
    ours = OURS.get(scorer, scorer)
    if ours not in SCORER_FOLDERS:
        raise DelphiFormatError(f"{where}: unknown scorer {scorer!r}")
    labels: list[bool] = []
    if ours == "embedding":
        similarity: list[float | None] = []
        for i, row in enumerate(rows):
            distance, value = _field(row, "distance", where, i), _field(row, "similarity", where, i, nullable=True)
            labels.append(distance >= 0)
            similarity.append(value)
        return {"auroc": metrics.auroc(labels, similarity), "n": len(labels)}
    predicted: list[float | None] = []
    probability: list[float | None] = []
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise DelphiFormatError(f"{where}, row {i}: a row must be a JSON object")
        label = row["activating"] if "activating" in row else row.get("ground_truth")
        if not isinstance(label, bool):
            raise DelphiFormatError(f"{where}, row {i}: `activating` must be true or false")
        p = _field(row, "prediction", where, i, nullable=True)
        p = None if p is None or p < 0 else p  # Neuronpedia writes -1 for a failed prediction
        labels.append(label)
        predicted.append(p)
        probability.append(None if p is None else _field(row, "probability", where, i, nullable=True))
    out = metrics.balanced_accuracy_f1(labels, predicted)
    out["auroc"] = metrics.auroc(labels, probability)
    return {k: out[k] for k in ("balanced_accuracy", "f1", "auroc", "n", "failed")}


def _field(row: object, key: str, where: str, i: int, nullable: bool = False) -> float | None:
    if not isinstance(row, dict):
        raise DelphiFormatError(f"{where}, row {i}: a row must be a JSON object")
    value = row.get(key)
    if value is None and nullable:
        return None
    if not isinstance(value, NUMBER):  # true/false are ints too: delphi's older predictions
        raise DelphiFormatError(f"{where}, row {i}: `{key}` must be a number, got {value!r:.40}")
    return float(value)


# --- export ---------------------------------------------------------------------------------------------------------


def export_delphi(session: Session, sae: SAERecord, folder: Path, *, module_name: str | None = None,
                  features: Iterable[int] | None = None, method: str | None = None) -> dict:
    """Write the SAE's explanations as a delphi result folder: per feature its best-scored explanation (delphi keeps
    one a latent; `method` picks among them, e.g. "llm:<model>"), and `saex_scores.json` with their summary scores
    (per-example rows are not stored; see the module's docstring). `module_name` defaults to the SAE's hook name.
    Files already in the folder for other latents (a run's score rows among them) are kept. Returns counts."""
    module = _check_module(module_name or sae.hook_name)
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise DelphiFormatError(f"{folder} is not a folder")
    wanted = None if features is None else sorted(set(features))
    best: dict[int, ExplanationRecord] = {}
    alternatives = 0
    for record in _explanations(session, sae, wanted, method):
        if record.feature in best:
            alternatives += 1
        else:
            best[record.feature] = record
    summary_path = folder / SUMMARY_FILE
    kept = _read_summary(summary_path) if summary_path.exists() else {}
    stale = 0
    for feature, x in sorted(best.items()):
        stale += _drop_stale_rows(folder, latent_name(module, feature), x.text)
        write_delphi_explanation(folder, module, feature, x.text)
        kept[latent_name(module, feature)] = {
            "feature": feature, "text": x.text, "author": x.author, "source": x.source, "method": x.method,
            "prompt_version": x.prompt_version, "score": x.score, "scores": x.scores or {}}
    _dump(summary_path, {"format": SUMMARY_FORMAT, "model": sae.model.slug, "sae": sae.slug, "d_sae": sae.d_sae,
                         "latents": kept})
    if not (folder / "run_config.json").exists():  # a real run's config stays as it is
        models = {x.method.removeprefix("llm:") for x in best.values() if x.method.startswith("llm:")}
        scorers = sorted({s for x in best.values() for s in (x.scores or {}) if s in SCORER_FOLDERS})
        write_run_config(folder, hookpoints=[module], explainer_model=models.pop() if len(models) == 1 else None,
                         scorers=scorers, extra={"model": sae.model.source, "sparse_model": sae.source})
    missing = 0 if wanted is None else len(set(wanted) - set(best))
    return {"module": module, "explanations": len(best), "not_written": alternatives, "features_without": missing,
            "stale_rows_removed": stale, "folder": str(folder)}


def _drop_stale_rows(folder: Path, name: str, text: str) -> int:
    """A latent whose explanation file we overwrite with another text loses the score rows of the old one (rows
    carry no text, so they would read as this explanation's)."""
    path = folder / "explanations" / f"{name}.txt"
    if not path.is_file():
        return 0
    try:
        if orjson.loads(path.read_bytes()) == text:
            return 0
    except (OSError, orjson.JSONDecodeError):
        pass
    removed = 0
    for rows in (folder / "scores").glob(f"*/{name}.txt"):
        rows.unlink()
        removed += 1
    return removed


def _explanations(session: Session, sae: SAERecord, wanted: list[int] | None,
                  method: str | None) -> Iterable[ExplanationRecord]:
    """Each feature's explanations, best-scored first (as the store ranks them), features in order."""
    base = select(ExplanationRecord).where(ExplanationRecord.sae_id == sae.id)
    if method is not None:
        base = base.where(ExplanationRecord.method == method)
    order = (ExplanationRecord.feature, *explanations.BEST_FIRST)
    if wanted is None:
        yield from session.scalars(base.order_by(*order))
        return
    for start in range(0, len(wanted), 5000):  # bound the IN list
        yield from session.scalars(base.where(ExplanationRecord.feature.in_(wanted[start:start + 5000]))
                                   .order_by(*order))


def _read_summary(path: Path) -> dict:
    try:
        data = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError) as exc:
        raise DelphiFormatError(f"{path}: not readable as JSON ({exc})") from None
    latents = data.get("latents") if isinstance(data, dict) else None
    if not isinstance(latents, dict) or not all(isinstance(v, dict) for v in latents.values()):
        raise DelphiFormatError(f"{path}: not a saex summary (an object whose `latents` maps latent names to "
                                "objects)")
    return latents


# --- import ---------------------------------------------------------------------------------------------------------


@dataclass
class _Parsed:
    feature: int
    text: str
    method: str
    author: str
    source: str
    prompt_version: str | None
    scores: dict = field(default_factory=dict)
    score: float | None = None  # what our export recorded, for an explanation scored without a summary


def import_delphi(session: Session, sae: SAERecord, folder: Path, *, module_name: str | None = None,
                  author: str | None = None, method: str | None = None) -> dict:
    """Read a delphi result folder's explanations into the SAE, with our summary of each latent's score rows.
    `module_name`: whose latents to read (default: the folder's only module, or else the SAE's hook name). `method`
    defaults to "llm:<run_config.json's explainer_model>" ("llm:delphi" without one) and `author` to "delphi";
    latents our own export wrote keep theirs. Importing again adds nothing: an explanation with the same feature,
    method and text gets the scores read now. Every file is read and checked before anything is stored. Flushes,
    does not commit. Returns counts."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DelphiFormatError(f"{folder} is not a folder")
    if not (folder / "explanations").is_dir():
        raise DelphiFormatError(f"{folder} is not a delphi run: it has no explanations/ folder (a run holds "
                                "run_config.json, explanations/<module>_latent<N>.txt and scores/<scorer>/)")
    config = _read_config(folder / "run_config.json")
    model = config.get("explainer_model")
    default_method = method or (f"llm:{model}" if isinstance(model, str) and model else "llm:delphi")
    files = _explanation_files(folder / "explanations")
    module = _pick_module(files, module_name, sae, folder)
    summary_path = folder / SUMMARY_FILE
    summaries = _read_summary(summary_path) if summary_path.exists() else {}
    score_dirs = sorted(p for p in (folder / "scores").glob("*") if p.is_dir()) if (folder / "scores").is_dir() else []
    ignored = sorted(p.name for p in score_dirs if p.name not in OURS)
    counts = {"module": module, "explanations": 0, "updated": 0, "unchanged": 0, "unparsed": 0, "scored": 0,
              "scorers_ignored": ignored}
    parsed: list[_Parsed] = []
    for feature, path in sorted(files[module].items()):
        if not 0 <= feature < sae.d_sae:
            raise DelphiFormatError(f"{path}: latent {feature} is outside {sae.slug}'s features 0 to {sae.d_sae - 1}")
        text = _read_json(path)
        if not isinstance(text, str):
            raise DelphiFormatError(f"{path}: an explanation file holds one JSON string, not {type(text).__name__}")
        text = text.strip()
        if not text or text.startswith(UNPARSED):
            counts["unparsed"] += 1
            continue
        x = _latent(feature, text, summaries.get(path.stem), method, author, default_method)
        for d in score_dirs:
            rows_path = d / path.name
            if d.name in OURS and rows_path.is_file():
                rows = _read_json(rows_path)
                if not isinstance(rows, list):
                    raise DelphiFormatError(f"{rows_path}: a score file holds a JSON array of rows")
                if rows:
                    x.scores[OURS[d.name]] = summarize(d.name, rows, str(rows_path))
        parsed.append(x)
    _store(session, sae, parsed, counts)
    return counts


def _latent(feature: int, text: str, ours: dict | None, method: str | None, author: str | None,
            default_method: str) -> _Parsed:
    """A latent's explanation, with what our own export recorded of it (when the text is still the one it wrote)."""
    if ours is None or str(ours.get("text", "")).strip() != text:
        return _Parsed(feature, text, method or default_method, author or "delphi", "automatic", None)
    source = ours.get("source") if ours.get("source") in ("human", "automatic") else "automatic"
    return _Parsed(feature, text, method or str(ours.get("method") or default_method),
                   author or str(ours.get("author") or "delphi"), source, ours.get("prompt_version"),
                   dict(ours["scores"]) if isinstance(ours.get("scores"), dict) else {},
                   ours.get("score") if isinstance(ours.get("score"), NUMBER) else None)


def _read_config(path: Path) -> dict:
    if not path.exists():
        return {}  # a run stopped early, or files copied without it
    config = _read_json(path)
    if not isinstance(config, dict):
        raise DelphiFormatError(f"{path}: run_config.json must hold a JSON object")
    return config


def _read_json(path: Path) -> object:
    try:
        return orjson.loads(path.read_bytes())
    except orjson.JSONDecodeError as exc:
        raise DelphiFormatError(f"{path}: not JSON ({exc}); delphi writes an explanation as one JSON string and "
                                "scores as a JSON array") from None
    except OSError as exc:
        raise DelphiFormatError(f"{path}: cannot read it ({exc})") from None


def _explanation_files(directory: Path) -> dict[str, dict[int, Path]]:
    out: dict[str, dict[int, Path]] = {}
    for path in directory.iterdir():
        if path.name.startswith(".") or not path.is_file() or path.suffix != ".txt":
            continue
        name = parse_latent_name(path.stem)
        if name is None:
            raise DelphiFormatError(f"{path}: not a delphi latent file name (<module>_latent<N>.txt)")
        out.setdefault(name[0], {})[name[1]] = path
    return out


def _pick_module(files: dict[str, dict[int, Path]], module_name: str | None, sae: SAERecord, folder: Path) -> str:
    modules = sorted(files)
    if module_name is not None:
        if module_name not in files:
            raise DelphiFormatError(f"{folder} has no explanations of module {module_name!r} (its modules: "
                                    f"{', '.join(modules) or 'none'})")
        return module_name
    if len(modules) == 1:
        return modules[0]
    if sae.hook_name in files:
        return sae.hook_name
    if not modules:
        raise DelphiFormatError(f"{folder}/explanations holds no <module>_latent<N>.txt files")
    raise DelphiFormatError(f"{folder} holds explanations of several modules ({', '.join(modules)}): name one "
                            "with module_name (--module)")


def _store(session: Session, sae: SAERecord, parsed: list[_Parsed], counts: dict) -> None:
    have = explanations.by_feature_method_text(session, sae=sae, features={x.feature for x in parsed})
    for x in parsed:
        counts["scored"] += bool(x.scores)
        record = have.get((x.feature, x.method, x.text))
        if record is None:
            have[(x.feature, x.method, x.text)] = explanations.create(
                session, sae=sae, feature=x.feature, text=x.text, author=x.author, source=x.source,
                method=x.method, prompt_version=x.prompt_version, scores=x.scores or None,
                score=_first(metrics.headline(x.scores), x.score))
            counts["explanations"] += 1
        elif x.scores:  # one scored again: its new scores (the text and method are the same)
            explanations.set_scores(session, record=record, scores=x.scores, score=_first(
                metrics.headline({**(record.scores or {}), **x.scores}), x.score, record.score))
            counts["updated"] += 1
        else:
            counts["unchanged"] += 1


def _first(*values: float | None) -> float | None:
    return next((v for v in values if v is not None), None)

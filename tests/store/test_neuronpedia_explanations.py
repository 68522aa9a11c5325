"""Explanations with their scores as Neuronpedia Explanation rows, on real Postgres and SQLite: our rows carry
Neuronpedia's fields and read back exactly (JSONL and gzipped); Neuronpedia's own bulk export rows (index,
description, explanationModelName, typeName only) and API rows with "eleuther_*" scores read too, the scores
summarised from their per-example rows to numbers worked out by hand; importing again adds nothing; bad rows give
errors that name the file and line, and store nothing; the `saex explanations` command does both ways."""

from __future__ import annotations

import argparse
import gzip
import json
from pathlib import Path

import pytest
from sqlalchemy import select

from app.cli_interop import add_parsers
from app.store import explanations
from app.store.dashboards import find_sae, upsert_model, upsert_sae
from app.store.db import make_sessionmaker, transaction
from app.store.models import ExplanationRecord
from app.store.neuronpedia_explanations import (
    NeuronpediaExplanationsError,
    export_explanations,
    import_explanations,
)
from app.store.neuronpedia_format import DEFAULT_CREATOR_ID

D_SAE = 16
DETECTION = {"balanced_accuracy": 0.625, "f1": 2 / 3, "auroc": 0.84375, "n": 8, "failed": 1}
EMBEDDING = {"auroc": 0.75, "n": 5}


def make_sae(session, model_slug: str = "np-expl", slug: str = "L1"):
    model = upsert_model(session, slug=model_slug, name=model_slug, source="tests", config={})
    return upsert_sae(session, model=model, slug=slug, layer=1, hook_name="blocks.1.attn.hook_z", d_sae=D_SAE,
                      architecture="standard", source="tests")


def stored(session, sae) -> list[tuple]:
    rows = session.scalars(select(ExplanationRecord).where(ExplanationRecord.sae_id == sae.id)
                           .order_by(ExplanationRecord.feature, ExplanationRecord.id)).all()
    return [(x.feature, x.text, x.author, x.source, x.method, x.prompt_version, x.score, x.scores) for x in rows]


def explain(session, sae) -> None:
    explanations.create(session, sae=sae, feature=2, text="opening brackets", author="ada")
    explanations.create(session, sae=sae, feature=2, text="code, mostly", author="baseline", source="automatic",
                        method="baseline", prompt_version="b1", scores={"embedding": EMBEDDING}, score=0.75)
    explanations.create(session, sae=sae, feature=11, text="the word \"the\"", author="saex", source="automatic",
                        method="llm:qwen", prompt_version="v2", scores={"detection": DETECTION, "embedding": EMBEDDING},
                        score=(0.625 + 0.75) / 2)
    explanations.create(session, sae=sae, feature=12, text="scored elsewhere", author="bob", score=0.3)


def read(path: Path) -> list[dict]:
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rt") as f:
        return [json.loads(line) for line in f if line.strip()]


def write(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "wt") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    return path


@pytest.mark.parametrize("name", ["explanations.jsonl.gz", "explanations.jsonl"])
def test_round_trip_is_exact(session, tmp_path, name):
    sae = make_sae(session)
    explain(session, sae)
    path = tmp_path / name
    counts = export_explanations(session, sae, path, model_id="gpt2-small", layer="1-att-kk")
    assert counts["explanations"] == 4 and not (tmp_path / f"{name}.part").exists()
    rows = read(path)
    qwen = next(r for r in rows if r["index"] == "11")
    assert {k: qwen[k] for k in ("modelId", "layer", "index", "description", "authorId", "typeName",
                                 "explanationModelName", "scoreV2")} == {
        "modelId": "gpt2-small", "layer": "1-att-kk", "index": "11", "description": "the word \"the\"",
        "authorId": DEFAULT_CREATOR_ID, "typeName": "saex-llm:qwen", "explanationModelName": "qwen", "scoreV2": None}
    assert qwen["scoreV1"] == pytest.approx(0.6875) and len(qwen["id"]) == 25
    assert [(s["explanationScoreTypeName"], s["value"]) for s in qwen["scores"]] == [
        ("saex-detection", 0.625), ("saex-embedding", 0.75)]
    assert json.loads(qwen["scores"][0]["jsonDetails"]) == DETECTION
    human = next(r for r in rows if r["description"] == "opening brackets")
    assert (human["typeName"], human["explanationModelName"], human["scoreV1"], human["scores"]) == (
        "saex-human", None, 0.0, [])

    copy = make_sae(session, slug="L1-copy")
    got = import_explanations(session, copy, path)
    assert (got["explanations"], got["layer"]) == (4, "1-att-kk")
    assert stored(session, copy) == stored(session, sae)
    again = import_explanations(session, copy, path)
    assert (again["explanations"], again["unchanged"] + again["updated"]) == (0, 4)
    assert stored(session, copy) == stored(session, sae)


def test_export_defaults_and_filters(session, tmp_path):
    sae = make_sae(session)
    explain(session, sae)
    counts = export_explanations(session, sae, tmp_path / "x.jsonl", features=[2, 5], method="baseline")
    assert (counts["explanations"], counts["modelId"], counts["layer"]) == (1, "np-expl", "L1")
    assert [r["description"] for r in read(tmp_path / "x.jsonl")] == ["code, mostly"]


def test_neuronpedia_bulk_export_rows_read(session, tmp_path):
    """Neuronpedia's public explanations/batch-N.jsonl.gz: a few keys only, index a string."""
    sae = make_sae(session)
    folder = tmp_path / "gpt2-small" / "1-att-kk"
    write(folder / "explanations" / "batch-0.jsonl.gz", [
        {"index": "3", "description": " cats ", "explanationModelName": "gpt-4o-mini",
         "typeName": "oai_token-act-pair"},
        {"index": "4", "description": "dogs", "typeName": "oai_token-act-pair"},
    ])
    write(folder / "explanations" / "batch-1.jsonl.gz", [
        {"index": "5", "description": "a person wrote this", "authorId": "user123", "layer": "1-att-kk"}])
    got = import_explanations(session, sae, folder)
    assert (got["explanations"], got["scored"]) == (3, 0)
    assert stored(session, sae) == [
        (3, "cats", "gpt-4o-mini", "automatic", "llm:gpt-4o-mini", "oai_token-act-pair", None, None),
        (4, "dogs", "neuronpedia", "automatic", "imported", "oai_token-act-pair", None, None),
        (5, "a person wrote this", "user123", "human", "human", None, None, None),
    ]


def test_eleuther_scores_are_summarised_from_their_rows(session, tmp_path):
    sae = make_sae(session)

    def row(truth: bool, prediction: int, probability: float) -> dict:  # as Neuronpedia's score dialog reads them
        return {"text": "x", "str_tokens": ["x"], "activations": [1.0 if truth else 0.0],
                "distance": 1 if truth else -1, "ground_truth": truth, "prediction": prediction, "highlighted": True,
                "correct": prediction == truth, "probability": probability}

    details = [row(True, 1, 0.9), row(True, 1, 0.7), row(True, 0, 0.4), row(True, -1, 0.5),
               row(False, 0, 0.2), row(False, 1, 0.8)]
    write(tmp_path / "api.jsonl", [{
        "modelId": "gpt2-small", "layer": "1-att-kk", "index": "7", "description": "cats",
        "typeName": "eleuther_acts_top20", "explanationModelName": "claude-4-5-haiku", "scoreV1": 0.0,
        "scores": [
            {"explanationScoreTypeName": "eleuther_fuzz", "explanationScoreModelName": "gpt-4o-mini", "value": 0.6,
             "jsonDetails": json.dumps(details)},
            {"explanationScoreTypeName": "recall_alt", "explanationScoreModelName": "gpt-4o-mini", "value": 0.8,
             "jsonDetails": "{}"},
            {"explanationScoreTypeName": "eleuther_recall", "explanationScoreModelName": "gpt-4o-mini",
             "value": 0.7, "jsonDetails": ""},
        ]}])
    write(tmp_path / "odd.jsonl", [{"index": "8", "description": "dogs", "scores": [
        {"explanationScoreTypeName": "eleuther_fuzz", "value": 0.5, "jsonDetails": json.dumps([{"prediction": 1}])}]}])
    import_explanations(session, sae, tmp_path / "api.jsonl")
    import_explanations(session, sae, tmp_path / "odd.jsonl")
    (odd,) = explanations.for_feature(session, sae=sae, feature=8)  # rows of another shape: the value, and why
    assert odd.scores == {"eleuther_fuzz": {"value": 0.5, "unread": "jsonDetails, row 0: `activating` must be true "
                                                                     "or false"}}
    (x,) = explanations.for_feature(session, sae=sae, feature=7)
    # by hand, leaving out the failed (-1) row: TPR 2/3, TNR 1/2 -> 7/12; precision 2/3, recall 2/3 -> F1 2/3;
    # AUROC of (0.9, 0.7, 0.4) against (0.2, 0.8): 2 + 1 + 1 = 4 of 6
    fuzz = x.scores["fuzzing"]
    assert fuzz == {"balanced_accuracy": pytest.approx(7 / 12), "f1": pytest.approx(2 / 3),
                    "auroc": pytest.approx(2 / 3), "n": 5, "failed": 1, "scorer_model": "gpt-4o-mini"}
    assert x.scores["recall_alt"] == {"value": 0.8, "scorer_model": "gpt-4o-mini"}
    assert x.scores["eleuther_recall"] == {"value": 0.7, "scorer_model": "gpt-4o-mini"}  # no rows: not ours
    assert x.score == pytest.approx(7 / 12)  # only the summarised scorer counts
    assert (x.method, x.prompt_version) == ("llm:claude-4-5-haiku", "eleuther_acts_top20")

    out = tmp_path / "back.jsonl"
    export_explanations(session, sae, out)
    types = {s["explanationScoreTypeName"]: s["value"] for s in read(out)[0]["scores"]}
    assert types == {"saex-fuzzing": pytest.approx(7 / 12), "recall_alt": 0.8, "eleuther_recall": 0.7}


def test_layers(session, tmp_path):
    sae = make_sae(session)
    path = write(tmp_path / "two.jsonl", [{"index": "1", "description": "a", "layer": "1-att-kk"},
                                          {"index": "2", "description": "b", "layer": "2-att-kk"}])
    with pytest.raises(NeuronpediaExplanationsError, match=r"two\.jsonl, line 2: a row of layer '2-att-kk' among "
                       "rows of '1-att-kk'"):
        import_explanations(session, sae, path)
    got = import_explanations(session, sae, path, layer="2-att-kk")
    assert (got["explanations"], got["other_layer"]) == (1, 1)
    assert [x[1] for x in stored(session, sae)] == ["b"]


@pytest.mark.parametrize(("line", "message"), [
    ("not json", r"bad\.jsonl, line 2: not a JSON row"),
    ("[1, 2]", r"bad\.jsonl, line 2: a row must be a JSON object"),
    ('{"index": "16", "description": "x"}', r"bad\.jsonl, line 2: feature index 16 is outside this SAE's 0 to 15"),
    ('{"description": "x"}', r"bad\.jsonl, line 2: the row has no `index`"),
    ('{"index": "3", "description": " "}', r"bad\.jsonl, line 2: `description` must be a non-empty string"),
    ('{"index": "3", "description": "x", "scores": {"value": 1}}', r"line 2: `scores` must be a list"),
    ('{"index": "3", "description": "x", "scores": [{"value": 1}]}', r"line 2, score 0: a score needs an "
     "`explanationScoreTypeName`"),
])
def test_bad_rows_name_file_and_line_and_store_nothing(session, tmp_path, line, message):
    sae = make_sae(session)
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"index": "1", "description": "fine"}) + "\n" + line + "\n")
    with pytest.raises(NeuronpediaExplanationsError, match=message):
        import_explanations(session, sae, path)
    assert stored(session, sae) == []


def test_missing_and_empty_inputs(session, tmp_path):
    sae = make_sae(session)
    with pytest.raises(NeuronpediaExplanationsError, match="no such file or folder"):
        import_explanations(session, sae, tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(NeuronpediaExplanationsError, match="holds no .jsonl or .jsonl.gz files"):
        import_explanations(session, sae, tmp_path / "empty")
    (tmp_path / "broken.jsonl.gz").write_bytes(b"\x1f\x8b not really gzip")
    with pytest.raises(NeuronpediaExplanationsError, match=r"broken\.jsonl\.gz: cannot read it"):
        import_explanations(session, sae, tmp_path / "broken.jsonl.gz")


def cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="saex")
    add_parsers(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_exports_and_imports(db_engine, db_url, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DATABASE_URL", db_url)
    slug = "np-expl-cli-" + ("pg" if db_url.startswith("postgres") else "lite")
    factory = make_sessionmaker(db_engine)
    with transaction(factory) as s:
        explain(s, make_sae(s, model_slug=slug))
        make_sae(s, model_slug=slug, slug="L1-copy")
    out = tmp_path / "rows.jsonl.gz"
    assert cli(["explanations", "export", "--format", "neuronpedia", "--model-slug", slug, "--sae", "L1",
                "--layer", "1-att-kk", "--neuronpedia-model", "gpt2-small", str(out)]) == 0
    assert json.loads(capsys.readouterr().out)["explanations"] == 4
    assert {r["modelId"] for r in read(out)} == {"gpt2-small"}
    assert cli(["explanations", "import", "--format", "neuronpedia", "--model-slug", slug, "--sae", "L1-copy",
                str(out)]) == 0
    assert json.loads(capsys.readouterr().out)["explanations"] == 4
    with factory() as s:
        one, copy = (find_sae(s, sae_slug=x, model_slug=slug) for x in ("L1", "L1-copy"))
        assert stored(s, copy) == stored(s, one)
    out.write_bytes(gzip.compress(b'{"index": "99", "description": "x"}\n'))
    assert cli(["explanations", "import", "--format", "neuronpedia", "--model-slug", slug, "--sae", "L1-copy",
                str(out)]) == 2
    err = capsys.readouterr().err
    assert "rows.jsonl.gz, line 1: feature index 99 is outside" in err and "Traceback" not in err

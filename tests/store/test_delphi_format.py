"""delphi result folders in and out of the store, on real Postgres and SQLite: a hand-made run folder in delphi's
exact layout and file formats imports with summary scores equal to numbers worked out by hand; importing again
adds nothing; a folder written by export_delphi reads back to the same explanations and scores; rows written with
write_delphi_scores are summarised on import; bad folders and files give errors that name the file, and store
nothing; the `saex explanations` command does both ways."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import orjson
import pytest
from sqlalchemy import select

from app.cli_interop import add_parsers
from app.store import explanations
from app.store.dashboards import find_sae, upsert_model, upsert_sae
from app.store.db import make_sessionmaker, transaction
from app.store.delphi_format import (
    DelphiFormatError,
    export_delphi,
    import_delphi,
    summarize,
    write_delphi_explanation,
    write_delphi_scores,
)
from app.store.models import ExplanationRecord

MODULE = "blocks.1.attn.hook_z"
EXPLAINER = "hugging-quants/Meta-Llama-3.1-70B-Instruct-AWQ-INT4"
D_SAE = 16


def make_sae(session, model_slug: str = "delphi-test", slug: str = "L1", hook_name: str = MODULE):
    model = upsert_model(session, slug=model_slug, name=model_slug, source="tests", config={})
    return upsert_sae(session, model=model, slug=slug, layer=1, hook_name=hook_name, d_sae=D_SAE,
                      architecture="standard", source="tests")


def classifier_row(tokens: list[str], activating: bool, prediction: int | None, probability: float | None,
                   distance: float) -> dict:
    """A row as delphi's ClassifierOutput serialises: its fields in its order."""
    acts = [0.0] * len(tokens) if not activating else [0.0, 2.5] + [0.0] * (len(tokens) - 2)
    return {"str_tokens": tokens, "activations": acts, "distance": distance, "activating": activating,
            "prediction": prediction, "probability": probability,
            "correct": None if prediction is None else prediction == activating}


TOKENS = ["The", " cat", " sat", " on"]
# detection of latent 3: 4 activating (quantiles 0-3), 4 not (distance -1.0), one failed prediction
DETECTION = [classifier_row(TOKENS, True, p, q, float(d)) for d, (p, q) in enumerate(
    [(1, 0.9), (1, 0.8), (1, 0.6), (0, 0.3)])] + [classifier_row(TOKENS, False, p, q, -1.0) for p, q in
                                                   [(0, 0.1), (1, 0.6), (1, 0.2), (0, 0.4)]] + [
    classifier_row(TOKENS, True, None, None, 4)]
# by hand: TPR 3/4, TNR 2/4 -> balanced accuracy 0.625; precision 3/5, recall 3/4 -> F1 2/3; AUROC: of the 16
# (activating, not) pairs the activating one scores higher in 4 + 4 + 3.5 (0.6 ties 0.6) + 2 = 13.5 -> 0.84375
DETECTION_SUMMARY = {"balanced_accuracy": 0.625, "f1": 2 / 3, "auroc": 0.84375, "n": 8, "failed": 1}
# fuzzing without log-probs (probability null): TPR 2/4, TNR 4/4 -> 0.75; precision 1, recall 1/2 -> F1 2/3
FUZZ = [classifier_row(TOKENS, True, p, None, float(d)) for d, p in enumerate([1, 0, 0, 1])] + [
    classifier_row(TOKENS, False, 0, None, -1.0) for _ in range(4)]
FUZZ_SUMMARY = {"balanced_accuracy": 0.75, "f1": 2 / 3, "auroc": None, "n": 8, "failed": 0}
# embedding: similarity of 3 activating (0.5, 0.3, 0.2) against 2 not (0.3, 0.1): 2 + 1.5 + 1 = 4.5 of 6 -> 0.75
EMBEDDING = [{"text": "The cat", "distance": d, "similarity": s} for d, s in [(0, 0.5), (1, 0.3), (2, 0.2)]] + [
    {"text": "A dog", "distance": -1.0, "similarity": s} for s in (0.3, 0.1)]
EMBEDDING_SUMMARY = {"auroc": 0.75, "n": 5}
HEADLINE = (0.625 + 0.75 + 0.75) / 3


def write(path: Path, value: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(orjson.dumps(value))  # as delphi's __main__ writes every result file


def delphi_run(folder: Path) -> Path:
    """A small run folder as delphi writes it: three explained latents (one whose explanation failed to parse),
    latent 3 scored by detection, fuzz, embedding and simulation (which we do not read)."""
    (folder / "latents" / MODULE).mkdir(parents=True)  # delphi's cache; not ours to read
    (folder / "run_config.json").write_text(json.dumps({
        "cache_cfg": {"dataset_repo": "EleutherAI/SmolLM2-135M-10B", "cache_ctx_len": 256}, "model": "tiny",
        "sparse_model": "saes/", "hookpoints": [MODULE], "explainer_model": EXPLAINER, "explainer_provider": "offline",
        "explainer": "default", "scorers": ["fuzz", "detection", "embedding"], "log_probs": True, "seed": 22,
    }, indent=4))
    write(folder / "explanations" / f"{MODULE}_latent3.txt", "Cats sitting on things.")
    write(folder / "explanations" / f"{MODULE}_latent7.txt", "  The token \"on\" after a verb.  ")
    write(folder / "explanations" / f"{MODULE}_latent9.txt", "Explanation could not be parsed.")
    write(folder / "scores" / "detection" / f"{MODULE}_latent3.txt", DETECTION)
    write(folder / "scores" / "fuzz" / f"{MODULE}_latent3.txt", FUZZ)
    write(folder / "scores" / "embedding" / f"{MODULE}_latent3.txt", EMBEDDING)
    write(folder / "scores" / "simulation" / f"{MODULE}_latent3.txt", [{"ev_correlation_score": 0.4}])
    return folder


def stored(session, sae) -> list[tuple]:
    rows = session.scalars(select(ExplanationRecord).where(ExplanationRecord.sae_id == sae.id)
                           .order_by(ExplanationRecord.feature, ExplanationRecord.id)).all()
    return [(x.feature, x.text, x.author, x.source, x.method, x.prompt_version, x.score, x.scores) for x in rows]


def approx_scores(scores: dict) -> dict:
    return {k: {m: (v if v is None else pytest.approx(v)) for m, v in s.items()} for k, s in scores.items()}


def test_summaries_of_hand_made_rows():
    assert summarize("detection", DETECTION) == approx_scores({"x": DETECTION_SUMMARY})["x"]
    assert summarize("fuzz", FUZZ) == approx_scores({"x": FUZZ_SUMMARY})["x"]
    assert summarize("fuzzing", FUZZ) == summarize("fuzz", FUZZ)
    assert summarize("embedding", EMBEDDING) == approx_scores({"x": EMBEDDING_SUMMARY})["x"]


def test_import_hand_made_run(session, tmp_path):
    sae = make_sae(session)
    counts = import_delphi(session, sae, delphi_run(tmp_path / "run"))
    assert counts == {"module": MODULE, "explanations": 2, "updated": 0, "unchanged": 0, "unparsed": 1, "scored": 1,
                      "scorers_ignored": ["simulation"]}
    (f3,), (f7,) = (explanations.for_feature(session, sae=sae, feature=f) for f in (3, 7))
    assert (f3.text, f3.author, f3.source, f3.method) == ("Cats sitting on things.", "delphi", "automatic",
                                                          f"llm:{EXPLAINER}")
    assert f3.scores == approx_scores({"detection": DETECTION_SUMMARY, "fuzzing": FUZZ_SUMMARY,
                                       "embedding": EMBEDDING_SUMMARY})
    assert f3.score == pytest.approx(HEADLINE)
    assert (f7.text, f7.scores, f7.score) == ("The token \"on\" after a verb.", None, None)
    assert explanations.for_feature(session, sae=sae, feature=9) == []


def test_import_again_updates_scores_and_adds_nothing(session, tmp_path):
    sae = make_sae(session)
    run = delphi_run(tmp_path / "run")
    import_delphi(session, sae, run, author="ada")
    before = stored(session, sae)
    again = import_delphi(session, sae, run, author="ada")
    assert (again["explanations"], again["updated"], again["unchanged"]) == (0, 1, 1)
    assert stored(session, sae) == before
    rows = [dict(r) for r in DETECTION]
    rows[5]["prediction"] = 0  # one more true negative: TNR 3/4 -> balanced accuracy 0.75
    write(run / "scores" / "detection" / f"{MODULE}_latent3.txt", rows)
    import_delphi(session, sae, run, author="ada")
    (f3,) = explanations.for_feature(session, sae=sae, feature=3)
    assert f3.scores["detection"]["balanced_accuracy"] == pytest.approx(0.75)
    assert f3.score == pytest.approx((0.75 + 0.75 + 0.75) / 3)
    assert f3.scores["fuzzing"] == approx_scores({"x": FUZZ_SUMMARY})["x"]
    assert len(stored(session, sae)) == 2
    # another method is another explanation
    import_delphi(session, sae, run, method="llm:other")
    assert len(stored(session, sae)) == 4


def test_export_then_import_gives_the_same_explanations(session, tmp_path):
    sae = make_sae(session)
    scores = {"detection": DETECTION_SUMMARY, "embedding": EMBEDDING_SUMMARY}
    explanations.create(session, sae=sae, feature=2, text="opening brackets", author="ada")
    explanations.create(session, sae=sae, feature=5, text="code, mostly", author="baseline", source="automatic",
                        method="baseline", prompt_version="b1", scores={"embedding": EMBEDDING_SUMMARY}, score=0.75)
    explanations.create(session, sae=sae, feature=5, text="worse one", author="baseline", source="automatic",
                        method="baseline", prompt_version="b1", scores={"embedding": {"auroc": 0.5, "n": 5}},
                        score=0.5)
    explanations.create(session, sae=sae, feature=11, text="the word \"the\"", author="saex", source="automatic",
                        method="llm:qwen", prompt_version="v2", scores=scores,
                        score=(DETECTION_SUMMARY["balanced_accuracy"] + 0.75) / 2)
    out = tmp_path / "out"
    counts = export_delphi(session, sae, out)
    assert (counts["explanations"], counts["not_written"], counts["module"]) == (3, 1, MODULE)
    assert sorted(p.name for p in (out / "explanations").iterdir()) == [
        f"{MODULE}_latent11.txt", f"{MODULE}_latent2.txt", f"{MODULE}_latent5.txt"]
    assert (out / "explanations" / f"{MODULE}_latent5.txt").read_bytes() == b'"code, mostly"'  # delphi's format
    assert json.loads((out / "run_config.json").read_text())["hookpoints"] == [MODULE]
    assert not (out / "scores").exists()  # no rows in the store: the summaries are in saex_scores.json
    assert set(json.loads((out / "saex_scores.json").read_text())["latents"]) == {
        f"{MODULE}_latent{f}" for f in (2, 5, 11)}

    copy = make_sae(session, slug="L1-copy")
    assert import_delphi(session, copy, out)["explanations"] == 3
    best = [x for x in stored(session, sae) if x[1] != "worse one"]
    assert stored(session, copy) == best

    only = export_delphi(session, sae, tmp_path / "llm", method="llm:qwen", features=[5, 11, 12])
    assert (only["explanations"], only["features_without"]) == (1, 2)
    assert json.loads((tmp_path / "llm" / "run_config.json").read_text())["explainer_model"] == "qwen"


def test_rows_written_during_a_run_are_summarised(session, tmp_path):
    sae = make_sae(session)
    run = tmp_path / "run"
    write_delphi_explanation(run, MODULE, 4, "Cats sitting on things.")
    write_delphi_scores(run, MODULE, 4, "detection", DETECTION)
    write_delphi_scores(run, MODULE, 4, "fuzzing", FUZZ)  # our name, delphi's folder
    assert (run / "scores" / "fuzz" / f"{MODULE}_latent4.txt").is_file()
    assert orjson.loads((run / "scores" / "detection" / f"{MODULE}_latent4.txt").read_bytes()) == DETECTION
    import_delphi(session, sae, run)
    (x,) = explanations.for_feature(session, sae=sae, feature=4)
    assert x.method == "llm:delphi"  # no run_config.json
    assert x.scores == approx_scores({"detection": DETECTION_SUMMARY, "fuzzing": FUZZ_SUMMARY})
    with pytest.raises(DelphiFormatError, match="unknown scorer 'simulation'"):
        write_delphi_scores(run, MODULE, 4, "simulation", [])

    # exporting another text over a latent drops the rows of the old one; its own summary goes along instead
    explanations.create(session, sae=sae, feature=4, text="Felines.", author="ada", score=0.9)
    counts = export_delphi(session, sae, run)
    assert counts["stale_rows_removed"] == 2 and not list((run / "scores").glob("*/*"))
    copy = make_sae(session, slug="L1-copy")
    import_delphi(session, copy, run)
    assert [(x.text, x.score) for x in explanations.for_feature(session, sae=copy, feature=4)] == [("Felines.", 0.9)]


def test_bad_folders_and_files_name_the_problem_and_store_nothing(session, tmp_path):
    sae = make_sae(session)
    with pytest.raises(DelphiFormatError, match="is not a folder"):
        import_delphi(session, sae, tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DelphiFormatError, match="is not a delphi run: it has no explanations/ folder"):
        import_delphi(session, sae, tmp_path / "empty")

    def broken(name: str, path: str, content: bytes) -> Path:
        run = delphi_run(tmp_path / name)
        (run / path).parent.mkdir(parents=True, exist_ok=True)
        (run / path).write_bytes(content)
        return run

    cases = [
        (f"explanations/{MODULE}_latent5.txt", b"Cats, unquoted", rf"{MODULE}_latent5\.txt: not JSON"),
        (f"explanations/{MODULE}_latent5.txt", b'["a list"]', rf"{MODULE}_latent5\.txt: an explanation file holds "
         "one JSON string, not list"),
        (f"explanations/{MODULE}_latent16.txt", b'"too far"', r"latent 16 is outside L1's features 0 to 15"),
        ("explanations/notes.txt", b'"x"', r"notes\.txt: not a delphi latent file name"),
        (f"scores/detection/{MODULE}_latent3.txt", b'{"rows": []}', r"detection/.*latent3\.txt: a score file holds "
         "a JSON array"),
        (f"scores/fuzz/{MODULE}_latent3.txt", orjson.dumps([{"prediction": 1}]), r"fuzz/.*latent3\.txt, row 0: "
         "`activating` must be true or false"),
        (f"scores/embedding/{MODULE}_latent3.txt", orjson.dumps([{"text": "a", "distance": "far"}]),
         r"embedding/.*latent3\.txt, row 0: `distance` must be a number"),
        ("run_config.json", b"[1]", r"run_config\.json: run_config\.json must hold a JSON object"),
        ("saex_scores.json", b"{}", r"saex_scores\.json: not a saex summary"),
    ]
    for i, (path, content, message) in enumerate(cases):
        with pytest.raises(DelphiFormatError, match=message):
            import_delphi(session, sae, broken(f"bad{i}", path, content))
    assert stored(session, sae) == []

    two = broken("two", "explanations/blocks.0.attn.hook_z_latent1.txt", b'"other"')
    assert import_delphi(session, sae, two)["module"] == MODULE  # the SAE's own hook name among several
    other = make_sae(session, slug="L2", hook_name="blocks.2.attn.hook_z")
    with pytest.raises(DelphiFormatError, match=r"several modules \(blocks\.0\.attn\.hook_z, blocks\.1\.attn"):
        import_delphi(session, other, two)
    with pytest.raises(DelphiFormatError, match="no explanations of module 'nope'"):
        import_delphi(session, other, two, module_name="nope")
    assert import_delphi(session, other, two, module_name="blocks.0.attn.hook_z")["explanations"] == 1
    with pytest.raises(DelphiFormatError, match="cannot name a file"):
        export_delphi(session, sae, tmp_path / "x", module_name="a/b")


def cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="saex")
    add_parsers(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_exports_and_imports(db_engine, db_url, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DATABASE_URL", db_url)
    slug = "delphi-cli-" + ("pg" if db_url.startswith("postgres") else "lite")
    factory = make_sessionmaker(db_engine)
    with transaction(factory) as s:
        make_sae(s, model_slug=slug)
        make_sae(s, model_slug=slug, slug="L1-copy")
    run = delphi_run(tmp_path / "run")
    assert cli(["explanations", "import", "--format", "delphi", "--model-slug", slug, "--sae", "L1", str(run)]) == 0
    assert json.loads(capsys.readouterr().out)["explanations"] == 2
    out = tmp_path / "out"
    assert cli(["explanations", "export", "--format", "delphi", "--model-slug", slug, "--sae", "L1",
                "--features", "0-5", str(out)]) == 0
    assert json.loads(capsys.readouterr().out)["explanations"] == 1
    assert cli(["explanations", "import", "--format", "delphi", "--model-slug", slug, "--sae", "L1-copy",
                str(out)]) == 0
    with factory() as s:
        one, copy = (find_sae(s, sae_slug=x, model_slug=slug) for x in ("L1", "L1-copy"))
        assert stored(s, copy) == [x for x in stored(s, one) if x[0] <= 5]

    assert cli(["explanations", "import", "--format", "delphi", "--model-slug", slug, "--sae", "L1",
                str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert "saex explanations import:" in err and "is not a folder" in err and "Traceback" not in err
    assert cli(["explanations", "export", "--format", "delphi", "--model-slug", slug, "--sae", "X", str(out)]) == 2
    assert "no SAE 'X'" in capsys.readouterr().err
    assert cli(["explanations", "export", "--format", "delphi", "--model-slug", slug, "--sae", "L1",
                "--features", "5-2", str(out)]) == 2
    assert "--features '5-2'" in capsys.readouterr().err

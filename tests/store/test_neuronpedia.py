"""Export and import of whole SAEs in Neuronpedia's export layout, on real Postgres and SQLite: dashboards built on
the tiny model and their explanations come back equal after export and import into another model; the rows carry
Neuronpedia's fields with the right shapes; Neuronpedia's own rows (without our extras) read too; malformed input
gives an error naming the file and line, and keeps every batch imported before it."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
import torch
from sqlalchemy import delete

from app import cli
from app.engine.engine import Engine
from app.jobs import dashboards as job
from app.store import explanations
from app.store.dashboards import find_sae, read_dashboard
from app.store.db import make_sessionmaker, transaction
from app.store.models import FeatureRecord
from app.store.neuronpedia import NeuronpediaError
from app.store.neuronpedia_export import export_sae
from app.store.neuronpedia_format import EXTRA
from app.store.neuronpedia_import import import_sae

PARAMS = job.BuildParams(corpus="random", tokens=10 * 40, top_k=5, n_intervals=4, per_interval=2)
D_SAE = 128


def tag_of(db_url: str) -> str:
    return "pg" if db_url.startswith("postgres") else "lite"


@pytest.fixture(scope="module")
def engine(tiny_engines) -> Engine:
    return tiny_engines["jumprelu"]


@pytest.fixture(scope="module")
def source(engine, db_engine, db_url) -> str:
    """A model whose two SAEs have dashboards (built, committed) and a few explanations; its slug."""
    ids = torch.randint(1, engine.model.cfg.d_vocab, (10, 40), generator=torch.Generator().manual_seed(3))
    ids[:, 0] = 0
    slug = f"np-src-{tag_of(db_url)}"
    factory = make_sessionmaker(db_engine)
    job.build(engine, factory, ids, PARAMS, model_slug=slug, batch_size=5, feature_batch=64, progress=False)
    with transaction(factory) as s:
        sae = find_sae(s, sae_slug="L0", model_slug=slug)
        explanations.create(s, sae=sae, feature=3, text="opening brackets", author="ada")
        explanations.create(s, sae=sae, feature=3, text="code, mostly", author="baseline", source="automatic",
                            score=0.625)
        explanations.create(s, sae=sae, feature=100, text="the word \"the\"", author="bob", score=-0.5)
    return slug


def dump(session, slug: str, sae_slug: str = "L0") -> dict[int, dict]:
    sae = find_sae(session, sae_slug=sae_slug, model_slug=slug)
    out = {}
    for f in range(sae.d_sae):
        body = read_dashboard(session, sae=sae, feature=f)
        if body is not None:
            for x in body["explanations"]:
                x.pop("id")
            out[f] = body
    return out


def rows(path: Path) -> list[dict]:
    with gzip.open(path, "rt") as f:
        return [json.loads(line) for line in f]


def test_round_trip_is_exact(session, engine, source, tmp_path):
    summary = export_sae(session, source, "L0", tmp_path / "np", batch_size=48)
    assert summary["sourceId"] == "0-att-saex" and summary["batches"] == 3 and summary["features"] == D_SAE
    copy = f"{source}-copy"
    job.register(session, engine, copy)
    got = import_sae(session, tmp_path / "np", copy, "L0")
    assert got["features"] == D_SAE and got["explanations"] == 3
    original = dump(session, source)
    assert len(original) == D_SAE and sum(bool(b["top_examples"]) for b in original.values()) > 20
    assert dump(session, copy) == original
    assert [x["text"] for x in original[3]["explanations"]] == ["code, mostly", "opening brackets"]  # best-scored first
    assert original[3]["explanations"][0]["score"] == 0.625 and original[3]["explanations"][0]["source"] == "automatic"

    again = import_sae(session, tmp_path / "np", copy, "L0")  # idempotent: nothing doubles
    assert again["explanations"] == 0 and again["explanations_skipped"] == 3
    assert dump(session, copy) == original

    # an explanation of a feature with no dashboard travels too, and makes no dashboard
    copy_sae = find_sae(session, sae_slug="L0", model_slug=copy)
    session.execute(delete(FeatureRecord).where(FeatureRecord.sae_id == copy_sae.id, FeatureRecord.index == 100))
    export_sae(session, copy, "L0", tmp_path / "np2")
    job.register(session, engine, f"{copy}2")
    assert import_sae(session, tmp_path / "np2", f"{copy}2", "L0")["features"] == D_SAE - 1
    assert dump(session, f"{copy}2") == dump(session, copy)
    copy2_sae = find_sae(session, sae_slug="L0", model_slug=f"{copy}2")
    assert [x.text for x in explanations.for_feature(session, sae=copy2_sae, feature=100)] == ['the word "the"']


def test_rows_carry_neuronpedia_fields(session, source, tmp_path):
    folder = tmp_path / "np"
    export_sae(session, source, "L0", folder, neuronpedia_model="tiny-np", source_set="att-test")
    for name in ("model.jsonl", "source.jsonl", "sourceset.jsonl"):  # Neuronpedia creates these with Prisma
        (meta,) = [json.loads(line) for line in (folder / name).read_text().splitlines()]
        assert EXTRA not in meta
    assert json.loads((folder / "source.jsonl").read_text())["id"] == "0-att-test"

    features = rows(folder / "features" / "batch-0.jsonl.gz")
    assert [f["index"] for f in features] == [str(i) for i in range(D_SAE)]
    for f in features:
        assert f["modelId"] == "tiny-np" and f["layer"] == "0-att-test" and f["sourceSetName"] == "att-test"
        assert isinstance(f["maxActApprox"], float) and 0 <= f["frac_nonzero"] <= 1
        assert len(f["freq_hist_data_bar_heights"]) == len(f["freq_hist_data_bar_values"])
        assert len(f["pos_str"]) == len(f["pos_values"]) == 10 and all(isinstance(t, str) for t in f["neg_str"])
        assert len(f["decoder_weights_dist"]) == 4 and sum(f["decoder_weights_dist"]) == pytest.approx(1)
        assert len(f["topkCosSimIndices"]) == len(f["topkCosSimValues"]) == 10
        assert all(isinstance(i, int) for i in f["topkCosSimIndices"])

    activations = rows(folder / "activations" / "batch-0.jsonl.gz")
    assert len(activations) > 100
    for a in activations:
        assert a.keys() == activations[0].keys()  # Neuronpedia imports the columns its first row names
        assert len(a["id"]) == 25 and a["layer"] == "0-att-test" and a["index"].isdigit()
        n = len(a["tokens"])
        assert all(isinstance(t, str) for t in a["tokens"]) and len(a["values"]) == n
        assert a["maxValue"] == max(a["values"]) == a["values"][a["maxValueTokenIndex"]]
        assert a["minValue"] == min(a["values"])
        assert len(a["dfaValues"]) == n and a["dfaMaxValue"] == max(a["dfaValues"])
        assert 0 <= a["dfaTargetIndex"] < n and a["qualifyingTokenIndex"] == a["dfaTargetIndex"]
        if a[EXTRA]["kind"] == "top":
            assert a["binMin"] == -1 and a["binContains"] == -1
        else:
            assert a["binMin"] <= a["values"][a["dfaTargetIndex"]] <= a["binMax"] + 1e-2
            assert 0 < a["binContains"] <= 1
    assert len({a["id"] for a in activations}) == len(activations)

    expl = rows(folder / "explanations" / "batch-0.jsonl.gz")
    assert [(x["index"], x["description"]) for x in expl] == [
        ("3", "opening brackets"), ("3", "code, mostly"), ("100", "the word \"the\"")]
    for x in expl:
        assert x["typeName"] is None and x["explanationModelName"] is None and x["authorId"]
        assert x["createdAt"] and x.keys() == expl[0].keys()
    assert expl[1]["scores"] == [{"value": 0.625, "explanationScoreTypeName": None, "explanationScoreModelName": None}]


def test_reads_neuronpedia_rows_without_our_extras(session, engine, source, tmp_path):
    """Neuronpedia's own exports: no `saex` object, tokens as text only, features batched by their index as text."""
    export_sae(session, source, "L0", tmp_path / "ours")
    foreign = tmp_path / "foreign"
    for kind in ("features", "activations", "explanations"):
        (foreign / kind).mkdir(parents=True)
    strip = [{k: v for k, v in r.items() if k != EXTRA} for r in rows(tmp_path / "ours/features/batch-0.jsonl.gz")]
    strip.sort(key=lambda r: r["index"])  # Neuronpedia orders by its text column: "0", "1", "10", "100", ...
    for n in (0, 1):
        with gzip.open(foreign / "features" / f"batch-{n}.jsonl.gz", "wt") as f:
            f.writelines(json.dumps(r) + "\n" for r in strip[n * 64 : (n + 1) * 64])
    acts = [{k: v for k, v in r.items() if k != EXTRA} for r in rows(tmp_path / "ours/activations/batch-0.jsonl.gz")]
    for n in (0, 1):  # by feature index, as Neuronpedia batches activations
        with gzip.open(foreign / "activations" / f"batch-{n}.jsonl.gz", "wt") as f:
            f.writelines(json.dumps(r) + "\n" for r in acts if int(r["index"]) // 64 == n)
    with gzip.open(foreign / "explanations" / "batch-0.jsonl.gz", "wt") as f:
        for r in rows(tmp_path / "ours/explanations/batch-0.jsonl.gz"):
            r = {k: v for k, v in r.items() if k != EXTRA}
            f.write(json.dumps({**r, "explanationModelName": "gpt-4o-mini"} if r["index"] == "100" else r) + "\n")

    job.register(session, engine, f"{source}-foreign")
    import_sae(session, foreign, f"{source}-foreign", "L0")
    original, copy = dump(session, source), dump(session, f"{source}-foreign")
    assert copy.keys() == original.keys()

    def examples(body: dict, kind: str) -> list:  # token ids read from text: several ids may share one ('\ufffd')
        return sorted((e["tokens"], e["activations"], e["max_position"], e["dfa"]) for e in body[kind])

    for f, body in original.items():
        got = copy[f]
        for key in ("density", "max_activation", "logit_effects", "head_attribution", "similar_features"):
            assert got[key] == body[key]
        assert got["activation_histogram"]["counts"] == body["activation_histogram"]["counts"]
        assert got["activation_histogram"]["bin_edges"] == pytest.approx(body["activation_histogram"]["bin_edges"])
        assert examples(got, "top_examples") == examples(body, "top_examples")
        assert examples(got, "interval_examples") == examples(body, "interval_examples")
        intervals = [e["interval"] for e in got["interval_examples"]]
        assert intervals == sorted(intervals)
    assert [(x["text"], x["source"]) for x in copy[3]["explanations"]] == [
        ("code, mostly", "human"), ("opening brackets", "human")]  # newest first when unscored
    (x,) = copy[100]["explanations"]
    assert (x["author"], x["source"], x["score"]) == ("gpt-4o-mini", "automatic", -0.5)  # score from `scores`


def corrupt(path: Path, line: int, text: str) -> None:
    lines = gzip.decompress(path.read_bytes()).decode().splitlines()
    lines[line - 1] = text
    path.write_bytes(gzip.compress(("\n".join(lines) + "\n").encode()))


def test_malformed_input_names_file_and_line_and_keeps_earlier_batches(session, engine, source, tmp_path):
    folder = tmp_path / "np"
    export_sae(session, source, "L0", folder, batch_size=32)
    job.register(session, engine, f"{source}-bad")
    target = f"{source}-bad"

    with pytest.raises(NeuronpediaError, match="is not a folder"):
        import_sae(session, tmp_path / "missing", target, "L0")
    with pytest.raises(NeuronpediaError, match="no features/ folder"):
        import_sae(session, tmp_path, target, "L0")
    with pytest.raises(NeuronpediaError, match="has no SAE 'L7'.*L0, L1"):
        import_sae(session, folder, target, "L7")
    with pytest.raises(NeuronpediaError, match="no model 'nope'"):
        import_sae(session, folder, "nope", "L0")

    bad = folder / "activations" / "batch-2.jsonl.gz"
    row = rows(bad)[2]
    corrupt(bad, 3, json.dumps({**row, "values": row["values"][:-1]}))
    with pytest.raises(NeuronpediaError, match=r"batch-2\.jsonl\.gz, line 3: `values` has \d+ entries for \d+ tokens"):
        import_sae(session, folder, target, "L0")
    imported = dump(session, target)
    assert sorted(imported) == list(range(64)), "batches 0 and 1 whole, nothing of batch 2"

    vocab = engine.model.cfg.d_vocab
    other = {**row, EXTRA: {**row[EXTRA], "token_ids": [(i + 1) % vocab for i in row[EXTRA]["token_ids"]]}}
    corrupt(bad, 3, json.dumps(other))
    with pytest.raises(NeuronpediaError, match=r"line 3: token id \d+ is .* from a model with another tokenizer"):
        import_sae(session, folder, target, "L0")
    corrupt(bad, 3, json.dumps({**row, "layer": "1-att-saex"}))
    with pytest.raises(NeuronpediaError, match=r"line 3: a row of source '1-att-saex' among rows of '0-att-saex'"):
        import_sae(session, folder, target, "L0")
    corrupt(bad, 3, "{not json")
    with pytest.raises(NeuronpediaError, match=r"batch-2\.jsonl\.gz, line 3: not a JSON row"):
        import_sae(session, folder, target, "L0")
    bad.write_bytes(b"not gzip at all")
    with pytest.raises(NeuronpediaError, match=r"batch-2\.jsonl\.gz: not a readable gzip file"):
        import_sae(session, folder, target, "L0")
    corrupt(folder / "features" / "batch-1.jsonl.gz", 5, json.dumps({"layer": "0-att-saex", "index": "9999"}))
    with pytest.raises(NeuronpediaError, match=r"features/batch-1\.jsonl\.gz, line 5: feature index 9999 is outside"):
        import_sae(session, folder, target, "L0")

    with pytest.raises(NeuronpediaError, match="not an empty folder"):
        export_sae(session, source, "L0", folder)
    with pytest.raises(NeuronpediaError, match="has no SAE 'L9'"):
        export_sae(session, source, "L9", tmp_path / "other")


def test_cli_exports_and_imports(db_engine, db_url, engine, source, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DATABASE_URL", db_url)
    target = f"{source}-cli"
    with transaction(make_sessionmaker(db_engine)) as s:
        job.register(s, engine, target)
    out = tmp_path / "np"
    assert cli.main(["export", "neuronpedia", "--model-slug", source, "--sae", "L1", "--out", str(out)]) == 0
    assert json.loads(capsys.readouterr().out)["sourceId"] == "1-att-saex"
    assert cli.main(["import", "neuronpedia", "--model-slug", target, "--sae", "L1", str(out)]) == 0
    assert json.loads(capsys.readouterr().out)["features"] == D_SAE
    with make_sessionmaker(db_engine)() as s:
        assert dump(s, target, "L1") == dump(s, source, "L1")

    assert cli.main(["import", "neuronpedia", "--model-slug", target, "--sae", "L1", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert "saex import:" in err and "is not a folder" in err and "Traceback" not in err
    assert cli.main(["export", "neuronpedia", "--model-slug", source, "--sae", "X", "--out", str(tmp_path / "x")]) == 2
    assert "has no SAE 'X'" in capsys.readouterr().err
    corrupt(out / "features" / "batch-0.jsonl.gz", 2, "[1, 2]")
    assert cli.main(["import", "neuronpedia", "--model-slug", target, "--sae", "L1", str(out)]) == 2
    err = capsys.readouterr().err
    assert "batch-0.jsonl.gz, line 2: a row must be a JSON object" in err and "Traceback" not in err

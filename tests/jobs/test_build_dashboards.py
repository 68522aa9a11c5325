"""The dashboard build job end to end on the tiny model, on real Postgres and SQLite (schema from the
migrations): stored dashboards agree with recomputation through the engine, and a build killed mid-pass or
mid-write resumes to exactly the result of an uninterrupted one."""

from __future__ import annotations

import pytest
import torch

from app.engine.engine import Engine
from app.jobs import dashboards as job
from app.store.dashboards import find_sae, read_dashboard
from app.store.db import make_sessionmaker

PARAMS = job.BuildParams(corpus="random", tokens=10 * 40, top_k=5, n_intervals=4, per_interval=2)


@pytest.fixture(scope="module")
def engine(tiny_engines) -> Engine:
    return tiny_engines["jumprelu"]


@pytest.fixture(scope="module")
def corpus(engine) -> torch.Tensor:
    ids = torch.randint(1, engine.model.cfg.d_vocab, (10, 40), generator=torch.Generator().manual_seed(1))
    ids[:, 0] = 0
    return ids


@pytest.fixture
def factory(db_engine):
    return make_sessionmaker(db_engine)


def dump(factory, slug: str) -> dict:
    """Everything stored for a model: {(sae, feature): dashboard}."""
    out = {}
    with factory() as s:
        for sae_slug in ("L0", "L1"):
            sae = find_sae(s, sae_slug=sae_slug, model_slug=slug)
            for f in range(sae.d_sae):
                body = read_dashboard(s, sae=sae, feature=f)
                if body is not None:
                    body.pop("explanations")
                    out[(sae_slug, f)] = body
    return out


def test_build_round_trip_and_exactness(engine, corpus, factory, request):
    slug = f"exact-{request.node.callspec.id if hasattr(request.node, 'callspec') else 'x'}"
    summary = job.build(engine, factory, corpus, PARAMS, model_slug=slug, batch_size=3, feature_batch=32,
                        progress=False)
    assert summary["features_written"] == 2 * 128
    stored = dump(factory, slug)
    assert len(stored) == 256
    T = corpus.shape[1]
    fired = 0
    for (sae_slug, f), body in stored.items():
        if not body["top_examples"]:
            assert body["max_activation"] == 0 and body["density"] == 0
            continue
        fired += 1
        top = body["top_examples"][0]
        assert top["activations"][top["max_position"]] == pytest.approx(body["max_activation"], rel=1e-3)  # fp16
        assert sum(body["activation_histogram"]["counts"]) == round(body["density"] * 10 * 39)
        if f % 16:
            continue
        layer = int(sae_slug[1:])
        for ex in body["top_examples"] + body["interval_examples"]:
            row, t = divmod(ex["corpus_position"], T)
            trace = engine.feature_trace_ids(corpus[row : row + 1], layer, f)  # recomputed through the engine
            assert ex["activations"][ex["max_position"]] == pytest.approx(trace["activations"][t], rel=2e-3, abs=1e-3)
            assert ex["token_ids"][ex["max_position"]] == int(corpus[row, t])
            assert ex["dfa_heads"] == pytest.approx(trace["head_contributions"][t], rel=2e-3, abs=2e-3)
        for ex in body["interval_examples"]:
            lo = body["max_activation"] * ex["interval"] / PARAMS.n_intervals
            hi = body["max_activation"] * (ex["interval"] + 1) / PARAMS.n_intervals
            assert lo - 1e-2 <= ex["activations"][ex["max_position"]] <= hi + 1e-2
    assert fired > 50


class Killed(Exception):
    pass


def test_interrupted_builds_resume_to_the_same_result(engine, corpus, factory, tmp_path, monkeypatch, db_url):
    tag = "pg" if db_url.startswith("postgres") else "lite"
    job.build(engine, factory, corpus, PARAMS, model_slug=f"whole-{tag}", batch_size=3, feature_batch=32,
              progress=False)
    expected = dump(factory, f"whole-{tag}")

    # 1. killed between corpus batches: the checkpoint carries the pass over
    real_pass = job.run_pass

    def pass_then_die(*args, **kwargs):
        real_pass(*args, **{**kwargs, "stop_after": 2, "checkpoint_every": 1})
        raise Killed

    monkeypatch.setattr(job, "run_pass", pass_then_die)
    with pytest.raises(Killed):
        job.build(engine, factory, corpus, PARAMS, model_slug=f"resumed-{tag}", batch_size=3, feature_batch=32,
                  work_dir=tmp_path, progress=False)
    assert list(tmp_path.glob("*.safetensors")), "a checkpoint was left for the next run"
    assert dump(factory, f"resumed-{tag}") == {}
    monkeypatch.setattr(job, "run_pass", real_pass)

    # 2. killed while writing: the second batch of features fails inside its transaction
    real_write, calls = job.write_features, []

    def write_then_die(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise Killed
        return real_write(*args, **kwargs)

    monkeypatch.setattr(job, "write_features", write_then_die)
    with pytest.raises(Killed):
        job.build(engine, factory, corpus, PARAMS, model_slug=f"resumed-{tag}", batch_size=3, feature_batch=32,
                  work_dir=tmp_path, progress=False)
    partial = dump(factory, f"resumed-{tag}")
    assert len(partial) == 32, "one whole batch of features, nothing of the failed one"
    monkeypatch.setattr(job, "write_features", real_write)

    summary = job.build(engine, factory, corpus, PARAMS, model_slug=f"resumed-{tag}", batch_size=3,
                        feature_batch=32, work_dir=tmp_path, progress=False)
    assert summary["features_written"] == 256 - 32
    assert dump(factory, f"resumed-{tag}") == expected
    assert not list(tmp_path.glob("*.safetensors")), "the finished build removes its checkpoint"
    again = job.build(engine, factory, corpus, PARAMS, model_slug=f"resumed-{tag}", batch_size=3, progress=False)
    assert again["features_written"] == 0

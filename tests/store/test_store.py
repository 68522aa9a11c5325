"""The store on real Postgres and on SQLite, with the schema built by the real Alembic migrations."""

from __future__ import annotations

import pytest
from sqlalchemy import inspect

from app.store import explanations, keys, results
from app.store.dashboards import (
    ExampleColumns,
    ExampleData,
    FeatureDashboard,
    find_sae,
    put_tokens,
    read_dashboard,
    start_build,
    upsert_model,
    upsert_sae,
    write_features,
)
from app.store.db import current_revision
from app.store.packing import pack_ids, pack_values


@pytest.fixture
def sae(session):
    model = upsert_model(session, slug="demo", name="demo", source="artifacts/demo/model",
                         config={"n_layers": 2, "n_heads": 8})
    put_tokens(session, model=model, texts=["<|endoftext|>", "The", " fox", " jumps", " over"])
    return upsert_sae(session, model=model, slug="L1", layer=1, hook_name="blocks.1.attn.hook_z", d_sae=16,
                      architecture="topk", source="artifacts/demo/saes/L1", metrics={"fve": 0.9})


def dashboard(index: int, scale: float = 1.0) -> FeatureDashboard:
    ex = [ExampleData(kind="top", rank=r, token_ids=[0, 1, 2, 3], activations=[0.0, 0.5 * scale, 2.25 * scale, 0.0],
                      max_position=2, dfa=[0.125, 0.5, 1.0, 0.0], dfa_heads=[0.25] * 8) for r in range(3)]
    ex.append(ExampleData(kind="interval", rank=0, interval=4, token_ids=[4, 1], activations=[1.0, 0.0],
                          max_position=0, dfa=[0.5, 0.0], dfa_heads=[0.0] * 8))
    return FeatureDashboard(index=index, density=0.01, max_activation=2.25 * scale,
                            histogram={"bin_edges": [0, 1, 2, 3], "counts": [5, 2, 1]},
                            logit_effects={"top": [{"token": " fox", "value": 1.5}], "bottom": []},
                            head_attribution=[0.125] * 8, similar=[{"feature": 3, "cosine": 0.5}], examples=ex)


def test_migrations_built_the_schema(db_engine):
    assert current_revision(db_engine) == "0007"
    tables = set(inspect(db_engine).get_table_names())
    assert {"models", "saes", "tokens", "features", "examples", "explanations", "saved_results", "api_keys",
            "dashboard_builds", "dashboard_runs"} <= tables


def test_several_saes_on_one_layer_each_known_by_its_id(session, sae):
    """SAE sets: a wider SAE on the same layer of the same model, its own dashboards under its own id."""
    wide = upsert_sae(session, model=sae.model, slug="L1-wide", layer=1, hook_name="blocks.1.attn.hook_z", d_sae=64,
                      architecture="topk", source="saes/wide/L1", sae_set="wide")
    write_features(session, sae=wide, build_id=start_build(session, sae=wide, params={}).id,
                   dashboards=[dashboard(7, scale=2.0)])
    write_features(session, sae=sae, build_id=start_build(session, sae=sae, params={}).id, dashboards=[dashboard(7)])
    found = find_sae(session, sae_slug="L1-wide", model_slug="demo")
    assert (found.id, found.sae_set, found.layer) == (wide.id, "wide", 1) and sae.sae_set == "default"
    assert read_dashboard(session, sae=found, feature=7)["max_activation"] == 4.5
    assert read_dashboard(session, sae=sae, feature=7)["max_activation"] == 2.25


def test_dashboard_round_trip(session, sae):
    build = start_build(session, sae=sae, params={"tokens": 1000})
    write_features(session, sae=sae, build_id=build.id, dashboards=[dashboard(7), dashboard(9)])
    body = read_dashboard(session, sae=find_sae(session, sae_slug="L1", model_slug="demo"), feature=7)
    assert body["max_activation"] == 2.25 and body["density"] == 0.01
    assert body["activation_histogram"] == {"bin_edges": [0, 1, 2, 3], "counts": [5, 2, 1]}
    assert len(body["top_examples"]) == 3 and len(body["interval_examples"]) == 1
    top = body["top_examples"][0]
    assert top["tokens"] == ["<|endoftext|>", "The", " fox", " jumps"]  # from the shared token table
    assert top["activations"] == [0.0, 0.5, 2.25, 0.0] and top["max_position"] == 2
    assert top["dfa"] == [0.125, 0.5, 1.0, 0.0] and top["dfa_heads"] == [0.25] * 8
    assert body["interval_examples"][0]["interval"] == 4
    assert body["similar_features"] == [{"feature": 3, "cosine": 0.5}]
    assert read_dashboard(session, sae=sae, feature=8) is None


def test_examples_as_packed_columns_read_back_like_example_lists(session, sae):
    """The dashboard builder hands examples over as columns of packed bytes; they read back exactly as the same
    examples given one object each."""
    as_objects = dashboard(7)
    columns = ExampleColumns(
        feature=[9] * 4, kind=[e.kind for e in as_objects.examples], rank=[e.rank for e in as_objects.examples],
        interval=[e.interval for e in as_objects.examples], max_position=[e.max_position for e in as_objects.examples],
        corpus_position=[e.corpus_position for e in as_objects.examples],
        token_ids=[pack_ids(e.token_ids) for e in as_objects.examples],
        activations=[pack_values(e.activations) for e in as_objects.examples],
        dfa=[pack_values(e.dfa) for e in as_objects.examples],
        dfa_heads=[pack_values(e.dfa_heads) for e in as_objects.examples])
    without = dashboard(9)
    without.examples = []
    write_features(session, sae=sae, build_id=None, dashboards=[as_objects, without], columns=columns)
    a, b = read_dashboard(session, sae=sae, feature=7), read_dashboard(session, sae=sae, feature=9)
    assert a["top_examples"] == b["top_examples"] and a["interval_examples"] == b["interval_examples"]
    assert len(b["top_examples"]) == 3 and len(b["interval_examples"]) == 1
    with pytest.raises(ValueError, match="not among the dashboards"):
        write_features(session, sae=sae, build_id=None, dashboards=[dashboard(8)], columns=columns)


def test_rewriting_a_feature_replaces_it(session, sae):
    write_features(session, sae=sae, build_id=None, dashboards=[dashboard(7)])
    write_features(session, sae=sae, build_id=None, dashboards=[dashboard(7, scale=2.0)])
    body = read_dashboard(session, sae=sae, feature=7)
    assert body["max_activation"] == 4.5
    assert len(body["top_examples"]) == 3  # not 6


def test_explanations_crud_and_search(session, sae):
    a = explanations.create(session, sae=sae, feature=7, text="Induction: predicts the token that followed the "
                            "previous occurrence", author="alice")
    explanations.create(session, sae=sae, feature=9, text="Python keywords after a newline", author="bob",
                        source="automatic", score=0.7)
    assert [x.text.split(":")[0] for x in explanations.for_feature(session, sae=sae, feature=7)] == ["Induction"]
    hits = explanations.search(session, q="induction previous")
    assert [(x.id, s.slug) for x, s in hits] == [(a.id, "L1")]
    assert [x.feature for x, _ in explanations.search(session, q="python")] == [9]
    assert explanations.search(session, q="percent%_") == []  # LIKE wildcards are literal
    explanations.update(session, record=a, text="copies the next token")
    assert explanations.search(session, q="induction") == []
    explanations.delete(session, record=a)
    assert explanations.for_feature(session, sae=sae, feature=7) == []


def test_postgres_search_stems_words(session, sae, db_url):
    if not db_url.startswith("postgresql"):
        pytest.skip("stemming is Postgres full-text search; SQLite matches substrings")
    explanations.create(session, sae=sae, feature=1, text="fires on running loops", author="a")
    assert [x.feature for x, _ in explanations.search(session, q="loop runs")] == [1]


def test_api_keys(session):
    key, record = keys.create_key(session, name="ci")
    assert key.startswith("saex_") and key not in record.key_hash
    assert keys.verify(session, key=key).id == record.id
    assert keys.verify(session, key=key + "x") is None
    keys.revoke(session, key_id=record.id)
    assert keys.verify(session, key=key) is None


def test_saved_results(session):
    saved = results.save(session, kind="analysis", model_slug="demo", payload={"text": "fox", "layer": 1})
    assert results.load(session, result_id=saved.id).payload == {"text": "fox", "layer": 1}
    assert results.load(session, result_id=saved.id, kind="steering") is None
    assert results.load(session, result_id="nope") is None


def test_models_and_migrations_agree(db_engine):
    """What `alembic check` does: the migrated schema has every table, column and index the models declare."""
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    from app.store.models import Base

    with db_engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    # Postgres's stored search vector (a generated column) and its index are not declared by the models
    diff = [d for d in diff if not (d[0] == "remove_index" and d[1].name == "ix_explanations_text_search")
            and not (d[0] == "remove_column" and d[3].name == "text_search")]
    assert diff == []


def test_upgrade_creates_a_fresh_sqlite_data_directory(tmp_path):
    from app.store.db import make_engine, upgrade

    url = f"sqlite:///{tmp_path / 'fresh' / 'data' / 'saex.db'}"
    upgrade(url)
    assert current_revision(make_engine(url)) == "0007"

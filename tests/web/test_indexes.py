"""Index pages (issue 18): /{model} lists its SAE sets and SAEs with d_sae, dashboards built and features explained;
/{model}/{sae} is a paginated table sorted by id, density or max activation, filtered by explanation text and
searched by token through the URL; neither shadows /health, /ready, /docs, /{model}/steer, /graph or /circuits;
/docs is our own page (no CDN) and /favicon.ico is served."""

from __future__ import annotations

import re
import struct

import pytest
import torch
from fastapi.testclient import TestClient

from app.config import Settings
from app.engine.engine import Engine
from app.engine.loading import attach_saes, load_model
from app.jobs import dashboards as job
from app.store import explanations, keys
from app.store.dashboards import find_sae
from app.store.db import make_engine, make_sessionmaker, transaction, upgrade
from app.store.models import ExampleRecord, FeatureRecord
from app.web.app import create_web_app
from app.web.services import indexes
from app.worker.service import create_worker_app


def make_site(tiny_model_dir, sae_dirs, folder, **settings):
    """The tiny model's dashboards built into SQLite, two explanations, an API key: (web app, worker engine, key)."""
    url = f"sqlite:///{folder / 'p.db'}"
    upgrade(url)
    model = load_model(str(tiny_model_dir))
    engine = Engine(model, attach_saes(model, [str(p) for p in sae_dirs["standard"]]), "demo")
    corpus = torch.randint(1, model.cfg.d_vocab, (6, 40), generator=torch.Generator().manual_seed(3))
    corpus[:, 0] = 0
    db = make_engine(url)
    job.build(engine, make_sessionmaker(db), corpus, job.BuildParams(corpus="r", tokens=240), batch_size=3,
              progress=False)
    with transaction(make_sessionmaker(db)) as s:
        key, _ = keys.create_key(s, name="alice")
        sae = find_sae(s, sae_slug="L1", model_slug="demo")
        explanations.create(s, sae=sae, feature=3, text="fires on code comments", author="alice")
        explanations.create(s, sae=sae, feature=9, text="Code and quotes", author="bob")
    db.dispose()
    return create_web_app(Settings(database_url=url, **settings), create_worker_app(engine)), engine, key, url


@pytest.fixture(scope="module")
def site(tiny_model_dir, sae_dirs, tmp_path_factory):
    app, _, key, url = make_site(tiny_model_dir, sae_dirs, tmp_path_factory.mktemp("indexes"))
    with TestClient(app) as c:
        yield c, key, url


def _features(html: str) -> list[int]:
    return [int(f) for f in re.findall(r'<td class="num"><a href="/demo/L1/(\d+)">', html)]


def test_model_index_lists_sets_and_saes(site):
    c, _, _ = site
    page = c.get("/demo")
    assert page.status_code == 200 and "<html" in page.text
    assert 'href="/demo/L0"' in page.text and 'href="/demo/L1"' in page.text and "blocks.1.attn.hook_z" in page.text
    rows = re.findall(r'<tr>\s*<td><a href="/demo/(L\d)">.*?</tr>', page.text, re.S)
    assert rows == ["L0", "L1"]
    l1 = re.search(r'<a href="/demo/L1">.*?</tr>', page.text, re.S).group(0)
    cells = re.findall(r'<td class="num">(.*?)</td>', l1, re.S)
    assert cells[0] == "128" and cells[-1] == "2"  # d_sae; two features explained
    assert c.get("/demo", headers={"HX-Request": "true"}).text.lstrip().startswith("<title>demo")
    missing = c.get("/nosuch")
    assert missing.status_code == 404 and "nosuch" in missing.text and "<html" in missing.text


def test_sae_index_sorts_and_pages(site):
    c, _, url = site
    first = c.get("/demo/L1")
    assert first.status_code == 200 and 'aria-sort="ascending"' in first.text
    ids = _features(first.text)
    assert ids == sorted(ids) and len(ids) == indexes.PER_PAGE
    db = make_engine(url)
    with make_sessionmaker(db)() as s:
        sae = find_sae(s, sae_slug="L1", model_slug="demo")
        stats = {f: (d, m) for f, d, m in s.query(FeatureRecord.index, FeatureRecord.density,
                                                   FeatureRecord.max_activation).filter_by(sae_id=sae.id)}
    db.dispose()
    dense = _features(c.get("/demo/L1", params={"sort": "density", "desc": 1}).text)
    assert [stats[f][0] for f in dense] == sorted((d for d, _ in stats.values()), reverse=True)[:len(dense)]
    strong = _features(c.get("/demo/L1", params={"sort": "max_activation"}).text)
    assert [stats[f][1] for f in strong] == sorted(m for _, m in stats.values())[:len(strong)]
    last = c.get("/demo/L1", params={"page": 99})  # past the end: the last page
    pages = -(-len(stats) // indexes.PER_PAGE)
    assert f"page {pages} of {pages}" in last.text and 'rel="next"' not in last.text and 'rel="prev"' in last.text
    assert set(_features(last.text)) | set(ids) <= set(stats)
    assert 'href="/demo/L1?page=2"' in first.text  # defaults stay out of the URL
    assert c.get("/demo/L1", params={"sort": "nonsense"}).status_code == 422
    assert c.get("/demo/L1", params={"sort": "hits"}).status_code == 422  # hits only with a token
    assert c.get("/demo/L9").status_code == 404


def test_sae_index_filters_by_explanation(site):
    c, _, _ = site
    page = c.get("/demo/L1", params={"q": "code"})
    assert _features(page.text) == [3, 9]  # case-insensitive substring, in either explanation
    assert "fires on code comments" in page.text and "2 features whose explanation contains" in page.text
    assert _features(c.get("/demo/L1", params={"q": "100%_"}).text) == []  # LIKE's wildcards are literal


def test_search_by_token_counts_top_examples_on_it(site):
    c, _, url = site
    db = make_engine(url)
    with make_sessionmaker(db)() as s:
        sae = find_sae(s, sae_slug="L1", model_slug="demo")
        rows = s.query(FeatureRecord.index, ExampleRecord.token_ids, ExampleRecord.max_position).join(
            ExampleRecord, ExampleRecord.feature_id == FeatureRecord.id).filter(
            FeatureRecord.sae_id == sae.id, ExampleRecord.kind == "top").all()
        from app.store.dashboards import token_texts
        texts = token_texts(s, model_id=sae.model_id)
    db.dispose()
    on = [(f, struct.unpack_from("<i", ids, 4 * m)[0]) for f, ids, m in rows]
    token_id = max({t for _, t in on}, key=lambda t: sum(1 for _, u in on if u == t))
    word = texts[token_id].strip()
    wanted = {texts[t].strip().casefold() for t in {u for _, u in on}} & {word.casefold()}
    expected = {}
    for f, t in on:
        if texts[t].strip().casefold() in wanted:
            expected[f] = expected.get(f, 0) + 1
    page = c.get("/demo/L1", params={"token": f" {word} ", "sort": "hits", "desc": 1})
    assert page.status_code == 200 and "top examples on it" in page.text
    shown = _features(page.text)
    assert set(shown) == set(sorted(expected, key=lambda f: (-expected[f], f))[:indexes.PER_PAGE])
    assert [expected[f] for f in shown] == sorted((expected[f] for f in shown), reverse=True)
    automatic = c.get("/demo/L1", params={"token": word}).text  # a token search sorts by hits unless told
    assert _features(automatic) == shown and 'aria-sort="descending"' in automatic


def test_the_index_routes_shadow_nothing(site):
    c, _, _ = site
    assert c.get("/health").json() == {"status": "ok"}
    assert c.get("/ready").status_code in (200, 503) and "status" in c.get("/ready").json()
    assert "<form" in c.get("/demo/steer").text
    for path in ("/demo/graph", "/demo/circuits", "/demo/build", "/search", "/lists", "/sign-in"):
        assert c.get(path).status_code == 200, path
    assert c.get("/openapi.json").json()["info"]["title"] == "SAE Explorer"
    assert c.get("/demo/L1/3").status_code == 200


def test_favicon_and_offline_api_docs(site):
    c, _, _ = site
    icon = c.get("/favicon.ico")
    assert icon.status_code == 200 and icon.headers["content-type"].startswith("image/svg+xml")
    assert icon.text.startswith("<svg")
    assert '<link rel="icon" href="/static/favicon.svg"' in c.get("/sign-in").text
    docs = c.get("/docs")
    assert docs.status_code == 200 and "/api/v1/analyze" in docs.text and "AnalyzeRequest" in docs.text
    assert not re.search(r'(src|href)="(https?:)?//', docs.text)  # nothing from another site

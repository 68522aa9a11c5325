"""Pages: the same URL answers a full page or, with HX-Request, the fragment; state lives in the URL; saved
analyses get a permalink; tokens and user text are escaped, never markup; worker trouble is a clear message."""

from __future__ import annotations

import re

import pytest
import torch
from fastapi.testclient import TestClient

from app.config import Settings
from app.engine.engine import Engine
from app.engine.head_scores import head_scores
from app.engine.loading import attach_saes, load_model
from app.jobs import dashboards as job
from app.store import keys
from app.store.db import make_engine, make_sessionmaker, transaction, upgrade
from app.web.app import create_web_app
from app.worker.service import create_worker_app
from tests.web.forms import csrf_token, sign_in

XSS = '<img src=x onerror=alert(1)> <script>alert(2)</script>'


@pytest.fixture(scope="module")
def site(tiny_model_dir, sae_dirs, tmp_path_factory):
    url = f"sqlite:///{tmp_path_factory.mktemp('pages') / 'p.db'}"
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
    db.dispose()
    with TestClient(create_web_app(Settings(database_url=url), create_worker_app(engine))) as c:
        yield c, key


def test_explorer_full_page_and_fragment(site):
    c, _ = site
    full = c.get("/", params={"text": "The quick brown fox", "layer": 1})
    assert full.status_code == 200 and full.text.lstrip().startswith("<!doctype html>")
    assert 'src="/static/vendor/htmx.min.js"' in full.text
    frag = c.get("/", params={"text": "The quick brown fox", "layer": 1}, headers={"HX-Request": "true"})
    assert "<html" not in frag.text and 'class="tokens"' in frag.text
    tokens = c.post("/api/v1/tokenize", json={"text": "The quick brown fox"}).json()["tokens"]
    assert len(re.findall(r'class="tok[" ]', frag.text)) == len(tokens)
    strip = re.search(r'<div class="tokens"[^>]*>(.*?)</div>', frag.text, re.S).group(1)
    assert not re.search(r">\s+<a", strip), "no whitespace between tokens: the strip is white-space: pre-wrap"


def test_token_feature_and_dfa_state_in_the_url(site):
    c, _ = site
    page = c.get("/", params={"text": "The quick brown fox", "layer": 1, "pos": 3})
    feature = int(re.search(r"feature=(\d+)&amp;pos=3", page.text).group(1))
    page = c.get("/", params={"text": "The quick brown fox", "layer": 1, "feature": feature, "pos": 3})
    assert "DFA of feature" in page.text and 'type="application/json"' in page.text
    assert f"/demo/L1/{feature}" in page.text


def test_save_and_permalink(site):
    c, _ = site
    form = {"text": "The quick brown fox", "layer": 1, "pos": 2}
    assert c.post("/p", data=form).status_code == 403  # no CSRF token: refused
    r = c.post("/p", data={**form, "csrf_token": csrf_token(c)}, follow_redirects=False)
    assert r.status_code == 303
    link = r.headers["location"]
    page = c.get(link)
    assert page.status_code == 200 and "Permalink" in page.text and 'class="tok sel"' in page.text
    assert c.get("/p/unknown").status_code == 404


def test_prompts_are_escaped(site):
    c, _ = site
    page = c.get("/", params={"text": XSS, "layer": 0, "pos": 1})
    assert "<script>alert" not in page.text and "<img src=x" not in page.text
    assert "&lt;script&gt;" in page.text or "&lt;" in page.text


def test_feature_page_and_explanation_form(site):
    c, key = TestClient(site[0].app), site[1]  # a browser of its own: signing in does not leak into other tests
    page = c.get("/demo/L1/5")
    assert page.status_code == 200 and "Top activations" in page.text and "Feature 5" in page.text
    assert page.text.count('type="application/json"') == 3  # histogram, heads, logits
    frag = c.get("/demo/L1/5", headers={"HX-Request": "true"}).text.lstrip()  # the page's title, then its body
    assert frag.startswith("<title>Feature 5 · L1") and "<html" not in frag and '<nav class="layers"' in frag
    assert "Sign in</a> to add or" in page.text and "Add an explanation" not in page.text
    anon = c.post("/demo/L1/5/explanations", data={"text": "fires on foxes", "csrf_token": csrf_token(c)})
    assert anon.status_code == 401 and "Sign in to write explanations" in anon.text
    token = sign_in(c, key)
    assert "Add an explanation" in c.get("/demo/L1/5").text
    ok = c.post("/demo/L1/5/explanations", data={"text": "fires on <b>foxes</b>", "csrf_token": token})
    assert ok.status_code == 200 and "fires on &lt;b&gt;foxes&lt;/b&gt;" in ok.text and "alice" in ok.text
    assert c.get("/demo/L9/5").status_code == 404
    assert "for model &#39;gpt2&#39;" in c.get("/gpt2/L1/5").text  # escaped like any user input


def test_vendored_libraries_are_served(site):
    c, _ = site
    r = c.get("/static/vendor/plotly.min.js")
    assert r.status_code == 200 and len(r.content) > 1_000_000
    assert c.get("/static/vendor/jquery.js").status_code == 404
    assert c.get("/static/app.css").status_code == 200


def test_steering_page_and_permalink(site):
    c, _ = site
    form = c.get("/demo/steer", params={"layer": 1, "feature": 7})
    assert form.status_code == 200 and 'name="feature" type="number" min="0" value="7"' in form.text
    data = {"text": "The quick brown fox", "max_new_tokens": 5, "temperature": 0, "seed": 0,
            "layer": ["1", ""], "feature": ["7", ""], "mode": ["clamp", "add"], "value": ["40", ""],
            "heads": ["0, 2", ""], "positions": ["", ""]}
    data["csrf_token"] = csrf_token(c)
    r = c.post("/demo/steer", data=data, follow_redirects=False)
    assert r.status_code == 303, r.text
    page = c.get(r.headers["location"])
    assert page.status_code == 200 and "Default" in page.text and "Steered" in page.text
    assert 'value="0, 2"' in page.text  # the form is refilled from the saved request
    bad = c.post("/demo/steer", data={**data, "heads": ["zero", ""]})
    assert bad.status_code == 422 and "heads must be whole numbers" in bad.text
    bad = c.post("/demo/steer", data={**data, "feature": ["100000", ""]})
    assert bad.status_code == 404 and "features are 0 to 127" in bad.text
    assert c.get("/s/nope").status_code == 404


def test_search_pages(site):
    c, key = site
    c.post("/api/v1/saes/L0/features/9/explanations", json={"text": "quick brown things"},
           headers={"X-API-Key": key})
    page = c.get("/search", params={"q": "brown"})
    assert "/demo/L0/9" in page.text
    page = c.get("/search", params={"text": "The quick brown fox"})
    assert page.status_code == 200 and "Features firing on the text" in page.text
    assert re.search(r"/demo/L[01]/\d+", page.text)


def test_head_page(site, tiny_model_dir):
    c, _ = site
    page = c.get("/demo/heads/1/2")
    assert page.status_code == 200 and "induction score" in page.text and "previous-token score" in page.text
    # the numbers are app/engine/head_scores.py's, the function `saex eval` reports (tests/engine/test_head_scores.py)
    scores = head_scores(load_model(str(tiny_model_dir)))
    shown = dict(re.findall(r"<span>(induction|previous-token) score</span>([-\d.]+)", page.text))
    assert shown == {"induction": f"{scores.induction[1, 2].item():.3f}",
                     "previous-token": f"{scores.previous_token[1, 2].item():.3f}"}
    assert re.search(r'href="/demo/L1/\d+"', page.text)
    assert c.get("/demo/heads/1/9").status_code == 404


def test_security_headers(site):
    c, _ = site
    for path in ("/", "/api/v1/info", "/demo/L1/5"):
        h = c.get(path).headers
        csp = h["Content-Security-Policy"]
        assert "script-src 'self';" in csp and "unsafe-eval" not in csp
        assert h["X-Content-Type-Options"] == "nosniff" and h["X-Frame-Options"] == "DENY"


def test_edit_and_delete_explanations_from_the_page(site):
    c, key = TestClient(site[0].app), site[1]
    token = sign_in(c, key)
    page = c.post("/demo/L1/6/explanations", data={"text": "first try", "csrf_token": token})
    ex_id = int(re.search(r"/demo/L1/6/explanations/(\d+)", page.text).group(1))
    url = f"/demo/L1/6/explanations/{ex_id}"
    assert c.post(url, data={"action": "edit", "text": "better"}).status_code == 403  # no CSRF token
    assert c.post(url, data={"action": "edit", "text": "better", "csrf_token": "forged"}).status_code == 403
    stranger = TestClient(site[0].app)
    assert stranger.post(url, data={"action": "delete", "csrf_token": csrf_token(stranger)}).status_code == 401
    assert c.post(url, data={"action": "edit", "text": " ", "csrf_token": token}).status_code == 422
    edited = c.post(url, data={"action": "edit", "text": "fires after 'def'", "csrf_token": token})
    assert edited.status_code == 200 and "fires after &#39;def&#39;" in edited.text and "first try" not in edited.text
    gone = c.post(url, data={"action": "delete", "csrf_token": token})
    assert gone.status_code == 200 and "No explanation yet" in gone.text
    assert c.post(url, data={"action": "delete", "csrf_token": token}).status_code == 404


def test_pages_say_clearly_when_the_worker_is_down(tmp_path):
    url = f"sqlite:///{tmp_path / 'down.db'}"
    upgrade(url)
    with TestClient(create_web_app(Settings(database_url=url, worker_urls=["http://127.0.0.1:9"]))) as c:
        page = c.get("/", params={"text": "The quick brown fox"})
        assert page.status_code == 503 and "inference worker is unavailable" in page.text
        assert page.text.lstrip().startswith("<!doctype html>")  # a whole page with the message, not a broken one
        steer = c.post("/demo/steer", data={"csrf_token": csrf_token(c), "text": "fox",
                                            "max_new_tokens": 2, "layer": ["1"], "feature": ["2"],
                                            "mode": ["add"], "value": ["1"], "heads": [""], "positions": [""]})
        assert steer.status_code == 503 and "inference worker is unavailable" in steer.text


def test_graph_page_figure_root_table_json_and_clear_errors(site):
    c, _ = site
    q = {"text": "The quick brown fox", "layer": 1, "feature": 5, "pos": 3}
    explorer = c.get("/", params=q)
    assert "/demo/graph?text=The+quick+brown+fox&amp;layer=1&amp;feature=5&amp;pos=3" in explorer.text  # Trace this
    page = c.get("/demo/graph", params=q)
    assert page.status_code == 200 and page.text.lstrip().startswith("<!doctype html>")
    figure = re.search(r'<div class="plot graph"><script type="application/json">(.*?)</script>', page.text, re.S)
    assert '"name": "root feature"' in figure.group(1) and '"name": "links"' in figure.group(1)
    graph = c.post("/api/v1/graph", json={"text": q["text"], "layer": 1, "feature": 5, "position": 3}).json()
    rows = re.findall(r"<tr><td><code>([^<]+)</code>", page.text)
    assert sorted(rows) == sorted(e["source"] for e in graph["links"] if e["target"] == graph["root"])
    for n in graph["nodes"]:  # each feature node links to its feature page
        if n["kind"] == "feature":
            assert f'href="/demo/L{n["layer"]}/{n["feature"]}"' in page.text
    download = c.get("/demo/graph", params={**q, "format": "json"})
    assert download.json() == graph and "attachment" in download.headers["content-disposition"]
    for bad, status, words in [({"feature": "five"}, 422, "feature must be a whole number"),
                               ({"pos": 99}, 404, "outside the prompt"), ({"depth": 9}, 422, "depth:"),
                               ({"feature": 10**6}, 404, "features are 0 to"),
                               ({"layer": 7}, 404, "no SAE on layer 7")]:
        r = c.get("/demo/graph", params={**q, **bad})
        assert r.status_code == status and "Could not build this graph" in r.text and words in r.text, r.text[-600:]
    assert c.get("/demo/graph", params={**q, "feature": "x", "format": "json"}).status_code == 422
    assert c.get("/demo/graph").status_code == 200  # the empty form

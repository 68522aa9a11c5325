"""The feature page after issue 18: each example's activation and per-head DFA beside it, repeated windows shown once,
context chosen in the URL, "test on your text" opening the explorer at the strongest token, copy-link, JSON/CSV
export, an embed view framed only by SAEX_FRAME_ANCESTORS, HTML error pages for bad paths, Plotly only where
charts are; lists of features from the web (make, add from a feature page and by id, note, share, export)."""

from __future__ import annotations

import csv
import io
import re

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from app.config import Settings
from app.web.pages.feature_pages import example_spans, head_row, shown_once
from tests.web.forms import csrf_token, sign_in
from tests.web.test_indexes import make_site


@pytest.fixture(scope="module")
def site(tiny_model_dir, sae_dirs, tmp_path_factory):
    app, _, key, url = make_site(tiny_model_dir, sae_dirs, tmp_path_factory.mktemp("feature18"),
                                 frame_ancestors="'self' https://wiki.example.org")
    with TestClient(app) as c:
        feature = max(range(128), key=lambda f: _stored(c, f))  # the feature with the most examples
        yield c, key, url, feature


def _stored(c: TestClient, feature: int) -> int:
    r = c.get(f"/api/v1/saes/L1/features/{feature}")
    return len(r.json()["top_examples"]) + len(r.json()["interval_examples"]) if r.status_code == 200 else -1


def _ex(position: int, m: int = 2, n: int = 5, value: float = 1.0, interval: int | None = None) -> dict:
    ex = {"corpus_position": position, "max_position": m, "tokens": ["t"] * n, "activations": [0.0] * n,
          "dfa": [0.0] * n, "dfa_heads": [0.5, -0.25]}
    ex["activations"][m] = value
    if interval is not None:
        ex["interval"] = interval
    return ex


def test_repeated_windows_are_shown_once():
    top = [_ex(100), _ex(102), _ex(110), _ex(-1), _ex(-1)]  # 102 lies in 100's window (98..102); -1: unknown
    intervals = [_ex(110, interval=3), _ex(97, interval=2), _ex(200, interval=1)]  # 110 is a top one; 97 is not
    kept_top, kept_intervals, hidden = shown_once(top, intervals)
    assert [e["corpus_position"] for e in kept_top] == [100, 110, -1, -1]
    assert [e["corpus_position"] for e in kept_intervals] == [97, 200] and hidden == 2


def test_context_and_head_rows():
    ex = _ex(50, m=3, n=8)
    assert len(example_spans(ex, 1.0)) == 8
    spans = example_spans(ex, 1.0, before=1, after=2)
    assert len(spans) == 4 and [s[3] for s in spans] == [False, True, False, False]
    assert len(example_spans(ex, 1.0, before=0, after=0)) == 1
    assert head_row([0.5, -0.25, 0.0]) == [("H0", 0.5, 1.0, True), ("H1", -0.25, 0.5, False), ("H2", 0.0, 0.0, True)]


def test_examples_show_value_heads_and_no_repeats(site):
    c, _, _, feature = site
    body = c.get(f"/api/v1/saes/L1/features/{feature}").json()
    stored = body["top_examples"] + body["interval_examples"]
    page = c.get(f"/demo/L1/{feature}").text
    rows = re.findall(r'<div class="ex"><span class="act"[^>]*>([-\d.]+)</span>', page)
    top, intervals, hidden = shown_once(body["top_examples"], body["interval_examples"])
    assert len(rows) == len(top) + len(intervals) and hidden == len(stored) - len(rows)
    best = body["top_examples"][0]
    assert rows[0] == f"{best['activations'][best['max_position']]:.2f}"
    assert page.count('class="dfah"') == len(rows)
    first = body["top_examples"][0]["dfa_heads"]
    assert f'aria-label="DFA by head: H0 {first[0]:.2f}, H1 {first[1]:.2f}' in page
    if hidden:
        assert f"{hidden} example" in page and "show every stored example" in page
    every = c.get(f"/demo/L1/{feature}", params={"every": 1}).text
    assert len(re.findall(r'<div class="ex">', every)) == len(stored)
    assert "trace" in page  # the graph link of each example stays


def test_context_in_the_url(site):
    c, _, _, feature = site
    page = c.get(f"/demo/L1/{feature}", params={"before": 1, "after": 0}).text
    rows = re.findall(r'<span class="toks">(.*?)</span> ', page)
    assert rows and all(1 <= r.count("<span") <= 2 for r in rows)
    assert "keep " in page and " tokens before and " in page
    assert c.get(f"/demo/L1/{feature}", params={"before": 999}).status_code == 422
    bad = c.get(f"/demo/L1/{feature}", params={"before": "x"})
    assert bad.status_code == 422 and "<html" in bad.text and "before" in bad.text


def test_test_on_your_text_opens_the_explorer_at_the_maximum(site):
    c, _, _, feature = site
    text = "The quick brown fox jumps over the lazy dog. def add(a, b): return a + b"
    r = c.get(f"/demo/L1/{feature}/test", params={"text": text}, follow_redirects=False)
    assert r.status_code == 303
    trace = c.post("/api/v1/feature-trace", json={"text": text, "sae_id": "L1", "feature": feature}).json()
    acts = trace["activations"]
    target = r.headers["location"]
    assert target.startswith("/?") and f"feature={feature}" in target and "layer=1" in target
    if max(acts) > 0:
        assert f"pos={acts.index(max(acts))}" in target
    else:
        assert "pos=" not in target
    assert c.get(f"/demo/L1/{feature}/test", params={"text": " "}).status_code == 422
    page = c.get(f"/demo/L1/{feature}").text
    assert re.search(rf'<form action="/demo/L1/{feature}/test" method="get">', page) and "<textarea" in page


def test_copy_link_and_exports(site):
    c, _, _, feature = site
    page = c.get(f"/demo/L1/{feature}").text
    assert f'data-copy="/demo/L1/{feature}"' in page and f'data-copy-embed="/demo/L1/{feature}?embed=1"' in page
    api = c.get(f"/api/v1/saes/L1/features/{feature}").json()
    js = c.get(f"/demo/L1/{feature}", params={"format": "json"})
    assert js.json() == api and "attachment" in js.headers["content-disposition"]
    table = c.get(f"/demo/L1/{feature}", params={"format": "csv"})
    assert table.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(table.text)))
    assert len(rows) == len(api["top_examples"]) + len(api["interval_examples"])
    ex = api["top_examples"][0]
    assert rows[0]["kind"] == "top" and rows[0]["token"] == ex["tokens"][ex["max_position"]]
    assert abs(float(rows[0]["activation"]) - ex["activations"][ex["max_position"]]) < 1e-9
    assert rows[-1]["kind"] == "interval" and rows[-1]["interval"] != ""
    assert c.get(f"/demo/L1/{feature}", params={"format": "xml"}).status_code == 422


def test_embed_view_and_who_may_frame_it(site):
    c, _, _, feature = site
    r = c.get(f"/demo/L1/{feature}", params={"embed": 1})
    assert r.status_code == 200 and 'class="embed"' in r.text and '<header class="bar">' not in r.text
    assert '<base target="_blank">' in r.text and "Open in SAE Explorer" in r.text and '<form' not in r.text
    csp = r.headers["content-security-policy"]
    assert "frame-ancestors 'self' https://wiki.example.org" in csp and "form-action 'none'" in csp
    page = c.get(f"/demo/L1/{feature}")  # the full page is never framed
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    assert page.headers["x-frame-options"] == "DENY"


def test_frame_ancestors_default_and_refused_values(monkeypatch):
    from app.web.pages.feature_pages import embed_headers

    assert Settings().frame_ancestors == ""
    assert embed_headers("")["Content-Security-Policy"].endswith("frame-ancestors 'none'")
    for bad in ("https://a.org; script-src *", "https://a.org\r\nX: y", "a,b"):
        with pytest.raises(ValidationError):
            Settings(frame_ancestors=bad)


def test_bad_paths_are_html_error_pages(site):
    c, _, _, _ = site
    for path in ("/demo/L1/-1", "/demo/L1/abc", "/demo/L1/99999999999", "/demo/L1/100000"):
        r = c.get(path)
        assert r.status_code == 404 and r.headers["content-type"].startswith("text/html"), path
        assert 'class="panel error"' in r.text and "<html" in r.text
    assert "no page at /demo/L1/abc" in c.get("/demo/L1/abc").text
    api = c.get("/api/v1/saes/L1/features/abc")  # the API keeps its JSON
    assert api.status_code == 422 and "detail" in api.json()


def test_plotly_only_where_charts_are(site):
    c, _, _, feature = site
    for path in ("/sign-in", "/lists", f"/demo/L1/{feature}", "/demo"):
        assert "plotly.min.js" not in c.get(path).text, path  # app.js loads it when a page holds a .plot
    assert 'class="plot"' in c.get(f"/demo/L1/{feature}").text
    assert "/static/vendor/plotly.min.js" in c.get("/static/app.js").text


def test_lists_from_the_web(site):
    c, key, url, feature = site
    anon = TestClient(c.app)
    assert "sign in" in anon.get("/lists").text.lower()
    assert anon.post("/lists", data={"title": "x", "csrf_token": csrf_token(anon)}).status_code == 401
    box = anon.get(f"/demo/L1/{feature}/lists", headers={"HX-Request": "true"}).text
    assert "Sign in</a> to keep this feature" in box

    me = TestClient(c.app)
    token = sign_in(me, key)
    assert me.post("/lists", data={"title": " ", "csrf_token": token}).status_code == 422
    r = me.post("/lists", data={"title": "Code features", "description": "why <b>", "csrf_token": token},
                follow_redirects=False)
    assert r.status_code == 303
    link = r.headers["location"]
    list_id = link.rsplit("/", 1)[1]
    # from a feature page's box (HTMX): the box again, saying where it went
    added = me.post(f"/demo/L1/{feature}/lists", data={"list": list_id, "note": "strong", "csrf_token": token},
                    headers={"HX-Request": "true"})
    assert added.status_code == 200 and f'href="/lists/{list_id}"' in added.text and "✓" in added.text
    # by id, on the list's page; an unknown feature is refused
    assert me.post(f"{link}/features", data={"model": "demo", "sae": "L1", "feature": 3, "csrf_token": token},
                   follow_redirects=False).status_code == 303
    assert me.post(f"{link}/features", data={"model": "demo", "sae": "L1", "feature": 4096,
                                             "csrf_token": token}).status_code == 404
    # made together with its first feature, from the box
    boxed = me.post("/lists", data={"title": "Second", "model": "demo", "sae": "L1", "feature": 9,
                                    "csrf_token": token}, headers={"HX-Request": "true"})
    assert boxed.status_code == 200 and "Added to" in boxed.text
    page = me.get(link).text
    assert "Code features" in page and "why &lt;b&gt;" in page and "fires on code comments" in page
    assert page.index(f"L1/{feature}<") < page.index("L1/3<") and 'value="strong"' in page
    entry = re.search(r'action="/lists/[^/]+/features/(\d+)"', page).group(1)
    assert me.post(f"{link}/features/{entry}", data={"action": "note", "note": "the strongest",
                                                     "csrf_token": token}, follow_redirects=False).status_code == 303
    assert 'value="the strongest"' in me.get(link).text
    assert "Code features" in me.get("/lists").text and "Second" in me.get("/lists").text

    # shared: anyone reads it, nobody else changes it
    shared = anon.get(link)
    assert shared.status_code == 200 and "the strongest" in shared.text and "Rename" not in shared.text
    exported = anon.get(link, params={"format": "json"}).json()
    assert exported["title"] == "Code features" and [f["feature"] for f in exported["features"]] == [feature, 3]
    assert exported["features"][0]["url"] == f"/demo/L1/{feature}" and exported["features"][1]["explanation"]
    rows = list(csv.DictReader(io.StringIO(anon.get(link, params={"format": "csv"}).text)))
    assert [r["feature"] for r in rows] == [str(feature), "3"] and rows[0]["note"] == "the strongest"

    from app.store import keys
    from app.store.db import make_engine, make_sessionmaker, transaction

    db = make_engine(url)
    with transaction(make_sessionmaker(db)) as s:
        bob_key, _ = keys.create_key(s, name="bob")
    db.dispose()
    bob = TestClient(c.app)
    bob_token = sign_in(bob, bob_key)
    refused = bob.post(f"{link}/features/{entry}", data={"action": "remove", "csrf_token": bob_token})
    assert refused.status_code == 403 and "alice" in refused.text
    # removing, renaming and deleting by the maker
    assert me.post(f"{link}/features/{entry}", data={"action": "remove", "csrf_token": token},
                   follow_redirects=False).status_code == 303
    assert len(anon.get(link, params={"format": "json"}).json()["features"]) == 1
    me.post(link, data={"action": "rename", "title": "Renamed", "csrf_token": token})
    assert "Renamed" in anon.get(link).text
    assert me.post(link, data={"action": "delete", "csrf_token": token}, follow_redirects=False).status_code == 303
    gone = anon.get(link)
    assert gone.status_code == 404 and "<html" in gone.text
    assert anon.get("/lists/bad%20id!").status_code == 404

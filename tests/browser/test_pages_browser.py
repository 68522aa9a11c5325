"""Issue 18's pages in a real browser (Playwright driving Debian's /usr/bin/chromium) against a real server on the
demo model: Plotly loaded only where charts are, drawn in dark mode without white grids; a phone-wide header that
fits; a focus ring apart from the selected example's outline; no favicon 404; copy-link; "test on your text"
opening the explorer at the strongest token; the index pages' sorting and token search; lists made from a feature
page and read by anyone; the embed view framed by an allowed site and the full page framed by none; HTML error pages;
offline API docs."""

from __future__ import annotations

import re
import threading

import pytest

from app.config import DEMO_DIR
from tests.browser.conftest import demo_server, free_port

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not (DEMO_DIR / "model" / "model.safetensors").exists(), reason="demo model not trained"),
]


@pytest.fixture(scope="module")
def embedder(tmp_path_factory):
    """Another site (another origin, on loopback like a lab wiki on the same network): a static server whose
    /notes.html frames pages that the test writes there."""
    import functools
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    folder = tmp_path_factory.mktemp("wiki")
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(folder))
    httpd = ThreadingHTTPServer(("127.0.0.1", free_port()), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", folder
    httpd.shutdown()


@pytest.fixture(scope="module")
def server(tmp_path_factory, embedder):
    """The demo (dashboards built into SQLite), letting the embedder frame embeds; yields (base URL, an API key)."""
    from app.store import keys
    from app.store.db import make_engine, make_sessionmaker, transaction

    with demo_server(tmp_path_factory.mktemp("pages18"), frame_ancestors=embedder[0]) as (url, settings):
        db = make_engine(settings.resolved_database_url)
        with transaction(make_sessionmaker(db)) as s:
            key, _ = keys.create_key(s, name="researcher")
        db.dispose()
        yield url, key


def _feature(base: str) -> str:
    return base + "/demo/L1/5"


def test_plotly_only_on_chart_pages_and_no_console_errors(server, browser):
    base, _ = server
    page = browser.new_page()
    scripts, errors, missing = [], [], []
    page.on("request", lambda r: scripts.append(r.url) if "plotly" in r.url else None)
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("response", lambda r: missing.append(r.url) if r.status == 404 else None)
    page.goto(base + "/sign-in")
    page.wait_for_load_state("networkidle")
    assert scripts == [] and page.evaluate("typeof window.Plotly") == "undefined"
    page.goto(_feature(base))
    page.wait_for_selector(".plot .main-svg")
    assert len(scripts) == 1 and page.locator(".plot .main-svg").count() >= 3
    page.goto(base + "/demo/L1/6")
    page.wait_for_selector(".plot .main-svg")
    assert errors == [] and missing == [], (errors, missing)  # no favicon 404 either
    assert page.locator("link[rel=icon]").get_attribute("href") == "/static/favicon.svg"
    page.close()


def test_dark_charts_have_no_white_grids(server, browser, tmp_path):
    base, _ = server
    ctx = browser.new_context(color_scheme="dark", viewport={"width": 1280, "height": 900})
    page = ctx.new_page()
    page.goto(_feature(base))
    page.wait_for_selector(".plot .main-svg")
    strokes = page.evaluate("""() => [...document.querySelectorAll('.plot .gridlayer path, .plot .zerolinelayer path')]
        .map(p => getComputedStyle(p).stroke)""")
    assert strokes, "the charts have grid lines"
    for stroke in strokes:
        r, g, b = (int(v) for v in re.findall(r"\d+", stroke)[:3])
        assert r + g + b < 3 * 140, stroke  # dark greys, never white
    fonts = page.evaluate("[...document.querySelectorAll('.plot .xtick text')].map(t => getComputedStyle(t).fill)")
    assert fonts and all(sum(int(v) for v in re.findall(r"\d+", f)[:3]) > 3 * 180 for f in fonts)  # light labels
    page.screenshot(path=str(tmp_path / "feature-dark.png"))
    ctx.close()


@pytest.mark.parametrize("path", ["/demo/L1/5", "/demo/L1", "/demo", "/lists", "/", "/sign-in", "/docs"])
def test_a_phone_wide_page_does_not_overflow(server, browser, path):
    base, _ = server
    ctx = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True)
    page = ctx.new_page()
    page.goto(base + path)
    page.wait_for_load_state("networkidle")
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    header = page.locator("header.bar").bounding_box()
    assert header["width"] <= 390 and header["height"] < 110
    for link in ("Explorer", "Search", "Lists"):
        assert page.locator("header nav a", has_text=link).is_visible()
    ctx.close()


def test_focus_ring_differs_from_the_selected_outline(server, browser):
    base, _ = server
    page = browser.new_page()
    page.goto(_feature(base))
    page.wait_for_selector(".examples .ex .max")
    selected = page.evaluate("getComputedStyle(document.querySelector('.examples .ex .max')).outlineColor")
    page.keyboard.press("Tab")  # the skip link
    page.keyboard.press("Tab")  # the brand
    focused = page.evaluate("""() => { const e = document.activeElement; const s = getComputedStyle(e);
        return [e.tagName, s.outlineStyle, s.outlineColor]; }""")
    assert focused[0] == "A" and focused[1] == "solid" and focused[2] != selected, (focused, selected)
    page.close()


def test_copy_link(server, browser):
    base, _ = server
    ctx = browser.new_context(permissions=["clipboard-read", "clipboard-write"])
    page = ctx.new_page()
    page.goto(_feature(base))
    page.click("button[data-copy]")
    page.wait_for_selector(".copied:has-text('Link copied')")
    assert page.evaluate("navigator.clipboard.readText()") == _feature(base)
    page.click("button[data-copy-embed]")
    page.wait_for_selector(".copied:has-text('Embed code copied')")
    assert f'<iframe src="{_feature(base)}?embed=1"' in page.evaluate("navigator.clipboard.readText()")
    ctx.close()


def test_test_on_your_text_opens_the_explorer_at_the_maximum(server, browser):
    base, _ = server
    page = browser.new_page()
    text = "Mr and Mrs Dursley, of number four, Privet Drive, were proud to say. Mr and Mrs Dursley"
    analysis = page.request.post(base + "/api/v1/analyze", data={"text": text, "layers": [1], "top_k": 1}).json()
    fired = [row[0] for row in analysis["layers"][0]["top_features"] if row]
    feature = max(fired, key=lambda f: f["activation"])["feature"]  # fires somewhere on the text
    page.goto(f"{base}/demo/L1/{feature}")
    page.fill("#try-text", text)
    page.click(".try button[type=submit]")
    page.wait_for_url(re.compile(rf".*/\?.*feature={feature}.*"))
    assert "layer=1" in page.url and "text=" in page.url
    trace = page.request.post(base + "/api/v1/feature-trace",
                              data={"text": text, "sae_id": "L1", "feature": feature}).json()
    acts = trace["activations"]
    assert max(acts) > 0 and f"pos={acts.index(max(acts))}" in page.url
    page.close()


def test_sae_index_sorts_and_searches_by_token(server, browser):
    base, _ = server
    page = browser.new_page()
    page.goto(base + "/demo/L1")
    page.click("th a:has-text('density')")
    page.wait_for_url(re.compile(r".*sort=density.*desc=1"))
    cells = page.locator("table.sortable tbody tr td:nth-child(2)").all_inner_texts()
    densities = [float(t.rstrip("%")) for t in cells]
    assert len(densities) == 50 and densities == sorted(densities, reverse=True)
    examples = page.request.get(base + "/api/v1/saes/L1/features/5").json()["top_examples"]
    word = next(w for w in (e["tokens"][e["max_position"]].strip() for e in examples) if w.isalnum())
    page.fill("input[name=token]", word)
    page.click("form.filters button[type=submit]")
    page.wait_for_url(re.compile(r".*token=.*"))
    page.wait_for_selector("th:has-text('top examples on it')")
    hits = [int(t) for t in page.locator("table.sortable tbody tr td:nth-child(4)").all_inner_texts()]
    assert hits and hits == sorted(hits, reverse=True) and hits[0] >= 1
    page.go_back()  # the URL is the state: back is the density table
    page.wait_for_url(re.compile(r".*sort=density.*"))
    page.close()


def test_a_list_made_from_a_feature_page_is_read_by_anyone(server, browser):
    base, key = server
    ctx = browser.new_context()
    page = ctx.new_page()
    page.goto(base + "/sign-in")
    page.fill("input[name=api_key]", key)
    page.click("form button[type=submit]")
    page.goto(_feature(base))
    page.wait_for_selector("#list-box input[name=title]")
    page.fill("#list-box input[name=title]", "Compile features")
    page.click("#list-box button:has-text('Make it with this feature')")
    page.wait_for_selector("#list-box :text('Added to')")
    link = page.locator("#list-box a:has-text('the list')").get_attribute("href")
    page.goto(_feature(base).replace("/5", "/6"))
    page.wait_for_selector("#list-box select[name=list]")
    page.fill("#list-box input[name=note]", "the next one")
    page.click("#list-box button:has-text('Add')")
    page.wait_for_selector("#list-box :text('Added to')")
    ctx.close()
    anon = browser.new_context()
    page = anon.new_page()
    page.goto(base + link)
    assert page.locator("h1").inner_text().startswith("Compile features")
    rows = page.locator("table.list-table tbody tr")
    assert rows.count() == 2 and "the next one" in rows.nth(1).inner_text()
    assert page.locator("button:has-text('Remove')").count() == 0  # not its maker: nothing to change
    anon.close()


def test_embed_view_in_a_frame_of_an_allowed_site_only(server, browser, embedder):
    base, _ = server
    site, folder = embedder
    (folder / "notes.html").write_text(
        f'<h1>Lab wiki</h1><iframe id="ok" src="{_feature(base)}?embed=1" width="800" height="600"></iframe>'
        f'<iframe id="no" src="{_feature(base)}" width="800" height="300"></iframe>')
    ctx = browser.new_context()
    page = ctx.new_page()
    refused = []
    page.on("console", lambda m: refused.append(m.text) if "frame" in m.text.lower() else None)
    page.goto(site + "/notes.html")
    embedded = page.frame_locator("#ok")
    embedded.locator(".plot .main-svg").first.wait_for()
    assert embedded.locator("h1").inner_text().startswith("Feature 5")
    assert embedded.locator("header.bar").count() == 0 and embedded.locator(".examples .ex").count() >= 5
    page.wait_for_timeout(500)
    full = page.frame_locator("#no").locator("body").inner_text()
    assert "Feature 5" not in full and refused, (full[:200], refused)  # the full page refuses to be framed
    ctx.close()


def test_bad_paths_are_pages_and_docs_need_nothing_else(server, browser):
    base, _ = server
    page = browser.new_page()
    for path in ("/demo/L1/-1", "/demo/L1/abc", "/demo/L9", "/nosuch"):
        response = page.goto(base + path)
        assert response.status == 404 and page.locator("h1").inner_text() == "Not found", path
        assert page.locator("header.bar").is_visible()
    outside = []
    page.on("request", lambda r: outside.append(r.url) if not r.url.startswith(base) else None)
    page.goto(base + "/docs")
    page.wait_for_load_state("networkidle")
    assert outside == [] and page.locator("summary:has-text('/api/v1/analyze')").count() >= 1
    page.locator("summary:has-text('/api/v1/analyze')").first.click()
    assert page.locator("details[open] :text('AnalyzeRequest')").count() >= 1
    page.close()

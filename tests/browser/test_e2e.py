"""End to end in a real browser (Playwright driving Debian's /usr/bin/chromium) against a real server on loopback,
on the demo model with dashboards built: type a prompt, see its tokens, click a token and a feature, see the DFA,
follow to the feature page with its histogram and examples, open its permalink in a fresh browser context, steer,
and check that a prompt full of markup renders as text and runs nothing."""

from __future__ import annotations

import re

import pytest

from app.config import DEMO_DIR

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not (DEMO_DIR / "model" / "model.safetensors").exists(), reason="demo model not trained"),
]
XSS = '<img src=x onerror="window.__pwned=1"> <script>window.__pwned=2</script>'


def test_explore_click_feature_page_permalink(server, browser, tmp_path):
    ctx = browser.new_context()
    page = ctx.new_page()
    page.goto(server + "/")
    page.fill("#text", "Mr and Mrs Dursley, of number four, Privet Drive. Mr and Mrs Dursley")
    page.click("button[type=submit]")
    page.wait_for_selector(".tokens .tok")
    assert page.locator(".tokens .tok").count() > 10
    assert "text=" in page.url  # the state is in the URL
    page.locator(".tokens .tok").nth(-1).click()  # the last token: the repeated ' Dursley'
    page.wait_for_selector("table.features a")
    # every feature comes explained (a first run writes baseline explanations): the text sits beside its id
    assert page.locator("table.features tbody tr").first.locator("td").nth(1).inner_text().startswith("fires on")
    page.locator("table.features tbody tr.pick").first.locator("td").nth(2).click()  # its strongest feature's row
    page.wait_for_selector("text=DFA of feature")
    page.wait_for_selector(".plot .main-svg")  # Plotly drew the DFA heatmap
    page.screenshot(path=str(tmp_path / "explorer.png"), full_page=True)
    page.locator("table.features tr.on a.fid").click()  # its id opens its page
    page.wait_for_selector("h1:has-text('Feature')")
    title = page.locator("h1").inner_text()
    page.wait_for_selector(".plot .main-svg")  # histogram and other charts
    assert page.locator(".examples .ex").count() > 0
    assert page.locator("#explanations li").first.inner_text().startswith("fires on")  # and on its page
    permalink = page.url
    assert re.search(r"/demo/L\d+/\d+$", permalink)
    fresh = browser.new_context().new_page()
    fresh.goto(permalink)
    assert fresh.locator("h1").inner_text() == title
    fresh.context.close()
    ctx.close()


def test_steer_shows_two_continuations(server, browser):
    page = browser.new_context().new_page()
    page.goto(server + "/demo/steer?layer=1&feature=3")
    page.fill("#text", "def main():\n    ")
    page.fill("input[name=value] >> nth=0", "30")
    page.click("button[type=submit]")
    page.wait_for_selector("h2:has-text('Steered')")
    assert "/s/" in page.url
    assert page.locator(".side-by-side .panel").count() == 2
    page.context.close()


def test_markup_in_prompts_is_text(server, browser):
    page = browser.new_context().new_page()
    dialogs = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    page.goto(server + "/")
    page.fill("#text", XSS)
    page.click("button[type=submit]")
    page.wait_for_selector(".tokens .tok")
    assert page.evaluate("window.__pwned") is None
    assert page.locator(".tokens img, .tokens script").count() == 0
    shown = "".join(page.locator(".tokens .tok").all_inner_texts())
    assert shown == "<|endoftext|>" + XSS  # every character of the prompt, as text
    assert dialogs == []
    page.context.close()


def test_keyboard_only(server, browser):
    """Tab to the prompt, type, Tab to Analyse, Enter; Tab on to a token and open it with Enter."""
    page = browser.new_context().new_page()
    page.goto(server + "/")
    for _ in range(10):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.id") == "text":
            break
    assert page.evaluate("document.activeElement.id") == "text"
    page.keyboard.type("Mr and Mrs Dursley. Mr and Mrs Dursley")
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.textContent.trim()") == "Analyse"
    page.keyboard.press("Enter")
    page.wait_for_selector(".tokens .tok")
    for _ in range(40):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.classList.contains('tok')"):
            break
    assert page.evaluate("document.activeElement.classList.contains('tok')")
    page.keyboard.press("Enter")
    page.wait_for_selector("table.features, p.note:has-text('No feature')")
    assert "pos=" in page.url
    page.context.close()


def test_trace_a_feature_from_the_explorer_to_its_graph(server, browser):
    """The DFA view's "Trace this feature" opens the graph page, whose Plotly figure draws; its URL is the state."""
    page = browser.new_context().new_page()
    page.goto(server + "/?" + "text=Mr+and+Mrs+Dursley.+Mr+and+Mrs+Dursley&layer=1&pos=12")
    page.wait_for_selector("table.features td a")
    page.locator("table.features tbody tr.pick").first.locator("td").nth(2).click()  # pick the row's feature
    page.wait_for_selector("a.trace")
    page.click("a.trace")
    page.wait_for_selector(".plot.graph.js-plotly-plot .main-svg")
    assert re.search(r"/demo/graph\?text=.*&layer=1&feature=\d+&pos=12$", page.url)
    assert page.locator("table.root-links tbody tr").count() > 0
    assert page.locator(".plot.graph .scatterlayer .trace").count() > 3  # links and node groups
    page.context.close()

"""The graph page in a browser: a leaf opened in place from the node list and from a click on the figure, and a
feature page example's "trace" link opening the graph of that token (the embedded default, as test_e2e)."""

from __future__ import annotations

import json
import re
import urllib.request
from urllib.parse import parse_qs, urlsplit

from tests.browser.test_e2e import pytestmark  # noqa: F401

PROMPT = "text=def+add%28a%2C+b%29%3A%0A++++return+a+%2B+b%0Adef+add%28a%2C+b%29%3A%0A++++return+a+%2B+b"


def feature_rows(page) -> int:
    return page.locator("ul.graph-nodes li").count()


def test_open_a_leaf_in_place_from_the_list_and_the_figure(server, browser):
    page = browser.new_context().new_page()
    page.goto(f"{server}/demo/graph?{PROMPT}&layer=1&pos=23&depth=1&feature="
              + analyzed_feature(server))
    page.wait_for_selector(".plot.graph.js-plotly-plot .main-svg")
    before = feature_rows(page)
    assert page.locator("a.collapse").count() == 0 and page.locator("a.expand").count() == before - 1
    page.locator("a.expand").first.click()
    page.wait_for_selector(".plot.graph.js-plotly-plot .main-svg")
    opened = parse_qs(urlsplit(page.url).query)["expand"][0]
    assert re.fullmatch(r"f:0:\d+:\d+", opened) and page.locator("a.collapse").count() == 1
    assert page.locator(".plot.graph .scatterlayer .trace").count() > 3
    # a click on a leaf in the figure opens it too: the page's script follows the point's customdata
    leaf = page.locator("a.expand").first.get_attribute("href")
    page.evaluate("url => document.querySelector('.plot.graph').emit('plotly_click', {points: [{customdata: url}]})",
                  leaf)
    page.wait_for_url(re.compile(r".*expand=f%3A0%3A\d+%3A\d+%2Cf%3A0.*"))
    page.wait_for_selector(".plot.graph.js-plotly-plot .main-svg")
    assert page.locator("a.collapse").count() == 2
    page.context.close()


def analyzed_feature(base: str) -> str:
    """The strongest L1 feature at position 23 of PROMPT, from the API."""
    text = parse_qs(PROMPT)["text"][0]
    req = urllib.request.Request(base + "/api/v1/analyze", data=json.dumps({"text": text, "top_k": 1}).encode(),
                                 headers={"content-type": "application/json"})
    body = json.load(urllib.request.urlopen(req))
    return str(body["layers"][1]["top_features"][23][0]["feature"])


def test_trace_a_feature_page_example(server, browser):
    feature = next(f for f in range(64)
                   if 'class="trace"' in urllib.request.urlopen(f"{server}/demo/L1/{f}").read().decode())
    page = browser.new_context().new_page()
    page.goto(f"{server}/demo/L1/{feature}")
    page.locator(".examples a.trace").first.click()
    page.wait_for_selector(".plot.graph.js-plotly-plot .main-svg")
    q = parse_qs(urlsplit(page.url).query)
    assert q["pos"] == ["last"] and q["feature"] == [str(feature)] and q["layer"] == ["1"]
    assert page.locator("table.root-links tbody tr").count() > 0
    pos = int(page.locator("input[name=pos]").input_value())
    assert f" at {pos} " in page.locator("h2").first.inner_text()  # the root sits at the example's token
    page.context.close()

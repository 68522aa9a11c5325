"""The explorer and steering pages in a real browser (Playwright driving Debian's /usr/bin/chromium) on the demo
model with dashboards built: the colouring legend and fast hover cards, keyboard-only use (arrow keys along the
tokens, Enter, a feature row picked with Enter, the tab title following), the long-prompt path (posted, saved, cut
to the context), every DFA source labelled, steering strength as a multiple of max activation and divergence."""

from __future__ import annotations

import re

import pytest

from app.config import DEMO_DIR

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not (DEMO_DIR / "model" / "model.safetensors").exists(), reason="demo model not trained"),
]
PROMPT = "Mr and Mrs Dursley, of number four, Privet Drive. Mr and Mrs Dursley"


def focused(page, script: str):
    return page.evaluate(f"(() => {{ const el = document.activeElement; return {script}; }})()")


def test_legend_tips_and_hover_cards(server, browser):
    page = browser.new_context().new_page()
    errors = []
    page.on("console", lambda m: m.type == "error" and errors.append(m.text))
    page.goto(server + "/?" + f"text={PROMPT.replace(' ', '+')}&layer=1&pos=12")
    legend = page.locator(".colour-by .legend")
    assert legend.is_visible() and float(legend.locator(".hi").inner_text()) > float(legend.locator(".lo").inner_text())
    assert "strongest L1 feature" in page.locator(".colour-by .caption").inner_text()
    # a token's value shows at once on hover, not in a slow native tooltip
    page.hover(".tokens .tok >> nth=3")
    tip = page.evaluate("getComputedStyle(document.querySelectorAll('.tokens .tok')[3], '::after').content")
    assert "position 3" in tip and "max" in tip
    # a feature id's card loads on hover, with its explanation, density, max activation and top logits
    page.hover("table.picker a.fid >> nth=0")
    card = page.locator("table.picker .fcard >> nth=0")
    card.locator(".card-kv").wait_for()
    assert card.is_visible() and "max activation" in card.inner_text() and "density" in card.inner_text()
    assert "top logits" in card.inner_text()
    assert "/card" not in page.url  # the card's request did not touch the history
    assert errors == []
    page.context.close()


def test_keyboard_only_tokens_rows_and_the_tab_title(server, browser):
    """Tab to the prompt, type, Analyse; Tab to the strip (one tab stop), arrows move, Enter opens; Tab to a feature
    row, Enter picks it: the tokens are coloured by it, its DFA shows, the URL and the tab title follow."""
    page = browser.new_context().new_page()
    page.goto(server + "/")
    for _ in range(12):
        page.keyboard.press("Tab")
        if focused(page, "el.id") == "text":
            break
    page.keyboard.type(PROMPT)
    page.keyboard.press("Tab")
    assert focused(page, "el.textContent.trim()") == "Analyse"
    page.keyboard.press("Enter")
    page.wait_for_selector(".tokens .tok")
    assert page.locator(".tokens .tok[tabindex='0']").count() == 1  # the strip is one tab stop
    for _ in range(20):
        page.keyboard.press("Tab")
        if focused(page, "el.classList.contains('tok')"):
            break
    start = int(focused(page, "el.dataset.pos"))
    for _ in range(3):
        page.keyboard.press("ArrowRight")
    page.keyboard.press("ArrowLeft")
    assert int(focused(page, "el.dataset.pos")) == start + 2
    page.keyboard.press("End")
    last = page.locator(".tokens .tok").count() - 1
    assert int(focused(page, "el.dataset.pos")) == last
    page.keyboard.press("Enter")
    page.wait_for_selector("table.picker")
    assert f"pos={last}" in page.url and page.title().startswith(f"position {last} · ")
    assert focused(page, "el.dataset.pos") == str(last)  # focus stays on the opened token
    for _ in range(30):
        page.keyboard.press("Tab")
        if focused(page, "el.matches('tr.pick')"):
            break
    page.keyboard.press("Enter")
    page.wait_for_selector("text=DFA of feature")
    feature = re.search(r"feature=(\d+)", page.url).group(1)
    assert page.title().startswith(f"L1/{feature} at {last} · ")
    assert "coloured by feature" in page.locator(".colour-by .caption").inner_text()
    assert focused(page, "el.matches('tr.pick.on')")
    page.go_back()
    page.wait_for_function(f"!document.title.startsWith('L1/{feature}')")
    page.context.close()


def test_rows_pick_ids_open_and_every_dfa_source_is_labelled(server, browser):
    page = browser.new_context().new_page()
    page.goto(server + "/?" + f"text={PROMPT.replace(' ', '+')}&layer=1&pos=12")
    page.locator("table.picker tbody tr.pick >> nth=0").locator("td >> nth=2").click()  # the row, not its id
    page.wait_for_selector(".plot .main-svg")
    assert "feature=" in page.url and "/demo/L1/" not in page.url
    ticks = set(page.locator(".dfa .plot >> nth=0").locator(".xaxislayer-above .xtick").all_text_contents())
    assert {t.split(":")[0] for t in ticks if t} == {str(s) for s in range(13)}  # sources 0..12, each labelled
    assert "source token" in page.locator(".dfa .plot >> nth=0").inner_text()
    page.locator("table.picker tr.on a.fid").click()  # the id opens the feature's page
    page.wait_for_selector("h1:has-text('Feature')")
    assert re.search(r"/demo/L1/\d+$", page.url)
    page.context.close()


def test_long_prompt_is_posted_saved_and_cut_to_the_context(server, browser):
    page = browser.new_context().new_page()
    page.goto(server + "/")
    text = ("def add(a, b):\n    return a + b\n\n" * 150)[:5000]  # 5,000 characters, far past 128 tokens
    page.fill("#text", text)
    assert page.locator(".long-note").is_visible()  # says it will be posted and saved
    page.click("#prompt button[type=submit]:has-text('Analyse')")
    page.wait_for_url(re.compile(r"/p/[\w-]+$"))
    assert len(page.url) < 80 and "Invalid HTTP request" not in page.content()
    notice = page.locator(".too-long")
    assert "reads at most 128" in notice.inner_text()
    first = page.url
    notice.locator("button").click()  # Analyse the first 128 tokens
    page.wait_for_url(lambda u: re.search(r"/p/[\w-]+$", u) and u != first)
    page.wait_for_selector(".tokens .tok")
    assert page.locator(".tokens .tok").count() == 128
    assert page.locator(".tokens .tok.nl").count() > 10  # the code's lines
    token = page.locator(".tokens .tok >> nth=5")
    token.click()
    page.wait_for_selector("table.picker")
    assert re.search(r"/p/[\w-]+\?.*pos=5", page.url) and "text=" not in page.url
    page.context.close()


def test_steering_strength_divergence_and_a_kept_form(server, browser):
    page = browser.new_context().new_page()
    page.goto(server + "/demo/steer?layer=1&feature=3")
    value = page.locator("input[name=value] >> nth=0")
    max_act = float(value.get_attribute("data-max-act"))
    assert float(value.input_value()) == pytest.approx(2 * max_act, rel=1e-3)
    slider = page.locator(".strength input[type=range] >> nth=0")
    slider.focus()
    for _ in range(4):
        page.keyboard.press("ArrowRight")  # +4 steps of 0.25: three times max activation
    assert float(value.input_value()) == pytest.approx(3 * max_act, rel=1e-3)
    assert "× 3.00" in page.locator(".strength output >> nth=0").inner_text()
    page.fill("#text", "def main():\n    ")
    page.select_option("select[name=mode] >> nth=0", "clamp")
    value.fill("")
    rows = page.locator("input[name=feature]").count()
    page.click("button[type=submit]")
    page.wait_for_selector("[role=alert]:has-text('clamp needs a value')")
    page.click("button[type=submit]")
    page.wait_for_selector("[role=alert]:has-text('clamp needs a value')")
    assert page.locator("input[name=feature]").count() == rows  # no blank row added per failure
    assert page.locator("#text").input_value() == "def main():\n    "
    page.select_option("select[name=mode] >> nth=0", "add")
    page.locator("input[name=value] >> nth=0").fill(str(round(6 * max_act, 3)))
    page.click("button[type=submit]")
    page.wait_for_selector("h2:has-text('Steered')")
    assert "/s/" in page.url
    note = page.locator(".diverge").inner_text()
    assert "part at generated token" in note or "changed no token" in note
    if "part at" in note:
        assert page.locator(".side-by-side .tok.first-diff").count() == 2
    page.context.close()

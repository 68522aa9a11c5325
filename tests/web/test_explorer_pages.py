"""The explorer and steering pages after the first-use review (issue 18): the default colouring and its legend, hover
cards, tokens shown one way, long prompts posted and linked by id, 'analyse the first n_ctx tokens', one clear
message for a bad feature or layer, rows that pick and ids that open, the tab title in fragments; steering strength
in multiples of max activation, divergence, forms kept as typed, empty clamps and over-long generations refused."""

from __future__ import annotations

import re
from html import unescape

import pytest
import torch
from fastapi.testclient import TestClient

from app.config import Settings
from app.engine.engine import Engine
from app.engine.loading import attach_saes, load_model
from app.jobs import dashboards as job
from app.store.db import make_engine, make_sessionmaker, upgrade
from app.web.app import create_web_app
from app.web.services.steering import divergence
from app.worker.service import create_worker_app
from tests.web.forms import csrf_token

PROMPT = "def add(a, b):\n    return a + b\n"


@pytest.fixture(scope="module")
def site(tiny_model_dir, sae_dirs, tmp_path_factory):
    url = f"sqlite:///{tmp_path_factory.mktemp('explorer') / 'e.db'}"
    upgrade(url)
    model = load_model(str(tiny_model_dir))
    engine = Engine(model, attach_saes(model, [str(p) for p in sae_dirs["standard"]]), "demo")
    corpus = torch.randint(1, model.cfg.d_vocab, (6, 40), generator=torch.Generator().manual_seed(3))
    corpus[:, 0] = 0
    db = make_engine(url)
    job.build(engine, make_sessionmaker(db), corpus, job.BuildParams(corpus="r", tokens=240), batch_size=3,
              progress=False)
    db.dispose()
    with TestClient(create_web_app(Settings(database_url=url), create_worker_app(engine))) as c:
        yield c


def strip_of(html: str) -> str:
    return re.search(r'<div class="tokens"[^>]*>(.*?)</div>', html, re.S).group(1)


def test_default_colouring_is_the_strongest_feature_with_a_legend(site):
    page = site.get("/", params={"text": PROMPT, "layer": 1}).text
    assert "coloured by the strongest L1 feature" in page and "active features" not in page
    lo, hi = (float(v) for v in re.search(r'<span class="lo">([-\d.]+)</span><span class="ramp"></span>'
                                          r'<span class="hi">([-\d.]+)</span>', page).groups())
    assert hi > lo
    colours = set(re.findall(r'class="tok[^"]*"[^>]*style="background: ([^;]+);', page))
    assert len(colours) > 3  # not one solid colour
    assert 'data-tip="position 1 · max ' in page  # the value at each token, shown fast on hover or focus
    # the layer picker and the caption are one control
    control = re.search(r'<div class="colour-by" role="group" aria-label="Token colouring">(.*?)</div>', page, re.S)
    assert ">L0</a>" in control.group(1) and "coloured by" in control.group(1)


def test_a_chosen_feature_colours_the_tokens_and_its_card_shows_beside_it(site):
    page = site.get("/", params={"text": PROMPT, "layer": 1, "feature": 5}).text
    assert "coloured by feature" in page and 'hx-get="/demo/L1/5/card"' in page
    assert 'hx-trigger="mouseenter once, focus once"' in page


def test_newlines_break_the_strip_and_labels_mark_spaces(site):
    page = site.get("/", params={"text": PROMPT, "layer": 1, "pos": 3}).text
    strip = unescape(strip_of(page))
    assert "↵\n" in strip  # the mark, then a real line break: code keeps its shape
    tokens = site.post("/api/v1/tokenize", json={"text": PROMPT}).json()["tokens"]
    heading = re.search(r"Features at position 3 <code>(.*?)</code>", page).group(1)
    shown = tokens[3].replace("\n", "↵")
    shown = "·" * (len(shown) - len(shown.lstrip(" "))) + shown.strip(" ") + "·" * (len(shown) - len(shown.rstrip(" ")))
    assert unescape(heading) == shown


def test_feature_rows_pick_and_ids_open_and_all_can_be_listed(site):
    page = site.get("/", params={"text": PROMPT, "layer": 1, "pos": 4}).text
    rows = re.findall(r'<tr class="pick[^"]*" tabindex="0" hx-get="([^"]+)"', page)
    assert 0 < len(rows) <= 8
    assert all("pos=4" in unescape(r) and "feature=" in unescape(r) for r in rows)
    body = re.search(r"<tbody>(.*?)</tbody>", page.split("Features at position")[1], re.S).group(1)
    first_row = body.split("</tr>")[0]
    assert len(re.findall(r"<a ", first_row)) == 1  # one link: the id, to the feature's page
    assert re.search(r'<a class="fid" href="/demo/L1/\d+"', first_row)
    assert re.search(r'aria-label="per-head contributions: H0 [-\d.]+, H1', first_row)  # labelled mini-bars
    active = int(re.search(r'<p class="note">(\d+) active', page).group(1))
    if active > 8:
        assert f"Show all {min(active, 64)}" in page
        every = site.get("/", params={"text": PROMPT, "layer": 1, "pos": 4, "all": "true"}).text
        assert len(re.findall(r'<tr class="pick', every)) == min(active, 64)


def test_fragments_carry_the_tab_title(site):
    frag = site.get("/", params={"text": PROMPT, "layer": 1, "feature": 5, "pos": 2},
                    headers={"HX-Request": "true"}).text
    assert frag.lstrip().startswith("<title>L1/5 at 2 · ")


def test_an_unknown_feature_or_layer_is_one_clear_message(site):
    page = site.get("/", params={"text": PROMPT, "layer": 1, "feature": 99999, "pos": 2})
    assert page.status_code == 200
    assert page.text.count('role="alert"') == 1 and "Feature 99999 does not exist in SAE L1" in page.text
    assert "features are 0 to 127" in page.text and 'href="/demo"' in page.text and "/api/v1" not in page.text
    assert "DFA of feature" not in page.text and "coloured by the strongest" in page.text  # consistent: no feature
    page = site.get("/", params={"text": PROMPT, "layer": 7}).text
    assert "no SAE on layer 7" in page and "Showing layer 1" in page and 'aria-current="true" class="on">L1' in page
    page = site.get("/", params={"text": PROMPT, "model": "gpt9"}).text
    assert "serves no model called &#39;gpt9&#39;" in page and "/api/v1" not in page


def test_hover_card_is_a_fragment_or_a_page(site):
    card = site.get("/demo/L1/5/card", headers={"HX-Request": "true"})
    assert card.status_code == 200 and "<title" not in card.text and "<html" not in card.text
    assert "density" in card.text and "max activation" in card.text and 'href="/demo/L1/5"' in card.text
    assert site.get("/demo/L1/5/card").text.lstrip().startswith("<!doctype html>")
    assert site.get("/demo/L1/99999/card", headers={"HX-Request": "true"}).status_code == 404
    assert site.get("/demo/L9/5/card").status_code == 404


def test_long_prompts_are_posted_cut_to_the_context_and_linked_by_id(site):
    long = PROMPT * 60  # ~2,000 characters: past the URL limit and the tiny model's 96 tokens
    too_long = site.get("/", params={"text": PROMPT * 20})
    assert too_long.status_code == 200 and re.search(r"tokens long, but demo reads at most\s+96", too_long.text)
    assert 'name="truncate" value="true">Analyse the first 96 tokens' in too_long.text
    assert "Invalid" not in too_long.text
    r = site.post("/p", data={"text": long, "truncate": "true", "csrf_token": csrf_token(site)},
                  headers={"HX-Request": "true"})
    assert r.status_code == 204 and re.fullmatch(r"/p/[\w-]+", r.headers["HX-Redirect"])
    link = r.headers["HX-Redirect"]
    page = site.get(link).text
    assert 'class="tokens"' in page and "Permalink" in page
    tokens = re.findall(r'class="tok[" ]', page)
    assert len(tokens) <= 96
    hrefs = re.findall(r'class="tok[^"]*" data-pos="\d+" href="([^"]+)"', page)
    assert hrefs and all(unescape(h).startswith(link + "?") and "text=" not in h for h in hrefs)
    moved = site.get(link, params={"moved": 1, "layer": 0, "pos": 3}).text
    assert 'class="tok sel" data-pos="3"' in moved and 'aria-current="true" class="on">L0' in moved


def test_steering_form_kept_as_typed_and_limits(site):
    c = site
    form = c.get("/demo/steer", params={"layer": 1, "feature": 5}).text
    assert form.count('name="feature"') == 2  # the picked feature and one blank row
    max_act = float(re.search(r'data-max-act="([\d.]+)"', form).group(1))
    value = float(re.search(r'name="value" type="number" step="any" value="([\d.]+)"', form).group(1))
    assert value == pytest.approx(2 * max_act, rel=1e-3)  # strength: twice the feature's max activation
    assert 'type="range"' in form and "of max act" in form and 'hx-get="/demo/L1/5/card"' in form
    assert re.search(r'name="max_new_tokens" type="number" min="0" max="95"', form)  # n_ctx 96 less BOS
    data = {"csrf_token": csrf_token(c), "text": "The quick brown fox", "max_new_tokens": 3, "temperature": 0,
            "seed": 0, "layer": ["1", ""], "feature": ["5", ""], "mode": ["clamp", "add"], "value": ["", ""],
            "heads": ["", ""], "positions": ["", ""]}
    bad = c.post("/demo/steer", data=data)
    assert bad.status_code == 422 and "clamp needs a value" in bad.text
    assert bad.text.count('name="feature"') == 2  # no extra blank row per failed try
    again = c.post("/demo/steer", data=data)
    assert again.text.count('name="feature"') == 2 and 'value="5"' in again.text
    over = c.post("/demo/steer", data={**data, "value": ["3", ""], "max_new_tokens": 500})
    assert over.status_code == 422 and "new tokens fit" in over.text
    ok = c.post("/demo/steer", data={**data, "value": ["40", ""]}, follow_redirects=True)
    assert ok.status_code == 200 and "Steered" in ok.text
    assert "The outputs part at generated token" in ok.text or "the steering changed no token" in ok.text


def test_divergence():
    assert divergence([1, 2, 3], [1, 2, 3]) == {"first": None, "positions": []}
    assert divergence([1, 2, 3, 4], [1, 5, 3]) == {"first": 1, "positions": [1, 3]}


def test_saved_analyses_and_steering_results_have_an_embed_view(site):
    r = site.post("/p", data={"text": PROMPT, "csrf_token": csrf_token(site)}, headers={"HX-Request": "true"})
    link = r.headers["HX-Redirect"]
    full, embed = site.get(link), site.get(link, params={"embed": 1})
    assert 'class="bar"' in full.text and "frame-ancestors 'none'" in full.headers["Content-Security-Policy"]
    assert embed.status_code == 200 and 'class="embed"' in embed.text and 'class="tokens"' in embed.text
    assert "frame-ancestors 'none'" in embed.headers["Content-Security-Policy"]  # no site allowed by default
    steer = site.post("/api/v1/steer", json={"text": PROMPT, "max_new_tokens": 2, "interventions": [
        {"layer": 1, "feature": 0, "mode": "ablate"}]})
    assert steer.status_code == 200, steer.text
    saved = steer.json().get("permalink") or steer.json().get("id")
    if saved:
        page = site.get(saved if saved.startswith("/") else f"/s/{saved}", params={"embed": 1})
        assert page.status_code == 200 and 'class="embed"' in page.text

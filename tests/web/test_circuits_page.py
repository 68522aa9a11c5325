"""The circuit-discovery page (/{model}/circuits): each built-in task and custom lists give ranked heads, the known
circuit gives ROC-AUC, bad input is a message; on the tiny random model's site of test_pages."""

from __future__ import annotations

import re

import pytest

from tests.web.test_pages import site  # noqa: F401


def heads(page: str) -> list[str]:
    body = re.search(r'<table class="features discovered-heads">(.*?)</table>', page, re.S).group(1)
    return re.findall(r'/heads/\d+/\d+">(\d+\.\d+)</a>', body)


def test_the_empty_form_offers_every_task(site):  # noqa: F811
    c, _ = site
    page = c.get("/demo/circuits")
    assert page.status_code == 200 and "discovered-heads" not in page.text
    for task in ("induction", "ioi", "greater_than", "docstring", "custom"):
        assert f'<option value="{task}"' in page.text


@pytest.mark.parametrize("task", ["induction", "ioi", "greater_than"])
def test_each_built_in_task_ranks_every_head(site, task):  # noqa: F811
    """(The demo model runs docstring too: tests/engine/test_circuit_tasks.py.)"""
    c, _ = site
    page = c.get("/demo/circuits", params={"task": task, "run": "1", "truth": "1.0 1.2"})
    assert page.status_code == 200, page.text[-500:]
    assert sorted(heads(page.text)) == [f"{layer}.{h}" for layer in (0, 1) for h in range(4)]
    assert "ROC-AUC vs the known circuit" in page.text and page.text.count(" ★") == 2
    assert page.text.count('<div class="plot">') == 1  # no patching asked: node scores only


def test_custom_prompts_with_patching_and_bad_input(site):  # noqa: F811
    c, _ = site
    q = {"task": "custom", "run": "1", "patching": "1", "positive": "a b c a b c\nx y x y", "negative": "a b c d e f"}
    page = c.get("/demo/circuits", params=q)
    assert page.status_code == 200 and len(heads(page.text)) == 8 and page.text.count('<div class="plot">') == 2
    assert c.get("/demo/circuits", params={**q, "negative": ""}).status_code == 422
    bad = c.get("/demo/circuits", params={**q, "truth": "one.two"})
    assert bad.status_code == 422 and "layer.head" in bad.text
    assert c.get("/demo/circuits", params={**q, "task": "nope"}).status_code == 422


def test_a_task_longer_than_the_context_is_a_clear_message(site):  # noqa: F811
    """The tiny model's 300-token vocabulary spells a docstring prompt nearly letter by letter: past its 96 tokens."""
    c, _ = site
    page = c.get("/demo/circuits", params={"task": "docstring", "run": "1"})
    assert page.status_code == 413 and "shorten it" in page.text and "Could not run this discovery" in page.text

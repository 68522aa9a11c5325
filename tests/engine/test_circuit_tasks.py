"""Built-in discovery tasks: the templates' classic forms and their corruptions, the same for the same seed, and
discovery on each of them running on the demo model (a byte-level BPE where names and years split) with ranked
heads."""

from __future__ import annotations

import re

import pytest

from app.engine.circuit_discovery import TASKS, discover
from app.engine.circuit_tasks import NAMES, task_prompts, task_texts
from tests.engine.test_circuit_discovery import demo  # noqa: F401


def test_ioi_prompts_repeat_the_subject_and_negatives_name_a_third():
    positive, negative = task_texts("ioi", 12, seed=1)
    assert (positive, negative) == task_texts("ioi", 12, seed=1) and len(positive) == len(negative) == 12
    for p, n in zip(positive, negative, strict=True):
        names = [w for w in re.findall(r"[A-Z][a-z]+", p) if w in NAMES]
        assert len(names) == 3 and names[2] in names[:2] and p.endswith(" to")  # ABB: the answer is the other one
        n_names = [w for w in re.findall(r"[A-Z][a-z]+", n) if w in NAMES]
        assert n_names[:2] == names[:2] and n_names[2] not in names[:2]  # ABC


def test_greater_than_and_docstring_forms():
    positive, negative = task_texts("greater_than", 8)
    for p, n in zip(positive, negative, strict=True):
        m = re.fullmatch(r"The \w+ lasted from the year (\d\d)(\d\d) to the year (\d\d)", p)
        assert m and m.group(1) == m.group(3) and 2 <= int(m.group(2)) <= 98
        assert n == p[: m.start(2)] + "01" + p[m.end(2):]
    positive, negative = task_texts("docstring", 8)
    for p, n in zip(positive, negative, strict=True):
        args = re.match(r"def \w+\(self, (\w+), (\w+), (\w+)\):", p).groups()
        assert p.endswith(":param") and f":param {args[0]}:" in p and f":param {args[1]}:" in p
        assert args[2] not in p.split(":param", 1)[1]  # the third is the answer, not yet written
        other = re.match(r"def \w+\(self, (\w+), (\w+), (\w+)\):", n).groups()
        assert not set(other) & set(args) and n.split("\n", 1)[1] == p.split("\n", 1)[1]
    with pytest.raises(ValueError):
        task_texts("induction")


@pytest.mark.parametrize("task", [t for t in TASKS if t != "induction"])
def test_each_text_task_runs_on_the_demo_and_ranks_heads(demo, task):  # noqa: F811
    model, saes = demo
    positive, negative = task_prompts(task, model, 0, lambda t: model.to_tokens(t), n_prompts=8)
    assert all(ids[0, 0] == 0 for ids in positive + negative)  # BOS first
    result = discover(model, saes, positive, negative, patching=True)
    scores = [h["score"] for h in result["heads"]]
    assert len(scores) == 16 and scores == sorted(scores, reverse=True) and scores[0] > 0
    assert len(result["patching"]) == 16 and result["seconds"]["codes"] < 30

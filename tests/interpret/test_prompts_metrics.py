"""delphi's formats (marking, activation lists, the explanation line, the answer list, log-probabilities of the
digits) and the scorers' metrics against hand-computed cases."""

from __future__ import annotations

import math

import pytest

from app.interpret import metrics, prompts
from app.interpret.examples import Example, ExampleConfig, TooFewExamples, from_dashboard
from app.interpret.llm import TokenLogprob


def ex(tokens, acts, distance=0.0):
    return Example(list(tokens), list(acts), distance)


def test_marking_merges_neighbours_and_uses_delphis_threshold():
    x = ex(["a", " b", " c", " d", " e"], [0.0, 1.0, 0.3, 0.31, 0.0])
    # strictly above 0.3 x max for the explainer; at or above it for fuzzing
    assert prompts.highlight(x.str_tokens, prompts.marked(x)) == "a<< b>> c<< d>> e"
    assert prompts.highlight(x.str_tokens, prompts.marked(x, inclusive=True)) == "a<< b c d>> e"
    assert prompts.highlight(["x", "y"], [True, True]) == "<<xy>>"


def test_activation_list_is_in_tenths_of_the_features_max():
    x = ex(["the", " cat", " sat"], [0.0, 1.5, 2.0])
    assert prompts.activation_list(x, max_activation=2.0) == 'Activations: (" cat" : 7), (" sat" : 10), '
    many = ex([f"t{i}" for i in range(15)], [1.0] * 15)
    assert prompts.activation_list(many, 1.0).count("(") == 11  # delphi stops after 11 entries


def test_explainer_messages_end_with_the_examples():
    messages = prompts.explainer_messages([ex(["a", "b"], [0.0, 1.0])], 1.0)
    assert messages[0]["role"] == "system" and "[EXPLANATION]:" in messages[0]["content"]
    assert messages[-1] == {"role": "user", "content": '\na<<b>>\nActivations: ("b" : 10), \n'}
    assert all(m["role"] in ("system", "user", "assistant") for m in messages)


@pytest.mark.parametrize("answer, parsed", [
    ("Looking at it...\n[EXPLANATION]: plural nouns", "plural nouns"),
    ("[EXPLANATION]: first\nmore thought\n[EXPLANATION]:  the word 'up' \ntrailing", "the word 'up'"),
    ("no line here", prompts.UNPARSED),
    ("[EXPLANATION]:   ", prompts.UNPARSED),
])
def test_parse_explanation_takes_the_last_line(answer, parsed):
    assert prompts.parse_explanation(answer) == parsed


def test_parse_predictions():
    assert prompts.parse_predictions("Sure: [1, 0,1]", 3) == [1, 0, 1]
    assert prompts.parse_predictions("[1,0] then [0,1,1]", 3) == [0, 1, 1]  # the first list of the right length
    assert prompts.parse_predictions("[1,0]", 3) is None
    assert prompts.parse_predictions("[1,2,0]", 3) is None
    assert prompts.parse_predictions("[true,false]", 2) is None
    assert prompts.parse_predictions("nothing", 1) is None


def test_digit_probabilities_follow_delphi():
    lp = [TokenLogprob("[", 0.0, {"[": 0.0}),
          TokenLogprob("1", math.log(0.6), {"1": math.log(0.6), "0": math.log(0.2), "x": math.log(0.2)}),
          TokenLogprob(",", 0.0, {",": 0.0}),
          TokenLogprob("0", math.log(0.9), {"0": math.log(0.9), "1": math.log(0.1)}),
          TokenLogprob("]", 0.0, {"]": 0.0})]
    probs = prompts.digit_probabilities(lp, 2)
    assert probs == pytest.approx([0.75, 0.1])
    assert prompts.digit_probabilities(lp, 3) is None
    assert prompts.digit_probabilities(None, 2) is None


def test_balanced_accuracy_and_f1_by_hand():
    activating = [True, True, True, True, False, False, False, False]
    predicted = [1, 1, 1, 0, 1, 0, 0, None]  # tp 3, fn 1, fp 1, tn 2, one failed
    out = metrics.balanced_accuracy_f1(activating, predicted)
    assert out["balanced_accuracy"] == pytest.approx((3 / 4 + 2 / 3) / 2)
    assert out["f1"] == pytest.approx(2 * 0.75 * 0.75 / 1.5)
    assert out["n"] == 7 and out["failed"] == 1
    assert metrics.balanced_accuracy_f1([True, True], [1, 0])["balanced_accuracy"] is None  # one class only


def test_auroc_by_hand_with_ties():
    # positives 0.9, 0.5; negatives 0.5, 0.1: pairs (0.9>0.5) (0.9>0.1) (0.5=0.5 half) (0.5>0.1) -> 3.5 / 4
    assert metrics.auroc([True, True, False, False], [0.9, 0.5, 0.5, 0.1]) == pytest.approx(0.875)
    assert metrics.auroc([True, False], [0.2, 0.8]) == 0.0
    assert metrics.auroc([True, False, True], [0.3, 0.3, None]) is None  # a single value
    assert metrics.auroc([True, True], [0.1, 0.2]) is None


def test_headline_means_the_scorers_headlines():
    scores = {"detection": {"balanced_accuracy": 0.8}, "fuzzing": {"balanced_accuracy": 0.6},
              "embedding": {"auroc": 0.7}}
    assert metrics.headline(scores) == pytest.approx(0.7)
    assert metrics.headline({"detection": {"balanced_accuracy": None}}) is None


def _board(n_top, per_interval):
    def body(value, interval=None):
        b = {"tokens": [f"t{i}" for i in range(21)], "token_ids": list(range(21)), "max_position": 16,
             "activations": [0.0] * 16 + [value] + [0.0] * 4}
        if interval is not None:
            b["interval"] = interval
        return b
    return {"feature": 3, "max_activation": 10.0, "top_examples": [body(10.0 - i * 0.1) for i in range(n_top)],
            "interval_examples": [body(i + 0.5, i) for i in range(10) for _ in range(per_interval)]}


def test_examples_split_train_and_test_without_overlap():
    got = from_dashboard(_board(20, 5), ExampleConfig(n_train=20, ratio_top=0.4, n_test=30))
    assert len(got.train) == 20 and len(got.test) == 30
    assert sum(1 for x in got.train if x.max_activation >= 8.0) >= 8  # the top share
    assert not {id(x) for x in got.train} & {id(x) for x in got.test}
    # a dashboard's interval 9 (the highest activations) is delphi's quantile 0
    assert {x.distance for x in got.test if x.max_activation == 9.5} == {0.0}
    assert all(len(x.str_tokens) <= 32 for x in got.train + got.test)
    with pytest.raises(TooFewExamples):
        from_dashboard(_board(2, 0))


def test_lenient_parsing_for_the_embedded_model():
    assert prompts.parse_predictions("[1,0]", 1) is None  # delphi's rule: wrong length fails
    assert prompts.parse_predictions("[1,0]", 1, lenient=True) == [1]
    assert prompts.parse_predictions("no list", 1, lenient=True) is None
    text = "The marked tokens have in common that they are closing brackets. More text."
    assert prompts.parse_explanation(text) == prompts.UNPARSED
    assert prompts.parse_explanation(text, lenient=True) == "closing brackets"
    assert prompts.parse_explanation("[EXPLANATION]: tags win", lenient=True) == "tags win"


def test_single_example_prompts_show_both_answers():
    messages = prompts.scorer_messages("detection", "x", ["only one"])
    answers = [m["content"] for m in messages if m["role"] == "assistant"]
    assert answers == ["[1]", "[0]"] and messages[-1]["content"].endswith("Example 0: only one\n")

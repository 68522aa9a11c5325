"""Prompts of the explainer and the detection and fuzzing scorers, and the parsing of their answers, in delphi's
formats (Paulo et al. 2024) and in our own words; knows nothing of models, the store or HTTP.

Formats that carry over from delphi: active tokens marked `<<` `>>` (a token is active above 0.3 of its example's
largest activation; neighbours merge into one span), the optional activation list `Activations: ("tok" : 7), ...`
in tenths of the feature's largest activation (at most 11 entries), the explanation on a last line
`[EXPLANATION]: ...`, scorer examples as `Example i: ...` lines answered with a list such as `[1,0,1]`, and the
probability of a 1 read from the top-5 log-probabilities of the answer's digits."""

from __future__ import annotations

import json
import math
import re

from app.interpret.examples import Example

PROMPT_VERSION = "saex-1"  # stored with every explanation; change it when a prompt's wording changes
L, R = "<<", ">>"
THRESHOLD = 0.3  # of an example's largest activation: a token above it is marked
UNPARSED = "Explanation could not be parsed."  # delphi's text when no [EXPLANATION] line is found
_EXPLANATION = re.compile(r"\[EXPLANATION\]:[ \t]*(.*)")
_LIST = re.compile(r"\[[^\[\]]*?\]")
_PREAMBLE = re.compile(r"^(the )?(marked|highlighted) tokens (all )?"
                       r"(have in common that (they|it) (all )?(are|is) |have in common: |are )", re.IGNORECASE)


def highlight(tokens: list[str], active: list[bool]) -> str:
    """The tokens joined, each run of active tokens wrapped in << >>."""
    out, inside = [], False
    for tok, on in zip(tokens, active, strict=True):
        if on and not inside:
            out.append(L)
        elif not on and inside:
            out.append(R)
        out.append(tok)
        inside = on
    if inside:
        out.append(R)
    return "".join(out)


def marked(example: Example, *, inclusive: bool = False) -> list[bool]:
    """Which tokens are active: above THRESHOLD of the example's largest activation (the fuzzing scorer, as
    delphi's, marks at or above it)."""
    cut = example.max_activation * THRESHOLD
    if inclusive:
        return [a >= cut and a > 0 for a in example.activations]
    return [a > cut for a in example.activations]


def activation_list(example: Example, max_activation: float) -> str:
    """delphi's activation line: the active tokens with their activation in tenths of the feature's largest."""
    scale = 10 / max(max_activation, 1e-3)
    entries = [f'("{tok}" : {int(math.floor(a * scale))}), '
               for tok, a, on in zip(example.str_tokens, example.activations, marked(example), strict=True) if on]
    return "Activations: " + "".join(entries[:11])


EXPLAINER_SYSTEM = (
    "You study one unit inside a language model. You are shown short text excerpts where the unit is active; the "
    "tokens where it is most active are wrapped in << and >>. {activations}Work out what the marked tokens have in "
    "common, taking the words just before them into account. Answer with a single short phrase, no list, without "
    "quoting whole examples and without mentioning the << >> marks. Your reply must end with a line of the form\n"
    "[EXPLANATION]: <your phrase>"
)
ACTIVATIONS_NOTE = ("After each excerpt, a line lists the marked tokens with their strength from 0 to 10. ")
EXPLAINER_SHOT = (
    [{"role": "user", "content": "\nwe walked <<up>> the hill\nthe price went <<up>> again\nshe looked <<up>> at "
      "the sky\n"}, {"role": "assistant", "content": "[EXPLANATION]: the word \"up\" after a verb of motion"}],
    [{"role": "user", "content": "\nsaid Mr<<.>> Smith\nin the U<<.>>S<<.>> army\nDr<<.>> Jones\n"},
     {"role": "assistant", "content": "[EXPLANATION]: full stops inside abbreviations and titles"}],
)


def explainer_messages(examples: list[Example], max_activation: float, *, activations: bool = True,
                       few_shot: bool = True) -> list[dict[str, str]]:
    lines = []
    for x in examples:
        lines.append(highlight(x.str_tokens, marked(x)))
        if activations:
            lines.append(activation_list(x, max_activation))
    system = EXPLAINER_SYSTEM.format(activations=ACTIVATIONS_NOTE if activations else "")
    shots = [m for pair in EXPLAINER_SHOT for m in pair] if few_shot else []
    return [{"role": "system", "content": system}, *shots,
            {"role": "user", "content": "\n" + "\n".join(lines) + "\n"}]


def parse_explanation(text: str, *, lenient: bool = False) -> str:
    """The last `[EXPLANATION]:` line's text (delphi's newer rule), else UNPARSED. lenient (for the embedded 135M
    model, which rarely writes the line without few-shot examples and parrots them with): else the answer's first
    sentence, without a leading "The marked tokens ..." preamble."""
    found = _EXPLANATION.findall(text)
    answer = found[-1].strip() if found else ""
    if not answer and lenient:
        first = next((line.strip() for line in text.splitlines() if line.strip()), "")
        first = re.split(r"(?<=[.!?])\s", first, maxsplit=1)[0].rstrip(":.")
        first = _PREAMBLE.sub("", first)
        answer = first[:200].strip()
    return answer or UNPARSED


DETECTION_SYSTEM = (
    "You check a description of a text feature against text excerpts. For each excerpt decide whether the feature "
    "is present in it (1) or not (0). Reply with nothing but a list with one 0 or 1 per excerpt, in order, for "
    "example [1,0,0,1]."
)
FUZZING_SYSTEM = (
    "You check a description of a text feature against text excerpts in which some tokens are wrapped in << and "
    ">>. For each excerpt decide whether the wrapped tokens are all instances of the described feature (1) or not "
    "(0). Reply with nothing but a list with one 0 or 1 per excerpt, in order, for example [0,1,1,0]."
)
SCORER_SHOT = {
    "detection": [{"role": "user", "content": "Feature explanation: the word \"up\" after a verb of motion\n\nText "
                   "examples:\n\nExample 0: we climbed up the stairs\nExample 1: the meeting ended early\n"},
                  {"role": "assistant", "content": "[1,0]"}],
    "fuzzing": [{"role": "user", "content": "Feature explanation: full stops inside abbreviations\n\nText examples:"
                 "\n\nExample 0: Dr<<.>> Jones arrived\nExample 1: the end<<.>> Then\n"},
                {"role": "assistant", "content": "[1,0]"}],
}


SINGLE_SHOT = {  # one example a prompt: one shot answered 1 and one answered 0, so neither answer is the only one seen
    "detection": [("the word \"up\" after a verb of motion", "we climbed up the stairs", "[1]"),
                  ("the word \"up\" after a verb of motion", "the meeting ended early", "[0]")],
    "fuzzing": [("full stops inside abbreviations", "Dr<<.>> Jones arrived", "[1]"),
                ("full stops inside abbreviations", "the end<<.>> Then", "[0]")],
}


def scorer_messages(kind: str, explanation: str, texts: list[str]) -> list[dict[str, str]]:
    system = DETECTION_SYSTEM if kind == "detection" else FUZZING_SYSTEM
    body = "\n".join(f"Example {i}: {t}" for i, t in enumerate(texts))
    shots = SCORER_SHOT[kind]
    if len(texts) == 1:
        shots = [m for expl, text, answer in SINGLE_SHOT[kind] for m in (
            {"role": "user", "content": f"Feature explanation: {expl}\n\nText examples:\n\nExample 0: {text}\n"},
            {"role": "assistant", "content": answer})]
    return [{"role": "system", "content": system}, *shots,
            {"role": "user", "content": f"Feature explanation: {explanation}\n\nText examples:\n\n{body}\n"}]


def parse_predictions(text: str, n: int, *, lenient: bool = False) -> list[int] | None:
    """The first bracketed list of n zeros and ones in the answer, else None (delphi: the batch counts as failed).
    lenient (for the embedded 135M model, which copies its few-shot answers' length): else the first n zeros and
    ones of the first bracketed list."""
    for match in _LIST.finditer(text):
        try:
            values = json.loads(match.group(0))
        except ValueError:
            continue
        if isinstance(values, list) and len(values) == n and all(v in (0, 1) and not isinstance(v, bool)
                                                                 for v in values):
            return [int(v) for v in values]
    if lenient:
        first = _LIST.search(text)
        digits = re.findall(r"[01]", first.group(0)) if first else []
        if len(digits) >= n:
            return [int(d) for d in digits[:n]]
    return None


def digit_probabilities(logprobs, n: int) -> list[float] | None:
    """delphi's rule: for each answer token that holds a 0 or 1, p(1) / (p(0) + p(1)) over its top alternatives
    (0.0 when neither appears); None unless that yields exactly n values. logprobs: TokenLogprob-like objects with
    `token` and `top` (token -> logprob)."""
    if not logprobs:
        return None
    out = []
    for entry in logprobs:
        if "0" not in entry.token and "1" not in entry.token:
            continue
        p0 = sum(math.exp(lp) for tok, lp in entry.top.items() if "0" in tok)
        p1 = sum(math.exp(lp) for tok, lp in entry.top.items() if "1" in tok and "0" not in tok)
        out.append(p1 / (p0 + p1) if p0 + p1 > 0 else 0.0)
    return out if len(out) == n else None

"""Explainers: a language model reading activating examples (delphi's protocol), and a baseline that needs no
language model, written from the dashboard's statistics (the tokens a feature fires on, the source tokens and
heads its attention reads, the tokens it promotes); knows nothing of the store, torch or HTTP."""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

from app.interpret import prompts
from app.interpret.examples import Example
from app.interpret.llm import LLMClient

MAX_EXPLANATION_TOKENS = 120
BASELINE_VERSION = "baseline-1"
RELATIONS = {  # how an example's strongest source sits relative to the token the feature fires on
    "self": "its own token",
    "previous": "the token just before it",
    "duplicate": "an earlier copy of the same token",
    "induction": "the token that followed an earlier copy of it (induction)",
}


@dataclass
class Explained:
    text: str
    method: str  # "baseline" or "llm:<model>"
    prompt_version: str
    raw: str = ""  # the model's whole answer


async def explain_llm(llm: LLMClient, train: list[Example], max_activation: float, *,
                      activations: bool | None = None) -> Explained:
    """activations: show delphi's activation lists (default: unless the client says it cannot use them, as the
    embedded 135M model, which then writes no [EXPLANATION] line)."""
    if activations is None:
        activations = bool(getattr(llm, "explainer_activations", True))
    small = bool(getattr(llm, "lenient_answers", False))  # the embedded 135M model parrots few-shot answers
    messages = prompts.explainer_messages(train[:10] if small else train, max_activation, activations=activations,
                                          few_shot=not small)
    reply = await llm.chat(messages, max_tokens=MAX_EXPLANATION_TOKENS, temperature=0.0)
    return Explained(prompts.parse_explanation(reply.text, lenient=small), f"llm:{llm.name}",
                     prompts.PROMPT_VERSION, reply.text)


def _shown(token: str) -> str:
    """A token as a reader can see it: stripped, or its whitespace spelled out."""
    if token.strip():
        token = token.strip()
        return token if len(token) <= 16 else token[:12] + "…"
    shown = token.replace("\n", "\\n").replace("\t", "\\t")
    return re.sub(r" {4,}", lambda m: f"␣×{len(m.group(0))}", shown).replace(" ", "␣")


def _quoted(tokens: list[str]) -> str:
    return ", ".join(f'"{t}"' for t in tokens)


def _relation(tokens: list[str], at: int, source: int) -> str | None:
    if source == at:
        return "self"
    if source == at - 1:
        return "previous"
    if tokens[source] == tokens[at]:
        return "duplicate"
    if source > 0 and tokens[source - 1] == tokens[at]:
        return "induction"
    return None


def explain_baseline(dashboard: dict, *, layer: int, n_tokens: int = 3) -> Explained:
    """From the dashboard: the tokens it fires on most (by summed activation over its examples), the source tokens
    its heads read them from (by summed DFA, with the commonest relation of source to token), the heads that carry
    most of it, and the tokens it promotes."""
    fired, sources, relations = Counter(), Counter(), Counter()
    examples = [*dashboard.get("top_examples", []), *dashboard.get("interval_examples", [])]
    for x in examples:
        at, tokens = x["max_position"], x["tokens"]
        value = x["activations"][at]
        if value <= 0:
            continue
        fired[_shown(tokens[at])] += value
        dfa = x.get("dfa") or []
        if dfa:
            source = max(range(min(at + 1, len(dfa))), key=lambda s: dfa[s])
            if dfa[source] > 0:
                sources[_shown(tokens[source])] += dfa[source]
                relations[_relation(tokens, at, source) or "other"] += 1
    if not fired:
        return Explained("never fired on the dashboard corpus", "baseline", BASELINE_VERSION)
    parts = [f"fires on {_quoted([t for t, _ in fired.most_common(n_tokens)])}"]
    if sources:
        parts.append(f"reading {_quoted([t for t, _ in sources.most_common(n_tokens)])}")
    known = [(r, c) for r, c in relations.most_common() if r != "other"]
    if known and known[0][1] >= 0.4 * sum(relations.values()):
        parts.append(f"mostly from {RELATIONS[known[0][0]]}")
    heads = dashboard.get("head_attribution") or []
    if heads:
        order = sorted(range(len(heads)), key=lambda h: -heads[h])
        total = sum(max(h, 0.0) for h in heads) or 1.0
        strong = [h for h in order[:2] if heads[h] > 0.2 * total] or order[:1]
        parts.append("via head" + ("s " if len(strong) > 1 else " ") + ", ".join(f"{layer}.{h}" for h in strong))
    text = " ".join(parts[:2]) + (f" ({', '.join(parts[2:])})" if len(parts) > 2 else "")
    promoted = [_shown(e["token"]) for e in (dashboard.get("logit_effects") or {}).get("top", [])[:n_tokens]]
    if promoted:
        text += f"; promotes {_quoted(promoted)}"
    return Explained(text, "baseline", BASELINE_VERSION)

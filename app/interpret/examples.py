"""Examples a feature is explained and scored on, chosen as delphi does from a stored dashboard: activating
examples by activation quantile plus top examples, held-out test examples, and non-activating windows of the
dashboard corpus; knows nothing of language models, torch or HTTP.

Numbers and field names follow delphi (Paulo et al. 2024): an example's `distance` is its quantile for an
activating example (0 holds the highest activations) and -1.0 for a non-activating one. Two differences, both from
what a dashboard keeps: quantiles are the dashboard's equal-width activation intervals (delphi: equal-count bins of
all activating windows), and windows are the dashboard's (16 tokens before the example's token and 4 after; delphi
cuts 32-token windows from its cache), cut to `ctx_len` when that is shorter.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass
class Example:
    str_tokens: list[str]
    activations: list[float]  # one per token; all zero for a non-activating example
    distance: float  # activating: its quantile, 0 the highest; non-activating: -1.0
    token_ids: list[int] = field(default_factory=list)

    @property
    def activating(self) -> bool:
        return self.distance >= 0

    @property
    def text(self) -> str:
        return "".join(self.str_tokens)

    @property
    def max_activation(self) -> float:
        return max(self.activations, default=0.0)


@dataclass
class ExampleConfig:
    n_train: int = 20  # examples the explainer sees (delphi: 40; a small model's context is short)
    ratio_top: float = 0.4  # of those, the share from the top examples (delphi's "mix"); the rest by quantile
    n_test: int = 30  # activating examples a scorer sees, none of them shown to the explainer (delphi: 50)
    n_non_activating: int = 30  # windows where the feature is zero throughout (delphi: 50)
    n_quantiles: int = 10
    ctx_len: int = 32  # tokens per window at most (delphi: 32)
    seed: int = 22  # delphi's


@dataclass
class FeatureExamples:
    train: list[Example]
    test: list[Example]
    max_activation: float  # the feature's, over the dashboard corpus (activation lists are in tenths of it)


class TooFewExamples(ValueError):
    pass


def _cut(tokens: Sequence, values: Sequence, ids: Sequence[int], at: int, ctx_len: int) -> tuple[list, list, list]:
    """At most ctx_len tokens around position `at`, three quarters of them before it (delphi centres at 24/32)."""
    start = max(0, min(at - (3 * ctx_len) // 4, len(tokens) - ctx_len))
    end = start + ctx_len
    return list(tokens[start:end]), [float(v) for v in values[start:end]], list(ids[start:end])


def _example(body: dict, distance: float, ctx_len: int) -> Example:
    tokens, values, ids = _cut(body["tokens"], body["activations"], body.get("token_ids") or [],
                               body["max_position"], ctx_len)
    return Example(tokens, values, distance, ids)


def from_dashboard(dashboard: dict, config: ExampleConfig = ExampleConfig()) -> FeatureExamples:
    """Train and test examples of a feature from its dashboard body (store.dashboards.read_dashboard): train
    takes n_train · ratio_top top examples and the rest spread over the quantiles; test takes what is left of the
    quantiles (then of the top examples), so no test example was shown to the explainer."""
    n_q = config.n_quantiles
    top = [_example(b, 0.0, config.ctx_len) for b in dashboard.get("top_examples", [])]
    by_q: dict[int, list[Example]] = {}
    for b in dashboard.get("interval_examples", []):  # a dashboard's interval 9 holds the highest activations
        q = n_q - 1 - min(int(b.get("interval", 0)), n_q - 1)
        by_q.setdefault(q, []).append(_example(b, float(q), config.ctx_len))
    top = [x for x in top if x.max_activation > 0]
    if len(top) + sum(map(len, by_q.values())) < 4:
        raise TooFewExamples(f"feature {dashboard.get('feature')} fired on too few tokens of the dashboard corpus "
                             "to be explained (fewer than 4 examples); build its dashboard over more tokens")
    rng = random.Random(config.seed)
    n_top = min(len(top), round(config.n_train * config.ratio_top))
    train = top[:n_top]
    # round-robin over quantiles, highest first, until train is full
    pools = {q: rng.sample(xs, len(xs)) for q, xs in sorted(by_q.items())}
    while len(train) < config.n_train and any(pools.values()):
        for q in sorted(pools):
            if pools[q] and len(train) < config.n_train:
                train.append(pools[q].pop())
    test = [x for q in sorted(pools) for x in pools[q]]
    test += top[n_top:][: max(0, config.n_test - len(test))]
    if len(train) < config.n_train:  # a sparse feature: few quantile examples; share the top ones
        train += top[n_top:len(top)][: config.n_train - len(train)]
    rng.shuffle(test)
    return FeatureExamples(train=train, test=test[: config.n_test],
                           max_activation=float(dashboard.get("max_activation") or max(
                               (x.max_activation for x in train), default=0.0)))


def candidate_windows(dashboards_examples: Sequence[dict], n: int, seed: int, ctx_len: int,
                      exclude_feature: int | None = None) -> list[Example]:
    """Windows of the dashboard corpus (other features' example windows) that may serve as non-activating examples
    once the feature is checked to be zero on them. dashboards_examples: example bodies with tokens, token_ids,
    max_position and the `feature` they came from."""
    rng = random.Random(seed)
    pool = [b for b in dashboards_examples if b.get("feature") != exclude_feature]
    chosen = rng.sample(pool, min(n, len(pool)))
    out = []
    for b in chosen:
        tokens, _, ids = _cut(b["tokens"], b["activations"], b.get("token_ids") or [], b["max_position"], ctx_len)
        out.append(Example(tokens, [0.0] * len(tokens), -1.0, ids))
    return out


def keep_non_activating(candidates: list[Example], activations: list[list[float]], n: int) -> list[Example]:
    """The candidates on whose every token the feature is zero (activations: per candidate, the feature's
    activation on each of its tokens read as a prompt), at most n."""
    kept = [c for c, acts in zip(candidates, activations, strict=True) if max(acts, default=0.0) <= 0.0]
    return kept[:n]

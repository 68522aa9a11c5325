"""Scores of an explanation from per-example outcomes, as delphi's result analysis computes them: balanced
accuracy and F1 of predictions (a prediction counts as 1 at 0.5 or above; failed predictions are left out) and the
AUROC of a probability or similarity against whether the example activates; knows nothing of models."""

from __future__ import annotations

from collections.abc import Sequence

HEADLINE = {"detection": "balanced_accuracy", "fuzzing": "balanced_accuracy", "embedding": "auroc"}


def balanced_accuracy_f1(activating: Sequence[bool], predicted: Sequence[float | None]) -> dict:
    """(TPR + TNR) / 2 and F1 over the examples with a prediction; None where a class is missing."""
    pairs = [(a, p >= 0.5) for a, p in zip(activating, predicted, strict=True) if p is not None]
    tp = sum(1 for a, p in pairs if a and p)
    fp = sum(1 for a, p in pairs if not a and p)
    pos = sum(1 for a, _ in pairs if a)
    neg = len(pairs) - pos
    tn = neg - fp
    balanced = (tp / pos + tn / neg) / 2 if pos and neg else None
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / pos if pos else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"balanced_accuracy": balanced, "f1": f1 if pos else None, "precision": precision, "recall": recall,
            "n": len(pairs), "failed": len(activating) - len(pairs)}


def auroc(labels: Sequence[bool], scores: Sequence[float | None]) -> float | None:
    """The chance that a random activating example outscores a random non-activating one (ties count half): the
    area under the ROC curve, as sklearn's roc_auc_score. None without both classes or with a single value."""
    pairs = [(float(s), bool(y)) for y, s in zip(labels, scores, strict=True) if s is not None]
    pos = sum(1 for _, y in pairs if y)
    neg = len(pairs) - pos
    if not pos or not neg or len({s for s, _ in pairs}) <= 1:
        return None
    pairs.sort(key=lambda p: p[0])
    rank_sum, i = 0.0, 0
    while i < len(pairs):  # average ranks over ties
        j = i
        while j < len(pairs) and pairs[j][0] == pairs[i][0]:
            j += 1
        mid = (i + 1 + j) / 2  # ranks i+1..j, averaged
        rank_sum += mid * sum(1 for _, y in pairs[i:j] if y)
        i = j
    return (rank_sum - pos * (pos + 1) / 2) / (pos * neg)


def headline(scores: dict) -> float | None:
    """One number that ranks a feature's explanations: the mean of each scorer's headline metric (detection and
    fuzzing: balanced accuracy; embedding: AUROC), all on a scale where 0.5 is chance."""
    values = [scores[k][m] for k, m in HEADLINE.items() if k in scores and scores[k].get(m) is not None]
    return sum(values) / len(values) if values else None

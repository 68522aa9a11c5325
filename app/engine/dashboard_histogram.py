"""Activation histograms of every feature of one SAE on power-of-two scales, and what is read out of them: the
dashboard's histogram, and interval examples drawn from the per-bin reservoirs. Knows nothing of models, storage
or HTTP.

Per feature, HISTOGRAM_BINS fine bins cover [0, 2**log2_scale], the scale a power of two at least every
activation seen. When a larger activation arrives the scale doubles and pairs of bins merge, so counts stay exact,
and histograms at different scales merge exactly (shards of a Ray build). Each bin keeps SLOTS_PER_BIN reservoir
slots: the occurrences with the smallest hash keys, a uniform sample of the bin whatever the batch order.
"""

from __future__ import annotations

import torch

from app.engine.dashboard_examples import ExampleSlots

HISTOGRAM_BINS = 64  # fine bins per feature (a power of two)
SLOTS_PER_BIN = 2  # reservoir slots per fine bin


def bin_of(values: torch.Tensor, log2_scale: torch.Tensor) -> torch.Tensor:
    """The fine bin of each activation, given its feature's scale (both (n,))."""
    scale = torch.exp2(log2_scale.to(torch.float32))
    return (values / scale * HISTOGRAM_BINS).to(torch.int64).clamp_(0, HISTOGRAM_BINS - 1)


def merge_bins(hist: torch.Tensor, doublings: int) -> torch.Tensor:
    """(n, bins) counts over [0, s] -> counts over [0, s·2**doublings]: groups of 2**doublings bins add up, the
    top is empty."""
    n = hist.shape[0]
    group = min(1 << doublings, HISTOGRAM_BINS)
    merged = hist.view(n, HISTOGRAM_BINS // group, group).sum(-1)
    return torch.cat([merged, torch.zeros(n, HISTOGRAM_BINS - HISTOGRAM_BINS // group, dtype=hist.dtype)], 1)


def reservoir_shift(res: ExampleSlots, features: torch.Tensor, doublings: int) -> None:
    """Merge the reservoirs of these features as their bins merge by 2**doublings: per new bin, the SLOTS_PER_BIN
    smallest keys. Only the rows of features that hold an example are rewritten, in place (early in a pass many
    features rescale at each batch, most with nothing kept yet)."""
    features = features[(res.position[features] >= 0).any(1)]
    n = features.numel()
    if n == 0:
        return
    group = min(1 << doublings, HISTOGRAM_BINS)
    new_bins = HISTOGRAM_BINS // group
    keys = res.key[features].view(n, new_bins, group * SLOTS_PER_BIN)
    keep = keys.argsort(dim=2)[..., :SLOTS_PER_BIN]  # (n, new bins, slots), index within the group's slots
    base = (torch.arange(new_bins) * group * SLOTS_PER_BIN).view(1, -1, 1)
    index = (keep + base).view(n, -1)  # (n, new_bins·slots): the kept slots, moved to the front
    kept = new_bins * SLOTS_PER_BIN
    empty = ExampleSlots.empty(1, 1, res.dfa_heads.shape[-1], 0.0)
    for field, blank in zip(res.fields(), empty.fields(), strict=True):
        rows = field[features]  # (n, slots, ...)
        j = index.view(n, kept, *([1] * (rows.dim() - 2))).expand(n, kept, *rows.shape[2:])
        rows[:, :kept] = rows.gather(1, j)
        rows[:, kept:] = blank[0, 0]
        field[features] = rows


def histograms(hist: torch.Tensor, log2_scale: torch.Tensor) -> list[dict]:
    """Per feature (rows of hist (n, bins) and log2_scale (n,)), its counts of nonzero activations on the fine
    bins, up to the last non-empty bin."""
    last = torch.where(hist > 0, torch.arange(1, HISTOGRAM_BINS + 1), 0).amax(1).tolist()
    width = (torch.exp2(log2_scale.to(torch.float64)) / HISTOGRAM_BINS).tolist()
    return [{"bin_edges": [i * w for i in range(n + 1)], "counts": row[:n]}
            for row, n, w in zip(hist.tolist(), last, width, strict=True)]


def interval_slots(position: torch.Tensor, value: torch.Tensor, key: torch.Tensor, hist: torch.Tensor,
                   max_act: torch.Tensor, n_intervals: int = 10,
                   per: int = 5) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For n features (their reservoir slots' position, value and key, each (n, slots); hist (n, bins); max_act
    (n,)): up to `per` reservoir slots from
    each of `n_intervals` equal-width intervals of (0, max], by interval, largest activation first within one:
    (slot, interval, chosen), each (n, slots), the chosen ones a prefix of each row. Each fine bin's reservoir is a
    uniform sample of its occurrences; examples are drawn across bins in proportion to bin counts (weighted
    sampling by key**(1/weight)), so each interval's sample is close to uniform. All features at once."""
    top, pos, val = max_act, position, value
    filled = (pos >= 0) & (top > 0).unsqueeze(1)
    bins = torch.arange(HISTOGRAM_BINS).repeat_interleave(SLOTS_PER_BIN)  # (slots,)
    per_bin = filled.view(-1, HISTOGRAM_BINS, SLOTS_PER_BIN).sum(-1).float()  # (n, bins)
    weight = (hist.float() / per_bin.clamp_min(1))[:, bins]  # (n, slots)
    interval = (val / top.clamp_min(1e-30).unsqueeze(1) * n_intervals).long().clamp(0, n_intervals - 1)
    interval = interval.masked_fill(~filled, n_intervals)  # empty slots sort last and are never chosen
    priority = key.clamp_min(1e-300).log() / weight.clamp_min(1e-12)  # log(key**(1/w)): larger is chosen first
    by_priority = priority.argsort(dim=1, descending=True, stable=True)
    order = by_priority.gather(1, interval.gather(1, by_priority).argsort(dim=1, stable=True))  # interval, priority
    iv = interval.gather(1, order)
    first = torch.searchsorted(iv.contiguous(), iv.contiguous(), right=False)  # where each slot's interval starts
    chosen = (torch.arange(iv.shape[1]).expand_as(iv) - first < per) & (iv < n_intervals)
    # within an interval, the largest activation first: sort the chosen by (interval asc, value desc)
    v = val.gather(1, order).masked_fill(~chosen, float("-inf"))
    by_value = v.argsort(dim=1, descending=True, stable=True)
    final = by_value.gather(1, iv.gather(1, by_value).masked_fill(~chosen.gather(1, by_value), n_intervals + 1)
                            .argsort(dim=1, stable=True))
    return order.gather(1, final), iv.gather(1, final), chosen.gather(1, final)

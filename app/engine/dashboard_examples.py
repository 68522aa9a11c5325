"""Example slots for every feature of one SAE, and how a batch's occurrences get into them: the top-k slots (the
largest activations) and the reservoir slots (a uniform sample per histogram bin, for interval examples). A slot
holds what a dashboard shows of one example: its activation, corpus position, the feature's activations over a
window of tokens around it and its DFA. Token ids are not kept: the corpus gives them from the position. Knows
nothing of models, storage or HTTP.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

WINDOW_BEFORE, WINDOW_AFTER = 16, 4  # tokens shown before and after the example's token
WINDOW = WINDOW_BEFORE + 1 + WINDOW_AFTER
# Window activations and DFA are held as the store keeps them (float16): the dashboards are the same, and a slot
# costs 136 bytes instead of 300 (12 layers x 24,576 features x 148 slots: 5.9 GB instead of 13 GB).
KEPT_DTYPE = torch.float16


@dataclass
class ExampleSlots:
    """A block of example slots, leading dims (feature, slot)."""

    value: torch.Tensor  # (feature, slot) float32: activation at the example's token; -inf (top) or 0 when empty
    key: torch.Tensor  # (feature, slot) float64: reservoir key, or -position for the top-k's tie-break
    position: torch.Tensor  # (feature, slot) int64: corpus position of the example's token; -1 when empty
    acts: torch.Tensor  # (feature, slot, WINDOW) float16: the feature's activation on each window token
    dfa: torch.Tensor  # (feature, slot, WINDOW) float16: each source's attribution toward the token, over heads
    dfa_heads: torch.Tensor  # (feature, slot, head) float16: each head's whole contribution to the pre-activation
    pending_batch: torch.Tensor  # (feature, slot) int32: the batch whose tensors give this slot its DFA; -1: done
    pending_row: torch.Tensor  # (feature, slot) int32: the example's token within that batch (b·T + t)

    @staticmethod
    def empty(n_features: int, n_slots: int, n_heads: int, fill_value: float) -> ExampleSlots:
        shape = (n_features, n_slots)
        return ExampleSlots(
            value=torch.full(shape, fill_value), key=torch.full(shape, float("inf"), dtype=torch.float64),
            position=torch.full(shape, -1, dtype=torch.int64), acts=torch.zeros(*shape, WINDOW, dtype=KEPT_DTYPE),
            dfa=torch.zeros(*shape, WINDOW, dtype=KEPT_DTYPE), dfa_heads=torch.zeros(*shape, n_heads, dtype=KEPT_DTYPE),
            pending_batch=torch.full(shape, -1, dtype=torch.int32), pending_row=torch.zeros(shape, dtype=torch.int32),
        )

    @staticmethod
    def bytes_per_slot(n_heads: int) -> int:
        return 4 + 8 + 8 + 4 + 4 + 2 * (2 * WINDOW + n_heads)

    def take(self, idx: torch.Tensor) -> ExampleSlots:
        """Select slots per feature: idx (feature, slot') indexes dim 1."""
        def pick(t: torch.Tensor) -> torch.Tensor:
            j = idx.view(*idx.shape, *([1] * (t.dim() - 2))).expand(*idx.shape, *t.shape[2:])
            return t.gather(1, j)

        return ExampleSlots(*(pick(t) for t in self.fields()))

    def put(self, dest_feature: torch.Tensor, dest_slot: torch.Tensor, new: ExampleSlots) -> None:
        """Write new's entries (leading dim n) into slots (dest_feature, dest_slot), in place."""
        for target, value in zip(self.fields(), new.fields(), strict=True):
            target[dest_feature, dest_slot] = value.to(target.dtype)

    @staticmethod
    def cat(a: ExampleSlots, b: ExampleSlots) -> ExampleSlots:
        return ExampleSlots(*(torch.cat([x, y], 1) for x, y in zip(a.fields(), b.fields(), strict=True)))

    def fields(self) -> tuple[torch.Tensor, ...]:
        return (self.value, self.key, self.position, self.acts, self.dfa, self.dfa_heads, self.pending_batch,
                self.pending_row)


def position_keys(positions: torch.Tensor, features: torch.Tensor, d_sae: int) -> torch.Tensor:
    """Uniform [0, 1) keys from a 64-bit mix (splitmix64's finaliser) of position·d_sae + feature."""
    x = positions.to(torch.int64) * d_sae + features.to(torch.int64)
    x = x ^ (x >> 31)  # arithmetic shifts on int64: still a fixed bijection-like mix, the same on every machine
    x = x * -7046029254386353131  # 0x9E3779B97F4A7C15 as a signed int64; multiplication wraps
    x = x ^ (x >> 29)
    x = x * -4658895280553007687  # 0xBF58476D1CE4E5B9
    x = x ^ (x >> 32)
    return (x & ((1 << 52) - 1)).to(torch.float64) / float(1 << 52)


def window_token_ids(corpus: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """corpus (rows, T) and corpus positions (...) -> the window's token ids (..., WINDOW) int32, -1 outside the
    example's own row."""
    T = corpus.shape[1]
    row, t = positions // T, positions % T
    src = t.unsqueeze(-1) + torch.arange(-WINDOW_BEFORE, WINDOW_AFTER + 1)  # (..., WINDOW)
    inside = (src >= 0) & (src < T) & (positions >= 0).unsqueeze(-1)
    flat = row.clamp_min(0).unsqueeze(-1) * T + src.clamp(0, T - 1)
    return torch.where(inside, corpus.reshape(-1)[flat].to(torch.int32), -1)


@dataclass
class Admission:
    """Candidates that enter slots: candidate i goes to slot (dest_feature[i], dest_slot[i]); it is the occurrence
    of feature[i] at the batch's token row[i], with its activation value and slot key."""

    dest_feature: torch.Tensor
    dest_slot: torch.Tensor
    row: torch.Tensor
    feature: torch.Tensor
    value: torch.Tensor
    key: torch.Tensor


def _rank_in_groups(sorted_groups: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For group labels in sorted order: (distinct groups, each entry's group index, each entry's rank within it)."""
    groups, counts = torch.unique_consecutive(sorted_groups, return_counts=True)
    rank = torch.arange(len(sorted_groups)) - torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)
    return groups, torch.repeat_interleave(torch.arange(len(groups)), counts), rank


def admit_top_k(top: ExampleSlots, k: int, rows: torch.Tensor, feats: torch.Tensor, val: torch.Tensor,
                pos: torch.Tensor) -> Admission | None:
    """Which of this batch's occurrences (rows, feats, val; pos: the batch's corpus positions by row) enter the
    k largest per feature, ties going to the earlier corpus position, and which slots they replace. Only features
    that fired are looked at."""
    # an occurrence below its feature's k-th largest so far can never enter (ties can: they are decided below)
    live = val >= top.value.amin(1)[feats]
    rows, feats, val = rows[live], feats[live], val[live]
    if rows.numel() == 0:
        return None
    # per feature its k largest occurrences: one stable sort on an exact int64 key, feature ascending, then value
    # descending (a positive float32's bits order like the float), ties in row order (corpus order when positions
    # increase along rows; otherwise the rows are put in corpus order first)
    ahead = None if bool((pos[1:] > pos[:-1]).all()) else torch.argsort(pos[rows], stable=True)
    bits = val.contiguous().view(torch.int32).to(torch.int64)
    key = feats.to(torch.int64) * (1 << 31) + ((1 << 31) - 1 - bits)
    order = torch.argsort(key if ahead is None else key[ahead], stable=True)
    order = order if ahead is None else ahead[order]
    touched, group, rank = _rank_in_groups(feats[order])
    sel = rank < k
    cand_row = torch.zeros(len(touched), k, dtype=torch.int64)
    cand_val = torch.full((len(touched), k), float("-inf"))
    cand_row[group[sel], rank[sel]] = rows[order[sel]]
    cand_val[group[sel], rank[sel]] = val[order[sel]]
    cand_key = (-pos[cand_row].to(torch.float64)).masked_fill(cand_val == float("-inf"), float("-inf"))
    merged_val = torch.cat([top.value[touched], cand_val], 1)  # (touched, 2k): the kept slots, then candidates
    merged_key = torch.cat([top.key[touched], cand_key], 1)
    order = torch.argsort(merged_key, dim=1, descending=True, stable=True)
    order = order.gather(1, torch.argsort(merged_val.gather(1, order), dim=1, descending=True, stable=True))
    kept = torch.zeros_like(merged_key, dtype=torch.bool).scatter_(1, order[:, :k], True)
    dg, dslot = (~kept[:, :k]).nonzero(as_tuple=True)
    sg, sslot = kept[:, k:].nonzero(as_tuple=True)  # as many per feature as slots freed, in the same order
    return Admission(touched[dg], dslot, cand_row[sg, sslot], touched[sg], cand_val[sg, sslot], cand_key[sg, sslot])


def admit_reservoir(res: ExampleSlots, slots_per_bin: int, rows: torch.Tensor, feats: torch.Tensor,
                    bins: torch.Tensor, keys: torch.Tensor, n_bins: int) -> Admission | None:
    """Per touched (feature, bin), the slots_per_bin smallest keys among the kept and this batch's occurrences:
    which occurrences enter and which slots they replace (slot b·slots_per_bin + r of a feature is bin b's r-th).
    The values are left for the caller."""
    per = slots_per_bin
    bin_group = feats * n_bins + bins  # (n,) row of res.key.view(-1, per)
    # a key above the largest that its (feature, bin) holds can never enter (an empty slot's key is inf)
    live = keys <= res.key.view(-1, per).amax(1)[bin_group]
    rows, keys, bin_group = rows[live], keys[live], bin_group[live]
    if rows.numel() == 0:
        return None
    order = torch.argsort(bin_group.to(torch.float64) * 2 + keys)  # groups ascending, keys ascending within
    groups, group, rank = _rank_in_groups(bin_group[order])
    sel = rank < per
    cand_key = torch.full((len(groups), per), float("inf"), dtype=torch.float64)
    cand_row = torch.zeros(len(groups), per, dtype=torch.int64)
    cand_key[group[sel], rank[sel]], cand_row[group[sel], rank[sel]] = keys[order[sel]], rows[order[sel]]
    both = torch.cat([res.key.view(-1, per)[groups], cand_key], 1)  # (groups, 2·per)
    keep = both.argsort(dim=1, stable=True)[:, :per]  # smallest keys win; on ties (empty) the old slot stays
    kept = torch.zeros_like(both, dtype=torch.bool).scatter_(1, keep, True)
    dg, dr = (~kept[:, :per]).nonzero(as_tuple=True)
    sg, sr = kept[:, per:].nonzero(as_tuple=True)  # as many per group, in the same order
    return Admission(groups[dg] // n_bins, (groups[dg] % n_bins) * per + dr, cand_row[sg, sr], groups[sg] // n_bins,
                     torch.empty(0), cand_key[sg, sr])

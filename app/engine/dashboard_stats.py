"""Streaming dashboard statistics for every feature of one SAE at once: firing counts, max activation, a
histogram, the top-k examples and reservoir samples for interval examples, each example materialised (token
window, per-token activations, DFA toward its token) when admitted; knows nothing of storage or HTTP.

- Histogram: per feature, NB fine bins over [0, scale], scale a power of two >= every activation seen. When a
  larger activation arrives the scale doubles and pairs of bins merge, so counts stay exact, and states with
  different scales merge exactly (shards of a Ray build).
- Interval reservoirs: in each fine bin the R occurrences with the smallest key, a key being a hash of
  (corpus position, feature): a uniform sample of the bin that does not depend on batch order or sharding.
- Top-k: the k largest activations per feature (ties broken by corpus position).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from app.engine.saes import AttnSAE

NB = 64  # fine histogram bins per feature (a power of two)
R = 2  # reservoir slots per fine bin
LEFT, RIGHT = 16, 4  # example window: tokens before and after the example's token
W = LEFT + 1 + RIGHT


def position_keys(positions: torch.Tensor, features: torch.Tensor, d_sae: int) -> torch.Tensor:
    """Uniform [0, 1) keys from a 64-bit mix (splitmix64's finaliser) of position·d_sae + feature."""
    x = positions.to(torch.int64) * d_sae + features.to(torch.int64)
    x = x ^ (x >> 31)  # arithmetic shifts on int64: still a fixed bijection-like mix, the same on every machine
    x = x * -7046029254386353131  # 0x9E3779B97F4A7C15 as a signed int64; multiplication wraps
    x = x ^ (x >> 29)
    x = x * -4658895280553007687  # 0xBF58476D1CE4E5B9
    x = x ^ (x >> 32)
    return (x & ((1 << 52) - 1)).to(torch.float64) / float(1 << 52)


@dataclass
class Examples:
    """A block of materialised examples, leading dims (F, slots)."""

    value: torch.Tensor  # (F, S) activation at the example's token; -inf (top) / nan-free 0 (empty)
    key: torch.Tensor  # (F, S) float64: reservoir key (reservoirs) or -position (top-k tie-break)
    position: torch.Tensor  # (F, S) int64 corpus position of the example's token; -1 when empty
    token_ids: torch.Tensor  # (F, S, W) int32, -1 outside the sequence
    acts: torch.Tensor  # (F, S, W) float32
    dfa: torch.Tensor  # (F, S, W) float32: source attribution toward the example's token, summed over heads
    dfa_heads: torch.Tensor  # (F, S, H) float32: each head's whole contribution to the pre-activation

    @staticmethod
    def empty(F: int, S: int, H: int, fill_value: float) -> Examples:
        return Examples(
            value=torch.full((F, S), fill_value), key=torch.full((F, S), float("inf"), dtype=torch.float64),
            position=torch.full((F, S), -1, dtype=torch.int64), token_ids=torch.full((F, S, W), -1, dtype=torch.int32),
            acts=torch.zeros(F, S, W), dfa=torch.zeros(F, S, W), dfa_heads=torch.zeros(F, S, H),
        )

    def take(self, idx: torch.Tensor) -> Examples:
        """Select slots per feature: idx (F, S') indexes dim 1."""
        def g(t: torch.Tensor) -> torch.Tensor:
            j = idx.view(*idx.shape, *([1] * (t.dim() - 2))).expand(*idx.shape, *t.shape[2:])
            return t.gather(1, j)

        return Examples(*(g(t) for t in (self.value, self.key, self.position, self.token_ids, self.acts, self.dfa,
                                          self.dfa_heads)))

    @staticmethod
    def cat(a: Examples, b: Examples) -> Examples:
        return Examples(*(torch.cat([x, y], 1) for x, y in zip(a.fields(), b.fields(), strict=True)))

    def fields(self) -> tuple[torch.Tensor, ...]:
        return (self.value, self.key, self.position, self.token_ids, self.acts, self.dfa, self.dfa_heads)


class FeatureStats:
    """Everything a dashboard needs from the corpus, for all d_sae features of one SAE."""

    def __init__(self, sae: AttnSAE, k: int = 20) -> None:
        self.sae, self.k = sae, k
        F, H = sae.d_sae, sae.n_heads
        self.tokens_seen = 0
        self.fire_count = torch.zeros(F, dtype=torch.int64)
        self.max_act = torch.zeros(F)
        self.log2_scale = torch.full((F,), -30, dtype=torch.int64)  # histogram range [0, 2**log2_scale]
        self.hist = torch.zeros(F, NB, dtype=torch.int64)
        self.top = Examples.empty(F, k, H, float("-inf"))
        self.res = Examples.empty(F, NB * R, H, 0.0)  # slot b*R + r: bin b, r-th smallest key

    # --- one batch -------------------------------------------------------------------------------------------

    @torch.inference_mode()
    def update(self, ids: torch.Tensor, positions: torch.Tensor, z: torch.Tensor, pattern: torch.Tensor,
               v: torch.Tensor) -> None:
        """ids, positions (B, T): tokens and their corpus positions (BOS at t = 0 is skipped);
        z, v (B, T, head_index, d_head) and pattern (B, head_index, T, T) at this SAE's layer."""
        B, T = ids.shape
        acts, _ = self.sae.encode(z.flatten(-2))  # (B, T, F)
        acts[:, 0] = 0.0  # BOS
        flat = acts.reshape(B * T, -1)  # (N, F)
        self.tokens_seen += B * (T - 1)
        self.fire_count += (flat > 0).sum(0)
        self.max_act = torch.maximum(self.max_act, flat.max(0).values)
        self._rescale(torch.ceil(torch.log2(self.max_act.clamp_min(1e-9))).to(torch.int64))
        ctx = (ids, positions, z, pattern, v, acts)
        self._update_top(flat, positions.reshape(-1), ctx)
        self._update_reservoirs(flat, positions.reshape(-1), ctx)

    def _update_top(self, flat: torch.Tensor, pos: torch.Tensor, ctx) -> None:
        """Keep the k largest activations per feature. Slots are an unordered set (see sorted_top); only the
        slots whose example is replaced are written."""
        k = min(self.k, flat.shape[0])
        vals, rows = flat.topk(k, dim=0)  # (k, F)
        vals, rows = vals.T.contiguous(), rows.T.contiguous()  # (F, k)
        live = vals > 0
        # earlier corpus position wins ties; a candidate that does not fire never displaces an empty slot
        cand_key = (-pos[rows].to(torch.float64)).masked_fill(~live, float("-inf"))
        merged_val = torch.cat([self.top.value, vals.masked_fill(~live, float("-inf"))], 1)
        merged_key = torch.cat([self.top.key, cand_key], 1)
        order = torch.argsort(merged_key, dim=1, descending=True, stable=True)
        order = order.gather(1, torch.argsort(merged_val.gather(1, order), dim=1, descending=True, stable=True))
        kept = torch.zeros_like(merged_key, dtype=torch.bool).scatter_(1, order[:, : self.k], True)
        self._replace(self.top, ~kept[:, : self.k], kept[:, self.k :], rows, vals, cand_key, ctx)

    def _update_reservoirs(self, flat: torch.Tensor, pos: torch.Tensor, ctx) -> None:
        rows, feats = (flat > 0).nonzero(as_tuple=True)  # occurrences
        if rows.numel() == 0:
            return
        val = flat[rows, feats]
        scale = torch.exp2(self.log2_scale[feats].to(torch.float32))
        bins = (val / scale * NB).to(torch.int64).clamp_(0, NB - 1)
        self.hist.view(-1).index_add_(0, feats * NB + bins, torch.ones_like(bins))
        keys = position_keys(pos[rows], feats, flat.shape[1])
        slot_group = feats * NB + bins  # (n,)
        # the R smallest keys per (feature, bin) among this batch's occurrences
        order = torch.argsort(slot_group.to(torch.float64) * 2 + keys)  # groups ascending, keys ascending within
        g_sorted = slot_group[order]
        starts = torch.ones_like(g_sorted, dtype=torch.bool)
        starts[1:] = g_sorted[1:] != g_sorted[:-1]
        seg_start = torch.cummax(torch.where(starts, torch.arange(len(g_sorted)), 0), 0).values
        rank = torch.arange(len(g_sorted)) - seg_start
        pick = order[rank < R]
        F = flat.shape[1]
        cand_key = torch.full((F * NB * R,), float("inf"), dtype=torch.float64)
        cand_row = torch.zeros(F * NB * R, dtype=torch.int64)
        slots = slot_group[pick] * R + rank[rank < R]
        cand_key[slots], cand_row[slots] = keys[pick], rows[pick]
        both = torch.cat([self.res.key.view(F, NB, R), cand_key.view(F, NB, R)], 2)  # (F, NB, 2R)
        keep = both.argsort(dim=2, stable=True)[..., :R]  # smallest keys win; on ties (empty) the old slot stays
        kept = torch.zeros_like(both, dtype=torch.bool).scatter_(2, keep, True)
        cand_row = cand_row.view(F, NB * R)
        feats_grid = torch.arange(F).unsqueeze(1).expand_as(cand_row)
        self._replace(self.res, (~kept[..., :R]).reshape(F, -1), kept[..., R:].reshape(F, -1), cand_row,
                      flat[cand_row, feats_grid], cand_key.view(F, -1), ctx)

    def _replace(self, ex: Examples, evicted: torch.Tensor, kept_new: torch.Tensor, rows: torch.Tensor,
                 vals: torch.Tensor, keys: torch.Tensor, ctx) -> None:
        """Write the kept candidates (F, S_new) into the evicted slots (F, S_old) of `ex`, in place. Per feature
        (and, for reservoirs, per bin) as many slots are evicted as candidates kept, and nonzero() lists both in
        the same feature-major order, so the i-th evicted slot takes the i-th kept candidate."""
        dest = evicted.nonzero(as_tuple=True)
        if dest[0].numel() == 0:
            return
        src = kept_new.nonzero(as_tuple=True)
        new = self._materialise(rows[src], src[0], vals[src], keys[src], ctx)
        for target, value in zip(ex.fields(), new.fields(), strict=True):
            target[dest] = value

    # --- materialising examples ------------------------------------------------------------------------------

    def _materialise(self, r: torch.Tensor, f: torch.Tensor, vals: torch.Tensor, keys: torch.Tensor,
                     ctx) -> Examples:
        """Examples (leading dim n) for the (row, feature) pairs given; rows index the batch's B·T tokens."""
        ids, positions, z, pattern, v, acts = ctx
        B, T = ids.shape
        b, t = r // T, r % T
        offs = torch.arange(-LEFT, RIGHT + 1)
        src = t.unsqueeze(1) + offs  # (n, W)
        inside = (src >= 0) & (src < T)
        src_c = src.clamp(0, T - 1)
        bb = b.unsqueeze(1).expand_as(src_c)
        tok = torch.where(inside, ids[bb, src_c].to(torch.int32), -1)
        win_acts = torch.where(inside, acts[bb, src_c, f.unsqueeze(1).expand_as(src_c)], 0.0)
        n_heads, d_head = self.sae.n_heads, self.sae.d_head
        if v.shape[2] != n_heads:  # grouped-query attention: each key/value head serves several heads
            v = v.repeat_interleave(n_heads // v.shape[2], dim=2)
        att = pattern[b.unsqueeze(1), :, t.unsqueeze(1), src_c]  # (n, W, head)
        if len(r) * W * d_head > 4 * v.shape[0] * T * self.sae.d_sae:
            # many examples: project the whole batch onto every feature once, then gather
            w_all = self.sae.W_eff.view(n_heads, d_head, -1)  # (head, d_head, F)
            vproj_all = torch.einsum("bshd,hdf->bshf", v.to(w_all.dtype), w_all)  # (B, T, head, F)
            ff = f.view(-1, 1, 1).expand(-1, W, n_heads)
            hh = torch.arange(n_heads).view(1, 1, -1).expand_as(ff)
            vproj = vproj_all[bb.unsqueeze(-1).expand_as(ff), src_c.unsqueeze(-1).expand_as(ff), hh, ff]
            dfa = torch.where(inside, (att * vproj).sum(-1), 0.0)
            zproj = torch.einsum("nhd,hdn->nh", z[b, t].to(w_all.dtype), w_all[:, :, f])
            heads = zproj
        else:
            dfa = torch.zeros(len(r), W)
            heads = torch.zeros(len(r), n_heads)
            for chunk in torch.arange(len(r)).split(4096):  # bounded memory: (chunk, W, head, d_head)
                w = self.sae.W_eff[:, f[chunk]].T.reshape(-1, n_heads, d_head)  # (c, head, d_head)
                vproj = torch.einsum("cwhd,chd->cwh", v[bb[chunk], src_c[chunk]].to(w.dtype), w)
                dfa[chunk] = torch.where(inside[chunk], (att[chunk] * vproj).sum(-1), 0.0)
                heads[chunk] = torch.einsum("chd,chd->ch", z[b[chunk], t[chunk]].to(w.dtype), w)
        return Examples(value=vals.to(torch.float32), key=keys.to(torch.float64), position=positions[b, t],
                        token_ids=tok, acts=win_acts.to(torch.float32), dfa=dfa, dfa_heads=heads)

    def sorted_top(self) -> Examples:
        """The top examples largest first (ties: earlier corpus position first), empty slots last."""
        order = torch.argsort(self.top.key, dim=1, descending=True, stable=True)
        order = order.gather(1, torch.argsort(self.top.value.gather(1, order), dim=1, descending=True, stable=True))
        return self.top.take(order)

    # --- scale changes and merging ---------------------------------------------------------------------------

    def _rescale(self, wanted: torch.Tensor) -> None:
        """Raise each feature's histogram scale to 2**wanted where larger, merging bins (and reservoirs)."""
        shift = (wanted - self.log2_scale).clamp_min(0)
        for j in shift.unique().tolist():
            if j == 0:
                continue
            f = (shift == j).nonzero(as_tuple=True)[0]
            self.hist[f] = merge_bins(self.hist[f], j)
            self.res = reservoir_shift(self.res, f, j)
            self.log2_scale[f] += j

    def merge(self, other: FeatureStats) -> None:
        """Fold another shard's statistics into these; the result does not depend on how the corpus was split."""
        self.tokens_seen += other.tokens_seen
        self.fire_count += other.fire_count
        self.max_act = torch.maximum(self.max_act, other.max_act)
        wanted = torch.maximum(self.log2_scale, other.log2_scale)
        self._rescale(wanted)
        other._rescale(wanted)
        self.hist += other.hist
        F = self.sae.d_sae
        both = Examples.cat(self.res, other.res)
        key = both.key.view(F, 2, NB, R).permute(0, 2, 1, 3).reshape(F, NB, 2 * R)
        keep = key.argsort(dim=2)[..., :R]  # (F, NB, R) in [0, 2R): (which, r) = divmod(keep, R)
        which, r = keep // R, keep % R
        index = which * NB * R + torch.arange(NB).view(1, NB, 1) * R + r
        self.res = both.take(index.view(F, -1))
        merged = Examples.cat(self.top, other.top)
        order = torch.argsort(merged.key, dim=1, descending=True, stable=True)
        order = order.gather(1, torch.argsort(merged.value.gather(1, order), dim=1, descending=True, stable=True))
        self.top = merged.take(order[:, : self.k])


def merge_bins(hist: torch.Tensor, j: int) -> torch.Tensor:
    """(n, NB) counts over [0, s] -> counts over [0, s·2**j]: groups of 2**j bins add up, the top is empty."""
    n = hist.shape[0]
    g = min(1 << j, NB)
    merged = hist.view(n, NB // g, g).sum(-1)
    return torch.cat([merged, torch.zeros(n, NB - NB // g, dtype=hist.dtype)], 1)


def reservoir_shift(res: Examples, f: torch.Tensor, j: int) -> Examples:
    """Merge the reservoirs of features f as their bins merge by 2**j: per new bin, the R smallest keys."""
    n = f.numel()
    g = min(1 << j, NB)
    sub = res.take(torch.arange(NB * R).expand(res.value.shape[0], -1))  # copy
    keys = res.key[f].view(n, NB // g, g * R)
    keep = keys.argsort(dim=2)[..., :R]  # (n, NB/g, R), index within the group of g·R slots
    base = (torch.arange(NB // g) * g * R).view(1, -1, 1)
    index = (keep + base).view(n, -1)  # (n, NB/g·R)
    chosen = Examples(*(t[f] for t in res.fields())).take(index)
    pad = Examples.empty(n, (NB - NB // g) * R, res.dfa_heads.shape[-1], 0.0)
    merged = Examples.cat(chosen, pad)
    for dst, src in zip(sub.fields(), merged.fields(), strict=True):
        dst[f] = src
    return sub


# --- reading results out, and saving state for a resumable build ------------------------------------------------

def histogram(stats: FeatureStats, f: int) -> dict:
    """Counts of nonzero activations on the fine bins, up to the last non-empty bin."""
    counts = stats.hist[f]
    nonzero = counts.nonzero()
    last = int(nonzero.max()) + 1 if nonzero.numel() else 0
    width = 2.0 ** int(stats.log2_scale[f]) / NB
    return {"bin_edges": [i * width for i in range(last + 1)], "counts": counts[:last].tolist()}


def interval_slots(stats: FeatureStats, f: int, n_intervals: int = 10, per: int = 5) -> list[tuple[int, int]]:
    """(interval, reservoir slot) pairs: up to `per` examples from each of `n_intervals` equal-width intervals of
    (0, max]. Each fine bin's reservoir is a uniform sample of its occurrences; examples are drawn across bins in
    proportion to bin counts (weighted sampling by key**(1/weight)), so each interval's sample is close to uniform."""
    top = float(stats.max_act[f])
    if top <= 0:
        return []
    pos, val, key = stats.res.position[f], stats.res.value[f], stats.res.key[f]
    filled = pos >= 0
    bins = torch.arange(NB).repeat_interleave(R)
    per_bin = torch.zeros(NB).index_add_(0, bins, filled.float())
    weight = stats.hist[f].float()[bins] / per_bin[bins].clamp_min(1)
    interval = (val / top * n_intervals).long().clamp(0, n_intervals - 1)
    priority = key.clamp_min(1e-300).log() / weight.clamp_min(1e-12)  # log(key**(1/w)): larger is chosen first
    out = []
    for i in range(n_intervals):
        slots = (filled & (interval == i)).nonzero(as_tuple=True)[0]
        chosen = slots[priority[slots].argsort(descending=True)[:per]]
        chosen = chosen[val[chosen].argsort(descending=True)]
        out += [(i, int(s)) for s in chosen]
    return out


def state_dict(stats: FeatureStats) -> dict[str, torch.Tensor]:
    out = {"tokens_seen": torch.tensor(stats.tokens_seen), "fire_count": stats.fire_count, "max_act": stats.max_act,
           "log2_scale": stats.log2_scale, "hist": stats.hist}
    for prefix, ex in (("top", stats.top), ("res", stats.res)):
        for name, t in zip(("value", "key", "position", "token_ids", "acts", "dfa", "dfa_heads"), ex.fields(),
                           strict=True):
            out[f"{prefix}.{name}"] = t.contiguous()
    return out


def load_state_dict(stats: FeatureStats, state: dict[str, torch.Tensor]) -> None:
    stats.tokens_seen = int(state["tokens_seen"])
    stats.fire_count, stats.max_act = state["fire_count"].clone(), state["max_act"].clone()
    stats.log2_scale, stats.hist = state["log2_scale"].clone(), state["hist"].clone()
    for prefix in ("top", "res"):
        names = ("value", "key", "position", "token_ids", "acts", "dfa", "dfa_heads")
        setattr(stats, prefix, Examples(*(state[f"{prefix}.{n}"].clone() for n in names)))

"""Streaming dashboard statistics for every feature of one SAE at once: firing counts, max activation, a
histogram, the top-k examples and reservoir samples for interval examples, each example materialised (token
window, per-token activations, DFA toward its token) when admitted; knows nothing of storage or HTTP.

- Histogram: per feature, NB fine bins over [0, scale], scale a power of two >= every activation seen. When a
  larger activation arrives the scale doubles and pairs of bins merge, so counts stay exact, and states with
  different scales merge exactly (shards of a Ray build).
- Interval reservoirs: in each fine bin the R occurrences with the smallest key, a key being a hash of
  (corpus position, feature): a uniform sample of the bin that does not depend on batch order or sharding.
- Top-k: the k largest activations per feature (ties broken by corpus position).
- Deferred DFA: an admitted example gets its window, activations and place at once, but its DFA (the costly part)
  only once it has survived `defer` more batches (or at the end, or before a checkpoint); the last `defer` batches'
  z, pattern and v are kept for that. Most examples admitted early are evicted before then and never cost a DFA.
  An example's DFA depends only on its token and feature, so when it is computed does not change it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from app.engine.saes import AttnSAE

NB = 64  # fine histogram bins per feature (a power of two)
R = 2  # reservoir slots per fine bin
LEFT, RIGHT = 16, 4  # example window: tokens before and after the example's token
DFA_COLUMNS = 64  # features per matrix product in _dfa
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
    pend_batch: torch.Tensor  # (F, S) int64: the batch whose tensors will give this slot its DFA; -1: it has it
    pend_row: torch.Tensor  # (F, S) int64: the example's token within that batch (b·T + t)

    @staticmethod
    def empty(F: int, S: int, H: int, fill_value: float) -> Examples:
        return Examples(
            value=torch.full((F, S), fill_value), key=torch.full((F, S), float("inf"), dtype=torch.float64),
            position=torch.full((F, S), -1, dtype=torch.int64), token_ids=torch.full((F, S, W), -1, dtype=torch.int32),
            acts=torch.zeros(F, S, W), dfa=torch.zeros(F, S, W), dfa_heads=torch.zeros(F, S, H),
            pend_batch=torch.full((F, S), -1, dtype=torch.int64), pend_row=torch.zeros(F, S, dtype=torch.int64),
        )

    def take(self, idx: torch.Tensor) -> Examples:
        """Select slots per feature: idx (F, S') indexes dim 1."""
        def g(t: torch.Tensor) -> torch.Tensor:
            j = idx.view(*idx.shape, *([1] * (t.dim() - 2))).expand(*idx.shape, *t.shape[2:])
            return t.gather(1, j)

        return Examples(*(g(t) for t in self.fields()))

    @staticmethod
    def cat(a: Examples, b: Examples) -> Examples:
        return Examples(*(torch.cat([x, y], 1) for x, y in zip(a.fields(), b.fields(), strict=True)))

    def fields(self) -> tuple[torch.Tensor, ...]:
        return (self.value, self.key, self.position, self.token_ids, self.acts, self.dfa, self.dfa_heads,
                self.pend_batch, self.pend_row)


class BatchActs:
    """One batch's activations over its N = B·T tokens: for TopK SAEs the k largest per token (values, indices),
    where finding every nonzero activation needs no search through an (N, d_sae) matrix; for the other
    architectures that matrix."""

    def __init__(self, sae: AttnSAE, x: torch.Tensor, skip: torch.Tensor) -> None:
        """x (N, d_in): hook_z flattened; skip (N,) bool: tokens whose activations count as zero (BOS)."""
        self.d_sae = sae.d_sae
        if sae.architecture == "topk":
            values, self.indices = sae.encode_topk(x)  # (N, k) each
            self.values = values.masked_fill(skip.unsqueeze(1), 0.0)
            self.dense: torch.Tensor | None = None  # (N, d_sae), made on first use by at()
        else:
            acts, _ = sae.encode(x)
            self.indices, self.dense = None, acts.masked_fill(skip.unsqueeze(1), 0.0)

    def cpu(self) -> BatchActs:
        """The same activations, on the CPU (where the statistics are kept)."""
        for name in ("values", "indices", "dense"):
            t = getattr(self, name, None)
            if t is not None:
                setattr(self, name, t.cpu())
        return self

    def occurrences(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(rows, features, values) of every nonzero activation, by row, then by feature."""
        if self.indices is None:
            rows, feats = (self.dense > 0).nonzero(as_tuple=True)
            return rows, feats, self.dense[rows, feats]
        fired = self.values > 0
        key = torch.where(fired, self.indices, self.d_sae)  # fired features in ascending order, the others last
        key, order = key.sort(dim=1)
        rows, col = (key < self.d_sae).nonzero(as_tuple=True)
        return rows, key[rows, col], self.values.gather(1, order)[rows, col]

    def at(self, rows: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
        """The activation of feature feats[...] at token rows[...] (any shape, the same for both)."""
        if self.dense is None:  # made once, only when a batch admits examples: a scatter, no search over (N, d_sae)
            self.dense = self.values.new_zeros(len(self.values), self.d_sae).scatter_(1, self.indices, self.values)
        return self.dense[rows, feats]


STORED = ("value", "key", "position", "token_ids", "acts", "dfa", "dfa_heads")  # fields() kept in checkpoints


class FeatureStats:
    """Everything a dashboard needs from the corpus, for all d_sae features of one SAE."""

    def __init__(self, sae: AttnSAE, k: int = 20, defer: int = 8) -> None:
        """defer: batches an admitted example waits for its DFA (0: at the end of its own batch)."""
        self.sae, self.k, self.defer = sae, k, defer
        self._batches: dict[int, tuple[torch.Tensor, ...]] = {}  # batch number -> (z, pattern, v), kept for DFAs
        self._batch_no = 0
        self._w_rows: torch.Tensor | None = None  # W_eff transposed, made on first use
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
        z, v (B, T, head_index, d_head) and pattern (B, head_index, T, T) at this SAE's layer, on any device: the
        encode runs where the SAE lives (a GPU), the bookkeeping on the CPU."""
        ids, positions = ids.cpu(), positions.cpu()
        B, T = ids.shape
        bos = (torch.arange(B * T, device=z.device) % T) == 0
        acts = BatchActs(self.sae, z.reshape(B * T, -1), bos).cpu()
        z, pattern, v = z.cpu(), pattern.cpu(), v.cpu()
        F = self.sae.d_sae
        self.tokens_seen += B * (T - 1)
        rows, feats, val = acts.occurrences()  # everything below works on these alone
        self.fire_count += torch.bincount(feats, minlength=F)
        self.max_act.scatter_reduce_(0, feats, val, reduce="amax")
        self._rescale(torch.ceil(torch.log2(self.max_act.clamp_min(1e-9))).to(torch.int64))
        ctx = (ids, positions, acts, self._batch_no)
        self._batches[self._batch_no] = (z, pattern, v)
        if rows.numel():
            pos = positions.reshape(-1)
            self._update_top(rows, feats, val, pos, ctx)
            self._update_reservoirs(rows, feats, val, pos, ctx)
        self._batch_no += 1
        self.flush(before=self._batch_no - self.defer)

    def _update_top(self, rows: torch.Tensor, feats: torch.Tensor, val: torch.Tensor, pos: torch.Tensor,
                    ctx) -> None:
        """Keep the k largest activations per feature (ties: the earlier corpus position). Only features that fired
        in this batch are looked at, and only the slots whose example is replaced are written."""
        # this batch's candidates: per feature its k largest occurrences, by (feature, value desc, position asc)
        # one stable sort on an exact int64 key: feature ascending, then value descending (a positive float32's bits
        # order like the float), then ties in row order, which is corpus order when positions increase along rows
        # an occurrence below its feature's k-th largest so far can never enter (ties can: they are decided below)
        live = val >= self.top.value.amin(1)[feats]
        rows, feats, val = rows[live], feats[live], val[live]
        if rows.numel() == 0:
            return
        ahead = None if bool((pos[1:] > pos[:-1]).all()) else torch.argsort(pos[rows], stable=True)
        bits = val.contiguous().view(torch.int32).to(torch.int64)
        key = feats.to(torch.int64) * (1 << 31) + ((1 << 31) - 1 - bits)
        order = torch.argsort(key if ahead is None else key[ahead], stable=True)
        order = order if ahead is None else ahead[order]
        f_sorted = feats[order]
        touched, counts = torch.unique_consecutive(f_sorted, return_counts=True)
        rank = torch.arange(len(order)) - torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)
        sel = rank < self.k
        group = torch.repeat_interleave(torch.arange(len(touched)), counts)[sel]
        cand_row = torch.zeros(len(touched), self.k, dtype=torch.int64)
        cand_val = torch.full((len(touched), self.k), float("-inf"))
        cand_row[group, rank[sel]] = rows[order[sel]]
        cand_val[group, rank[sel]] = val[order[sel]]
        cand_key = (-pos[cand_row].to(torch.float64)).masked_fill(cand_val == float("-inf"), float("-inf"))
        merged_val = torch.cat([self.top.value[touched], cand_val], 1)  # (G, 2k)
        merged_key = torch.cat([self.top.key[touched], cand_key], 1)
        order = torch.argsort(merged_key, dim=1, descending=True, stable=True)
        order = order.gather(1, torch.argsort(merged_val.gather(1, order), dim=1, descending=True, stable=True))
        kept = torch.zeros_like(merged_key, dtype=torch.bool).scatter_(1, order[:, : self.k], True)
        dg, dslot = (~kept[:, : self.k]).nonzero(as_tuple=True)
        sg, sslot = kept[:, self.k :].nonzero(as_tuple=True)  # as many per feature, in the same order
        self._write(self.top, touched[dg], dslot, cand_row[sg, sslot], touched[sg], cand_val[sg, sslot],
                    cand_key[sg, sslot], ctx)

    def _update_reservoirs(self, rows: torch.Tensor, feats: torch.Tensor, val: torch.Tensor, pos: torch.Tensor,
                           ctx) -> None:
        """Histogram counts, and per touched (feature, bin) the R smallest keys of old and new occurrences."""
        scale = torch.exp2(self.log2_scale[feats].to(torch.float32))
        bins = (val / scale * NB).to(torch.int64).clamp_(0, NB - 1)
        self.hist.view(-1).index_add_(0, feats * NB + bins, torch.ones_like(bins))
        keys = position_keys(pos[rows], feats, self.sae.d_sae)
        slot_group = feats * NB + bins  # (n,)
        # a key above the largest that its (feature, bin) holds can never enter (an empty slot's key is inf)
        live = keys <= self.res.key.view(-1, R).amax(1)[slot_group]
        rows, feats, keys, slot_group = rows[live], feats[live], keys[live], slot_group[live]
        if rows.numel() == 0:
            return
        # the R smallest keys per (feature, bin) among this batch's occurrences
        order = torch.argsort(slot_group.to(torch.float64) * 2 + keys)  # groups ascending, keys ascending within
        g_sorted = slot_group[order]
        groups, counts = torch.unique_consecutive(g_sorted, return_counts=True)
        rank = torch.arange(len(order)) - torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)
        sel = rank < R
        group = torch.repeat_interleave(torch.arange(len(groups)), counts)[sel]
        cand_key = torch.full((len(groups), R), float("inf"), dtype=torch.float64)
        cand_row = torch.zeros(len(groups), R, dtype=torch.int64)
        cand_key[group, rank[sel]], cand_row[group, rank[sel]] = keys[order[sel]], rows[order[sel]]
        old_key = self.res.key.view(-1, R)[groups]  # (G, R): slot b*R + r of feature f is row f*NB + b
        both = torch.cat([old_key, cand_key], 1)  # (G, 2R)
        keep = both.argsort(dim=1, stable=True)[:, :R]  # smallest keys win; on ties (empty) the old slot stays
        kept = torch.zeros_like(both, dtype=torch.bool).scatter_(1, keep, True)
        dg, dr = (~kept[:, :R]).nonzero(as_tuple=True)
        sg, sr = kept[:, R:].nonzero(as_tuple=True)  # as many per group, in the same order
        src_row, src_f = cand_row[sg, sr], groups[sg] // NB
        self._write(self.res, groups[dg] // NB, (groups[dg] % NB) * R + dr, src_row, src_f,
                    ctx[2].at(src_row, src_f), cand_key[sg, sr], ctx)

    def _write(self, ex: Examples, dest_f: torch.Tensor, dest_slot: torch.Tensor, rows: torch.Tensor,
               f: torch.Tensor, vals: torch.Tensor, keys: torch.Tensor, ctx) -> None:
        """Materialise the candidates (row of the batch, feature f) into slots (dest_f, dest_slot) of ex, in place."""
        if dest_f.numel() == 0:
            return
        new = self._materialise(rows, f, vals, keys, ctx)
        for target, value in zip(ex.fields(), new.fields(), strict=True):
            target[dest_f, dest_slot] = value

    # --- materialising examples ------------------------------------------------------------------------------

    def _materialise(self, r: torch.Tensor, f: torch.Tensor, vals: torch.Tensor, keys: torch.Tensor,
                     ctx) -> Examples:
        """Examples (leading dim n) for the (row, feature) pairs given; rows index the batch's B·T tokens. The DFA
        fields are left for flush()."""
        ids, positions, acts, batch_no = ctx
        B, T = ids.shape
        b, t = r // T, r % T
        src = t.unsqueeze(1) + torch.arange(-LEFT, RIGHT + 1)  # (n, W)
        inside = (src >= 0) & (src < T)
        src_c = src.clamp(0, T - 1)
        bb = b.unsqueeze(1).expand_as(src_c)
        tok = torch.where(inside, ids[bb, src_c].to(torch.int32), -1)
        win_acts = torch.where(inside, acts.at(bb * T + src_c, f.unsqueeze(1).expand_as(src_c)), 0.0)
        n, H = len(r), self.sae.n_heads
        return Examples(value=vals.to(torch.float32), key=keys.to(torch.float64), position=positions[b, t],
                        token_ids=tok, acts=win_acts.to(torch.float32), dfa=torch.zeros(n, W),
                        dfa_heads=torch.zeros(n, H), pend_batch=torch.full((n,), batch_no, dtype=torch.int64),
                        pend_row=r.to(torch.int64))

    # --- deferred DFA ----------------------------------------------------------------------------------------

    def flush(self, before: int | None = None) -> None:
        """Compute the DFA of every example still waiting on a batch numbered below `before` (None: all of them)
        and forget those batches' tensors."""
        limit = self._batch_no if before is None else before
        for ex in (self.top, self.res):
            waiting = (ex.pend_batch >= 0) & (ex.pend_batch < limit)
            fs, slots = waiting.nonzero(as_tuple=True)
            if fs.numel() == 0:
                continue
            batch_of = ex.pend_batch[fs, slots]
            for batch_no in batch_of.unique().tolist():
                m = batch_of == batch_no
                dfa, heads = self._dfa(self._batches[batch_no], ex.pend_row[fs[m], slots[m]], fs[m])
                ex.dfa[fs[m], slots[m]] = dfa
                ex.dfa_heads[fs[m], slots[m]] = heads
            ex.pend_batch[fs, slots] = -1
        for batch_no in [k for k in self._batches if k < limit]:
            del self._batches[batch_no]

    def _dfa(self, batch: tuple[torch.Tensor, ...], r: torch.Tensor, f: torch.Tensor,
             piece: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
        """For n examples (row r of the batch's B·T tokens, feature f): the DFA toward the example's token from each
        source in its window, summed over heads (n, W), and each head's whole contribution (n, head).

        Per sequence of the batch, the projections v_s^h · W_eff[h-slice, f] of all its sources onto the features of
        its examples come from one matrix product per head of a fixed shape, (T, d_head) @ (d_head, DFA_COLUMNS)
        (the features in chunks of DFA_COLUMNS, the last one padded with zero columns); an example's DFA is then its
        attention row times those projections, summed over heads in a fixed order. A causal source after the token
        gets no attention, so its DFA is zero. An example's numbers depend only on its token and feature, never on
        which other examples share its chunk or call (tested bit for bit)."""
        z, pattern, v = batch  # (B, T, head, d_head), (B, head, T, T), (B, T, kv_head, d_head)
        B, T = z.shape[:2]
        H, d_head, F = self.sae.n_heads, self.sae.d_head, self.sae.d_sae
        if v.shape[2] != H:  # grouped-query attention: each key/value head serves several heads
            v = v.repeat_interleave(H // v.shape[2], dim=2)
        if self._w_rows is None:
            self._w_rows = self.sae.W_eff.T.contiguous().cpu()  # (F, head·d_head): a feature's encoder column per row
        dtype = self._w_rows.dtype
        b, t = r // T, r % T
        # columns: the distinct (sequence, feature) pairs, DFA_COLUMNS to a chunk, each chunk within one sequence
        pairs, inverse = torch.unique(b * F + f, return_inverse=True)  # by sequence, then feature
        pair_b, pair_f = pairs // F, pairs % F
        counts = torch.bincount(pair_b, minlength=B)
        rank = torch.arange(len(pairs)) - (torch.cumsum(counts, 0) - counts)[pair_b]
        per_seq = (counts + DFA_COLUMNS - 1) // DFA_COLUMNS
        chunk = (torch.cumsum(per_seq, 0) - per_seq)[pair_b] + rank // DFA_COLUMNS
        column = rank % DFA_COLUMNS
        n_chunks = int(per_seq.sum())
        # the chunks' encoder columns, (chunks, head, DFA_COLUMNS, d_head), zero where a chunk has no feature
        w = torch.zeros(n_chunks * H * DFA_COLUMNS, d_head, dtype=dtype)
        slot = ((chunk.unsqueeze(1) * H + torch.arange(H)) * DFA_COLUMNS + column.unsqueeze(1)).view(-1)
        w.index_copy_(0, slot, self._w_rows.index_select(0, pair_f).view(-1, d_head))
        w = w.view(n_chunks, H, DFA_COLUMNS, d_head)
        seq_of_chunk = torch.repeat_interleave(torch.arange(B), per_seq)
        v_heads = v.to(dtype).permute(0, 2, 1, 3)  # (B, head, T, d_head)
        proj = torch.empty(n_chunks, H, T, DFA_COLUMNS, dtype=dtype)
        for lo in range(0, n_chunks, piece):  # bounded memory for long contexts
            hi = min(lo + piece, n_chunks)
            torch.matmul(v_heads[seq_of_chunk[lo:hi]], w[lo:hi].transpose(-1, -2), out=proj[lo:hi])
        # each example's sources t-LEFT .. t: projections and attention, (n, LEFT+1, head), read by flat index
        src = t.unsqueeze(1) + torch.arange(-LEFT, 1)
        inside = src >= 0
        src = src.clamp_min(0).unsqueeze(2)  # (n, LEFT+1, 1)
        h = torch.arange(H)
        c, j = chunk[inverse].view(-1, 1, 1), column[inverse].view(-1, 1, 1)
        at_proj = ((c * H + h) * T + src) * DFA_COLUMNS + j
        at_pattern = ((b.view(-1, 1, 1) * H + h) * T + t.view(-1, 1, 1)) * T + src
        flat_proj, flat_pattern = proj.view(-1), pattern.reshape(-1)
        terms = (flat_proj.index_select(0, at_proj.view(-1)) * flat_pattern.index_select(0, at_pattern.view(-1))
                 .to(dtype)).view(at_proj.shape)
        total = terms[..., 0]
        for head in range(1, H):  # a fixed order of addition, whatever the shape of the call
            total = total + terms[..., head]
        dfa = torch.zeros(len(r), W, dtype=dtype)
        dfa[:, : LEFT + 1] = total.masked_fill(~inside, 0.0)
        w_all = self._w_rows.index_select(0, f).view(-1, H, d_head)  # (n, head, d_head)
        heads = (z[b, t].to(dtype) * w_all).sum(-1)
        return dfa.float(), heads

    def sorted_top(self) -> Examples:
        """The top examples largest first (ties: earlier corpus position first), empty slots last."""
        self.flush()
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
        self.flush()
        other.flush()
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
    """Merge the reservoirs of features f as their bins merge by 2**j: per new bin, the R smallest keys. Only the
    rows of f are rewritten, in place."""
    n = f.numel()
    g = min(1 << j, NB)
    keys = res.key[f].view(n, NB // g, g * R)
    keep = keys.argsort(dim=2)[..., :R]  # (n, NB/g, R), index within the group of g·R slots
    base = (torch.arange(NB // g) * g * R).view(1, -1, 1)
    index = (keep + base).view(n, -1)  # (n, NB/g·R)
    chosen = Examples(*(t[f] for t in res.fields())).take(index)
    pad = Examples.empty(n, (NB - NB // g) * R, res.dfa_heads.shape[-1], 0.0)
    merged = Examples.cat(chosen, pad)
    for dst, src in zip(res.fields(), merged.fields(), strict=True):
        dst[f] = src
    return res


# --- reading results out, and saving state for a resumable build ------------------------------------------------

def histograms(stats: FeatureStats, features: torch.Tensor) -> list[dict]:
    """Per feature, its counts of nonzero activations on the fine bins, up to the last non-empty bin."""
    counts = stats.hist[features]  # (n, NB)
    last = torch.where(counts > 0, torch.arange(1, NB + 1), 0).amax(1).tolist()
    width = (torch.exp2(stats.log2_scale[features].to(torch.float64)) / NB).tolist()
    return [{"bin_edges": [i * w for i in range(n + 1)], "counts": row[:n]}
            for row, n, w in zip(counts.tolist(), last, width, strict=True)]


def interval_slots(stats: FeatureStats, features: torch.Tensor, n_intervals: int = 10,
                   per: int = 5) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per feature, up to `per` reservoir slots from each of `n_intervals` equal-width intervals of (0, max], by
    interval, largest activation first within one: (slot, interval, chosen), each (n, NB·R), the chosen ones a prefix
    of each row. Each fine bin's reservoir is a uniform sample of its occurrences; examples are drawn across bins in
    proportion to bin counts (weighted sampling by key**(1/weight)), so each interval's sample is close to uniform.
    All features at once."""
    f = features
    top = stats.max_act[f]  # (n,)
    pos, val, key = stats.res.position[f], stats.res.value[f], stats.res.key[f]  # (n, S)
    filled = (pos >= 0) & (top > 0).unsqueeze(1)
    bins = torch.arange(NB).repeat_interleave(R)  # (S,)
    per_bin = filled.view(-1, NB, R).sum(-1).float()  # (n, NB)
    weight = (stats.hist[f].float() / per_bin.clamp_min(1))[:, bins]  # (n, S)
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


def state_dict(stats: FeatureStats) -> dict[str, torch.Tensor]:
    stats.flush()  # a checkpoint holds finished examples only
    out = {"tokens_seen": torch.tensor(stats.tokens_seen), "fire_count": stats.fire_count, "max_act": stats.max_act,
           "log2_scale": stats.log2_scale, "hist": stats.hist}
    for prefix, ex in (("top", stats.top), ("res", stats.res)):
        for name, t in zip(STORED, ex.fields(), strict=False):
            out[f"{prefix}.{name}"] = t.contiguous()
    return out


def load_state_dict(stats: FeatureStats, state: dict[str, torch.Tensor]) -> None:
    stats.tokens_seen = int(state["tokens_seen"])
    stats.fire_count, stats.max_act = state["fire_count"].clone(), state["max_act"].clone()
    stats.log2_scale, stats.hist = state["log2_scale"].clone(), state["hist"].clone()
    for prefix in ("top", "res"):
        stored = [state[f"{prefix}.{n}"].clone() for n in STORED]
        done = torch.full(stored[0].shape, -1, dtype=torch.int64)  # nothing waits for a DFA in a checkpoint
        setattr(stats, prefix, Examples(*stored, pend_batch=done, pend_row=torch.zeros_like(done)))

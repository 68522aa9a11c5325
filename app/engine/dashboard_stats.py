"""Streaming dashboard statistics for every feature of one SAE at once: firing counts, max activation, a
histogram (app/engine/dashboard_histogram.py), the top-k examples and the reservoirs for interval examples
(app/engine/dashboard_examples.py), each example's window materialised when it is admitted and its DFA computed
once it has survived a few batches (app/engine/dashboard_dfa.py). Knows nothing of storage or HTTP.

Memory is what is kept: per feature a few counters, its histogram and its example slots (`state_bytes`), plus
the deferred batches' tensors; the job plans how many layers share one corpus pass from that.
"""

from __future__ import annotations

import torch

from app.engine.dashboard_dfa import DeferredDFA
from app.engine.dashboard_examples import (
    KEPT_DTYPE,
    WINDOW_AFTER,
    WINDOW_BEFORE,
    Admission,
    ExampleSlots,
    admit_reservoir,
    admit_top_k,
    position_keys,
)
from app.engine.dashboard_histogram import (
    HISTOGRAM_BINS,
    SLOTS_PER_BIN,
    bin_of,
    merge_bins,
    reservoir_shift,
)
from app.engine.saes import AttnSAE


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
        if self.dense is not None:  # the other architectures, or a TopK batch that needed it already
            return self.dense[rows, feats]
        # TopK: a dense (N, d_sae) matrix (100 MB a batch at GPT-2 size) only when there are many lookups; else
        # look each feature up among its row's k indices, in pieces
        flat_rows, flat_feats = rows.reshape(-1), feats.reshape(-1)
        k = self.indices.shape[1]
        if len(flat_rows) * k > self.indices.shape[0] * self.d_sae // 4:
            if self.dense is None:
                self.dense = self.values.new_zeros(len(self.values), self.d_sae).scatter_(1, self.indices,
                                                                                          self.values)
            return self.dense[rows, feats]
        out = torch.empty(flat_rows.shape, dtype=self.values.dtype)
        for lo in range(0, len(flat_rows), 65536):
            r, f = flat_rows[lo : lo + 65536], flat_feats[lo : lo + 65536]
            hit = self.indices[r] == f.unsqueeze(1)  # (piece, k): at most one True per row
            out[lo : lo + 65536] = (self.values[r] * hit).sum(1)
        return out.view(rows.shape)


class FeatureStats:
    """Everything a dashboard needs from the corpus, for all d_sae features of one SAE."""

    def __init__(self, sae: AttnSAE, k: int = 20, defer: int = 8) -> None:
        """defer: batches an admitted example waits for its DFA (0: at the end of its own batch)."""
        self.sae, self.k = sae, k
        self.deferred = DeferredDFA(sae, defer)
        self._batch_no = 0
        n, heads = sae.d_sae, sae.n_heads
        self.tokens_seen = 0
        self.fire_count = torch.zeros(n, dtype=torch.int64)
        self.max_act = torch.zeros(n)
        self.log2_scale = torch.full((n,), -30, dtype=torch.int64)  # histogram range [0, 2**log2_scale]
        self.hist = torch.zeros(n, HISTOGRAM_BINS, dtype=torch.int64)
        self.top = ExampleSlots.empty(n, k, heads, float("-inf"))
        self.res = ExampleSlots.empty(n, HISTOGRAM_BINS * SLOTS_PER_BIN, heads, 0.0)  # slot b·per + r: bin b

    @staticmethod
    def state_bytes(d_sae: int, n_heads: int, k: int) -> int:
        """Bytes this holds for an SAE of d_sae features (the deferred batches aside)."""
        per_feature = 8 + 4 + 8 + 8 * HISTOGRAM_BINS
        slots = k + HISTOGRAM_BINS * SLOTS_PER_BIN
        return d_sae * (per_feature + slots * ExampleSlots.bytes_per_slot(n_heads))

    # --- one batch -------------------------------------------------------------------------------------------

    @torch.inference_mode()
    def encode(self, z: torch.Tensor) -> BatchActs:
        """z (B, T, head_index, d_head) -> the batch's activations on the CPU (BOS at t = 0 counts as zero); runs
        where the SAE lives (a GPU)."""
        B, T = z.shape[:2]
        bos = (torch.arange(B * T, device=z.device) % T) == 0
        return BatchActs(self.sae, z.reshape(B * T, -1), bos).cpu()

    @torch.inference_mode()
    def update(self, ids: torch.Tensor, positions: torch.Tensor, z: torch.Tensor, pattern: torch.Tensor,
               v: torch.Tensor, acts: BatchActs | None = None) -> None:
        """ids, positions (B, T): tokens and their corpus positions (BOS at t = 0 is skipped);
        z, v (B, T, head_index, d_head) and pattern (B, head_index, T, T) at this SAE's layer, on any device: the
        encode runs where the SAE lives (a GPU), the bookkeeping on the CPU. acts: encode(z), if already made."""
        ids, positions = ids.cpu(), positions.cpu()
        B, T = ids.shape
        acts = acts if acts is not None else self.encode(z)
        self.tokens_seen += B * (T - 1)
        rows, feats, val = acts.occurrences()  # everything below works on these alone
        self.fire_count += torch.bincount(feats, minlength=self.sae.d_sae)
        self.max_act.scatter_reduce_(0, feats, val, reduce="amax")
        self._rescale(torch.ceil(torch.log2(self.max_act.clamp_min(1e-9))).to(torch.int64))
        self.deferred.keep(self._batch_no, z.cpu(), pattern.cpu(), v.cpu())
        if rows.numel():
            pos = positions.reshape(-1)
            batch = (T, positions, acts, self._batch_no)
            admitted = admit_top_k(self.top, self.k, rows, feats, val, pos)
            if admitted is not None:
                self.top.put(admitted.dest_feature, admitted.dest_slot, self._materialise(admitted, batch))
            bins = bin_of(val, self.log2_scale[feats])
            self.hist.view(-1).index_add_(0, feats * HISTOGRAM_BINS + bins, torch.ones_like(bins))
            keys = position_keys(pos[rows], feats, self.sae.d_sae)
            admitted = admit_reservoir(self.res, SLOTS_PER_BIN, rows, feats, bins, keys, HISTOGRAM_BINS)
            if admitted is not None:
                admitted.value = acts.at(admitted.row, admitted.feature)
                self.res.put(admitted.dest_feature, admitted.dest_slot, self._materialise(admitted, batch))
        self._batch_no += 1
        self.flush(before=self._batch_no - self.deferred.defer)

    def _materialise(self, adm: Admission, batch: tuple) -> ExampleSlots:
        """Slots (leading dim n) for the admitted occurrences: activation, key, position and the feature's
        activations over the window; the DFA is left for the deferred step."""
        T, positions, acts, batch_no = batch
        r, f = adm.row, adm.feature
        b, t = r // T, r % T
        src = t.unsqueeze(1) + torch.arange(-WINDOW_BEFORE, WINDOW_AFTER + 1)  # (n, WINDOW)
        inside = (src >= 0) & (src < T)
        src_c = src.clamp(0, T - 1)
        win_acts = torch.where(inside, acts.at(b.unsqueeze(1) * T + src_c, f.unsqueeze(1).expand_as(src_c)), 0.0)
        n, heads = len(r), self.sae.n_heads
        return ExampleSlots(
            value=adm.value.to(torch.float32), key=adm.key.to(torch.float64), position=positions[b, t],
            acts=win_acts.to(KEPT_DTYPE), dfa=torch.zeros(n, win_acts.shape[1], dtype=KEPT_DTYPE),
            dfa_heads=torch.zeros(n, heads, dtype=KEPT_DTYPE), pending_batch=torch.full((n,), batch_no,
                                                                                         dtype=torch.int32),
            pending_row=r.to(torch.int32))

    def flush(self, before: int | None = None) -> None:
        """Compute the DFA of every example still waiting on a batch numbered below `before` (None: all)."""
        self.deferred.flush([self.top, self.res], self._batch_no if before is None else before)

    def sorted_top(self) -> ExampleSlots:
        """The top examples largest first (ties: earlier corpus position first), empty slots last."""
        self.flush()
        return self.top.take(_largest_first(self.top))

    # --- scale changes and merging ---------------------------------------------------------------------------

    def _rescale(self, wanted: torch.Tensor) -> None:
        """Raise each feature's histogram scale to 2**wanted where larger, merging bins (and reservoirs)."""
        shift = (wanted - self.log2_scale).clamp_min(0)
        for doublings in shift.unique().tolist():
            if doublings == 0:
                continue
            f = (shift == doublings).nonzero(as_tuple=True)[0]
            self.hist[f] = merge_bins(self.hist[f], doublings)
            reservoir_shift(self.res, f, doublings)
            self.log2_scale[f] += doublings

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
        n, bins, per = self.sae.d_sae, HISTOGRAM_BINS, SLOTS_PER_BIN
        both = ExampleSlots.cat(self.res, other.res)
        key = both.key.view(n, 2, bins, per).permute(0, 2, 1, 3).reshape(n, bins, 2 * per)
        keep = key.argsort(dim=2)[..., :per]  # (n, bins, per) in [0, 2·per): (which, r) = divmod(keep, per)
        index = (keep // per) * bins * per + torch.arange(bins).view(1, bins, 1) * per + keep % per
        self.res = both.take(index.view(n, -1))
        merged = ExampleSlots.cat(self.top, other.top)
        self.top = merged.take(_largest_first(merged)[:, : self.k])


def _largest_first(slots: ExampleSlots) -> torch.Tensor:
    """Per feature, its slots ordered by value descending, ties by key descending (the earlier position)."""
    order = torch.argsort(slots.key, dim=1, descending=True, stable=True)
    return order.gather(1, torch.argsort(slots.value.gather(1, order), dim=1, descending=True, stable=True))


# --- checkpoints: the state of a resumable build ----------------------------------------------------------------

STORED = ("value", "key", "position", "acts", "dfa", "dfa_heads")  # ExampleSlots fields kept in checkpoints


def state_dict(stats: FeatureStats) -> dict[str, torch.Tensor]:
    stats.flush()  # a checkpoint holds finished examples only
    out = {"tokens_seen": torch.tensor(stats.tokens_seen), "fire_count": stats.fire_count, "max_act": stats.max_act,
           "log2_scale": stats.log2_scale, "hist": stats.hist}
    for prefix, ex in (("top", stats.top), ("res", stats.res)):
        for name in STORED:
            out[f"{prefix}.{name}"] = getattr(ex, name).contiguous()
    return out


def load_state_dict(stats: FeatureStats, state: dict[str, torch.Tensor]) -> None:
    stats.tokens_seen = int(state["tokens_seen"])
    stats.fire_count, stats.max_act = state["fire_count"].clone(), state["max_act"].clone()
    stats.log2_scale, stats.hist = state["log2_scale"].clone(), state["hist"].clone()
    for prefix in ("top", "res"):
        stored = {name: state[f"{prefix}.{name}"].clone() for name in STORED}
        done = torch.full(stored["value"].shape, -1, dtype=torch.int32)  # nothing waits for a DFA in a checkpoint
        setattr(stats, prefix, ExampleSlots(**stored, pending_batch=done, pending_row=torch.zeros_like(done)))

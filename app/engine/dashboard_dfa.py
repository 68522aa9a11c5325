"""Deferred direct feature attribution (DFA) for dashboard examples: an admitted example gets its window and
activations at once, but its DFA (the costly part) only once it has survived `defer` more batches, or at a flush
(the end, or before a checkpoint). The last `defer` batches' z, pattern and v are kept for that; most examples
admitted early are evicted before then and never cost a DFA. An example's DFA depends only on its token and
feature, so when it is computed does not change it. Knows nothing of storage or HTTP.
"""

from __future__ import annotations

import torch

from app.engine.dashboard_examples import KEPT_DTYPE, WINDOW, WINDOW_BEFORE, ExampleSlots
from app.engine.saes import AttnSAE

FEATURES_PER_PRODUCT = 64  # encoder columns per matrix product: a fixed shape, so results never depend on batching


class DeferredDFA:
    def __init__(self, sae: AttnSAE, defer: int) -> None:
        """defer: batches an admitted example waits for its DFA (0: at the end of its own batch)."""
        self.sae, self.defer = sae, defer
        self.batches: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}  # number -> (z, pattern, v)

    def keep(self, batch_no: int, z: torch.Tensor, pattern: torch.Tensor, v: torch.Tensor) -> None:
        self.batches[batch_no] = (z, pattern, v)

    def flush(self, slot_blocks: list[ExampleSlots], before: int) -> None:
        """Compute the DFA of every slot still waiting on a batch numbered below `before`, and forget those
        batches' tensors."""
        for ex in slot_blocks:
            waiting = (ex.pending_batch >= 0) & (ex.pending_batch < before)
            fs, slots = waiting.nonzero(as_tuple=True)
            if fs.numel() == 0:
                continue
            batch_of = ex.pending_batch[fs, slots]
            for batch_no in batch_of.unique().tolist():
                m = batch_of == batch_no
                rows = ex.pending_row[fs[m], slots[m]].to(torch.int64)
                dfa, heads = example_dfa(self.sae, self.batches[batch_no], rows, fs[m])
                ex.dfa[fs[m], slots[m]] = dfa.to(KEPT_DTYPE)
                ex.dfa_heads[fs[m], slots[m]] = heads.to(KEPT_DTYPE)
            ex.pending_batch[fs, slots] = -1
        for batch_no in [k for k in self.batches if k < before]:
            del self.batches[batch_no]


def encoder_rows(sae: AttnSAE, features: torch.Tensor) -> torch.Tensor:
    """(n, head·d_head) on the CPU: the encoder column of each feature, as a row (gathered, never the whole
    transposed matrix: at 24,576 features that is 75 MB a layer)."""
    return sae.W_eff.index_select(1, features.to(sae.W_eff.device)).T.contiguous().cpu()


def example_dfa(sae: AttnSAE, batch: tuple[torch.Tensor, ...], r: torch.Tensor, f: torch.Tensor,
                piece: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """For n examples (row r of the batch's B·T tokens, feature f): the DFA toward the example's token from each
    source in its window, summed over heads (n, WINDOW), and each head's whole contribution (n, head).

    Per sequence of the batch, the projections v_s^h · W_eff[h-slice, f] of all its sources onto the features of
    its examples come from one matrix product per head of a fixed shape, (T, d_head) @ (d_head, FEATURES_PER_PRODUCT)
    (the features in chunks, the last one padded with zero columns); an example's DFA is then its attention row
    times those projections, summed over heads in a fixed order. A causal source after the token gets no attention,
    so its DFA is zero. An example's numbers depend only on its token and feature, never on which other examples
    share its chunk or call (tested bit for bit)."""
    z, pattern, v = batch  # (B, T, head, d_head), (B, head, T, T), (B, T, kv_head, d_head)
    B, T = z.shape[:2]
    H, d_head, d_sae, cols = sae.n_heads, sae.d_head, sae.d_sae, FEATURES_PER_PRODUCT
    if v.shape[2] != H:  # grouped-query attention: each key/value head serves several heads
        v = v.repeat_interleave(H // v.shape[2], dim=2)
    b, t = r // T, r % T
    # columns: the distinct (sequence, feature) pairs, `cols` to a chunk, each chunk within one sequence
    pairs, inverse = torch.unique(b * d_sae + f, return_inverse=True)  # by sequence, then feature
    pair_b, pair_f = pairs // d_sae, pairs % d_sae
    counts = torch.bincount(pair_b, minlength=B)
    rank = torch.arange(len(pairs)) - (torch.cumsum(counts, 0) - counts)[pair_b]
    per_seq = (counts + cols - 1) // cols
    chunk = (torch.cumsum(per_seq, 0) - per_seq)[pair_b] + rank // cols
    column = rank % cols
    n_chunks = int(per_seq.sum())
    w_rows = encoder_rows(sae, pair_f)  # (pairs, head·d_head)
    dtype = w_rows.dtype
    # the chunks' encoder columns, (chunks, head, cols, d_head), zero where a chunk has no feature
    w = torch.zeros(n_chunks * H * cols, d_head, dtype=dtype)
    slot = ((chunk.unsqueeze(1) * H + torch.arange(H)) * cols + column.unsqueeze(1)).view(-1)
    w.index_copy_(0, slot, w_rows.view(-1, d_head))
    w = w.view(n_chunks, H, cols, d_head)
    seq_of_chunk = torch.repeat_interleave(torch.arange(B), per_seq)
    v_heads = v.to(dtype).permute(0, 2, 1, 3)  # (B, head, T, d_head)
    proj = torch.empty(n_chunks, H, T, cols, dtype=dtype)
    for lo in range(0, n_chunks, piece):  # bounded memory for long contexts
        hi = min(lo + piece, n_chunks)
        torch.matmul(v_heads[seq_of_chunk[lo:hi]], w[lo:hi].transpose(-1, -2), out=proj[lo:hi])
    # each example's sources t-WINDOW_BEFORE .. t: projections and attention, (n, WINDOW_BEFORE+1, head)
    src = t.unsqueeze(1) + torch.arange(-WINDOW_BEFORE, 1)
    inside = src >= 0
    src = src.clamp_min(0).unsqueeze(2)  # (n, WINDOW_BEFORE+1, 1)
    h = torch.arange(H)
    c, j = chunk[inverse].view(-1, 1, 1), column[inverse].view(-1, 1, 1)
    at_proj = ((c * H + h) * T + src) * cols + j
    at_pattern = ((b.view(-1, 1, 1) * H + h) * T + t.view(-1, 1, 1)) * T + src
    flat_proj, flat_pattern = proj.view(-1), pattern.reshape(-1)
    terms = (flat_proj.index_select(0, at_proj.view(-1)) * flat_pattern.index_select(0, at_pattern.view(-1))
             .to(dtype)).view(at_proj.shape)
    total = terms[..., 0]
    for head in range(1, H):  # a fixed order of addition, whatever the shape of the call
        total = total + terms[..., head]
    dfa = torch.zeros(len(r), WINDOW, dtype=dtype)
    dfa[:, : WINDOW_BEFORE + 1] = total.masked_fill(~inside, 0.0)
    w_all = w_rows[inverse].view(-1, H, d_head)  # (n, head, d_head)
    heads = (z[b, t].to(dtype) * w_all).sum(-1)
    return dfa.float(), heads

"""The streaming dashboard statistics against brute force over the same activations: top-k, counts, max,
histogram; DFA of every materialised example sums to its head contributions; a corpus split into shards and
merged gives exactly the single-pass result."""

from __future__ import annotations

import pytest
import torch

from app.engine.dashboard_examples import WINDOW, WINDOW_BEFORE, window_token_ids
from app.engine.dashboard_histogram import HISTOGRAM_BINS as NB
from app.engine.dashboard_stats import FeatureStats
from app.engine.engine import Engine
from app.engine.features import capture, dfa, flat_z


@pytest.fixture(scope="module", params=["topk", "standard"])
def engine(tiny_engines, request) -> Engine:
    """TopK activations are kept sparse through the pass, the others dense: both are checked."""
    return tiny_engines[request.param]


@pytest.fixture(scope="module")
def corpus(engine) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, engine.model.cfg.d_vocab, (12, 40), generator=g)
    ids[:, 0] = 0  # BOS
    return ids


def run(engine: Engine, corpus: torch.Tensor, rows: range, batch: int = 4, stats: FeatureStats | None = None):
    sae = engine.saes[1]
    stats = stats or FeatureStats(sae, k=5)
    T = corpus.shape[1]
    for start in range(rows.start, rows.stop, batch):
        ids = corpus[start : min(start + batch, rows.stop)]
        pos = torch.arange(start * T, start * T + ids.numel()).view(ids.shape)
        p = "blocks.1.attn."
        cache = capture(engine.model, ids, [p + "hook_z", p + "hook_pattern", p + "hook_v"])
        stats.update(ids, pos, cache[p + "hook_z"], cache[p + "hook_pattern"], cache[p + "hook_v"])
    return stats


def all_acts(engine: Engine, corpus: torch.Tensor) -> torch.Tensor:
    z = capture(engine.model, corpus, ["blocks.1.attn.hook_z"])["blocks.1.attn.hook_z"]
    acts, _ = engine.saes[1].encode(flat_z(z))
    acts[:, 0] = 0
    return acts.reshape(-1, acts.shape[-1])  # (N, F), row = corpus position


def test_counts_max_histogram_and_top_k_equal_brute_force(engine, corpus):
    stats = run(engine, corpus, range(0, 12))
    acts = all_acts(engine, corpus)
    assert stats.tokens_seen == 12 * 39
    assert torch.equal(stats.fire_count, (acts > 0).sum(0))
    torch.testing.assert_close(stats.max_act, acts.max(0).values)
    for f in range(0, acts.shape[1], 9):
        col = acts[:, f]
        nz = col[col > 0]
        if nz.numel() == 0:
            assert stats.hist[f].sum() == 0 and stats.top.position[f].max() == -1
            continue
        scale = 2.0 ** stats.log2_scale[f].item()
        assert nz.max() <= scale < 2 * nz.max() + 1e-6
        bins = (nz / scale * NB).long().clamp(0, NB - 1)
        assert torch.equal(stats.hist[f], torch.bincount(bins, minlength=NB)), f
        vals, rows = col.topk(5)
        top = stats.sorted_top()
        live = vals > 0
        torch.testing.assert_close(top.value[f][: int(live.sum())], vals[live])
        assert top.position[f][: int(live.sum())].tolist() == rows[live].tolist()


def test_examples_are_materialised_exactly(engine, corpus):
    stats = run(engine, corpus, range(0, 12))
    stats.top = stats.sorted_top()
    T = corpus.shape[1]
    for f in (3, 17, 40):
        for slot in range(5):
            pos = int(stats.top.position[f, slot])
            if pos < 0:
                continue
            b, t = divmod(pos, T)
            text_ids = corpus[b]
            window = window_token_ids(corpus, stats.top.position[f, slot])
            lo = t - WINDOW_BEFORE
            for w, tok in enumerate(window.tolist()):
                src = lo + w
                assert tok == (int(text_ids[src]) if 0 <= src < T else -1)
            d = engine.saes[1]
            p = "blocks.1.attn."
            cache = capture(engine.model, text_ids[None], [p + "hook_z", p + "hook_pattern", p + "hook_v"])
            heads = torch.einsum("hd,hd->h", cache[p + "hook_z"][0, t], d.W_eff[:, f].view(d.n_heads, d.d_head))
            # window activations and DFA are kept as the store keeps them, in float16
            torch.testing.assert_close(stats.top.dfa_heads[f, slot].float(), heads, atol=1e-4, rtol=1e-3)
            # every source's DFA against the engine's own (tested against pattern and values in test_exactness)
            per_source = dfa(d, cache[p + "hook_pattern"][0], cache[p + "hook_v"][0], f, t).sum(0)  # (T,)
            expected = torch.tensor([float(per_source[lo + w]) if 0 <= lo + w < T else 0.0 for w in range(WINDOW)])
            torch.testing.assert_close(stats.top.dfa[f, slot].float(), expected, atol=1e-4, rtol=1e-3)
            # DFA over the window's sources adds up to the heads' total when the window holds every source
            if t <= WINDOW_BEFORE:
                torch.testing.assert_close(stats.top.dfa[f, slot].float().sum(), heads.sum(), atol=2e-3, rtol=2e-3)
            assert stats.top.acts[f, slot, WINDOW_BEFORE] == stats.top.value[f, slot].half()


def test_sharded_merge_equals_single_pass(engine, corpus):
    whole = run(engine, corpus, range(0, 12))
    a = run(engine, corpus, range(0, 5), batch=2)
    b = run(engine, corpus, range(5, 12), batch=3)
    a.merge(b)
    assert a.tokens_seen == whole.tokens_seen
    assert torch.equal(a.fire_count, whole.fire_count)
    assert torch.equal(a.log2_scale, whole.log2_scale)
    assert torch.equal(a.hist, whole.hist)
    assert torch.equal(a.sorted_top().position, whole.sorted_top().position)
    torch.testing.assert_close(a.sorted_top().value, whole.sorted_top().value)
    torch.testing.assert_close(a.sorted_top().dfa, whole.sorted_top().dfa)
    assert_same_reservoirs(a, whole)


def assert_same_reservoirs(a: FeatureStats, b: FeatureStats) -> None:
    """The same examples in every (feature, bin) reservoir; slots within a bin are an unordered set."""
    F = a.sae.d_sae

    def canonical(s: FeatureStats) -> tuple[torch.Tensor, torch.Tensor]:
        pos = s.res.position.view(F, NB, -1)
        order = pos.argsort(dim=-1)
        dfa = s.res.dfa.view(F, NB, pos.shape[-1], -1)
        return pos.gather(-1, order), dfa.gather(2, order.unsqueeze(-1).expand_as(dfa))

    (pa, da), (pb, db) = canonical(a), canonical(b)
    assert torch.equal(pa, pb)
    torch.testing.assert_close(da, db)


def test_reservoirs_hold_occurrences_of_their_bin(engine, corpus):
    stats = run(engine, corpus, range(0, 12))
    acts = all_acts(engine, corpus)
    F = acts.shape[1]
    res_pos = stats.res.position.view(F, NB, -1)
    for f in range(0, F, 11):
        scale = 2.0 ** stats.log2_scale[f].item()
        for b in range(NB):
            filled = res_pos[f, b][res_pos[f, b] >= 0]
            assert len(filled) == min(2, int(stats.hist[f, b]))
            for p in filled.tolist():
                assert int((acts[p, f] / scale * NB).clamp(max=NB - 1)) == b


def test_deferring_dfa_changes_nothing(engine, corpus):
    """Examples get their DFA when they have survived `defer` batches (or at a flush); the statistics and every
    example are bit-for-bit those of computing each DFA at once, whenever the flushes fall."""
    at_once = run(engine, corpus, range(0, 12), batch=2, stats=FeatureStats(engine.saes[1], k=5, defer=0))
    at_once.flush()
    for defer in (1, 3, 100):
        late = run(engine, corpus, range(0, 6), batch=2, stats=FeatureStats(engine.saes[1], k=5, defer=defer))
        late.flush()  # as before a checkpoint, in the middle of the corpus
        late = run(engine, corpus, range(6, 12), batch=2, stats=late)
        late.flush()
        for mine, theirs in ((late.top, at_once.top), (late.res, at_once.res)):
            for a, b in zip(mine.fields(), theirs.fields(), strict=True):
                assert torch.equal(a, b), defer
        assert late.deferred.batches == {}  # the kept batch tensors are freed


@pytest.mark.parametrize("batch", [3, 4])
def test_top_k_ties_go_to_the_earlier_corpus_position(engine, corpus, batch):
    """Rows repeated word for word give equal activations at many positions, within a batch and across batches:
    the top-k keeps the largest values and, among equal ones, the earliest corpus positions, in that order."""
    repeated = corpus[:3].repeat(4, 1)  # 12 rows: each of 3 rows four times
    stats = run(engine, repeated, range(0, 12), batch=batch)
    acts = all_acts(engine, repeated)
    top = stats.sorted_top()
    checked = 0
    for f in range(acts.shape[1]):
        col = acts[:, f]
        live = int((col > 0).sum())
        if live < 2:
            continue
        order = torch.argsort(-col, stable=True)[: min(5, live)]  # value descending, then position ascending
        assert top.position[f][: len(order)].tolist() == order.tolist(), f
        checked += 1
    assert checked > 20

"""The dashboard build job: streams a corpus once through the model with every SAE, keeps the statistics of
every feature at once, and writes dashboards to the store in one transaction per batch of features.

Resumable at both stages: the pass checkpoints its statistics every few batches (safetensors, atomically), and
the writing skips features that a build with the same parameters already wrote. Statistics do not depend on batch
order (reservoir keys hash corpus positions), so a resumed build equals an uninterrupted one, and shards run as
Ray tasks merge to the local result.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from sqlalchemy.orm import Session, sessionmaker
from tqdm import tqdm

from app.engine.dashboard_examples import WINDOW_BEFORE, ExampleSlots, window_token_ids
from app.engine.dashboard_histogram import histograms, interval_slots
from app.engine.dashboard_stats import FeatureStats, load_state_dict, state_dict
from app.engine.engine import Engine
from app.engine.features import capture
from app.store.dashboards import (
    ExampleColumns,
    FeatureDashboard,
    built_features,
    finish_build,
    put_tokens,
    start_build,
    upsert_model,
    upsert_sae,
    write_features,
)
from app.store.db import transaction


@dataclass
class BuildParams:
    corpus: str  # a name for the corpus, e.g. "stdlib-heldout"
    tokens: int  # corpus tokens (rows · n_ctx)
    top_k: int = 20
    n_intervals: int = 10
    per_interval: int = 5

    def as_dict(self) -> dict:
        return dict(vars(self))

    def fingerprint(self, model_slug: str) -> str:
        return hashlib.sha256(json.dumps([model_slug, self.as_dict()], sort_keys=True).encode()).hexdigest()[:16]


def run_pass(engine: Engine, corpus: torch.Tensor, layers: list[int], batch_size: int, top_k: int,
             rows: range | None = None, checkpoint: Path | None = None, checkpoint_every: int | None = None,
             progress: bool = True, stop_after: int | None = None, checkpoint_seconds: float = 60.0,
             on_progress: Callable[[dict], None] | None = None) -> dict[int, FeatureStats]:
    """Statistics of every feature of the SAEs on `layers` over corpus rows (BOS first in each row). With a
    checkpoint path, the state is saved every checkpoint_seconds (or every checkpoint_every batches) and at the end:
    a killed pass loses at most that much work."""
    rows = rows or range(corpus.shape[0])
    T = corpus.shape[1]
    defer = deferred_batches(engine, len(layers), batch_size, T)
    stats = {layer: FeatureStats(engine.saes[layer], k=top_k, defer=defer) for layer in layers}
    done_rows = rows.start
    if checkpoint is not None and checkpoint.exists():
        state = load_file(checkpoint)
        done_rows = int(state.pop("done_rows"))
        for layer in layers:
            own = {k.split("/", 1)[1]: v for k, v in state.items() if k.startswith(f"{layer}/")}
            load_state_dict(stats[layer], own)
    names = [f"blocks.{layer}.attn.{h}" for layer in layers for h in ("hook_z", "hook_pattern", "hook_v")]
    bar = tqdm(total=len(rows) * T, initial=(done_rows - rows.start) * T, unit="tok", desc="dashboards: corpus pass",
               disable=not progress, smoothing=0.1)
    batches, last_checkpoint = 0, time.monotonic()
    in_flight: list[Future] = []  # the current batch's bookkeeping, one task per layer

    def settle() -> None:
        for future in in_flight:
            future.result()  # an exception in the bookkeeping stops the pass here
        in_flight.clear()

    # one bookkeeping thread: a layer's statistics are updated in batch order, while the main thread encodes
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="dashboards-bookkeeping") as bookkeeper:
        for start in range(done_rows, rows.stop, batch_size):
            ids = corpus[start : min(start + batch_size, rows.stop)].to(engine.device)
            positions = torch.arange(start * T, start * T + ids.numel(), device=engine.device).view(ids.shape)
            cache = capture(engine.model, ids, names)
            settle()  # the previous batch's bookkeeping is done before this one's starts
            for layer in layers:
                p = f"blocks.{layer}.attn."
                acts = stats[layer].encode(cache[p + "hook_z"])
                # the bookkeeping (much of it single-threaded indexing) runs beside the next layer's encode
                in_flight.append(bookkeeper.submit(stats[layer].update, ids, positions, cache[p + "hook_z"],
                                                   cache[p + "hook_pattern"], cache[p + "hook_v"], acts))
            bar.update(ids.numel())
            batches += 1
            done_rows = start + ids.shape[0]
            if on_progress is not None:  # every layer of the pass at once
                on_progress({"phase": "pass", "layer": None, "done": (done_rows - rows.start) * T,
                             "total": len(rows) * T})
            due = (batches % checkpoint_every == 0 if checkpoint_every else
                   time.monotonic() - last_checkpoint >= checkpoint_seconds)
            if checkpoint is not None and (due or done_rows >= rows.stop):
                settle()
                last_checkpoint = time.monotonic()
                save_checkpoint(checkpoint, stats, done_rows)
            if stop_after is not None and batches >= stop_after:  # for tests: a build killed between batches
                break
        settle()
    bar.close()
    for s in stats.values():
        s.flush()
    return stats


def deferred_batches(engine: Engine, n_layers: int, batch_size: int, T: int, budget_bytes: int = 1 << 29) -> int:
    """How many batches an example may wait for its DFA: as many as keeping their z, pattern and v for every
    layer fits in budget_bytes (at most 64, past which fewer DFAs no longer pay for the memory; 0 for long contexts,
    whose patterns are large). At 131K tokens of the demo model, 16 batches computed 704K DFAs and 64 batches 427K."""
    cfg = engine.model.cfg
    kv_heads = getattr(cfg, "n_key_value_heads", None) or cfg.n_heads
    per_batch = 4 * batch_size * T * (cfg.n_heads * cfg.d_head + kv_heads * cfg.d_head + cfg.n_heads * T)
    return int(max(0, min(64, budget_bytes // max(1, per_batch * n_layers))))


def save_checkpoint(path: Path, stats: dict[int, FeatureStats], done_rows: int) -> None:
    tensors = {"done_rows": torch.tensor(done_rows)}
    for layer, s in stats.items():
        tensors.update({f"{layer}/{k}": v for k, v in state_dict(s).items()})
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file(tensors, tmp)
    tmp.replace(path)  # atomic: a kill never leaves half a checkpoint


def feature_dashboards(engine: Engine, stats: FeatureStats, features: list[int], params: BuildParams,
                       corpus: torch.Tensor, top: ExampleSlots | None = None,
                       ) -> tuple[list[FeatureDashboard], ExampleColumns]:
    """Dashboards of these features from the pass's statistics, their examples as packed columns (token ids read
    from the corpus); top: stats.sorted_top(), when the caller has it."""
    weights = engine.feature_weights(stats.sae.layer, features)
    top = top if top is not None else stats.sorted_top()
    f = torch.as_tensor(features, dtype=torch.int64)
    fire, max_act = stats.fire_count[f].tolist(), stats.max_act[f].tolist()
    dashboards = [
        FeatureDashboard(index=feature, density=fire[i] / max(1, stats.tokens_seen), max_activation=max_act[i],
                         histogram=hist, logit_effects=w["logit_effects"], head_attribution=w["head_attribution"],
                         similar=w["similar_features"])
        for i, (feature, w, hist) in enumerate(zip(features, weights, histograms(stats.hist[f], stats.log2_scale[f]),
                                                   strict=True))
    ]
    return dashboards, example_columns(stats, top, f, params, corpus)


def example_columns(stats: FeatureStats, top: ExampleSlots, f: torch.Tensor, params: BuildParams,
                    corpus: torch.Tensor) -> ExampleColumns:
    """The top examples (every filled slot of the sorted top) and interval examples of features f, feature by
    feature, packed as stored: a window less what falls outside its sequence is one contiguous run of its row, so
    each example's arrays are slices of a few buffers packed once for all of them."""
    # top: (feature, rank) of the filled slots; intervals: (feature, j) of the chosen prefix of interval_slots
    ti, trank = (top.position[f] >= 0).nonzero(as_tuple=True)
    res = stats.res  # only the slots' position, value and key: their windows are gathered below for those chosen
    slot, interval, chosen = interval_slots(res.position[f], res.value[f], res.key[f], stats.hist[f], stats.max_act[f],
                                            params.n_intervals, params.per_interval)
    ii, irank = chosen.nonzero(as_tuple=True)
    islot, iinterval = slot[ii, irank], interval[ii, irank]
    n_top = len(ti)
    order = torch.argsort(torch.cat([ti, ii]), stable=True)  # feature by feature, its top examples first
    local = torch.cat([ti, ii])[order]

    def gather(name: str) -> np.ndarray:  # (m, ...) the field of every example, in `order`
        a, b = getattr(top, name)[f[ti], trank], getattr(stats.res, name)[f[ii], islot]
        return torch.cat([a, b])[order].numpy()

    positions = gather("position")
    ids, heads = window_token_ids(corpus, torch.from_numpy(positions)).numpy(), gather("dfa_heads")
    m, width = ids.shape
    inside = ids >= 0
    first = inside.argmax(1)
    start = np.arange(m) * width + first  # where each example's run starts in the flattened (m, WINDOW) buffers
    runs = list(zip(start.tolist(), (start + inside.sum(1)).tolist(), strict=True))
    ids_b = ids.astype("<i4").tobytes()
    acts_b, dfa_b = (gather(k).astype("<f2").tobytes() for k in ("acts", "dfa"))
    H = heads.shape[1]
    heads_b = heads.astype("<f2").tobytes()
    is_top = (order < n_top).tolist()
    rank = torch.cat([trank, irank])[order].tolist()
    interval_of = torch.cat([torch.full_like(trank, -1), iinterval])[order].tolist()
    return ExampleColumns(
        feature=f[local].tolist(), kind=["top" if t else "interval" for t in is_top], rank=rank,
        interval=[None if t else i for t, i in zip(is_top, interval_of, strict=True)],
        max_position=(WINDOW_BEFORE - first).tolist(), corpus_position=positions.tolist(),
        token_ids=[ids_b[4 * a : 4 * b] for a, b in runs], activations=[acts_b[2 * a : 2 * b] for a, b in runs],
        dfa=[dfa_b[2 * a : 2 * b] for a, b in runs], dfa_heads=[heads_b[2 * H * e : 2 * H * (e + 1)] for e in range(m)],
    )


def register(session: Session, engine: Engine, model_slug: str) -> dict[int, object]:
    info = engine.info()
    model = upsert_model(session, slug=model_slug, name=info["model"]["name"], source=engine.name,
                         config=info["model"])
    put_tokens(session, model=model, texts=engine.to_str(list(range(engine.model.cfg.d_vocab))))
    return {s["layer"]: upsert_sae(session, model=model, slug=s["id"], layer=s["layer"], hook_name=s["hook_name"],
                                   d_sae=s["d_sae"], architecture=s["architecture"], source=s["source"],
                                   sae_set=s["set"])
            for s in info["saes"]}


def plan_layer_groups(engine: Engine, layers: list[int], top_k: int, memory_bytes: int) -> list[list[int]]:
    """Layers that share one corpus pass, so that their statistics together fit in memory_bytes: as few groups as
    that allows, of near-equal size. Each extra group costs a forward pass up to its last layer, and the SAE
    encodes (most of the work at GPT-2 size: 453 of 623 MFLOP a token) are done once whatever the grouping.
    At 12 x 24,576 features a layer's statistics take 508 MB."""
    if not layers:
        return []
    per_layer = [FeatureStats.state_bytes(engine.saes[layer].d_sae, engine.saes[layer].n_heads, top_k)
                 for layer in layers]
    fit = max(1, memory_bytes // max(per_layer))
    n_groups = -(-len(layers) // fit)
    size = -(-len(layers) // n_groups)
    return [layers[i : i + size] for i in range(0, len(layers), size)]


def build(engine: Engine, factory: sessionmaker[Session], corpus: torch.Tensor, params: BuildParams, *,
          model_slug: str = "demo", layers: list[int] | None = None, batch_size: int = 8,
          feature_batch: int = 256, work_dir: Path | None = None, progress: bool = True,
          pass_fn: Callable[..., dict[int, FeatureStats]] | None = None, checkpoint_seconds: float = 60.0,
          stats_memory_bytes: int = 4 << 30, on_progress: Callable[[dict], None] | None = None) -> dict:
    """Build (or resume) dashboards for every feature of the chosen layers; returns a summary with timings. Layers
    are taken in groups whose statistics fit in stats_memory_bytes: one corpus pass per group, then its writing."""
    layers = sorted(layers if layers is not None else engine.saes)
    t0 = time.perf_counter()
    with transaction(factory) as session:
        saes = register(session, engine, model_slug)
        todo = {layer: set(range(engine.saes[layer].d_sae)) - built_features(
            session, sae=saes[layer], build_params=params.as_dict()) for layer in layers}
    layers = [layer for layer in layers if todo[layer]]
    groups = plan_layer_groups(engine, layers, params.top_k, stats_memory_bytes)
    summary = {"layers": layers, "layer_groups": groups, "tokens": int(corpus.numel()), "features_written": 0,
               "pass_seconds": 0.0}
    fingerprint = params.fingerprint(model_slug)
    for group in groups:
        checkpoint = (work_dir / f"{fingerprint}-L{'_'.join(map(str, group))}.safetensors") if work_dir else None
        t_pass = time.perf_counter()
        if pass_fn is not None:  # e.g. shards on a Ray cluster
            stats = pass_fn(engine, corpus, group, batch_size, params.top_k)
        else:
            stats = run_pass(engine, corpus, group, batch_size, params.top_k, checkpoint=checkpoint,
                             progress=progress, checkpoint_seconds=checkpoint_seconds, on_progress=on_progress)
        summary["pass_seconds"] += time.perf_counter() - t_pass
        summary["features_written"] += _write_layers(engine, factory, saes, stats, todo, params, corpus,
                                                     feature_batch, progress, on_progress)
        del stats  # the next group's statistics take its place
        if checkpoint is not None and checkpoint.exists():
            checkpoint.unlink()
    summary.update(seconds=time.perf_counter() - t0,
                   pass_tokens_per_s=corpus.numel() / max(summary["pass_seconds"], 1e-9) if layers else None)
    return summary


def _write_layers(engine: Engine, factory: sessionmaker[Session], saes: dict[int, object],
                  stats: dict[int, FeatureStats], todo: dict[int, set[int]], params: BuildParams,
                  corpus: torch.Tensor, feature_batch: int, progress: bool,
                  on_progress: Callable[[dict], None] | None = None) -> int:
    """Write the dashboards of these layers' pending features, a batch of features per transaction; returns how
    many were written."""
    written = 0

    def write(layer: int, build_id: int, dashboards: list[FeatureDashboard], columns: ExampleColumns) -> None:
        with transaction(factory) as session:  # a batch of features is written whole or not at all
            write_features(session, sae=session.merge(saes[layer]), build_id=build_id, dashboards=dashboards,
                           columns=columns)

    def finish(build_id: int) -> None:
        with transaction(factory) as session:
            finish_build(session, build_id=build_id)

    # one writer thread: the database inserts a batch (the driver lets go of the GIL) while the next is prepared;
    # at most one batch waits, and a failed write stops the build at the next batch
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="dashboards-writer") as writer:
        in_flight: tuple[Future, int] | None = None  # the batch being written and its number of features

        def wait() -> int:
            nonlocal written
            if in_flight is None:
                return 0
            in_flight[0].result()
            written += in_flight[1]
            if on_progress is not None and in_flight[1]:
                on_progress({"phase": "writing", "layer": layer, "done": written - base, "total": len(pending)})
            return in_flight[1]

        for layer in sorted(stats):
            with transaction(factory) as session:
                build_id = start_build(session, sae=session.merge(saes[layer]), params=params.as_dict()).id
            pending, base = sorted(todo[layer]), written
            if on_progress is not None:
                on_progress({"phase": "writing", "layer": layer, "done": 0, "total": len(pending)})
            top = stats[layer].sorted_top()
            bar = tqdm(total=len(pending), unit="feature", desc=f"dashboards: writing L{layer}",
                       disable=not progress)
            for i in range(0, len(pending), feature_batch):
                chunk = pending[i : i + feature_batch]
                dashboards, columns = feature_dashboards(engine, stats[layer], chunk, params, corpus, top)
                bar.update(wait())
                in_flight = writer.submit(write, layer, build_id, dashboards, columns), len(chunk)
            bar.update(wait())
            bar.close()
            in_flight = writer.submit(finish, build_id), 0
        wait()
    return written

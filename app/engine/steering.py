"""Steering: generation with SAE-latent edits on hook_z that keep the SAE's reconstruction error, so that an edit
of size zero leaves every logit bit-for-bit unchanged; knows nothing of HTTP or storage.

z' = z + Σ_edits (a'_f - a_f) · W_dec[f] (masked to some heads, at some positions), which equals
SAE-decode(a') + (z - SAE-decode(a)): the edited reconstruction plus the untouched error term.

`generate` runs the default and the steered continuation together, one forward pass per token on a batch of two
with TransformerLens's KV cache; `generate_uncached` reruns the whole sequence for every token, one run at a
time, and is the reference that the tests hold `generate` to. `generate_steps` is `generate` one token at a time,
so that a server can run short requests between the tokens of a long generation.
"""

from __future__ import annotations

import time
from collections.abc import Generator
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.nn.functional as F
from transformer_lens import HookedTransformer
from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache
from transformer_lens.utilities.activation_functions import apply_softcap
from transformer_lens.utilities.tokenize_utils import get_attention_mask

from app.engine.features import flat_z
from app.engine.saes import AttnSAE

MODES = ("add", "clamp", "ablate")  # what LayerEdit implements; tests hold it to the contract's STEER_MODES
DEFAULT, STEERED = 0, 1  # the batch rows of `generate`
T = TypeVar("T")


class OverBudget(RuntimeError):
    """Generation passed its deadline (checked between tokens, so a forward pass is never cut in half)."""


@dataclass(frozen=True)
class Intervention:
    """One edit, checked against the model (Engine.steer builds these from the contract's InterventionSpec, whose
    fields are these)."""

    layer: int
    feature: int
    mode: str  # add (a += value), clamp (a = value) or ablate (a = 0)
    value: float = 0.0
    heads: tuple[int, ...] | None = None  # None: all heads
    positions: tuple[int, ...] | None = None  # prompt positions; None: every position, generated ones too


class LayerEdit:
    """The edits of one layer as a hook_z forward hook. With a KV cache a forward pass sees only the new positions,
    from `start` on; an edit there depends only on z at the same position, so editing the new positions alone
    gives what editing the whole sequence gives."""

    def __init__(self, sae: AttnSAE, edits: list[Intervention], prompt_len: int, row: int | None = None) -> None:
        self.sae, self.edits, self.prompt_len = sae, edits, prompt_len
        self.row = row  # the one batch row to edit; None: every row
        self.start = 0  # absolute position of the first position this forward pass sees (the cache's length)
        self.directions = torch.stack(  # (n_edits, d_in)
            [sae.decoder_direction(e.feature, list(e.heads) if e.heads else None) for e in edits])
        self.features = torch.tensor([e.feature for e in edits])
        # add needs no latents: its delta is the value itself, so the SAE's encoder never runs for it
        self.needs_latents = any(e.mode != "add" for e in edits)
        self.prompt_only = all(e.positions is not None for e in edits)

    def __call__(self, z: torch.Tensor, hook) -> torch.Tensor:  # z (B, T, head_index, d_head)
        T = z.shape[1]
        if self.prompt_only and self.start >= self.prompt_len:
            return z  # every edit is limited to prompt positions, and these are all generated ones
        target = z if self.row is None else z[self.row:self.row + 1]
        x = flat_z(target)  # (B', T, d_in)
        if self.needs_latents:
            acts, _ = self.sae.encode(x)
            a = acts[..., self.features]  # (B', T, n_edits)
            delta = torch.empty_like(a)
        else:
            delta = x.new_empty(*x.shape[:-1], len(self.edits), dtype=self.directions.dtype)
        for i, e in enumerate(self.edits):
            if e.mode == "add":
                delta[..., i] = e.value
            elif e.mode == "clamp":
                delta[..., i] = e.value - a[..., i]
            else:
                delta[..., i] = -a[..., i]
            if e.positions is not None:
                keep = torch.zeros(T, dtype=torch.bool, device=z.device)
                end = min(self.prompt_len, self.start + T)
                keep[[p - self.start for p in e.positions if self.start <= p < end]] = True
                delta[..., i] = delta[..., i] * keep
        edited = target + (delta @ self.directions.to(delta.dtype)).view_as(target).to(z.dtype)
        if self.row is None:
            return edited
        return torch.cat([z[:self.row], edited, z[self.row + 1:]])


def _edit_hook(sae: AttnSAE, edits: list[Intervention], prompt_len: int) -> LayerEdit:
    """The hook that edits every row of a whole sequence (positions from 0)."""
    return LayerEdit(sae, edits, prompt_len)


def _layer_edits(saes: dict[int, AttnSAE], interventions: list[Intervention], prompt_len: int,
                 row: int | None = None) -> list[LayerEdit]:
    return [LayerEdit(saes[layer], [e for e in interventions if e.layer == layer], prompt_len, row)
            for layer in sorted({e.layer for e in interventions})]


@dataclass
class Generation:
    token_ids: list[int]
    logprobs: list[float]  # of each generated token, at temperature 1
    top: list[list[tuple[int, float]]]  # per generated token, the most likely tokens


def _next_tokens(logits: torch.Tensor, temperature: float, generators: list[torch.Generator]) -> torch.Tensor:
    """logits (B, d_vocab) -> (B,) the next token of each row: greedy (temperature 0), or drawn with row b's own
    generator."""
    if temperature < 1e-6:  # greedy; also keeps logits / temperature from overflowing
        return logits.argmax(-1)
    # the top logit is 0: never inf - inf
    probs = ((logits - logits.max(-1, keepdim=True).values) / temperature).softmax(-1)
    return torch.cat([torch.multinomial(p, 1, generator=g) for p, g in zip(probs, generators, strict=True)])


def _last_logits(model: HookedTransformer, resid: torch.Tensor, W_U_T: torch.Tensor) -> torch.Tensor:
    """resid (B, T, d_model) after the last block -> (B, d_vocab) the logits at the last position, by
    TransformerLens's final norm and unembedding (the same F.linear on the same weight layout), W_U_T being
    W_U.T made contiguous once by the caller instead of on every call as TransformerLens's Unembed does."""
    resid = resid[:, -1:]  # (B, 1, d_model): the norm is per position, and only the last one is sampled from
    if model.cfg.normalization_type is not None:
        resid = model.ln_final(resid)
    return apply_softcap(F.linear(resid, W_U_T, model.unembed.b_U), model.cfg.output_logits_soft_cap)[:, 0]


def generate(
    model: HookedTransformer,
    ids: torch.Tensor,
    max_new_tokens: int,
    temperature: float,
    seed: int,
    top_logprobs: int,
    saes: dict[int, AttnSAE],
    interventions: list[Intervention],
    deadline: float | None = None,
) -> tuple[Generation, Generation]:
    """The default and the steered continuation of ids (1, T), greedy (temperature 0) or each sampled with its own
    generator seeded with `seed`: the same tokens and log-probabilities as generate_uncached without and with the
    interventions, to float rounding. One forward pass per token on a batch of two (row DEFAULT unedited, row
    STEERED edited) that after the prompt feeds only the new tokens, the earlier keys and values coming from
    TransformerLens's KV cache. Stops with OverBudget once time.monotonic() passes deadline, and with
    FloatingPointError (saying which run) on logits that are not finite. generate_steps, run to its end."""
    return run_steps(generate_steps(model, ids, max_new_tokens, temperature, seed, top_logprobs, saes,
                                    interventions, deadline))


def run_steps(steps: Generator[None, None, T]) -> T:
    """A step-wise computation run to its end: its result."""
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return done.value


def generate_steps(
    model: HookedTransformer,
    ids: torch.Tensor,
    max_new_tokens: int,
    temperature: float,
    seed: int,
    top_logprobs: int,
    saes: dict[int, AttnSAE],
    interventions: list[Intervention],
    deadline: float | None = None,
) -> Generator[None, None, tuple[Generation, Generation]]:
    """`generate` one token at a time: a generator that yields after each forward pass (the prompt's, then one per
    new token) and returns (default, steered). Between steps the model is left as it was (the edit hooks are on
    it only during a step's forward pass; the KV cache and the samplers stay here), so a caller may run other
    computations on the same model between two steps and the result is still `generate`'s."""
    prompt_len = ids.shape[1]
    edits = _layer_edits(saes, interventions, prompt_len, row=STEERED)
    hooks = [(e.sae.hook_name, e) for e in edits]
    generators = [torch.Generator(device=ids.device).manual_seed(seed) for _ in (DEFAULT, STEERED)]
    runs = (Generation([], [], []), Generation([], [], []))
    cache = TransformerLensKeyValueCache.init_cache(model.cfg, ids.device, batch_size=2)
    tokens = ids.expand(2, -1)  # (2, T): what this step feeds; the prompt, then each row's new token
    # the mask the uncached forward makes for itself: all ones unless the tokenizer pads on the left (with a
    # cache TransformerLens would otherwise compute one that drops trailing pad-token ids, e.g. a generated EOS)
    left = model.tokenizer is not None and model.tokenizer.padding_side == "left"
    mask = (get_attention_mask(model.tokenizer, tokens, model.cfg.default_prepend_bos) if left
            else torch.ones_like(tokens))
    W_U_T = None
    for step in range(max_new_tokens):
        if step:
            yield  # between tokens: the model is free for other work
        length = prompt_len + step  # tokens so far, in each row
        if length >= model.cfg.n_ctx:
            break
        if deadline is not None and time.monotonic() > deadline:
            raise OverBudget(f"generation passed its time budget after {step} tokens")
        with torch.inference_mode(), model.hooks(fwd_hooks=hooks):
            if W_U_T is None:  # (d_vocab, d_model): TransformerLens copies this every pass, 154 MB at GPT-2 Small
                W_U_T = model.unembed.W_U.T.contiguous()
            for edit in edits:
                edit.start = length - tokens.shape[1]
            resid = model(tokens, past_kv_cache=cache, attention_mask=mask, stop_at_layer=model.cfg.n_layers)
            logits = _last_logits(model, resid, W_U_T).float()  # (2, d_vocab)
            finite = torch.isfinite(logits).all(-1).tolist()
            if not all(finite):
                run = "steered" if finite[DEFAULT] else "default"
                raise FloatingPointError(f"the {run} run's logits were not finite at generated token {step}")
            logp = logits.log_softmax(-1)  # (2, d_vocab)
            nxt = _next_tokens(logits, temperature, generators)  # (2,)
            chosen = logp.gather(-1, nxt[:, None])[:, 0].tolist()
            top = logp.topk(top_logprobs) if top_logprobs else None
            top_ids, top_lps = (top.indices.tolist(), top.values.tolist()) if top else ([[], []], [[], []])
        for b, (run, token) in enumerate(zip(runs, nxt.tolist(), strict=True)):
            run.token_ids.append(token)
            run.logprobs.append(chosen[b])
            run.top.append(list(zip(top_ids[b], top_lps[b], strict=True)))
        tokens = nxt[:, None]  # (2, 1)
        mask = torch.ones_like(tokens)
    return runs


def generate_uncached(
    model: HookedTransformer,
    ids: torch.Tensor,
    max_new_tokens: int,
    temperature: float,
    seed: int,
    top_logprobs: int,
    saes: dict[int, AttnSAE],
    interventions: list[Intervention],
    deadline: float | None = None,
) -> Generation:
    """One run, greedy (temperature 0) or seeded sampling from ids (1, T), with interventions on hook_z, rerunning
    the whole sequence for every token; stops with OverBudget once time.monotonic() passes deadline."""
    hooks = [(e.sae.hook_name, e) for e in _layer_edits(saes, interventions, ids.shape[1])]
    generator = torch.Generator(device=ids.device).manual_seed(seed)
    out = Generation([], [], [])
    with torch.inference_mode():
        for _ in range(max_new_tokens):
            if ids.shape[1] >= model.cfg.n_ctx:
                break
            if deadline is not None and time.monotonic() > deadline:
                raise OverBudget(f"generation passed its time budget after {len(out.token_ids)} tokens")
            logits = model.run_with_hooks(ids, fwd_hooks=hooks)[0, -1].float()  # (d_vocab,)
            if not torch.isfinite(logits).all():
                raise FloatingPointError("the edited model produced non-finite logits")
            logp = logits.log_softmax(-1)
            nxt = int(_next_tokens(logits[None], temperature, [generator])[0])
            top = logp.topk(top_logprobs) if top_logprobs else None
            out.token_ids.append(nxt)
            out.logprobs.append(float(logp[nxt]))
            out.top.append(list(zip(top.indices.tolist(), top.values.tolist(), strict=True)) if top else [])
            ids = torch.cat([ids, torch.tensor([[nxt]], device=ids.device)], dim=1)
    return out

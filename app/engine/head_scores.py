"""Per-head induction and previous-token scores of a model, on a fixed batch of repeated random tokens: the one
definition that the head page (Engine.head_scores), `saex eval` and the demo model's training log all use; knows
nothing of SAEs, corpora or the app.

The settings are constants, not arguments, so that no caller can compute a number the others would not show.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformer_lens import HookedTransformer

SEQ_LEN = 50  # random tokens per copy (fewer when the context is shorter: BOS + two copies must fit)
BATCH = 16  # sequences; the score is the mean over them
SEED = 0  # a fixed generator: the same tokens on every call, every machine


@dataclass(frozen=True)
class HeadScores:
    induction: torch.Tensor  # (layer, head_index): attention from the second copy to the token after the first
    previous_token: torch.Tensor  # (layer, head_index): attention from each token to the one just before it
    first_half_loss: float | None  # mean loss on the first copy (nats): random tokens cannot be predicted
    second_half_loss: float | None  # mean loss on the second copy: low when induction heads copy the first


def repeated_random_tokens(model: HookedTransformer, bos: int) -> torch.Tensor:
    """(BATCH, 1 + 2n): BOS, then n random tokens (never BOS) twice over."""
    n = min(SEQ_LEN, (model.cfg.n_ctx - 1) // 2)
    g = torch.Generator().manual_seed(SEED)
    rand = torch.randint(0, model.cfg.d_vocab - 1, (BATCH, n), generator=g)  # (B, n)
    rand += (rand >= bos).long()  # skip over BOS: uniform over every other token
    return torch.cat([torch.full((BATCH, 1), bos), rand, rand], dim=1)


def head_scores(model: HookedTransformer, bos: int | None = None, *, losses: bool = True) -> HeadScores:
    """One forward pass over repeated random tokens; BOS defaults to the model's tokenizer's (0 without one).
    losses=False leaves the two losses None and skips the unembedding (its logits are (16, 101, d_vocab) floats,
    325 MB at GPT-2's vocabulary); the scores are the same either way."""
    if bos is None:
        bos = model.tokenizer.bos_token_id if model.tokenizer is not None else 0
    tokens = repeated_random_tokens(model, bos)
    n = (tokens.shape[1] - 1) // 2
    names = [f"blocks.{layer}.attn.hook_pattern" for layer in range(model.cfg.n_layers)]
    with torch.inference_mode():
        out, cache = model.run_with_cache(tokens.to(model.W_E.device), names_filter=lambda name: name in names,
                                          stop_at_layer=None if losses else model.cfg.n_layers)
        induction, previous = [], []
        for name in names:
            pattern = cache[name].float()  # (B, head_index, query_pos, key_pos)
            # query n+1+i (second copy) attends to key 1+i+1: the token after the first occurrence; diagonal
            # offset -(n-1) holds (query q, key q-n+1) for q = n-1 .. 2n, of which q >= n+1 are second-copy tokens
            stripe = pattern.diagonal(offset=-(n - 1), dim1=-2, dim2=-1)  # (B, head_index, n+2)
            induction.append(stripe[..., 2:].mean(dim=(0, -1)))
            # key q-1 for q = 2 .. 2n: position 1's previous token is BOS, where heads park attention anyway
            previous.append(pattern.diagonal(offset=-1, dim1=-2, dim2=-1)[..., 1:].mean(dim=(0, -1)))
        first = second = None
        if losses:
            targets = tokens[:, 1:, None].to(out.device)
            logprobs = out.float().log_softmax(-1)[:, :-1].gather(-1, targets)[..., 0]  # (B, 2n)
            # logprobs[:, i] predicts token i+1: the first copy is tokens 1..n, the second n+1..2n; each copy's first
            # token is left out (after BOS, and at the seam between copies: neither can be predicted)
            first, second = float(-logprobs[:, 1:n].mean()), float(-logprobs[:, n + 1 :].mean())
    return HeadScores(induction=torch.stack(induction).cpu(), previous_token=torch.stack(previous).cpu(),
                      first_half_loss=first, second_half_loss=second)

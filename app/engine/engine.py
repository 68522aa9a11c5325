"""The engine: a model with one hook_z SAE per layer, answering every model-backed question of the API as plain
dicts whose fields are the contract's; knows nothing of HTTP, storage or settings.

Input problems raise NotFound (an unknown layer, feature or position), TooLong (more tokens than the context)
or Invalid (anything else a caller sent), each with a message that says what to change. Steering past its
deadline raises OverBudget.
"""

from __future__ import annotations

import math
import re
from collections.abc import Generator, Iterator, Sequence
from contextlib import contextmanager

import torch
from transformer_lens import HookedTransformer

from app.engine import features as F
from app.engine.reconstruction import reconstruction_metrics
from app.engine.saes import AttnSAE
from app.engine.steering import MODES, Intervention, generate_steps, run_steps
from app.engine.tokens import direct_encoder


class InputError(ValueError):
    pass


class NotFound(InputError):
    pass


class TooLong(InputError):
    pass


class Invalid(InputError):
    pass


MAX_TOP_K = 256
MAX_TOP_LOGPROBS = 20
MAX_GRAPH_DEPTH = 4  # levels of feature nodes a graph opens
MAX_GRAPH_TOP_N = 100  # links kept per graph node


class Engine:
    """A model and one SAE set: at most one SAE per layer, each with an id unique within the model (several sets of
    one model are several engines, in several workers)."""

    def __init__(self, model: HookedTransformer, saes: list[AttnSAE], name: str, sae_set: str = "default") -> None:
        if not saes:
            raise ValueError("an engine needs at least one SAE")
        self.model, self.name, self.sae_set = model, name, sae_set
        self.saes: dict[int, AttnSAE] = {s.layer: s for s in saes}
        self.device = next(model.parameters()).device
        self.prepend_bos = bool(model.cfg.default_prepend_bos)
        self._token_str: dict[int, str] = {}
        self._direct_ids = direct_encoder(model)

    # --- how much work a pass is, and on how many threads it runs -----------------------------------------------

    def pass_flops(self, tokens: int) -> float:
        """Floating-point operations (2 per multiply-add) of one analysis pass over `tokens` tokens: every block
        before the last SAE's layer whole, that layer's attention up to hook_z (no output projection, no MLP),
        and every SAE's encoder."""
        cfg = self.model.cfg
        last = max(self.saes)
        qkv = 3 * cfg.d_model * cfg.n_heads * cfg.d_head
        out = cfg.d_model * cfg.n_heads * cfg.d_head
        mlp = 0 if cfg.attn_only else (3 if cfg.gated_mlp else 2) * cfg.d_model * cfg.d_mlp
        scores = 2 * tokens * cfg.n_heads * cfg.d_head  # per token: q.k over the context, then pattern @ v
        encoders = sum(s.d_in * s.d_sae for s in self.saes.values())
        return 2.0 * tokens * (last * (out + mlp) + (last + 1) * (qkv + scores) + encoders)

    @staticmethod
    @contextmanager
    def threads(n: int) -> Iterator[None]:
        """Compute with n intra-op threads inside the block (on the calling thread), as before after it."""
        before = torch.get_num_threads()
        if n == before:
            yield
            return
        torch.set_num_threads(n)
        try:
            yield
        finally:
            torch.set_num_threads(before)

    # --- description and tokens -------------------------------------------------------------------------------

    def info(self) -> dict:
        cfg = self.model.cfg
        return {
            "model": {"name": self.name, "n_layers": cfg.n_layers, "n_heads": cfg.n_heads, "d_head": cfg.d_head,
                      "d_model": cfg.d_model, "n_ctx": cfg.n_ctx, "d_vocab": cfg.d_vocab,
                      "prepends_bos": self.prepend_bos},
            "saes": [{"id": s.sae_id, "layer": s.layer, "hook_name": s.hook_name, "d_sae": s.d_sae,
                      "architecture": s.architecture, "source": s.source, "set": self.sae_set}
                     for s in self.saes.values()],
        }

    def to_str(self, ids: list[int]) -> list[str]:
        """Each token id as the text it decodes to alone; memoised, the tokenizer is slow one id at a time."""
        cache, decode = self._token_str, self.model.tokenizer.decode
        out = []
        for i in ids:
            s = cache.get(i)
            if s is None:
                s = cache[i] = decode([i])
            out.append(s)
        return out

    def encode_text(self, text: str) -> torch.Tensor:
        """(1, T) token ids, BOS first when the model prepends one; TooLong past the context."""
        if not isinstance(text, str) or not text:
            raise Invalid("text is empty: send the prompt to analyse as a non-empty string")
        direct = None if self._direct_ids is None else self._direct_ids(text)
        if direct is None:
            ids = self.model.to_tokens(text, prepend_bos=self.prepend_bos, truncate=False).to(self.device)
        else:
            ids = torch.tensor([direct], dtype=torch.long, device=self.device)
        if ids.shape[1] > self.model.cfg.n_ctx:
            raise TooLong(f"the text is {ids.shape[1]} tokens long but the model's context is "
                          f"{self.model.cfg.n_ctx} tokens: shorten it")
        return ids

    def tokenize(self, text: str) -> dict:
        ids = self.encode_text(text)[0].tolist()
        return {"tokens": self.to_str(ids), "token_ids": ids}

    def sae(self, layer: int) -> AttnSAE:
        if layer not in self.saes:
            raise NotFound(f"there is no SAE on layer {layer}; layers with SAEs: {sorted(self.saes)}")
        return self.saes[layer]

    def sae_named(self, sae_id: str) -> AttnSAE:
        for sae in self.saes.values():
            if sae.sae_id == sae_id:
                return sae
        raise NotFound(f"there is no SAE {sae_id!r} here; SAEs: {[s.sae_id for s in self.saes.values()]}")

    def check_feature(self, sae: AttnSAE, feature: int) -> None:
        if not 0 <= feature < sae.d_sae:
            raise NotFound(f"feature {feature} does not exist in SAE {sae.sae_id}: features are 0 to {sae.d_sae - 1}")

    # --- prompt analysis --------------------------------------------------------------------------------------

    def analyze(self, text: str, layers: list[int] | None = None, top_k: int = 10,
                head_contributions: bool = False) -> dict:
        if not 1 <= top_k <= MAX_TOP_K:
            raise Invalid(f"top_k must be between 1 and {MAX_TOP_K}, got {top_k}")
        saes = [self.sae(layer) for layer in (sorted(set(layers)) if layers else sorted(self.saes))]
        ids = self.encode_text(text)
        zs = F.capture(self.model, ids, [s.hook_name for s in saes])
        out_layers = []
        with torch.inference_mode():
            # every layer's tensor work first, then the Python lists in one stretch: the lists are built faster
            # with the interpreter's caches no longer cleared by a matrix product in between (-2%, same runs)
            tops = [sae.top_active(F.flat_z(zs[sae.hook_name][0]), top_k) for sae in saes]
            # activations as their shortest float32 decimals, every layer's at once: (layer, T, top_k)
            shown = F.float32_shortest(torch.stack([values for values, _, _ in tops]))
            for sae, (_, indices, l0), values in zip(saes, tops, shown, strict=True):
                z = zs[sae.hook_name][0]  # (T, head_index, d_head)
                listed, l0 = F.top_features(values, indices), l0.tolist()
                if head_contributions:
                    for t, row in enumerate(listed):
                        if row:
                            heads = F.float32_shortest(
                                F.token_head_contributions(sae, z[t], [e["feature"] for e in row])).tolist()
                            for entry, h in zip(row, heads, strict=True):
                                entry["heads"] = h
                out_layers.append({"layer": sae.layer, "sae_id": sae.sae_id, "l0": l0, "top_features": listed})
        token_ids = ids[0].tolist()
        return {"tokens": self.to_str(token_ids), "token_ids": token_ids, "layers": out_layers}

    def feature_trace(self, text: str, layer: int, feature: int) -> dict:
        return self.feature_trace_ids(self.encode_text(text), layer, feature)

    def feature_trace_ids(self, ids: torch.Tensor, layer: int, feature: int) -> dict:
        """The trace of a feature on token ids (1, T) as given (BOS included if wanted)."""
        sae = self.sae(layer)
        self.check_feature(sae, feature)
        z = F.capture(self.model, ids, [sae.hook_name])[sae.hook_name][0]  # (T, head_index, d_head)
        with torch.inference_mode():
            acts, pre = sae.encode(F.flat_z(z))
            heads = F.head_contributions(sae, z, feature)  # (T, head_index)
            bias = float(sae.bias_term()[feature])
        token_ids = ids[0].tolist()
        return {
            "tokens": self.to_str(token_ids), "token_ids": token_ids, "layer": layer, "feature": feature,
            "activations": acts[:, feature].tolist(), "pre_activations": pre[:, feature].tolist(),
            "head_contributions": heads.tolist(), "bias_contribution": [bias] * len(token_ids),
        }

    def dfa(self, text: str, layer: int, feature: int, position: int) -> dict:
        sae = self.sae(layer)
        self.check_feature(sae, feature)
        ids = self.encode_text(text)
        if not 0 <= position < ids.shape[1]:
            raise NotFound(f"position {position} is outside the prompt: its {ids.shape[1]} tokens are at positions "
                           f"0 to {ids.shape[1] - 1} (BOS included)")
        prefix = f"blocks.{layer}.attn."
        acts = F.capture(self.model, ids, [prefix + "hook_pattern", prefix + "hook_v", prefix + "hook_z"])
        with torch.inference_mode():
            contrib = F.dfa(sae, acts[prefix + "hook_pattern"][0], acts[prefix + "hook_v"][0], feature, position)
            act, pre = sae.encode(F.flat_z(acts[prefix + "hook_z"][0, position]))
        token_ids = ids[0].tolist()
        return {
            "tokens": self.to_str(token_ids), "token_ids": token_ids, "layer": layer, "feature": feature,
            "position": position, "pre_activation": float(pre[feature]), "activation": float(act[feature]),
            "contributions": contrib.tolist(), "bias_contribution": float(sae.bias_term()[feature]),
        }

    # --- weights alone ----------------------------------------------------------------------------------------

    def feature_weights(self, layer: int, features: list[int], k: int = 10) -> list[dict]:
        """Per feature, what its weights alone say: head attribution, logit effects, similar features."""
        sae = self.sae(layer)
        for f in features:
            self.check_feature(sae, f)
        with torch.inference_mode():
            heads = F.head_attribution(sae, features)
            logits = F.logit_effects(self.model, sae, features, k, self.to_str)
            similar = F.decoder_similarity(sae, features, k)
        return [{"head_attribution": h, "logit_effects": lg, "similar_features": s}
                for h, lg, s in zip(heads, logits, similar, strict=True)]

    # --- steering ---------------------------------------------------------------------------------------------

    def steer(self, text: str, interventions: Sequence[Intervention], max_new_tokens: int = 32,
              temperature: float = 0.0, seed: int = 0, top_logprobs: int = 5, deadline: float | None = None) -> dict:
        """interventions: Intervention, or anything with its fields (the worker hands over the contract's
        InterventionSpec objects as they came); each is checked against this model here. deadline: a
        time.monotonic() value past which generation stops with OverBudget."""
        return run_steps(self.steer_steps(text, interventions, max_new_tokens, temperature, seed, top_logprobs,
                                          deadline))

    def steer_steps(self, text: str, interventions: Sequence[Intervention], max_new_tokens: int = 32,
                    temperature: float = 0.0, seed: int = 0, top_logprobs: int = 5,
                    deadline: float | None = None) -> Generator[None, None, dict]:
        """`steer` one forward pass at a time (steering.generate_steps): yields between tokens, returns steer's
        answer; the model is free for other work between steps."""
        if not 0 <= max_new_tokens <= self.model.cfg.n_ctx:
            raise Invalid(f"max_new_tokens must be between 0 and the context, {self.model.cfg.n_ctx}; "
                          f"got {max_new_tokens}")
        if not (math.isfinite(temperature) and 0 <= temperature <= 10):
            raise Invalid(f"temperature must be a number from 0 (greedy) to 10, got {temperature}")
        if not 0 <= top_logprobs <= MAX_TOP_LOGPROBS:
            raise Invalid(f"top_logprobs must be between 0 and {MAX_TOP_LOGPROBS}, got {top_logprobs}")
        ids = self.encode_text(text)
        edits = [self._intervention(i, ids.shape[1]) for i in interventions]
        try:
            default, steered = yield from generate_steps(self.model, ids, max_new_tokens, temperature, seed,
                                                         top_logprobs, self.saes, edits, deadline)
        except FloatingPointError as exc:
            raise Invalid(f"the interventions drove the model's logits to infinity or NaN ({exc}): "
                          "use smaller values") from exc
        runs = {}
        for key, gen in (("default", default), ("steered", steered)):
            toks = self.to_str(gen.token_ids)
            runs[key] = {
                "text": self.model.tokenizer.decode(gen.token_ids), "tokens": toks, "token_ids": gen.token_ids,
                "logprobs": [
                    {"token": t, "logprob": lp,
                     "top": [{"token": s, "logprob": v} for s, v in zip(self.to_str([i for i, _ in top]),
                                                                         [v for _, v in top], strict=True)]}
                    for t, lp, top in zip(toks, gen.logprobs, gen.top, strict=True)
                ],
            }
        return runs

    def _intervention(self, spec: Intervention, prompt_len: int) -> Intervention:
        sae = self.sae(int(spec.layer))
        feature = int(spec.feature)
        self.check_feature(sae, feature)
        mode = spec.mode
        if mode not in MODES:
            raise Invalid(f"mode must be one of {MODES}, got {mode!r}")
        value = float(spec.value or 0.0)
        if not math.isfinite(value):
            raise Invalid(f"value must be a finite number, got {value}")
        heads = spec.heads
        if heads is not None:
            bad = [h for h in heads if not 0 <= h < sae.n_heads]
            if bad or not heads:
                raise Invalid(f"heads must be a non-empty list of heads 0 to {sae.n_heads - 1}; got {heads}")
        positions = spec.positions
        if positions is not None:
            bad = [p for p in positions if not 0 <= p < prompt_len]
            if bad or not positions:
                raise Invalid(f"positions must be prompt positions 0 to {prompt_len - 1} (BOS included); "
                              f"got {bad or positions}")
        return Intervention(layer=sae.layer, feature=feature, mode=mode, value=value,
                            heads=tuple(heads) if heads is not None else None,
                            positions=tuple(positions) if positions is not None else None)

    # --- metrics ----------------------------------------------------------------------------------------------

    def head_scores(self) -> dict:
        """Per layer and head: induction and previous-token scores, as app/engine/head_scores.py defines them
        (the numbers `saex eval` reports too). Computed once per engine."""
        if getattr(self, "_head_scores", None) is None:
            from app.engine.head_scores import head_scores

            scores = head_scores(self.model, losses=False)  # the page shows no losses: no unembedding
            self._head_scores = {"induction": scores.induction.tolist(),
                                 "previous_token": scores.previous_token.tolist()}
        return self._head_scores

    def reconstruction(self, ids: torch.Tensor) -> list[dict]:
        return reconstruction_metrics(self.model, list(self.saes.values()), ids.to(self.device))

    # --- attention circuits -----------------------------------------------------------------------------------

    def graph(self, text: str, layer: int, feature: int, position: int, max_depth: int = 2, threshold: float = 0.02,
              top_n: int = 10, expand: Sequence[str] = ()) -> dict:
        """The attribution graph of a feature's pre-activation at a position (app/engine/attribution_graph.py);
        `expand`: feature node ids (f:L:s:g) opened one more level wherever the graph reaches them."""
        from app.engine.attribution_graph import MAX_GRAPH_TOKENS, attribution_graph, unsupported

        sae = self.sae(layer)
        self.check_feature(sae, feature)
        if not 1 <= max_depth <= MAX_GRAPH_DEPTH:
            raise Invalid(f"max_depth must be between 1 and {MAX_GRAPH_DEPTH}, got {max_depth}")
        if not (math.isfinite(threshold) and 0 <= threshold <= 1):
            raise Invalid(f"threshold must be a share of a node's value from 0 to 1, got {threshold}")
        if not 1 <= top_n <= MAX_GRAPH_TOP_N:
            raise Invalid(f"top_n must be between 1 and {MAX_GRAPH_TOP_N}, got {top_n}")
        why = unsupported(self.model)
        if why is not None:
            raise Invalid(f"attribution graphs need a pre-norm LayerNorm transformer, and here {why}")
        ids = self.encode_text(text)
        if ids.shape[1] > MAX_GRAPH_TOKENS:
            raise TooLong(f"the text is {ids.shape[1]} tokens long; graphs take at most {MAX_GRAPH_TOKENS}: shorten it")
        if not 0 <= position < ids.shape[1]:
            raise NotFound(f"position {position} is outside the prompt: its {ids.shape[1]} tokens are at positions "
                           f"0 to {ids.shape[1] - 1} (BOS included)")
        saes = {i: s for i, s in self.saes.items() if i <= layer}
        if any(not re.fullmatch(r"f:\d+:\d+:\d+", e) for e in expand):
            raise Invalid(f"expand takes feature node ids f:layer:position:feature, got {list(expand)[:4]}")
        graph = attribution_graph(self.model, saes, ids, layer, position, feature, max_depth, threshold, top_n,
                                  expand)
        token_ids = ids[0].tolist()
        return {"tokens": self.to_str(token_ids), "token_ids": token_ids, **graph}

    def window_activations(self, layer: int, feature: int, windows: list[list[int]]) -> dict:
        """A feature's activations on token windows, each read as its own prompt (app/engine/windows.py)."""
        from app.engine.windows import window_activations

        sae = self.sae(layer)
        self.check_feature(sae, feature)
        vocab = self.model.cfg.d_vocab
        if any(not 0 <= i < vocab for w in windows for i in w):
            raise Invalid(f"token ids must lie in 0..{vocab - 1}")
        if max(map(len, windows)) + 1 > self.model.cfg.n_ctx:
            raise TooLong(f"a window is longer than the model's context of {self.model.cfg.n_ctx} tokens")
        bos = self.model.tokenizer.bos_token_id if self.prepend_bos and self.model.tokenizer is not None else None
        acts = window_activations(self.model, sae, windows, feature, bos)
        return {"activations": [a.tolist() for a in acts]}

    def discover_circuits(self, positive: Sequence[str] = (), negative: Sequence[str] = (), task: str | None = None,
                          positions: str = "all", max_edges: int = 100, patching: bool = True,
                          ground_truth: Sequence | None = None) -> dict:
        """O'Neill & Bui's circuit discovery (app/engine/circuit_discovery.py) on prompt lists or a built-in task
        (app/engine/circuit_tasks.py); ground_truth: heads (anything with .layer and .head, or (layer, head) pairs)."""
        from app.engine import circuit_discovery as C
        from app.engine.circuit_tasks import task_prompts

        if task is not None:
            if task not in C.TASKS:
                raise Invalid(f"task must be one of {C.TASKS}, got {task!r}")
            bos = self.model.tokenizer.bos_token_id if self.model.tokenizer is not None else 0
            pos_ids, neg_ids = task_prompts(task, self.model, bos, self.encode_text)
        else:
            if not positive or not negative:
                raise Invalid("give at least one positive and one negative prompt, or a built-in task")
            if max(len(positive), len(negative)) > C.MAX_PROMPTS:
                raise Invalid(f"at most {C.MAX_PROMPTS} prompts on each side")
            pos_ids = [self.encode_text(t) for t in positive]
            neg_ids = [self.encode_text(t) for t in negative]
        if positions not in C.POSITIONS:
            raise Invalid(f"positions must be one of {C.POSITIONS}, got {positions!r}")
        if not 0 <= max_edges <= C.MAX_EDGES:
            raise Invalid(f"max_edges must be between 0 and {C.MAX_EDGES}, got {max_edges}")
        truth = None
        if ground_truth is not None:
            truth = [C.Head(*h) if isinstance(h, (tuple, list)) else C.Head(int(h.layer), int(h.head))
                     for h in ground_truth]
            bad = [h for h in truth if h.layer not in self.saes or not 0 <= h.head < self.model.cfg.n_heads]
            if bad:
                raise Invalid(f"ground_truth names heads outside the layers with SAEs {sorted(self.saes)} or heads "
                              f"0 to {self.model.cfg.n_heads - 1}: {[(h.layer, h.head) for h in bad]}")
        return C.discover(self.model, self.saes, pos_ids, neg_ids, positions, max_edges, patching, truth)

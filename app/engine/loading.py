"""Loads a model and its hook_z SAEs from local files, and checks that they fit together before anything is
served; knows nothing of HTTP or storage.

Models: a TransformerLens name (weights from the local Hugging Face cache, offline) or a folder with
`config.json` (HookedTransformerConfig fields), `model.safetensors` and `tokenizer.json`.
SAEs: a SAELens folder (`cfg.json`, `sae_weights.safetensors`); `release:sae_id` of the SAELens registry, with
its files in the local Hugging Face cache; or Kissane et al.'s files (`{run}.pt` with `{run}_cfg.json`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import re
import sys
from pathlib import Path

import torch
from sae_lens import SAE, StandardSAE, StandardSAEConfig
from sae_lens.saes.sae import SAEMetadata
from safetensors.torch import load_file
from transformer_lens import HookedTransformer, HookedTransformerConfig

from app.engine.saes import SUPPORTED_ARCHITECTURES, SUPPORTED_NORMALIZATIONS, AttnSAE

HOOK_Z = re.compile(r"^blocks\.(\d+)\.attn\.hook_z$")
NAMED_SPEC = re.compile(r"^([A-Za-z0-9][A-Za-z0-9_.-]{0,63})=(.+)$")  # id=spec: an SAE with an id of its own


class LoadError(ValueError):
    """A model or SAE that cannot be served, with a message naming the file and what is wrong."""


def load_model(spec: str, device: str = "cpu") -> HookedTransformer:
    path = Path(spec)
    if path.is_dir():
        return load_model_folder(path, device)
    if spec.startswith((".", "/")) or path.suffix:
        raise LoadError(f"model folder {spec!r} does not exist")
    try:
        with contextlib.redirect_stdout(sys.stderr):
            model = HookedTransformer.from_pretrained(spec, device=device)
    except Exception as exc:  # TransformerLens raises many kinds; all mean the same to a user
        raise LoadError(
            f"could not load model {spec!r} by TransformerLens name from the local Hugging Face cache "
            f"({type(exc).__name__}: {exc}). Give a model folder, or a name whose files are in the cache."
        ) from exc
    model.eval()
    return model


def load_model_folder(folder: Path, device: str = "cpu") -> HookedTransformer:
    from transformers import PreTrainedTokenizerFast

    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        if not (folder / name).is_file():
            raise LoadError(f"model folder {folder} has no {name}")
    try:
        raw = json.loads((folder / "config.json").read_text())
    except json.JSONDecodeError as exc:
        raise LoadError(f"{folder / 'config.json'} is not valid JSON: {exc}") from exc
    known = {f.name for f in dataclasses.fields(HookedTransformerConfig)}
    try:
        cfg = HookedTransformerConfig(**{k: v for k, v in raw.items() if k in known and k != "device"}, device=device)
    except Exception as exc:
        raise LoadError(f"{folder / 'config.json'} is not a HookedTransformerConfig: {exc}") from exc
    eot = "<|endoftext|>"
    # add_bos_token: the tokenizer prepends BOS itself, which TransformerLens detects and respects
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_file=str(folder / "tokenizer.json"), bos_token=eot, eos_token=eot, pad_token=eot,
        add_bos_token=True, name_or_path=str(folder),
    )
    model = HookedTransformer(cfg, tokenizer=tokenizer, move_to_device=False)
    try:
        state = load_file(folder / "model.safetensors")
        model.load_state_dict(state, strict=True)
    except Exception as exc:
        raise LoadError(f"{folder / 'model.safetensors'} does not match {folder / 'config.json'}: {exc}") from exc
    if device != "cpu":
        with contextlib.redirect_stdout(sys.stderr):  # TransformerLens prints the move; stdout may carry JSON
            model.to(device)
    model.eval()
    return model


def read_sae(spec: str, device: str = "cpu") -> tuple[SAE, str]:
    """A SAELens SAE object from any of the three sources; returns it with a description of its source."""
    path = Path(spec)
    if path.is_dir():
        if not (path / "cfg.json").is_file():
            raise LoadError(f"SAE folder {path} has no cfg.json (a SAELens SAE folder holds cfg.json and "
                            "sae_weights.safetensors)")
        if not (path / "sae_weights.safetensors").is_file():
            raise LoadError(f"SAE folder {path} has no sae_weights.safetensors")
        cfg = _read_json(path / "cfg.json")
        _check_cfg(cfg, path / "cfg.json")
        try:
            return SAE.load_from_disk(path, device=device), str(path)
        except Exception as exc:
            raise LoadError(f"could not load SAE folder {path}: {exc}") from exc
    if path.suffix == ".pt" or path.name.endswith("_cfg.json"):
        return _read_kissane(path, device), str(path)
    if ":" in spec and not path.exists():
        release, sae_id = spec.split(":", 1)
        try:
            sae = SAE.from_pretrained(release, sae_id, device=device)
        except Exception as exc:
            raise LoadError(
                f"could not load SAELens release {release!r} id {sae_id!r} from the local Hugging Face cache "
                f"({type(exc).__name__}: {exc})"
            ) from exc
        return sae, spec
    raise LoadError(f"SAE {spec!r}: no such folder or file (give a SAELens folder, a Kissane et al. .pt file, "
                    "or release:sae_id)")


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise LoadError(f"{path} is not valid JSON: {exc}") from exc


def _check_hook(hook: str | None, source: str) -> int:
    match = HOOK_Z.match(hook or "")
    if match is None:
        raise LoadError(f"SAE {source}: hook_name is {hook!r}, but SAE Explorer serves attention-output SAEs "
                        "on blocks.L.attn.hook_z")
    return int(match.group(1))


def _check_cfg(cfg: dict, where: Path) -> None:
    _check_hook(cfg.get("metadata", {}).get("hook_name") or cfg.get("hook_name") or cfg.get("hook_point"),
                str(where.parent))
    arch = cfg.get("architecture", "standard")
    if arch not in SUPPORTED_ARCHITECTURES:
        raise LoadError(f"{where}: architecture {arch!r} is not supported (use one of {SUPPORTED_ARCHITECTURES})")
    norm = cfg.get("normalize_activations", "none")
    if norm not in SUPPORTED_NORMALIZATIONS:
        raise LoadError(f"{where}: normalize_activations={norm!r} rescales each token, so head contributions "
                        f"would not add up; supported: {SUPPORTED_NORMALIZATIONS}")


def _read_kissane(path: Path, device: str) -> SAE:
    """Kissane et al.'s release: `{run}.pt` (W_enc, W_dec, b_enc, b_dec) and `{run}_cfg.json` (act_name,
    act_size, dict_size). Their encoder subtracts b_dec first, as SAELens's standard SAE does."""
    stem = str(path)[: -len("_cfg.json")] if path.name.endswith("_cfg.json") else str(path)[: -len(".pt")]
    weights_path, cfg_path = Path(stem + ".pt"), Path(stem + "_cfg.json")
    for p in (weights_path, cfg_path):
        if not p.is_file():
            raise LoadError(f"Kissane et al. SAE {path}: {p} is missing (the release pairs {{run}}.pt with "
                            "{run}_cfg.json)")
    cfg = _read_json(cfg_path)
    missing = [k for k in ("act_name", "act_size", "dict_size") if k not in cfg]
    if missing:
        raise LoadError(f"{cfg_path} lacks {', '.join(missing)}")
    try:
        state = torch.load(weights_path, map_location=device, weights_only=True)
    except Exception as exc:
        raise LoadError(f"{weights_path} is not a plain tensor state dict: {exc}") from exc
    sae_cfg = StandardSAEConfig(
        d_in=int(cfg["act_size"]), d_sae=int(cfg["dict_size"]), apply_b_dec_to_input=True,
        reshape_activations="hook_z", device=device,
        metadata=SAEMetadata(hook_name=cfg["act_name"], model_name=cfg.get("model_name")),
    )
    sae = StandardSAE(sae_cfg)
    try:
        sae.load_state_dict({k: state[k].float() for k in ("W_enc", "W_dec", "b_enc", "b_dec")}, strict=True)
    except Exception as exc:
        raise LoadError(f"{weights_path}: weights do not fit {cfg_path} ({exc})") from exc
    return sae


ALIGNMENT = 64  # bytes: what torch's CPU allocator gives; BLAS reads misaligned weights measurably slower


def realign(module: torch.nn.Module) -> None:
    """Give every parameter whose data does not start on a 64-byte boundary a fresh copy that does. safetensors
    hands out views into one buffer behind an 8-byte-aligned header, and MKL's matmul on such a view of an SAE
    encoder took 0.60 ms against 0.45 ms aligned (64 tokens, 256 x 2048, 2 threads)."""
    for param in module.parameters():
        if param.data_ptr() % ALIGNMENT:
            param.data = param.data.clone()


def split_sae_spec(spec: str) -> tuple[str | None, str]:
    """'id=spec' -> (id, spec); a plain spec (a folder, a .pt file, release:id) -> (None, spec). A path that exists
    is a plain spec even when its name holds '='."""
    match = NAMED_SPEC.match(spec)
    if match is None or Path(spec).exists():
        return None, spec
    return match.group(1), match.group(2)


def attach_saes(model: HookedTransformer, specs: list[str], device: str = "cpu") -> list[AttnSAE]:
    """Load every SAE and check it sits on hook_z of this model with d_in = n_heads·d_head, one per layer. A spec
    `id=folder` names its SAE; otherwise its id is L{layer}."""
    out: list[AttnSAE] = []
    by_layer: dict[int, str] = {}
    ids: set[str] = set()
    n_heads, d_head = model.cfg.n_heads, model.cfg.d_head
    for named in specs:
        sae_id, spec = split_sae_spec(named)
        sae, source = read_sae(spec, device)
        hook = sae.cfg.metadata.hook_name
        layer = _check_hook(hook, source)
        if layer >= model.cfg.n_layers:
            raise LoadError(f"SAE {source}: {hook} is past the model's last layer ({model.cfg.n_layers - 1})")
        if sae.cfg.d_in != n_heads * d_head:
            raise LoadError(f"SAE {source}: d_in is {sae.cfg.d_in}, but hook_z of this model has n_heads·d_head = "
                            f"{n_heads}·{d_head} = {n_heads * d_head}")
        if layer in by_layer:
            raise LoadError(f"SAE {source} and SAE {by_layer[layer]} both sit on layer {layer}: give one per layer "
                            "(an SAE set); serve another set from another worker")
        by_layer[layer] = source
        sae_id = sae_id or f"L{layer}"
        if sae_id in ids:
            raise LoadError(f"two SAEs are named {sae_id!r}: SAE ids must be unique")
        ids.add(sae_id)
        sae.eval()
        realign(sae)
        out.append(AttnSAE(sae_id=sae_id, layer=layer, sae=sae, n_heads=n_heads, d_head=d_head, source=source))
    return sorted(out, key=lambda s: s.layer)

"""A training run's checkpoint without a pickle: the model's weights and the optimizer's tensors in one safetensors
file, and everything else (the arguments that rebuild the run, the step, the history, the optimizer's settings,
the random generators' states) in `ckpt.json`; knows nothing of what is being trained.

`ckpt.json` names its safetensors file (`ckpt-{step}.safetensors`) and is replaced last, atomically: a kill at any
moment leaves the previous checkpoint whole, and a resumed run takes the very steps an uninterrupted one would.
"""

from __future__ import annotations

import base64
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

FORMAT = 1


@dataclass
class Checkpoint:
    step: int
    history: list[dict]
    config: dict  # the training config's fields: the arguments that rebuild the run
    model: dict[str, torch.Tensor]  # a state_dict
    optimizer: dict  # a state_dict, as torch.optim.Optimizer.load_state_dict takes it
    numpy_rng: dict  # np.random.Generator.bit_generator.state of the batch sampler
    torch_rng: torch.Tensor  # torch.get_rng_state()


def _write_atomic(path: Path, write) -> None:
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


def save_checkpoint(run_dir: Path, ckpt: Checkpoint) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    tensors = {f"model.{k}": v.detach().contiguous() for k, v in ckpt.model.items()}
    opt_state: dict[str, dict] = {}  # the optimizer's non-tensor per-parameter state, if any
    for index, state in ckpt.optimizer["state"].items():
        for key, value in state.items():
            if torch.is_tensor(value):
                tensors[f"optimizer.{index}.{key}"] = value.detach().contiguous()
            else:
                opt_state.setdefault(str(index), {})[key] = value
    weights = f"ckpt-{ckpt.step:08d}.safetensors"
    _write_atomic(run_dir / weights, lambda p: save_file(tensors, p))
    meta = {"format": FORMAT, "weights": weights, "step": ckpt.step, "config": ckpt.config,
            "history": ckpt.history, "optimizer": {"param_groups": ckpt.optimizer["param_groups"], "state": opt_state},
            "numpy_rng": ckpt.numpy_rng, "torch_rng": base64.b64encode(ckpt.torch_rng.numpy().tobytes()).decode()}
    _write_atomic(run_dir / "ckpt.json", lambda p: p.write_text(json.dumps(meta, indent=1)))
    for old in run_dir.glob("ckpt-*.safetensors"):  # only once ckpt.json names the new file
        if old.name != weights:
            old.unlink()


def load_checkpoint(run_dir: Path) -> Checkpoint | None:
    """The run's last checkpoint, or None when it has none."""
    if (run_dir / "ckpt.pt").exists():
        raise ValueError(f"{run_dir / 'ckpt.pt'} is a pickled checkpoint, which is no longer read; delete it to "
                         "start over")
    path = run_dir / "ckpt.json"
    if not path.exists():
        return None
    meta = json.loads(path.read_text())
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path}: checkpoint format {meta.get('format')}, expected {FORMAT}")
    tensors = load_file(run_dir / meta["weights"])
    model = {k.removeprefix("model."): v for k, v in tensors.items() if k.startswith("model.")}
    state: dict[int, dict] = {int(i): dict(s) for i, s in meta["optimizer"]["state"].items()}
    for name, value in tensors.items():
        if name.startswith("optimizer."):
            _, index, key = name.split(".", 2)
            state.setdefault(int(index), {})[key] = value
    groups = [{**g, "betas": tuple(g["betas"])} if "betas" in g else g for g in meta["optimizer"]["param_groups"]]
    rng = torch.from_numpy(np.frombuffer(base64.b64decode(meta["torch_rng"]), dtype=np.uint8).copy())
    return Checkpoint(step=meta["step"], history=meta["history"], config=meta["config"], model=model,
                      optimizer={"state": state, "param_groups": groups}, numpy_rng=meta["numpy_rng"],
                      torch_rng=rng)

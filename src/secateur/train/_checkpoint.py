"""A training checkpoint without pickle: safetensors for tensors, JSON for everything else.

    run/
      model.safetensors       the model's state_dict
      optimizer.safetensors   optimiser state tensors ("opt.<param>.<key>") and callback tensors
                              ("cb<i>.<key>")
      state.json              epochs done, history, optimiser scalars, model fingerprint

Written atomically at the end of every epoch, so an interrupted run resumes from its last full epoch.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import safetensors.torch
import torch
from torch import nn

from ..io import atomic_dir
from ..forward import first_line
from ..io import LoadError, read_header, read_safetensors, shippable_state_dict
from ._callbacks import Callback

FORMAT, VERSION = "secateur-train", 1
MODEL, OPTIM, STATE = "model.safetensors", "optimizer.safetensors", "state.json"


@dataclass
class Resumed:
    """What a checkpoint restores besides the tensors it loads in place."""

    epochs_done: int = 0
    history: list[dict] = field(default_factory=list)


def _fingerprint(model: nn.Module) -> dict[str, list[int]]:
    return {k: list(v.shape) for k, v in model.state_dict().items()}


def save_checkpoint(path: Path, model: nn.Module, opt: torch.optim.Optimizer, callbacks: list[Callback],
                    epochs_done: int, history: list[dict]) -> None:
    tensors, _ = shippable_state_dict(model)
    state = opt.state_dict()
    extra: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict] = {}
    for idx, entries in state["state"].items():
        for key, value in entries.items():
            if isinstance(value, torch.Tensor):
                extra[f"opt.{idx}.{key}"] = value.detach().contiguous().cpu()
            else:
                scalars.setdefault(str(idx), {})[key] = value
    for i, cb in enumerate(callbacks):
        for key, value in cb.state_dict().items():
            extra[f"cb{i}.{key}"] = value.detach().contiguous().cpu()
    header = {"format": FORMAT, "version": VERSION, "epochs_done": epochs_done, "history": history,
              "param_groups": state["param_groups"], "optimizer_scalars": scalars,
              "fingerprint": _fingerprint(model)}
    with atomic_dir(path, overwrite=True) as tmp:
        safetensors.torch.save_file(tensors, os.fspath(tmp / MODEL))
        safetensors.torch.save_file(extra, os.fspath(tmp / OPTIM))
        (tmp / STATE).write_text(json.dumps(header, indent=1), encoding="utf-8")


def _read_state(path: Path) -> dict:
    return read_header(path / STATE, FORMAT, VERSION, "secateur.train.fit", remedy=f"delete {path} to start over",
                       missing=f"no such file; {path} is not a training checkpoint (resume=False starts over "
                               "in a new directory)")


def _check_model(path: Path, model: nn.Module, header: dict) -> None:
    saved, here = header.get("fingerprint", {}), _fingerprint(model)
    for key in sorted(set(saved) | set(here)):
        if saved.get(key) != here.get(key):
            raise LoadError(f"{path}: checkpoint is from another model: {key!r} is "
                            f"{tuple(saved[key]) if key in saved else 'absent'} there and "
                            f"{tuple(here[key]) if key in here else 'absent'} here; resume with the model "
                            "that wrote it or use a new directory")


def load_checkpoint(path: Path, model: nn.Module, opt: torch.optim.Optimizer,
                    callbacks: list[Callback]) -> Resumed:
    """Load ``path`` into ``model``, ``opt`` and ``callbacks`` in place; all checks happen first."""
    header = _read_state(path)
    _check_model(path, model, header)
    weights = read_safetensors(path / MODEL)
    extra = read_safetensors(path / OPTIM)
    if set(weights) != set(model.state_dict()):
        raise LoadError(f"{path / MODEL}: tensors do not match the model's state_dict; use a new directory")
    state: dict[int, dict] = {}
    for key, value in extra.items():
        if key.startswith("opt."):
            _, idx, name = key.split(".", 2)
            state.setdefault(int(idx), {})[name] = value
    for idx, entries in header["optimizer_scalars"].items():
        state.setdefault(int(idx), {}).update(entries)
    try:
        opt.load_state_dict({"state": state, "param_groups": header["param_groups"]})
    except (ValueError, KeyError) as e:
        raise LoadError(f"{path}: optimiser state does not fit this run ({first_line(e)}); "
                        "use a new directory") from e
    model.load_state_dict(weights)
    for i, cb in enumerate(callbacks):
        prefix = f"cb{i}."
        cb.load_state_dict({k[len(prefix):]: v for k, v in extra.items() if k.startswith(prefix)})
    return Resumed(int(header["epochs_done"]), list(header["history"]))

"""Save a pruned model as ``model.safetensors`` + ``pruning.json``; load it into a fresh instance.

No pickle: the widths travel as JSON, the weights as safetensors, and the code is the user's own
model class. The saved directory looks like::

    pruned/
      model.safetensors   the state_dict, tied tensors stored once
      pruning.json        {"format": "secateur-pruned", "version": 1, "torch": "...",
                           "modules": {name: {"type", "attrs", "tensors"}},
                           "aliases": {state_dict key: key it shares its tensor with},
                           "low_rank": {Linear's name: rank}   (only when factorised, see surgery.low_rank)}
"""

from __future__ import annotations

from collections import OrderedDict

import json
import os
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from torch import nn

from secateur.io._atomic import atomic_dir
from secateur.forward import first_line
from secateur.io._checkpoint import LoadError, read_header, read_safetensors
from secateur.io._spec import (
    ArchitectureMismatch,
    ModuleSpec,
    SpecError,
    WeightsMismatch,
    check,
    describe,
    resize,
)
from secateur.io._state import shippable_state_dict
from secateur.surgery.lowrank import factor_pair, is_factor_pair, low_rank_ranks

__all__ = ["FORMAT", "SPEC_FILE", "VERSION", "WEIGHTS_FILE", "load", "save"]

FORMAT = "secateur-pruned"
VERSION = 1
WEIGHTS_FILE = "model.safetensors"
SPEC_FILE = "pruning.json"


def save(model: nn.Module, path: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
    """Write ``model`` to the directory ``path`` (see the module docstring); return its path.

    The write is atomic: a crash leaves either the previous directory or the new one, complete.
    Raises ``FileExistsError`` if ``path`` exists and ``overwrite`` is False. The model is unchanged.
    """
    target = Path(path)
    with atomic_dir(target, overwrite=overwrite) as tmp:
        tensors, aliases = shippable_state_dict(model)
        header = {
            "format": FORMAT,
            "version": VERSION,
            "torch": torch.__version__,
            "modules": {name: spec.to_json() for name, spec in describe(model).items()},
            "aliases": aliases,
        }
        if ranks := low_rank_ranks(model):
            header["low_rank"] = ranks
        safetensors.torch.save_file(tensors, os.fspath(tmp / WEIGHTS_FILE))
        (tmp / SPEC_FILE).write_text(_dumps(header), encoding="utf-8")
    return target


def _dumps(header: dict[str, Any]) -> str:
    """JSON with one line per top-level key and per entry of a top-level dict (one per module)."""
    def value(v: Any) -> str:
        if not isinstance(v, dict) or not v:
            return json.dumps(v)
        return "{\n" + ",\n".join(f"  {json.dumps(k)}: {json.dumps(x)}" for k, x in v.items()) + "\n }"
    return "{\n" + ",\n".join(f" {json.dumps(k)}: {value(v)}" for k, v in header.items()) + "\n}\n"


def _read_header(root: Path) -> tuple[dict[str, ModuleSpec], dict[str, str], dict[str, int]]:
    """Parse and validate ``pruning.json``: the module specs, the aliases and the low-rank pairs."""
    if not root.is_dir():
        raise LoadError(f"{root}: no such directory; pass a directory written by secateur.io.save")
    spec_path = root / SPEC_FILE
    header = read_header(spec_path, FORMAT, VERSION, "secateur.io.save")
    try:
        specs = {str(name): ModuleSpec.from_json(m) for name, m in header["modules"].items()}
        aliases = {str(k): str(v) for k, v in header.get("aliases", {}).items()}
        ranks = {str(k): int(v) for k, v in header.get("low_rank", {}).items()}
    except (AttributeError, KeyError, TypeError, ValueError) as e:
        raise LoadError(f"{spec_path}: malformed ({type(e).__name__}: {first_line(e)}); "
                        "save the model again") from e
    return specs, aliases, ranks


def _swap_in_pairs(model: nn.Module, ranks: dict[str, int], where: Path) -> list[tuple[nn.Module, str, nn.Module]]:
    """Put a factor pair in place of each ``nn.Linear`` that ``ranks`` names (one already a pair stays);
    return ``(parent, key, old)`` for :func:`_put_back`. Raises LoadError, changing nothing, if a name
    is not a Linear or a pair of ``model``."""
    todo = []
    for name, r in ranks.items():
        parent_name, _, key = name.rpartition(".")
        try:
            parent, layer = model.get_submodule(parent_name), model.get_submodule(name)
        except AttributeError:
            layer = None
        if layer is not None and is_factor_pair(layer):
            continue
        if type(layer) is not nn.Linear or r < 1:
            raise LoadError(f"{where}: low-rank layer {name!r} (rank {r}) is not an nn.Linear of the model; "
                            "pass a fresh instance of the saved model class")
        todo.append((parent, key, layer, r))
    for parent, key, layer, r in todo:
        parent._modules[key] = factor_pair(layer, r)
    return [(parent, key, layer) for parent, key, layer, _ in todo]


def _put_back(swapped: list[tuple[nn.Module, str, nn.Module]]) -> None:
    for parent, key, layer in swapped:
        parent._modules[key] = layer


def _with_aliases(state: dict[str, torch.Tensor], aliases: dict[str, str], path: Path) -> None:
    for key, source in aliases.items():
        if source not in state:
            raise LoadError(f"{path}: tensor {source!r} (shared with {key!r}) is missing; "
                            "the files do not belong together, save the model again")
        state[key] = state[source]


def load(path: str | os.PathLike[str], *, model: nn.Module) -> nn.Module:
    """Resize ``model`` (a fresh, unpruned instance of the saved architecture) and load the weights.

    Everything is checked before ``model`` is touched; failures raise :class:`LoadError` naming the
    file and the fix. Returns ``model``, resized in place, with its training mode unchanged.
    """
    root = Path(path)
    specs, aliases, ranks = _read_header(root)
    weights_path = root / WEIGHTS_FILE
    state = read_safetensors(weights_path)
    _with_aliases(state, aliases, weights_path)
    swapped = _swap_in_pairs(model, ranks, root / SPEC_FILE)
    try:
        _check(model, specs, state, root, weights_path)
    except LoadError:
        _put_back(swapped)
        raise
    resize(model, specs)
    # Module versions (state_dict._metadata): some layers (e.g. torchvision's MNASNet) refuse a
    # state_dict without them. The fresh instance runs the same code, so its versions are the ones.
    state = OrderedDict(state)
    state._metadata = getattr(model.state_dict(), "_metadata", None)  # type: ignore[attr-defined]
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        detail = " ".join(str(e).split())
        raise LoadError(f"{weights_path}: does not fit the model ({detail}); pass a fresh instance "
                        "of the saved model class") from e
    return model


def _check(model: nn.Module, specs: dict[str, ModuleSpec], state: dict[str, torch.Tensor], root: Path,
           weights_path: Path) -> None:
    try:
        check(model, specs, state)
    except ArchitectureMismatch as e:
        raise LoadError(f"{root / SPEC_FILE}: {e}: the model is not the architecture that was saved; "
                        "pass a fresh instance of the saved model class") from e
    except WeightsMismatch as e:
        raise LoadError(f"{weights_path}: {e}: the files do not belong together; save the model again") from e
    except SpecError as e:
        raise LoadError(f"{root / SPEC_FILE}: {e}; secateur.io.load cannot restore this model") from e

"""Save a pruned model as ``model.safetensors`` + ``pruning.json``; load it into a fresh instance.

No pickle: the widths travel as JSON, the weights as safetensors, and the code is the user's own
model class. The saved directory looks like::

    pruned/
      model.safetensors   the state_dict, tied tensors stored once
      pruning.json        {"format": "secateur-pruned", "version": 1, "torch": "...",
                           "modules": {name: {"type", "attrs", "tensors"}},
                           "aliases": {state_dict key: key it shares its tensor with}}
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
from secateur.io._checkpoint import LoadError, _first_line, read_header, read_safetensors
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


def _read_header(root: Path) -> tuple[dict[str, ModuleSpec], dict[str, str]]:
    """Parse and validate ``pruning.json``: the module specs and the aliases."""
    if not root.is_dir():
        raise LoadError(f"{root}: no such directory; pass a directory written by secateur.io.save")
    spec_path = root / SPEC_FILE
    header = read_header(spec_path, FORMAT, VERSION, "secateur.io.save")
    try:
        specs = {str(name): ModuleSpec.from_json(m) for name, m in header["modules"].items()}
        aliases = {str(k): str(v) for k, v in header.get("aliases", {}).items()}
    except (AttributeError, KeyError, TypeError, ValueError) as e:
        raise LoadError(f"{spec_path}: malformed ({type(e).__name__}: {_first_line(e)}); "
                        "save the model again") from e
    return specs, aliases


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
    specs, aliases = _read_header(root)
    weights_path = root / WEIGHTS_FILE
    state = read_safetensors(weights_path)
    _with_aliases(state, aliases, weights_path)
    try:
        check(model, specs, state)
    except ArchitectureMismatch as e:
        raise LoadError(f"{root / SPEC_FILE}: {e}: the model is not the architecture that was saved; "
                        "pass a fresh instance of the saved model class") from e
    except WeightsMismatch as e:
        raise LoadError(f"{weights_path}: {e}: the files do not belong together; save the model again") from e
    except SpecError as e:
        raise LoadError(f"{root / SPEC_FILE}: {e}; secateur.io.load cannot restore this model") from e
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

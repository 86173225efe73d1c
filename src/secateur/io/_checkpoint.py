"""Read plain weight files without unpickling arbitrary objects."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import safetensors.torch
import torch

from secateur.forward import first_line

__all__ = ["LoadError", "load_state_dict_file", "read_safetensors"]

# Keys under which training scripts commonly nest the state_dict in a checkpoint dict.
_NESTED_KEYS = ("state_dict", "model_state_dict", "model")


class LoadError(ValueError):
    """A saved model or weight file that cannot be loaded; the message names the file and the fix."""


def _require_file(path: Path) -> None:
    if not path.is_file():
        raise LoadError(f"{path}: no such file; check the path")


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """Load a ``.safetensors`` file onto the CPU; :class:`LoadError` if missing, corrupt or truncated."""
    _require_file(path)
    try:
        return safetensors.torch.load_file(os.fspath(path), device="cpu")
    except Exception as e:  # SafetensorError derives from Exception only
        raise LoadError(f"{path}: corrupt or truncated safetensors file ({first_line(e)}); "
                        "save it again") from e


def read_header(spec_path: Path, fmt: str, version: int, writer: str, *,
                remedy: str = "save the model again", missing: str | None = None) -> dict:
    """The JSON header a secateur writer left in ``spec_path``, checked for its format and version (a
    header without a version is version 1). Errors name the file and end with ``remedy``; ``missing``
    replaces the message for an absent file."""
    if not spec_path.is_file():
        raise LoadError(f"{spec_path}: " + (missing or f"missing; {spec_path.parent} was not written by {writer}"))
    try:
        header = json.loads(spec_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise LoadError(f"{spec_path}: not valid JSON ({first_line(e)}); {remedy}") from e
    found = (header.get("format"), header.get("version", 1)) if isinstance(header, dict) else (None, None)
    if found != (fmt, version):
        raise LoadError(f"{spec_path}: format {found[0]!r} version {found[1]!r}, expected {fmt!r} "
                        f"version {version} (written by {writer}); {remedy}")
    return header


def _read_torch(path: Path) -> object:
    _require_file(path)
    try:
        return torch.load(path, weights_only=True, map_location="cpu")
    except Exception as e:   # weights_only refusals surface as UnpicklingError: name the object
        if found := re.search(r"Unsupported global: GLOBAL (\S+)", str(e)):
            raise LoadError(f"{path}: holds a {found[1]} object, which weights_only loading refuses; "
                            "save model.state_dict() or a .safetensors file instead") from e
        raise LoadError(f"{path}: corrupt or truncated checkpoint ({first_line(e)}); save it again") from e


def _as_state_dict(obj: object, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, dict):
        nested = next((obj[k] for k in _NESTED_KEYS if isinstance(obj.get(k), dict)), None)
        obj = obj if nested is None else nested
    if not isinstance(obj, dict):
        raise LoadError(f"{path}: holds a {type(obj).__name__}, not a state_dict; save model.state_dict()")
    if bad := [k for k, v in obj.items() if not (isinstance(k, str) and isinstance(v, torch.Tensor))]:
        raise LoadError(f"{path}: entry {bad[0]!r} is not a tensor; save model.state_dict() instead")
    return obj


def load_state_dict_file(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Read a state_dict from ``.safetensors``, or from ``.pt``/``.pth`` with ``weights_only=True``.

    A ``.pt``/``.pth`` checkpoint whose dict nests the weights under ``state_dict``,
    ``model_state_dict`` or ``model`` is unwrapped. Tensors land on the CPU. Any other suffix is
    refused rather than unpickled; failures raise :class:`LoadError`.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        return read_safetensors(path)
    if suffix in (".pt", ".pth"):
        return _as_state_dict(_read_torch(path), path)
    raise LoadError(f"{path}: unsupported suffix {suffix or '(none)'!r}; use .safetensors, .pt or .pth")

"""Turning the strings a user types into a model: an architecture name and a weights file."""
from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path

import torch
from torch import nn

from .. import models as _models
from ..io import LoadError, load, load_state_dict_file
from ._errors import UsageError


def build(arch: str, *, num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    """A model from ``arch``: a ``secateur.models`` name, a torchvision classification model name
    (random init, nothing is downloaded), ``package.module:function`` or ``path/to/file.py:function``."""
    if ":" in arch:
        return _from_function(arch, num_classes=num_classes, in_channels=in_channels)
    if arch in _models.list_models():
        return _models.create_model(arch, num_classes=num_classes, in_channels=in_channels)
    import torchvision
    if arch in torchvision.models.list_models(module=torchvision.models):
        if in_channels != 3:
            raise UsageError(f"model {arch!r}: torchvision models take 3-channel images but the data has "
                             f"{in_channels}; use a secateur model (e.g. vgg8, resnet56) or 3-channel data")
        return torchvision.models.get_model(arch, weights=None, num_classes=num_classes)
    raise UsageError(f"unknown model {arch!r}: give a secateur model ({', '.join(_models.list_models())}), a "
                     f"torchvision name (e.g. resnet18), module:function or file.py:function")


def _from_function(spec: str, **kwargs) -> nn.Module:
    where, _, fn = spec.rpartition(":")
    if where.endswith(".py"):
        path = Path(where)
        if not path.is_file():
            raise UsageError(f"model {spec!r}: no file {path}")
        mod_spec = importlib.util.spec_from_file_location(f"_secateur_user_{path.stem}", path)
        module = importlib.util.module_from_spec(mod_spec)
        sys.modules[mod_spec.name] = module
        try:
            mod_spec.loader.exec_module(module)
        except Exception as e:  # the user's file: report where it failed, in one line
            raise UsageError(f"model {spec!r}: importing {path} failed: {type(e).__name__}: {e}") from None
    else:
        try:
            module = importlib.import_module(where)
        except ImportError as e:
            raise UsageError(f"model {spec!r}: cannot import {where!r}: {e}") from None
    builder = getattr(module, fn, None)
    if not callable(builder):
        raise UsageError(f"model {spec!r}: {where} has no function {fn!r}")
    try:
        model = builder(**kwargs)
    except TypeError:
        model = builder()           # a builder without num_classes / in_channels arguments
    if not isinstance(model, nn.Module):
        raise UsageError(f"model {spec!r}: {fn}() returned a {type(model).__name__}, not an nn.Module")
    return model


def load_weights(model: nn.Module, weights: str | Path) -> nn.Module:
    """Weights into ``model``: a .safetensors/.pt/.pth state_dict (read with weights_only=True) or a
    directory written by ``secateur.save`` (the pruned widths are rebuilt)."""
    path = Path(weights)
    try:
        if path.is_dir():
            return load(path, model=model)
        state = load_state_dict_file(path)
    except LoadError as e:
        raise UsageError(str(e)) from None
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        what = f"lacks {missing[0]!r}" if missing else f"has an unknown entry {unexpected[0]!r}"
        raise UsageError(f"{path}: does not fit this model: the file {what} "
                         f"({len(missing)} missing, {len(unexpected)} unexpected); check the model name")
    return model


def example_input(shape: tuple[int, ...]) -> torch.Tensor:
    return torch.zeros(1, *shape)

"""Recording what layers see and produce over a calibration loader, batch by batch.

Data-driven criteria and methods never hold a data set's activations: a *tap* receives each batch's
tensors from a hook and keeps only what it needs (a running sum, a bounded sample). ::

    with taps(model, {"features.3": my_tap}):
        stream(model, loader)                  # forward only, eval mode, no grad
        stream(model, loader, backward=True)   # also calls my_tap.backward(output, grad)

A tap is any object with ``forward(inputs, output)`` and, for gradients, ``backward(output, grad)``.
"""
from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..forward import eval_mode
from ..layers import Norm, Weighted, handler_for
from ..train import processes, summed


class CalibrationError(ValueError):
    """A calibration loader that is empty or yields batches the model cannot take."""


def channel_dim(module: nn.Module) -> int:
    """The dim of a layer's output that holds its channels: last for Linear/LayerNorm, else 1."""
    h = handler_for(module)
    if isinstance(h, Weighted):
        return h.channel_dim(module)
    return h.output_dim(module) if isinstance(h, Norm) else 1


def per_channel(t: torch.Tensor, dim: int) -> torch.Tensor:
    """``t`` as (channels, everything else), in float64 for accumulation."""
    return t.detach().movedim(dim, 0).reshape(t.shape[dim], -1).double()


@contextmanager
def taps(model: nn.Module, taps: Mapping[str, Any]) -> Iterator[None]:
    """Hooks that hand each named module's inputs/output (and output gradient) to its tap."""
    handles = []
    try:
        for name, tap in taps.items():
            try:
                module = model.get_submodule(name)
            except AttributeError:
                raise CalibrationError(f"no layer named {name!r} in {type(model).__name__}") from None
            handles.append(module.register_forward_hook(_hook(tap)))
        yield
    finally:
        for h in handles:
            h.remove()


def _hook(tap):
    wants_grad = hasattr(tap, "backward")

    def hook(module, args, output):
        if hasattr(tap, "forward"):
            tap.forward(tuple(a.detach() if torch.is_tensor(a) else a for a in args), output.detach())
        if wants_grad and output.requires_grad:
            # A copy: an in-place activation (ReLU(inplace=True), Hardswish) overwrites ``output``
            # before backward, while the gradient that arrives is still that of the value seen here.
            out = output.detach().clone()
            output.register_hook(lambda g: tap.backward(out, g.detach()))
    return hook


def _batches(loader: Iterable) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
    for batch in loader:
        if torch.is_tensor(batch):
            yield batch, None
        elif isinstance(batch, (tuple, list)) and batch and torch.is_tensor(batch[0]):
            yield batch[0], (batch[1] if len(batch) > 1 and torch.is_tensor(batch[1]) else None)
        else:
            raise CalibrationError(f"calibration loader yielded a {type(batch).__name__}; expected a tensor "
                                   f"of images or an (images, labels) pair")


def stream(model: nn.Module, loader: Iterable, *, backward: bool = False, input_shape=None) -> int:
    """Run ``loader`` through ``model`` in eval mode; returns the number of images seen.

    backward: also back-propagate the cross-entropy against the loader's labels, so taps receive
        output gradients. The model's ``.grad`` fields are restored afterwards and its train/eval
        mode too: the caller's model is left as it was.
    input_shape: the traced input shape (batch dim ignored); a batch of another shape is refused.
    Under ``torchrun`` each process runs every world-th batch (process ``rank`` from batch ``rank``),
    and the images seen are counted over all of them; the taps then hold each process's share, which
    the caller sums (``secateur.train.all_sum``).
    """
    params = list(model.parameters())
    device = params[0].device if params else torch.device("cpu")
    saved = [p.grad for p in params]
    seen = 0
    rank, world = processes()
    with eval_mode(model):
        try:
            for x, y in itertools.islice(_batches(loader), rank, None, world):
                if input_shape is not None and tuple(x.shape[1:]) != tuple(input_shape[1:]):
                    raise CalibrationError(f"calibration batch has shape {tuple(x.shape)} but the model was traced "
                                           f"with inputs of shape (N, {', '.join(map(str, input_shape[1:]))})")
                x = x.to(device, non_blocking=True)
                if backward:
                    if y is None:
                        raise CalibrationError("gradient-based criteria need labels: the calibration loader must "
                                               "yield (images, labels)")
                    for p in params:
                        p.grad = None
                    if x.is_floating_point():   # on a detached alias: the loader's tensor is left as it was
                        x = x.detach().requires_grad_(True)
                    with torch.enable_grad():
                        out = _forward(model, x)
                        F.cross_entropy(out, y.to(device)).backward()
                else:
                    with torch.no_grad():
                        _forward(model, x)
                seen += x.shape[0]
        finally:
            for p, g in zip(params, saved):
                p.grad = g
    seen = summed(seen)
    if not seen:
        raise CalibrationError("the calibration loader yielded no batches; give it at least one image "
                               "(e.g. secateur.data.calibration(dataset, n=256))")
    return seen


def _forward(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    try:
        return model(x)
    except CalibrationError:
        raise
    except (RuntimeError, ValueError, TypeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CalibrationError(f"calibration batch of shape {tuple(x.shape)} does not fit "
                               f"{type(model).__name__}: {first}") from None

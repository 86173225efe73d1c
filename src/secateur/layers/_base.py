"""The handler interface and the registry."""
from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch
from torch import nn

_REGISTRY: dict[type, "Layer"] = {}


class Layer:
    """What the engine knows about one layer type."""

    width_attrs: ClassVar[tuple[str, ...]] = ()   # attributes holding its width (saved with the model)

    def sync_widths(self, m: nn.Module) -> None:
        """Make the width attributes agree with the (sliced) tensors."""

    def implied_widths(self, m: nn.Module, attrs: dict, shapes: dict) -> dict:
        """The width attributes that tensors of ``shapes`` (name -> shape or None) imply, given the other
        ``attrs``: what a saved file's widths must say (only those the shapes determine)."""
        return {}

    def expects(self, m: nn.Module, got: tuple[int, ...]) -> tuple[int, ...] | None:
        """The input shape ``m`` wants, derived from the shape it ``got`` (for an error that says
        both); ``None`` when unknown."""
        return None


class Weighted(Layer):
    """A layer with a weight matrix: conv, linear. Its output rows and input columns are sites."""

    def io(self, m: nn.Module) -> tuple[int, int, int]:
        """(input channels, output channels, groups)."""
        raise NotImplementedError

    def channel_dim(self, m: nn.Module) -> int:
        """The dim of its input and output tensors that holds the channels (negative: from the end)."""
        raise NotImplementedError

    def taps(self, m: nn.Module) -> int:
        """Multiply-adds per output value per input channel of a group (kernel size)."""
        return 1

    def out_rows(self, m: nn.Module, weight: torch.Tensor | None = None) -> torch.Tensor:
        """One row of weights per output channel (``weight``, shaped like ``m.weight``, instead)."""
        w = (m.weight if weight is None else weight).detach()
        return w.reshape(self.io(m)[1], -1)

    def shrink(self, m: nn.Module, keep_in: np.ndarray | None, keep_out: np.ndarray | None,
               name: str = "") -> None:
        """Keep the channels the boolean masks keep (None: all), in place."""
        raise NotImplementedError

    def scale_in(self, m: nn.Module, positions: np.ndarray, factor: float) -> None:
        """Multiply the weights that read input channels ``positions`` by ``factor``."""
        raise NotImplementedError

    def in_contribution(self, m: nn.Module, values: np.ndarray) -> torch.Tensor | None:
        """What constant input channels (``values``; nan: not constant) add to each output, or None
        where it cannot be folded into a bias."""
        return None

    def plain(self, m: nn.Module, c_in: int, c_out: int) -> nn.Module | None:
        """A plain torch layer computing like ``m`` at widths ``c_in`` → ``c_out`` (random weights: what
        a latency table times), or None where there is none."""
        return None

    def signature(self, m: nn.Module) -> str:
        """What besides its widths decides the layer's speed (kernel, stride, groups, ...)."""
        return repr(m)

    def samples(self, m: nn.Module) -> bool:
        """Whether the layer-wise methods can sample its input windows (see :meth:`windows`)."""
        return False

    def locations(self, m: nn.Module, x: torch.Tensor, output: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Its input and output as (images, channels, *locations): what :meth:`windows` reads."""
        return x, output

    def windows(self, m: nn.Module, x: torch.Tensor, positions: torch.Tensor, img: torch.Tensor,
                loc: torch.Tensor, out_shape: tuple[int, ...]) -> torch.Tensor:
        """The inputs that output location ``loc`` of image ``img`` reads from input channels
        ``positions`` (one row per sample): (samples, len(positions), taps); ``x`` and ``out_shape``
        as :meth:`locations` gives them."""
        raise NotImplementedError

    def extra(self, m: nn.Module) -> list[tuple[str, int]]:
        """(name, dim) of its own tensors besides weight and bias that hold one entry per output
        channel (a subclass's gain); each is sliced with the outputs."""
        c_out = self.io(m)[1]
        found = []
        for name, t in [*m._parameters.items(), *m._buffers.items()]:
            if name in ("weight", "bias") or t is None:
                continue
            long = [d for d, s in enumerate(t.shape) if s > 1]
            if len(long) == 1 and t.shape[long[0]] == c_out:
                found.append((name, long[0]))
            else:
                found.append((name, -1))   # a tensor we cannot place: the caller freezes the outputs
        return found


class Norm(Layer):
    """A normalisation or per-channel layer (BatchNorm, GroupNorm, LayerNorm, PReLU)."""

    def channel_dim(self, m: nn.Module, dims: tuple[int, ...], rank: int) -> tuple[int, bool] | None:
        """(channel dim, exact) given the input's channel ``dims`` and rank, or None when the layer is
        not per channel there. Not exact: removing a channel changes the others' statistics."""
        raise NotImplementedError

    def output_dim(self, m: nn.Module) -> int:
        """Where its output usually holds the channels (for recording activations)."""
        return 1

    def width(self, m: nn.Module, x_shape: tuple[int, ...], dim: int) -> int:
        return x_shape[dim]

    def passthrough(self, m: nn.Module) -> bool:
        """True when it does the same to every channel (a single-parameter PReLU)."""
        return False

    def absorbs_shift(self, m: nn.Module) -> bool:
        """True when a constant added to its input can be folded into its running mean."""
        return False

    def unit(self, m: nn.Module) -> int:
        """Channels that must go together (GroupNorm's groups)."""
        return 1

    def shrink(self, m: nn.Module, keep: np.ndarray) -> None:
        """Slice every per-channel tensor to what ``keep`` keeps, then sync the widths."""
        index = np.flatnonzero(keep)
        for name in ("weight", "bias", "running_mean", "running_var"):
            t = getattr(m, name, None)
            if isinstance(t, torch.Tensor) and t.ndim >= 1 and t.shape[0] == keep.size:
                take_(m, name, 0, index)
        self.set_width(m, int(keep.sum()))

    def set_width(self, m: nn.Module, width: int) -> None:
        raise NotImplementedError

    def sync_widths(self, m: nn.Module) -> None:
        t = getattr(m, "weight", None)
        t = t if t is not None else getattr(m, "running_mean", None)
        if t is not None:
            self.set_width(m, t.shape[0])


class Block(Layer):
    """A module holding layers whose forward reads a width stored as a plain attribute (Ultralytics'
    C2f splits ``cv1``'s output at ``self.c``): after surgery, :meth:`sync_widths` recomputes it from
    the layers, and ``width_attrs`` are saved with the model."""


def register(handler: Layer, *types: type | str) -> Layer:
    """Use ``handler`` for ``types`` and their subclasses (a later registration wins). A type may be
    named ``"package.module.Class"``, so a third-party class is known without importing its package."""
    for t in types:
        _REGISTRY[t] = handler
    return handler


def handler_for(m: nn.Module) -> Layer | None:
    for cls in type(m).__mro__:
        found = _REGISTRY.get(cls) or _REGISTRY.get(f"{cls.__module__}.{cls.__qualname__}")
        if found is not None:
            return found
    return None


def is_weighted(m: nn.Module) -> bool:
    return isinstance(handler_for(m), Weighted)


def take_(module: nn.Module, name: str, dim: int, index: np.ndarray) -> None:
    """Replace ``module.<name>`` by its slice along ``dim``, keeping Parameter-ness and requires_grad."""
    t = getattr(module, name, None)
    if t is None:
        return
    new = t.detach().index_select(dim, torch.as_tensor(index, dtype=torch.long, device=t.device))
    if isinstance(t, nn.Parameter):
        setattr(module, name, nn.Parameter(new, requires_grad=t.requires_grad))
    elif name in module._buffers:
        module._buffers[name] = new
    else:
        setattr(module, name, new)


def is_batchnorm(m: nn.Module) -> bool:
    """A BatchNorm of any rank (1d/2d/3d, SyncBatchNorm, a subclass): torch's common base."""
    return isinstance(m, nn.modules.batchnorm._BatchNorm)

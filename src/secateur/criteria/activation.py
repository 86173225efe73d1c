"""Criteria that score channels by what they do on calibration data: APoZ (Hu et al. 2016), Taylor
(Molchanov et al. 2017) and its per-weight form (Molchanov et al. 2019).

Each is a data-driven criterion: ``secateur.prune(model, x, APoZ(), amount=0.3, data=loader)`` calls
its ``bind(model, graph, data)`` once. That runs the loader through the model in one pass (eval mode,
so BatchNorm uses and keeps its running statistics; parameters, buffers, ``.grad`` and the train/eval
flag are left as they were), keeps nothing but float64 running sums per channel on the model's
device, and returns the criterion that scores every prunable group from them.

Which layer output stands for a group's channels: its BatchNorm layers when it has any (the tensor the
activation reads), else its conv/linear outputs. A residual stage's group has several; their scores
are averaged, as for the weight criteria. A layer called more than once per forward accumulates over
its calls.
"""
from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import nn

from ..layers import is_batchnorm
from ..graph import ChannelGroup, Member, Role, Site
from ._base import SiteCriterion, out_rows
from ..train import all_sum
from ._record import channel_dim, stream, taps


def _pick(group: ChannelGroup, model: nn.Module, out_only: bool = False) -> tuple[Member, ...]:
    """The members of ``group`` whose layer is recorded: its BatchNorm layers if it has any (unless
    ``out_only``), else its conv/linear output rows."""
    if not out_only:
        norms = tuple(m for m in group.members if m.site.role is Role.NORM
                      and is_batchnorm(model.get_submodule(m.site.module)))
        if norms:
            return norms
    return tuple(m for m in group.members if m.site.role is Role.OUT)


def _channel_sum(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sum of ``t`` over everything but its channel dim, in float64, without a float64 copy of ``t``."""
    dim %= t.dim()
    keep = 0 if dim else 1                       # reduce all but (channel, one other dim) natively first
    rest = [d for d in range(t.dim()) if d not in (dim, keep)]
    partial = t.sum(dim=rest) if rest else (t.long() if t.dtype == torch.bool else t)
    return partial.double().sum(dim=0 if keep < dim else 1)


@dataclass(frozen=True, eq=False)
class _Recorded(SiteCriterion):
    """What a data criterion saw: one score tensor per recorded layer, keyed by module name. A group
    is scored from the members that :func:`_pick` chose when recording."""

    scores: dict[str, torch.Tensor]
    out_only: bool = False

    def __call__(self, group: ChannelGroup, model: nn.Module) -> np.ndarray | None:
        return super().__call__(replace(group, members=_pick(group, model, self.out_only)), model)

    def score_site(self, site: Site, module: nn.Module) -> torch.Tensor | None:
        s = self.scores.get(site.module)
        return s if s is not None and len(s) == len(site.ids) else None


def _record(model: nn.Module, graph, data, make_tap, *, backward: bool, out_only: bool = False) -> dict:
    """Run ``data`` once with a tap (``make_tap(module)``) on every layer some group is scored by;
    return each tap's ``result()`` that is not None. Taps that are context managers are entered for
    the pass (Taylor2019's parameter hooks)."""
    names = sorted({m.site.module for g in graph.prunable for m in _pick(g, model, out_only)})
    recorders = {n: make_tap(model.get_submodule(n)) for n in names}
    hooked = {n: r for n, r in recorders.items() if hasattr(r, "forward") or hasattr(r, "backward")}
    with taps(model, hooked), ExitStack() as stack:
        for r in recorders.values():
            if hasattr(r, "__enter__"):
                stack.enter_context(r)
        stream(model, data, backward=backward, input_shape=graph.input_shapes[0])
    for r in recorders.values():   # under torchrun: each process's share, summed
        all_sum(r, r.SUMS)
    results = {n: r.result() for n, r in recorders.items()}
    return {n: s for n, s in results.items() if s is not None}


class _DataCriterion:
    def __call__(self, group: ChannelGroup, model: nn.Module):
        raise TypeError(f"{type(self).__name__} scores channels from data: use it through "
                        f"secateur.prune(..., data=loader), or call .bind(model, graph, loader) first")


class _Zeros:
    """Per channel: how many values were <= 0, and how many values there were."""

    SUMS = ("zeros", "n")

    def __init__(self, module: nn.Module):
        self.dim, self.zeros, self.n = channel_dim(module), None, 0

    def forward(self, inputs, output: torch.Tensor) -> None:
        z = _channel_sum(output <= 0, self.dim)
        self.zeros = z if self.zeros is None else self.zeros + z
        self.n += output.numel() // output.shape[self.dim]

    def result(self) -> torch.Tensor | None:
        return None if self.zeros is None else 1 - self.zeros / self.n


@dataclass(frozen=True)
class APoZ(_DataCriterion):
    """Average Percentage of Zeros (Hu et al. 2016): the fraction of a channel's activations that are
    zero after the ReLU, over all calibration images and positions; channels that are mostly zero go
    first. The score is ``1 - APoZ``.

    We count the values <= 0 of the layer output that feeds the activation (the BatchNorm's, else the
    conv's), which is exactly the post-ReLU zero fraction for ReLU, ReLU6 and their kin. For other
    activations (SiLU, Hardswish, GELU) it is the fraction of non-positive pre-activations: the same
    ranking idea, not a count of exact zeros.
    """

    def bind(self, model: nn.Module, graph, data) -> _Recorded:
        return _Recorded(_record(model, graph, data, _Zeros, backward=False))


class _Taylor:
    """Per channel, the mean over batches of ``|mean over positions (z * dL/dz)|``."""

    SUMS = ("total", "n")

    def __init__(self, module: nn.Module):
        self.dim, self.total, self.n = channel_dim(module), None, 0

    def backward(self, output: torch.Tensor, grad: torch.Tensor) -> None:
        t = (_channel_sum(output * grad, self.dim) / (output.numel() // output.shape[self.dim])).abs()
        self.total = t if self.total is None else self.total + t
        self.n += 1

    def result(self) -> torch.Tensor | None:
        if self.total is None:
            return None
        s = self.total / self.n
        norm = s.norm()
        return s / norm if norm > 0 else s


@dataclass(frozen=True)
class Taylor(_DataCriterion):
    """First-order Taylor expansion of the loss change when a channel is removed (Molchanov et al. 2017).

    ``Theta_c = | mean over positions of z_c * dL/dz_c |`` for each batch (positions: the batch's
    images and spatial positions), averaged over batches, then normalised per layer by the L2 norm of
    that layer's scores (the paper's layer-wise rescaling, which makes layers comparable under global
    ranking). L is the cross-entropy against the loader's labels, so the loader must yield
    ``(images, labels)``. ``z`` is the output of the group's BatchNorm (else its conv): the paper takes
    the activation after the ReLU, ``a = relu(z)``, but ``z * dL/dz = a * dL/da`` wherever the ReLU
    passes gradient and both are 0 elsewhere, so the scores are the same for ReLU (and ReLU6).
    """

    def bind(self, model: nn.Module, graph, data) -> _Recorded:
        return _Recorded(_record(model, graph, data, _Taylor, backward=True))


class _WeightTaylor:
    """Per output channel, the mean over batches of ``sum (w * g)^2`` over its weights and bias.

    Hooks the parameters themselves (a leaf's hook sees the batch's whole gradient once, however many
    times the layer ran); while recording, they require grad even if the caller froze them."""

    SUMS = ("total", "n")

    def __init__(self, module: nn.Module):
        self.module, self.total, self.n, self._undo = module, None, 0, []

    def _add(self, p: torch.Tensor, g: torch.Tensor, weight: bool) -> None:
        sq = (p.detach().double() * g.double()) ** 2
        s = out_rows(self.module, sq).sum(1) if weight else sq
        self.total = s if self.total is None else self.total + s
        self.n += weight

    def __enter__(self):
        for name, weight in (("weight", True), ("bias", False)):
            p = getattr(self.module, name, None)
            if isinstance(p, nn.Parameter):
                wanted = p.requires_grad
                p.requires_grad_(True)
                self._undo.append((p, wanted, p.register_hook(lambda g, p=p, w=weight: self._add(p, g, w))))
        return self

    def __exit__(self, *exc) -> None:
        for p, wanted, handle in self._undo:
            handle.remove()
            p.requires_grad_(wanted)
        self._undo.clear()

    def result(self) -> torch.Tensor | None:
        return None if not self.n else self.total / self.n


@dataclass(frozen=True)
class Taylor2019(_DataCriterion):
    """Importance of a filter from its weights' first-order Taylor terms (Molchanov et al. 2019):
    ``sum over the filter's weights and bias of (w * dL/dw)^2``, with the gradient of each batch's
    cross-entropy against the loader's labels, averaged over batches (the paper averages over the
    minibatches between pruning steps).

    Scored on the conv/linear output rows only (the paper's weight variant; its best-reported variant
    puts the gates after BatchNorm instead, which :class:`Taylor` on the BN output approximates).
    Scores are not normalised per layer, as in the paper.
    """

    def bind(self, model: nn.Module, graph, data) -> _Recorded:
        scores = _record(model, graph, data, _WeightTaylor, backward=True, out_only=True)
        return _Recorded(scores, out_only=True)

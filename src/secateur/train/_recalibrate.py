"""Adaptive BatchNorm recalibration (Li et al., EagleEye, ECCV 2020): after a cut, re-estimate every
BatchNorm's running statistics on a few training batches, in train mode, with no weight update.

Removing channels changes what every later layer sees, so the running means and variances stored
during training no longer fit the pruned network, and it scores far below what its weights can do.
A few hundred images fix that in seconds: most of the accuracy a pruned network shows after a short
fine-tune is this alone.
"""
from __future__ import annotations

import copy as _copy
import itertools

import torch
from torch import nn

from ..layers import is_batchnorm
from ..forward import model_device
from ._dist import init, summed
from ._fit import _to, auto_channels_last


def recalibrate_bn(model: nn.Module, loader, *, batches: int = 20, copy: bool = True) -> nn.Module:
    """A copy of ``model`` (``copy=False``: the model itself) whose BatchNorm running statistics are
    re-estimated on the first ``batches`` batches of ``loader``: each BN's statistics reset, then the
    exact average of the batch means and variances (momentum ``None``), every other layer in eval mode
    (dropout off), under ``torch.no_grad``. Weights, momentum and every module's train/eval flag are
    as they were. A batch is ``(images, labels)`` or images alone. Under ``torchrun`` each process
    runs every world-th of those batches and the statistics are combined: the same as one process.
    A model without BatchNorm comes back unchanged."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"recalibrate_bn: model must be a torch.nn.Module, got {type(model).__name__}")
    if not (isinstance(batches, int) and not isinstance(batches, bool) and batches > 0):
        raise ValueError(f"recalibrate_bn: batches={batches!r} must be an integer > 0")
    net = _copy.deepcopy(model) if copy else model
    bns = [m for m in net.modules() if is_batchnorm(m) and m.track_running_stats]
    if not bns:
        return net
    flags = {m: m.training for m in net.modules()}
    momenta = [m.momentum for m in bns]
    device = model_device(net)
    channels_last = auto_channels_last(net)
    seen = 0
    try:
        net.eval()
        for m in bns:
            m.reset_running_stats()
            m.momentum = None
            m.train()
        rank, world = init()
        with torch.no_grad():
            for batch in itertools.islice(loader, rank, batches, world):
                net(_to(batch[0] if isinstance(batch, (tuple, list)) else batch, device, channels_last))
                seen += 1
    finally:
        for m, momentum in zip(bns, momenta):
            m.momentum = momentum
        for m, training in flags.items():
            m.train(training)
    total = summed(seen)
    if total == 0:
        raise ValueError("recalibrate_bn: the loader yielded no batches")
    if world > 1:   # under torchrun: each process's average over its batches, weighted by their count
        for m in bns:
            for stat in (m.running_mean, m.running_var):
                stat.copy_(summed(stat * seen) / total)
    return net

"""Shared by the trace tests: a conv-BN-ReLU block, BN statistics made O(1), the silence-and-cut
exactness check, and finding a layer's group."""
from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

import secateur
from secateur.graph import Role


def cbr(i: int, o: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(i, o, 3, padding=1, bias=False), nn.BatchNorm2d(o), nn.ReLU())


def calibrated(model: nn.Module, x: torch.Tensor) -> nn.Module:
    torch.manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
    return model.eval()


def exact(model: nn.Module, x: torch.Tensor, graph) -> nn.Module:
    """Silence a third of every exact prunable group, cut it, compare; return the pruned copy."""
    rng = np.random.default_rng(0)
    silenced, keep = copy.deepcopy(model), {}
    for g in (g for g in graph.prunable if g.exact):
        units = np.sort(rng.choice(g.size, size=max(1, g.size // 3), replace=False))
        secateur.silence(silenced, g, units)
        keep[g.index] = np.setdiff1d(np.arange(g.size), units)
    pruned = secateur.apply(copy.deepcopy(silenced), graph, secateur.Plan(keep))
    with torch.no_grad():
        expected, actual = silenced(x), pruned(x)
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item())
    return pruned


def group_of(graph, module: str):
    return next(g for g in graph.groups if module in g.modules(Role.OUT))

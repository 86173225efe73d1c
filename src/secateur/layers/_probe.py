"""A numerical check for conv/linear subclasses with a ``forward`` of their own.

Such a layer may compute from its weights in ways no table can tell (timm's ScaledStdConv2d
standardises each filter over its fan-in). Remove one output (and, separately, one silenced input)
from a copy and compare with the original: what does not match is frozen, or marked inexact.
"""
from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from ._base import Weighted


def own_forward(m: nn.Module) -> bool:
    """True when ``m``'s class (a subclass of a torch.nn layer) overrides ``forward``."""
    base = next(c for c in type(m).__mro__ if c.__module__.startswith("torch.nn"))
    return type(m).forward is not base.forward


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    scale = b.abs().max().item() if b.numel() else 0.0
    return a.shape == b.shape and bool(torch.allclose(a, b, rtol=1e-4, atol=1e-5 * max(scale, 1e-6)))


def _run(m: nn.Module, x: torch.Tensor) -> torch.Tensor | None:
    try:
        with torch.no_grad():
            y = m(x)
    except Exception:
        return None
    return y if isinstance(y, torch.Tensor) else None


def probe(h: Weighted, m: nn.Module, x: torch.Tensor) -> tuple[bool, bool]:
    """(removing an output is exact, removing a silenced input is exact) for ``m`` on input ``x``."""
    c_in, c_out, groups = h.io(m)
    dim = h.channel_dim(m)
    y = _run(m, x)
    if y is None:
        return False, False
    depthwise = groups > 1 and c_in == groups
    if groups > 1 and not depthwise:
        return True, True
    per_out = c_out // groups if depthwise else 1
    out_ok = in_ok = True
    if c_out > per_out:
        keep_out = np.ones(c_out, bool)
        keep_out[:per_out] = False
        keep_in = np.ones(c_in, bool) if depthwise else None
        if depthwise:
            keep_in[0] = False
        cut = copy.deepcopy(m)
        h.shrink(cut, keep_in, keep_out)
        xi = x.narrow(dim, 1, c_in - 1) if depthwise else x
        got = _run(cut, xi)
        out_ok = got is not None and _close(got, y.narrow(dim, per_out, c_out - per_out))
    if c_in > 1 and not depthwise:
        silenced = copy.deepcopy(m)
        h.scale_in(silenced, np.array([0]), 0.0)
        want = _run(silenced, x)
        keep_in = np.ones(c_in, bool)
        keep_in[0] = False
        cut = copy.deepcopy(silenced)
        h.shrink(cut, keep_in, None)
        got = _run(cut, x.narrow(dim, 1, c_in - 1))
        in_ok = want is not None and got is not None and _close(got, want)
    return out_ok, in_ok

"""The walk's handling of leaf modules: weighted layers, normalisations, parameter-free layers."""
from __future__ import annotations

import numpy as np
import torch
import torch.fx as fx
from torch import nn

from . import _ops
from ._types import Call, Role
from ._walk import TInfo, Walker, _along


def _constant_channels(x: torch.Tensor, dim: int) -> np.ndarray:
    """Per-channel value where the input is constant over every other dim, nan elsewhere."""
    flat = x.detach().movedim(dim, 0).reshape(x.shape[dim], -1).float()
    if flat.shape[1] < 2:   # one sample at one position: cannot tell a constant from a coincidence
        return np.full(x.shape[dim], np.nan)
    lo, hi, mean = flat.amin(1), flat.amax(1), flat.mean(1)
    const = (hi - lo) <= 1e-6 * mean.abs().clamp_min(1.0)
    return torch.where(const, mean, torch.full_like(mean, float("nan"))).cpu().numpy()


def _weighted(w: Walker, n: fx.Node, m: nn.Module, x: TInfo, xval: torch.Tensor, out: torch.Tensor):
    name = str(n.target)
    is_conv = isinstance(m, nn.modules.conv._ConvNd)
    cdim = 1 if is_conv else xval.ndim - 1
    c_in, c_out = (m.in_channels, m.out_channels) if is_conv else (m.in_features, m.out_features)
    groups = m.groups if is_conv else 1

    out_ids = w._out_ids.get(name)
    if out_ids is None:
        out_ids = w._out_ids[name] = w.fresh(c_out)
        w.site(name, Role.OUT, out_ids)
    in_ids = _along(x, cdim, c_in)
    if in_ids is None:
        w.freeze(x, f"input layout of {name} not understood")
        if groups > 1:   # without the in/out ties, its groups could not be kept equal
            w.freeze(TInfo(tuple(out.shape), (1,), out_ids), f"input layout of {name} not understood")
    else:
        w.site(name, Role.IN, in_ids, const=_constant_channels(xval, cdim) if groups == 1 else None)
        if groups > 1:
            per_in, per_out = c_in // groups, c_out // groups
            if per_in == 1:   # depthwise-like: input channel k feeds output channels of group k only
                w.tie(np.repeat(in_ids, per_out), out_ids)
            else:             # grouped: a position is cut from every group at once, keeping groups equal
                for ids, per in ((in_ids, per_in), (out_ids, per_out)):
                    rows = ids.reshape(groups, per)
                    w.tie(np.broadcast_to(rows[:1], rows.shape), rows)
    positions = out.numel() // c_out
    w.rec.calls.append(Call(name, positions))
    return TInfo(tuple(out.shape), (out.ndim - 1,) if not is_conv else (1,), out_ids)


def _norm_dim(m: nn.Module, x: TInfo) -> tuple[int, bool] | None:
    """(channel dim, exact) for a normalisation-like leaf, or None when it is not per channel."""
    rank = len(x.shape)
    if isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm)):
        return 1, True
    if isinstance(m, nn.GroupNorm):
        if m.num_groups == m.num_channels:
            return 1, True
        return (1, False) if m.num_groups == 1 else None
    if isinstance(m, nn.LayerNorm) and len(m.normalized_shape) == 1:
        if x.dims == (rank - 1,):
            return rank - 1, False
        if type(m) is not nn.LayerNorm and x.dims == (1,):  # a LayerNorm2d-style subclass
            return 1, False
        return None
    if isinstance(m, nn.PReLU):
        return (1, True) if m.num_parameters > 1 else (0, True)
    return None


def analyse_module(w: Walker, n: fx.Node, args, out):
    """Handle a ``call_module`` node: record sites and return the output's channel info."""
    name = str(n.target)
    m = w.module.get_submodule(name)
    x = w.info.get(n.args[0]) if n.args else None
    if name in w.opaque and not isinstance(m, _ops.WEIGHTED):
        return w._unknown(n, args, {}, out, f"{name} is ignored (opaque)")
    if not isinstance(x, TInfo) or not isinstance(out, torch.Tensor):
        return w._unknown(n, args, {}, out, f"{name} ({type(m).__name__}) takes or returns no single tensor")

    if isinstance(m, _ops.WEIGHTED):
        info = _weighted(w, n, m, x, args[0], out)
        if name in w.opaque:
            w.freeze(info, f"{name} is ignored (outputs kept whole)")
        return info

    has_own_params = any(True for _ in m.parameters(recurse=False)) or any(True for _ in m.buffers(recurse=False))
    norm = _norm_dim(m, x) if has_own_params or isinstance(m, nn.LayerNorm) else None
    if norm is not None:
        dim, exact = norm
        if isinstance(m, nn.PReLU) and m.num_parameters == 1:
            return w._pass(x, out)
        size = m.normalized_shape[0] if isinstance(m, nn.LayerNorm) else x.shape[dim]
        ids = _along(x, dim, size)
        if ids is None:
            return w._unknown(n, args, {}, out, f"{name}: channels not where {type(m).__name__} expects them")
        w.site(name, Role.NORM, ids, exact=exact)
        src = n.args[0]
        if (isinstance(m, nn.modules.batchnorm._BatchNorm) and src.op == "call_module"
                and len(src.users) == 1):
            w.rec.bn_after[str(src.target)] = name
        return w._pass(x, out)

    if isinstance(m, _ops.PASSTHROUGH_MODULES) and not has_own_params:
        if isinstance(m, (nn.ZeroPad2d, nn.ConstantPad2d, nn.ReflectionPad2d, nn.ReplicationPad2d)):
            return w._pad(n, (args[0], tuple(m.padding)), {}, out)
        return w._pass(x, out) if out.ndim == len(x.shape) else w._unknown(n, args, {}, out)
    if isinstance(m, _ops.MOVEMENT_MODULES):
        return w._movement(n, args, {}, out, module=m)
    if isinstance(m, nn.Softmax):
        return w._softmax(n, (args[0], m.dim), {}, out)
    return w._unknown(n, args, {}, out, f"unsupported layer {name} ({type(m).__name__})")


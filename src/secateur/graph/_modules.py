"""The walk's handling of leaf modules: weighted layers, normalisations, parameter-free layers."""
from __future__ import annotations

import numpy as np
import torch
import torch.fx as fx
from torch import nn

from . import _ops
from ..layers import Norm, Weighted, handler_for, own_forward, probe
from ._movement import tie_along
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
    name = w.prefix + str(n.target)
    h = handler_for(m)
    c_in, c_out, groups = h.io(m)
    cdim = h.channel_dim(m) % xval.ndim

    out_ids = w.rec.out_ids.get(name)
    first_call = out_ids is None
    if first_call:
        out_ids = w.rec.out_ids[name] = w.fresh(c_out)
        w.site(name, Role.OUT, out_ids)
    out_info = TInfo(tuple(out.shape), (cdim % out.ndim,), out_ids)
    in_exact = True
    if first_call:
        in_exact = _subclass_checks(w, name, h, m, xval, out_info)
    in_ids = _along(x, cdim, c_in)
    if in_ids is None:
        w.freeze(x, f"input layout of {name} not understood")
        if groups > 1:   # without the in/out ties, its groups could not be kept equal
            w.freeze(out_info, f"input layout of {name} not understood")
    else:
        w.site(name, Role.IN, in_ids, const=_constant_channels(xval, cdim) if groups == 1 else None,
               exact=in_exact)
        if groups > 1:
            per_in, per_out = c_in // groups, c_out // groups
            if per_in == 1:   # depthwise-like: input channel k feeds output channels of group k only
                w.tie(np.repeat(in_ids, per_out), out_ids)
            else:             # grouped: a position is cut from every group at once, keeping groups equal
                for ids, per in ((in_ids, per_in), (out_ids, per_out)):
                    rows = ids.reshape(groups, per)
                    w.tie(np.broadcast_to(rows[:1], rows.shape), rows)
    w.rec.calls.append(Call(name, out.numel() // c_out, c_in, c_out, groups, h.taps(m)))
    return out_info


def _subclass_checks(w: Walker, name: str, h, m: nn.Module, xval: torch.Tensor, out_info: TInfo) -> bool:
    """Freeze the outputs of a layer holding per-channel tensors nobody can place, or whose own
    forward computes something else once outputs go; returns whether removing inputs is exact."""
    odd = [p for p, dim in h.extra(m) if dim < 0]
    if odd:
        w.freeze(out_info, f"{name} ({type(m).__name__}) holds '{odd[0]}', which has no one entry per channel")
    if not own_forward(m):
        return True
    out_ok, in_ok = probe(h, m, xval)
    if not out_ok:
        w.freeze(out_info, f"{name} ({type(m).__name__}): its own forward computes something else once "
                           f"outputs are removed")
    return in_ok


def _norm(w: Walker, n: fx.Node, args, out, name: str, h: Norm, m: nn.Module, x: TInfo):
    if h.passthrough(m):
        return w._pass(x, out)
    found = h.channel_dim(m, x.dims, len(x.shape))
    ids = _along(x, found[0], h.width(m, x.shape, found[0])) if found else None
    if ids is None:
        return w._unknown(n, args, {}, out, f"{name}: channels not where {type(m).__name__} expects them")
    w.site(name, Role.NORM, ids, exact=found[1])
    if h.unit(m) > 1:   # channels that go together (GroupNorm's groups)
        tie_along(w, ids.reshape(-1, h.unit(m)), 1)
    src = n.args[0]
    if h.absorbs_shift(m) and src.op == "call_module" and len(src.users) == 1:
        w.rec.bn_after[w.prefix + str(src.target)] = name
    return w._pass(x, out)


def analyse_module(w: Walker, n: fx.Node, args, out):
    """Handle a ``call_module`` node: record sites and return the output's channel info."""
    local = str(n.target)
    m = w.module.get_submodule(local)
    name = w.prefix + local
    x = w.info.get(n.args[0]) if n.args else None
    h = handler_for(m)
    if local in w.opaque and not isinstance(h, Weighted):
        return w._unknown(n, args, {}, out, f"{name} is ignored (opaque)")
    if not isinstance(x, TInfo) or not isinstance(out, torch.Tensor):
        return w._unknown(n, args, {}, out, f"{name} ({type(m).__name__}) takes or returns no single tensor")

    if isinstance(h, Weighted):
        info = _weighted(w, n, m, x, args[0], out)
        if local in w.opaque:
            w.freeze(info, f"{name} is ignored (outputs kept whole)")
        return info
    if isinstance(h, Norm):
        return _norm(w, n, args, out, name, h, m, x)

    has_own_params = any(True for _ in m.parameters(recurse=False)) or any(True for _ in m.buffers(recurse=False))

    if isinstance(m, _ops.PASSTHROUGH_MODULES) and not has_own_params:
        if isinstance(m, (nn.ZeroPad2d, nn.ConstantPad2d, nn.ReflectionPad2d, nn.ReplicationPad2d)):
            return w._pad(n, (args[0], tuple(m.padding)), {}, out)
        return w._pass(x, out) if out.ndim == len(x.shape) else w._unknown(n, args, {}, out)
    if isinstance(m, _ops.MOVEMENT_MODULES):
        return w._movement(n, args, {}, out, module=m)
    if isinstance(m, nn.Softmax):
        return w._softmax(n, (args[0], m.dim), {}, out)
    return w._unknown(n, args, {}, out, f"unsupported layer {name} ({type(m).__name__})")


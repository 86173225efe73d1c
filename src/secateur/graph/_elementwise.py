"""Element-wise operations with broadcasting, and functional normalisations.

Operands that span the output's channel dims have their units tied position by position; a model
parameter that spans them (ConvNeXt's ``layer_scale``, a functional BatchNorm's weight) becomes a
PARAM site; a broadcast operand (size 1 along the channels, e.g. a spatial attention map) is not
coupled at all.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.fx as fx

from ._movement import moving
from ._types import Role
from ._walk import TInfo, Walker, _along


def _aligned(t: TInfo, rank: int) -> tuple[int, ...]:
    return tuple(d + rank - len(t.shape) for d in t.dims)


def _attr_site(w: Walker, t: TInfo, out: torch.Tensor, dims: tuple[int, ...], ids: np.ndarray | None,
               exact: bool = True) -> bool:
    """Slice a parameter operand along the channel dim when it spans it. False if it cannot be."""
    rank, offset = out.ndim, out.ndim - len(t.shape)
    spans = [d for d in range(offset, rank) if t.shape[d - offset] > 1]
    channel_spans = [d for d in spans if d in dims]
    if not channel_spans:
        return True
    if ids is None or len(dims) != 1 or t.shape[dims[0] - offset] != ids.size:
        return False
    module, _, param = t.attr.rpartition(".")
    dim = t.attr_dim if t.attr_dim is not None else dims[0] - offset
    w.site(module, Role.PARAM, ids, param=param, dim=dim, exact=exact)
    return True


def elementwise(w: Walker, n: fx.Node, args, kwargs, out):
    if not isinstance(out, torch.Tensor):
        return w._unknown(n, args, kwargs, out)
    infos = [w.info.get(a) for a in (*n.args, *n.kwargs.values()) if isinstance(a, fx.Node)]
    infos = [t for t in infos if isinstance(t, TInfo)]
    rank = out.ndim
    if any(len(t.shape) > rank for t in infos):   # not element-wise after all (e.g. x.to(other) with a list)
        return w._unknown(n, args, kwargs, out)
    tracked = [t for t in infos if t.ids is not None]
    coupled = [t for t in tracked
               if all(t.shape[d - rank + len(t.shape)] == out.shape[d] for d in _aligned(t, rank))
               and any(out.shape[d] > 1 for d in _aligned(t, rank))]
    if not coupled:
        if tracked:   # e.g. (N,1,H,W) * (N,1,H,W): single-unit tensors
            ref = max(tracked, key=lambda t: len(t.dims))
            return TInfo(tuple(out.shape), _aligned(ref, rank), ref.ids)
        return TInfo(tuple(out.shape))  # arithmetic on constants and parameters only
    dims = _aligned(coupled[0], rank)
    if any(_aligned(t, rank) != dims for t in coupled):
        reason = f"operands with different channel layouts at node '{n.name}'"
        w.freeze(infos, reason)
        return w.new_info(out, reason)
    for t in coupled[1:]:
        w.tie(coupled[0].ids, t.ids)
    ids = coupled[0].ids
    varying = moving(w, TInfo(tuple(out.shape), dims, ids))   # a per-head scale spans heads, not units
    for t in infos:
        if any(t is c for c in coupled) or _spans_nothing(t, out, varying):
            continue
        if t.ids is None and t.attr and _attr_site(w, t, out, dims, ids):
            continue
        w.freeze([coupled[0], t], f"combined with an unprunable tensor of shape {tuple(t.shape)} "
                                  f"at node '{n.name}'")
    return TInfo(tuple(out.shape), dims, ids)


def _spans_nothing(t: TInfo, out: torch.Tensor, dims: tuple[int, ...]) -> bool:
    offset = out.ndim - len(t.shape)
    return all(d < offset or t.shape[d - offset] == 1 for d in dims)


def functional_norm(w: Walker, n: fx.Node, args, kwargs, out):
    """F.batch_norm / F.layer_norm / F.group_norm with the model's own weights as get_attr args."""
    from ._ops import FUNCTIONAL_NORMS
    positions, over_channels = FUNCTIONAL_NORMS[n.target]
    x = w.info.get(n.args[0])
    if not isinstance(x, TInfo) or x.ids is None:
        return w._unknown(n, args, kwargs, out)
    rank = len(x.shape)
    name = getattr(n.target, "__name__", "")
    if name == "layer_norm":
        shape = args[1] if len(args) > 1 else kwargs["normalized_shape"]
        dim = rank - len(shape)
        ok = len(shape) == 1
    elif name == "group_norm":
        groups = args[1] if len(args) > 1 else kwargs["num_groups"]
        dim, ok = 1, groups == x.shape[1] or groups == 1
        over_channels = groups == 1
    else:
        dim, ok = 1, True
    ids = _along(x, dim, x.shape[dim]) if ok else None
    if ids is None:
        return w._unknown(n, args, kwargs, out, f"normalisation over channels at node '{n.name}'")
    names = list(n.args) + list(n.kwargs.values())
    params = [w.info.get(names[p]) if p < len(names) and isinstance(names[p], fx.Node) else None
              for p in positions]
    if any(isinstance(t, TInfo) and not t.attr for t in params):
        return w._unknown(n, args, kwargs, out)   # per-channel tensors computed in forward
    params = [t for t in params if isinstance(t, TInfo)]
    if over_channels and not params:  # its width lives only in module code we cannot see
        return w._unknown(n, args, kwargs, out, f"normalisation over channels at node '{n.name}'")
    for t in params:  # removing a unit from a norm over channels changes its statistics: not exact
        module, _, param = t.attr.rpartition(".")
        w.site(module, Role.PARAM, ids, param=param, dim=0, exact=not over_channels)
    return TInfo(tuple(out.shape), x.dims, x.ids)

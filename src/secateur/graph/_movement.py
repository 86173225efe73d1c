"""Which data-movement ops stay valid after pruning, and the ties that keep them valid.

A replayed view/reshape/shuffle tells where every channel lands *now*; after pruning the op runs on
fewer channels and recomputes its layout from the sizes it is given. That only matches the old map
when units are removed along a single free dim: sizes written as literals in the code stay fixed.
"""
from __future__ import annotations

import numpy as np
import torch.fx as fx
from torch import nn

SIZED = {"view", "reshape", "expand", "unflatten"}   # ops whose arguments are output sizes
SLICING = {"getitem", "__getitem__", "narrow", "select", "unbind"}
PIECES = {"split", "chunk"}


def name_of(n: fx.Node) -> str:
    return n.target if n.op == "call_method" else getattr(n.target, "__name__", "")


def fixed_dims(n: fx.Node) -> set[int]:
    """Output dims whose size is a literal in the call (not -1, not computed from a tensor's size)."""
    name = name_of(n)
    if name not in SIZED:
        return set()
    if name == "unflatten":
        dim, sizes = (n.args[1], n.args[2]) if len(n.args) > 2 else (n.kwargs.get("dim"), n.kwargs.get("sizes"))
        offset = dim
    else:
        sizes = n.args[1:] if len(n.args) > 1 else (n.kwargs.get("shape") or n.kwargs.get("size") or ())
        if len(sizes) == 1 and isinstance(sizes[0], (tuple, list)):
            sizes = sizes[0]
        offset = 0
    return {offset + i for i, s in enumerate(sizes) if isinstance(s, int) and s != -1}


def slices_channels(n: fx.Node, args, dims: tuple[int, ...], rank: int) -> bool:
    """True when a slicing op picks channels by position (which would shift once channels go)."""
    name = name_of(n)
    if name in ("getitem", "__getitem__"):
        index = args[1] if isinstance(args[1], tuple) else (args[1],)
        if any(i is Ellipsis or i is None for i in index):
            return bool(dims)
        return any(d < len(index) and index[d] != slice(None) for d in dims)
    dim = args[1] if len(args) > 1 else n.kwargs.get("dim", 0)
    return isinstance(dim, int) and dim % rank in dims


def tie_along(walker, ids: np.ndarray, axis: int) -> None:
    """Tie every entry of ``ids`` to the entry with index 0 along ``axis``."""
    first = np.take(ids, [0], axis=axis)
    walker.tie(np.broadcast_to(first, ids.shape), ids)


def constrain(walker, n: fx.Node, args, kwargs, source, results: list, module=None) -> str | None:
    """Add the ties that keep this op valid after pruning; return a reason to freeze instead, if any.

    ``source``: TInfo of the first tensor input; ``results``: TInfo of every tensor output;
    ``module``: the layer called, for a ``call_module`` node.
    """
    name = name_of(n)
    rank = len(source.shape)
    if isinstance(module, nn.ChannelShuffle) or name == "channel_shuffle":
        # like view(b, groups, C / groups, ...): the same position goes from every group at once
        groups = module.groups if module is not None else (args[1] if len(args) > 1 else kwargs["groups"])
        if source.dims != (1,):
            return f"channel shuffle of an unexpected layout at node '{n.name}'"
        tie_along(walker, source.ids.reshape(groups, -1), 0)
    if source.ids is not None and source.dims:
        if name in SLICING and slices_channels(n, args, source.dims, rank):
            return f"channels picked by position ({name}) at node '{n.name}'"
        if name in PIECES:
            dim = args[2] if len(args) > 2 else kwargs.get("dim", 0)
            if dim % rank in source.dims:
                equal = len({r.ids.shape for r in results}) == 1
                dynamic = name == "chunk" or isinstance(n.args[1], fx.Node)
                if not (equal and dynamic):
                    return f"channels split at fixed sizes ({name}) at node '{n.name}'"
                for r in results[1:]:
                    walker.tie(results[0].ids, r.ids)
    fixed = fixed_dims(n)
    for r in results:
        free = [d for d in r.dims if d not in fixed]
        if r.dims and not free:
            return f"channels reshaped to a fixed size ({name}) at node '{n.name}'"
        for axis, d in enumerate(r.dims):
            if d != (free[0] if free else None):
                tie_along(walker, r.ids, axis)
    return None

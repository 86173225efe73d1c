"""Which data-movement ops stay valid after pruning, and the ties that keep them valid.

A replayed view/reshape/shuffle tells where every channel lands *now*; after pruning the op runs on
fewer channels and recomputes its layout from the sizes it is given. That only matches the old map
when units are removed along a single free dim: sizes written as literals in the code stay fixed.
"""
from __future__ import annotations

import numpy as np
import torch.fx as fx
from torch import nn

from ._sizes import check_sizes, is_width

SIZED = {"view", "reshape", "expand", "unflatten", "view_as", "reshape_as", "expand_as"}   # take output sizes
SLICING = {"getitem", "__getitem__", "narrow", "select", "unbind"}
PIECES = {"split", "chunk"}


def name_of(n: fx.Node) -> str:
    return n.target if n.op == "call_method" else getattr(n.target, "__name__", "")


def _per_dim(index: tuple, written: tuple, rank: int) -> list[tuple]:
    """(value, as written in the graph) of the index entry that applies to each input dim."""
    out: list[tuple] = []
    for i, (ix, w) in enumerate(zip(index, written)):
        if ix is None:
            continue
        if ix is Ellipsis:
            rest = sum(1 for j in index[i + 1:] if j is not None)
            out.extend([(slice(None), slice(None))] * (rank - len(out) - rest))
        else:
            out.append((ix, w))
    return out + [(slice(None), slice(None))] * (rank - len(out))


def _whole(ix, written, size: int) -> bool:
    """A slice that keeps the whole dim, now and after pruning (a literal stop at or past the end)."""
    return (isinstance(ix, slice) and ix.step in (None, 1) and ix.start in (None, 0)
            and (ix.stop is None or ix.stop >= size) and not isinstance(getattr(written, "stop", None), fx.Node))


def slices_channels(n: fx.Node, args, dims: tuple[int, ...], rank: int, shape: tuple[int, ...] = ()) -> bool:
    """True when a slicing op picks channels by position (which would shift once channels go)."""
    name = name_of(n)
    if name in ("getitem", "__getitem__"):
        index = args[1] if isinstance(args[1], tuple) else (args[1],)
        written = n.args[1] if isinstance(n.args[1], tuple) else (n.args[1],)
        if len(written) != len(index):
            return bool(dims)
        per_dim = _per_dim(index, written, rank)
        return any(not _whole(*per_dim[d], shape[d]) for d in dims)
    dim = args[1] if len(args) > 1 else n.kwargs.get("dim", 0)
    return isinstance(dim, int) and dim % rank in dims


def _pieces(walker, n: fx.Node, name: str, results: list, dim: int) -> str | None:
    """Split along channels: equal pieces of a computed size (``chunk(2)``, ``split(C // 2)``) are
    tied position by position; pieces sized by a block's widths (``split([key_dim, key_dim,
    head_dim])``) follow them, pieces of the same width tied; literal sizes freeze. ``chunk(n)`` of
    a width ``n`` does not divide (88 in 3: 30, 30, 28) is tied position by position too, each extra
    position ``p`` of the first pieces (28, 29) in the unit of position ``p % 28``: every cut then
    leaves sizes ``chunk`` computes again (a last piece at most ``n - 1`` shorter, never empty)."""
    sizes = n.args[1]
    if isinstance(sizes, (tuple, list)) and all(is_width(walker.info.get(s)) for s in sizes):
        for size in set(sizes):
            same = [r for s, r in zip(sizes, results) if s is size]
            for r in same[1:]:
                walker.tie(same[0].ids, r.ids)
        return None
    equal = len({r.ids.shape for r in results}) == 1
    if equal and (name == "chunk" or isinstance(sizes, fx.Node)):
        for r in results[1:]:
            walker.tie(results[0].ids, r.ids)
        return None
    if name == "chunk" and len(results) == sizes and all(dim in r.dims for r in results):
        axis = results[0].dims.index(dim)
        lengths = [r.ids.shape[axis] for r in results]
        full, last = lengths[0], lengths[-1]
        if set(lengths[:-1]) == {full} and 0 < last < full:
            head = [np.take(r.ids, range(last), axis=axis) for r in results]
            for h in head[1:]:
                walker.tie(head[0], h)
            for r in results[:-1]:
                for p in range(last, full):   # in the unit of position p % last: a unit always has a last-piece channel
                    walker.tie(np.take(results[0].ids, [p % last], axis=axis), np.take(r.ids, [p], axis=axis))
            return None
    return f"channels split at fixed sizes ({name}) at node '{n.name}'"


def varying_axes(roots: np.ndarray) -> list[int]:
    """Axes of an id array along which the units (``roots``) are not all the same."""
    return [axis for axis in range(roots.ndim)
            if roots.shape[axis] > 1 and not (roots == np.take(roots, [0], axis=axis)).all()]


def moving(walker, t) -> tuple[int, ...]:
    """The channel dims of ``t`` along which units vary (as tied so far). Along the others every line
    is one unit, so pruning never changes their length: literal sizes and slices there stay right.
    When units vary along none, the whole tensor may be one unit: all its dims count."""
    if t.ids is None or len(t.dims) < 2:
        return t.dims
    return tuple(t.dims[axis] for axis in varying_axes(walker.roots(t.ids))) or t.dims


def line(ids: np.ndarray, axis: int) -> np.ndarray:
    """The ids along ``axis``, at index 0 of every other dim."""
    return ids[tuple(slice(None) if d == axis else 0 for d in range(ids.ndim))]


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
        dims = moving(walker, source)
        if name in SLICING and slices_channels(n, args, dims, rank, source.shape):
            return f"channels picked by position ({name}) at node '{n.name}'"
        if name in PIECES:
            dim = args[2] if len(args) > 2 else kwargs.get("dim", 0)
            if dim % rank in dims:
                why = _pieces(walker, n, name, results, dim % rank)
                if why:
                    return why
    fixed: set[int] = set()
    if name in SIZED:
        fixed, why = check_sizes(walker, n, args, kwargs, source)
        if why:
            return why
    for r in results:   # a tensor stays rectangular: units go along one dim, the free one with most
        free = [d for d in r.dims if d not in fixed]   # distinct units (as tied so far), then the widest
        if len(free) > 1:
            roots = walker.roots(r.ids)
            spread = {d: len(np.unique(line(roots, r.dims.index(d)))) for d in free}
            free.sort(key=lambda d: (-spread[d], -r.shape[d]))
        if r.dims and not free and moving(walker, r):
            return f"channels reshaped to a fixed size ({name}) at node '{n.name}'"
        for axis, d in enumerate(r.dims):
            if d != (free[0] if free else None):
                tie_along(walker, r.ids, axis)
    return None

"""Matrix products (``q @ k.transpose(-2, -1)``, ``attn @ v``): which channels they contract, which
they carry, and when they cannot follow a pruned width.

Each operand is looked at through its *units as tied so far*: after a reshape with a literal head
count, every head holds the same units, so along the head dim the units do not vary. An operand's
units may vary along one dim at most (a tensor stays rectangular). Then:

* units varying along the contracted dim of both operands are tied position by position: removing
  unit ``j`` drops the term ``a[..., j] * b[j, ...]`` from every sum. No layer reads them, so the
  term was not zero before: such units are pruned inexactly (like LayerNorm's channels);
* units varying along a dim the output keeps (a row of ``a``, a column of ``b``, a batch dim) are
  carried to the output; two operands carrying units along the same batch dim are tied there;
* anything else (units contracted against a tensor that cannot lose them, an outer product of two
  operands' units, a batch dim that the other operand holds at full size) freezes both operands.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.fx as fx

from ._movement import line, varying_axes
from ._types import TInfo


def _aligned(t, value: torch.Tensor, rank: int):
    """(unit ids laid out on ``value``'s dims, size 1 where no channels, left-padded to ``rank``;
    the dims carrying channels, counted in the output's rank) or None without channels."""
    if t is None or t.ids is None or not t.dims:
        return None
    view = [value.shape[d] if d in t.dims else 1 for d in range(value.ndim)]
    pad = rank - value.ndim
    return t.ids.reshape([1] * pad + view), {d + pad for d in t.dims}


def matmul(w, n: fx.Node, args, kwargs, out):
    a, b = (args[0], args[1]) if len(args) > 1 else (args[0], kwargs.get("other", kwargs.get("mat2")))
    if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and isinstance(out, torch.Tensor)
            and a.ndim >= 2 and b.ndim >= 2):
        return w._unknown(n, args, kwargs, out, f"matrix product of an unexpected rank at node '{n.name}'")
    rank = out.ndim
    ops = {k: _aligned(w.info.get(x), v, rank) for k, x, v in zip("ab", n.args[:2], (a, b))}
    ops = {k: v for k, v in ops.items() if v is not None}
    if not ops:
        return TInfo(tuple(out.shape))
    why = f"matrix product at node '{n.name}' mixes channels it cannot follow"
    contract = {"a": rank - 1, "b": rank - 2}
    vary = {}
    for k, (ids, _) in ops.items():
        found = varying_axes(w.roots(ids))
        if len(found) != 1:   # none: one unit spans the whole operand; several: not rectangular
            return w._unknown(n, args, kwargs, out, why)
        vary[k] = found[0]
    contracted = [k for k, d in vary.items() if d == contract[k]]
    if contracted:
        if len(contracted) != 2:
            return w._unknown(n, args, kwargs, out, why)
        w.tie(line(ops["a"][0], rank - 1), line(ops["b"][0], rank - 2))
        w.rec.inexact.append(line(ops["a"][0], rank - 1))   # no layer reads them: silencing cannot zero them
        return TInfo(tuple(out.shape))
    if len(set(vary.values())) > 1:   # an outer product of two operands' units
        return w._unknown(n, args, kwargs, out, why)
    dim = next(iter(vary.values()))
    kept = {k: (np.take(ids, [0], axis=contract[k]), dims - {contract[k]}) for k, (ids, dims) in ops.items()}
    if len(kept) == 2:   # both carry units along the same batch dim: tied there
        w.tie(*np.broadcast_arrays(kept["a"][0], kept["b"][0]))
    elif dim < rank - 2:   # a batch dim: the other operand must broadcast along it
        other = b if "a" in kept else a
        at = dim - (rank - other.ndim)
        if at >= 0 and other.shape[at] > 1:
            return w._unknown(n, args, kwargs, out, why)
    ids, dims = next(iter(kept.values()))
    dims = tuple(sorted(dims))
    return TInfo(tuple(out.shape), dims, ids.reshape([out.shape[d] for d in dims]))

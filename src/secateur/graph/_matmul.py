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
* an outer product of channels (EdgeNeXt's cross-covariance attention: ``q @ k.transpose(-2, -1)``
  with q and k as (heads, channels, tokens)): the rows carry a's units and the columns b's, tied
  position by position so the square map shrinks on both sides. The result keeps its column units
  in ``TInfo.cross``; only element-wise ops, a softmax and dropout may carry them on, and a later
  product that contracts them (``attn @ v``) ties them to v's units, inexactly (a softmax over them
  changes). Anything else that meets such a tensor freezes its units;
* anything else (units contracted against a tensor that cannot lose them, a batch dim that the
  other operand holds at full size) freezes both operands.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.fx as fx
from torch import nn

from ._movement import line, varying_axes
from ._types import TInfo

_CARRIERS = (nn.modules.dropout._DropoutNd, nn.Identity, nn.Softmax)


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
    infos = {k: w.info.get(x) for k, x in zip("ab", n.args[:2])}
    why = f"matrix product at node '{n.name}' mixes channels it cannot follow"
    crossed = [k for k, t in infos.items() if isinstance(t, TInfo) and t.cross is not None]
    if crossed:
        return _contract_cross(w, n, args, kwargs, out, infos, crossed, why)
    ops = {k: _aligned(t, v, rank) for (k, t), v in zip(infos.items(), (a, b))}
    ops = {k: v for k, v in ops.items() if v is not None}
    if not ops:
        return TInfo(tuple(out.shape))
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
    kept = {k: (np.take(ids, [0], axis=contract[k]), dims - {contract[k]}) for k, (ids, dims) in ops.items()}
    if len(set(vary.values())) > 1:   # an outer product of two operands' units
        if vary != {"a": rank - 2, "b": rank - 1}:
            return w._unknown(n, args, kwargs, out, why)
        rows, cols = line(ops["a"][0], rank - 2), line(ops["b"][0], rank - 1)
        if rows.size != cols.size:
            return w._unknown(n, args, kwargs, out, why)
        w.tie(rows, cols)
        ids, dims = kept["a"]
        dims = tuple(sorted(dims))
        return TInfo(tuple(out.shape), dims, ids.reshape([out.shape[d] for d in dims]), cross=cols,
                     cross_dim=rank - 1)
    dim = next(iter(vary.values()))
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


def _contract_cross(w, n: fx.Node, args, kwargs, out, infos: dict, crossed: list, why: str):
    """``attn @ v`` where attn carries column units (an outer product): they are contracted with
    the units v varies along its rows, tied to them inexactly; the result carries attn's rows."""
    t, v = infos["a"], infos["b"]
    rank = out.ndim
    if crossed != ["a"] or t.cross_dim != len(t.shape) - 1 or len(t.shape) != rank:
        return w._unknown(n, args, kwargs, out, why)
    found = _aligned(v, args[1], rank) if isinstance(v, TInfo) else None
    if found is None or varying_axes(w.roots(found[0])) != [rank - 2]:
        return w._unknown(n, args, kwargs, out, why)
    rows = line(found[0], rank - 2)
    if rows.size != t.cross.size:
        return w._unknown(n, args, kwargs, out, why)
    w.tie(t.cross, rows)
    w.rec.inexact.append(t.cross)
    return TInfo(tuple(out.shape), t.dims, t.ids)


def carry_cross(w, n: fx.Node, args, kwargs, out, crossed: list, info):
    """Pass an outer product's column units on through ops that keep every position where it is
    (element-wise with operands that do not span the columns, a softmax, dropout); freeze them
    anywhere else. A softmax over the columns makes their removal inexact."""
    from ._ops import kind_of
    if n.op in ("call_function", "call_method") and (kind_of(n.op, n.target) == "matmul"
                                                     or not isinstance(out, torch.Tensor) and n.op != "output"):
        return info   # matmul() decided; or a size read
    src = crossed[0]
    module = w.module.get_submodule(str(n.target)) if n.op == "call_module" else None
    kind = "module" if module is not None else (kind_of(n.op, n.target) if n.op != "output" else "output")
    others = [w.info.get(a) for a in n.all_input_nodes if w.info.get(a) is not src]
    fits = (len(crossed) == 1 and isinstance(info, TInfo) and isinstance(out, torch.Tensor)
            and tuple(out.shape) == src.shape and info.ids is src.ids
            and (kind in ("elementwise", "softmax") or isinstance(module, _CARRIERS))
            and all(not isinstance(o, TInfo) or o.ids is None and _flat_along(o, src) for o in others))
    if not fits:
        w.freeze(src, f"channels along two dims (an outer product) reach node '{n.name}'")
        w.freeze(info, f"channels along two dims (an outer product) reach node '{n.name}'")
        return info
    dim = _softmax_dim(n, args, kwargs, module)
    if dim is not None and dim % len(src.shape) == src.cross_dim:
        w.rec.inexact.append(src.cross)
    return TInfo(info.shape, info.dims, info.ids, cross=src.cross, cross_dim=src.cross_dim)


def _flat_along(o: TInfo, src: TInfo) -> bool:
    """True when a constant operand has size 1 along ``src``'s column dim (or does not reach it)."""
    at = src.cross_dim - (len(src.shape) - len(o.shape))
    return at < 0 or o.shape[at] == 1


def _softmax_dim(n: fx.Node, args, kwargs, module):
    if isinstance(module, nn.Softmax):
        return module.dim
    if n.op == "call_method" and n.target in ("softmax", "log_softmax") or \
            getattr(n.target, "__name__", "") in ("softmax", "log_softmax"):
        return args[1] if len(args) > 1 else kwargs.get("dim")
    return None

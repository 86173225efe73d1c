"""Where Python numbers come from: sizes read off tensors, followed through arithmetic.

``x.shape[1]``, ``x.size(1)`` or ``C // heads`` are graph nodes (the tracer keeps them symbolic).
Each gets a *provenance*: the set of channel dims whose size it was computed from (a "read"). The
walk uses it in two places:

* a reshape/view/expand size: a size read off the reshaped tensor's own channels follows it after
  pruning; one read off *another* tensor's channels only stays right if both lose the same number
  of channels, so the two are tied (same width) or, when they cannot be, frozen;
* a guard: Python turned a size into a plain number (``if x.shape[1] == 64``, ``assert C == dim``,
  ``range(C)``): the code relies on that count, so the channels it was read from are frozen.
"""
from __future__ import annotations

import operator

import numpy as np
import torch.fx as fx

from ._types import TInfo

Prov = frozenset   # of read keys: (node name, dim), or (WIDTH, "module.attr") for a block's width
NONE: Prov = frozenset()
WIDTH = "@width"   # a width a registered block keeps in an attribute and re-syncs after surgery


def _reads(p) -> list:
    """The channel reads of a provenance, without block widths."""
    return sorted(k for k in (p or ()) if k[0] != WIDTH)


def is_width(p) -> bool:
    """True when a size is computed from a block's width: it follows the block after surgery."""
    return isinstance(p, frozenset) and any(k[0] == WIDTH for k in p)


def reads_of(value) -> Prov:
    """Every read in a provenance or a (nested) tuple of them."""
    if isinstance(value, frozenset):
        return value
    if isinstance(value, tuple):
        return frozenset().union(*(reads_of(v) for v in value)) if value else NONE
    return NONE


def _read(w, node: fx.Node, dim: int) -> Prov:
    t = w.info.get(node)
    if not isinstance(t, TInfo) or t.ids is None or dim % max(len(t.shape), 1) not in t.dims:
        return NONE
    dim %= len(t.shape)
    key = (node.name, dim)
    w.reads[key] = t.ids if t.dims == (dim,) else t.ids.ravel()
    return frozenset([key])


def _dim_arg(n: fx.Node, args, kwargs):
    return args[1] if len(args) > 1 else kwargs.get("dim")


def provenance(w, n: fx.Node, args, kwargs, out):
    """The provenance of a node whose value is a Python number, a torch.Size or a tuple of them."""
    width = getattr(n.target, "width_attr", None) if n.op == "call_function" else None
    if width is not None:
        return frozenset([(WIDTH, ".".join(x for x in width if x))])
    src = n.args[0] if n.args and isinstance(n.args[0], fx.Node) else None
    if src is not None and (n.op == "call_method" and n.target == "size"
                            or n.target is getattr and args[1] == "shape"):
        dim = _dim_arg(n, args, kwargs) if n.op == "call_method" else None
        if dim is not None:
            return _read(w, src, dim)
        return tuple(_read(w, src, d) for d in range(len(out)))
    if src is not None and n.op == "call_method" and n.target in ("numel", "nelement"):
        return reads_of(tuple(_read(w, src, d) for d in range(len(args[0].shape))))
    if n.target is operator.getitem and src is not None and isinstance(w.info.get(src), tuple):
        held = w.info[src]
        index = args[1]
        if isinstance(index, (int, slice)):
            try:
                return held[index]
            except IndexError:
                pass
    found = [w.info.get(a) for a in n.all_input_nodes]
    return reads_of(tuple(p for p in found if isinstance(p, (frozenset, tuple))))


def guard(w, n: fx.Node) -> None:
    """Python used ``n``'s value as a plain number: freeze the channels it was read from. A whole
    shape compared for (in)equality with None or a stored shape (``if self.shape != x.shape``:
    Ultralytics' anchor cache) is a cache check, not a use of the count: after pruning it only
    misses the cache once."""
    if n.target in (operator.eq, operator.ne, operator.is_, operator.is_not) and _cache_check(w, n):
        return
    where = _module_of(n)
    for key in _reads(reads_of(w.info.get(n))):   # a block's own width is re-synced: not a channel read
        w.freeze_ids(w.reads[key], f"Python code{where} uses the channel count of '{key[0]}' as a number "
                                   f"(at node '{n.name}')")


def _cache_check(w, n: fx.Node) -> bool:
    a, b = n.args[0], n.args[1]
    if a is None or b is None:
        return True
    whole = [x for x in (a, b) if isinstance(x, fx.Node) and isinstance(w.info.get(x), tuple)]
    other = b if whole and whole[0] is a else a
    return bool(whole) and not isinstance(other, fx.Node) and isinstance(other, tuple)


def _module_of(n: fx.Node) -> str:
    stack = n.meta.get("nn_module_stack") or {}
    if not stack:
        return ""
    name = list(stack.values())[-1][0]
    return f" in {name}" if name else ""


def size_args(n: fx.Node, args, kwargs) -> tuple[int, list]:
    """(first output dim the sizes describe, the size arguments as written: ints or nodes)."""
    name = n.target if n.op == "call_method" else getattr(n.target, "__name__", "")
    if name == "unflatten":
        dim, sizes = (n.args[1], n.args[2]) if len(n.args) > 2 else (n.kwargs.get("dim"), n.kwargs.get("sizes"))
        return dim, list(sizes)
    if name in ("view_as", "reshape_as", "expand_as"):
        return 0, [n.args[1]]
    sizes = n.args[1:] if len(n.args) > 1 else (n.kwargs.get("shape") or n.kwargs.get("size") or ())
    if len(sizes) == 1 and isinstance(sizes[0], (tuple, list)):
        sizes = sizes[0]
    return 0, list(sizes)


def check_sizes(w, n: fx.Node, args, kwargs, source) -> tuple[set[int], str | None]:
    """Output dims whose size stays fixed when channels go, plus a reason to freeze (or None).

    A size is fixed when it is a literal, or computed from sizes that are not channel counts. One
    computed from the reshaped tensor's own channels follows them, and so does one computed from a
    block's width; one from another tensor's channels ties that tensor's channels to these (or
    freezes both when their counts differ).
    """
    offset, sizes = size_args(n, args, kwargs)
    per_dim: list = []
    for s in sizes:
        if isinstance(s, fx.Node):
            p = w.info.get(s)
            if isinstance(p, tuple):      # a whole torch.Size (x.view(y.shape), y.view_as(x))
                per_dim.extend(p)
            elif isinstance(p, frozenset):
                per_dim.append(p)
            else:
                per_dim.append(None)      # a tensor's shape the walk cannot see: treat as free
        else:
            per_dim.append(NONE if isinstance(s, int) and s != -1 else None)
    fixed = {offset + i for i, p in enumerate(per_dim) if p == NONE}
    own = source.ids.ravel() if source.ids is not None else np.zeros(0, np.int64)
    for p in per_dim:
        for key in _reads(p):
            ids = w.reads[key]
            if ids.size == own.size and np.array_equal(np.sort(ids.ravel()), np.sort(own)):
                continue   # the tensor's own channel count (possibly through an elementwise op)
            if ids.size == own.size:
                w.tie(ids, own)
                continue
            reason = f"{n.target if n.op == 'call_method' else n.target.__name__} at node '{n.name}' takes " \
                     f"a size from the channels of '{key[0]}'"
            w.freeze_ids(ids, reason)
            return fixed, reason
    return fixed, None

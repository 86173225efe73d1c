"""Channel groups: the sets of channels that must be removed together, and ``trace`` that finds them."""
from __future__ import annotations

import traceback
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch
import torch.fx as fx
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from torch import nn

from . import _ops, _walk
from ._types import Call, Role, Site

_ROLE_ORDER = {Role.OUT: 0, Role.NORM: 1, Role.PARAM: 2, Role.IN: 3}


class TraceError(ValueError):
    """The model cannot be traced, or the example inputs do not fit it."""


@dataclass(frozen=True, eq=False)
class Member:
    """The positions of one site that belong to a group, and the group's unit at each of them."""

    site: Site
    positions: np.ndarray   # indices into the site's channel positions
    unit: np.ndarray        # group-local unit index at each of those positions


@dataclass(frozen=True, eq=False)
class ChannelGroup:
    """Channels that can only be removed together. A *unit* is the smallest removable piece: one
    channel of a plain conv, ``groups`` channels of a grouped conv, H*W features of a flattened map."""

    index: int
    size: int                       # number of units
    members: tuple[Member, ...]
    frozen: str | None = None       # why the group cannot be pruned, or None
    exact: bool = True              # False when removal changes normalisation statistics

    @property
    def prunable(self) -> bool:
        return self.frozen is None and self.size > 1

    @property
    def width(self) -> int:
        """Channels per unit in the group's first layer."""
        return len(self.members[0].positions) // self.size

    def modules(self, role: Role | None = None) -> list[str]:
        return [m.site.module for m in self.members if role is None or m.site.role is role]

    def __str__(self) -> str:
        sites = [str(m.site) for m in self.members]
        shown = " → ".join(sites[:5]) + (f" … (+{len(sites) - 5})" if len(sites) > 5 else "")
        unit = f"{self.size} units × {self.width} ch" if self.width > 1 else f"{self.size} ch"
        state = f"frozen: {self.frozen}" if self.frozen else ("prunable" if self.exact else "prunable (inexact)")
        return f"#{self.index:<3} {unit:>16}  {state}  {shown}"


@dataclass(frozen=True, eq=False)
class Graph:
    """A traced model: its channel groups and the sites (layer tensors) they touch."""

    groups: tuple[ChannelGroup, ...]
    sites: tuple[Site, ...]
    calls: tuple[Call, ...]
    bn_after: dict[str, str]
    input_shapes: tuple[tuple[int, ...], ...]

    @property
    def prunable(self) -> list[ChannelGroup]:
        return [g for g in self.groups if g.prunable]

    def __str__(self) -> str:
        n = len(self.prunable)
        head = f"Graph: {len(self.groups)} channel groups, {n} prunable, {len(self.sites)} sites"
        return "\n".join([head, *map(str, self.groups)])


def _build(rec: _walk.Record, input_shapes) -> Graph:
    n = max(rec.n_ids, 1)
    if rec.edges:
        a = np.concatenate([e[0] for e in rec.edges])
        b = np.concatenate([e[1] for e in rec.edges])
    else:
        a = b = np.zeros(0, dtype=np.int64)
    adj = coo_matrix((np.ones(len(a), dtype=np.int8), (a, b)), shape=(n, n))
    _, comp = connected_components(adj, directed=False)

    reason: dict[int, str] = {}
    for ids, why in rec.frozen:
        for c in np.unique(comp[ids]).tolist():
            reason.setdefault(c, why)

    sites = rec.sites
    site_comps = [np.unique(comp[s.ids]) for s in sites]
    signature: dict[int, list[int]] = {}
    for i, comps in enumerate(site_comps):
        for c in comps.tolist():
            signature.setdefault(c, []).append(i)
    buckets: dict[tuple, list[int]] = {}
    for c, sig in signature.items():
        buckets.setdefault((tuple(sig), reason.get(c)), []).append(c)

    group_of = np.full(comp.max() + 1, -1, dtype=np.int64)
    local = np.full(comp.max() + 1, -1, dtype=np.int64)
    keys = sorted(buckets, key=lambda k: min(k[0]))
    for g, key in enumerate(keys):
        comps = np.asarray(buckets[key])
        group_of[comps], local[comps] = g, np.arange(len(comps))

    members: list[list[Member]] = [[] for _ in keys]
    for s in sites:
        cg = comp[s.ids]
        owner = group_of[cg]
        for g in np.unique(owner).tolist():
            pos = np.flatnonzero(owner == g)
            members[g].append(Member(s, pos, local[cg[pos]]))
    groups = []
    for g, key in enumerate(keys):
        ms = tuple(sorted(members[g], key=lambda m: _ROLE_ORDER[m.site.role]))
        groups.append(ChannelGroup(g, len(buckets[key]), ms, key[1], all(m.site.exact for m in ms)))
    return Graph(tuple(groups), tuple(sites), tuple(rec.calls), dict(rec.bn_after), input_shapes)


class _Tracer(fx.Tracer):
    """Weighted layers (and their subclasses) and the user's opaque modules are leaves."""

    def __init__(self, opaque: set[int]):
        super().__init__()
        self.opaque = opaque

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, _ops.WEIGHTED) or id(m) in self.opaque or super().is_leaf_module(m, qualname)


def _culprit(model: nn.Module, exc: BaseException) -> str:
    """Name the innermost module of ``model`` whose code was running when ``exc`` was raised."""
    names = {id(m): name for name, m in model.named_modules()}
    found = ""
    for frame, _ in traceback.walk_tb(exc.__traceback__):
        code = frame.f_code
        obj = frame.f_locals.get(code.co_varnames[0]) if code.co_argcount else None
        if isinstance(obj, nn.Module) and id(obj) in names:
            found = f"{names[id(obj)] or '<root>'} ({type(obj).__name__}, line {frame.f_lineno})"
    return found


def as_tuple(example_inputs) -> tuple:
    return tuple(example_inputs) if isinstance(example_inputs, (tuple, list)) else (example_inputs,)


def resolve_modules(model: nn.Module, modules: Iterable) -> set[str]:
    """Qualified names for ``modules`` given as module objects or names; unknown ones are an error."""
    names = {id(m): n for n, m in model.named_modules()}
    if isinstance(modules, (str, nn.Module)):
        modules = [modules]
    out = set()
    for m in modules:
        if isinstance(m, str):
            try:
                model.get_submodule(m)
            except AttributeError:
                raise ValueError(f"ignore=: model has no module named '{m}'") from None
            out.add(m)
        elif isinstance(m, nn.Module) and id(m) in names:
            out.add(names[id(m)])
        else:
            raise ValueError(f"ignore=: {type(m).__name__} is not a submodule of the model")
    return out


def trace(model: nn.Module, example_inputs, *, ignore: Iterable = ()) -> Graph:
    """Trace ``model`` with torch.fx and group its channels into what must be cut together.

    ``ignore``: modules (objects or qualified names) whose outputs are kept whole; a module that is
    not a conv/linear layer is also treated as opaque (not traced into), which is how to get past code
    that torch.fx cannot trace. The model is run once, in eval mode, on ``example_inputs`` and left
    exactly as it was.
    """
    inputs = as_tuple(example_inputs)
    opaque = resolve_modules(model, ignore)
    tracer = _Tracer({id(model.get_submodule(n)) for n in opaque})
    try:
        fx_graph = tracer.trace(model)
    except Exception as exc:
        where = _culprit(model, exc)
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        hint = ("make the model's own forward traceable by torch.fx (no Python control flow on tensor "
                "values)" if not where or where.startswith("<root>")
                else "pass that module in ignore=[...] to treat it as opaque")
        raise TraceError(f"cannot trace {type(model).__name__}{' in ' + where if where else ''}: "
                         f"{msg}; {hint}") from exc
    gm = fx.GraphModule(tracer.root, fx_graph)
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        rec = _walk.run(gm, inputs, opaque)
    except _walk.InputError as exc:
        shapes = ", ".join(str(tuple(x.shape)) for x in inputs if isinstance(x, torch.Tensor))
        first = str(exc).strip().splitlines()[0]
        raise TraceError(f"example inputs of shape {shapes} do not fit {type(model).__name__}: {first}") from exc
    finally:
        for m, mode in modes.items():
            m.training = mode
    shapes = tuple(tuple(x.shape) for x in inputs if isinstance(x, torch.Tensor))
    return _build(rec, shapes)

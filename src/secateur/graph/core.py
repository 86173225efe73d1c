"""Channel groups: the sets of channels that must be removed together, and ``trace`` that finds them."""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
from torch import nn

from . import _walk
from ._partial import TraceError, detached, freeze_tied, walk
from ._values import flat_tensors
from ._preserve import preserved
from ._types import Call, Role, Site

_ROLE_ORDER = {Role.OUT: 0, Role.NORM: 1, Role.PARAM: 2, Role.IN: 3}


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
    exact: bool = True              # False when removal changes statistics or attention logits

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
    opaque: dict[str, str] = field(default_factory=dict)   # modules traced as black boxes, and why
    example_inputs: tuple | None = field(default=None, repr=False)   # what it was traced on
    outputs: list = field(default_factory=list, repr=False)    # the outputs' structure and shapes then

    @property
    def prunable(self) -> list[ChannelGroup]:
        return [g for g in self.groups if g.prunable]

    def __str__(self) -> str:
        n = len(self.prunable)
        head = f"Graph: {len(self.groups)} channel groups, {n} prunable, {len(self.sites)} sites"
        opaque = [f"opaque: {name} ({why})" for name, why in self.opaque.items()]
        return "\n".join([head, *opaque, *map(str, self.groups)])


def _build(rec: _walk.Record, input_shapes, opaque: dict[str, str], inputs: tuple | None = None) -> Graph:
    comp = rec.components()

    reason: dict[int, str] = {}
    for ids, why in rec.frozen:
        for c in np.unique(comp[ids]).tolist():
            reason.setdefault(c, why)

    inexact = set(np.unique(comp[np.concatenate(rec.inexact)]).tolist()) if rec.inexact else set()
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
        exact = all(m.site.exact for m in ms) and not inexact.intersection(buckets[key])
        groups.append(ChannelGroup(g, len(buckets[key]), ms, key[1], exact))
    return Graph(tuple(groups), tuple(sites), tuple(rec.calls), dict(rec.bn_after), input_shapes, dict(opaque),
                 inputs, list(rec.outputs))


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

    The model runs on ``example_inputs`` while it is traced, so Python that reads shapes, dtypes or
    devices works as at run time. A module whose code still cannot be traced (detection
    post-processing) is made opaque automatically: its channels are kept whole where they cross it,
    and ``Graph.opaque`` says which modules and why.

    ``ignore``: modules (objects or qualified names) whose outputs are kept whole; a module that is
    not a conv/linear layer is also treated as opaque (not traced into). The model is run in eval
    mode and left exactly as it was (modes, parameters, and attributes its forward sets).
    """
    inputs = as_tuple(example_inputs)
    opaque = resolve_modules(model, ignore)
    rec, report = _walk.Record(), {}
    with preserved(model):
        walk(model, inputs, opaque, rec, report)
    freeze_tied(model, rec)
    shapes = tuple(tuple(x.shape) for x in flat_tensors(inputs))
    return _build(rec, shapes, report, detached(inputs))

"""Plan: which units of which channel group survive. Immutable, computed whole before any surgery."""
from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

import numpy as np

from ..graph import Graph, Role, Site


@dataclass(frozen=True)
class Plan:
    """``keep[g]``: the sorted unit indices of group ``g`` that stay; groups not named stay whole."""

    keep: Mapping[int, tuple[int, ...]] = field(default_factory=dict)

    def __post_init__(self):
        object.__setattr__(self, "keep", MappingProxyType({int(g): tuple(sorted(map(int, u)))
                                                           for g, u in self.keep.items()}))

    @classmethod
    def from_masks(cls, masks: Mapping[int, np.ndarray]) -> "Plan":
        return cls({g: tuple(np.flatnonzero(m).tolist()) for g, m in masks.items() if not m.all()})

    def unit_masks(self, graph: Graph) -> dict[int, np.ndarray]:
        out = {}
        for g, units in self.keep.items():
            if not 0 <= g < len(graph.groups):
                raise ValueError(f"plan names group {g}, but the graph has {len(graph.groups)} groups")
            group = graph.groups[g]
            if group.frozen:
                raise ValueError(f"plan prunes group {g}, which is frozen: {group.frozen}")
            bad = [u for u in units if not 0 <= u < group.size]
            if bad:
                raise ValueError(f"plan keeps unit {bad[0]} of group {g}, which has units 0..{group.size - 1}")
            mask = np.zeros(group.size, bool)
            mask[list(units)] = True
            if not mask.any():
                raise ValueError(f"plan removes every channel of group {g} ({group.members[0].site}); "
                                 f"keep at least one")
            out[g] = mask
        return out

    def to_json(self) -> str:
        return json.dumps({"keep": {str(g): list(u) for g, u in self.keep.items()}})

    @classmethod
    def from_json(cls, text: str) -> "Plan":
        return cls({int(g): u for g, u in json.loads(text)["keep"].items()})


def site_masks(graph: Graph, unit_masks: Mapping[int, np.ndarray]) -> dict[int, np.ndarray]:
    """Keep-mask per site (keyed by ``id(site)``), for the sites that lose at least one position."""
    masks: dict[int, np.ndarray] = {}
    for g, keep in unit_masks.items():
        for m in graph.groups[g].members:
            drop = m.positions[~keep[m.unit]]
            if drop.size:
                mask = masks.setdefault(id(m.site), np.ones(len(m.site.ids), bool))
                mask[drop] = False
    return masks


@dataclass(frozen=True)
class _Layer:
    """Static facts about one weighted layer, for MAC estimates."""

    c_in: int
    c_out: int
    groups: int
    kernel: int


def layer_facts(graph: Graph) -> dict[str, _Layer]:
    """Each weighted layer's widths and kernel, as the trace recorded them."""
    return {call.module: _Layer(call.c_in, call.c_out, call.groups, call.taps) for call in graph.calls}


def kept_counts(graph: Graph, masks: Mapping[int, np.ndarray]) -> dict[tuple[str, Role], int]:
    """(layer, IN or OUT) -> the channels ``masks`` (from site_masks) keep there, for the layers they cut."""
    return {(s.module, s.role): int(masks[id(s)].sum()) for s in graph.sites
            if s.role in (Role.IN, Role.OUT) and id(s) in masks}


def estimate_macs(graph: Graph, facts: Mapping[str, _Layer], masks: Mapping[int, np.ndarray]) -> int:
    """Conv + Linear MACs of the model after removing what ``masks`` (from site_masks) drop."""
    kept = kept_counts(graph, masks)
    total = 0
    for call in graph.calls:
        f = facts[call.module]
        c_in = kept.get((call.module, Role.IN), f.c_in)
        c_out = kept.get((call.module, Role.OUT), f.c_out)
        depthwise = f.groups > 1 and f.c_in == f.groups
        new_per_in = 1 if depthwise else c_in // f.groups
        total += call.positions * c_out * new_per_in * f.kernel
    return total


def estimate_cost(graph: Graph, facts: Mapping[str, _Layer], masks: Mapping[int, np.ndarray], layer) -> float:
    """A cost model's prediction after removing what ``masks`` drop: ``layer(module, c_in, c_out)`` summed
    over the weighted layers (each once, all its calls included; e.g. ``LatencyTable.layer``)."""
    kept = kept_counts(graph, masks)
    return sum(layer(m, kept.get((m, Role.IN), f.c_in), kept.get((m, Role.OUT), f.c_out)) for m, f in facts.items())


def sites_of(graph: Graph, module: str) -> list[Site]:
    return [s for s in graph.sites if s.module == module]

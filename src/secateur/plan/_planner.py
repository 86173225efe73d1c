"""From unit scores and a target to a Plan: uniform or global ranking, by amount or by MAC budget."""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from ..graph import Graph
from ._plan import Plan, estimate_macs, site_masks


class TargetError(ValueError):
    """The requested amount or MAC budget cannot be met."""


@dataclass(frozen=True)
class Target:
    """What to remove. Exactly one of ``amount`` (fraction of each group's channels, or of all
    channels with ``global_ranking``) and ``macs`` (fraction of the model's conv/linear MACs to keep)."""

    amount: float | None = None
    macs: float | None = None
    global_ranking: bool = False
    min_channels: int = 1
    round_to: int = 1

    def __post_init__(self):
        if (self.amount is None) == (self.macs is None):
            raise ValueError("give exactly one of amount= and target_macs=")
        if self.amount is not None and not (isinstance(self.amount, (int, float)) and 0 <= self.amount < 1):
            raise ValueError(f"amount={self.amount!r} must be in [0, 1): the fraction of channels to remove")
        if self.macs is not None and not (isinstance(self.macs, (int, float)) and 0 < self.macs <= 1):
            raise ValueError(f"target_macs={self.macs!r} must be in (0, 1]: the fraction of MACs to keep")
        if not (isinstance(self.min_channels, int) and self.min_channels >= 1):
            raise ValueError(f"min_channels={self.min_channels!r} must be an integer >= 1")
        if not (isinstance(self.round_to, int) and self.round_to >= 1):
            raise ValueError(f"round_to={self.round_to!r} must be an integer >= 1")


class _Groups:
    """The scored, prunable groups with their per-group limits, ready for fast what-if planning."""

    def __init__(self, graph: Graph, scores: Mapping[int, np.ndarray], t: Target):
        self.ids = sorted(g for g in scores if graph.groups[g].prunable)
        self.order = {}   # group -> unit indices, least important first
        self.cap = {}     # group -> most units that may go
        self.step = {}    # group -> kept units must be a multiple of this
        for g in self.ids:
            group, s = graph.groups[g], np.asarray(scores[g], dtype=np.float64)
            if s.shape != (group.size,):
                raise ValueError(f"criterion gave {s.shape} scores for group {g} of {group.size} units")
            self.order[g] = np.argsort(s, kind="stable")
            keep_min = max(1, math.ceil(t.min_channels / group.width))
            self.step[g] = t.round_to // math.gcd(t.round_to, group.width)
            keep_min = math.ceil(keep_min / self.step[g]) * self.step[g]
            self.cap[g] = max(0, group.size - keep_min)
        self.sizes = {g: graph.groups[g].size for g in self.ids}

    def rounded(self, g: int, remove: int) -> int:
        """Fewest removals >= 0 near ``remove`` whose kept count is a multiple of the group's step."""
        remove = min(remove, self.cap[g])
        kept = self.sizes[g] - remove
        kept = min(self.sizes[g], math.ceil(kept / self.step[g]) * self.step[g])
        return self.sizes[g] - kept

    def masks(self, removals: Mapping[int, int]) -> dict[int, np.ndarray]:
        out = {}
        for g, r in removals.items():
            r = self.rounded(g, r)
            if r:
                mask = np.ones(self.sizes[g], bool)
                mask[self.order[g][:r]] = False
                out[g] = mask
        return out


def _uniform(gs: _Groups, amount: float) -> dict[int, int]:
    return {g: int(amount * gs.sizes[g]) for g in gs.ids}


def _global(gs: _Groups, scores: Mapping[int, np.ndarray], k: int) -> dict[int, int]:
    """Remove the ``k`` lowest units network-wide (scores normalised by their group's mean)."""
    if not gs.ids:
        return {}
    keys, owner = [], []
    for g in gs.ids:
        s = np.asarray(scores[g], dtype=np.float64)
        mean = s.mean()
        keys.append(np.sort(s / mean if mean > 0 else s)[: gs.cap[g]])
        owner.append(np.full(gs.cap[g], g))
    keys, owner = np.concatenate(keys), np.concatenate(owner)
    chosen = owner[np.argsort(keys, kind="stable")[:k]]
    counts = np.bincount(np.searchsorted(gs.ids, chosen), minlength=len(gs.ids))
    return {g: int(c) for g, c in zip(gs.ids, counts)}


def make_plan(graph: Graph, scores: Mapping[int, np.ndarray], target: Target, facts) -> Plan:
    """Turn unit scores (least important = lowest) into a Plan meeting ``target``."""
    gs = _Groups(graph, scores, target)
    capacity = sum(gs.cap.values())

    def removals(x: float) -> dict[int, int]:
        if target.global_ranking:
            return _global(gs, scores, int(round(x * capacity)))
        return _uniform(gs, x)

    if target.amount is not None:
        if target.global_ranking:
            total = sum(gs.sizes.values())
            return Plan.from_masks(gs.masks(_global(gs, scores, int(target.amount * total))))
        return Plan.from_masks(gs.masks(_uniform(gs, target.amount)))

    base = estimate_macs(graph, facts, {})
    budget = target.macs * base

    def macs(x: float) -> int:
        return estimate_macs(graph, facts, site_masks(graph, gs.masks(removals(x))))

    hi = 1.0 if target.global_ranking else 1.0 - 1e-9
    best = macs(hi)
    if best > budget:
        raise TargetError(f"target_macs={target.macs} is out of reach: the most this model can be pruned "
                          f"(min_channels={target.min_channels}, round_to={target.round_to}) keeps "
                          f"{best / base:.5f} of its MACs")
    lo = 0.0
    for _ in range(40):  # bisection on the fraction removed: MACs fall as it grows
        mid = (lo + hi) / 2
        if macs(mid) <= budget:
            hi = mid
        else:
            lo = mid
        if hi - lo < 1e-6:
            break
    return Plan.from_masks(gs.masks(removals(hi)))

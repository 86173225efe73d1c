"""From unit scores and a target to a Plan: uniform or global ranking, by amount or by MAC budget."""
from __future__ import annotations

import heapq
import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from ..graph import Graph, Role
from ._plan import Plan, estimate_macs, kept_counts, site_masks


class TargetError(ValueError):
    """The requested amount or MAC budget cannot be met. ``reachable``: where known (a cost-model
    plan), the least fraction of the predicted cost the model can be pruned to."""

    def __init__(self, message: str, reachable: float | None = None):
        super().__init__(message)
        self.reachable = reachable


@dataclass(frozen=True)
class Target:
    """What to remove. Exactly one of ``amount`` (fraction of each group's channels, or of all
    channels with ``global_ranking``; or per group, ``{group index: fraction}``, the groups not named
    kept whole), ``macs`` (fraction of the model's conv/linear MACs to keep) and
    ``threshold`` (remove every unit scoring at most this, e.g. 0.0 for the exact zeros of ISTA).

    normalize: compare scores across groups (global ranking, threshold) after dividing each group's
    scores by their mean (the default), or raw (Network Slimming's one threshold on |gamma|).
    max_amount: the most of any one group's channels that may go (Torch-Pruning's max_pruning_ratio);
    a global ranking or threshold then cannot empty a layer down to ``min_channels``.
    """

    amount: float | Mapping[int, float] | None = None
    macs: float | None = None
    threshold: float | None = None
    global_ranking: bool = False
    normalize: bool = True
    min_channels: int = 1
    round_to: int = 1
    max_amount: float = 1.0

    def __post_init__(self):
        if sum(v is not None for v in (self.amount, self.macs, self.threshold)) != 1:
            raise ValueError("give exactly one of amount=, target_macs= and threshold=")
        if self.threshold is not None and not (isinstance(self.threshold, (int, float))
                                               and math.isfinite(self.threshold)):
            raise ValueError(f"threshold={self.threshold!r} must be a finite number")
        amounts = self.amount.values() if isinstance(self.amount, Mapping) else [self.amount]
        if isinstance(self.amount, Mapping) and self.global_ranking:
            raise ValueError("per-group amounts cannot be combined with global_ranking=")
        for a in amounts if self.amount is not None else ():
            if isinstance(a, bool) or not (isinstance(a, (int, float)) and 0 <= a < 1):
                raise ValueError(f"amount={a!r} must be in [0, 1): the fraction of channels to remove")
        if self.macs is not None and not (isinstance(self.macs, (int, float)) and 0 < self.macs <= 1):
            raise ValueError(f"target_macs={self.macs!r} must be in (0, 1]: the fraction of MACs to keep")
        if not (isinstance(self.min_channels, int) and self.min_channels >= 1):
            raise ValueError(f"min_channels={self.min_channels!r} must be an integer >= 1")
        if not (isinstance(self.max_amount, (int, float)) and 0 < self.max_amount <= 1):
            raise ValueError(f"max_amount={self.max_amount!r} must be in (0, 1]: the most of a group that may go")
        if not (isinstance(self.round_to, int) and self.round_to >= 1):
            raise ValueError(f"round_to={self.round_to!r} must be an integer >= 1")


class _Groups:
    """The scored, prunable groups with their per-group limits, ready for fast what-if planning."""

    def __init__(self, graph: Graph, scores: Mapping[int, np.ndarray], t: Target):
        self.ids = sorted(g for g in scores if graph.groups[g].prunable)
        self.order = {}   # group -> unit indices, least important first
        self.cap = {}     # group -> most units that may go
        self.step = {}    # group -> kept units must be a multiple of this
        self.keys = {}    # group -> scores (normalised by the group's mean if asked), least important first
        for g in self.ids:
            group, s = graph.groups[g], np.asarray(scores[g], dtype=np.float64)
            if s.shape != (group.size,):
                raise ValueError(f"criterion gave {s.shape} scores for group {g} of {group.size} units")
            self.order[g] = np.argsort(s, kind="stable")
            mean = s.mean()
            self.keys[g] = (s / mean if t.normalize and mean > 0 else s)[self.order[g]]
            keep_min = max(1, math.ceil(t.min_channels / group.width),
                           group.size - math.floor(t.max_amount * group.size + 1e-9))
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


def _uniform(gs: _Groups, amount: float | Mapping[int, float]) -> dict[int, int]:
    if isinstance(amount, Mapping):
        return {g: int(amount[g] * gs.sizes[g]) for g in gs.ids if g in amount}
    return {g: int(amount * gs.sizes[g]) for g in gs.ids}


def _global(gs: _Groups, k: int) -> dict[int, int]:
    """Remove the ``k`` lowest units network-wide (by ``gs.keys``)."""
    if not gs.ids:
        return {}
    keys = np.concatenate([gs.keys[g][: gs.cap[g]] for g in gs.ids])
    owner = np.concatenate([np.full(gs.cap[g], g) for g in gs.ids])
    chosen = owner[np.argsort(keys, kind="stable")[:k]]
    counts = np.bincount(np.searchsorted(gs.ids, chosen), minlength=len(gs.ids))
    return {g: int(c) for g, c in zip(gs.ids, counts)}


def _below(gs: _Groups, threshold: float) -> dict[int, int]:
    """Remove every unit whose key is at most ``threshold``."""
    return {g: int(np.searchsorted(gs.keys[g], threshold, side="right")) for g in gs.ids}


class _CostBook:
    """The model's cost (``estimate_macs`` by default, or a layer latency table's prediction) kept up to
    date as units are removed or given back, one group step at a time.

    A layer's cost depends only on its own kept input and output counts, so changing one group only
    changes the layers whose IN/OUT sites it touches: each what-if costs a few lookups.
    ``layer(module, c_in, c_out)``: the cost of every call of a layer at those widths.
    """

    def __init__(self, graph: Graph, facts, gs: _Groups, removed: Mapping[int, int], layer=None):
        self.facts, self.gs, self._graph = facts, gs, graph
        self.positions: dict[str, int] = {}
        for call in graph.calls:
            self.positions[call.module] = self.positions.get(call.module, 0) + call.positions
        self.layer = layer or self._macs
        self.kept = kept_counts(graph, site_masks(graph, gs.masks(removed)))   # as estimate_macs counts them
        self.total = sum(self._layer(m, self.kept) for m in self.positions)
        self._touch: dict[int, list[tuple[tuple[str, Role], np.ndarray]]] = {}

    def _macs(self, module: str, c_in: int, c_out: int) -> int:
        f = self.facts[module]
        per_in = 1 if f.groups > 1 and f.c_in == f.groups else c_in // f.groups
        return self.positions[module] * c_out * per_in * f.kernel

    def _layer(self, module: str, kept: Mapping[tuple[str, Role], int]) -> float:
        f = self.facts[module]
        return self.layer(module, kept.get((module, Role.IN), f.c_in), kept.get((module, Role.OUT), f.c_out))

    def touch(self, g: int) -> list[tuple[tuple[str, Role], np.ndarray]]:
        """(module, role) of each weighted site of group ``g``, with the cumulative count of its
        positions carried by the group's units in removal order (``cum[r]``: the first ``r``)."""
        if g not in self._touch:
            counts: dict[tuple[str, Role], np.ndarray] = {}
            size = self.gs.sizes[g]
            for m in self._graph.groups[g].members:
                key = (m.site.module, m.site.role)
                if m.site.role in (Role.IN, Role.OUT) and m.site.module in self.positions:
                    c = np.bincount(m.unit, minlength=size)
                    counts[key] = counts[key] + c if key in counts else c
            self._touch[g] = [(k, np.concatenate([[0], np.cumsum(c[self.gs.order[g]])]))
                              for k, c in counts.items()]
        return self._touch[g]

    def what_if(self, g: int, r_from: int, r_to: int) -> tuple[dict, float]:
        """(the kept counts, the change in cost) if group ``g`` went from ``r_from`` removed units to
        ``r_to`` (in removal order)."""
        kept = dict(self.kept)
        for key, cum in self.touch(g):
            kept[key] = kept.get(key, self._full(key)) + int(cum[r_from] - cum[r_to])
        modules = {key[0] for key, _ in self.touch(g)}
        return kept, sum(self._layer(m, kept) - self._layer(m, self.kept) for m in modules)

    def restore(self, g: int, r_from: int, r_to: int, budget: float) -> bool:
        """Move group ``g`` from ``r_from`` to ``r_to`` removed units if the cost stays within
        ``budget``; say whether it did."""
        kept, delta = self.what_if(g, r_from, r_to)
        if self.total + delta > budget:
            return False
        self.kept, self.total = kept, self.total + delta
        return True

    def _full(self, key: tuple[str, Role]) -> int:
        f = self.facts[key[0]]
        return f.c_in if key[1] is Role.IN else f.c_out


def _top_up(graph: Graph, facts, gs: _Groups, removed: Mapping[int, int], budget: float, global_ranking: bool,
            layer=None) -> dict[int, int]:
    """Give units back while the MACs stay within ``budget``: integer (and ``round_to``) removals
    leave the bisection's plan short of the budget, most on models with many small groups.

    One step of one group at a time (``round_to``'s step, so ``min_channels`` and the rounding
    hold), best candidate first; a candidate that does not fit is dropped for good (MACs grow with
    each layer's kept counts, so giving units back elsewhere only makes it dearer). Global ranking: the candidate whose restored units include
    the highest normalised score network-wide, any number of steps per group. Uniform: every group
    gets at most one step back, the most pruned (largest removed fraction) first, ties to the higher
    normalised score; this continues the bisection's lowering of the fraction x past the point
    where many groups would switch together, so amounts stay within one step of uniform.
    """
    r = {g: gs.rounded(g, removed.get(g, 0)) for g in gs.ids}
    book = _CostBook(graph, facts, gs, r, layer)
    norm = gs.keys

    def entry(g: int):
        top = norm[g][r[g] - 1]  # the most important of the units the next step gives back
        return ((-top,) if global_ranking else (-r[g] / gs.sizes[g], -top), g)

    heap = [entry(g) for g in gs.ids if r[g] > 0]
    heapq.heapify(heap)
    while heap:
        _, g = heapq.heappop(heap)
        kept = min(gs.sizes[g], gs.sizes[g] - r[g] + gs.step[g])
        if book.restore(g, r[g], gs.sizes[g] - kept, budget):
            r[g] = gs.sizes[g] - kept
            if global_ranking and r[g] > 0:
                heapq.heappush(heap, entry(g))
    return r


def _greedy(graph: Graph, facts, gs: _Groups, budget: float, floor: float, layer) -> tuple[dict[int, int], float]:
    """Remove, one step at a time, the units that lose the least importance per unit of cost saved,
    until the predicted cost is within ``budget``; return the removals and their predicted cost (over
    ``budget`` when nothing more can go). Importance lost is counted as a fraction of the group's
    whole importance, as uniform pruning implicitly weighs groups: counted per unit (each unit about
    1 after normalising by the group's mean), a unit of VGG-16's 4096-wide classifier weighed as much
    as one of its 64-channel convs while saving 1/64 as much time, so the planner never thinned the
    classifier (OpenVINO, half the latency: 0.42 of the MACs against the MAC plan's 0.47; counted
    per fraction, 0.49). A step is the fewest units of one group (a multiple of
    ``round_to``) that saves anything: on a latency staircase, down to the next stair. Steps that would
    land below ``floor`` (a big stair overshooting the budget) wait while smaller ones can still reach it."""
    r = {g: 0 for g in gs.ids}
    book = _CostBook(graph, facts, gs, r, layer)
    users: dict[str, set[int]] = {}
    for g in gs.ids:
        for (module, _), _ in book.touch(g):
            users.setdefault(module, set()).add(g)
    version = dict.fromkeys(gs.ids, 0)

    def candidate(g: int):
        kept = gs.sizes[g] - r[g]
        k = (kept - 1) // gs.step[g] * gs.step[g]
        while k >= gs.sizes[g] - gs.cap[g] and k > 0:
            _, delta = book.what_if(g, r[g], gs.sizes[g] - k)
            if delta < 0:
                lost = float(gs.keys[g][r[g]: gs.sizes[g] - k].sum()) / gs.sizes[g]
                return (lost / -delta, version[g], g, gs.sizes[g] - k, lost, -delta)
            k -= gs.step[g]
        return None

    heap = [c for c in map(candidate, gs.ids) if c is not None]
    heapq.heapify(heap)
    aside = []   # steps that would land below ``floor``: taken only when nothing else reaches the budget
    while book.total > budget and (heap or aside):
        if heap:
            best = heapq.heappop(heap)
            if best[1] != version[best[2]]:
                continue
            if book.total - best[5] < floor:
                aside.append(best)
                continue
        else:
            live = [c for c in aside if c[1] == version[c[2]]]
            aside = []
            if not live:
                break
            best = min(live, key=lambda c: c[4])   # of the steps past the floor, the one losing least
        _, _, g, to, _, _ = best
        book.restore(g, r[g], to, float("inf"))
        r[g] = to
        for h in {h for (module, _), _ in book.touch(g) for h in users[module]}:
            version[h] += 1
            c = candidate(h)
            if c is not None:
                heapq.heappush(heap, c)
    return r, book.total


def make_plan(graph: Graph, scores: Mapping[int, np.ndarray], target: Target, facts, costs=None) -> Plan:
    """Turn unit scores (least important = lowest) into a Plan meeting ``target``.

    costs: plan against a predicted cost instead of MACs (``target.macs`` is then the fraction of it
    to keep): an object with ``layer(module, c_in, c_out)``, the cost of a weighted layer at those
    widths (e.g. :class:`secateur.runtimes.LatencyTable`), and ``fixed``, the cost of the rest of the
    model. Planned greedily on importance lost per unit of cost saved, then topped up.
    """
    gs = _Groups(graph, scores, target)
    if costs is not None:
        if target.macs is None:
            raise ValueError("a cost model plans for a target fraction (target.macs)")
        full = _CostBook(graph, facts, gs, {}, costs.layer).total
        budget = target.macs * (full + costs.fixed) - costs.fixed
        chosen, least = _greedy(graph, facts, gs, budget, budget - 0.04 * target.macs * (full + costs.fixed),
                                costs.layer)
        if least > budget:
            raise TargetError(f"the predicted cost cannot fall to {budget:.4g}: the most this model can be pruned "
                              f"keeps {least:.4g}", reachable=(least + costs.fixed) / (full + costs.fixed))
        return Plan.from_masks(gs.masks(_top_up(graph, facts, gs, chosen, budget, True, costs.layer)))
    capacity = sum(gs.cap.values())

    def removals(x: float) -> dict[int, int]:
        if target.global_ranking:
            return _global(gs, int(round(x * capacity)))
        return _uniform(gs, x)

    if target.threshold is not None:
        return Plan.from_masks(gs.masks(_below(gs, target.threshold)))
    if target.amount is not None:
        if target.global_ranking:
            total = sum(gs.sizes.values())
            return Plan.from_masks(gs.masks(_global(gs, int(target.amount * total))))
        return Plan.from_masks(gs.masks(_uniform(gs, target.amount)))

    base = estimate_macs(graph, facts, {})
    budget = target.macs * base

    def macs(x: float) -> int:
        return estimate_macs(graph, facts, site_masks(graph, gs.masks(removals(x))))

    hi = 1.0 if target.global_ranking else 1.0 - 1e-9
    least = macs(hi)
    if least > budget:
        raise TargetError(f"target_macs={target.macs} is out of reach: the most this model can be pruned "
                          f"(min_channels={target.min_channels}, round_to={target.round_to}) keeps "
                          f"{least / base:.5f} of its MACs")
    lo = 0.0
    for _ in range(40):  # bisection on the fraction removed: MACs fall as it grows
        mid = (lo + hi) / 2
        if macs(mid) <= budget:
            hi = mid
        else:
            lo = mid
        if hi - lo < 1e-6:
            break
    # integer removals leave the bisection short of the budget: give units back while it holds
    chosen = removals(hi)
    topped = _top_up(graph, facts, gs, chosen, budget, target.global_ranking)
    if estimate_macs(graph, facts, site_masks(graph, gs.masks(topped))) <= budget:  # a cheap guard
        chosen = topped
    return Plan.from_masks(gs.masks(chosen))

"""How much of each layer to prune for a MAC budget, chosen by accuracy instead of by one rate.

Every candidate is judged the way EagleEye (Li et al., ECCV 2020) judges one: cut, re-estimate the
BatchNorm statistics on a few training batches, and score on a fixed slice of *training* images
(never the test set). Two strategies:

- ``"greedy"``, AIMET's greedy compression-ratio selection: each group alone pruned at a grid of
  ratios gives a curve of score against ratio; a target score ``s`` then picks, per group, the
  largest ratio that still scores ``s`` (read off the curve, linearly between grid points), and a
  bisection on ``s`` finds the highest score whose ratios meet the budget. Cost: groups × grid
  evaluations, then none.
- ``"search"``, EagleEye's random search: random per-group proportions, each scaled until the plan
  meets the budget, the best-scoring one kept (the first candidate is the uniform rate, so the
  search never scores below it). Cost: ``candidates`` evaluations.

    alloc = allocate(model, x, L1(), macs=0.5, loader=train_loader, strategy="greedy")
    small = secateur.prune(model, x, L1(), amount=alloc.layers)      # per producing layer
"""
from __future__ import annotations

import copy
import itertools
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from ..criteria import Criterion
from ..graph import Graph, Role, trace
from ..plan import Plan, Target, TargetError, estimate_macs, layer_facts, make_plan, site_masks
from ..prune import score
from ..surgery import apply
from ..train import evaluate, recalibrate_bn

STRATEGIES = ("greedy", "search")
GRID = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


@dataclass(frozen=True)
class Allocation:
    """``amounts``: fraction of each group's channels to remove, by group index; ``layers``: the same by
    the group's first producing layer (``prune(amount=layers)``); ``macs``: the fraction of MACs kept
    (estimated); ``score``: the chosen plan's accuracy on the scoring slice; ``evaluations`` and
    ``seconds``: what choosing cost; ``curves``: per layer, (ratio, score) points (greedy only)."""

    amounts: dict[int, float]
    layers: dict[str, float]
    macs: float
    score: float
    evaluations: int
    seconds: float
    curves: dict[str, list[tuple[float, float]]] = field(default_factory=dict)


class Judge:
    """Cuts, recalibrates (on the batches ``recal``, unless None) and scores (accuracy on ``scored``)
    candidate plans of one model, given as per-group amounts; counts what it evaluates."""

    def __init__(self, model, graph: Graph, scores, target: Target, recal: list | None, scored):
        self.model, self.graph, self.scores, self.target = model, graph, scores, target
        self.recal, self.scored, self.facts = recal, scored, layer_facts(graph)
        self.base = estimate_macs(graph, self.facts, {})
        self.evaluations = 0

    def plan(self, amounts: dict[int, float]) -> Plan:
        return make_plan(self.graph, self.scores, Target(amount=amounts, min_channels=self.target.min_channels,
                                                         round_to=self.target.round_to), self.facts)

    def macs(self, amounts: dict[int, float]) -> float:
        masks = self.plan(amounts).unit_masks(self.graph)
        return estimate_macs(self.graph, self.facts, site_masks(self.graph, masks)) / self.base

    def accuracy(self, amounts: dict[int, float]) -> float:
        self.evaluations += 1
        small = apply(copy.deepcopy(self.model), self.graph, self.plan(amounts))
        if self.recal is not None:
            small = recalibrate_bn(small, self.recal, batches=len(self.recal), copy=False)
        return evaluate(small, self.scored)["acc"]

    def curves(self, groups, ratios, progress: bool, desc: str) -> dict[int, list[tuple[float, float]]]:
        """Per group, (ratio, accuracy) with that group alone pruned at each ratio; ratio 0 is the
        whole model."""
        full = self.accuracy({})
        out = {}
        bar = tqdm(total=len(groups) * len(ratios), desc=desc, disable=not progress, leave=False)
        for g in groups:
            out[g] = [(0.0, full)]
            for r in sorted(ratios):
                out[g].append((float(r), self.accuracy({g: r})))
                bar.update()
        bar.close()
        return out


def allocate(model: nn.Module, example_inputs, criterion: Criterion, *, macs: float, loader,
             strategy: str = "greedy", ratios: tuple[float, ...] = GRID, candidates: int = 32,
             recalibrate: int = 5, score_batches: int = 8, max_amount: float = 0.9, min_channels: int = 1,
             round_to: int = 1, ignore=(), data=None, seed: int = 0, progress: bool = True) -> Allocation:
    """Per-group pruning ratios of ``model`` that keep ``macs`` of its MACs, chosen by ``strategy``
    ("greedy" or "search"; see the module). ``loader``: training batches; the first ``recalibrate``
    re-estimate BN statistics of every candidate, the next ``score_batches`` score it (the same
    batches for every candidate, drawn once under ``seed``). ``ratios``: the greedy grid;
    ``max_amount``: the most of any group that may go. ``data``: calibration data for a data
    criterion. The caller's model is not changed."""
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy={strategy!r}; choose one of {', '.join(STRATEGIES)}")
    if not (isinstance(macs, (int, float)) and 0 < macs <= 1):
        raise ValueError(f"macs={macs!r} must be in (0, 1]: the fraction of MACs to keep")
    if not ratios or not all(0 < r <= max_amount for r in ratios) or list(ratios) != sorted(ratios):
        raise ValueError(f"ratios={ratios!r} must be increasing fractions in (0, max_amount={max_amount}]")
    started = time.perf_counter()
    model = copy.deepcopy(model).eval()
    torch.manual_seed(seed)
    held = list(itertools.islice(loader, recalibrate + score_batches))
    if len(held) < recalibrate + score_batches:
        raise ValueError(f"allocate: the loader gave {len(held)} batches; it needs recalibrate + score_batches = "
                         f"{recalibrate + score_batches}")
    graph = trace(model, example_inputs, ignore=ignore)
    target = Target(macs=macs, min_channels=min_channels, round_to=round_to, max_amount=max_amount)
    judge = Judge(model, graph, score(model, graph, criterion, data), target, held[:recalibrate],
                   held[recalibrate:])
    groups = sorted(judge.scores)
    deepest = max(ratios) if strategy == "greedy" else max_amount
    least = judge.macs({g: deepest for g in groups})
    if least > macs:
        raise TargetError(f"macs={macs} is out of reach: removing {deepest:g} of every group keeps {least:.3f} of "
                          f"the MACs")
    run = _greedy if strategy == "greedy" else _search
    amounts, best, curves = run(judge, groups, macs, ratios, candidates, max_amount, seed, progress)
    names = {g: graph.groups[g].modules(Role.OUT)[0] for g in groups}
    return Allocation(amounts, {names[g]: r for g, r in amounts.items() if r > 0}, judge.macs(amounts), best,
                      judge.evaluations, time.perf_counter() - started,
                      {names[g]: c for g, c in curves.items()})


def _largest(curve: list[tuple[float, float]], s: float) -> float:
    """The largest ratio whose score is at least ``s``, walking up from 0 and interpolating linearly
    where the curve first falls below ``s``."""
    for (r0, a0), (r1, a1) in itertools.pairwise(curve):
        if a1 < s:
            return r0 if a0 <= s or a0 == a1 else r0 + (r1 - r0) * (a0 - s) / (a0 - a1)
    return curve[-1][0]


def _bisect(meets, lo: float, hi: float, steps: int = 30) -> tuple[float, float]:
    """Narrow [lo, hi] to the boundary of ``meets``, where ``meets(hi) != meets(lo)`` and ``meets``
    flips once between them; returns the narrowed (lo, hi)."""
    want = meets(hi)
    for _ in range(steps):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if meets(mid) == want else (mid, hi)
    return lo, hi


def _greedy(judge: Judge, groups, macs, ratios, candidates, max_amount, seed, progress):
    curves = judge.curves(groups, ratios, progress, "allocation curves")
    full = curves[groups[0]][0][1]

    def at(s: float) -> dict[int, float]:
        return {g: _largest(curves[g], s) for g in groups}
    # a higher target score prunes every group less: the highest score whose ratios meet the budget
    floor = min(a for c in curves.values() for _, a in c)   # at it every group takes the grid's deepest
    if judge.macs(at(full)) <= macs:
        amounts = at(full)
    else:   # scores are steps (accuracy on a few batches): blend across the last step to meet the budget
        lo, hi = (at(s) for s in _bisect(lambda s: judge.macs(at(s)) <= macs, floor, full))

        def blend(t: float) -> dict[int, float]:
            return {g: lo[g] + t * (hi[g] - lo[g]) for g in groups}
        amounts = blend(_bisect(lambda t: judge.macs(blend(t)) <= macs, 0.0, 1.0)[0])
    return amounts, judge.accuracy(amounts), curves


def _search(judge: Judge, groups, macs, ratios, candidates, max_amount, seed, progress):
    rng = np.random.default_rng(seed)
    best, best_acc = None, -1.0
    for i in tqdm(range(candidates), desc="allocation search", disable=not progress, leave=False):
        v = np.ones(len(groups)) if i == 0 else rng.uniform(0.05, 1.0, len(groups))

        def scaled(k: float, v=v) -> dict[int, float]:
            return {g: float(min(k * x, max_amount)) for g, x in zip(groups, v)}
        # the least scaling that meets the budget (MACs fall as k grows; k = max_amount / min(v) caps all)
        k = _bisect(lambda k: judge.macs(scaled(k)) <= macs, 0.0, max_amount / v.min())[1]
        amounts = scaled(k)
        acc = judge.accuracy(amounts)
        if acc > best_acc:
            best, best_acc = amounts, acc
    return best, best_acc, {}

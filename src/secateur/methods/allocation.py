"""How much of each layer to prune for a MAC or latency budget, chosen by accuracy instead of by one rate.

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
    alloc = allocate(model, x, L1(), latency=0.5, runtime="onnxruntime", loader=train_loader)   # predicted
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
from .. import runtimes
from ..plan import Plan, Target, TargetError, estimate_cost, estimate_macs, layer_facts, make_plan, site_masks
from ..prune import score
from ..surgery import apply
from ..train import evaluate, recalibrate_bn

STRATEGIES = ("greedy", "search")
GRID = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


@dataclass(frozen=True)
class Allocation:
    """``amounts``: fraction of each group's channels to remove, by group index; ``layers``: the same by
    the group's first producing layer (``prune(amount=layers)``; a group that no layer produces, such
    as channels born in a parameter, is only in ``amounts``); ``kept``: the fraction of the MACs (or of
    the predicted latency) kept; ``score``: the chosen plan's accuracy on the scoring slice;
    ``evaluations`` and ``seconds``: what choosing cost; ``curves``: per group, named by its first
    producing layer (else its first site), (ratio, score) points (greedy only)."""

    amounts: dict[int, float]
    layers: dict[str, float]
    kept: float
    score: float
    evaluations: int
    seconds: float
    curves: dict[str, list[tuple[float, float]]] = field(default_factory=dict)


class Judge:
    """Cuts, recalibrates (on the batches ``recal``, unless None) and scores (accuracy on ``scored``)
    candidate plans of one model, given as per-group amounts; counts what it evaluates."""

    def __init__(self, model, graph: Graph, scores, target: Target, recal: list | None, scored, costs=None):
        self.model, self.graph, self.scores, self.target = model, graph, scores, target
        self.recal, self.scored, self.facts, self.costs = recal, scored, layer_facts(graph), costs
        self.base = self._cost({})
        self.evaluations = 0

    def _cost(self, masks) -> float:
        if self.costs is None:
            return estimate_macs(self.graph, self.facts, masks)
        return estimate_cost(self.graph, self.facts, masks, self.costs.layer) + self.costs.fixed

    def plan(self, amounts: dict[int, float]) -> Plan:
        return make_plan(self.graph, self.scores, Target(amount=amounts, min_channels=self.target.min_channels,
                                                         round_to=self.target.round_to), self.facts)

    def cost(self, amounts: dict[int, float]) -> float:
        """The fraction of the MACs (or, with ``costs``, of the predicted latency) the plan keeps."""
        return self._cost(site_masks(self.graph, self.plan(amounts).unit_masks(self.graph))) / self.base

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


def allocate(model: nn.Module, example_inputs, criterion: Criterion, *, loader, macs: float | None = None,
             latency: float | None = None, runtime: str = "torch", threads: int = 1, strategy: str = "greedy",
             ratios: tuple[float, ...] = GRID, candidates: int = 32, recalibrate: int = 5, score_batches: int = 8,
             max_amount: float = 0.9, min_channels: int = 1, round_to: int = 1, ignore=(), data=None, seed: int = 0,
             progress: bool = True) -> Allocation:
    """Per-group pruning ratios of ``model`` that keep ``macs`` of its MACs, or ``latency`` of its
    latency on ``runtime`` as its per-layer latency table predicts it (``secateur.runtimes``; timed
    once and cached), chosen by ``strategy`` ("greedy" or "search"; see the module). ``loader``:
    training batches; the first ``recalibrate``
    re-estimate BN statistics of every candidate, the next ``score_batches`` score it (the same
    batches for every candidate, drawn once under ``seed``). ``ratios``: the greedy grid;
    ``max_amount``: the most of any group that may go. ``data``: calibration data for a data
    criterion. The caller's model is not changed."""
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy={strategy!r}; choose one of {', '.join(STRATEGIES)}")
    if (macs is None) == (latency is None):
        raise ValueError("give exactly one of macs= and latency=")
    budget, what = (macs, "macs") if macs is not None else (latency, "latency")
    if isinstance(budget, bool) or not (isinstance(budget, (int, float)) and 0 < budget <= 1):
        raise ValueError(f"{what}={budget!r} must be in (0, 1]: the fraction to keep")
    if latency is not None:
        runtimes.backend(runtime)   # a missing runtime is one line, before any work
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
    target = Target(macs=budget, min_channels=min_channels, round_to=round_to, max_amount=max_amount)
    costs = None if latency is None else runtimes.latency_table(model, graph, runtime, threads=threads,
                                                                progress=progress)
    judge = Judge(model, graph, score(model, graph, criterion, data), target, held[:recalibrate],
                  held[recalibrate:], costs)
    groups = sorted(judge.scores)
    deepest = max(ratios) if strategy == "greedy" else max_amount
    least = judge.cost({g: deepest for g in groups})
    if least > budget:
        raise TargetError(f"{what}={budget} is out of reach: removing {deepest:g} of every group keeps {least:.3f} "
                          f"of the {'MACs' if macs is not None else 'predicted latency'}")
    run = _greedy if strategy == "greedy" else _search
    amounts, best, curves = run(judge, groups, budget, ratios, candidates, max_amount, seed, progress)
    producer = {g: graph.groups[g].modules(Role.OUT)[:1] for g in groups}
    return Allocation(amounts, {producer[g][0]: r for g, r in amounts.items() if r > 0 and producer[g]},
                      judge.cost(amounts), best, judge.evaluations, time.perf_counter() - started,
                      {(producer[g] or [str(graph.groups[g].members[0].site)])[0]: c for g, c in curves.items()})


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


def _greedy(judge: Judge, groups, budget, ratios, candidates, max_amount, seed, progress):
    curves = judge.curves(groups, ratios, progress, "allocation curves")
    full = curves[groups[0]][0][1]

    def at(s: float) -> dict[int, float]:
        return {g: _largest(curves[g], s) for g in groups}
    # a higher target score prunes every group less: the highest score whose ratios meet the budget
    floor = min(a for c in curves.values() for _, a in c)   # at it every group takes the grid's deepest
    if judge.cost(at(full)) <= budget:
        amounts = at(full)
    else:   # scores are steps (accuracy on a few batches): blend across the last step to meet the budget
        lo, hi = (at(s) for s in _bisect(lambda s: judge.cost(at(s)) <= budget, floor, full))

        def blend(t: float) -> dict[int, float]:
            return {g: lo[g] + t * (hi[g] - lo[g]) for g in groups}
        amounts = blend(_bisect(lambda t: judge.cost(blend(t)) <= budget, 0.0, 1.0)[0])
    return amounts, judge.accuracy(amounts), curves


def _search(judge: Judge, groups, budget, ratios, candidates, max_amount, seed, progress):
    rng = np.random.default_rng(seed)
    best, best_acc = None, -1.0
    for i in tqdm(range(candidates), desc="allocation search", disable=not progress, leave=False):
        v = np.ones(len(groups)) if i == 0 else rng.uniform(0.05, 1.0, len(groups))

        def scaled(k: float, v=v) -> dict[int, float]:
            return {g: float(min(k * x, max_amount)) for g, x in zip(groups, v)}
        # the least scaling that meets the budget (MACs fall as k grows; k = max_amount / min(v) caps all)
        k = _bisect(lambda k: judge.cost(scaled(k)) <= budget, 0.0, max_amount / v.min())[1]
        amounts = scaled(k)
        acc = judge.accuracy(amounts)
        if acc > best_acc:
            best, best_acc = amounts, acc
    return best, best_acc, {}

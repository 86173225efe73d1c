"""``prune``: trace, score, plan and cut in one call, on a copy of the caller's model."""
from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from dataclasses import replace

import numpy as np
import torch
from torch import nn

from .criteria import Criterion, bind
from .forward import eval_mode
from .measure import count_macs
from .graph import Graph, Role, trace
from .plan import Plan, Target, estimate_macs, layer_facts, make_plan
from .surgery import apply


def plan_pruning(model: nn.Module, graph: Graph, criterion: Criterion, target: Target, data=None) -> Plan:
    """Score every prunable group of ``graph`` with ``criterion`` and plan for ``target``.

    A data-driven criterion (one with ``bind``) first records ``data``, a calibration loader.
    """
    return make_plan(graph, score(model, graph, criterion, data), target, layer_facts(graph))


def score(model: nn.Module, graph: Graph, criterion: Criterion, data=None) -> dict[int, np.ndarray]:
    """Unit scores of every prunable group that ``criterion`` scores, by group index."""
    if not graph.prunable:
        raise ValueError(f"{type(model).__name__} has no prunable layer: every channel group is frozen "
                         f"(print secateur.trace(model, x) to see why)")
    criterion = bind(criterion, model, graph, data)
    scores = {}
    for g in graph.prunable:
        s = criterion(g, model)
        if s is None:
            continue
        if not np.isfinite(s).all():
            raise ValueError(f"criterion {type(criterion).__name__} gave non-finite scores (nan/inf) to group "
                             f"#{g.index} ({', '.join(g.modules(Role.OUT)[:3]) or g.members[0].site}): "
                             f"check the model's weights and the calibration data")
        scores[g.index] = s
    return scores


def plan_per_layer(model: nn.Module, graph: Graph, criterion: Criterion, ratios: Mapping[str, float], *,
                   min_channels: int = 1, round_to: int = 1, data=None) -> Plan:
    """A plan removing ``ratios[name]`` of the channels that layer ``name`` produces (e.g. from a
    sensitivity scan); a group produced by several named layers takes the smallest of their ratios,
    groups of unnamed layers stay whole."""
    producers = {n: g for g in graph.prunable for n in g.modules(Role.OUT)}
    unknown = [n for n in ratios if n not in producers]
    if unknown:
        raise ValueError(f"amount names layer {unknown[0]!r}, which produces no prunable channel group; "
                         f"choose from: {', '.join(producers) or '(none)'}")
    rate: dict[int, float] = {}
    for name, r in ratios.items():
        if isinstance(r, bool) or not isinstance(r, (int, float)) or not 0 <= r < 1:
            raise ValueError(f"amount[{name!r}]={r!r} must be in [0, 1): the fraction of that layer's channels "
                             f"to remove")
        g = producers[name].index
        rate[g] = min(rate.get(g, 1.0), r)
    scores = score(model, graph, criterion, data)
    keep: dict[int, tuple[int, ...]] = {}
    for r in sorted(set(rate.values())):
        part = {g: scores[g] for g, v in rate.items() if v == r and g in scores}
        target = Target(amount=r, min_channels=min_channels, round_to=round_to)
        keep.update(make_plan(graph, part, target, layer_facts(graph)).keep)
    return Plan(keep)


def prune(model: nn.Module, example_inputs, criterion: Criterion, *,
          amount: float | Mapping[str, float] | None = None,
          target_macs: float | None = None, ignore: Iterable = (), min_channels: int = 1,
          round_to: int = 1, global_ranking: bool = False, max_amount: float = 1.0, fold: bool = True,
          data=None) -> nn.Module:
    """Return a physically smaller copy of ``model``; ``model`` itself is not changed.

    amount: fraction of channels to remove from each group (or network-wide with global_ranking), or
        per layer: ``{"features.0": 0.3, ...}`` (e.g. ``secateur.methods.sensitivity_ratios(...)``).
    target_macs: fraction of the conv/linear MACs to keep (e.g. 0.5 halves them); the largest plan
        that meets it is chosen.
    ignore: modules (objects or names) whose outputs are kept whole; the classifier always is.
    min_channels: never leave a group with fewer channels. round_to: keep a multiple of N channels.
    global_ranking: one threshold across groups on scores normalised by each group's mean.
    max_amount: the most of any one group that may go (Torch-Pruning's max_pruning_ratio), so a global
        ranking cannot thin a layer down to a bottleneck.
    fold: fold removed channels that are constant (e.g. BN with gamma = 0) into the next layer's bias.
    data: a calibration loader of (images, labels) for data-driven criteria (APoZ, Taylor, ThiNet,
        LASSO), e.g. ``secateur.data.calibration(dataset, 256)``; weight criteria ignore it.
    """
    graph = trace(model, example_inputs, ignore=ignore)
    if isinstance(amount, Mapping):
        if target_macs is not None or global_ranking or max_amount != 1.0:
            raise ValueError("per-layer amounts cannot be combined with target_macs=, global_ranking= or max_amount=")
        plan = plan_per_layer(model, graph, criterion, amount, min_channels=min_channels, round_to=round_to,
                              data=data)
    else:
        target = Target(amount=amount, macs=target_macs, global_ranking=global_ranking,
                        min_channels=min_channels, round_to=round_to, max_amount=max_amount)
        scores = score(model, graph, criterion, data)
        plan = make_plan(graph, scores, target, layer_facts(graph))
        if target_macs is not None:
            return _measured(model, graph, scores, target, plan, fold)
    return apply(copy.deepcopy(model), graph, plan, fold=fold)


def _measured(model: nn.Module, graph: Graph, scores, target: Target, plan: Plan, fold: bool) -> nn.Module:
    """Cut by ``plan``, then count the MACs the cut model really runs (FlopCounterMode, as ``measure``
    does). The planner counts conv and linear layers only; where other ops carry MACs that shrink
    differently (attention's matrix products), it re-plans with the budget corrected by what it
    missed, a few times, and returns the best cut within the target (or the closest one)."""
    inputs = graph.example_inputs
    with torch.no_grad():
        base = count_macs(copy.deepcopy(model).eval(), inputs)
    if abs(base - estimate_macs(graph, layer_facts(graph), {})) <= 1e-3 * base:
        return apply(copy.deepcopy(model), graph, plan, fold=fold)   # conv and linear carry every MAC
    goal, best = target.macs, None
    for _ in range(4):
        small = apply(copy.deepcopy(model), graph, plan, fold=fold)
        with torch.no_grad(), eval_mode(small):
            got = count_macs(small, inputs) / base
        rank = (got <= target.macs, -abs(got - target.macs))   # within the target first, then the closest
        if best is None or rank > best[0]:
            best = (rank, small)
        if target.macs - 0.005 <= got <= target.macs:
            break
        goal = min(1.0, max(1e-3, goal * target.macs / got))
        try:
            plan = make_plan(graph, scores, replace(target, macs=goal), layer_facts(graph))
        except ValueError:
            break
    return best[1]
